//! The daemon's side of the control socket: accepts connections in a
//! thread of its own, answers each line-delimited JSON request from the
//! running store in a thread per client, and never lets a bad, slow or
//! abusive client disturb the crawl or lock the other clients out.
//!
//! - Up to [`MAX_CLIENTS`] clients are served at once; more wait in the
//!   socket's listen backlog until one is done (never refused).
//! - A client has [`REQUEST_DEADLINE`] from its connection to send its whole
//!   request line (a client dripping a byte at a time cannot hold a slot),
//!   and each write of the reply must go through within [`WRITE_TIMEOUT`].
//! - `queue` is streamed: rows are written as they are read from sled.
//! - When the crawl ends, the socket is removed first, then the clients
//!   already connected are answered (pages they would add are refused as
//!   "finishing"), so no client sees its connection cut mid-reply.

use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{ops, socket_path, Command, Reply, Request, RowLine, MAX_REQUEST, VERSION};
use crate::error::exit_for;
use crate::pipeline::Shared;
use crate::store::Store;

/// Clients served at once. Each costs a thread; a flood beyond this waits
/// in the kernel's backlog instead of being refused.
const MAX_CLIENTS: usize = 64;
/// Time from the connection to the end of the request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Longest one write of a reply may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// When the crawl ends: how long the clients being answered may take.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// The listening socket; removed when dropped.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What every client thread answers from.
struct Served {
    store: Arc<Store>,
    shared: Arc<Shared>,
    clients: Slots,
}

impl ControlServer {
    /// Binds the socket in `dir`, replacing a stale one left by a killed
    /// daemon (the caller holds the store's lock, so no live daemon owns it).
    pub fn start(dir: &Path, store: Arc<Store>, shared: Arc<Shared>) -> Result<ControlServer> {
        let path = socket_path(dir);
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("replaced a stale control socket left by an earlier run"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove the stale socket {}", path.display()))
            }
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot create the control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let context = Arc::new(Served {
            store,
            shared,
            clients: Slots::default(),
        });
        let (stop_flag, socket) = (stop.clone(), path.clone());
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(listener, &socket, context, &stop_flag))
            .context("cannot start the control thread")?;
        Ok(ControlServer {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept (this connection closes at once, so it
        // costs no deadline), then remove the socket: later clients find
        // no daemon and open the state themselves once it is released.
        drop(UnixStream::connect(&self.path));
        let _ = std::fs::remove_file(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: UnixListener, path: &Path, context: Arc<Served>, stop: &AtomicBool) {
    loop {
        context.clients.wait_for_room(MAX_CLIENTS);
        match listener.accept() {
            Ok((stream, _)) => spawn_client(stream, &context),
            Err(e) => {
                log::warn!("control socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    // The crawl is ending. Answer whoever connected before the socket was
    // removed (wait for the removal, so that no one connects after the
    // backlog was emptied), then wait for the answers to go out.
    let gone = Instant::now() + Duration::from_secs(1);
    while path.exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(5));
    }
    if listener.set_nonblocking(true).is_ok() {
        while let Ok((stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            context.clients.wait_for_room(MAX_CLIENTS);
            spawn_client(stream, &context);
        }
    }
    if !context.clients.wait_idle(DRAIN_WAIT) {
        log::warn!("control socket: a client still being answered as the crawl ends");
    }
}

fn spawn_client(stream: UnixStream, context: &Arc<Served>) {
    context.clients.take();
    let shared_context = context.clone();
    let spawned = std::thread::Builder::new()
        .name("control-client".into())
        .spawn(move || {
            serve_client(&stream, &shared_context);
            shared_context.clients.give_back();
        });
    if spawned.is_err() {
        context.clients.give_back();
        log::warn!("control socket: cannot start a thread for a request");
    }
}

/// Counts the clients being served; lets the accept loop wait for room.
#[derive(Default)]
struct Slots {
    busy: Mutex<usize>,
    changed: Condvar,
}

impl Slots {
    fn count(&self) -> std::sync::MutexGuard<'_, usize> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_for_room(&self, limit: usize) {
        let mut busy = self.count();
        while *busy >= limit {
            busy = self.changed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn take(&self) {
        *self.count() += 1;
    }

    fn give_back(&self) {
        *self.count() -= 1;
        self.changed.notify_all();
    }

    /// Waits until no client is served; false if `timeout` passed first.
    fn wait_idle(&self, timeout: Duration) -> bool {
        let busy = self.count();
        let (busy, _) = self
            .changed
            .wait_timeout_while(busy, timeout, |busy| *busy > 0)
            .unwrap_or_else(|e| e.into_inner());
        *busy == 0
    }
}

fn serve_client(stream: &UnixStream, context: &Served) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let line = match read_request(stream, Instant::now() + REQUEST_DEADLINE) {
        Ok(Some(line)) => line,
        Ok(None) => return,
        Err(reply) => {
            let _ = reply_line(stream, &reply);
            return;
        }
    };
    let reply = match serde_json::from_slice::<Request>(&line) {
        Ok(request) if request.v != VERSION => error_reply(
            &format!(
                "protocol version {} not supported (this daemon speaks {VERSION})",
                request.v
            ),
            2,
        ),
        Ok(request) if request.command.changes_state() && request.expired() => Reply {
            late: true,
            ..error_reply(
                "the request reached the crawl after its deadline; nothing was changed",
                1,
            )
        },
        Ok(Request {
            command:
                Command::Queue {
                    state,
                    limit,
                    stream: true,
                },
            ..
        }) => {
            stream_queue(stream, &context.store, &context.shared, &state, limit);
            return;
        }
        Ok(request) => answer(request.command, &context.store, &context.shared),
        Err(e) => error_reply(&format!("malformed request: {e}"), 2),
    };
    let _ = reply_line(stream, &reply);
}

/// Reads one request line, all of it before `deadline`. `Ok(None)`: the
/// client closed without sending anything (a probe).
fn read_request(mut stream: &UnixStream, deadline: Instant) -> Result<Option<Vec<u8>>, Reply> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(error_reply(
                &format!(
                    "no complete request within {} s",
                    REQUEST_DEADLINE.as_secs()
                ),
                2,
            ));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Ok((!line.is_empty()).then_some(line)),
            Ok(n) => {
                line.extend_from_slice(&chunk[..n]);
                if let Some(end) = line.iter().position(|&b| b == b'\n') {
                    line.truncate(end);
                    return Ok(Some(line));
                }
                if line.len() > MAX_REQUEST {
                    return Err(error_reply(
                        &format!("request longer than {MAX_REQUEST} bytes"),
                        2,
                    ));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(error_reply(&format!("cannot read the request: {e}"), 2)),
        }
    }
}

/// `queue`, one line per row as sled yields it, then a final reply line
/// (`{"ok":true,"result":{"rows":N}}`, or an error): memory stays flat
/// whatever the limit.
fn stream_queue(stream: &UnixStream, store: &Store, shared: &Shared, state: &str, limit: usize) {
    let mut out = BufWriter::new(stream);
    let mut rows: u64 = 0;
    let in_flight = |page| shared.is_fetching(crate::pipeline::Task::Page(page));
    let listed = ops::queue_each_marked(store, state, limit, &in_flight, &mut |row| {
        serde_json::to_writer(&mut out, &RowLine { row })?;
        out.write_all(b"\n")?;
        rows += 1;
        Ok(())
    });
    let last = match listed {
        Ok(()) => ok_reply(serde_json::json!({ "rows": rows })),
        Err(e) => error_reply(&crate::error::one_line(&e), exit_for(&e) as u8),
    };
    let mut line = serde_json::to_vec(&last).unwrap_or_default();
    line.push(b'\n');
    let _ = out.write_all(&line).and_then(|()| out.flush());
}

fn answer(command: Command, store: &Store, shared: &Shared) -> Reply {
    let daemon = || ops::Daemon {
        pid: std::process::id(),
        paused: shared.paused.load(Ordering::SeqCst),
        follow_ms: shared.config().follow.map(|every| every.as_millis() as u64),
    };
    // `None`: the crawl is finishing and takes no more pages.
    let result: Result<Option<serde_json::Value>> = (|| {
        Ok(Some(match command {
            Command::Status => serde_json::to_value(ops::status(store, Some(daemon()))?)?,
            Command::Queue { state, limit, .. } => {
                let mut rows = Vec::new();
                let in_flight = |page| shared.is_fetching(crate::pipeline::Task::Page(page));
                ops::queue_each_marked(store, &state, limit, &in_flight, &mut |row| {
                    rows.push(row);
                    Ok(())
                })?;
                serde_json::to_value(rows)?
            }
            Command::Enqueue { ranges } => {
                match shared.take_pages(|| ops::enqueue(store, &ranges)) {
                    Some(report) => serde_json::to_value(report?)?,
                    None => return Ok(None),
                }
            }
            Command::Retry { pages } => match shared.take_pages(|| ops::retry(store, &pages)) {
                Some(report) => serde_json::to_value(report?)?,
                None => return Ok(None),
            },
            Command::Pause | Command::Resume => {
                let pause = matches!(command, Command::Pause);
                if shared.paused.swap(pause, Ordering::SeqCst) != pause {
                    log::info!(
                        "{} by a control request",
                        if pause { "paused" } else { "resumed" }
                    );
                }
                serde_json::to_value(ops::status(store, Some(daemon()))?)?
            }
            Command::Export => serde_json::to_value(ops::export_info(store)?)?,
            Command::Reopen => serde_json::to_value(reopen(shared)?)?,
            Command::Metrics => serde_json::Value::String(shared.metrics_text(store)?),
        }))
    })();
    match result {
        Ok(Some(value)) => ok_reply(value),
        Ok(None) => Reply {
            finishing: true,
            ..error_reply(
                &format!(
                    "the running crawl (pid {}) is finishing and takes no more pages",
                    std::process::id()
                ),
                crate::exit_code::Exit::Busy as u8,
            )
        },
        Err(e) => error_reply(&crate::error::one_line(&e), exit_for(&e) as u8),
    }
}

/// Asks the commit stage for a reopen and waits for its outcome: whether
/// a new file was started.
fn reopen(shared: &Shared) -> Result<bool> {
    let (reply, outcome) = crossbeam_channel::bounded(1);
    shared.reopen_requests.0.try_send(reply).map_err(|_| {
        anyhow::anyhow!("a reopen is already waiting for the next commit; try again")
    })?;
    match outcome.recv_timeout(REOPEN_WAIT) {
        Ok(result) => result.map_err(|why| anyhow::anyhow!(why)),
        Err(_) => Err(anyhow::anyhow!(
            "the crawl did not reach a commit boundary within {REOPEN_WAIT:?}; the reopen stays queued and will happen at the next one"
        )),
    }
}

/// How long `reopen` waits for the commit stage (which may be flushing a
/// group or waiting on a slow disk).
const REOPEN_WAIT: Duration = Duration::from_secs(20);

fn ok_reply(value: serde_json::Value) -> Reply {
    Reply {
        ok: true,
        result: Some(value),
        error: None,
        exit: None,
        finishing: false,
        late: false,
    }
}

fn error_reply(message: &str, exit: u8) -> Reply {
    Reply {
        ok: false,
        result: None,
        error: Some(message.to_string()),
        exit: Some(exit),
        finishing: false,
        late: false,
    }
}

fn reply_line(mut stream: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line)
}

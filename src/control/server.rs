//! The daemon's side of the control socket: accepts connections in a
//! thread of its own, answers each line-delimited JSON request from the
//! running store, and never lets a bad request disturb the crawl.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{ops, socket_path, Command, Reply, Request, MAX_REQUEST, VERSION};
use crate::error::exit_for;
use crate::pipeline::Shared;
use crate::store::Store;

/// At most this many requests are served at once; more get a busy reply.
const MAX_CLIENTS: usize = 8;

/// The listening socket; removed when dropped.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl ControlServer {
    /// Binds the socket in `dir`, replacing a stale one left by a killed
    /// daemon (the caller holds the store's lock, so no live daemon owns it).
    pub fn start(dir: &Path, store: Arc<Store>, shared: Arc<Shared>) -> Result<ControlServer> {
        let path = socket_path(dir);
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("replaced a stale control socket left by an earlier run"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
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
        let stop_flag = stop.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(listener, store, shared, stop_flag))
            .context("cannot start the control thread")?;
        Ok(ControlServer { path, stop })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag and ends.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    store: Arc<Store>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let clients = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("control socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            let _ = reply_line(
                &stream,
                &error_reply("too many control requests at once; try again", 1),
            );
            continue;
        }
        let (store, shared, clients) = (store.clone(), shared.clone(), clients.clone());
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                serve_client(stream, &store, &shared);
                clients.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            log::warn!("control socket: cannot start a thread for a request");
        }
    }
}

fn serve_client(stream: UnixStream, store: &Store, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let reply = match reader.read_until(b'\n', &mut line) {
        Ok(_) if line.len() > MAX_REQUEST => {
            error_reply(&format!("request longer than {MAX_REQUEST} bytes"), 2)
        }
        Ok(0) => return,
        Ok(_) => match serde_json::from_slice::<Request>(&line) {
            Ok(request) if request.v != VERSION => error_reply(
                &format!(
                    "protocol version {} not supported (this daemon speaks {VERSION})",
                    request.v
                ),
                2,
            ),
            Ok(request) => answer(request.command, store, shared),
            Err(e) => error_reply(&format!("malformed request: {e}"), 2),
        },
        Err(e) => error_reply(&format!("cannot read the request: {e}"), 2),
    };
    let _ = reply_line(&stream, &reply);
}

fn answer(command: Command, store: &Store, shared: &Shared) -> Reply {
    let daemon = || ops::Daemon {
        pid: std::process::id(),
        paused: shared.paused.load(Ordering::SeqCst),
    };
    let result: Result<serde_json::Value> = (|| {
        Ok(match command {
            Command::Status => serde_json::to_value(ops::status(store, Some(daemon()))?)?,
            Command::Queue { state, limit } => {
                serde_json::to_value(ops::queue(store, &state, limit)?)?
            }
            Command::Enqueue { ranges } => {
                let report = ops::enqueue(store, &ranges)?;
                shared.rescan.store(true, Ordering::SeqCst);
                serde_json::to_value(report)?
            }
            Command::Retry { pages } => {
                let report = ops::retry(store, &pages)?;
                shared.rescan.store(true, Ordering::SeqCst);
                serde_json::to_value(report)?
            }
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
        })
    })();
    match result {
        Ok(value) => Reply {
            ok: true,
            result: Some(value),
            error: None,
            exit: None,
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

fn error_reply(message: &str, exit: u8) -> Reply {
    Reply {
        ok: false,
        result: None,
        error: Some(message.to_string()),
        exit: Some(exit),
    }
}

fn reply_line(mut stream: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line)
}

//! Talking to a running daemon. sled lets one process open a database, so
//! while `run` holds the state directory the other commands send it their
//! request over a Unix socket there (`control.sock`, mode 0600 in a 0700
//! directory) and it answers from its own store. When no daemon runs they
//! open the store themselves. [`Backend`] hides which of the two it is.
//!
//! The protocol is one JSON object per line each way. A request is
//! `{"v":1,"cmd":"status"}` (or `queue`, `enqueue`, `retry`, `pause`,
//! `resume`, `export`, `reopen`, `metrics`, with their arguments); the reply is
//! `{"ok":true,"result":...}` or `{"ok":false,"error":"...","exit":N}`.
//! Extensions, each optional and ignored by older peers:
//! - `"stream":true` on `queue`: one `{"row":{...}}` line per page, then the
//!   reply line `{"ok":true,"result":{"rows":N}}` (or an error reply).
//! - `"deadline_ms"` (Unix ms) on a request that changes state: a daemon
//!   that reads it later refuses it unapplied, with `"late":true` (the
//!   client, if it still waits, sends it again).
//! - `"finishing":true` on an error reply: the crawl is ending and took no
//!   more pages; the CLI then applies the change itself once the state is
//!   released.
//! - `metrics` (added after 0.1.0): the result is the metrics text, a
//!   string (see `crate::metrics`). A daemon from before it refuses the
//!   request as malformed (`unknown variant`); the CLI then says so.

mod link;
pub mod ops;
pub mod server;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::UserError;
use crate::store::{EnqueueReport, Store};
pub use link::exchange;
use link::{connect_within, no_answer, Link};

/// The protocol version a request carries.
pub const VERSION: u32 = 1;
/// Largest request the daemon reads; anything longer gets an error reply.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a command waits for the state when another process holds it
/// but does not listen: a daemon starting (the socket comes up once the
/// queue is open) or ending (the socket is gone, the lock not yet
/// released), or other commands, each holding it for a moment.
const STARTUP_WAIT: Duration = Duration::from_secs(30);
/// How long a command waits for the daemon to answer (for `queue`: for
/// each row) before reporting it does not answer.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// The same for `enqueue` and `retry`, whose work grows with the pages
/// named; a stopped daemon is still reported after [`STOPPED_AFTER`].
const CHANGE_WAIT: Duration = Duration::from_secs(15);
/// Silence after which a stopped daemon (`kill -STOP`) is reported. A
/// request that changes state carries this as its deadline: a daemon
/// continued later must not apply what its client gave up on.
const STOPPED_AFTER: Duration = Duration::from_secs(1);
/// How often a waiting command looks whether the daemon is stopped.
const POLL: Duration = Duration::from_millis(200);
/// How long `enqueue` and `retry` wait for a finishing crawl to release the
/// state, to apply what it could no longer take.
const RELEASE_WAIT: Duration = Duration::from_secs(60);
/// Largest reply line the CLI reads.
const MAX_REPLY: u64 = 256 << 20;

/// The control socket of a state directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// A request, as sent on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    /// Unix ms after which the client no longer waits: a daemon that reads
    /// a request that changes state later refuses it, unapplied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Status,
    Queue {
        state: String,
        limit: usize,
        /// Rows as separate lines (see the module doc); absent from older
        /// clients, which get one reply.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stream: bool,
    },
    Enqueue {
        ranges: Vec<String>,
    },
    Retry {
        pages: Vec<u64>,
    },
    Pause,
    Resume,
    Export,
    /// Start a new output file at the next commit boundary.
    Reopen,
    /// The metrics text (Prometheus / OpenMetrics).
    Metrics,
}

/// A reply, as sent on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The exit code the CLI should end with on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<u8>,
    /// The crawl is finishing and could not take the pages asked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finishing: bool,
    /// The request was read after its deadline and not applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// One row of a streamed `queue` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct RowLine {
    pub row: ops::QueueRow,
}

impl Command {
    /// Whether the request changes the crawl's state (and so must not be
    /// applied after its client gave up).
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Command::Enqueue { .. }
                | Command::Retry { .. }
                | Command::Pause
                | Command::Resume
                | Command::Reopen
        )
    }

    fn answer_wait(&self) -> Duration {
        match self {
            Command::Enqueue { .. } | Command::Retry { .. } => CHANGE_WAIT,
            // The daemon waits up to 20 s for its next commit boundary.
            Command::Reopen => Duration::from_secs(25),
            _ => ANSWER_WAIT,
        }
    }
}

impl Request {
    fn new(command: Command) -> Request {
        let deadline_ms = command
            .changes_state()
            .then(|| crate::util::now_ms() + STOPPED_AFTER.as_millis() as u64);
        Request {
            v: VERSION,
            deadline_ms,
            command,
        }
    }

    /// Whether its client has stopped waiting.
    pub fn expired(&self) -> bool {
        self.deadline_ms
            .is_some_and(|deadline| crate::util::now_ms() > deadline)
    }
}

/// A request the daemon did not take: it is finishing (and said so), or its
/// socket was gone by the time the request was sent. Either way nothing was
/// applied, and the CLI can apply it itself once the state is released.
#[derive(Debug)]
struct NotTaken(String);

impl std::fmt::Display for NotTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotTaken {}

/// Where a command's answers come from.
pub enum Backend {
    /// A running daemon, over its socket.
    Daemon(PathBuf),
    /// The store, opened by this process.
    Direct(Box<Store>),
}

impl Backend {
    /// Connects to the daemon of `dir` if one answers, else opens the store.
    pub fn connect(dir: &Path) -> Result<Backend> {
        let socket = socket_path(dir);
        let deadline = Instant::now() + STARTUP_WAIT;
        let mut backoff = Backoff::default();
        loop {
            if socket.exists() {
                match connect_within(&socket, ANSWER_WAIT) {
                    Ok(_) => return Ok(Backend::Daemon(socket)),
                    Err(e) if e.kind() == ErrorKind::TimedOut => {
                        return Err(no_answer(dir, ANSWER_WAIT, false))
                    }
                    Err(_) => {}
                }
            }
            // No daemon answers (none runs, a killed one left its socket,
            // or one is starting or ending): open the state ourselves;
            // sled's lock tells us if a daemon holds it.
            match Store::open_existing(dir) {
                Ok(store) => return Ok(Backend::Direct(Box::new(store))),
                Err(error)
                    if crate::error::exit_for(&error) == crate::exit_code::Exit::Busy
                        && Instant::now() < deadline =>
                {
                    backoff.sleep();
                }
                Err(error) => return Err(error),
            }
        }
    }

    pub fn is_daemon(&self) -> bool {
        matches!(self, Backend::Daemon(_))
    }

    pub fn status(&mut self) -> Result<ops::Status> {
        match self.ask_or_take_over(Command::Status)? {
            Some(status) => Ok(status),
            None => self.direct(|store| ops::status(store, None)),
        }
    }

    /// Hands `each` up to `limit` pages in `state` as they arrive (from the
    /// daemon, streamed; or from the store): constant memory either way.
    pub fn queue_each(
        &mut self,
        state: &str,
        limit: usize,
        each: &mut dyn FnMut(ops::QueueRow) -> Result<()>,
    ) -> Result<()> {
        let socket = match self {
            Backend::Direct(store) => return ops::queue_each(store, state, limit, each),
            Backend::Daemon(socket) => socket.clone(),
        };
        let command = Command::Queue {
            state: state.into(),
            limit,
            stream: true,
        };
        let mut link = match Link::open(&socket, &Request::new(command)) {
            Err(error) if error.downcast_ref::<NotTaken>().is_some() => {
                *self = Backend::Direct(Box::new(wait_for_release(dir_of(&socket), &error)?));
                return self.queue_each(state, limit, each);
            }
            link => link?,
        };
        let mut rows = 0u64;
        loop {
            let Some(line) = link.next_line()? else {
                return Err(anyhow!(
                    "the daemon at {} ended its listing after {rows} rows without a last line",
                    socket.display()
                ));
            };
            let value: serde_json::Value = serde_json::from_slice(&line).with_context(|| {
                format!("the daemon at {} sent a malformed reply", socket.display())
            })?;
            if value.get("row").is_some() {
                let row: RowLine = serde_json::from_value(value).context(
                    "the daemon's reply has an unexpected shape (is it another pagecrawl version?)",
                )?;
                each(row.row)?;
                rows += 1;
                continue;
            }
            let reply: Reply = serde_json::from_value(value).with_context(|| {
                format!("the daemon at {} sent a malformed reply", socket.display())
            })?;
            if rows == 0 && is_before_streaming(&reply) {
                let command = Command::Queue {
                    state: state.into(),
                    limit,
                    stream: false,
                };
                for row in ask::<Vec<ops::QueueRow>>(&socket, command)? {
                    each(row)?;
                }
                return Ok(());
            }
            let result = result_of(reply)?;
            // A daemon from before streaming sends the rows in one reply.
            if let serde_json::Value::Array(rows) = result {
                for row in rows {
                    each(serde_json::from_value(row)?)?;
                }
            }
            return Ok(());
        }
    }

    /// Queues pages. If the daemon is finishing and cannot take them, they
    /// are queued in the state once it is released (and `self` becomes
    /// [`Backend::Direct`], so the caller can say the next run fetches them).
    pub fn enqueue(&mut self, ranges: &[String]) -> Result<EnqueueReport> {
        let command = Command::Enqueue {
            ranges: ranges.to_vec(),
        };
        match self.ask_or_take_over(command)? {
            Some(report) => Ok(report),
            None => self.direct(|store| ops::enqueue(store, ranges)),
        }
    }

    /// Failed pages back to pending; like [`Backend::enqueue`] when the
    /// daemon is finishing.
    pub fn retry(&mut self, pages: &[u64]) -> Result<ops::RetryReport> {
        let command = Command::Retry {
            pages: pages.to_vec(),
        };
        match self.ask_or_take_over(command)? {
            Some(report) => Ok(report),
            None => self.direct(|store| ops::retry(store, pages)),
        }
    }

    /// Asks the daemon; `None` when it did not take the request (it is
    /// finishing, or its socket went away) and this process now holds the
    /// state instead.
    fn ask_or_take_over<T: DeserializeOwned>(&mut self, command: Command) -> Result<Option<T>> {
        let Backend::Daemon(socket) = self else {
            return Ok(None);
        };
        match ask(socket, command) {
            Ok(answer) => Ok(Some(answer)),
            Err(error) if error.downcast_ref::<NotTaken>().is_some() => {
                let store = wait_for_release(dir_of(socket), &error)?;
                *self = Backend::Direct(Box::new(store));
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    fn direct<T>(&self, operation: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        match self {
            Backend::Direct(store) => operation(store),
            Backend::Daemon(_) => Err(anyhow!("internal error: no store to apply the change to")),
        }
    }

    /// The metrics text: the running crawl's (`true`), or, with none
    /// running, the store's counters only (`false`).
    pub fn metrics(&mut self) -> Result<(String, bool)> {
        let asked = match self.ask_or_take_over(Command::Metrics) {
            Err(error) if is_before_metrics(&error) => {
                return Err(anyhow!(
                    "the running crawl is an older pagecrawl that has no metrics; restart it with this version                      (`pagecrawl status` works meanwhile)"
                ))
            }
            asked => asked?,
        };
        match asked {
            Some(text) => Ok((text, true)),
            None => Ok((
                self.direct(|store| crate::metrics::render(store, None))?,
                false,
            )),
        }
    }

    pub fn export_info(&mut self) -> Result<ops::ExportInfo> {
        match self.ask_or_take_over(Command::Export)? {
            Some(info) => Ok(info),
            None => self.direct(ops::export_info),
        }
    }

    /// Asks the daemon to start a new output file at its next commit;
    /// returns whether it did. With no daemon, `reopen` acts on the store
    /// itself.
    pub fn reopen_running(socket: &Path) -> Result<bool> {
        ask(socket, Command::Reopen)
    }

    /// Pauses or resumes the daemon; there must be one.
    pub fn set_paused(&self, paused: bool) -> Result<ops::Status> {
        match self {
            Backend::Daemon(socket) => ask(
                socket,
                if paused {
                    Command::Pause
                } else {
                    Command::Resume
                },
            ),
            Backend::Direct(store) => Err(UserError::Usage(format!(
                "no crawl is running in {}; pause and resume act on a running `pagecrawl run`",
                store.dir().display()
            ))
            .into()),
        }
    }
}

/// Waits between tries to open a state another process holds: from 20 ms
/// doubling to 400 ms, with jitter, so that many commands waiting at once
/// (each try opens the database) do not starve the one holding it.
#[derive(Default)]
struct Backoff {
    tries: u32,
}

impl Backoff {
    fn sleep(&mut self) {
        let full = Duration::from_millis(20 << self.tries.min(4));
        self.tries += 1;
        std::thread::sleep(full.mul_f64(0.5 + fastrand::f64() * 0.5));
    }
}

/// Whether a daemon refused a streamed `queue` because it predates
/// streaming (it denies unknown fields): ask it the old way then.
fn is_before_streaming(reply: &Reply) -> bool {
    refused_field(reply, "stream")
}

/// Whether a daemon refused a request's deadline because it predates
/// deadlines: send it without one then.
fn is_before_deadlines(reply: &Reply) -> bool {
    refused_field(reply, "deadline_ms")
}

/// Whether a daemon refused `metrics` because it predates the command.
fn is_before_metrics(error: &anyhow::Error) -> bool {
    error.to_string().contains("unknown variant `metrics`")
}

fn refused_field(reply: &Reply, field: &str) -> bool {
    !reply.ok
        && reply
            .error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("unknown field `{field}`")))
}

/// The state directory of a socket.
fn dir_of(socket: &Path) -> &Path {
    socket.parent().unwrap_or(Path::new("."))
}

/// Waits for a finishing daemon to release the state, and opens it.
fn wait_for_release(dir: &Path, refusal: &anyhow::Error) -> Result<Store> {
    let deadline = Instant::now() + RELEASE_WAIT;
    let mut backoff = Backoff::default();
    loop {
        match Store::open_existing(dir) {
            Ok(store) => return Ok(store),
            Err(error)
                if crate::error::exit_for(&error) == crate::exit_code::Exit::Busy
                    && Instant::now() < deadline =>
            {
                backoff.sleep();
            }
            Err(error) if crate::error::exit_for(&error) == crate::exit_code::Exit::Busy => {
                return Err(UserError::Busy(format!(
                    "{refusal}, and still holds {} after {} s; nothing was changed: run the same command again once it has exited",
                    dir.display(),
                    RELEASE_WAIT.as_secs()
                ))
                .into())
            }
            Err(error) => return Err(error),
        }
    }
}

/// Sends one request and decodes the result. A request that reached a
/// slow daemon after its deadline is sent again while the client waits.
fn ask<T: DeserializeOwned>(socket: &Path, command: Command) -> Result<T> {
    let started = Instant::now();
    let reply = loop {
        let mut request = Request::new(command.clone());
        let mut reply = exchange(socket, &request)?;
        if is_before_deadlines(&reply) {
            // It refused the request unread; it has no deadlines to keep.
            request.deadline_ms = None;
            reply = exchange(socket, &request)?;
        }
        if !reply.late || started.elapsed() >= command.answer_wait() {
            break reply;
        }
    };
    let result = result_of(reply)?;
    serde_json::from_value(result)
        .context("the daemon's reply has an unexpected shape (is it another pagecrawl version?)")
}

/// A reply's result, or its error with the exit code it names.
fn result_of(reply: Reply) -> Result<serde_json::Value> {
    if !reply.ok {
        let message = reply
            .error
            .unwrap_or_else(|| "the daemon refused the request".into());
        if reply.finishing {
            return Err(NotTaken(message).into());
        }
        return Err(match reply.exit {
            Some(2) => UserError::Usage(message).into(),
            Some(3) => UserError::Busy(message).into(),
            _ => anyhow!(message),
        });
    }
    Ok(reply.result.unwrap_or(serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_wait_longer_than_questions_and_every_wait_is_bounded() {
        let status = Command::Status.answer_wait();
        assert_eq!(status, ANSWER_WAIT);
        assert!(status > STOPPED_AFTER && status <= Duration::from_secs(3));
        assert!(Command::Enqueue { ranges: vec![] }.answer_wait() > status);
        assert!(Command::Retry { pages: vec![] }.answer_wait() > status);
        assert!(Command::Pause.changes_state() && !Command::Export.changes_state());
    }

    #[test]
    fn requests_that_change_state_carry_a_deadline_and_others_do_not() {
        let status = serde_json::to_string(&Request::new(Command::Status)).unwrap();
        assert_eq!(status, r#"{"v":1,"cmd":"status"}"#);
        let retry = Request::new(Command::Retry { pages: vec![3] });
        assert!(retry.deadline_ms.is_some() && !retry.expired());
        let late = Request {
            deadline_ms: Some(1),
            ..retry
        };
        assert!(late.expired());
        let old: Request =
            serde_json::from_str(r#"{"v":1,"cmd":"queue","state":"done","limit":5}"#).unwrap();
        assert!(matches!(old.command, Command::Queue { stream: false, .. }));
    }
}

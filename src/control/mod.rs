//! Talking to a running daemon. sled lets one process open a database, so
//! while `run` holds the state directory the other commands send it their
//! request over a Unix socket there (`control.sock`, mode 0600 in a 0700
//! directory) and it answers from its own store. When no daemon runs they
//! open the store themselves. [`Backend`] hides which of the two it is.
//!
//! The protocol is one JSON object per line each way. A request is
//! `{"v":1,"cmd":"status"}` (or `queue`, `enqueue`, `retry`, `pause`,
//! `resume`, `export`, with their arguments); the reply is
//! `{"ok":true,"result":...}` or `{"ok":false,"error":"...","exit":N}`.

pub mod ops;
pub mod server;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::UserError;
use crate::store::{EnqueueReport, Store};

/// The protocol version a request carries.
pub const VERSION: u32 = 1;
/// Largest request the daemon reads; anything longer gets an error reply.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a command waits for a daemon that holds the state but has not
/// opened its socket yet.
const STARTUP_WAIT: Duration = Duration::from_secs(3);
/// Largest reply the CLI reads (a long `queue --limit`).
const MAX_REPLY: u64 = 256 << 20;

/// The control socket of a state directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// A request, as sent on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
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
}

/// Where a command's answers come from.
pub enum Backend {
    /// A running daemon, over its socket.
    Daemon(PathBuf),
    /// The store, opened by this process.
    Direct(Store),
}

impl Backend {
    /// Connects to the daemon of `dir` if one answers, else opens the store.
    pub fn connect(dir: &Path) -> Result<Backend> {
        let socket = socket_path(dir);
        if socket.exists() && UnixStream::connect(&socket).is_ok() {
            return Ok(Backend::Daemon(socket));
        }
        // No daemon answers (none runs, or a killed one left its socket):
        // open the state ourselves; sled's lock tells us if one does run.
        match Store::open_existing(dir) {
            Ok(store) => Ok(Backend::Direct(store)),
            Err(error) if crate::error::exit_for(&error) == crate::exit_code::Exit::Busy => {
                // A daemon holds the state but is not answering yet: it is
                // starting (the socket comes up once the queue is open).
                // Give it a moment before reporting it busy.
                let answers = || UnixStream::connect(&socket).is_ok();
                let deadline = std::time::Instant::now() + STARTUP_WAIT;
                while std::time::Instant::now() < deadline {
                    if answers() {
                        return Ok(Backend::Daemon(socket));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    pub fn status(&self) -> Result<ops::Status> {
        match self {
            Backend::Daemon(socket) => ask(socket, Command::Status),
            Backend::Direct(store) => ops::status(store, None),
        }
    }

    pub fn queue(&self, state: &str, limit: usize) -> Result<Vec<ops::QueueRow>> {
        match self {
            Backend::Daemon(socket) => ask(
                socket,
                Command::Queue {
                    state: state.into(),
                    limit,
                },
            ),
            Backend::Direct(store) => ops::queue(store, state, limit),
        }
    }

    pub fn enqueue(&self, ranges: &[String]) -> Result<EnqueueReport> {
        match self {
            Backend::Daemon(socket) => ask(
                socket,
                Command::Enqueue {
                    ranges: ranges.to_vec(),
                },
            ),
            Backend::Direct(store) => ops::enqueue(store, ranges),
        }
    }

    pub fn retry(&self, pages: &[u64]) -> Result<ops::RetryReport> {
        match self {
            Backend::Daemon(socket) => ask(
                socket,
                Command::Retry {
                    pages: pages.to_vec(),
                },
            ),
            Backend::Direct(store) => ops::retry(store, pages),
        }
    }

    pub fn export_info(&self) -> Result<ops::ExportInfo> {
        match self {
            Backend::Daemon(socket) => ask(socket, Command::Export),
            Backend::Direct(store) => ops::export_info(store),
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

/// Sends one request and decodes the result.
fn ask<T: DeserializeOwned>(socket: &Path, command: Command) -> Result<T> {
    let reply = exchange(
        socket,
        &Request {
            v: VERSION,
            command,
        },
    )?;
    if !reply.ok {
        let message = reply
            .error
            .unwrap_or_else(|| "the daemon refused the request".into());
        return Err(match reply.exit {
            Some(2) => UserError::Usage(message).into(),
            _ => anyhow!(message),
        });
    }
    let result = reply.result.unwrap_or(serde_json::Value::Null);
    serde_json::from_value(result)
        .context("the daemon's reply has an unexpected shape (is it another pagecrawl version?)")
}

/// One round trip on the socket.
pub fn exchange(socket: &Path, request: &Request) -> Result<Reply> {
    let no_answer = |e: std::io::Error| {
        anyhow!(
            "the daemon at {} did not answer: {}",
            socket.display(),
            crate::util::io_reason(&e)
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(no_answer)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(no_answer)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(no_answer)?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(no_answer)?;
    let mut reader = BufReader::new(stream.take(MAX_REPLY));
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(no_answer)?;
    serde_json::from_str(&answer)
        .with_context(|| format!("the daemon at {} sent a malformed reply", socket.display()))
}

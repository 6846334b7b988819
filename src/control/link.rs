//! One connection to a running daemon, from the CLI's side: connecting
//! with a bound (a stopped daemon with a full backlog would make `connect`
//! wait forever), reading the reply a line at a time with a deadline, and
//! telling a stopped daemon (`/proc/PID/stat` state `T`) from a slow one
//! when it does not answer.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::{NotTaken, Reply, Request, MAX_REPLY, POLL, STOPPED_AFTER};

/// One round trip on the socket.
pub fn exchange(socket: &Path, request: &Request) -> Result<Reply> {
    let mut link = Link::open(socket, request)?;
    let Some(answer) = link.next_line()? else {
        return Err(anyhow!(
            "the running crawl closed the connection without answering (did it exit?){}",
            if request.command.changes_state() {
                "; `pagecrawl status` and `pagecrawl queue` show whether the request was applied"
            } else {
                ""
            }
        ));
    };
    serde_json::from_slice(&answer)
        .with_context(|| format!("the daemon at {} sent a malformed reply", socket.display()))
}

/// A request sent, and its reply being read with a deadline per line.
pub(super) struct Link {
    reader: BufReader<std::io::Take<UnixStream>>,
    socket: PathBuf,
    wait: Duration,
    changes_state: bool,
}

impl Link {
    pub(super) fn open(socket: &Path, request: &Request) -> Result<Link> {
        let dir = socket.parent().unwrap_or(Path::new("."));
        let wait = request.command.answer_wait();
        let changes_state = request.command.changes_state();
        let failed = |e: std::io::Error| {
            if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) {
                no_answer(dir, wait, changes_state)
            } else if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) {
                // It ended between our look and this request.
                NotTaken(format!(
                    "the running crawl ended before it got the request ({})",
                    crate::util::io_reason(&e)
                ))
                .into()
            } else {
                anyhow!(
                    "the daemon at {} did not answer: {}",
                    socket.display(),
                    crate::util::io_reason(&e)
                )
            }
        };
        let mut stream = connect_within(socket, wait).map_err(failed)?;
        stream.set_write_timeout(Some(wait)).map_err(failed)?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line).map_err(failed)?;
        stream.set_read_timeout(Some(POLL)).map_err(failed)?;
        Ok(Link {
            reader: BufReader::new(stream.take(MAX_REPLY)),
            socket: socket.to_path_buf(),
            wait,
            changes_state,
        })
    }

    /// The next line of the reply (`None` at the end), waiting at most the
    /// request's wait for it to progress, and reporting a stopped daemon
    /// after [`STOPPED_AFTER`].
    pub(super) fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        let dir = self.socket.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.reader.get_mut().set_limit(MAX_REPLY);
        let mut line = Vec::new();
        let mut progress = Instant::now();
        loop {
            let before = line.len();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => return Ok((!line.is_empty()).then_some(line)),
                Ok(_) if line.ends_with(b"\n") => return Ok(Some(line)),
                Ok(_) => return Ok(Some(line)),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    if line.len() > before {
                        progress = Instant::now();
                    }
                    let silent = progress.elapsed();
                    let stopped = silent >= STOPPED_AFTER && daemon_stopped(&dir);
                    if stopped || silent >= self.wait {
                        return Err(no_answer(&dir, self.wait, self.changes_state));
                    }
                }
                Err(e) => {
                    return Err(anyhow!(
                        "the daemon at {} did not answer: {}",
                        self.socket.display(),
                        crate::util::io_reason(&e)
                    ))
                }
            }
        }
    }
}

/// Connects, giving up after `wait` (a stopped daemon whose listen backlog
/// is full would make `connect` wait forever): `TimedOut` then.
pub(super) fn connect_within(socket: &Path, wait: Duration) -> std::io::Result<UnixStream> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let path = socket.to_path_buf();
    std::thread::Builder::new()
        .name("connect".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(path));
        })?;
    // A stopped daemon is reported sooner than a merely slow one.
    let started = Instant::now();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(result) => return result,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("the connecting thread ended"))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let silent = started.elapsed();
                let dir = socket.parent().unwrap_or(Path::new("."));
                if silent >= wait || (silent >= STOPPED_AFTER && daemon_stopped(dir)) {
                    return Err(ErrorKind::TimedOut.into());
                }
            }
        }
    }
}

/// The pid in the state directory's pid file.
fn daemon_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(crate::store::pid_path(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The state letter of a process in `/proc/PID/stat` (`R`, `S`, `D`, `T`...).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    process_state_of(&stat)
}

/// The state field of a `/proc/PID/stat` line: the first one after the
/// command name, which is in parentheses and may itself hold ") ".
fn process_state_of(stat: &str) -> Option<char> {
    let (_, after) = stat.rsplit_once(')')?;
    after.trim_start().chars().next()
}

/// Whether the daemon of `dir` is stopped (SIGSTOP, a debugger).
fn daemon_stopped(dir: &Path) -> bool {
    daemon_pid(dir)
        .and_then(process_state)
        .is_some_and(|state| matches!(state, 'T' | 't'))
}

/// The error for a daemon that did not answer within `wait`.
pub(super) fn no_answer(dir: &Path, wait: Duration, changes_state: bool) -> anyhow::Error {
    let pid = daemon_pid(dir);
    let who = pid.map_or("the running crawl".to_string(), |pid| {
        format!("the running crawl (pid {pid})")
    });
    match pid.and_then(process_state) {
        Some('T' | 't') => anyhow!(
            "{who} does not answer; it is stopped (`kill -CONT {}` resumes it){}",
            pid.unwrap_or_default(),
            if changes_state {
                "; a request it had not read yet is not applied when it resumes"
            } else {
                ""
            }
        ),
        _ => anyhow!(
            "{who} does not answer within {} s; it is not stopped, so it may be overloaded or hung: try again, or look at its log{}",
            wait.as_secs(),
            if changes_state {
                " (it may still apply the request: `pagecrawl status` shows whether it did)"
            } else {
                ""
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_state_is_the_field_after_the_command_name() {
        assert_eq!(process_state_of("4242 (pagecrawl) T 1 4242"), Some('T'));
        assert_eq!(process_state_of("7 (a) b) c) S 1 7"), Some('S'));
        assert_eq!(process_state_of("7 (x"), None);
    }
}

//! Errors a user can act on, each carrying the exit code it maps to.
//!
//! Everything else travels as `anyhow::Error` with context; at the top,
//! `main_entry` looks for a [`UserError`] in the chain to pick the exit code and
//! prints the whole chain on one line.

use crate::exit_code::Exit;

/// An error caused by what the user gave us (or by another process holding
/// the state), as opposed to a runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A configuration file that is missing, unreadable, not TOML, or holds a
    /// value that does not validate. The message names the file and key.
    #[error("{0}")]
    Config(String),
    /// A command-line argument that does not validate (a page range, a path).
    #[error("{0}")]
    Usage(String),
    /// The state directory belongs to a different job (URL, pattern, range or
    /// format changed); the message says how to start afresh.
    #[error("{0}")]
    JobMismatch(String),
    /// Another process holds the state directory's lock.
    #[error("{0}")]
    Busy(String),
    /// A service the command needs (the PostgreSQL store) cannot be reached
    /// now: connection refused, unknown host, no answer in time, or the
    /// server turned the connection away (too many connections, starting
    /// up). The same command may work later.
    #[error("{0}")]
    Unavailable(String),
}

impl UserError {
    /// The exit code this error ends the process with.
    pub fn exit(&self) -> Exit {
        match self {
            UserError::Config(_) | UserError::Usage(_) | UserError::JobMismatch(_) => Exit::Usage,
            UserError::Busy(_) => Exit::Busy,
            UserError::Unavailable(_) => Exit::Unavailable,
        }
    }
}

/// Picks the exit code for an error chain: the first [`UserError`] decides,
/// anything else is a runtime failure.
pub fn exit_for(error: &anyhow::Error) -> Exit {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<UserError>())
        .map_or(Exit::Failure, UserError::exit)
}

/// Renders an error chain as a single line: `outer: inner: root`.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text: String = cause
            .to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        // anyhow's context often repeats the inner message; keep each once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

//! SIGINT, SIGTERM, SIGHUP and SIGUSR1, delivered as messages on a channel so the
//! supervisor can `select!` on them beside its other events.

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

/// A signal the supervisor acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM (named): stop gracefully; twice: exit now.
    Stop(&'static str),
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGUSR1: start a new output file once the old one was moved aside
    /// (nginx's reopen).
    Reopen,
}

/// Starts listening.
pub fn listen() -> Result<Receiver<Signal>> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .context("cannot install signal handlers")?;
    // A few is all the supervisor ever needs queued: it acts on each at once.
    let (tx, rx) = bounded(4);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let message = match signal {
                    SIGINT => Signal::Stop("SIGINT"),
                    SIGTERM => Signal::Stop("SIGTERM"),
                    SIGUSR1 => Signal::Reopen,
                    _ => Signal::Reload,
                };
                let _ = tx.try_send(message);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(rx)
}

//! SIGINT and SIGTERM, delivered as messages on a channel so the supervisor
//! can `select!` on them beside its other events.

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Starts listening; each signal arrives as its name.
pub fn listen() -> Result<Receiver<&'static str>> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    // Two is all the supervisor ever acts on: the first stops, the second
    // exits. Further ones may be dropped.
    let (tx, rx) = bounded(2);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                let _ = tx.try_send(name);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(rx)
}

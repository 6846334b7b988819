//! Small helpers shared by several modules.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An I/O error's reason without Rust's "(os error N)" suffix.
pub fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

use std::sync::atomic::{AtomicBool, Ordering};

/// Set while [`quietly`] runs, so the panic hook stays silent for a panic we
/// catch and turn into an error.
static QUIET_PANICS: AtomicBool = AtomicBool::new(false);

/// Runs `f`, turning a panic inside it (from a dependency) into an error
/// message instead of a backtrace on the user's terminal.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET_PANICS.store(true, Ordering::SeqCst);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.store(false, Ordering::SeqCst);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into())
            .replace('\n', " ")
    })
}

/// Replaces Rust's panic message with one line that says it is a bug, so
/// that even an unforeseen panic reads as a message, not a backtrace.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if QUIET_PANICS.load(Ordering::SeqCst) {
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "pagecrawl: internal error{location}: {message} (this is a bug; please report it)"
        );
    }));
}

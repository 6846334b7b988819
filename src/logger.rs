//! Diagnostics on stderr through `log` and env_logger. `RUST_LOG` wins;
//! otherwise -q/-v pick the level for pagecrawl's own messages. Under
//! journald (`JOURNAL_STREAM` set) lines carry no timestamp (the journal has
//! its own) and start with a `<N>` syslog priority so levels survive.
//!
//! While `run` draws a progress bar, each line is written with the bar
//! suspended (cleared, then redrawn below it), so logs and bar never tear
//! each other: see [`route_through`].

use std::io::Write;
use std::sync::Mutex;

use indicatif::ProgressBar;

pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => log::LevelFilter::Warn,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    // sled logs its own view of a damaged database before returning the
    // error that pagecrawl turns into one clear line; show it only with -vv.
    let sled_level = if verbose >= 2 {
        log::LevelFilter::Trace
    } else {
        log::LevelFilter::Off
    };
    builder
        .filter_level(log::LevelFilter::Warn)
        .filter_module("pagecrawl", level)
        .filter_module("sled", sled_level);
    builder.format_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .format(|out, record| writeln!(out, "<{}>{}", priority(record.level()), record.args()));
    }
    builder.parse_default_env();
    let logger = builder.build();
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(BarAwareLogger { inner: logger })).is_ok() {
        log::set_max_level(max_level);
    }
}

/// The syslog priority of a log level.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// The progress bar on screen, if any; log lines are written around it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Routes log lines around `bar` from now on (`None`: write them plainly).
pub fn route_through(bar: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Takes the progress bar off the screen for good (before an exit that
/// skips destructors), so the shell's prompt does not land on it.
pub fn clear_bar() {
    if let Some(bar) = BAR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        bar.finish_and_clear();
    }
}

/// Prints a message for the user on stderr, above the progress bar if one
/// is drawn.
pub fn eprint_line(message: &str) {
    match current_bar() {
        Some(bar) => bar.suspend(|| eprintln!("{message}")),
        None => eprintln!("{message}"),
    }
}

fn current_bar() -> Option<ProgressBar> {
    BAR.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// env_logger, with each line written while the bar (if any) is suspended.
struct BarAwareLogger {
    inner: env_logger::Logger,
}

impl log::Log for BarAwareLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.inner.matches(record) {
            return;
        }
        // Clone the bar out of the lock: `suspend` may take a while and
        // other threads log too.
        match current_bar() {
            Some(bar) => bar.suspend(|| self.inner.log(record)),
            None => self.inner.log(record),
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

//! Diagnostics on stderr through `log` and env_logger. `RUST_LOG` wins;
//! otherwise -q/-v pick the level for pagecrawl's own messages. Under
//! journald (`JOURNAL_STREAM` set) lines carry no timestamp (the journal has
//! its own) and start with a `<N>` syslog priority so levels survive.

use std::io::Write;

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
    let _ = builder.try_init();
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

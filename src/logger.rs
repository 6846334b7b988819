//! Diagnostics on stderr through `log` and env_logger. `RUST_LOG` wins;
//! otherwise -q/-v pick the level for pagecrawl's own messages.

pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => log::LevelFilter::Warn,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(log::LevelFilter::Warn)
        .filter_module("pagecrawl", level);
    builder.format_target(false);
    builder.parse_default_env();
    let _ = builder.try_init();
}

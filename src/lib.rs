//! pagecrawl: a resumable, polite, exactly-once crawler for paginated
//! listing sites.
//!
//! ```text
//!  sled: pending ─▶ feeder ─▶ fetch × N (ureq) ─▶ parse × M (regex) ─▶ commit (1) ─▶ output file
//!    ▲                       bounded crossbeam channels between stages      │
//!    └──────────── done / failed / counters, one sled batch per commit ◀─────┘
//! ```
//!
//! Modules: `config` (TOML → validated `Config`), `config_reference` (every
//! key documented once), `range` (page ranges), `store` (the sled queue and
//! checkpoint), `pipeline` (the stages), `http` (one fetch), `charset` and
//! `extract` (parsing), `output` (the output file), `progress` (the bar on a
//! terminal), `commands` (one per subcommand), `fixture` (the local test/demo
//! site).

pub mod charset;
pub mod cli;
pub mod commands;
pub mod config;
pub mod config_reference;
pub mod control;
pub mod dns;
pub mod error;
pub mod exit_code;
pub mod extract;
pub mod fixture;
pub mod http;
pub mod logger;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod range;
pub mod repair;
pub mod robots;
pub mod signals;
pub mod store;
pub mod transport;
pub mod util;

use clap::Parser;

/// The whole program: parse arguments, run the command, map the outcome to
/// an exit code, print any error as one line.
pub fn main_entry() -> std::process::ExitCode {
    util::install_panic_hook();
    let cli = cli::Cli::parse();
    logger::init(cli.verbose, cli.quiet);
    match commands::dispatch(cli.command) {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("pagecrawl: error: {}", error::one_line(&error));
            error::exit_for(&error).into()
        }
    }
}

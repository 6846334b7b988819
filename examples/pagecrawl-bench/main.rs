//! `pagecrawl-bench`: the benchmark of issue 5.
//!
//! It starts a fast fixture server in a child process of its own (only on
//! 127.0.0.1: pre-rendered ~20 KB WooYun-style pages, keep-alive, optional
//! fixed latency), runs the release `pagecrawl` against it as another child,
//! and prints one table row per scenario: wall time, pages/s, efficiency
//! against the ideal N·L/C, pagecrawl's CPU time per page (user + sys, from
//! the kernel's accounting of reaped children, as `getrusage(RUSAGE_CHILDREN)`
//! reports it) and its peak RSS (`VmHWM`, polled from `/proc`).
//!
//! It is a cargo example, so that `cargo install` leaves it out; it finds
//! `pagecrawl` beside itself or one folder up (`target/PROFILE/examples/`):
//!
//! ```text
//! cargo build --profile profiling --bin pagecrawl --example pagecrawl-bench
//! target/profiling/examples/pagecrawl-bench --quick    # smoke: a few hundred pages a scenario
//! target/profiling/examples/pagecrawl-bench            # the full scenarios, medians of 3 runs
//! target/profiling/examples/pagecrawl-bench --peers    # also Python threads + requests, and Scrapy
//! target/profiling/examples/pagecrawl-bench server-speed  # the two server engines compared
//! target/profiling/examples/pagecrawl-bench profile    # callgrind (or perf) of a CPU-bound run
//! target/profiling/examples/pagecrawl-bench store      # enqueue and status of a job in PostgreSQL
//! ```
//!
//! Every child is bounded: a crawl that runs over its time limit is killed,
//! the server exits when the benchmark closes its stdin (or after
//! `--max-seconds`), and every request loop has a fixed number of pages.
//!
//! This file holds the command line and its dispatch; each module opens
//! with what it does.

mod bench;
mod detail_pages;
mod job;
mod measure;
mod parts;
mod peers;
mod profile;
mod report;
mod scenarios;
mod server;
mod server_process;
mod server_speed;
mod store;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// pagecrawl-bench: pagecrawl against a local fixture server, with wall
/// time, CPU per page and peak memory; optionally against Python peers.
#[derive(Debug, Parser)]
#[command(name = "pagecrawl-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Smoke mode: a few hundred pages a scenario; well under a minute.
    #[arg(long)]
    quick: bool,
    /// Also run the Python peers in bench/ (threads + requests, and Scrapy),
    /// each when installed, and print pagecrawl's speed as a ratio to each.
    #[arg(long)]
    peers: bool,
    /// Runs of each pagecrawl scenario; the table shows medians (peers run
    /// once). Default: 1 with --quick, 3 otherwise.
    #[arg(long)]
    repeat: Option<usize>,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<ScenarioName>,
    /// The pagecrawl binary. Default: `pagecrawl` beside this binary.
    #[arg(long, value_name = "PATH")]
    pagecrawl: Option<PathBuf>,
    /// Which server plays the site: this binary's own (`fast`: pages
    /// rendered from a cached template) or the library's test fixture.
    #[arg(long, value_enum, default_value = "fast")]
    server: Engine,
    /// Size of a listing page in bytes (approximately).
    #[arg(long, default_value_t = 20_000)]
    page_bytes: usize,
    /// An extra line for pagecrawl's config, e.g. 'commit_every = 256'
    /// (repeatable).
    #[arg(long = "config-line", value_name = "LINE")]
    config_lines: Vec<String>,
    /// Work folder for configs, states and logs (default: a temporary
    /// folder, removed at the end).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also print every single run, not only the medians.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Serve the benchmark site on 127.0.0.1 (the benchmark starts this in
    /// a child process; it exits when its stdin closes).
    Serve(ServeArgs),
    /// Compare the server engines: requests/s and server CPU per request,
    /// with a minimal keep-alive client.
    ServerSpeed {
        #[arg(long, default_value_t = 5_000)]
        pages: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 20_000)]
        page_bytes: usize,
    },
    /// The CPU each part of a page's work costs on its own, in this process:
    /// fetching (a bare keep-alive client, then ureq through pagecrawl's
    /// fetcher), decoding + extracting + rendering, and checkpointing in
    /// sled. Their sum against the CPU-bound scenario is what the pipeline
    /// itself (threads, hand-offs) costs.
    Parts {
        #[arg(long, default_value_t = 20_000)]
        pages: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 20_000)]
        page_bytes: usize,
    },
    /// The commands of a job in a PostgreSQL store, through the real
    /// binary, against a throwaway server: `enqueue` of `--pages` pages,
    /// then `status` with all of them pending.
    Store {
        #[arg(long, default_value_t = 1_000_000)]
        pages: u64,
        /// Runs of `status` (the median is shown).
        #[arg(long, default_value_t = 9)]
        status_runs: usize,
        #[arg(long, value_name = "PATH")]
        pagecrawl: Option<PathBuf>,
    },
    /// 1, 2 and 4 daemons on one job in a throwaway PostgreSQL against the
    /// fast server: throughput, efficiency against the ideal, and the
    /// daemons' CPU per page.
    StoreDaemons {
        #[arg(long, default_value_t = 3_000)]
        pages: u64,
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
        /// The job's cap across its daemons.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Each daemon's own cap.
        #[arg(long, default_value_t = 16)]
        daemon_concurrency: usize,
        #[arg(long, value_name = "PATH")]
        pagecrawl: Option<PathBuf>,
    },
    /// Profile a CPU-bound crawl (no latency) with callgrind or perf.
    Profile {
        #[arg(long, default_value_t = 2_000)]
        pages: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, value_enum, default_value = "callgrind")]
        tool: Tool,
        #[arg(long, value_name = "PATH")]
        pagecrawl: Option<PathBuf>,
        #[arg(long, default_value_t = 20_000)]
        page_bytes: usize,
        /// Where the profile and its reports go (default: a new folder in
        /// the temporary directory, kept).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long, default_value_t = 2_000)]
    pages: u64,
    /// Bytes of boilerplate per page.
    #[arg(long, default_value_t = 14_000)]
    padding: usize,
    #[arg(long, value_enum, default_value = "fast")]
    engine: Engine,
    /// Exit after this long whatever happens.
    #[arg(long, default_value_t = 3_600)]
    max_seconds: u64,
    /// Also serve a detail page for each listed item, at its link (fast
    /// engine only).
    #[arg(long)]
    detail: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// This binary's keep-alive server: the boilerplate is rendered once,
    /// each page's table per request; byte-identical to `fixture`.
    Fast,
    /// `pagecrawl::fixture::Server`, as the tests use it.
    Fixture,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tool {
    Callgrind,
    Perf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioName {
    Latency16,
    Latency64,
    Cpu,
    Scale,
    /// Two stages: listing pages and each item's detail page, 50 ms, c=16.
    Detail16,
    /// Two stages, CPU-bound (no latency); compared with `cpu`.
    #[value(name = "detailcpu")]
    DetailCpu,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Serve(args)) => server::serve(&args),
        Some(Sub::ServerSpeed {
            pages,
            concurrency,
            page_bytes,
        }) => server_speed::server_speed(pages, concurrency, page_bytes),
        Some(Sub::Parts {
            pages,
            concurrency,
            page_bytes,
        }) => parts::parts(pages, concurrency, page_bytes),
        Some(Sub::Profile {
            pages,
            concurrency,
            tool,
            pagecrawl,
            page_bytes,
            out,
        }) => profile::profile(pages, concurrency, tool, pagecrawl, page_bytes, out),
        Some(Sub::Store {
            pages,
            status_runs,
            pagecrawl,
        }) => store::store(pages, status_runs, pagecrawl),
        Some(Sub::StoreDaemons {
            pages,
            latency_ms,
            concurrency,
            daemon_concurrency,
            pagecrawl,
        }) => store::daemons(
            pages,
            latency_ms,
            concurrency,
            daemon_concurrency,
            pagecrawl,
        ),
        None => bench::bench(&cli.bench),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagecrawl-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

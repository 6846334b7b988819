//! The command line: clap definitions and help text. Parsing only; the
//! commands live in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// pagecrawl: a resumable, polite crawler for paginated listing sites.
///
/// It fetches every page of a range with a pool of threads, extracts items
/// with a regular expression, writes each item exactly once, and resumes
/// after a restart, a crash or kill -9 without losing or repeating a page.
#[derive(Debug, Parser)]
#[command(
    name = "pagecrawl",
    version,
    propagate_version = true,
    after_help = "Start with:\n  \
                  pagecrawl demo                          crawl a built-in local mirror\n  \
                  pagecrawl init myjob                    write myjob.toml to edit\n  \
                  pagecrawl try -c myjob.toml --page 1    check the pattern on one page\n  \
                  pagecrawl run -c myjob.toml             crawl (Ctrl-C stops; run again resumes)"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors on stderr (no progress bar or progress log).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Crawl until the queue drains (resumes where the last run stopped).
    ///
    /// On a terminal a progress bar shows pages done of the total, pages/s,
    /// ETA, items, retries and failures; elsewhere a progress line is logged
    /// every 5 seconds. Ctrl-C stops gracefully; the same command resumes.
    ///
    /// The job is a TOML file (--config), or, for a one-shot crawl, the
    /// three flags --url, --pages and --pattern (and --output), with every
    /// other key at its default.
    #[command(
        after_help = "Example: pagecrawl run --config wooyun.toml --state-dir /var/lib/pagecrawl/wooyun
                      One-shot: pagecrawl run --url 'https://example.org/list?p={page}' --pages 1..=20 \
                                --pattern '<a href=\"(?P<url>[^\"]+)\">' --output links.jsonl"
    )]
    Run {
        /// The job's TOML configuration (or give --url, --pages and --pattern).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// One-shot crawl without a file: the URL template, holding {page}.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// One-shot crawl: the pages, e.g. 1..=295 or 1.. (open).
        #[arg(long, value_name = "RANGE")]
        pages: Option<String>,
        /// One-shot crawl: the regular expression; each named group is a field.
        #[arg(long, value_name = "RE")]
        pattern: Option<String>,
        /// One-shot crawl: the output file (default: items.jsonl in the state directory).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Where the queue, checkpoint and (by default) output live.
        /// Default: $STATE_DIRECTORY, else NAME.state beside NAME.toml
        /// (pagecrawl.state in the current directory for a one-shot crawl).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Follow mode: when the queue drains, wait this long, re-crawl the
        /// first `refresh_pages` pages, and go on (overrides `follow`).
        #[arg(long, value_name = "INTERVAL")]
        follow: Option<String>,
    },
    /// Show state, counts, rate, ETA, the most common errors and the output.
    #[command(after_help = "Example: pagecrawl status --state-dir wooyun.state --json")]
    Status {
        #[command(flatten)]
        state: StateArgs,
        /// Machine-readable output (fields listed in the README).
        #[arg(long)]
        json: bool,
    },
    /// List pages in one state, with attempts and last error.
    #[command(after_help = "Example: pagecrawl queue --state failed --limit 20")]
    Queue {
        #[command(flatten)]
        state: StateArgs,
        /// Which pages to list.
        #[arg(long = "state", value_enum, default_value = "pending")]
        which: PageStateArg,
        /// Which stage's pages: listing pages, or (with `[detail]`) detail
        /// pages, each with its URL and the first item waiting for it.
        #[arg(long, value_enum, default_value = "listing")]
        stage: StageArg,
        /// At most this many pages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Add pages to the queue (done or failed pages are crawled again).
    #[command(
        after_help = "Example: pagecrawl enqueue --state-dir wooyun.state 1..=295 300 400..410\n\
                            Ranges: 7, 1..=295 (end included), 400..410 (end excluded)."
    )]
    Enqueue {
        #[command(flatten)]
        state: StateArgs,
        /// Pages or ranges.
        #[arg(required = true, value_name = "RANGE")]
        ranges: Vec<String>,
    },
    /// Put failed pages back in the queue (all of them, or those named).
    #[command(after_help = "Example: pagecrawl retry --state-dir wooyun.state 17 42")]
    Retry {
        #[command(flatten)]
        state: StateArgs,
        /// Failed pages to retry; none means all.
        #[arg(value_name = "PAGE", value_parser = page_number())]
        pages: Vec<u64>,
    },
    /// Write the committed items as JSON Lines or CSV.
    #[command(
        after_help = "Example: pagecrawl export --state-dir wooyun.state --format csv --output bugs.csv"
    )]
    Export {
        #[command(flatten)]
        state: StateArgs,
        /// The format to write, whatever the job's own format is.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: FormatArg,
        /// Write here instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Stop feeding a running crawl (in-flight requests finish).
    #[command(after_help = "Example: pagecrawl pause --state-dir /var/lib/pagecrawl/wooyun")]
    Pause {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Resume feeding a paused crawl.
    #[command(after_help = "Example: pagecrawl resume --state-dir /var/lib/pagecrawl/wooyun")]
    Resume {
        #[command(flatten)]
        state: StateArgs,
    },
    /// After the output was truncated, deleted or replaced behind the crawl:
    /// keep every item still in the file, re-queue exactly the pages whose
    /// items are gone.
    ///
    /// The file is cut back to its last intact item (when more than a torn
    /// last line would go, the whole file is first kept beside it as
    /// NAME.damaged-TIME), the checkpoint is rebuilt from what the file
    /// holds, and the next `run` writes each missing item once.
    #[command(
        after_help = "Example: pagecrawl repair --state-dir wooyun.state && pagecrawl run -c wooyun.toml"
    )]
    Repair {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Start a new output file after moving the old one aside (rotation).
    ///
    /// The daemon convention (nginx's reopen, also SIGUSR1): rename the
    /// output, then ask for a reopen; the running crawl finishes its commit
    /// group in the renamed file and writes everything after to a new file
    /// at the configured path. Every item is in exactly one of the files.
    #[command(
        after_help = "Example: mv items.jsonl items.jsonl.1 && pagecrawl reopen --state-dir /var/lib/pagecrawl/wooyun"
    )]
    Reopen {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print the crawl's metrics in the Prometheus text format.
    ///
    /// From the running crawl, over its control socket: pages, items,
    /// retries and failures from its state, and its live counters
    /// (requests by status, bytes, fetch latency, requests in flight, time
    /// waited on the rate limit). With no crawl running, the counters kept
    /// in the state only, and a note on stderr. `metrics_listen` in the
    /// config serves the same text over HTTP.
    #[command(after_help = "Example: pagecrawl metrics --state-dir /var/lib/pagecrawl/wooyun")]
    Metrics {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Fetch and parse one page and print its items; touches no state.
    ///
    /// On a terminal each item is shown field by field, and the first match
    /// with what each group captured highlighted; piped, the items are JSON
    /// Lines. When the pattern matches nothing it says why it might not.
    #[command(
        name = "try",
        after_help = "Example: pagecrawl try --config wooyun.toml --page 1"
    )]
    Try {
        /// The job's TOML configuration.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// The page number to fetch (from 1; default: the first).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = page_number())]
        page: u64,
        /// Print JSON Lines even on a terminal.
        #[arg(long, conflicts_with = "pretty")]
        json: bool,
        /// Print the readable view even when piped (colors only on a
        /// terminal).
        #[arg(long)]
        pretty: bool,
    },
    /// Crawl a built-in local mirror of a WooYun-style bug list.
    #[command(after_help = "Example: pagecrawl demo")]
    Demo {
        /// Keep the demo's config, state and output here (default: a new
        /// temporary folder).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The mirror's delay per page, in milliseconds.
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        /// Crawl the listing pages only (295 pages, about a second),
        /// without following each report to its detail page.
        #[arg(long)]
        listing_only: bool,
    },
    /// Write NAME.toml here: a commented config with every key to edit.
    ///
    /// Never overwrites a file. The required keys (url, pages, pattern) hold
    /// placeholders; every other key is commented out at its default.
    #[command(
        after_help = "Example: pagecrawl init myjob && $EDITOR myjob.toml && pagecrawl try -c myjob.toml --page 1"
    )]
    Init {
        /// The job's name: the file is NAME.toml, its state NAME.state/.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
                      pagecrawl completions bash > ~/.local/share/bash-completion/completions/pagecrawl\n  \
                      pagecrawl completions zsh > ~/.zfunc/_pagecrawl    # with fpath+=(~/.zfunc)\n  \
                      pagecrawl completions fish > ~/.config/fish/completions/pagecrawl.fish")]
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: ShellArg,
    },
    /// Print the manual page (roff), generated from this help.
    #[command(after_help = "Examples:\n  \
                      pagecrawl man | man -l -\n  \
                      pagecrawl man > /usr/local/share/man/man1/pagecrawl.1")]
    Man,
}

/// Where the state directory is, for the commands that inspect it.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// The state directory. Default: $STATE_DIRECTORY, else the one beside
    /// --config.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The job's config, to find its default state directory (or, when it
    /// sets `store`, its job in that database).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A PostgreSQL database holding the job (`status` and `export` read
    /// it from any machine), with --job.
    #[arg(long, value_name = "URL", conflicts_with = "state_dir")]
    pub store: Option<String>,
    /// The job's name in the --store database.
    #[arg(long, value_name = "NAME", conflicts_with = "state_dir")]
    pub job: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PageStateArg {
    Pending,
    Done,
    Failed,
}

/// The stage `queue` lists.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StageArg {
    Listing,
    Detail,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Jsonl,
    Csv,
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

/// A page number as an argument: from 1 to [`MAX_PAGE`](crate::range::MAX_PAGE),
/// as in a range.
fn page_number() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=crate::range::MAX_PAGE)
}

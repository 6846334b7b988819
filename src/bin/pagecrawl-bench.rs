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
//! ```text
//! cargo build --release
//! target/release/pagecrawl-bench --quick            # smoke: a few hundred pages a scenario
//! target/release/pagecrawl-bench                    # the full scenarios, medians of 3 runs
//! target/release/pagecrawl-bench --peers            # also Python threads + requests, and Scrapy
//! target/release/pagecrawl-bench server-speed       # the two server engines compared
//! target/release/pagecrawl-bench profile            # callgrind (or perf) of a CPU-bound run
//! ```
//!
//! Every child is bounded: a crawl that runs over its time limit is killed,
//! the server exits when the benchmark closes its stdin (or after
//! `--max-seconds`), and every request loop has a fixed number of pages.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pagecrawl::fixture::wooyun::{self, PER_PAGE};
use pagecrawl::fixture::{page_body, Server, Site};

/// The example job; the benchmark uses its pattern.
const EXAMPLE_CONFIG: &str = include_str!("../../data/wooyun.toml");
/// Where the listing pages are on the benchmark server.
const PAGE_PATH: &str = "/wooyun/bugs.php?page=";
/// The marker before which the boilerplate padding sits in a rendered page.
const TABLE_MARKER: &str = "<table class=\"listTable\">";
/// The listing pages' content type.
const HTML: &str = "text/html; charset=utf-8";
/// Pages whose responses fit in this many bytes are rendered once, at start.
const PRERENDER_BUDGET: u64 = 640 << 20;
/// How often a running child's `/proc` entry is read.
const POLL: Duration = Duration::from_millis(10);

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Serve(args)) => serve(&args),
        Some(Sub::ServerSpeed {
            pages,
            concurrency,
            page_bytes,
        }) => server_speed(pages, concurrency, page_bytes),
        Some(Sub::Parts {
            pages,
            concurrency,
            page_bytes,
        }) => parts(pages, concurrency, page_bytes),
        Some(Sub::Profile {
            pages,
            concurrency,
            tool,
            pagecrawl,
            page_bytes,
            out,
        }) => profile(pages, concurrency, tool, pagecrawl, page_bytes, out),
        None => bench(&cli.bench),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagecrawl-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The server.

/// Page bodies identical to `pagecrawl::fixture::page_body` for a UTF-8
/// site, but with the boilerplate (the bulk of a page, and the same on every
/// page) rendered once: a request renders only its 20 rows.
struct Pages {
    total: u64,
    /// The padding block of a rendered page.
    padding_block: String,
    /// Whole keep-alive responses (head and body) of pages 1..=total+1,
    /// back to back, when they fit the budget: then a request costs one
    /// `write` and no rendering.
    prerendered: Option<(Vec<u8>, Vec<usize>)>,
}

impl Pages {
    fn new(total: u64, padding: usize) -> Result<Pages> {
        let padded = wooyun::render_page(1, &[], 1, "utf-8", padding);
        let bare = wooyun::render_page(1, &[], 1, "utf-8", 0);
        let at = bare
            .find(TABLE_MARKER)
            .context("the page layout changed: no table marker")?;
        let block = padded[at..at + (padded.len() - bare.len())].to_string();
        let mut pages = Pages {
            total,
            padding_block: block,
            prerendered: None,
        };
        let site = Site {
            pages: total,
            padding,
            ..Site::default()
        };
        for page in [1, 2, total / 2 + 1, total, total + 1] {
            if pages.body(page) != page_body(&site, page) {
                bail!("the fast server's page {page} differs from the fixture's");
            }
        }
        let estimate = (total + 1).saturating_mul(pages.body(1).len() as u64 + 100);
        if estimate <= PRERENDER_BUDGET {
            let mut bytes = Vec::with_capacity(estimate as usize);
            let mut ends = Vec::with_capacity(total as usize + 1);
            for page in 1..=total + 1 {
                bytes.extend_from_slice(&response("200 OK", HTML, &pages.body(page), false));
                ends.push(bytes.len());
            }
            pages.prerendered = Some((bytes, ends));
        }
        Ok(pages)
    }

    /// The whole response for `page`: pre-rendered if possible.
    fn response(&self, page: u64, close: bool) -> std::borrow::Cow<'_, [u8]> {
        if let (Some((bytes, ends)), false) = (&self.prerendered, close) {
            if page >= 1 && page <= self.total + 1 {
                let index = (page - 1) as usize;
                let start = if index == 0 { 0 } else { ends[index - 1] };
                return std::borrow::Cow::Borrowed(&bytes[start..ends[index]]);
            }
        }
        std::borrow::Cow::Owned(response("200 OK", HTML, &self.body(page), close))
    }

    fn body(&self, page: u64) -> Vec<u8> {
        let bugs = if page >= 1 && page <= self.total {
            wooyun::bugs_on_page(page, PER_PAGE)
        } else {
            Vec::new()
        };
        let bare = wooyun::render_page(page, &bugs, self.total, "utf-8", 0);
        let at = bare.find(TABLE_MARKER).unwrap_or(bare.len());
        let mut body = Vec::with_capacity(bare.len() + self.padding_block.len());
        body.extend_from_slice(&bare.as_bytes()[..at]);
        body.extend_from_slice(self.padding_block.as_bytes());
        body.extend_from_slice(&bare.as_bytes()[at..]);
        body
    }
}

/// What the fast server counts; `/__bench/stats` returns it as JSON and
/// `/__bench/reset` zeroes it.
struct Counters {
    requests: AtomicU64,
    /// Requests for a page that had been requested before.
    repeats: AtomicU64,
    /// Requests for anything else (e.g. `/robots.txt`).
    other: AtomicU64,
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Unix time in ns of the first page request's arrival and of the
    /// latest page response's end (0: none).
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    seen: Vec<AtomicU32>,
}

impl Counters {
    fn new(pages: u64) -> Counters {
        Counters {
            requests: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
            other: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            seen: (0..=pages + 1).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.requests,
            &self.repeats,
            &self.other,
            &self.first_ns,
            &self.last_ns,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
        self.peak
            .store(self.active.load(Ordering::SeqCst), Ordering::SeqCst);
        for seen in &self.seen {
            seen.store(0, Ordering::Relaxed);
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"requests\":{},\"repeats\":{},\"other\":{},\"peak\":{},\"first_ns\":{},\"last_ns\":{}}}",
            self.requests.load(Ordering::SeqCst),
            self.repeats.load(Ordering::SeqCst),
            self.other.load(Ordering::SeqCst),
            self.peak.load(Ordering::SeqCst),
            self.first_ns.load(Ordering::SeqCst),
            self.last_ns.load(Ordering::SeqCst),
        )
    }

    /// Counts a page request; returns a guard that ends it.
    fn begin(&self, page: u64) -> Active<'_> {
        let now = unix_ns();
        let _ = self
            .first_ns
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        let slot = usize::try_from(page)
            .unwrap_or(usize::MAX)
            .min(self.seen.len() - 1);
        if self.seen[slot].fetch_add(1, Ordering::Relaxed) > 0 && slot < self.seen.len() - 1 {
            self.repeats.fetch_add(1, Ordering::SeqCst);
        }
        let now_active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now_active, Ordering::SeqCst);
        Active(self)
    }
}

struct Active<'a>(&'a Counters);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.last_ns.fetch_max(unix_ns(), Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `pagecrawl-bench serve`: prints `listening ADDR`, serves until stdin
/// closes or `--max-seconds` pass.
fn serve(args: &ServeArgs) -> Result<()> {
    let latency = Duration::from_millis(args.latency_ms);
    // Held until the process exits.
    let _fixture;
    let addr = match args.engine {
        Engine::Fixture => {
            let server = Server::start(Site {
                pages: args.pages,
                padding: args.padding,
                latency,
                ..Site::default()
            })
            .context("cannot start the fixture server")?;
            let addr = server.addr();
            _fixture = server;
            addr
        }
        Engine::Fast => {
            let pages = Arc::new(Pages::new(args.pages, args.padding)?);
            let counters = Arc::new(Counters::new(args.pages));
            let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen")?;
            let addr = listener.local_addr()?;
            thread::Builder::new()
                .name("accept".into())
                .spawn(move || {
                    for stream in listener.incoming().flatten() {
                        let (pages, counters) = (pages.clone(), counters.clone());
                        let _ = thread::Builder::new()
                            .name("conn".into())
                            .spawn(move || serve_connection(stream, &pages, &counters, latency));
                    }
                })?;
            addr
        }
    };
    println!("listening {addr}");
    std::io::stdout().flush()?;
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(Duration::from_secs(args.max_seconds));
    Ok(())
}

fn serve_connection(stream: TcpStream, pages: &Pages, counters: &Counters, latency: Duration) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = String::new();
    loop {
        let Some((target, close)) = read_request(&mut reader, &mut line) else {
            return;
        };
        let written = if let Some(page) = target
            .strip_prefix(PAGE_PATH)
            .and_then(|p| p.parse::<u64>().ok())
        {
            let _active = counters.begin(page);
            if !latency.is_zero() {
                thread::sleep(latency);
            }
            writer.write_all(&pages.response(page, close))
        } else if target == "/__bench/stats" {
            let json = counters.json().into_bytes();
            writer.write_all(&response("200 OK", "application/json", &json, close))
        } else if target == "/__bench/reset" {
            counters.reset();
            writer.write_all(&response("200 OK", "text/plain", b"ok\n", close))
        } else {
            counters.other.fetch_add(1, Ordering::SeqCst);
            writer.write_all(&response(
                "404 Not Found",
                "text/plain",
                b"no such page\n",
                close,
            ))
        };
        if written.is_err() || close {
            return;
        }
    }
}

/// An HTTP/1.1 response, head and body.
fn response(status: &str, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads one request head; returns its target and whether the connection
/// closes after the answer. `None` at the end of the stream.
fn read_request(reader: &mut BufReader<TcpStream>, line: &mut String) -> Option<(String, bool)> {
    line.clear();
    if reader.read_line(line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let _method = parts.next()?;
    let target = parts.next()?.to_string();
    let mut close = parts.next() == Some("HTTP/1.0");
    let mut content_length = 0u64;
    loop {
        line.clear();
        if reader.read_line(line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            }
        }
    }
    if content_length > 0 {
        std::io::copy(&mut reader.take(content_length), &mut std::io::sink()).ok()?;
    }
    Some((target, close))
}

/// The benchmark server, running in a child process.
struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    engine: Engine,
}

/// What the fast server saw (the fixture engine has no such endpoint).
#[derive(Debug, Clone, Copy, Default)]
struct ServerStats {
    requests: u64,
    repeats: u64,
    other: u64,
    peak: u64,
    first_ns: u64,
    last_ns: u64,
}

impl ServerProcess {
    fn start(engine: Engine, latency_ms: u64, pages: u64, padding: usize) -> Result<ServerProcess> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut child = Command::new(exe)
            .args(["serve", "--engine"])
            .arg(match engine {
                Engine::Fast => "fast",
                Engine::Fixture => "fixture",
            })
            .arg("--latency-ms")
            .arg(latency_ms.to_string())
            .arg("--pages")
            .arg(pages.to_string())
            .arg("--padding")
            .arg(padding.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the benchmark server")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no server stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .with_context(|| format!("the server said {line:?}, not its address"))?;
        if !addr.ip().is_loopback() {
            bail!("the server listens on {addr}, not on loopback");
        }
        Ok(ServerProcess {
            child,
            stdin,
            _stdout: stdout,
            addr,
            engine,
        })
    }

    fn url_template(&self) -> String {
        format!("http://{}{PAGE_PATH}{{page}}", self.addr)
    }

    fn stats(&self) -> Option<ServerStats> {
        if self.engine != Engine::Fast {
            return None;
        }
        let text = http_get(self.addr, "/__bench/stats").ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        let field = |name: &str| value.get(name).and_then(|v| v.as_u64()).unwrap_or(0);
        Some(ServerStats {
            requests: field("requests"),
            repeats: field("repeats"),
            other: field("other"),
            peak: field("peak"),
            first_ns: field("first_ns"),
            last_ns: field("last_ns"),
        })
    }

    fn reset(&self) {
        if self.engine == Engine::Fast {
            let _ = http_get(self.addr, "/__bench/reset");
        }
    }

    /// Closes the server's stdin (it exits), reaps it, and returns its CPU
    /// time.
    fn stop(mut self) -> Result<Duration> {
        let before = children_cpu()?;
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(children_cpu()?.saturating_sub(before))
    }
}

/// A one-shot GET on a fresh connection; returns the body.
fn http_get(addr: SocketAddr, target: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (_, body) = text
        .split_once("\r\n\r\n")
        .context("no end of headers in the answer")?;
    Ok(body.to_string())
}

/// The padding that makes an average page about `page_bytes` long.
fn padding_for(page_bytes: usize) -> usize {
    let bugs = wooyun::bugs_on_page(1, PER_PAGE);
    let bare = wooyun::render_page(1, &bugs, wooyun::PAGES, "utf-8", 0).len();
    page_bytes.saturating_sub(bare)
}

// ---------------------------------------------------------------------------
// Measuring a child process.

/// What a child cost.
#[derive(Debug, Clone, Default)]
struct Usage {
    wall: Duration,
    /// User + system time of the child (all its threads), from the parent's
    /// accounting of reaped children (`/proc/self/stat` cutime + cstime,
    /// which is what `getrusage(RUSAGE_CHILDREN)` reads).
    cpu: Duration,
    /// The system part of `cpu`.
    sys: Duration,
    /// Highest `VmHWM` seen while it ran, KiB.
    peak_rss_kib: u64,
    status: Option<ExitStatus>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

impl Usage {
    fn ok(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// How the run ended, for a FAILED row.
    fn outcome(&self) -> String {
        if self.ok() {
            "finished".into()
        } else {
            self.describe_failure()
        }
    }

    fn describe_failure(&self) -> String {
        if self.timed_out {
            return "timed out (killed)".into();
        }
        let last = self.stderr.lines().last().unwrap_or("").trim();
        format!(
            "exit {}: {last}",
            self.status
                .and_then(|s| s.code())
                .map_or("signal".into(), |c| c.to_string())
        )
    }
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on
/// Linux).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// CPU time (user + sys) of this process's reaped children so far.
fn children_cpu() -> Result<Duration> {
    let (user, sys) = children_times()?;
    Ok(user + sys)
}

/// User and system time of this process's reaped children so far.
fn children_times() -> Result<(Duration, Duration)> {
    let stat = fs::read_to_string("/proc/self/stat").context("cannot read /proc/self/stat")?;
    let fields = stat_fields(&stat).context("unexpected /proc/self/stat")?;
    // Fields 16 and 17 (1-based) of stat(5); the slice starts at field 3.
    let ticks = |i: usize| -> Result<Duration> {
        let t: u64 = fields[i].parse()?;
        Ok(Duration::from_secs_f64(t as f64 / clock_ticks() as f64))
    };
    Ok((ticks(13)?, ticks(14)?))
}

/// The fields of a `/proc/PID/stat` line from the state (field 3) on.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    (fields.len() > 15).then_some(fields)
}

/// CPU time (user + sys, all threads) of a live process so far.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat_fields(&stat)?;
    // Fields 14 and 15 (1-based) of stat(5).
    let ticks = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// `VmHWM` of a live process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sends SIGTERM (safe Rust can only SIGKILL a `Child`; kill(1) costs
/// about a millisecond of CPU, below the tick resolution).
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `command` to its end (or `limit`), with stdout and stderr in files
/// beside `log`, measuring wall time, CPU and peak RSS. `poll` is called
/// every few milliseconds with the pid and the time since the start.
fn measure(
    mut command: Command,
    log: &Path,
    limit: Duration,
    mut poll: impl FnMut(u32, Duration),
) -> Result<Usage> {
    let out_path = log.with_extension("stdout");
    let err_path = log.with_extension("stderr");
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    for var in pagecrawl::fixture::ENVIRONMENT_TO_DROP {
        command.env_remove(var);
    }
    command.env("no_proxy", "127.0.0.1,localhost");
    command.env("NO_PROXY", "127.0.0.1,localhost");
    let (user_before, sys_before) = children_times()?;
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    let pid = child.id();
    let (exit_tx, exit_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = exit_tx.send((Instant::now(), status));
    });
    let mut usage = Usage::default();
    let (ended, status) = loop {
        if let Some(hwm) = vm_hwm_kib(pid) {
            usage.peak_rss_kib = usage.peak_rss_kib.max(hwm);
        }
        match exit_rx.recv_timeout(POLL) {
            Ok(exit) => break exit,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("lost the child {pid}"),
        }
        let elapsed = started.elapsed();
        if elapsed > limit && !usage.timed_out {
            usage.timed_out = true;
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        if !usage.timed_out {
            poll(pid, elapsed);
        }
    };
    let _ = waiter.join();
    usage.wall = ended - started;
    let (user, sys) = children_times()?;
    usage.sys = sys.saturating_sub(sys_before);
    usage.cpu = user.saturating_sub(user_before) + usage.sys;
    usage.status = status.ok();
    usage.stdout = fs::read_to_string(&out_path).unwrap_or_default();
    usage.stderr = fs::read_to_string(&err_path).unwrap_or_default();
    Ok(usage)
}

// ---------------------------------------------------------------------------
// The benchmark.

/// A crawl scenario.
#[derive(Debug, Clone, Copy)]
struct Crawl {
    name: ScenarioName,
    label: &'static str,
    pages: u64,
    concurrency: usize,
    latency_ms: u64,
}

/// The scale scenario.
#[derive(Debug, Clone, Copy)]
struct Scale {
    enqueue: u64,
    crawl: u64,
    concurrency: usize,
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    scenario: String,
    client: String,
    pages: u64,
    concurrency: usize,
    latency_ms: u64,
    wall: Duration,
    cpu: Duration,
    sys: Duration,
    peak_rss_kib: u64,
    /// What the server (or the client) says, e.g. repeats or mismatches.
    check: String,
    ok: bool,
}

impl Row {
    fn pages_per_s(&self) -> f64 {
        self.pages as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn efficiency(&self) -> Option<f64> {
        (self.latency_ms > 0).then(|| {
            let ideal =
                self.pages as f64 * self.latency_ms as f64 / 1000.0 / self.concurrency as f64;
            ideal / self.wall.as_secs_f64().max(1e-9)
        })
    }

    fn cpu_ms_per_page(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.pages.max(1) as f64
    }
}

/// The Python peers kept in bench/.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Threads,
    Scrapy,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Threads => "python threads",
            Peer::Scrapy => "scrapy",
        }
    }

    fn script(self) -> &'static str {
        match self {
            Peer::Threads => "peer_threads.py",
            Peer::Scrapy => "peer_scrapy.py",
        }
    }

    fn module(self) -> &'static str {
        match self {
            Peer::Threads => "requests",
            Peer::Scrapy => "scrapy",
        }
    }
}

struct Bench {
    pagecrawl: PathBuf,
    engine: Engine,
    padding: usize,
    config_lines: Vec<String>,
    work: PathBuf,
    limit: Duration,
    verbose: bool,
    /// The real Python interpreter for each installed peer.
    peers: Vec<(Peer, PathBuf)>,
}

fn bench(args: &BenchArgs) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("pagecrawl-bench: warning: this is a debug build; the server is slower than in a release build (cargo build --release)");
    }
    let pagecrawl = find_pagecrawl(args.pagecrawl.clone())?;
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let (temp, work) = match &args.dir {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            (None, dir.clone())
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("pagecrawl-bench-")
                .tempdir()?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };
    let mut peers = Vec::new();
    if args.peers {
        for peer in [Peer::Threads, Peer::Scrapy] {
            match python_with(peer.module()) {
                Some(python) => peers.push((peer, python)),
                None => println!(
                    "peer skipped: {} (python3 with `{}` not installed; pip install {})",
                    peer.name(),
                    peer.module(),
                    peer.module()
                ),
            }
        }
    }
    let ctx = Bench {
        pagecrawl,
        engine: args.server,
        padding: padding_for(args.page_bytes),
        config_lines: args.config_lines.clone(),
        work,
        limit: Duration::from_secs(if args.quick { 120 } else { 900 }),
        verbose: args.verbose,
        peers,
    };
    let (crawls, scale) = scenarios(args.quick);
    let wanted = |name: ScenarioName| args.only.is_empty() || args.only.contains(&name);
    print_header(&ctx, args, repeat);

    let mut table: Vec<Row> = Vec::new();
    let mut ratios: Vec<(String, String, f64)> = Vec::new();
    for crawl in crawls.iter().filter(|c| wanted(c.name)) {
        let server = ServerProcess::start(ctx.engine, crawl.latency_ms, crawl.pages, ctx.padding)?;
        let mut runs = Vec::new();
        for run in 0..repeat {
            server.reset();
            let row = crawl_once(&ctx, &server, crawl, run)?;
            if ctx.verbose || !row.ok {
                print_row_line(&row, &format!("run {}", run + 1));
            }
            runs.push(row);
        }
        let ours = median_row(&runs);
        table.push(ours.clone());
        for &(peer, ref python) in &ctx.peers {
            server.reset();
            let row = peer_once(&ctx, &server, crawl, peer, python)?;
            if ctx.verbose || !row.ok {
                print_row_line(&row, "run 1");
            }
            if row.ok && ours.ok {
                ratios.push((
                    crawl.label.to_string(),
                    peer.name().to_string(),
                    ours.pages_per_s() / row.pages_per_s(),
                ));
            }
            table.push(row);
        }
        let server_cpu = server.stop()?;
        if ctx.verbose {
            println!(
                "  server CPU for {}: {:.2} s",
                crawl.label,
                server_cpu.as_secs_f64()
            );
        }
    }
    let mut scale_results = Vec::new();
    if wanted(ScenarioName::Scale) {
        for run in 0..repeat {
            let result = scale_once(&ctx, &scale, run)?;
            if ctx.verbose {
                print_row_line(&result.crawl, &format!("run {}", run + 1));
            }
            scale_results.push(result);
        }
        table.push(median_row(
            &scale_results
                .iter()
                .map(|r| r.crawl.clone())
                .collect::<Vec<_>>(),
        ));
    }

    println!();
    if repeat > 1 {
        println!("pagecrawl rows: medians of {repeat} runs; peers: one run each.");
    }
    print_table(&table);
    if !ratios.is_empty() {
        println!();
        println!("| scenario | pagecrawl pages/s ÷ peer pages/s |");
        println!("| --- | --- |");
        for (scenario, peer, ratio) in &ratios {
            println!("| {scenario} | {ratio:.1}× {peer} |");
        }
    }
    if !scale_results.is_empty() {
        print_scale(&scale, &scale_results);
    }
    print_targets(&table, &scale_results, &ratios, args.quick);
    println!(
        "\nload average at the end: {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if temp.is_none() {
        println!("logs and states kept in {}", ctx.work.display());
    }
    drop(temp);
    Ok(())
}

fn scenarios(quick: bool) -> (Vec<Crawl>, Scale) {
    let (latency_pages, cpu_pages) = if quick { (640, 500) } else { (2_000, 20_000) };
    let crawls = vec![
        Crawl {
            name: ScenarioName::Latency16,
            label: "latency-bound c=16",
            pages: latency_pages,
            concurrency: 16,
            latency_ms: 50,
        },
        Crawl {
            name: ScenarioName::Latency64,
            label: "latency-bound c=64",
            pages: latency_pages,
            concurrency: 64,
            latency_ms: 50,
        },
        Crawl {
            name: ScenarioName::Cpu,
            label: "CPU-bound",
            pages: cpu_pages,
            concurrency: 8,
            latency_ms: 0,
        },
    ];
    let scale = if quick {
        Scale {
            enqueue: 20_000,
            crawl: 1_000,
            concurrency: 8,
        }
    } else {
        Scale {
            enqueue: 1_000_000,
            crawl: 10_000,
            concurrency: 8,
        }
    };
    (crawls, scale)
}

/// The pagecrawl binary: the flag, else `pagecrawl` beside this binary.
fn find_pagecrawl(flag: Option<PathBuf>) -> Result<PathBuf> {
    let path = match flag {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no folder")?
            .join("pagecrawl"),
    };
    if !path.is_file() {
        bail!(
            "no pagecrawl binary at {} (run `cargo build --release` first, or pass --pagecrawl PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// The real interpreter of a `python3` that can import `module`.
fn python_with(module: &str) -> Option<PathBuf> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!("import sys, {module}; print(sys.executable)"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    path.is_file().then_some(path)
}

/// The config the benchmark gives pagecrawl.
fn write_config(
    ctx: &Bench,
    dir: &Path,
    url: &str,
    pages: &str,
    concurrency: usize,
) -> Result<PathBuf> {
    let mut text = format!(
        "url = \"{url}\"\npages = \"{pages}\"\n{}\nconcurrency = {concurrency}\n",
        pattern_line()
    );
    for line in &ctx.config_lines {
        text.push_str(line);
        text.push('\n');
    }
    let path = dir.join("bench.toml");
    fs::write(&path, text)?;
    Ok(path)
}

fn pattern_line() -> &'static str {
    EXAMPLE_CONFIG
        .lines()
        .find(|l| l.starts_with("pattern ="))
        .unwrap_or_default()
}

/// The pattern itself (the TOML literal string's content).
fn pattern_text() -> &'static str {
    let line = pattern_line();
    let start = line.find('\'').map_or(0, |i| i + 1);
    let end = line.rfind('\'').unwrap_or(line.len());
    line.get(start..end).unwrap_or_default()
}

fn fresh_dir(ctx: &Bench, name: &str) -> Result<PathBuf> {
    let dir = ctx.work.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn pagecrawl_command(ctx: &Bench, args: &[&str]) -> Command {
    let mut command = Command::new(&ctx.pagecrawl);
    command.arg("-q").args(args);
    command
}

/// The numbers in pagecrawl's summary line: (done, failed, items).
fn parse_summary(stdout: &str) -> Option<(u64, u64, u64)> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("finished:") || l.starts_with("stopped:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let number_before = |word: &str| {
        words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .and_then(|i| words.get(i.checked_sub(1)?))
            .and_then(|w| w.parse::<u64>().ok())
    };
    Some((
        number_before("pages")?,
        number_before("failed")?,
        number_before("items")?,
    ))
}

/// `key=value` pairs of a peer's closing line.
fn parse_pairs(stdout: &str, key: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .flat_map(|l| l.split_whitespace())
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn count_lines(path: &Path) -> u64 {
    fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
}

fn server_check(stats: Option<ServerStats>, expected: u64) -> String {
    match stats {
        Some(s) => format!(
            "{} pages{}{}, peak {} at once",
            s.requests,
            if s.repeats > 0 || s.requests != expected {
                format!(" ({} repeated)", s.repeats)
            } else {
                String::new()
            },
            if s.other > 0 {
                format!(" + {} other", s.other)
            } else {
                String::new()
            },
            s.peak
        ),
        None => "(fixture: no stats)".into(),
    }
}

/// Where the wall time went: start-up until the first page request, and
/// from the last page sent until the client exited.
fn timing(stats: Option<ServerStats>, spawned_ns: u64, wall: Duration) -> String {
    match stats {
        Some(s) if s.first_ns > 0 && s.last_ns > 0 => {
            let ended_ns = spawned_ns + wall.as_nanos() as u64;
            format!(
                "; first page +{:.0} ms, exit {:.0} ms after the last",
                s.first_ns.saturating_sub(spawned_ns) as f64 / 1e6,
                ended_ns.saturating_sub(s.last_ns) as f64 / 1e6
            )
        }
        _ => String::new(),
    }
}

fn crawl_once(ctx: &Bench, server: &ServerProcess, crawl: &Crawl, run: usize) -> Result<Row> {
    let dir = fresh_dir(ctx, &format!("{:?}-{run}", crawl.name).to_lowercase())?;
    let config = write_config(
        ctx,
        &dir,
        &server.url_template(),
        &format!("1..={}", crawl.pages),
        crawl.concurrency,
    )?;
    let state = dir.join("state");
    let mut command = pagecrawl_command(ctx, &["run", "--config"]);
    command.arg(&config).arg("--state-dir").arg(&state);
    let spawned_ns = unix_ns();
    let usage = measure(command, &dir.join("run"), ctx.limit, |_, _| {})?;
    let stats = server.stats();
    let items = count_lines(&state.join("items.jsonl"));
    let (done, failed, reported_items) = parse_summary(&usage.stdout).unwrap_or_default();
    let expected_items = crawl.pages * PER_PAGE as u64;
    let mut check = server_check(stats, crawl.pages) + &timing(stats, spawned_ns, usage.wall);
    let ok = usage.ok() && done == crawl.pages && failed == 0 && items == expected_items;
    if !ok {
        check = format!(
            "FAILED: {}; {done} done, {failed} failed, {items} items in the output (want {expected_items}, summary says {reported_items}); {check}",
            if usage.stdout.starts_with("stopped:") {
                "stopped by a signal the benchmark did not send".into()
            } else {
                usage.outcome()
            }
        );
    }
    if !ctx.verbose && ok {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(Row {
        scenario: crawl.label.to_string(),
        client: "pagecrawl".into(),
        pages: crawl.pages,
        concurrency: crawl.concurrency,
        latency_ms: crawl.latency_ms,
        wall: usage.wall,
        cpu: usage.cpu,
        sys: usage.sys,
        peak_rss_kib: usage.peak_rss_kib,
        check,
        ok,
    })
}

fn peer_once(
    ctx: &Bench,
    server: &ServerProcess,
    crawl: &Crawl,
    peer: Peer,
    python: &Path,
) -> Result<Row> {
    let dir = fresh_dir(
        ctx,
        &format!("{:?}-{}", crawl.name, peer.module()).to_lowercase(),
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join(peer.script());
    let out = dir.join("items.jsonl");
    let mut command = Command::new(python);
    command
        .arg(&script)
        .arg("--url")
        .arg(server.url_template())
        .arg("--pages")
        .arg(crawl.pages.to_string())
        .arg("--concurrency")
        .arg(crawl.concurrency.to_string())
        .arg("--pattern")
        .arg(pattern_text())
        .arg("--out")
        .arg(&out)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let spawned_ns = unix_ns();
    let usage = measure(command, &dir.join("run"), ctx.limit, |_, _| {})?;
    let items = count_lines(&out);
    let done = parse_pairs(&usage.stdout, "pages").unwrap_or(0);
    let expected_items = crawl.pages * PER_PAGE as u64;
    let stats = server.stats();
    let mut check = server_check(stats, crawl.pages) + &timing(stats, spawned_ns, usage.wall);
    let ok = usage.ok() && done == crawl.pages && items == expected_items;
    if !ok {
        check = format!(
            "FAILED: {}; {done} pages, {items} items (want {expected_items}); {check}",
            usage.outcome()
        );
    }
    if !ctx.verbose && ok {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(Row {
        scenario: crawl.label.to_string(),
        client: peer.name().into(),
        pages: crawl.pages,
        concurrency: crawl.concurrency,
        latency_ms: crawl.latency_ms,
        wall: usage.wall,
        cpu: usage.cpu,
        sys: usage.sys,
        peak_rss_kib: usage.peak_rss_kib,
        check,
        ok,
    })
}

/// One run of the scale scenario.
#[derive(Debug, Clone)]
struct ScaleResult {
    enqueue: Usage,
    enqueue_ok: bool,
    /// From spawning `run` to the server seeing the first request.
    first_request: Option<Duration>,
    crawl: Row,
    /// `status` after the crawl, one per call.
    status: Vec<Usage>,
    /// `status` while the crawl runs.
    live_status: Option<Usage>,
    pending_after: Option<u64>,
}

fn scale_once(ctx: &Bench, scale: &Scale, run: usize) -> Result<ScaleResult> {
    if ctx.engine != Engine::Fast {
        bail!("the scale scenario needs the fast server's request log (--server fast)");
    }
    let dir = fresh_dir(ctx, &format!("scale-{run}"))?;
    let server = ServerProcess::start(Engine::Fast, 0, scale.enqueue, ctx.padding)?;
    // A state exists only after a first `run`: one page of a one-page job.
    let config = write_config(ctx, &dir, &server.url_template(), "1", scale.concurrency)?;
    let state = dir.join("state");
    let state_arg = state.to_string_lossy().to_string();
    let config_arg = config.to_string_lossy().to_string();
    let setup = measure(
        pagecrawl_command(
            ctx,
            &["run", "--config", &config_arg, "--state-dir", &state_arg],
        ),
        &dir.join("setup"),
        ctx.limit,
        |_, _| {},
    )?;
    if !setup.ok() {
        bail!("the scale setup run failed: {}", setup.describe_failure());
    }
    let range = format!("1..={}", scale.enqueue);
    let enqueue = measure(
        pagecrawl_command(ctx, &["enqueue", "--state-dir", &state_arg, &range]),
        &dir.join("enqueue"),
        ctx.limit,
        |_, _| {},
    )?;
    let enqueue_ok = enqueue.ok()
        && enqueue
            .stdout
            .contains(&format!("queued {} pages", scale.enqueue));
    if !enqueue_ok {
        bail!(
            "enqueue failed: {} ({})",
            enqueue.describe_failure(),
            enqueue.stdout.trim()
        );
    }

    server.reset();
    let spawned_ns = unix_ns();
    let mut terminated = false;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    // CPU of the helpers started while the crawl runs (kill(1), the live
    // `status`): they are reaped children too, and are subtracted.
    let mut helpers_cpu = Duration::ZERO;
    let mut live_status: Option<Usage> = None;
    let mut crawl_usage = measure(
        pagecrawl_command(
            ctx,
            &["run", "--config", &config_arg, "--state-dir", &state_arg],
        ),
        &dir.join("crawl"),
        ctx.limit,
        |pid, _| {
            if terminated || last_check.elapsed() < Duration::from_millis(5) {
                return;
            }
            last_check = Instant::now();
            let Some(stats) = server.stats() else { return };
            let before = children_cpu().unwrap_or_default();
            if stats.requests >= scale.crawl {
                terminate(pid);
                terminated = true;
            } else if live_status.is_none() && stats.requests >= scale.crawl / 2 {
                // `status` while `run` holds the state: answered by the
                // running daemon over its control socket, where it has one.
                live_status = measure(
                    pagecrawl_command(ctx, &["status", "--state-dir", &state_arg]),
                    &dir.join("status-live"),
                    ctx.limit,
                    |_, _| {},
                )
                .ok();
            }
            helpers_cpu += children_cpu().unwrap_or_default().saturating_sub(before);
        },
    )?;
    crawl_usage.cpu = crawl_usage.cpu.saturating_sub(helpers_cpu);
    let stats = server.stats();
    let first_request = stats
        .filter(|s| s.first_ns > 0)
        .map(|s| Duration::from_nanos(s.first_ns.saturating_sub(spawned_ns)));
    let mut status = Vec::new();
    for i in 0..5 {
        status.push(measure(
            pagecrawl_command(ctx, &["status", "--state-dir", &state_arg]),
            &dir.join(format!("status-{i}")),
            ctx.limit,
            |_, _| {},
        )?);
    }
    let json = measure(
        pagecrawl_command(ctx, &["status", "--json", "--state-dir", &state_arg]),
        &dir.join("status-json"),
        ctx.limit,
        |_, _| {},
    )?;
    let value: Option<serde_json::Value> = serde_json::from_str(&json.stdout).ok();
    let field = |name: &str| value.as_ref()?.get(name)?.as_u64();
    // `enqueue` put the setup run's page back to pending: every done page
    // was crawled by this run.
    let done = field("done").unwrap_or(0);
    let pending_after = field("pending");
    let _ = server.stop();
    let ok = crawl_usage.status.is_some_and(|s| s.success())
        && !crawl_usage.timed_out
        && terminated
        && done >= scale.crawl;
    let mut check = server_check(stats, scale.crawl);
    if !ok {
        check = format!("FAILED: {}; {done} done; {check}", crawl_usage.outcome());
    }
    if !ctx.verbose && ok {
        let _ = fs::remove_dir_all(&dir);
    }
    let crawl = Row {
        scenario: format!("scale: first {} of {} pending", scale.crawl, scale.enqueue),
        client: "pagecrawl".into(),
        pages: done,
        concurrency: scale.concurrency,
        latency_ms: 0,
        wall: crawl_usage.wall,
        cpu: crawl_usage.cpu,
        sys: crawl_usage.sys,
        peak_rss_kib: crawl_usage.peak_rss_kib,
        check,
        ok,
    };
    Ok(ScaleResult {
        enqueue,
        enqueue_ok,
        first_request,
        crawl,
        status,
        live_status,
        pending_after,
    })
}

// ---------------------------------------------------------------------------
// Printing.

fn median<T: Copy + PartialOrd>(values: &mut [T]) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// A row whose wall, CPU and RSS are the medians of `runs` (each column on
/// its own).
fn median_row(all: &[Row]) -> Row {
    let good: Vec<&Row> = all.iter().filter(|r| r.ok).collect();
    let failed = all.len() - good.len();
    let runs: Vec<&Row> = if good.is_empty() {
        all.iter().collect()
    } else {
        good
    };
    let mut row = runs[runs.len() / 2].clone();
    row.wall = median(&mut runs.iter().map(|r| r.wall).collect::<Vec<_>>());
    row.cpu = median(&mut runs.iter().map(|r| r.cpu).collect::<Vec<_>>());
    row.sys = median(&mut runs.iter().map(|r| r.sys).collect::<Vec<_>>());
    row.pages = median(&mut runs.iter().map(|r| r.pages).collect::<Vec<_>>());
    row.peak_rss_kib = median(&mut runs.iter().map(|r| r.peak_rss_kib).collect::<Vec<_>>());
    if failed > 0 && row.ok {
        row.check = format!(
            "{}; {failed} of {} runs failed and are left out",
            row.check,
            all.len()
        );
    }
    row
}

fn print_header(ctx: &Bench, args: &BenchArgs, repeat: usize) {
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
    let version = Command::new(&ctx.pagecrawl)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".into(), |s| s.trim().to_string());
    println!(
        "pagecrawl-bench{}: {} ({version}, tree at {}), server {:?}, pages of ~{} bytes, {} CPUs, load {}, runs {repeat}",
        if args.quick { " --quick" } else { "" },
        ctx.pagecrawl.display(),
        commit,
        ctx.engine,
        args.page_bytes,
        thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    if !ctx.config_lines.is_empty() {
        println!("extra config: {}", ctx.config_lines.join("; "));
    }
}

/// KiB as MiB for a table; "n/a" when the process ended before the first
/// reading.
fn mib(kib: u64) -> String {
    if kib == 0 {
        "n/a".into()
    } else {
        format!("{:.1}", kib as f64 / 1024.0)
    }
}

fn print_row_line(row: &Row, tag: &str) {
    println!(
        "  {tag}: {} / {}: {} pages in {:.2} s ({:.0} pages/s{}), CPU {:.3} ms/page ({:.0}% sys), peak RSS {} MiB; {}",
        row.scenario,
        row.client,
        row.pages,
        row.wall.as_secs_f64(),
        row.pages_per_s(),
        row.efficiency()
            .map_or(String::new(), |e| format!(", efficiency {e:.2}")),
        row.cpu_ms_per_page(),
        100.0 * row.sys.as_secs_f64() / row.cpu.as_secs_f64().max(1e-9),
        mib(row.peak_rss_kib),
        row.check
    );
}

fn print_table(rows: &[Row]) {
    println!("| scenario | client | pages | conc. | latency | wall s | pages/s | efficiency | CPU ms/page | of it sys | peak RSS MiB | server saw |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} ms | {:.2} | {:.0} | {} | {:.3} | {:.0}% | {} | {} |",
            row.scenario,
            row.client,
            row.pages,
            row.concurrency,
            row.latency_ms,
            row.wall.as_secs_f64(),
            row.pages_per_s(),
            row.efficiency().map_or("–".into(), |e| format!("{e:.2}")),
            row.cpu_ms_per_page(),
            100.0 * row.sys.as_secs_f64() / row.cpu.as_secs_f64().max(1e-9),
            mib(row.peak_rss_kib),
            row.check
        );
    }
}

fn print_scale(scale: &Scale, results: &[ScaleResult]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut enqueue: Vec<f64> = results
        .iter()
        .map(|r| r.enqueue.wall.as_secs_f64())
        .collect();
    let mut enqueue_rss: Vec<u64> = results.iter().map(|r| r.enqueue.peak_rss_kib).collect();
    let mut first: Vec<f64> = results
        .iter()
        .filter_map(|r| r.first_request.map(ms))
        .collect();
    let mut status: Vec<f64> = results
        .iter()
        .flat_map(|r| r.status.iter().map(|u| ms(u.wall)))
        .collect();
    let mut status_rss: Vec<u64> = results
        .iter()
        .flat_map(|r| r.status.iter().map(|u| u.peak_rss_kib))
        .collect();
    let peak_rss = results
        .iter()
        .flat_map(|r| {
            [r.enqueue.peak_rss_kib, r.crawl.peak_rss_kib]
                .into_iter()
                .chain(r.status.iter().map(|u| u.peak_rss_kib))
        })
        .max()
        .unwrap_or(0);
    println!();
    println!(
        "| scale ({} pages enqueued, {} crawled; medians of {} runs) | measured | target |",
        scale.enqueue,
        scale.crawl,
        results.len()
    );
    println!("| --- | ---: | ---: |");
    println!(
        "| `enqueue 1..={}` into a one-page state | {:.2} s (CPU {:.2} s, peak RSS {} MiB) | ≤ 5 s |",
        scale.enqueue,
        median(&mut enqueue),
        median(&mut results.iter().map(|r| r.enqueue.cpu.as_secs_f64()).collect::<Vec<_>>()),
        mib(median(&mut enqueue_rss))
    );
    println!(
        "| `run` start to first request, {} pending | {} | ≤ 1000 ms |",
        scale.enqueue,
        if first.is_empty() {
            "not seen".into()
        } else {
            format!("{:.0} ms", median(&mut first))
        }
    );
    println!(
        "| `status` after the crawl ({} calls) | {:.1} ms (peak RSS {} MiB) | ≤ 50 ms |",
        status.len(),
        median(&mut status),
        mib(median(&mut status_rss))
    );
    let mut live: Vec<f64> = results
        .iter()
        .filter_map(|r| r.live_status.as_ref())
        .filter(|u| u.ok())
        .map(|u| ms(u.wall))
        .collect();
    let refused = results
        .iter()
        .filter_map(|r| r.live_status.as_ref())
        .find(|u| !u.ok());
    println!(
        "| `status` during the crawl (the running `run` answers) | {} | |",
        match (live.is_empty(), refused) {
            (false, _) => format!("{:.1} ms", median(&mut live)),
            (true, Some(u)) => format!("refused: {}", u.describe_failure()),
            (true, None) => "not measured".into(),
        }
    );
    println!(
        "| pending left after the crawl | {} | |",
        results
            .last()
            .and_then(|r| r.pending_after)
            .map_or("?".into(), |p| p.to_string())
    );
    println!(
        "| peak RSS of any step (enqueue, run, status) | {:.1} MiB | ≤ 64 MiB |",
        peak_rss as f64 / 1024.0
    );
    if results.iter().any(|r| !r.enqueue_ok) {
        println!("(an enqueue did not report the expected count)");
    }
}

fn print_targets(
    rows: &[Row],
    scale: &[ScaleResult],
    ratios: &[(String, String, f64)],
    quick: bool,
) {
    let ours = |label: &str| {
        rows.iter()
            .find(|r| r.client == "pagecrawl" && r.scenario == label)
    };
    let mut lines: Vec<(String, String, bool)> = Vec::new();
    for label in ["latency-bound c=16", "latency-bound c=64"] {
        if let Some(e) = ours(label).and_then(Row::efficiency) {
            lines.push((
                format!("{label} efficiency ≥ 0.90"),
                format!("{e:.2}"),
                e >= 0.90,
            ));
        }
    }
    if let Some(row) = ours("CPU-bound") {
        let cpu = row.cpu_ms_per_page();
        lines.push((
            "CPU-bound CPU ≤ 0.10 ms/page".into(),
            format!("{cpu:.3} ms"),
            cpu <= 0.10,
        ));
    }
    if let Some((_, _, ratio)) = ratios
        .iter()
        .find(|(s, p, _)| s == "CPU-bound" && p == "scrapy")
    {
        lines.push((
            "CPU-bound ≥ 10× Scrapy's pages/s".into(),
            format!("{ratio:.1}×"),
            *ratio >= 10.0,
        ));
    }
    if !scale.is_empty() {
        let mut enqueue: Vec<f64> = scale.iter().map(|r| r.enqueue.wall.as_secs_f64()).collect();
        let e = median(&mut enqueue);
        lines.push(("enqueue ≤ 5 s".into(), format!("{e:.2} s"), e <= 5.0));
        let mut first: Vec<f64> = scale
            .iter()
            .filter_map(|r| r.first_request.map(|d| d.as_secs_f64()))
            .collect();
        if !first.is_empty() {
            let f = median(&mut first);
            lines.push((
                "first request ≤ 1 s".into(),
                format!("{:.0} ms", f * 1000.0),
                f <= 1.0,
            ));
        }
        let mut status: Vec<f64> = scale
            .iter()
            .flat_map(|r| r.status.iter().map(|u| u.wall.as_secs_f64()))
            .collect();
        let s = median(&mut status);
        lines.push((
            "status ≤ 50 ms".into(),
            format!("{:.1} ms", s * 1000.0),
            s <= 0.050,
        ));
    }
    let peak = rows
        .iter()
        .filter(|r| r.client == "pagecrawl")
        .map(|r| r.peak_rss_kib)
        .chain(scale.iter().flat_map(|r| {
            std::iter::once(r.enqueue.peak_rss_kib).chain(r.status.iter().map(|u| u.peak_rss_kib))
        }))
        .max();
    if let Some(peak) = peak {
        let mib = peak as f64 / 1024.0;
        lines.push((
            "peak RSS ≤ 64 MiB (every pagecrawl process)".into(),
            format!("{mib:.1} MiB"),
            mib <= 64.0,
        ));
    }
    if lines.is_empty() {
        return;
    }
    println!();
    println!(
        "targets of issue 5{}:",
        if quick {
            " (--quick uses smaller sizes: indicative only)"
        } else {
            ""
        }
    );
    for (what, value, met) in lines {
        println!(
            "  {} {what}: {value}",
            if met { "met    " } else { "NOT MET" }
        );
    }
}

// ---------------------------------------------------------------------------
// server-speed and profile.

/// `server-speed`: each engine in turn, hammered by `concurrency` keep-alive
/// connections for `pages` requests.
fn server_speed(pages: u64, concurrency: usize, page_bytes: usize) -> Result<()> {
    let padding = padding_for(page_bytes);
    println!("| server engine | requests | connections | wall s | requests/s | server CPU µs/request | mean body bytes |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for engine in [Engine::Fixture, Engine::Fast] {
        let server = ServerProcess::start(engine, 0, pages, padding)?;
        let cpu_before = process_cpu(server.child.id()).unwrap_or_default();
        let started = Instant::now();
        let bytes = bare_clients(server.addr, pages, concurrency)?;
        let wall = started.elapsed();
        let cpu = process_cpu(server.child.id())
            .unwrap_or_default()
            .saturating_sub(cpu_before);
        server.stop()?;
        println!(
            "| {engine:?} | {pages} | {concurrency} | {:.2} | {:.0} | {:.1} | {} |",
            wall.as_secs_f64(),
            pages as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / pages as f64,
            bytes / pages.max(1)
        );
    }
    println!("(server CPU: /proc/PID/stat of the server around the requests, start-up and pre-rendering excluded; tick accounting, ±10 ms)");
    // Rendering alone, in this process, one thread.
    let site = Site {
        pages,
        padding,
        ..Site::default()
    };
    let fast = Pages::new(pages, padding)?;
    let count = pages.min(2_000);
    let started = Instant::now();
    let fixture_bytes: usize = (1..=count).map(|p| page_body(&site, p).len()).sum();
    let fixture_render = started.elapsed();
    let started = Instant::now();
    let fast_bytes: usize = (1..=count).map(|p| fast.body(p).len()).sum();
    let fast_render = started.elapsed();
    println!(
        "rendering one page: fixture {:.1} µs, fast {:.1} µs ({} pages, {} and {} bytes)",
        fixture_render.as_secs_f64() * 1e6 / count as f64,
        fast_render.as_secs_f64() * 1e6 / count as f64,
        count,
        fixture_bytes,
        fast_bytes
    );
    Ok(())
}

/// `parts`: each part of a page's work alone, CPU of this process per page.
fn parts(pages: u64, concurrency: usize, page_bytes: usize) -> Result<()> {
    let padding = padding_for(page_bytes);
    let server = ServerProcess::start(Engine::Fast, 0, pages, padding)?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("bench.toml");
    let url = server.url_template();
    fs::write(
        &config_path,
        format!(
            "url = \"{url}\"\npages = \"1..={pages}\"\n{}\nconcurrency = {concurrency}\n",
            pattern_line()
        ),
    )?;
    let config = pagecrawl::config::Config::load(&config_path).map_err(|e| anyhow!("{e}"))?;
    let me = std::process::id();
    let cpu_ms = || process_cpu(me).unwrap_or_default().as_secs_f64() * 1e3;
    println!("| part (alone, this process) | pages | threads | CPU ms/page |");
    println!("| --- | ---: | ---: | ---: |");
    let row = |part: &str, threads: usize, run: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let before = cpu_ms();
        run()?;
        let per_page = (cpu_ms() - before) / pages as f64;
        println!("| {part} | {pages} | {threads} | {per_page:.3} |");
        Ok(per_page)
    };

    // Fetching with a bare HTTP/1.1 keep-alive client: the kernel's share.
    row("fetch: bare keep-alive client", concurrency, &mut || {
        bare_clients(server.addr, pages, concurrency).map(drop)
    })?;

    // The same through ureq, as a fetch thread does it.
    let fetcher = Arc::new(pagecrawl::http::Fetcher::new(&config));
    let mut bodies: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    row(
        "fetch: ureq (pagecrawl's fetcher)",
        concurrency,
        &mut || {
            let next = Arc::new(AtomicU64::new(0));
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (next, fetcher, config) = (next.clone(), fetcher.clone(), config.clone());
                    thread::spawn(move || -> Result<Vec<(Option<String>, Vec<u8>)>> {
                        let mut kept = Vec::new();
                        loop {
                            let page = next.fetch_add(1, Ordering::SeqCst) + 1;
                            if page > pages {
                                return Ok(kept);
                            }
                            let response = fetcher.fetch(&config.page_url(page))?;
                            if kept.len() < 16 {
                                kept.push((response.content_type, response.body));
                            }
                        }
                    })
                })
                .collect();
            for worker in workers {
                bodies.extend(
                    worker
                        .join()
                        .map_err(|_| anyhow!("a fetch thread panicked"))??,
                );
            }
            Ok(())
        },
    )?;
    server.stop()?;

    // Decoding, extracting and rendering, on bodies fetched above: with
    // each engine that takes this pattern (the first is the one pagecrawl
    // uses).
    use pagecrawl::extract::{Engine as Extraction, Extractor};
    let engines: Vec<(String, Extractor)> = [
        Extraction::Sequence,
        Extraction::OnePass,
        Extraction::General,
    ]
    .into_iter()
    .filter_map(|engine| {
        let extractor = Extractor::with_engine(config.pattern.clone(), engine)?;
        Some((
            format!("decode + extract + render ({} engine)", engine.describe()),
            extractor,
        ))
    })
    .collect();
    for (part, extractor) in engines {
        let mut items = 0usize;
        row(&part, 1, &mut || {
            let mut rendered = Vec::new();
            for page in 0..pages {
                let (content_type, body) = &bodies[page as usize % bodies.len()];
                let (text, _) =
                    pagecrawl::charset::decode(content_type.as_deref(), body, config.charset);
                rendered.clear();
                extractor.for_each(&text, |values| {
                    pagecrawl::output::render_into(
                        &mut rendered,
                        config.format,
                        page,
                        &config.fields,
                        values,
                    );
                    items += 1;
                });
            }
            Ok(())
        })?;
        if items as u64 != pages * PER_PAGE as u64 {
            bail!("extracted {items} items from {pages} pages, expected {PER_PAGE} a page");
        }
    }

    // Checkpointing: read pages from the lazy range, commit them in groups
    // of `commit_every` with a flush each, as the commit stage does.
    let store = pagecrawl::store::Store::open(&dir.path().join("state"))?;
    store.enqueue(&[pagecrawl::range::PageRange::Closed {
        start: 1,
        end: pages,
    }])?;
    row("checkpoint: sled commit groups + flush", 1, &mut || {
        let (mut after, mut output_len) = (None, 0);
        loop {
            let batch = store.lazy_after(after, 256)?;
            let Some(&last) = batch.last() else {
                return Ok(());
            };
            after = Some(last);
            for group in batch.chunks(config.commit_every) {
                let settles: Vec<_> = group
                    .iter()
                    .map(|&page| pagecrawl::store::Settle::Done {
                        page,
                        attempts: 1,
                        items: PER_PAGE as u32,
                        extracted: PER_PAGE as u32,
                        bytes: page_bytes as u64,
                        keys: Vec::new(),
                    })
                    .collect();
                output_len += 4_000 * group.len() as u64;
                store.commit(&settles, output_len, None)?;
                store.flush()?;
            }
        }
    })?;
    if store.counters().done != pages {
        bail!(
            "the store recorded {} pages done, expected {pages}",
            store.counters().done
        );
    }
    println!("(CPU: user + sys of this process from /proc/self/stat around each part, tick accounting; the server is another process)");
    Ok(())
}

/// Fetches pages 1..=`pages` with `connections` bare keep-alive clients in
/// threads of their own; returns the body bytes read.
fn bare_clients(addr: SocketAddr, pages: u64, connections: usize) -> Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (next, bytes) = (next.clone(), bytes.clone());
            thread::spawn(move || keep_alive_client(addr, &next, pages, &bytes))
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    Ok(bytes.load(Ordering::SeqCst))
}

/// Fetches pages `next+1..=total` over one keep-alive connection, reading
/// each answer by its Content-Length.
fn keep_alive_client(
    addr: SocketAddr,
    next: &AtomicU64,
    total: u64,
    bytes: &AtomicU64,
) -> Result<()> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        let page = next.fetch_add(1, Ordering::SeqCst) + 1;
        if page > total {
            return Ok(());
        }
        // One write: with TCP_NODELAY, each piece of a `write!` would be a
        // packet of its own.
        let request = format!("GET {PAGE_PATH}{page} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        writer.write_all(request.as_bytes())?;
        let mut length = None;
        line.clear();
        reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("page {page}: {line:?}");
        }
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("connection closed mid-answer");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.context("no Content-Length")?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
        bytes.fetch_add(length as u64, Ordering::Relaxed);
    }
}

/// `profile`: one CPU-bound crawl under callgrind or perf, and the report.
fn profile(
    pages: u64,
    concurrency: usize,
    tool: Tool,
    pagecrawl: Option<PathBuf>,
    page_bytes: usize,
    out: Option<PathBuf>,
) -> Result<()> {
    let pagecrawl = find_pagecrawl(pagecrawl)?;
    let out = match out {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("pagecrawl-profile-")
            .tempdir()?
            .keep(),
    };
    fs::create_dir_all(&out)?;
    let ctx = Bench {
        pagecrawl: pagecrawl.clone(),
        engine: Engine::Fast,
        padding: padding_for(page_bytes),
        config_lines: Vec::new(),
        work: out.clone(),
        limit: Duration::from_secs(1_800),
        verbose: true,
        peers: Vec::new(),
    };
    let server = ServerProcess::start(Engine::Fast, 0, pages, ctx.padding)?;
    let config = write_config(
        &ctx,
        &out,
        &server.url_template(),
        &format!("1..={pages}"),
        concurrency,
    )?;
    let state = out.join("state");
    if state.exists() {
        fs::remove_dir_all(&state)?;
    }
    let data = out.join(match tool {
        Tool::Callgrind => "callgrind.out",
        Tool::Perf => "perf.data",
    });
    let mut command = match tool {
        Tool::Callgrind => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", data.display()));
            c
        }
        Tool::Perf => {
            let mut c = Command::new("perf");
            // cpu-clock: a software event, so it works in a VM too; no
            // call graphs (release builds have no frame pointers), the
            // inclusive view is callgrind's.
            c.args(["record", "-e", "cpu-clock", "-F", "2999", "-o"])
                .arg(&data)
                .arg("--");
            c
        }
    };
    command
        .arg(&pagecrawl)
        .args(["-q", "run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state);
    println!("profiling {pages} pages at 0 ms, concurrency {concurrency}, with {tool:?}...");
    let usage = measure(command, &out.join("profiled"), ctx.limit, |_, _| {})?;
    let stats = server.stats();
    let _ = server.stop();
    if !usage.ok() {
        bail!(
            "the profiled run failed: {} (logs in {})",
            usage.describe_failure(),
            out.display()
        );
    }
    println!(
        "profiled run: {:.1} s wall under the tool; server saw {}",
        usage.wall.as_secs_f64(),
        server_check(stats, pages)
    );
    let reports: Vec<(&str, Command)> = match tool {
        Tool::Callgrind => {
            let annotate = |inclusive: &str| {
                let mut c = Command::new("callgrind_annotate");
                c.arg(format!("--inclusive={inclusive}"))
                    .arg("--threshold=99")
                    .arg(&data);
                c
            };
            vec![
                ("callgrind-self.txt", annotate("no")),
                ("callgrind-inclusive.txt", annotate("yes")),
            ]
        }
        Tool::Perf => {
            let report = |sort: &str| {
                let mut c = Command::new("perf");
                c.args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--percent-limit",
                    "0.5",
                ])
                .args(["--sort", sort, "-i"])
                .arg(&data);
                c
            };
            vec![
                ("perf-threads.txt", report("comm")),
                ("perf-self.txt", report("dso,sym")),
            ]
        }
    };
    for (name, mut command) in reports {
        let output = command.output().context("cannot run the report tool")?;
        let path = out.join(name);
        fs::write(&path, &output.stdout)?;
        println!("\n== {} (first 45 lines) ==", path.display());
        for line in String::from_utf8_lossy(&output.stdout).lines().take(45) {
            println!("{line}");
        }
    }
    if tool == Tool::Callgrind {
        if let Some(total) = fs::read_to_string(&data).ok().and_then(|text| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        }) {
            println!(
                "\ntotal: {total} instructions, {:.0} per page ({pages} pages, whole process: start-up and final flush included)",
                total as f64 / pages as f64
            );
        }
    }
    println!("\nprofile and reports in {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_pages_equal_the_fixture_pages() {
        // Pages::new compares several pages with the fixture's and refuses
        // to start on any difference.
        let pages = Pages::new(300, padding_for(20_000)).unwrap();
        let size = pages.body(7).len();
        assert!((18_000..22_000).contains(&size), "{size}");
    }

    #[test]
    fn summary_and_stat_lines_parse() {
        let line =
            "finished: 295 pages done, 0 failed, 5900 items in 0.91 s (324.2 pages/s); output: x";
        assert_eq!(parse_summary(line), Some((295, 0, 5900)));
        assert_eq!(
            parse_pairs("pages=20 failed=0 items=400", "items"),
            Some(400)
        );
        let stat = "12 (a b) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18";
        let fields = stat_fields(stat).unwrap();
        // Field k (1-based, as stat(5) numbers them) is fields[k - 3]: cutime
        // is field 16.
        assert_eq!((fields[0], fields[13], fields[14]), ("S", "13", "14"));
        assert!(pattern_text().starts_with("<td>(?P<date>"));
    }
}

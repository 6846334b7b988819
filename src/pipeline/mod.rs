//! The crawl pipeline: feeder → fetch × N → parse × M → commit (one thread),
//! joined by bounded crossbeam channels.
//!
//! ```text
//!  sled: pending ─▶ feeder ─▶ fetch × N ─▶ parse × M ─▶ commit ─▶ output file
//!    ▲                 ▲                                   │
//!    │                 └──── settled pages (window) ◀──────┤
//!    └──────── done / failed / counters, one batch per group ◀┘
//! ```
//!
//! Only the feeder decides what is fetched, and it never has more than
//! `window` pages out at once (including pages waiting for a retry), which
//! bounds memory by the window, not by the queue. Only the commit stage
//! writes the output and the page states. Shutdown flows through the
//! channels: the feeder stops sending, each stage ends when its input
//! disconnects, and `Shared::abort` is the one flag for "stop now".
//!
//! The politeness settings (concurrency, rate, timeouts, retries, follow
//! interval) live in [`Shared`] and can be replaced while the crawl runs
//! ([`Shared::reload`], on SIGHUP); the job's identity cannot.

mod commit;
mod feeder;
pub(crate) use parse::{absolute, detail_values};
mod fetch;
mod gate;
mod groups;
mod parse;
mod postgres;
mod rate;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::config::Config;
use crate::http::{FetchError, Fetcher, Response};
use crate::output::OutputFile;
use crate::robots::Robots;
use crate::store::Store;

/// What the fetch pool fetches: a listing page, or a detail page (by its
/// number in the state, see `store::detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    Page(u64),
    Detail(u64),
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Task::Page(page) => write!(f, "page {page}"),
            Task::Detail(id) => write!(f, "detail page {id}"),
        }
    }
}

/// A task the feeder hands to the fetch pool.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Work {
    task: Task,
    /// Failed attempts so far.
    attempts: u32,
    /// A detail page's URL (a listing page's comes from the template).
    url: Option<Arc<str>>,
}

/// What a fetch thread passes on. `attempts` counts this attempt.
#[derive(Debug)]
enum Fetched {
    Body {
        task: Task,
        attempts: u32,
        url: Option<Arc<str>>,
        response: Response,
    },
    Failure {
        task: Task,
        attempts: u32,
        url: Option<Arc<str>>,
        error: FetchError,
    },
    /// Not fetched because the crawl is stopping; the task stays pending.
    Abandoned,
}

/// A page's items, rendered in the output format, one slice per item.
#[derive(Debug, Default)]
struct Rendered {
    bytes: Vec<u8>,
    /// End offset of each item in `bytes`.
    ends: Vec<usize>,
    /// Each item's key (the `key` field), when the job has one.
    keys: Vec<String>,
    /// With `[detail]`: each item's values (the link resolved), not
    /// rendered: an item is written once its detail page is in.
    values: Vec<Vec<String>>,
}

impl Rendered {
    /// Items the pattern found on the page.
    fn count(&self) -> usize {
        self.ends.len().max(self.values.len())
    }
}

/// What a parse thread passes on to the commit stage.
#[derive(Debug)]
enum Parsed {
    Done {
        page: u64,
        attempts: u32,
        bytes: u64,
        items: Rendered,
    },
    /// A detail page's values (its pattern matched).
    Detail {
        id: u64,
        attempts: u32,
        bytes: u64,
        url: Arc<str>,
        values: crate::store::DetailValues,
    },
    Failure {
        task: Task,
        attempts: u32,
        url: Option<Arc<str>>,
        error: FetchError,
    },
    /// Passed on only so the stage sees its input end; nothing to record.
    Abandoned,
}

/// What the commit stage tells the feeder once a task's fate is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settled {
    /// Done or failed: no longer in flight.
    Finished(Task),
    /// Fetch again, not before `not_before`.
    Retry {
        task: Task,
        attempts: u32,
        not_before: Instant,
    },
}

/// Live counts for progress reports, updated by the commit stage.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    /// Detail pages done (`[detail]`).
    pub details_done: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    pub items: AtomicU64,
    /// Items not written because their key was already in the output.
    pub duplicates: AtomicU64,
    /// Follow mode: rounds started.
    pub rounds: AtomicU64,
}

/// State every stage can see, and the knobs the supervisor and the control
/// socket turn.
pub struct Shared {
    /// A job in a store: its caps across every daemon, which each request
    /// also waits for (see `postgres::JobLimits`).
    job_limits: Option<postgres::JobLimits>,
    /// The parse stage passes each item's values, not its rendered bytes
    /// (a backend that stores items as values).
    items_as_values: bool,
    /// Stop feeding; in-flight pages finish.
    pub stop: AtomicBool,
    /// Stop now: the commit stage records what it holds and ends.
    pub abort: AtomicBool,
    /// Feed nothing new until cleared (in-flight requests finish).
    pub paused: AtomicBool,
    /// Pages were added behind the feeder's cursor: scan from the start.
    pub rescan: AtomicBool,
    /// Set by the feeder when it can dispatch nothing until pages settle;
    /// the commit stage then flushes without waiting for `commit_interval`.
    waiting_on_commits: AtomicBool,
    /// The feeder has returned: no work will come (fetch threads standing
    /// by end).
    feeder_ended: AtomicBool,
    /// Whether pages added now (`enqueue`, `retry` over the control
    /// socket) will still be crawled by this run: see [`Shared::take_pages`].
    intake_open: Mutex<bool>,
    pub progress: Progress,
    /// The fetch threads' counters, for `pagecrawl metrics` and
    /// `metrics_listen`.
    pub metrics: crate::metrics::Live,
    /// Called from the commit loop after every group or idle tick: the
    /// systemd watchdog ping lives here, in the loop that makes progress.
    pub heartbeat: Option<Box<dyn Fn() + Send + Sync>>,
    config: RwLock<Arc<Config>>,
    fetcher: RwLock<Arc<Fetcher>>,
    limiter: rate::RateLimiter,
    gate: gate::Gate,
    /// The site's robots.txt rules (allow-all when `robots = false`).
    robots: Robots,
    /// The first error a stage hit; it also sets `stop`.
    error: Mutex<Option<anyhow::Error>>,
    /// Requests to rotate the output (`pagecrawl reopen`, SIGUSR1), each
    /// with where to send the outcome; the commit stage takes them at its
    /// next boundary. Bounded: a few requests can wait, more are refused.
    pub reopen_requests: (Sender<ReopenReply>, Receiver<ReopenReply>),
    /// Fetch threads started: the most requests a reload can allow at once.
    threads: usize,
    /// The highest page found with items, plus one (0 = none yet): the
    /// parse threads raise it as soon as they see items, and an open range
    /// queues no further than `stop_after_empty + concurrency` pages past
    /// it (see `feeder`).
    highest_with_items: AtomicU64,
    /// Wakes the feeder when `highest_with_items` rose. Capacity 1: one
    /// waiting nudge says as much as many, and a parse thread never blocks
    /// on it (it drops the nudge when one waits).
    items_seen: (Sender<()>, Receiver<()>),
    /// Tasks handed to the fetch pool and not settled yet (not those
    /// waiting for a retry): what `queue` shows as in flight.
    fetching: Mutex<std::collections::HashSet<Task>>,
}

/// Where the commit stage sends a reopen's outcome: whether a new file was
/// started, or why not.
pub type ReopenReply = Sender<std::result::Result<bool, String>>;

impl Shared {
    fn new(config: &Config, robots: Robots) -> Shared {
        Shared {
            job_limits: None,
            items_as_values: false,
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            rescan: AtomicBool::new(false),
            waiting_on_commits: AtomicBool::new(false),
            feeder_ended: AtomicBool::new(false),
            intake_open: Mutex::new(true),
            progress: Progress::default(),
            metrics: crate::metrics::Live::default(),
            heartbeat: None,
            config: RwLock::new(Arc::new(config.clone())),
            fetcher: RwLock::new(Arc::new(Fetcher::new(config))),
            limiter: rate::RateLimiter::new(effective_rate(config, &robots)),
            gate: gate::Gate::new(config.concurrency),
            robots,
            error: Mutex::new(None),
            reopen_requests: crossbeam_channel::bounded(4),
            threads: fetch_threads(config),
            fetching: Mutex::new(std::collections::HashSet::new()),
            highest_with_items: AtomicU64::new(0),
            items_seen: bounded(1),
        }
    }

    /// A page was found with items: raises the highest such page and, when
    /// that moved it, wakes the feeder.
    fn saw_items(&self, page: u64) {
        let plus_one = page.saturating_add(1);
        if self
            .highest_with_items
            .fetch_max(plus_one, Ordering::SeqCst)
            < plus_one
        {
            let _ = self.items_seen.0.try_send(());
        }
    }

    /// The highest page found with items, in this run or (for the pages
    /// before it) in the state.
    fn highest_with_items(&self) -> Option<u64> {
        self.highest_with_items
            .load(Ordering::SeqCst)
            .checked_sub(1)
    }

    fn fail(&self, error: anyhow::Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(error);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Applies `change` (an enqueue or a retry on the store) if this run
    /// will crawl the pages it adds, and tells the feeder to look again;
    /// `None` (nothing applied) once the feeder has ended or is ending.
    /// The feeder decides to end under the same lock ([`Self::close_intake`]),
    /// so a change either lands before that decision, and is seen, or is
    /// refused: never acknowledged and then left behind.
    pub fn take_pages<T>(&self, change: impl FnOnce() -> Result<T>) -> Option<Result<T>> {
        let open = self.intake_open.lock().unwrap_or_else(|e| e.into_inner());
        if !*open || self.stopping() {
            return None;
        }
        let result = change();
        self.rescan.store(true, Ordering::SeqCst);
        drop(open);
        Some(result)
    }

    /// The feeder found nothing left to do: closes the intake and returns
    /// true, unless pages were added since its last scan (then it must
    /// look again, and false).
    fn close_intake(&self) -> bool {
        let mut open = self.intake_open.lock().unwrap_or_else(|e| e.into_inner());
        if self.rescan.load(Ordering::SeqCst) {
            return false;
        }
        *open = false;
        true
    }

    /// The feeder ended (stopped, failed, or done): take nothing more.
    fn shut_intake(&self) {
        *self.intake_open.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fetcher(&self) -> Arc<Fetcher> {
        self.fetcher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies a re-read configuration. Politeness settings take effect at
    /// once; a change to the job's identity (URL, range, pattern, key, absolute,
    /// format, output) is refused and the old configuration stays.
    pub fn reload(&self, new: Config) -> Result<(), String> {
        let old = self.config();
        let changed: Vec<&str> = [
            ("url", old.url != new.url),
            ("pages", old.pages != new.pages),
            ("pattern", old.pattern_text != new.pattern_text),
            ("key", old.key != new.key),
            ("absolute", old.absolute != new.absolute),
            ("format", old.format != new.format),
            ("output", old.output != new.output),
            (
                "[detail]",
                old.detail.as_ref().map(|d| &d.identity)
                    != new.detail.as_ref().map(|d| &d.identity),
            ),
        ]
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(key, _)| *key)
        .collect();
        if !changed.is_empty() {
            return Err(format!(
                "{} changed: that is another job, which needs a restart with a new state directory",
                changed.join(", ")
            ));
        }
        *self.fetcher.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Fetcher::new(&new));
        self.limiter.set_rate(effective_rate(&new, &self.robots));
        self.gate.set_limit(new.concurrency);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(())
    }

    /// The metrics text of this crawl over `store` (see [`crate::metrics`]).
    pub fn metrics_text(&self, store: &Store) -> Result<String> {
        crate::metrics::render(
            store,
            Some(crate::metrics::Running {
                live: &self.metrics,
                rate_limit_wait: self.limiter.waited.total(),
                paused: self.paused.load(Ordering::SeqCst),
            }),
        )
    }

    /// Marks a task as handed to the fetch pool, or back from it.
    pub(crate) fn set_fetching(&self, task: Task, fetching: bool) {
        let mut tasks = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if fetching {
            tasks.insert(task);
        } else {
            tasks.remove(&task);
        }
    }

    /// Whether `task` is being fetched, parsed or committed now.
    pub fn is_fetching(&self, task: Task) -> bool {
        self.fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&task)
    }

    /// How many fetch threads run: `concurrency` above it (after a
    /// reload) is capped to it.
    pub fn fetch_threads(&self) -> usize {
        self.threads
    }

    fn beat(&self) {
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat();
        }
    }
}

/// A running pipeline.
pub struct Pipeline {
    pub shared: Arc<Shared>,
    /// Signals (with `()`) when the commit stage has ended.
    pub finished: Receiver<()>,
    commit: Option<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

/// The feeder stage of a backend: hands tasks to the fetch pool (`Work`),
/// hears from the commit stage what became of them (`Settled`), and ends
/// when nothing is left or the crawl stops.
type Feed = Box<dyn FnOnce(Sender<Work>, Receiver<Settled>, &Shared, usize) -> Result<()> + Send>;

/// The commit stage of a backend: records groups of parsed results
/// durably, then tells the feeder (`Settled`).
type Record = Box<dyn FnOnce(Receiver<Parsed>, Sender<Settled>, &Shared) -> Result<()> + Send>;

/// What a backend gives the pipeline: its feeder and its commit stage. The
/// fetch and parse stages between them are the same for every backend.
struct Stages {
    feed: Feed,
    record: Record,
    /// Items reach `record` as values, not rendered.
    values: bool,
    /// Caps held across the daemons of a job in a store.
    limits: Option<postgres::JobLimits>,
}

impl Stages {
    /// The embedded backend: the queue and checkpoint in sled, the items in
    /// the output file.
    fn sled(store: Arc<Store>, mut output: OutputFile) -> Stages {
        let for_feeder = store.clone();
        Stages {
            feed: Box::new(move |work, settled, shared, window| {
                feeder::run(&for_feeder, work, settled, shared, window)
            }),
            record: Box::new(move |parsed, settled, shared| {
                commit::run(&store, &mut output, parsed, settled, shared)
            }),
            values: false,
            limits: None,
        }
    }
}

/// Fails the run when the thread holding it unwinds (a bug): the other
/// stages stop, so the run ends with the error instead of waiting forever
/// for the page the thread had.
struct FailOnPanic {
    shared: Arc<Shared>,
    thread: String,
}

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.fail(anyhow::anyhow!(
                "internal error in the {} thread; everything committed is safe and the next run resumes",
                self.thread
            ));
        }
    }
}

/// A test hook standing in for a bug: `PAGECRAWL_FAULT_PANIC=STAGE:N` makes
/// the `STAGE` (feeder, fetch, parse or commit) panic at its N-th page (or
/// commit group).
pub(crate) fn fault_panic(stage: &str) {
    use std::sync::OnceLock;
    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let value = std::env::var("PAGECRAWL_FAULT_PANIC").ok()?;
        let (stage, count) = value.split_once(':')?;
        Some((stage.to_string(), count.parse().ok()?))
    });
    if let Some((planned, count)) = plan {
        if planned == stage && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *count {
            panic!("PAGECRAWL_FAULT_PANIC: {stage} at {count}");
        }
    }
}

/// The request rate to keep: the configured limit, or the site's
/// `Crawl-delay`, whichever is slower.
fn effective_rate(config: &Config, robots: &Robots) -> Option<f64> {
    let delay_rate = robots
        .crawl_delay
        .filter(|d| !d.is_zero())
        .map(|d| 1.0 / d.as_secs_f64());
    match (config.rate_limit, delay_rate) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How many pages the feeder may have out at once: enough to keep every
/// fetch thread busy while the parse pool works and two commit groups wait
/// (one being flushed, the next filling), and small enough that memory stays
/// a few pages per thread. With room for one group only, the feeder ran
/// into the window at every flush and the groups stayed small.
fn window(config: &Config) -> usize {
    2 * config.concurrency + 2 * config.parse_threads + 2 * config.commit_every
}

/// Fetch threads are started for this many connections at least, so that a
/// reload can raise `concurrency` up to here without a restart; the gate
/// keeps the real number of requests at `concurrency`.
fn fetch_threads(config: &Config) -> usize {
    config.concurrency.max(16)
}

impl Pipeline {
    /// Starts every stage over an opened store and output. `heartbeat` is
    /// called from the commit loop (see [`Shared::heartbeat`]).
    pub fn start(
        config: &Config,
        store: Arc<Store>,
        output: OutputFile,
        robots: Robots,
        heartbeat: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> Result<Pipeline> {
        Pipeline::start_with(config, robots, heartbeat, Stages::sled(store, output))
    }

    /// Starts every stage over a job in a PostgreSQL store, as `daemon`
    /// (listing pages only: see `postgres`). `config.concurrency` is this
    /// daemon's cap; `job_concurrency` the job's, across its daemons.
    pub fn start_store(
        config: &Config,
        job_concurrency: usize,
        robots: Robots,
        store: crate::store::postgres::connect::StoreUrl,
        job: crate::store::postgres::job::JobId,
        daemon: crate::store::postgres::job::DaemonId,
        lease_for: Duration,
    ) -> Result<Pipeline> {
        let rate = effective_rate(config, &robots);
        // Every connection of this daemon carries its name: how another
        // daemon finds them to fence this one off if it freezes.
        let store = store.for_daemon(daemon);
        let limits = postgres::JobLimits::new(
            &store,
            job,
            job_concurrency,
            config.concurrency,
            rate,
            config.request_timeout,
        )?;
        let mut stages = postgres::stages(store, job, daemon, lease_for);
        stages.limits = Some(limits);
        Pipeline::start_with(config, robots, None, stages)
    }

    /// Starts the fetch and parse stages, and the backend's feeder and
    /// commit stages (`stages`) around them.
    fn start_with(
        config: &Config,
        robots: Robots,
        heartbeat: Option<Box<dyn Fn() + Send + Sync>>,
        stages: Stages,
    ) -> Result<Pipeline> {
        let Stages {
            feed,
            record,
            values,
            limits,
        } = stages;
        let mut shared = Shared::new(config, robots);
        shared.heartbeat = heartbeat;
        shared.items_as_values = values;
        shared.job_limits = limits;
        let shared = Arc::new(shared);
        let window = window(config);
        // Fetch threads take work as soon as they are free; one queued page
        // per connection hides the feeder's latency without hoarding pages.
        let (work_tx, work_rx) = bounded::<Work>(config.concurrency);
        // Parsing is fast; two bodies per parse thread smooth out bursts.
        let (fetched_tx, fetched_rx) = bounded::<Fetched>(2 * config.parse_threads);
        // A full group can queue while the previous one is being flushed.
        let (parsed_tx, parsed_rx) = bounded::<Parsed>(config.commit_every);
        // Never more settled messages than pages in flight (at most the
        // window, plus one scan's worth of retries read back after a
        // restart), so the commit stage never blocks on the feeder and
        // never drops a message.
        let (settled_tx, settled_rx) = bounded::<Settled>(window + feeder::SCAN_BATCH);
        let (finished_tx, finished_rx) = bounded::<()>(1);

        let mut others = Vec::new();
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            let on_panic = FailOnPanic {
                shared: shared.clone(),
                thread: name.clone(),
            };
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let _on_panic = on_panic;
                    body();
                })
                .context("cannot start a pipeline thread")
        };
        {
            let shared = shared.clone();
            others.push(spawn(
                "feeder".into(),
                Box::new(move || {
                    // Set however the feeder ends, a panic included, so
                    // that fetch threads standing by end too, and the
                    // control socket takes no more pages.
                    struct Ended<'a>(&'a Shared);
                    impl Drop for Ended<'_> {
                        fn drop(&mut self) {
                            self.0.shut_intake();
                            self.0.feeder_ended.store(true, Ordering::SeqCst);
                        }
                    }
                    let _ended = Ended(&shared);
                    if let Err(e) = feed(work_tx, settled_rx, &shared, window) {
                        shared.fail(e);
                    }
                }),
            )?);
        }
        for index in 0..fetch_threads(config) {
            let (rx, tx, shared) = (work_rx.clone(), fetched_tx.clone(), shared.clone());
            others.push(spawn(
                format!("fetch-{index}"),
                Box::new(move || fetch::run(index, rx, tx, &shared)),
            )?);
        }
        drop((work_rx, fetched_tx));
        for index in 0..config.parse_threads {
            let (rx, tx, config) = (fetched_rx.clone(), parsed_tx.clone(), config.clone());
            let shared = shared.clone();
            others.push(spawn(
                format!("parse-{index}"),
                Box::new(move || parse::run(&config, rx, tx, &shared)),
            )?);
        }
        drop((fetched_rx, parsed_tx));
        let commit = {
            let shared = shared.clone();
            let on_panic = FailOnPanic {
                shared: shared.clone(),
                thread: "commit".into(),
            };
            std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || {
                    let _on_panic = on_panic;
                    if let Err(e) = record(parsed_rx, settled_tx, &shared) {
                        shared.fail(e);
                    }
                    let _ = finished_tx.send(());
                })
                .context("cannot start the commit thread")?
        };
        Ok(Pipeline {
            shared,
            finished: finished_rx,
            commit: Some(commit),
            others,
        })
    }

    /// Waits for the commit stage (and, unless aborted, every other stage),
    /// and returns the first error any stage hit.
    /// A stage that panicked (a bug, reported by the panic hook) makes the
    /// run fail rather than end as if the queue had drained; the checkpoint
    /// is still consistent, so the next run resumes.
    pub fn join(mut self) -> Result<()> {
        let mut panicked: Vec<String> = Vec::new();
        if let Some(commit) = self.commit.take() {
            if commit.join().is_err() {
                panicked.push("commit".into());
            }
        }
        if !self.shared.abort.load(Ordering::SeqCst) {
            self.shared.stop.store(true, Ordering::SeqCst);
            for handle in self.others.drain(..) {
                let name = handle.thread().name().unwrap_or("pipeline").to_string();
                if handle.join().is_err() {
                    panicked.push(name);
                }
            }
        }
        let error = self.shared.error.lock().ok().and_then(|mut e| e.take());
        match error {
            Some(error) => Err(error),
            None if !panicked.is_empty() => Err(anyhow::anyhow!(
                "internal error in the {} thread; everything committed is safe and the next run resumes",
                panicked.join(", ")
            )),
            None => Ok(()),
        }
    }
}

/// Whether a task whose attempt number `attempts` failed with `error` is
/// tried again (both backends' commit stages decide with this).
fn tried_again(config: &Config, attempts: u32, error: &FetchError) -> bool {
    error.retryable() && attempts <= config.retries
}

/// A task's final failure as the queue keeps it and the log says it:
/// `HTTP 500 from URL after 4 attempts`.
fn failure_detail(error: &FetchError, url: &str, attempts: u32) -> String {
    let plural = if attempts == 1 { "" } else { "s" };
    format!("{error} from {url} after {attempts} attempt{plural}")
}

/// The delay before retry number `attempts` (1 = the first retry):
/// exponential from `backoff`, capped at `max_backoff`, with jitter in
/// [d/2, d] so that many failing pages do not retry in lockstep; never less
/// than what the server asked for with `Retry-After`.
fn retry_delay(config: &Config, attempts: u32, error: &FetchError) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let full = config
        .backoff
        .saturating_mul(1 << exponent)
        .min(config.max_backoff);
    let jittered = full.mul_f64(0.5 + fastrand::f64() * 0.5);
    jittered.max(error.retry_after().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text =
            format!("url = \"http://h/{{page}}\"\npages = \"1\"\npattern = \"(?P<a>a)\"\n{extra}");
        Config::parse(&text, "t.toml".as_ref()).unwrap()
    }

    #[test]
    fn a_failure_is_tried_again_up_to_retries_and_then_said_with_its_attempts() {
        let config = config("retries = 2");
        let timeout = FetchError::Timeout("x".into());
        assert!(tried_again(&config, 1, &timeout));
        assert!(tried_again(&config, 2, &timeout));
        assert!(!tried_again(&config, 3, &timeout), "after retries = 2");
        assert!(
            !tried_again(&config, 1, &FetchError::Robots),
            "not retryable"
        );
        assert_eq!(
            failure_detail(&timeout, "http://h/1", 1),
            format!("{timeout} from http://h/1 after 1 attempt")
        );
        assert_eq!(
            failure_detail(&timeout, "http://h/1", 3),
            format!("{timeout} from http://h/1 after 3 attempts")
        );
    }

    #[test]
    fn retry_delays_grow_are_capped_and_honour_retry_after() {
        let config = config("backoff = \"100ms\"\nmax_backoff = \"1s\"");
        let plain = FetchError::Timeout("x".into());
        for attempts in 1..40 {
            let delay = retry_delay(&config, attempts, &plain);
            let full = Duration::from_millis(100 * (1u64 << (attempts - 1).min(20)))
                .min(Duration::from_secs(1));
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempts}: {delay:?}"
            );
        }
        let polite = FetchError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(5)),
        };
        assert_eq!(retry_delay(&config, 1, &polite), Duration::from_secs(5));
    }

    #[test]
    fn crawl_delay_slows_the_rate_but_never_speeds_it_up() {
        let robots = Robots::parse("User-agent: *\nCrawl-delay: 2", "pagecrawl");
        assert_eq!(effective_rate(&config(""), &robots), Some(0.5));
        assert_eq!(
            effective_rate(&config("rate_limit = 0.1"), &robots),
            Some(0.1)
        );
        assert_eq!(
            effective_rate(&config("rate_limit = 3.0"), &Robots::allow_all()),
            Some(3.0)
        );
        assert_eq!(effective_rate(&config(""), &Robots::allow_all()), None);
    }

    #[test]
    fn reload_applies_politeness_and_refuses_identity_changes() {
        let shared = Shared::new(&config("concurrency = 4"), Robots::allow_all());
        assert!(shared
            .reload(config("concurrency = 2\nrate_limit = 5.0"))
            .is_ok());
        assert_eq!(shared.gate.limit(), 2);
        assert_eq!(shared.config().rate_limit, Some(5.0));
        let other = Config::parse(
            "url = \"http://h/{page}\"\npages = \"1\"\npattern = \"(?P<b>b)\"",
            "t.toml".as_ref(),
        )
        .unwrap();
        let refused = shared.reload(other).unwrap_err();
        assert!(refused.contains("pattern"), "{refused}");
        assert_eq!(
            shared.config().fields,
            ["a"],
            "the old config stays in force"
        );
    }
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// A SIGHUP re-reads the file through `Config::parse` and applies it
        /// with `Shared::reload`: with arbitrary values for every key,
        /// neither panics, nor does anything that then uses the values (the
        /// rate limiter, the HTTP client, the deadlines, the retry delays);
        /// a refused config leaves the old one in force.
        #[test]
        fn a_reload_with_arbitrary_values_never_panics_and_keeps_the_old_config_when_refused(
            text in crate::config::arbitrary::config_text()
        ) {
            let base = Config::parse(
                "url = \"http://127.0.0.1:1/p?page={page}\"\npages = \"1..=3\"\npattern = \"(?P<url>a+)\"\nkey = \"url\"",
                "/etc/job.toml".as_ref(),
            ).unwrap();
            let shared = Shared::new(&base, Robots::allow_all());
            let applied = match Config::parse(&text, "/etc/job.toml".as_ref()) {
                Ok(new) => shared.reload(new).is_ok(),
                Err(_) => false,
            };
            let config = shared.config();
            if !applied {
                proptest::prop_assert_eq!(format!("{:?}", config), format!("{:?}", base));
            }
            let stop = AtomicBool::new(false);
            proptest::prop_assert!(shared.limiter.acquire(&stop));
            let now = Instant::now();
            for deadline in [config.request_timeout, config.connect_timeout, config.commit_interval, config.stop_grace, config.follow.unwrap_or_default()] {
                let _ = now + deadline;
            }
            for attempts in 1..=config.retries + 1 {
                let delay = retry_delay(&config, attempts, &FetchError::Timeout("t".into()));
                proptest::prop_assert!(delay <= config.max_backoff);
                let _ = now + delay;
            }
            let _ = (window(&config), fetch_threads(&config), config.page_url(crate::range::MAX_PAGE));
        }
    }
}

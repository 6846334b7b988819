//! `pagecrawl run`: open (or create) the state, check it belongs to this
//! job, queue the range, start the pipeline, and supervise it: signals,
//! periodic progress, the grace period, and the closing summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{never, select, tick};

use crate::config::Config;
use crate::control::server::ControlServer;
use crate::error::UserError;
use crate::exit_code::Exit;
use crate::http::Fetcher;
use crate::notify::Notifier;
use crate::output::{csv_header, Checkpoint, Damage, Format, OutputFile, REPAIR_HINT};
use crate::pipeline::{Pipeline, Shared};
use crate::progress::{publish_recent_rate, ProgressView, RateWindow, Snapshot, RATE_WINDOW};
use crate::robots::Robots;
use crate::signals::Signal;
use crate::store::{pid_path, Counters, Job, Store};

/// How often a progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often systemd's STATUS= is refreshed (at most once a second).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often the progress bar's numbers are refreshed on a terminal.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// Where `run` takes its job from: a config file, or the one-shot flags.
#[derive(Debug)]
pub enum JobSource {
    File(PathBuf),
    Flags {
        url: String,
        pages: String,
        pattern: String,
        output: Option<PathBuf>,
    },
}

impl JobSource {
    /// `--config`, or all of `--url`, `--pages` and `--pattern` (with an
    /// optional `--output`); anything else is refused with one line.
    pub fn from_flags(
        config: Option<PathBuf>,
        url: Option<String>,
        pages: Option<String>,
        pattern: Option<String>,
        output: Option<PathBuf>,
    ) -> Result<JobSource, UserError> {
        let given: Vec<&str> = [
            ("--url", url.is_some()),
            ("--pages", pages.is_some()),
            ("--pattern", pattern.is_some()),
            ("--output", output.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        match (config, url, pages, pattern) {
            (Some(path), None, None, None) if output.is_none() => Ok(JobSource::File(path)),
            (Some(path), ..) => Err(UserError::Usage(format!(
                "--config {} and {} both describe the job: pass the config file alone (set the output with `output` in it), or drop --config for a one-shot crawl",
                path.display(),
                given.join(", ")
            ))),
            (None, Some(url), Some(pages), Some(pattern)) => Ok(JobSource::Flags {
                url,
                pages,
                pattern,
                output,
            }),
            (None, url, pages, pattern) => {
                let missing: Vec<&str> = [
                    ("--url URL", url.is_none()),
                    ("--pages RANGE", pages.is_none()),
                    ("--pattern RE", pattern.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, unset)| unset.then_some(flag))
                .collect();
                Err(UserError::Usage(if given.is_empty() {
                    "run needs a job: --config FILE (pagecrawl init NAME writes one), or --url URL --pages RANGE --pattern RE for a one-shot crawl".into()
                } else {
                    format!(
                        "a one-shot crawl needs --url, --pages and --pattern: add {} (or pass --config FILE instead)",
                        missing.join(" and ")
                    )
                }))
            }
        }
    }

    fn load(&self) -> Result<Config, UserError> {
        match self {
            JobSource::File(path) => Config::load(path),
            JobSource::Flags {
                url,
                pages,
                pattern,
                output,
            } => Config::from_command_line(url, pages, pattern, output.as_deref()),
        }
    }
}

pub fn command(job: &JobSource, state_dir: Option<PathBuf>, follow: Option<&str>) -> Result<Exit> {
    let follow = follow
        .map(|text| {
            crate::config::follow_interval(text)
                .map_err(|why| UserError::Usage(format!("--follow: {why}")))
        })
        .transpose()?;
    let config = with_follow(job.load()?, follow)?;
    if let Some(url) = &config.store {
        if state_dir.is_some() {
            return Err(UserError::Usage(
                "--state-dir and a config with `store` name two places for one job: leave one out"
                    .into(),
            )
            .into());
        }
        return super::run_store::crawl_store(&config, url);
    }
    let dir = super::run_state_dir(state_dir, &config);
    crawl(&config, &dir, follow)
}

/// The site's robots.txt rules when the job obeys them (`robots`), read
/// once at start; saying when its `Crawl-delay` slows the crawl.
pub(super) fn robots_of(config: &Config) -> Robots {
    if !config.robots {
        return Robots::allow_all();
    }
    let robots =
        Fetcher::new(config).robots(&config.page_url(config.pages.start()), &config.user_agent);
    if let Some(delay) = robots.crawl_delay {
        log::info!("robots.txt asks for {delay:?} between requests; keeping to it");
    }
    robots
}

/// Applies `run --follow` over the config's own `follow`.
fn with_follow(mut config: Config, follow: Option<Duration>) -> Result<Config> {
    if follow.is_some() {
        if config.from_command_line {
            return Err(UserError::Usage(
                "--follow needs `key` (the field that identifies an item), which only a config file sets: \
                 write one with `pagecrawl init NAME` and run it with --config"
                    .into(),
            )
            .into());
        }
        if config.key.is_none() {
            return Err(UserError::Usage(format!(
                "--follow needs `key` in {} (the field that identifies an item, e.g. key = \"url\"), \
                 or re-crawled pages would repeat their items",
                config.source.display()
            ))
            .into());
        }
        config.follow = follow;
    }
    Ok(config)
}

/// What a finished (or stopped) run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub done: u64,
    pub failed: u64,
    pub items: u64,
    /// Items not written because their key was already in the output.
    pub duplicates: u64,
    pub pending: u64,
    pub elapsed: Duration,
    pub output: PathBuf,
    pub interrupted: bool,
    /// The state's counters at the end: what `status` reports.
    pub totals: Counters,
    /// Pages failed for good, less the 404s that mark an open range's end.
    pub real_failures: u64,
}

/// Runs the job in `config` with its state in `dir`, printing the summary.
/// `follow` is the `--follow` override, kept across SIGHUP reloads.
pub fn crawl(config: &Config, dir: &Path, follow: Option<Duration>) -> Result<Exit> {
    let summary = crawl_quietly(config, dir, follow)?;
    let seconds = summary.elapsed.as_secs_f64();
    // The same numbers as `status` (totals, and the run's rate as it
    // computes it), so the two never disagree.
    let totals = &summary.totals;
    let rate = match crate::control::ops::run_rate(totals) {
        Some(rate) => format!("{rate:.1} pages/s"),
        None => "no new pages".into(),
    };
    println!(
        "{} {} pages done, {} failed, {} items in {seconds:.2} s ({rate}); output: {}",
        if summary.interrupted || totals.pending + totals.detail_pending > 0 {
            "stopped:"
        } else {
            "finished:"
        },
        totals.done,
        totals.failed,
        totals.items,
        summary.output.display()
    );
    if config.detail.is_some() {
        println!(
            "detail pages: {} done, {} pending, {} failed; {} items wait for their detail page",
            totals.detail_done, totals.detail_pending, totals.detail_failed, totals.waiting
        );
    }
    if summary.done > 0 && summary.done != totals.done {
        println!("{} pages were crawled in this run", summary.done);
    }
    if summary.duplicates > 0 {
        println!(
            "{} items were already in the output (same key) and were not written again",
            summary.duplicates
        );
    }
    if summary.pending > 0 {
        println!(
            "{} pages still pending; run the same command again to resume",
            summary.pending
        );
    }
    if summary.real_failures > 0 {
        println!(
            "{} pages failed for good: pagecrawl queue --state failed --state-dir {}; pagecrawl retry --state-dir {} queues them again",
            summary.real_failures,
            dir.display(),
            dir.display()
        );
    }
    // A crawl that ended with pages it could not get is not a success:
    // scripts and systemd should see it (exit 8, as wget's "server issued
    // an error response"). A stopped crawl is not finished: exit 0.
    if totals.detail_failed > 0 {
        println!(
            "{} detail pages failed for good: pagecrawl queue --stage detail --state failed --state-dir {}; pagecrawl retry --state-dir {} queues them again",
            totals.detail_failed,
            dir.display(),
            dir.display()
        );
    }
    let settled = totals.pending + totals.detail_pending == 0;
    if !summary.interrupted && settled && summary.real_failures + totals.detail_failed > 0 {
        return Ok(Exit::FailedPages);
    }
    Ok(Exit::Success)
}

/// The job identity recorded in the state directory.
fn job_of(config: &Config, dir: &Path) -> Result<Job> {
    let output = config
        .output
        .clone()
        .unwrap_or_else(|| dir.join(config.format.default_file_name()));
    let output = if output.is_absolute() {
        output
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(output)
    };
    Ok(Job {
        url: config.url.clone(),
        pages: config.pages.to_string(),
        pattern: config.pattern_text.clone(),
        format: config.format.name().to_string(),
        // Every column (the detail stage's too): what export, reopen and
        // repair write a CSV header with.
        fields: config.columns(),
        key: config.key.clone(),
        output,
        detail: config.detail.as_ref().map(|d| d.identity.clone()),
    })
}

/// Refuses a state directory that belongs to another job, naming what
/// differs.
fn check_job(stored: &Job, wanted: &Job, dir: &Path) -> Result<()> {
    let differences: Vec<String> = [
        ("url", &stored.url, &wanted.url),
        ("pages", &stored.pages, &wanted.pages),
        ("pattern", &stored.pattern, &wanted.pattern),
        ("format", &stored.format, &wanted.format),
        (
            "key",
            &stored.key.clone().unwrap_or_default(),
            &wanted.key.clone().unwrap_or_default(),
        ),
    ]
    .iter()
    .filter(|(_, a, b)| a != b)
    .map(|(key, a, b)| {
        format!(
            "{key} was '{}', is now '{}'",
            crate::util::shown(a),
            crate::util::shown(b)
        )
    })
    .chain((stored.detail != wanted.detail).then(|| {
        format!(
            "[detail] was {}, is now {}",
            stored
                .detail
                .as_deref()
                .map_or("absent".into(), crate::util::shown),
            wanted
                .detail
                .as_deref()
                .map_or("absent".into(), crate::util::shown)
        )
    }))
    .chain((stored.output != wanted.output).then(|| {
        format!(
            "output was {}, is now {}",
            stored.output.display(),
            wanted.output.display()
        )
    }))
    .collect();
    if differences.is_empty() {
        return Ok(());
    }
    Err(UserError::JobMismatch(format!(
        "the state directory {} belongs to a different job ({}); use a new --state-dir for this job, \
         or move the old one aside to start afresh (to add pages, use `pagecrawl enqueue`)",
        dir.display(),
        differences.join("; ")
    ))
    .into())
}

/// Runs the job and returns its summary without printing it.
pub fn crawl_quietly(config: &Config, dir: &Path, follow: Option<Duration>) -> Result<Summary> {
    let started = Instant::now();
    // Bound before anything is opened: a port already taken stops the run
    // with nothing changed.
    let mut metrics = config
        .metrics_listen
        .map(crate::metrics::MetricsListener::bind)
        .transpose()?;
    let wanted = job_of(config, dir)?;
    if let Some(why) = wanted
        .output
        .parent()
        .and_then(|parent| crate::util::untrusted_dir(parent, true))
    {
        return Err(UserError::Usage(format!("the output's folder {why}")).into());
    }
    if wanted
        .output
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        // Refused before anything is created (`OutputFile::open` would
        // refuse it too, through O_NOFOLLOW).
        crate::output::open_no_follow(&wanted.output)?;
    }
    // Before the control socket and READY=1: a SIGHUP (a reload right
    // after start) must find its handler, not kill the process.
    let signals = crate::signals::listen()?;
    let store = Arc::new(open_waiting_for_commands(dir)?);
    let existing = store.job()?;
    if let Some(stored) = &existing {
        check_job(stored, &wanted, dir)?;
    }
    refuse_damaged_state(&store, existing.is_some(), &wanted.output)?;
    // The output is opened before a new job is recorded, so a job whose
    // output cannot be written leaves no state behind.
    let header = (config.format == Format::Csv).then(|| csv_header(&config.columns()));
    let counters = store.counters();
    // With [detail], a done page's items are written when their detail
    // pages come in: those still waiting may lie past the checkpoint.
    let waiting = match config.detail {
        Some(_) => store.pages_with_waiting_items()?,
        None => Default::default(),
    };
    let is_done = |page: u64| -> Result<bool> {
        Ok(!waiting.contains(&page)
            && matches!(
                store.state_of(page)?,
                Some(crate::store::PageState::Done(_))
            ))
    };
    let output = OutputFile::open(
        &wanted.output,
        &Checkpoint {
            committed: counters.output_len,
            fingerprint: counters.output_fingerprint(),
            format: config.format,
            is_done: &is_done,
        },
        header.as_deref(),
    )?;
    if existing.is_none() {
        store.set_job(&wanted, &config.pages, output.fingerprint())?;
        store.flush()?;
        log::info!("new job: pages {} of {}", config.pages, config.url);
    }
    restrict_dir(dir);
    let _pid = PidFile::create(dir);
    let counters = store.counters();
    store.start_run(output.fingerprint())?;
    log::info!(
        "crawling {} ({}) with {} connections into {}",
        config.url,
        queue_summary(config, &counters),
        config.concurrency,
        wanted.output.display()
    );
    let notifier = Notifier::from_env().map(Arc::new);
    let heartbeat = match (&notifier, Notifier::watchdog_interval()) {
        (Some(notifier), Some(every)) => Some(notifier.clone().heartbeat(every)),
        _ => None,
    };
    let robots = robots_of(config);
    let pipeline = Pipeline::start(config, store.clone(), output, robots, heartbeat)?;
    let control = match ControlServer::start(dir, store.clone(), pipeline.shared.clone()) {
        Ok(control) => Some(control),
        Err(e) => {
            // The crawl matters more than the socket: go on without it.
            log::warn!(
                "{}; status and queue commands cannot reach this run",
                crate::error::one_line(&e)
            );
            None
        }
    };
    if let Some(listener) = &mut metrics {
        let (store, shared) = (store.clone(), pipeline.shared.clone());
        match listener.serve(move || shared.metrics_text(&store)) {
            Ok(()) => log::info!("metrics at http://{}/metrics", listener.address()),
            Err(e) => log::warn!(
                "{}; metrics_listen is not served",
                crate::error::one_line(&e)
            ),
        }
    }
    if let Some(notifier) = &notifier {
        notifier.send("READY=1");
    }
    let interrupted = supervise(&pipeline, &store, notifier.as_deref(), follow, signals)?;
    let shared = pipeline.shared.clone();
    if let Some(notifier) = &notifier {
        notifier.send("STOPPING=1");
    }
    let result = pipeline.join();
    drop(control);
    drop(metrics);
    result?;
    let progress = &shared.progress;
    let after = store.counters();
    Ok(Summary {
        done: progress.done.load(Ordering::Relaxed),
        failed: progress.failed.load(Ordering::Relaxed),
        items: progress.items.load(Ordering::Relaxed),
        duplicates: progress.duplicates.load(Ordering::Relaxed),
        pending: after.pending,
        elapsed: started.elapsed(),
        output: wanted.output,
        interrupted,
        totals: after,
        real_failures: store.real_failures()?,
    })
}

/// Opens the state for a run. A command (`status`, `enqueue`...) that
/// opened it itself holds it for a moment: wait for it, up to
/// [`COMMAND_HOLD`]. A running crawl (its `run.pid` names a live process)
/// is refused at once, exit 3.
fn open_waiting_for_commands(dir: &Path) -> Result<Store> {
    let started = Instant::now();
    loop {
        match Store::open(dir) {
            Err(error)
                if crate::error::exit_for(&error) == Exit::Busy
                    && !crawl_is_running(dir)
                    && started.elapsed() < COMMAND_HOLD =>
            {
                std::thread::sleep(Duration::from_millis(20 + fastrand::u64(0..30)));
            }
            other => return other,
        }
    }
}

/// Longest a run waits for a command that holds the state.
const COMMAND_HOLD: Duration = Duration::from_secs(10);

/// Whether `run.pid` names a live process (a crawl holds the state).
fn crawl_is_running(dir: &Path) -> bool {
    std::fs::read_to_string(pid_path(dir))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Refuses to crawl on a state that cannot be trusted as it stands: an
/// output found damaged and not repaired, a job that lost its queue (a
/// power loss between the two batches of older pagecrawls' job creation),
/// or a new job whose output file already holds bytes this state never
/// wrote. Each keeps every file as it is and names what to do.
fn refuse_damaged_state(store: &Store, has_job: bool, output: &Path) -> Result<()> {
    if let Some(why) = store.damaged()? {
        return Err(Damage(format!(
            "the output was damaged behind an earlier run ({why}); nothing was changed; {REPAIR_HINT}"
        ))
        .into());
    }
    if has_job && store.lost_its_pages()? {
        return Err(Damage(format!(
            "the state in {} holds its job but none of its pages (an older pagecrawl lost them to a power loss \
             while creating the job); nothing was changed; {REPAIR_HINT}",
            store.dir().display()
        ))
        .into());
    }
    if !has_job {
        if let Ok(metadata) = output.symlink_metadata() {
            if metadata.is_file() && metadata.len() > 0 {
                return Err(UserError::Usage(format!(
                    "the output file {} already holds {} bytes, and this new job did not write them; \
                     move it aside, or set `output` to another file",
                    output.display(),
                    metadata.len()
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// Waits for the pipeline, handling signals, logging progress and keeping
/// systemd informed. Returns whether a signal stopped the crawl.
fn supervise(
    pipeline: &Pipeline,
    store: &Store,
    notifier: Option<&Notifier>,
    follow: Option<Duration>,
    signals: crossbeam_channel::Receiver<Signal>,
) -> Result<bool> {
    let ticker = tick(STATUS_EVERY);
    let shared = &pipeline.shared;
    let mut grace_ends: Option<Instant> = None;
    let mut last_log = Instant::now();
    let mut done_at_last_log = 0;
    // A bar on a terminal; otherwise (a service, a pipe) the progress log.
    let view = ProgressView::start(shared.config().pages.is_open());
    let redraw = if view.is_some() {
        tick(REDRAW_EVERY)
    } else {
        never()
    };
    let mut window = RateWindow::new(RATE_WINDOW);
    // The bar, the rate and systemd's STATUS= count durable pages only.
    window.record(Instant::now(), store.committed_counters().tasks_done());
    publish_recent_rate(None);
    let show = |view: &Option<ProgressView>, window: &RateWindow, stopping: bool| {
        if let Some(view) = view {
            view.show(&Snapshot {
                paused: shared.paused.load(Ordering::SeqCst),
                stopping,
                ..Snapshot::new(
                    &store.committed_counters(),
                    view.open_range(),
                    window.rate(),
                )
            });
        }
    };
    show(&view, &window, false);
    loop {
        let wait = grace_ends.map_or(Duration::from_secs(1), |end| {
            end.saturating_duration_since(Instant::now())
        });
        select! {
            recv(pipeline.finished) -> _ => return Ok(grace_ends.is_some()),
            recv(signals) -> signal => match signal {
                Ok(Signal::Reload) => reload(shared, follow),
                Ok(Signal::Reopen) => {
                    // The commit stage logs the outcome; nobody waits for it.
                    let (reply, _) = crossbeam_channel::bounded(1);
                    if shared.reopen_requests.0.try_send(reply).is_err() {
                        log::warn!("SIGUSR1: a reopen is already waiting for the next commit");
                    }
                }
                Ok(Signal::Stop(name)) => {
                    if grace_ends.is_some() {
                        crate::logger::clear_bar();
                        crate::logger::eprint_line(&format!("pagecrawl: {name} again: exiting now; the next run resumes from the last checkpoint"));
                        std::process::exit(Exit::Interrupted as i32);
                    }
                    let grace = shared.config().stop_grace;
                    log::info!("{name}: stopping; in-flight pages have {grace:.0?} to finish (send it again to exit at once)");
                    if let Some(notifier) = notifier {
                        notifier.send("STOPPING=1");
                    }
                    shared.stop.store(true, Ordering::SeqCst);
                    grace_ends = Some(Instant::now() + grace);
                }
                Err(_) => {}
            },
            recv(redraw) -> _ => show(&view, &window, grace_ends.is_some()),
            recv(ticker) -> _ => {
                let counters = store.committed_counters();
                window.record(Instant::now(), counters.tasks_done());
                publish_recent_rate(window.rate());
                if let Some(notifier) = notifier {
                    notifier.send(&format!("STATUS={}", status_line(&counters, shared)));
                }
                if view.is_none() && grace_ends.is_none() && last_log.elapsed() >= PROGRESS_EVERY {
                    let done = shared.progress.done.load(Ordering::Relaxed);
                    log::info!(
                        "progress: {} ({:.1} pages/s)",
                        status_line(&counters, shared),
                        (done - done_at_last_log) as f64 / last_log.elapsed().as_secs_f64()
                    );
                    last_log = Instant::now();
                    done_at_last_log = done;
                }
            },
            default(wait) => {
                if grace_ends.is_some_and(|end| Instant::now() >= end) && !shared.abort.load(Ordering::SeqCst) {
                    log::warn!("grace period over: recording what is finished and leaving the rest pending");
                    shared.abort.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// One line of progress, for logs and systemd's STATUS=.
/// What the start-up line says of the queue. An open range has no total
/// to count down: it says where it starts and what ends it, or where it
/// ended.
fn queue_summary(config: &Config, counters: &Counters) -> String {
    let counts = format!(
        "{} pending, {} done, {} failed",
        counters.pending, counters.done, counters.failed
    );
    if !config.pages.is_open() {
        return counts;
    }
    match counters.open_end() {
        Some(end) => format!(
            "open range, ended at page {} before the empty pages from {end}; {counts}",
            end.saturating_sub(1)
        ),
        None if counters.done + counters.failed + counters.pending == 0 => format!(
            "open range from page {}, ends after {} empty pages",
            config.pages.start(),
            config.stop_after_empty
        ),
        None => format!(
            "open range from page {}, ends after {} empty pages; {counts}, queued up to page {}",
            config.pages.start(),
            config.stop_after_empty,
            counters.frontier.saturating_sub(1)
        ),
    }
}

fn status_line(counters: &Counters, shared: &Shared) -> String {
    let paused = if shared.paused.load(Ordering::SeqCst) {
        "paused; "
    } else {
        ""
    };
    let details = if shared.config().detail.is_some() {
        format!(
            ", detail pages {} done, {} pending, {} failed",
            counters.detail_done, counters.detail_pending, counters.detail_failed
        )
    } else {
        String::new()
    };
    format!(
        "{paused}{} done, {} pending, {} failed{details}, {} items, {} retries",
        counters.done, counters.pending, counters.failed, counters.items, counters.retries
    )
}

/// SIGHUP: re-read the config file and apply what may change live.
fn reload(shared: &Shared, follow: Option<Duration>) {
    if shared.config().from_command_line {
        log::info!(
            "SIGHUP: nothing to reload: this crawl's job came from --url, --pages and --pattern, not a file"
        );
        return;
    }
    let path = shared.config().source.clone();
    let loaded = Config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|c| with_follow(c, follow).map_err(|e| e.to_string()));
    let serving = shared.config().metrics_listen;
    let loaded = loaded.map(|mut config| {
        if config.metrics_listen != serving {
            log::warn!(
                "SIGHUP: metrics_listen is not reloadable: it stays {} until the next start",
                serving.map_or("off".to_string(), |a| a.to_string())
            );
            config.metrics_listen = serving;
        }
        config
    });
    match loaded.and_then(|config| shared.reload(config)) {
        Ok(()) => {
            let config = shared.config();
            let threads = shared.fetch_threads();
            let concurrency = if config.concurrency > threads {
                format!(
                    "{threads} (asked {}: a running crawl has {threads} fetch threads; restart it for more)",
                    config.concurrency
                )
            } else {
                config.concurrency.to_string()
            };
            log::info!(
                "SIGHUP: reloaded {}: concurrency {concurrency}, rate limit {}, request timeout {:?}, retries {}",
                path.display(),
                config.rate_limit.map_or("none".to_string(), |r| format!("{r}/s")),
                config.request_timeout,
                config.retries
            );
        }
        Err(why) => log::error!("SIGHUP: kept the running configuration; {why}"),
    }
}

/// The state directory holds the control socket: owner only.
fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        log::warn!("cannot restrict {} to its owner: {e}", dir.display());
    }
}

/// `run.pid` in the state directory while a run holds it, so that a second
/// process can say who holds the lock.
struct PidFile(PathBuf);

impl PidFile {
    fn create(dir: &Path) -> PidFile {
        let path = pid_path(dir);
        let written = crate::output::open_no_follow(&path).and_then(|mut file| {
            use std::io::Write;
            file.set_len(0)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            Ok(())
        });
        if let Err(e) = written {
            log::debug!("cannot write {}: {e}", path.display());
        }
        PidFile(path)
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

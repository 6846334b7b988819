//! `pagecrawl run`: open (or create) the state, check it belongs to this
//! job, queue the range, start the pipeline, and supervise it: signals,
//! periodic progress, the grace period, and the closing summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{select, tick};

use crate::config::Config;
use crate::error::UserError;
use crate::exit_code::Exit;
use crate::output::{csv_header, Format, OutputFile};
use crate::pipeline::Pipeline;
use crate::store::{pid_path, Job, Store};

/// How often a progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub fn command(config_path: &Path, state_dir: Option<PathBuf>) -> Result<Exit> {
    let config = Config::load(config_path)?;
    let dir = super::run_state_dir(state_dir, &config);
    crawl(&config, &dir)
}

/// What a finished (or stopped) run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub done: u64,
    pub failed: u64,
    pub items: u64,
    pub pending: u64,
    pub elapsed: Duration,
    pub output: PathBuf,
    pub interrupted: bool,
}

/// Runs the job in `config` with its state in `dir`, printing the summary.
pub fn crawl(config: &Config, dir: &Path) -> Result<Exit> {
    let summary = crawl_quietly(config, dir)?;
    let seconds = summary.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        summary.done as f64 / seconds
    } else {
        0.0
    };
    println!(
        "{} {} pages done, {} failed, {} items in {:.2} s ({:.1} pages/s); output: {}",
        if summary.interrupted {
            "stopped:"
        } else {
            "finished:"
        },
        summary.done,
        summary.failed,
        summary.items,
        seconds,
        rate,
        summary.output.display()
    );
    if summary.pending > 0 {
        println!(
            "{} pages still pending; run the same command again to resume",
            summary.pending
        );
    }
    if summary.failed > 0 {
        println!(
            "failed pages: pagecrawl queue --state failed --state-dir {}",
            dir.display()
        );
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
        fields: config.fields.clone(),
        output,
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
    ]
    .iter()
    .filter(|(_, a, b)| a != b)
    .map(|(key, a, b)| format!("{key} was '{a}', is now '{b}'"))
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
pub fn crawl_quietly(config: &Config, dir: &Path) -> Result<Summary> {
    let started = Instant::now();
    let wanted = job_of(config, dir)?;
    let store = Arc::new(Store::open(dir)?);
    match store.job()? {
        Some(stored) => check_job(&stored, &wanted, dir)?,
        None => store.set_job(&wanted, &config.pages)?,
    }
    let _pid = PidFile::create(dir);
    let added = store.seed(&config.pages)?;
    if added > 0 {
        log::info!("queued {added} pages of {}", config.pages);
    }
    let counters = store.counters();
    let header = (config.format == Format::Csv).then(|| csv_header(&config.fields));
    let output = OutputFile::open(&wanted.output, counters.output_len, header.as_deref())?;
    store.start_run()?;
    log::info!(
        "crawling {} ({} pending, {} done, {} failed) with {} connections into {}",
        config.url,
        counters.pending,
        counters.done,
        counters.failed,
        config.concurrency,
        wanted.output.display()
    );
    let pipeline = Pipeline::start(config, store.clone(), output)?;
    let interrupted = supervise(config, &pipeline)?;
    let shared = pipeline.shared.clone();
    pipeline.join()?;
    let progress = &shared.progress;
    let after = store.counters();
    Ok(Summary {
        done: progress.done.load(Ordering::Relaxed),
        failed: progress.failed.load(Ordering::Relaxed),
        items: progress.items.load(Ordering::Relaxed),
        pending: after.pending,
        elapsed: started.elapsed(),
        output: wanted.output,
        interrupted,
    })
}

/// Waits for the pipeline, handling SIGINT/SIGTERM and logging progress.
/// Returns whether a signal stopped the crawl.
fn supervise(config: &Config, pipeline: &Pipeline) -> Result<bool> {
    let signals = crate::signals::listen()?;
    let ticker = tick(PROGRESS_EVERY);
    let shared = &pipeline.shared;
    let mut grace_ends: Option<Instant> = None;
    let mut last_done = 0;
    loop {
        let wait = grace_ends.map_or(Duration::from_secs(1), |end| {
            end.saturating_duration_since(Instant::now())
        });
        select! {
            recv(pipeline.finished) -> _ => return Ok(grace_ends.is_some()),
            recv(signals) -> signal => {
                let name = signal.unwrap_or_default();
                if grace_ends.is_some() {
                    eprintln!("pagecrawl: {name} again: exiting now; the next run resumes from the last checkpoint");
                    std::process::exit(Exit::Interrupted as i32);
                }
                log::warn!(
                    "{name}: stopping; in-flight pages have {:.0?} to finish (send it again to exit at once)",
                    config.stop_grace
                );
                shared.stop.store(true, Ordering::SeqCst);
                grace_ends = Some(Instant::now() + config.stop_grace);
            },
            recv(ticker) -> _ => {
                let done = shared.progress.done.load(Ordering::Relaxed);
                if grace_ends.is_none() {
                    log::info!(
                        "progress: {done} pages done ({:.1} pages/s), {} failed, {} retries, {} items",
                        (done - last_done) as f64 / PROGRESS_EVERY.as_secs_f64(),
                        shared.progress.failed.load(Ordering::Relaxed),
                        shared.progress.retries.load(Ordering::Relaxed),
                        shared.progress.items.load(Ordering::Relaxed),
                    );
                }
                last_done = done;
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

/// `run.pid` in the state directory while a run holds it, so that a second
/// process can say who holds the lock.
struct PidFile(PathBuf);

impl PidFile {
    fn create(dir: &Path) -> PidFile {
        let path = pid_path(dir);
        if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
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

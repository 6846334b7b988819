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

mod commit;
mod feeder;
mod fetch;
mod parse;
mod rate;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver};

use crate::config::Config;
use crate::http::{FetchError, Fetcher, Response};
use crate::output::OutputFile;
use crate::store::Store;

/// A page the feeder hands to the fetch pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Work {
    page: u64,
    /// Failed attempts so far.
    attempts: u32,
}

/// What a fetch thread passes on. `attempts` counts this attempt.
#[derive(Debug)]
enum Fetched {
    Body {
        page: u64,
        attempts: u32,
        response: Response,
    },
    Failure {
        page: u64,
        attempts: u32,
        error: FetchError,
    },
    /// Not fetched because the crawl is stopping; the page stays pending.
    Abandoned,
}

/// What a parse thread passes on to the commit stage.
#[derive(Debug)]
enum Parsed {
    Done {
        page: u64,
        attempts: u32,
        items: u32,
        bytes: u64,
        rendered: Vec<u8>,
    },
    Failure {
        page: u64,
        attempts: u32,
        error: FetchError,
    },
    /// Passed on only so the stage sees its input end; nothing to record.
    Abandoned,
}

/// What the commit stage tells the feeder once a page's fate is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Done or failed: no longer in flight.
    Finished(u64),
    /// Fetch again, not before `not_before`.
    Retry {
        page: u64,
        attempts: u32,
        not_before: Instant,
    },
}

/// Live counts for progress reports, updated by the commit stage.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    pub items: AtomicU64,
}

/// State every stage can see.
#[derive(Debug, Default)]
pub struct Shared {
    /// Stop feeding; in-flight pages finish.
    pub stop: AtomicBool,
    /// Stop now: the commit stage records what it holds and ends.
    pub abort: AtomicBool,
    pub progress: Progress,
    /// The first error a stage hit; it also sets `stop`.
    error: Mutex<Option<anyhow::Error>>,
}

impl Shared {
    fn fail(&self, error: anyhow::Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(error);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A running pipeline.
pub struct Pipeline {
    pub shared: Arc<Shared>,
    /// Signals (with `()`) when the commit stage has ended.
    pub finished: Receiver<()>,
    commit: Option<JoinHandle<OutputFile>>,
    others: Vec<JoinHandle<()>>,
}

/// How many pages the feeder may have out at once: enough to keep every
/// fetch thread busy while the parse pool and a full commit group are being
/// worked on, and small enough that memory stays a few pages per thread.
fn window(config: &Config) -> usize {
    2 * config.concurrency + 2 * config.parse_threads + config.commit_every
}

impl Pipeline {
    /// Starts every stage over an opened store and output.
    pub fn start(config: &Config, store: Arc<Store>, output: OutputFile) -> Result<Pipeline> {
        let shared = Arc::new(Shared::default());
        let window = window(config);
        // Fetch threads take work as soon as they are free; one queued page
        // per thread hides the feeder's latency without hoarding pages.
        let (work_tx, work_rx) = bounded::<Work>(config.concurrency);
        // Parsing is fast; two bodies per parse thread smooth out bursts.
        let (fetched_tx, fetched_rx) = bounded::<Fetched>(2 * config.parse_threads);
        // A full group can queue while the previous one is being flushed.
        let (parsed_tx, parsed_rx) = bounded::<Parsed>(config.commit_every);
        // Never more settled messages than pages in flight, so the commit
        // stage can never block on the feeder.
        let (settled_tx, settled_rx) = bounded::<Settled>(window);
        let (finished_tx, finished_rx) = bounded::<()>(1);

        let mut others = Vec::new();
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(body)
                .context("cannot start a pipeline thread")
        };
        {
            let (store, shared, config) = (store.clone(), shared.clone(), config.clone());
            others.push(spawn(
                "feeder".into(),
                Box::new(move || {
                    if let Err(e) =
                        feeder::run(&config, &store, work_tx, settled_rx, &shared, window)
                    {
                        shared.fail(e);
                    }
                }),
            )?);
        }
        let fetcher = Arc::new(Fetcher::new(config));
        let limiter = Arc::new(config.rate_limit.map(rate::RateLimiter::new));
        for index in 0..config.concurrency {
            let (rx, tx, shared, config) = (
                work_rx.clone(),
                fetched_tx.clone(),
                shared.clone(),
                config.clone(),
            );
            let (fetcher, limiter) = (fetcher.clone(), limiter.clone());
            others.push(spawn(
                format!("fetch-{index}"),
                Box::new(move || {
                    fetch::run(
                        &config,
                        &fetcher,
                        limiter.as_ref().as_ref(),
                        rx,
                        tx,
                        &shared,
                    )
                }),
            )?);
        }
        drop((work_rx, fetched_tx));
        for index in 0..config.parse_threads {
            let (rx, tx, config) = (fetched_rx.clone(), parsed_tx.clone(), config.clone());
            others.push(spawn(
                format!("parse-{index}"),
                Box::new(move || parse::run(&config, rx, tx)),
            )?);
        }
        drop((fetched_rx, parsed_tx));
        let commit = {
            let (store, shared, config) = (store, shared.clone(), config.clone());
            std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || {
                    let mut output = output;
                    if let Err(e) =
                        commit::run(&config, &store, &mut output, parsed_rx, settled_tx, &shared)
                    {
                        shared.fail(e);
                    }
                    let _ = finished_tx.send(());
                    output
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
    pub fn join(mut self) -> Result<()> {
        if let Some(commit) = self.commit.take() {
            let _ = commit.join();
        }
        if !self.shared.abort.load(Ordering::SeqCst) {
            for handle in self.others.drain(..) {
                let _ = handle.join();
            }
        }
        let error = self.shared.error.lock().ok().and_then(|mut e| e.take());
        match error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
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

    #[test]
    fn retry_delays_grow_are_capped_and_honour_retry_after() {
        let text = "url = \"http://h/{page}\"\npages = \"1\"\npattern = \"(?P<a>a)\"\nbackoff = \"100ms\"\nmax_backoff = \"1s\"";
        let config = Config::parse(text, "t.toml".as_ref()).unwrap();
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
}

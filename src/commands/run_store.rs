//! `pagecrawl run` with `store`: this process is one daemon of a job in a
//! PostgreSQL database. It creates (or migrates) the schema under its lock,
//! finds or creates the job by its name (refusing one of that name with
//! another identity), queues the job's pages (those already known are left
//! as they are), registers itself, and crawls what it leases until nothing
//! is left; any number of daemons may do the same at once.
//!
//! What is not built yet is refused before anything changes: a `[detail]`
//! table, an open range, follow mode.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::select;

use crate::config::Config;
use crate::error::UserError;
use crate::exit_code::Exit;
use crate::pipeline::Pipeline;
use crate::range::PageRange;
use crate::signals::Signal;
use crate::store::postgres::connect::{connect, parse_store_url, PasswordSources};
use crate::store::postgres::job::{self, Identity};
use crate::store::postgres::schema;

pub fn crawl_store(config: &Config, url: &str) -> Result<Exit> {
    let started = Instant::now();
    let refuse = |what: &str| -> Result<Exit> {
        Err(UserError::Config(format!(
            "{}: {what} cannot crawl into a PostgreSQL store yet; remove `store` to crawl it into a state directory",
            config.source.display()
        ))
        .into())
    };
    if config.detail.is_some() {
        return refuse("a job with [detail]");
    }
    if config.follow.is_some() {
        return refuse("follow mode");
    }
    let PageRange::Closed { start, end } = config.pages else {
        return refuse("an open range (pages = \"N..\")");
    };
    let store = parse_store_url(url, &PasswordSources::from_environment())?;
    let mut client = connect(&store)?;
    let migrated = schema::migrate(&mut client)?;
    if migrated.from != migrated.to {
        log::info!(
            "created the pagecrawl schema (version {}) in {}",
            migrated.to,
            store.shown
        );
    }
    let name = config.job_name();
    let job = job::ensure_job(&mut client, &name, &Identity::of(config).to_json())?;
    let added = job::enqueue_pages(&mut client, job, start as i64, end as i64)?;
    let daemon = job::register_daemon(&mut client, job, &host_name(), std::process::id())?;
    let signals = crate::signals::listen()?;
    let robots = super::run::robots_of(config);
    let counters = job::counters(&mut client, job)?;
    log::info!(
        "crawling {} (job {name} in {}: {} pending, {} done, {} failed{}) with {} connections",
        config.url,
        store.shown,
        counters.listing_pending,
        counters.listing_done,
        counters.listing_failed,
        if added > 0 {
            format!("; {added} pages queued now")
        } else {
            String::new()
        },
        local_concurrency(config)
    );
    // The stages connect on their own.
    drop(client);
    // This daemon's own cap; `concurrency` is the job's, across daemons.
    let mut local = config.clone();
    local.concurrency = local_concurrency(config);
    let pipeline = Pipeline::start_store(
        &local,
        config.concurrency,
        robots,
        store.clone(),
        job,
        daemon,
        config.lease_time,
    )?;
    let shared = pipeline.shared.clone();
    let mut grace_ends: Option<Instant> = None;
    loop {
        let wait = grace_ends.map_or(Duration::from_secs(1), |end| {
            end.saturating_duration_since(Instant::now())
        });
        select! {
            recv(pipeline.finished) -> _ => break,
            recv(signals) -> signal => match signal {
                Ok(Signal::Stop(name)) => {
                    if grace_ends.is_some() {
                        crate::logger::eprint_line(&format!(
                            "pagecrawl: {name} again: exiting now; the leases this daemon holds expire within {:.0?}",
                            shared.config().lease_time
                        ));
                        std::process::exit(Exit::Interrupted as i32);
                    }
                    let grace = shared.config().stop_grace;
                    log::info!("{name}: stopping; in-flight pages have {grace:.0?} to finish (send it again to exit at once)");
                    shared.stop.store(true, Ordering::SeqCst);
                    grace_ends = Some(Instant::now() + grace);
                }
                Ok(_) => log::info!("this signal does nothing for a crawl into a store yet"),
                Err(_) => {}
            },
            default(wait) => {
                if grace_ends.is_some_and(|end| Instant::now() >= end) {
                    shared.abort.store(true, Ordering::SeqCst);
                }
            }
        }
    }
    let interrupted = grace_ends.is_some();
    pipeline.join()?;
    // A new connection: the server may have restarted during the crawl.
    let totals = job::counters(&mut connect(&store)?, job)?;
    let progress = &shared.progress;
    println!(
        "{} {} pages done, {} failed, {} items in {:.2} s (this daemon: {} pages, {} items); job {name} in {}",
        if interrupted || totals.listing_pending > 0 {
            "stopped:"
        } else {
            "finished:"
        },
        totals.listing_done,
        totals.listing_failed,
        totals.items,
        started.elapsed().as_secs_f64(),
        progress.done.load(Ordering::Relaxed),
        progress.items.load(Ordering::Relaxed),
        store.shown
    );
    if !interrupted && totals.listing_pending == 0 && totals.listing_failed > 0 {
        return Ok(Exit::FailedPages);
    }
    Ok(Exit::Success)
}

/// The most requests this daemon makes at once: `daemon_concurrency`, at
/// most the job's `concurrency`.
fn local_concurrency(config: &Config) -> usize {
    config
        .daemon_concurrency
        .unwrap_or(config.concurrency)
        .min(config.concurrency)
}

/// This machine's name, for the daemon's row (`status` lists it).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

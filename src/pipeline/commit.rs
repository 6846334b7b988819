//! The commit stage, the only writer of the output and of page states.
//!
//! Pages are committed in groups (every `commit_every` pages or
//! `commit_interval`, whichever comes first, or at once when the feeder can
//! send nothing more until pages settle: the end of a crawl, a full window). For each group, in this order:
//! 1. append the group's items to the output and `fsync` it;
//! 2. apply one sled batch: pages done/failed/rescheduled, item keys,
//!    counters, and the output's new committed length; then `flush` sled;
//! 3. only then tell the feeder the pages are settled.
//!
//! A crash before 2 leaves bytes past the committed length, which the next
//! start truncates away (their pages are still pending and are fetched
//! again); a crash after 2 loses nothing. Because the output is synced
//! before the checkpoint, this also holds across power loss.
//!
//! When the job has a `key`, an item whose key is already in the store (or
//! earlier in the same group) is not written again.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::{retry_delay, Parsed, Settled, Shared};
use crate::output::{csv_header, Damage, OutputFile};
use crate::store::{Settle, Store};
use crate::util::now_ms;

/// Longest the stage waits without looking at the abort flag (and pinging
/// the heartbeat).
const TICK: Duration = Duration::from_millis(100);

pub(super) fn run(
    store: &Store,
    output: &mut OutputFile,
    parsed: Receiver<Parsed>,
    settled: Sender<Settled>,
    shared: &Shared,
) -> Result<()> {
    let result = commit_groups(store, output, parsed, settled, shared);
    if let Err(error) = &result {
        // Recorded so that `status` says so and the next `run` waits for
        // `repair` instead of writing after a hole.
        if let Some(damage) = error.downcast_ref::<Damage>() {
            if let Err(e) = store.set_damaged(&damage.0) {
                log::error!("cannot record in the state that the output is damaged: {e:#}");
            }
        }
    }
    result
}

fn commit_groups(
    store: &Store,
    output: &mut OutputFile,
    parsed: Receiver<Parsed>,
    settled: Sender<Settled>,
    shared: &Shared,
) -> Result<()> {
    let mut group: Vec<Parsed> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        shared.beat();
        if let Ok(reply) = shared.reopen_requests.1.try_recv() {
            // At a commit boundary: what was parsed so far goes to the old
            // file, everything after to the new one.
            flush(store, output, &mut group, &settled, shared)?;
            deadline = None;
            let outcome = reopen(store, output, shared).map_err(|e| crate::error::one_line(&e));
            // The asker may have given up waiting; the log says it anyway.
            let _ = reply.try_send(outcome);
        }
        let config = shared.config();
        let wait = deadline.map_or(TICK, |d| {
            d.saturating_duration_since(Instant::now()).min(TICK)
        });
        match parsed.recv_timeout(wait) {
            Ok(message) => {
                deadline.get_or_insert_with(|| Instant::now() + config.commit_interval);
                group.push(message);
                if shared.abort.load(Ordering::SeqCst) {
                    return flush(store, output, &mut group, &settled, shared);
                }
                let feeder_waits =
                    shared.waiting_on_commits.load(Ordering::SeqCst) && parsed.is_empty();
                if group.len() >= config.commit_every || feeder_waits {
                    flush(store, output, &mut group, &settled, shared)?;
                    deadline = None;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if shared.abort.load(Ordering::SeqCst) {
                    return flush(store, output, &mut group, &settled, shared);
                }
                let feeder_waits = shared.waiting_on_commits.load(Ordering::SeqCst);
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || (feeder_waits && !group.is_empty())
                {
                    flush(store, output, &mut group, &settled, shared)?;
                    deadline = None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return flush(store, output, &mut group, &settled, shared);
            }
        }
    }
}

fn flush(
    store: &Store,
    output: &mut OutputFile,
    group: &mut Vec<Parsed>,
    settled: &Sender<Settled>,
    shared: &Shared,
) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    super::fault_panic("commit");
    let config = shared.config();
    let mut settles = Vec::with_capacity(group.len());
    // Each settle's page, as pending as it was read below.
    let mut pending = Vec::with_capacity(group.len());
    let mut notices = Vec::with_capacity(group.len());
    let mut keys_in_group: HashSet<String> = HashSet::new();
    let mut pages_in_group: HashSet<u64> = HashSet::new();
    let (mut done, mut failed, mut retried, mut written, mut duplicates) = (0, 0, 0, 0, 0);
    for message in group.drain(..) {
        // A page is settled once: a second result for it (which would be a
        // bug upstream) must not write its items again.
        let page = match &message {
            Parsed::Done { page, .. } | Parsed::Failure { page, .. } => Some(*page),
            Parsed::Abandoned => None,
        };
        if let Some(page) = page {
            let state = store.pending_as(page)?;
            if !pages_in_group.insert(page) || state.is_none() {
                log::warn!("page {page} was already settled; its second result is dropped");
                notices.push(Settled::Finished(page));
                continue;
            }
            pending.push(state);
        }
        match message {
            Parsed::Done {
                page,
                attempts,
                bytes,
                items,
            } => {
                let extracted = items.ends.len() as u32;
                let mut count = 0;
                let mut keys = Vec::new();
                if items.keys.is_empty() {
                    output.append(&items.bytes)?;
                    count = extracted;
                } else {
                    let mut start = 0;
                    for (end, key) in items.ends.iter().zip(items.keys) {
                        let seen = keys_in_group.contains(&key) || store.has_item_key(&key)?;
                        if !seen {
                            output.append(&items.bytes[start..*end])?;
                            keys_in_group.insert(key.clone());
                            keys.push(key);
                            count += 1;
                        }
                        start = *end;
                    }
                    duplicates += u64::from(extracted - count);
                }
                settles.push(Settle::Done {
                    page,
                    attempts,
                    items: count,
                    extracted,
                    bytes,
                    keys,
                });
                notices.push(Settled::Finished(page));
                done += 1;
                written += u64::from(count);
            }
            Parsed::Failure {
                page,
                attempts,
                error,
            } => {
                if error.retryable() && attempts <= config.retries {
                    let delay = retry_delay(&config, attempts, &error);
                    // In the bar, the summary and `status`; in the log
                    // only with -v: a person need not act on a retry.
                    log::debug!(
                        "page {page}: {error}; retry {attempts} of {} in {delay:.1?}",
                        config.retries
                    );
                    settles.push(Settle::Retry {
                        page,
                        attempts,
                        not_before_ms: now_ms() + delay.as_millis() as u64,
                        error: error.to_string(),
                    });
                    notices.push(Settled::Retry {
                        page,
                        attempts,
                        not_before: Instant::now() + delay,
                    });
                    retried += 1;
                } else {
                    let tries = if attempts == 1 {
                        "1 attempt".to_string()
                    } else {
                        format!("{attempts} attempts")
                    };
                    let detail = format!("{error} from {} after {tries}", config.page_url(page));
                    log::warn!("page {page} failed: {detail}");
                    settles.push(Settle::Failed {
                        page,
                        attempts,
                        kind: error.kind(),
                        detail,
                    });
                    notices.push(Settled::Finished(page));
                    failed += 1;
                }
            }
            Parsed::Abandoned => {}
        }
    }
    // Also when nothing was appended in this group: the CSV header written
    // at the start counts in the committed length too.
    output.sync()?;
    let empty_run = config.pages.is_open().then_some(config.stop_after_empty);
    store.commit_known(
        &settles,
        &pending,
        (output.len(), output.fingerprint()),
        empty_run,
    )?;
    store.flush()?;
    fault_injection::after_commit();
    log::debug!(
        "committed {} pages ({done} done, {failed} failed, {retried} to retry), {written} items; output at {} bytes",
        settles.len(),
        output.len()
    );
    let progress = &shared.progress;
    progress.done.fetch_add(done, Ordering::Relaxed);
    progress.failed.fetch_add(failed, Ordering::Relaxed);
    progress.retries.fetch_add(retried, Ordering::Relaxed);
    progress.items.fetch_add(written, Ordering::Relaxed);
    progress.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    for notice in notices {
        // The feeder may already have stopped; then nobody needs to know.
        // Full cannot happen (the channel holds every page in flight).
        if let Err(TrySendError::Full(notice)) = settled.try_send(notice) {
            log::error!("internal error: the feeder's channel is full; {notice:?} is lost");
        }
    }
    Ok(())
}

/// Rotation: a new output file at the same path, once the old one was
/// moved aside. Returns whether a new file was started.
fn reopen(store: &Store, output: &mut OutputFile, shared: &Shared) -> Result<bool> {
    let config = shared.config();
    let header = (config.format == crate::output::Format::Csv).then(|| csv_header(&config.fields));
    let old_len = output.len();
    if !output.reopen(header.as_deref())? {
        log::info!(
            "reopen: {} was not moved aside; still writing to it",
            output.path().display()
        );
        return Ok(false);
    }
    store.record_output(output.fingerprint(), output.len())?;
    store.flush()?;
    log::info!(
        "reopen: started a new {}; the file moved aside holds the {old_len} bytes before it",
        output.path().display()
    );
    Ok(true)
}

/// A hook for the durability test: with `PAGECRAWL_FAULT_ABORT_AFTER_COMMITS=N`
/// set, the process aborts (no destructors, no flush: as abrupt as
/// `kill -9`) right after its Nth durable commit. Unset, it costs one
/// relaxed atomic load per commit group.
mod fault_injection {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static COMMITS: AtomicU64 = AtomicU64::new(0);

    pub fn after_commit() {
        let limit = LIMIT.get_or_init(|| {
            std::env::var("PAGECRAWL_FAULT_ABORT_AFTER_COMMITS")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(limit) = limit {
            if COMMITS.fetch_add(1, Ordering::Relaxed) + 1 >= *limit {
                std::process::abort();
            }
        }
    }
}

//! The operations behind `status`, `queue`, `enqueue`, `retry` and `export`,
//! computed from a store. The CLI runs them itself when no daemon runs, and
//! the daemon runs the same functions when asked over the control socket,
//! so the answers are the same either way.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error::UserError;
use crate::range::parse_closed_ranges;
use crate::store::{EnqueueReport, PageState, StateFilter, Store};

/// What the running daemon adds to a status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Daemon {
    pub pid: u32,
    pub paused: bool,
    /// Follow mode: the interval between rounds, in ms (`None` when the
    /// crawl does not follow).
    pub follow_ms: Option<u64>,
}

/// The `status --json` shape (documented in the README; add fields, never
/// rename).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `running`, `paused` (a daemon holds the state), `idle` (pages are
    /// pending, nothing runs) or `finished` (nothing pending).
    pub state: String,
    /// The daemon's pid, while one runs.
    pub pid: Option<u32>,
    pub state_dir: String,
    pub url: Option<String>,
    pub range: Option<String>,
    pub pending: u64,
    pub done: u64,
    pub failed: u64,
    /// pending + done + failed.
    pub total: u64,
    pub items: u64,
    pub retries: u64,
    pub output: Option<String>,
    pub output_bytes: u64,
    /// Pages per second during the last run, if it committed anything.
    pub rate: Option<f64>,
    /// Seconds until the pending pages are done: at `rate_last_minute`
    /// while a crawl runs and has measured it, else at `rate`.
    pub eta_seconds: Option<f64>,
    /// Open ranges: the first page of the empty run that ended the range.
    pub open_range_end: Option<u64>,
    pub errors: Vec<ErrorCount>,
    /// Pages per second over the last minute, while a crawl runs (null
    /// otherwise, and in its first second). Added after 0.1.0.
    #[serde(default)]
    pub rate_last_minute: Option<f64>,
    /// Whether the job's range is open (`"1.."`). Added after 0.1.0.
    #[serde(default)]
    pub open_range: bool,
    /// Open ranges: the next page the range has not queued yet. Added after
    /// 0.1.0.
    #[serde(default)]
    pub frontier: Option<u64>,
    /// What is wrong, when the output was changed behind the crawl
    /// (truncated, deleted, replaced, written into) or the state lost its
    /// queue, and it was not repaired since: the fix is `pagecrawl repair`
    /// (`state` is then `damaged`). Null when all is well.
    #[serde(default)]
    pub damaged: Option<String>,
    /// Pages that failed for good, less the 404s and 410s that only mark
    /// where an open range ends: a finished crawl with any exits 8.
    #[serde(default)]
    pub failed_for_good: u64,
    /// Open ranges, once their end is found: the last page of the range
    /// (the page before the run of empty pages). Added after 0.1.0.
    #[serde(default)]
    pub open_range_last_page: Option<u64>,
    /// Open ranges: pages done and failed at or past the end (the run of
    /// empty pages, or of 404s, and the look-ahead), counted in `done` and
    /// `failed` but not part of the listing. Added after 0.1.0.
    #[serde(default)]
    pub done_past_end: u64,
    #[serde(default)]
    pub failed_past_end: u64,
    /// Follow mode: the round in progress or last started (the first crawl
    /// is round 1). Added after 0.1.0.
    #[serde(default)]
    pub round: Option<u64>,
    /// Follow mode, while a daemon follows: when the next round starts, in
    /// seconds since the Unix epoch. Added after 0.1.0.
    #[serde(default)]
    pub next_round_at: Option<u64>,
    /// Whether the job has a `[detail]` table; the `detail_*` fields and
    /// `items_waiting` count its second stage (0 without one). With one,
    /// `rate` and `eta_seconds` cover both stages, and `failed_for_good`
    /// counts failed detail pages too. Added after 0.1.0.
    #[serde(default)]
    pub detail_stage: bool,
    #[serde(default)]
    pub detail_pending: u64,
    #[serde(default)]
    pub detail_done: u64,
    #[serde(default)]
    pub detail_failed: u64,
    /// Items recorded with their listing page, waiting for their detail
    /// page to be written.
    #[serde(default)]
    pub items_waiting: u64,
    /// Why detail pages failed, most common first.
    #[serde(default)]
    pub detail_errors: Vec<ErrorCount>,
    /// A job in a PostgreSQL `store`: the database's URL (never with its
    /// password) and the job's name there; null for a state directory
    /// (`state_dir` is then empty). Added after 0.1.0.
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub job: Option<String>,
    /// With a `store`: every daemon that registered for the job, oldest
    /// first. Added after 0.1.0.
    #[serde(default)]
    pub daemons: Vec<DaemonStatus>,
}

/// A daemon of a job in a PostgreSQL store, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub last_heartbeat: u64,
    /// Seconds since its last heartbeat, on this machine's clock.
    pub heartbeat_age_seconds: u64,
    /// Pages per second, as its last heartbeat reported.
    pub pages_per_second: Option<f64>,
    /// Tasks it holds under leases not yet expired.
    pub leases_held: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub reason: String,
    pub pages: u64,
}

/// Pages per second in the current (or last) run: pages that became done
/// since it started, over the time from its start to its last commit.
/// `None` when it made none done. The run's closing summary and `status`
/// both use it, so they agree.
pub fn run_rate(counters: &crate::store::Counters) -> Option<f64> {
    let elapsed_ms = counters
        .last_commit_ms
        .saturating_sub(counters.run_started_ms);
    let done_in_run = counters.tasks_done().saturating_sub(counters.run_done_base);
    (elapsed_ms > 0 && done_in_run > 0).then(|| done_in_run as f64 * 1000.0 / elapsed_ms as f64)
}

pub fn status(store: &Store, daemon: Option<Daemon>) -> Result<Status> {
    // Durable counts only: a group still being flushed is not done yet.
    let counters = store.committed_counters();
    let job = store.job()?;
    let rate = run_rate(&counters);
    let past_end = store.past_end()?;
    // Measured by the crawl running in this process: only the daemon has one.
    let rate_last_minute = daemon.and_then(|_| crate::progress::recent_rate());
    // No ETA while paused: nothing moves until it is resumed.
    let paused = daemon.is_some_and(|d| d.paused);
    let eta_rate = rate_last_minute.or(rate).filter(|r| *r > 0.0 && !paused);
    let open_range = job
        .as_ref()
        .and_then(|j| crate::range::parse_range(&j.pages).ok())
        .is_some_and(|range| range.is_open());
    let damaged = match store.damaged()? {
        Some(why) => Some(why),
        None if store.lost_its_pages()? => {
            Some("the state holds its job but none of its pages".to_string())
        }
        None => job
            .as_ref()
            // The file against the latest checkpoint (a rotation's new
            // file is recorded before its flush ends).
            .and_then(|j| crate::output::mismatch(&j.output, &store.counters())),
    };
    let state = match daemon {
        _ if damaged.is_some() => "damaged",
        Some(Daemon { paused: true, .. }) => "paused",
        Some(_) => "running",
        None if counters.pending + counters.detail_pending > 0 => "idle",
        None => "finished",
    };
    Ok(Status {
        state: state.into(),
        pid: daemon.map(|d| d.pid),
        state_dir: store.dir().display().to_string(),
        url: job.as_ref().map(|j| j.url.clone()),
        range: job.as_ref().map(|j| j.pages.clone()),
        pending: counters.pending,
        done: counters.done,
        failed: counters.failed,
        total: counters.pending + counters.done + counters.failed,
        items: counters.items,
        retries: counters.retries,
        output: job.as_ref().map(|j| j.output.display().to_string()),
        output_bytes: counters.output_len,
        rate,
        eta_seconds: eta_rate.map(|r| counters.tasks_pending() as f64 / r),
        open_range_end: counters.open_end(),
        errors: store
            .reasons()?
            .into_iter()
            .map(|(reason, pages)| ErrorCount { reason, pages })
            .collect(),
        rate_last_minute,
        open_range,
        frontier: open_range.then_some(counters.frontier),
        damaged,
        failed_for_good: store.real_failures()? + counters.detail_failed,
        open_range_last_page: counters.open_end().map(|end| end.saturating_sub(1)),
        done_past_end: past_end.done,
        failed_past_end: past_end.failed,
        round: store.round().map(|(round, _)| round),
        next_round_at: match (store.round(), daemon.and_then(|d| d.follow_ms)) {
            (Some((_, started_ms)), Some(every_ms)) => {
                Some(started_ms.saturating_add(every_ms).div_ceil(1000))
            }
            _ => None,
        },
        detail_stage: job.as_ref().is_some_and(|j| j.detail.is_some()),
        detail_pending: counters.detail_pending,
        detail_done: counters.detail_done,
        detail_failed: counters.detail_failed,
        items_waiting: counters.waiting,
        detail_errors: store
            .detail_reasons()?
            .into_iter()
            .map(|(reason, pages)| ErrorCount { reason, pages })
            .collect(),
        store: None,
        job: None,
        daemons: Vec::new(),
    })
}

/// One page as `queue` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRow {
    pub page: u64,
    pub state: String,
    pub attempts: u32,
    /// Failed: the short reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Pending after a failed attempt, or failed: the full error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// `detail` for a detail page (`page` is then its number in the
    /// state); absent for a listing page. Added after 0.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// A detail page's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A detail page's first waiting item: its listing page and its index
    /// there (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing_page: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_index: Option<u32>,
}

/// The prefix of a `queue` state that lists detail pages (`detail
/// failed`): the control protocol's `state` field carries the stage too,
/// so older daemons refuse it in one line instead of listing pages.
pub const DETAIL_STAGE: &str = "detail ";

pub fn parse_state(name: &str) -> Result<StateFilter> {
    let name = name.strip_prefix(DETAIL_STAGE).unwrap_or(name);
    match name {
        "pending" => Ok(StateFilter::Pending),
        "done" => Ok(StateFilter::Done),
        "failed" => Ok(StateFilter::Failed),
        other => Err(UserError::Usage(format!(
            "'{}' is not a page state (pending, done, failed)",
            crate::util::shown(other)
        ))
        .into()),
    }
}

/// Rows read from sled per step of [`queue_each`]: what a listing holds in
/// memory at once, whatever its limit.
const QUEUE_STEP: usize = 1024;

/// Up to `limit` pages in `state`, in page order, collected (for a short
/// listing or an older client that asked for one reply).
pub fn queue(store: &Store, state: &str, limit: usize) -> Result<Vec<QueueRow>> {
    let mut rows = Vec::new();
    queue_each(store, state, limit, &mut |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(rows)
}

/// Hands `each` up to `limit` pages in `state`, in page order, reading
/// sled [`QUEUE_STEP`] rows at a time: constant memory whatever `limit`.
pub fn queue_each(
    store: &Store,
    state: &str,
    limit: usize,
    each: &mut dyn FnMut(QueueRow) -> Result<()>,
) -> Result<()> {
    queue_each_marked(store, state, limit, &|_| false, each)
}

/// [`queue_each`] for a running crawl: pending pages it is fetching,
/// parsing or committing now (`in_flight`) show as `in flight`.
pub fn queue_each_marked(
    store: &Store,
    state: &str,
    limit: usize,
    in_flight: &dyn Fn(u64) -> bool,
    each: &mut dyn FnMut(QueueRow) -> Result<()>,
) -> Result<()> {
    let filter = parse_state(state)?;
    if state.starts_with(DETAIL_STAGE) {
        return detail_rows(store, filter, limit, each);
    }
    let mut after = None;
    let mut left = limit;
    while left > 0 {
        let batch = store.list_after(filter, after, left.min(QUEUE_STEP))?;
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        left -= batch.len();
        for (page, state) in batch {
            let mut row = row_of(page, state);
            if row.state == "pending" && in_flight(page) {
                row.state = "in flight".into();
            }
            each(row)?;
        }
        if last == u64::MAX {
            break;
        }
        after = Some(last);
    }
    Ok(())
}

/// [`queue_each`] over detail pages.
fn detail_rows(
    store: &Store,
    filter: StateFilter,
    limit: usize,
    each: &mut dyn FnMut(QueueRow) -> Result<()>,
) -> Result<()> {
    use crate::store::DetailState;
    let mut after = None;
    let mut left = limit;
    while left > 0 {
        let batch = store.list_details(filter, after, left.min(QUEUE_STEP))?;
        let Some(&(last, _, _)) = batch.last() else {
            break;
        };
        left -= batch.len();
        for (id, state, first) in batch {
            let mut row = QueueRow {
                page: id,
                state: String::new(),
                attempts: 0,
                reason: None,
                error: None,
                not_before_ms: None,
                items: None,
                bytes: None,
                at_ms: None,
                stage: Some("detail".into()),
                url: Some(crate::store::detail::url_of(&state).to_string()),
                listing_page: first.map(|(page, _)| page),
                item_index: first.map(|(_, index)| index),
            };
            match state {
                DetailState::Pending(task) => {
                    row.state = "pending".into();
                    row.attempts = task.attempts;
                    row.error = (!task.last_error.is_empty()).then_some(task.last_error);
                    row.not_before_ms = (task.not_before_ms > 0).then_some(task.not_before_ms);
                }
                DetailState::Done(done) => {
                    row.state = "done".into();
                    row.attempts = done.attempts;
                    row.bytes = Some(done.bytes);
                    row.at_ms = Some(done.at_ms);
                }
                DetailState::Failed(failed) => {
                    row.state = "failed".into();
                    row.attempts = failed.attempts;
                    row.reason = Some(failed.kind);
                    row.error = Some(failed.detail);
                    row.at_ms = Some(failed.at_ms);
                }
            }
            each(row)?;
        }
        if last == u64::MAX {
            break;
        }
        after = Some(last);
    }
    Ok(())
}

fn row_of(page: u64, state: PageState) -> QueueRow {
    let blank = QueueRow {
        page,
        state: String::new(),
        attempts: 0,
        reason: None,
        error: None,
        not_before_ms: None,
        items: None,
        bytes: None,
        at_ms: None,
        stage: None,
        url: None,
        listing_page: None,
        item_index: None,
    };
    match state {
        PageState::Pending(p) => QueueRow {
            state: "pending".into(),
            attempts: p.attempts,
            error: (!p.last_error.is_empty()).then_some(p.last_error),
            not_before_ms: (p.not_before_ms > 0).then_some(p.not_before_ms),
            ..blank
        },
        PageState::Done(d) => QueueRow {
            state: "done".into(),
            attempts: d.attempts,
            items: Some(d.items),
            bytes: Some(d.bytes),
            at_ms: Some(d.at_ms),
            ..blank
        },
        PageState::Failed(f) => QueueRow {
            state: "failed".into(),
            attempts: f.attempts,
            error: Some(f.to_string()),
            reason: Some(f.kind),
            at_ms: Some(f.at_ms),
            ..blank
        },
    }
}

pub fn enqueue(store: &Store, ranges: &[String]) -> Result<EnqueueReport> {
    let ranges = parse_closed_ranges(ranges).map_err(UserError::Usage)?;
    let report = store.enqueue(&ranges)?;
    store.flush()?;
    Ok(report)
}

/// What `retry` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryReport {
    pub moved: u64,
    /// Pages named that were not failed (left as they are).
    pub not_failed: Vec<u64>,
    /// Failed detail pages queued again (a `retry` without page numbers).
    /// Added after 0.1.0.
    #[serde(default)]
    pub details_moved: u64,
}

pub fn retry(store: &Store, pages: &[u64]) -> Result<RetryReport> {
    let (moved, not_failed) = store.retry((!pages.is_empty()).then_some(pages))?;
    // Without page numbers, failed detail pages go back too: their items
    // wait for them (or, with on_failure = "write", were written without).
    let details_moved = if pages.is_empty() {
        store.retry_details(None)?.0
    } else {
        0
    };
    store.flush()?;
    Ok(RetryReport {
        moved,
        not_failed,
        details_moved,
    })
}

/// Where the committed output is, for `export`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportInfo {
    pub output: PathBuf,
    pub committed: u64,
    pub format: String,
    pub fields: Vec<String>,
}

pub fn export_info(store: &Store) -> Result<ExportInfo> {
    let Some(job) = store.job()? else {
        return Err(UserError::Usage(format!(
            "the state in {} has no job yet; nothing to export",
            store.dir().display()
        ))
        .into());
    };
    Ok(ExportInfo {
        output: job.output,
        committed: store.committed_counters().output_len,
        format: job.format,
        fields: job.fields,
    })
}

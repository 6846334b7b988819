//! The commands that change a job in a store database, from any machine:
//! `enqueue`, `retry`, `pause` and `resume`, and `queue`, which lists its
//! tasks. Each change is one transaction that moves tasks and the job's
//! counters together (the counters always equal a recount). Leased tasks
//! (in flight on a daemon) are never touched: their daemon's commit
//! settles them.

use anyhow::{Context, Result};

use super::job::{self, JobId};
use super::lease::Stage;
use crate::control::ops::{QueueRow, RetryReport};
use crate::range::PageRange;
use crate::store::EnqueueReport;

/// The channel `pause` and `resume` notify (the payload is the job's id),
/// so that daemons that listen stop or start feeding at once; a daemon
/// also finds the flag on its next lease (`lease::lease_batch` leases
/// nothing while the job is paused).
pub const PAUSE_CHANNEL: &str = "pagecrawl_pause";

/// Queues `ranges` (closed): new pages as pending, done or failed ones
/// pending again (their items will be written again, as with a state
/// directory); pages pending or in flight are counted and left alone.
pub fn enqueue(
    client: &mut ::postgres::Client,
    job: JobId,
    ranges: &[PageRange],
) -> Result<EnqueueReport> {
    let mut report = EnqueueReport::default();
    for range in ranges {
        let PageRange::Closed { start, end } = *range else {
            anyhow::bail!("internal error: enqueue of an open range {range}");
        };
        let (first, last) = (start as i64, end as i64);
        let mut transaction = client.transaction()?;
        let row = transaction.query_one(
            "WITH old AS ( \
               SELECT number, state FROM pagecrawl_tasks \
               WHERE job_id = $1 AND stage = 'listing' AND number BETWEEN $2 AND $3 \
                 AND state IN ('done', 'failed') FOR UPDATE \
             ), again AS ( \
               UPDATE pagecrawl_tasks t SET state = 'pending', attempts = 0, not_before = NULL, \
                 failure_kind = NULL, failure_detail = NULL \
               FROM old WHERE t.job_id = $1 AND t.stage = 'listing' AND t.number = old.number \
               RETURNING old.state AS was \
             ) SELECT count(*) FILTER (WHERE was = 'done'), count(*) FILTER (WHERE was = 'failed'), \
               (SELECT count(*) FROM pagecrawl_tasks WHERE job_id = $1 AND stage = 'listing' \
                  AND number BETWEEN $2 AND $3 AND state IN ('pending', 'leased')) \
             FROM again",
            &[&job.0, &first, &last],
        )?;
        let (done, failed, pending): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        transaction.execute(
            "UPDATE pagecrawl_jobs SET listing_pending = listing_pending + $2 + $3, \
               listing_done = listing_done - $2, listing_failed = listing_failed - $3 \
             WHERE id = $1",
            &[&job.0, &done, &failed],
        )?;
        transaction.commit()?;
        report.requeued += (done + failed) as u64;
        report.already_pending += pending as u64;
        report.added += job::enqueue_pages(client, job, first, last)?;
    }
    Ok(report)
}

/// Failed tasks back to pending with a fresh retry budget: the listing
/// pages named, or every failed task of both stages when none is named.
pub fn retry(client: &mut ::postgres::Client, job: JobId, pages: &[u64]) -> Result<RetryReport> {
    let named: Vec<i64> = pages.iter().map(|&p| p as i64).collect();
    let mut transaction = client.transaction()?;
    let moved: Vec<(String, i64)> = transaction
        .query(
            "UPDATE pagecrawl_tasks SET state = 'pending', attempts = 0, not_before = NULL, \
               failure_kind = NULL, failure_detail = NULL \
             WHERE job_id = $1 AND state = 'failed' \
               AND (cardinality($2::bigint[]) = 0 \
                    OR (stage = 'listing' AND number = ANY($2::bigint[]))) \
             RETURNING stage, number",
            &[&job.0, &named],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let listing = moved.iter().filter(|(stage, _)| stage == "listing").count() as i64;
    let detail = moved.len() as i64 - listing;
    transaction.execute(
        "UPDATE pagecrawl_jobs SET listing_pending = listing_pending + $2, \
           listing_failed = listing_failed - $2, detail_pending = detail_pending + $3, \
           detail_failed = detail_failed - $3 WHERE id = $1",
        &[&job.0, &listing, &detail],
    )?;
    transaction.commit()?;
    let mut not_failed: Vec<u64> = pages
        .iter()
        .copied()
        .filter(|&page| !moved.iter().any(|(_, number)| *number == page as i64))
        .collect();
    not_failed.sort_unstable();
    not_failed.dedup();
    Ok(RetryReport {
        moved: listing as u64,
        not_failed,
        details_moved: detail as u64,
    })
}

/// Sets the job's `paused` flag and tells the daemons that listen.
pub fn set_paused(client: &mut ::postgres::Client, job: JobId, paused: bool) -> Result<()> {
    let mut transaction = client.transaction()?;
    transaction.execute(
        "UPDATE pagecrawl_jobs SET paused = $2 WHERE id = $1",
        &[&job.0, &paused],
    )?;
    transaction.execute(
        "SELECT pg_notify($1, $2)",
        &[&PAUSE_CHANNEL, &job.0.to_string()],
    )?;
    transaction.commit()?;
    Ok(())
}

/// Whether the job is paused.
pub fn is_paused(client: &mut ::postgres::Client, job: JobId) -> Result<bool> {
    Ok(client
        .query_one("SELECT paused FROM pagecrawl_jobs WHERE id = $1", &[&job.0])?
        .get(0))
}

/// How many rows a listing reads at a time: memory stays flat whatever
/// `--limit` is.
const BATCH: i32 = 1_000;

/// Up to `limit` tasks of `stage` in `state` (`pending` includes those in
/// flight, shown as `in flight`), in number order, each given to `each`
/// as it is read, in the shape `queue` prints for a state directory.
pub fn queue_each(
    client: &mut ::postgres::Client,
    job: JobId,
    stage: Stage,
    state: &str,
    limit: usize,
    each: &mut dyn FnMut(QueueRow) -> Result<()>,
) -> Result<()> {
    let states: Vec<&str> = match state {
        "pending" => vec!["pending", "leased"],
        other => vec![other],
    };
    let mut transaction = client
        .build_transaction()
        .read_only(true)
        .start()
        .context("reading the queue")?;
    let portal = transaction.bind(
        "SELECT number, page, url, state, attempts, \
           (extract(epoch FROM not_before) * 1000)::bigint, failure_kind, failure_detail \
         FROM pagecrawl_tasks WHERE job_id = $1 AND stage = $2 AND state = ANY($3) \
         ORDER BY number LIMIT $4",
        &[
            &job.0,
            &stage.as_str(),
            &states,
            &(limit.min(i64::MAX as usize) as i64),
        ],
    )?;
    loop {
        let rows = transaction.query_portal(&portal, BATCH)?;
        for row in &rows {
            let state: String = row.get(3);
            let not_before: Option<i64> = row.get(5);
            each(QueueRow {
                page: row.get::<_, i64>(0) as u64,
                state: match state.as_str() {
                    "leased" => "in flight".to_string(),
                    _ => state,
                },
                attempts: row.get::<_, i32>(4).max(0) as u32,
                reason: row.get(6),
                error: row.get(7),
                not_before_ms: not_before.map(|ms| ms.max(0) as u64),
                items: None,
                bytes: None,
                at_ms: None,
                stage: (stage == Stage::Detail).then(|| "detail".to_string()),
                url: row.get(2),
                listing_page: (stage == Stage::Detail).then(|| row.get::<_, i64>(1) as u64),
                item_index: None,
            })?;
        }
        if rows.len() < BATCH as usize {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;

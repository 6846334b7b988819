//! Leases on tasks, and the fenced commit of a group of settled tasks.
//!
//! A daemon leases a batch (`SELECT ... FOR UPDATE SKIP LOCKED`, so daemons
//! leasing at once never wait for each other nor take the same task): each
//! task gets the daemon as owner, an expiry on the server's clock (no host's
//! clock matters) and one new fencing token from a sequence. A lease is
//! renewed while the daemon works; once expired, any daemon's next lease
//! may take the task over, with a new token.
//!
//! A commit names, for each task, the token it was leased with; it writes
//! nothing unless every task of the group is still leased under that token.
//! Items, task states (both stages), failure reasons, new detail tasks and
//! the job's counters change in that one transaction. A settled task keeps
//! the token that settled it, so a daemon that lost its connection during a
//! commit asks [`settled_by`] whether it happened.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::job::{DaemonId, JobId};

/// Which stage a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// A listing page; its number is the page number.
    Listing,
    /// A detail page of a listing page's item.
    Detail,
}

impl Stage {
    /// The `stage` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Listing => "listing",
            Stage::Detail => "detail",
        }
    }

    fn from_column(text: &str) -> Stage {
        if text == "detail" {
            Stage::Detail
        } else {
            Stage::Listing
        }
    }
}

/// A task's identity within its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub stage: Stage,
    pub number: i64,
}

impl TaskId {
    pub fn listing(page: i64) -> TaskId {
        TaskId {
            stage: Stage::Listing,
            number: page,
        }
    }

    pub fn detail(number: i64) -> TaskId {
        TaskId {
            stage: Stage::Detail,
            number,
        }
    }
}

/// One task of a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedTask {
    pub id: TaskId,
    /// The listing page (for a detail task: the page its item came from).
    pub page: i64,
    /// A detail task's URL.
    pub url: Option<String>,
    /// A detail task's waiting listing fields.
    pub payload: Option<Value>,
    /// Attempts settled so far (retries, not leases).
    pub attempts: i32,
}

/// A batch of tasks leased together, under one fencing token.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub token: i64,
    pub tasks: Vec<LeasedTask>,
}

/// An item to write with a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub page: i64,
    pub index: i32,
    pub item: Value,
    /// The job's `key` field's value, when the job has a key: an item whose
    /// key is already written is skipped.
    pub key: Option<String>,
}

/// A detail task a listing page's commit queues.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDetail {
    pub number: i64,
    pub page: i64,
    pub url: String,
    pub payload: Value,
}

/// How a leased task was settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Fetched and parsed: its items (and, for a listing page, its detail
    /// tasks) are written with it.
    Done {
        items: Vec<NewItem>,
        bytes: i64,
        details: Vec<NewDetail>,
    },
    /// Failed for good, with its reason.
    Failed { kind: String, detail: String },
    /// Back to pending, not to be leased again before `after`; the reason
    /// is kept as the last error.
    Retry {
        after: Duration,
        kind: String,
        detail: String,
    },
}

/// One task of a commit group: which task, the token it was leased with,
/// and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub task: TaskId,
    pub token: i64,
    pub outcome: Outcome,
}

/// What a commit wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub items_written: u64,
    /// Items skipped because their key was already written.
    pub items_skipped: u64,
    pub details_queued: u64,
}

/// Why a commit wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Some tasks are no longer leased under the token the group names
    /// (their lease expired and another daemon took them, or they were
    /// settled already): the whole group was refused.
    #[error("{} task(s) of the commit are no longer leased by this daemon (first: {:?}); nothing was written", lost.len(), lost.first())]
    Fenced { lost: Vec<TaskId> },
    /// The database failed or the connection broke. When it broke during
    /// the commit itself, whether it happened is unknown: ask
    /// [`settled_by`].
    #[error("the commit transaction failed: {0}")]
    Database(#[from] ::postgres::Error),
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Leases up to `limit` tasks of `job` for `owner`, for `lease_for`:
/// pending tasks whose `not_before` has passed, and leased tasks whose lease
/// expired (taken over). Detail tasks of a page come before the next
/// listing page (depth first). Nothing is leased while the job is paused.
pub fn lease_batch(
    client: &mut ::postgres::Client,
    job: JobId,
    owner: DaemonId,
    limit: usize,
    lease_for: Duration,
) -> Result<Lease> {
    let rows = client.query(
        "WITH picked AS ( \
           SELECT stage, number FROM pagecrawl_tasks \
           WHERE job_id = $1 AND state IN ('pending', 'leased') \
             AND ((state = 'pending' AND (not_before IS NULL OR not_before <= clock_timestamp())) \
               OR (state = 'leased' AND lease_expires < clock_timestamp())) \
             AND NOT (SELECT paused FROM pagecrawl_jobs WHERE id = $1) \
           ORDER BY page, stage DESC, number \
           LIMIT $2 \
           FOR UPDATE SKIP LOCKED \
         ), token AS (SELECT nextval('pagecrawl_lease_tokens') AS token) \
         UPDATE pagecrawl_tasks t SET state = 'leased', lease_owner = $3, \
           lease_token = token.token, \
           lease_expires = clock_timestamp() + $4::bigint * interval '1 millisecond' \
         FROM picked, token \
         WHERE t.job_id = $1 AND t.stage = picked.stage AND t.number = picked.number \
         RETURNING t.stage, t.number, t.page, t.url, t.payload, t.attempts, token.token",
        &[&job.0, &(limit as i64), &owner.0, &millis(lease_for)],
    )?;
    let token = rows.first().map_or(0, |row| row.get(6));
    let mut tasks: Vec<LeasedTask> = rows
        .iter()
        .map(|row| LeasedTask {
            id: TaskId {
                stage: Stage::from_column(row.get(0)),
                number: row.get(1),
            },
            page: row.get(2),
            url: row.get(3),
            payload: row.get(4),
            attempts: row.get(5),
        })
        .collect();
    tasks.sort_by_key(|task| (task.page, std::cmp::Reverse(task.id.stage), task.id.number));
    Ok(Lease { token, tasks })
}

/// Extends the lease `token` by `lease_for` from now, on the tasks it still
/// holds; returns their numbers (fewer than leased: the others were taken
/// over or settled). Rows are locked in the commit's order, so a renewal
/// and a commit of the same daemon cannot deadlock.
pub fn renew(
    client: &mut ::postgres::Client,
    job: JobId,
    token: i64,
    lease_for: Duration,
) -> Result<HashSet<i64>> {
    Ok(client
        .query(
            "UPDATE pagecrawl_tasks t \
             SET lease_expires = clock_timestamp() + $3::bigint * interval '1 millisecond' \
             FROM (SELECT stage, number FROM pagecrawl_tasks \
                   WHERE job_id = $1 AND lease_token = $2 AND state = 'leased' \
                   ORDER BY stage, number FOR UPDATE) held \
             WHERE t.job_id = $1 AND t.stage = held.stage AND t.number = held.number \
             RETURNING t.number",
            &[&job.0, &token, &millis(lease_for)],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Returns every expired lease of `job` to pending (for the others, and
/// for `status`, which counts them as pending); returns how many.
pub fn expire(client: &mut ::postgres::Client, job: JobId) -> Result<u64> {
    Ok(client.execute(
        "UPDATE pagecrawl_tasks SET state = 'pending', lease_owner = NULL, lease_expires = NULL \
         WHERE job_id = $1 AND state = 'leased' AND lease_expires < clock_timestamp()",
        &[&job.0],
    )?)
}

/// Gives back the tasks still held under `token` (a daemon stopping
/// cleanly), so others need not wait for the lease to expire.
pub fn release(client: &mut ::postgres::Client, job: JobId, token: i64) -> Result<u64> {
    Ok(client.execute(
        "UPDATE pagecrawl_tasks SET state = 'pending', lease_owner = NULL, lease_expires = NULL \
         WHERE job_id = $1 AND state = 'leased' AND lease_token = $2",
        &[&job.0, &token],
    )?)
}

/// The tasks that a commit under `token` settled: after a connection lost
/// during a commit, these are the ones not to commit again.
pub fn settled_by(client: &mut ::postgres::Client, job: JobId, token: i64) -> Result<Vec<TaskId>> {
    let rows = client.query(
        "SELECT stage, number FROM pagecrawl_tasks \
         WHERE job_id = $1 AND lease_token = $2 AND state <> 'leased' ORDER BY stage, number",
        &[&job.0, &token],
    )?;
    Ok(rows
        .iter()
        .map(|row| TaskId {
            stage: Stage::from_column(row.get(0)),
            number: row.get(1),
        })
        .collect())
}

/// Commits a group in one transaction, fenced: when any task is no longer
/// leased under the token it names, nothing is written
/// ([`CommitError::Fenced`]).
pub fn commit_group(
    client: &mut ::postgres::Client,
    job: JobId,
    group: &[Settled],
) -> Result<Committed, CommitError> {
    let mut transaction = client.transaction()?;
    let stages: Vec<&str> = group.iter().map(|s| s.task.stage.as_str()).collect();
    let numbers: Vec<i64> = group.iter().map(|s| s.task.number).collect();
    let tokens: Vec<i64> = group.iter().map(|s| s.token).collect();
    // Locks the rows (a take-over waits for this commit, then finds them
    // settled) and checks each one's token.
    let held: Vec<TaskId> = transaction
        .query(
            "SELECT t.stage, t.number FROM pagecrawl_tasks t \
             JOIN unnest($2::text[], $3::bigint[], $4::bigint[]) AS g (stage, number, token) \
               ON t.stage = g.stage AND t.number = g.number \
             WHERE t.job_id = $1 AND t.state = 'leased' AND t.lease_token = g.token \
             ORDER BY t.stage, t.number FOR UPDATE OF t",
            &[&job.0, &stages, &numbers, &tokens],
        )?
        .iter()
        .map(|row| TaskId {
            stage: Stage::from_column(row.get(0)),
            number: row.get(1),
        })
        .collect();
    // (A group naming a task twice is refused too: it would settle it twice.)
    if held.len() != group.len() {
        let mut lost: Vec<TaskId> = group
            .iter()
            .map(|s| s.task)
            .filter(|task| !held.contains(task))
            .collect();
        lost.sort();
        lost.dedup();
        return Err(CommitError::Fenced { lost });
    }

    let mut committed = Committed::default();
    let items: Vec<&NewItem> = group
        .iter()
        .flat_map(|s| match &s.outcome {
            Outcome::Done { items, .. } => items.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    if !items.is_empty() {
        let pages: Vec<i64> = items.iter().map(|i| i.page).collect();
        let indexes: Vec<i32> = items.iter().map(|i| i.index).collect();
        let values: Vec<&Value> = items.iter().map(|i| &i.item).collect();
        let keys: Vec<Option<&str>> = items.iter().map(|i| i.key.as_deref()).collect();
        committed.items_written = transaction.execute(
            "INSERT INTO pagecrawl_items (job_id, page, index, item, key) \
             SELECT $1, g.page, g.index, g.item, g.key \
             FROM unnest($2::bigint[], $3::int[], $4::jsonb[], $5::text[]) \
               WITH ORDINALITY AS g (page, index, item, key, position) \
             ORDER BY g.position \
             ON CONFLICT (job_id, key) DO NOTHING",
            &[&job.0, &pages, &indexes, &values, &keys],
        )?;
        committed.items_skipped = items.len() as u64 - committed.items_written;
    }

    let details: Vec<&NewDetail> = group
        .iter()
        .flat_map(|s| match &s.outcome {
            Outcome::Done { details, .. } => details.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    if !details.is_empty() {
        let numbers: Vec<i64> = details.iter().map(|d| d.number).collect();
        let pages: Vec<i64> = details.iter().map(|d| d.page).collect();
        let urls: Vec<&str> = details.iter().map(|d| d.url.as_str()).collect();
        let payloads: Vec<&Value> = details.iter().map(|d| &d.payload).collect();
        committed.details_queued = transaction.execute(
            "INSERT INTO pagecrawl_tasks (job_id, stage, number, page, url, payload) \
             SELECT $1, 'detail', g.number, g.page, g.url, g.payload \
             FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::jsonb[]) \
               AS g (number, page, url, payload) \
             ON CONFLICT DO NOTHING",
            &[&job.0, &numbers, &pages, &urls, &payloads],
        )?;
    }

    let mut states: Vec<&str> = Vec::new();
    let mut delays: Vec<Option<i64>> = Vec::new();
    let mut kinds: Vec<Option<&str>> = Vec::new();
    let mut reasons: Vec<Option<&str>> = Vec::new();
    let mut bytes = 0i64;
    // [listing, detail] × [done, failed]
    let mut settled = [[0i64; 2]; 2];
    for s in group {
        let stage = usize::from(s.task.stage == Stage::Detail);
        match &s.outcome {
            Outcome::Done { bytes: b, .. } => {
                states.push("done");
                delays.push(None);
                kinds.push(None);
                reasons.push(None);
                bytes += b;
                settled[stage][0] += 1;
            }
            Outcome::Failed { kind, detail } => {
                states.push("failed");
                delays.push(None);
                kinds.push(Some(kind));
                reasons.push(Some(detail));
                settled[stage][1] += 1;
            }
            Outcome::Retry {
                after,
                kind,
                detail,
            } => {
                states.push("pending");
                delays.push(Some(millis(*after)));
                kinds.push(Some(kind));
                reasons.push(Some(detail));
            }
        }
    }
    transaction.execute(
        "UPDATE pagecrawl_tasks t SET state = g.state, attempts = t.attempts + 1, \
           not_before = clock_timestamp() + g.delay * interval '1 millisecond', \
           lease_owner = NULL, lease_expires = NULL, \
           failure_kind = g.kind, failure_detail = g.reason \
         FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::text[]) \
           AS g (stage, number, state, delay, kind, reason) \
         WHERE t.job_id = $1 AND t.stage = g.stage AND t.number = g.number",
        &[
            &job.0, &stages, &numbers, &states, &delays, &kinds, &reasons,
        ],
    )?;
    let [[listing_done, listing_failed], [detail_done, detail_failed]] = settled;
    transaction.execute(
        "UPDATE pagecrawl_jobs SET \
           listing_pending = listing_pending - $2 - $3, \
           listing_done = listing_done + $2, listing_failed = listing_failed + $3, \
           detail_pending = detail_pending - $4 - $5 + $6, \
           detail_done = detail_done + $4, detail_failed = detail_failed + $5, \
           items = items + $7, bytes = bytes + $8 \
         WHERE id = $1",
        &[
            &job.0,
            &listing_done,
            &listing_failed,
            &detail_done,
            &detail_failed,
            &(committed.details_queued as i64),
            &(committed.items_written as i64),
            &bytes,
        ],
    )?;
    transaction.commit()?;
    Ok(committed)
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;

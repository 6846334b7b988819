//! Jobs and daemons in the database: a job is found (or created) by its
//! name and must keep its identity; its counters live on its row, changed
//! in the same transaction as the tasks they count; each daemon registers a
//! row and keeps its heartbeat fresh. What `status` reads besides the
//! counters (failures by kind, the daemons and the leases each holds) goes
//! through partial indexes, so it costs what it shows, not the queue's size.

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::lease::Stage;
use super::politeness::slot_class;
use crate::error::UserError;
use crate::util::shown;

/// A job's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobId(pub i64);

/// A daemon's row id: the owner its leases are recorded under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DaemonId(pub i64);

/// A job's counters, as its row holds them (pending includes leased).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub listing_pending: i64,
    pub listing_done: i64,
    pub listing_failed: i64,
    pub detail_pending: i64,
    pub detail_done: i64,
    pub detail_failed: i64,
    pub items: i64,
    pub bytes: i64,
}

/// What makes a job the same job wherever it runs, as its row's `identity`
/// holds it: the state directory's [`crate::store::Job`] less the output
/// file (the items live in the database). `export` and `status` read the
/// fields, the format and the `[detail]` table from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub url: String,
    pub pages: String,
    pub pattern: String,
    pub format: String,
    pub fields: Vec<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// The `[detail]` table as canonical JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Identity {
    /// The identity of the job `config` describes (`fields` are the listing
    /// pattern's; `[detail]` adds its own, which its table names).
    pub fn of(config: &crate::config::Config) -> Identity {
        Identity {
            url: config.url.clone(),
            pages: config.pages.to_string(),
            pattern: config.pattern_text.clone(),
            format: config.format.name().to_string(),
            fields: config.fields.clone(),
            key: config.key.clone(),
            detail: config.detail.as_ref().map(|d| d.identity.clone()),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The job named `name`, with its identity as stored, if there is one
/// (reads only).
pub fn find(client: &mut ::postgres::Client, name: &str) -> Result<Option<(JobId, Value)>> {
    let row = client.query_opt(
        "SELECT id, identity FROM pagecrawl_jobs WHERE name = $1",
        &[&name],
    )?;
    Ok(row.map(|row| (JobId(row.get(0)), row.get(1))))
}

/// The job named `name`, created with `identity` when absent. A job of that
/// name with another identity is refused ([`UserError::JobMismatch`]).
pub fn ensure_job(client: &mut ::postgres::Client, name: &str, identity: &Value) -> Result<JobId> {
    let mut transaction = client.transaction()?;
    transaction.execute(
        "INSERT INTO pagecrawl_jobs (name, identity) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&name, identity],
    )?;
    let row = transaction.query_one(
        "SELECT id, identity FROM pagecrawl_jobs WHERE name = $1",
        &[&name],
    )?;
    let (id, stored): (i64, Value) = (row.get(0), row.get(1));
    if &stored != identity {
        return Err(UserError::JobMismatch(format!(
            "the database already holds a job named '{}' with another url, pages or pattern: \
             choose another `job` name, or run the same job",
            shown(name)
        ))
        .into());
    }
    transaction.execute(
        "INSERT INTO pagecrawl_rate (job_id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&id],
    )?;
    transaction.commit()?;
    Ok(JobId(id))
}

/// The second key of the advisory lock that serialises a job's enqueues
/// (the first is its [`slot_class`]); the concurrency slots are `0..`.
const ENQUEUE_SLOT: i32 = -1;

/// How many rows of the `COPY` are formatted before they are handed to
/// the connection: big enough that a write is not a call per row, small
/// enough not to matter in memory (a row is about 20 bytes).
const COPY_CHUNK: usize = 64 << 10;

/// Queues listing pages `first..=last` as pending (those already known, in
/// any state, are left alone) and counts them; returns how many were added.
///
/// The new pages go in with one `COPY`: a million took 11 s as one
/// `INSERT ... SELECT generate_series ... ON CONFLICT DO NOTHING`, of which
/// the per-row foreign-key check was 4 s (the schema has none on tasks) and
/// the speculative insertion of `ON CONFLICT` 3 s. Without `ON CONFLICT`
/// the known pages are skipped by reading them first, as runs, and copying
/// only the gaps between: this needs no other enqueue of the job between
/// the read and the copy, hence the transaction's advisory lock (listing
/// tasks are inserted nowhere else). The job row is locked `FOR KEY SHARE`
/// only, as the foreign key did, so commits (which update its counters)
/// are not held up by a long enqueue.
pub fn enqueue_pages(
    client: &mut ::postgres::Client,
    job: JobId,
    first: i64,
    last: i64,
) -> Result<u64> {
    let mut transaction = client.transaction()?;
    transaction.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&slot_class(job), &ENQUEUE_SLOT],
    )?;
    if transaction
        .query_opt(
            "SELECT 1 FROM pagecrawl_jobs WHERE id = $1 FOR KEY SHARE",
            &[&job.0],
        )?
        .is_none()
    {
        bail!("queueing pages: the database holds no job {}", job.0);
    }
    // Runs of consecutive known pages, read after the lock was granted (a
    // statement's snapshot is taken when it starts): one row per run, so a
    // fully known range of a million pages is one row, not a million.
    let known: Vec<(i64, i64)> = transaction
        .query(
            "SELECT min(number), max(number) FROM ( \
               SELECT number, number - row_number() OVER (ORDER BY number) AS run \
               FROM pagecrawl_tasks \
               WHERE job_id = $1 AND stage = 'listing' AND number BETWEEN $2 AND $3 \
             ) AS known GROUP BY run ORDER BY 1",
            &[&job.0, &first, &last],
        )
        .context("reading the pages already queued")?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let added = {
        let mut copy = transaction
            .copy_in("COPY pagecrawl_tasks (job_id, stage, number, page) FROM STDIN")
            .context("queueing pages")?;
        let mut chunk = Vec::with_capacity(COPY_CHUNK + 64);
        for (from, to) in gaps(first, last, &known) {
            for page in from..=to {
                // The text format: tab-separated, one row a line.
                let _ = writeln!(chunk, "{}\tlisting\t{page}\t{page}", job.0);
                if chunk.len() >= COPY_CHUNK {
                    copy.write_all(&chunk).context("queueing pages")?;
                    chunk.clear();
                }
            }
        }
        copy.write_all(&chunk).context("queueing pages")?;
        copy.finish().context("queueing pages")?
    };
    transaction.execute(
        "UPDATE pagecrawl_jobs SET listing_pending = listing_pending + $2 WHERE id = $1",
        &[&job.0, &(added as i64)],
    )?;
    transaction.commit()?;
    Ok(added)
}

/// The runs of `first..=last` outside the `known` runs (sorted, disjoint,
/// within the range), as inclusive `(from, to)` pairs.
fn gaps(first: i64, last: i64, known: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut gaps = Vec::new();
    // `None` once a known run ends at `i64::MAX`: nothing is left after it.
    let mut next = Some(first);
    for &(from, to) in known {
        if let Some(next) = next.filter(|next| *next < from) {
            gaps.push((next, from - 1));
        }
        next = to.checked_add(1);
    }
    if let Some(next) = next.filter(|next| *next <= last) {
        gaps.push((next, last));
    }
    gaps
}

/// The job's counters, one row read: O(1) whatever the queue's size.
pub fn counters(client: &mut ::postgres::Client, job: JobId) -> Result<Counters> {
    let row = client.query_one(
        "SELECT listing_pending, listing_done, listing_failed, detail_pending, detail_done, \
         detail_failed, items, bytes FROM pagecrawl_jobs WHERE id = $1",
        &[&job.0],
    )?;
    Ok(Counters {
        bytes: row.get(7),
        ..counts_of(&row)
    })
}

/// The first seven columns of `row`: the stages' counts and the items.
fn counts_of(row: &::postgres::Row) -> Counters {
    Counters {
        listing_pending: row.get(0),
        listing_done: row.get(1),
        listing_failed: row.get(2),
        detail_pending: row.get(3),
        detail_done: row.get(4),
        detail_failed: row.get(5),
        items: row.get(6),
        bytes: 0,
    }
}

/// The counters recounted from the tasks and items (a full scan, for tests
/// and `fsck`-like checks): they must always equal [`counters`] but for
/// `bytes`, which no row keeps.
pub fn recount(client: &mut ::postgres::Client, job: JobId) -> Result<Counters> {
    let row = client.query_one(
        "SELECT \
           count(*) FILTER (WHERE stage = 'listing' AND state IN ('pending', 'leased')), \
           count(*) FILTER (WHERE stage = 'listing' AND state = 'done'), \
           count(*) FILTER (WHERE stage = 'listing' AND state = 'failed'), \
           count(*) FILTER (WHERE stage = 'detail' AND state IN ('pending', 'leased')), \
           count(*) FILTER (WHERE stage = 'detail' AND state = 'done'), \
           count(*) FILTER (WHERE stage = 'detail' AND state = 'failed'), \
           (SELECT count(*) FROM pagecrawl_items WHERE job_id = $1) \
         FROM pagecrawl_tasks WHERE job_id = $1",
        &[&job.0],
    )?;
    Ok(counts_of(&row))
}

/// Records a daemon of `job` running on `host` as `pid`.
pub fn register_daemon(
    client: &mut ::postgres::Client,
    job: JobId,
    host: &str,
    pid: u32,
) -> Result<DaemonId> {
    let row = client.query_one(
        "INSERT INTO pagecrawl_daemons (job_id, host, pid) VALUES ($1, $2, $3) RETURNING id",
        &[&job.0, &host, &(pid as i32)],
    )?;
    Ok(DaemonId(row.get(0)))
}

/// Refreshes a daemon's heartbeat and its stats (`pages_per_second`...).
pub fn heartbeat(client: &mut ::postgres::Client, daemon: DaemonId, stats: &Value) -> Result<()> {
    client.execute(
        "UPDATE pagecrawl_daemons SET heartbeat = now(), stats = $2 WHERE id = $1",
        &[&daemon.0, stats],
    )?;
    Ok(())
}

/// The `application_name` of a daemon's connections.
pub fn application_name(daemon: DaemonId) -> String {
    format!("pagecrawl daemon {}", daemon.0)
}

/// A daemon of the job fenced off by [`fence_silent_daemons`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fenced {
    pub host: String,
    pub pid: u32,
    /// Seconds since its last heartbeat.
    pub silent_for: f64,
    /// Its connections the server closed.
    pub connections: i64,
}

/// Closes the connections of the job's daemons (other than `me`) not heard
/// from for `silent_for`: frozen (SIGSTOP, a stalled VM) or cut off from the
/// server while their connections stay open. Their task leases have expired
/// by then; closing their connections frees the concurrency slots they hold
/// (session locks the server would otherwise keep for a frozen process
/// forever), and the daemon, if it wakes, reconnects and finds its late
/// commit refused. Needs the right to signal their backends (the same role,
/// or `pg_signal_backend`).
pub fn fence_silent_daemons(
    client: &mut ::postgres::Client,
    job: JobId,
    me: DaemonId,
    silent_for: Duration,
) -> Result<Vec<Fenced>> {
    let rows = client.query(
        "SELECT d.host, d.pid, extract(epoch FROM clock_timestamp() - d.heartbeat)::float8,                 count(pg_terminate_backend(a.pid))          FROM pagecrawl_daemons d          JOIN pg_stat_activity a ON a.application_name = 'pagecrawl daemon ' || d.id::text          WHERE d.job_id = $1 AND d.id <> $2            AND d.heartbeat < clock_timestamp() - $3::bigint * interval '1 millisecond'          GROUP BY d.id, d.host, d.pid, d.heartbeat",
        &[&job.0, &me.0, &(silent_for.as_millis() as i64)],
    )?;
    Ok(rows
        .iter()
        .map(|row| Fenced {
            host: row.get(0),
            pid: row.get::<_, i32>(1) as u32,
            silent_for: row.get(2),
            connections: row.get(3),
        })
        .collect())
}

/// A daemon of a job, as `status` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonRow {
    pub host: String,
    pub pid: u32,
    pub started: SystemTime,
    pub last_heartbeat: SystemTime,
    /// As its last heartbeat reported it; `None` before it reported one.
    pub pages_per_second: Option<f64>,
    /// Tasks it holds under leases not yet expired, counted from the tasks
    /// (what the daemon reported may be stale): an expired lease is no
    /// longer its own, whichever daemon takes it over.
    pub leases_held: i64,
}

/// The daemons `status` lists; the tasks each holds are found through the
/// partial index of leased tasks by owner, never by a scan of the queue.
const DAEMONS: &str = "SELECT d.host, d.pid, d.started, d.heartbeat, \
       CASE WHEN jsonb_typeof(d.stats -> 'pages_per_second') = 'number' \
         THEN (d.stats ->> 'pages_per_second')::float8 END, \
       (SELECT count(*) FROM pagecrawl_tasks t \
        WHERE t.state = 'leased' AND t.lease_owner = d.id \
          AND t.lease_expires > clock_timestamp()) \
     FROM pagecrawl_daemons d WHERE d.job_id = $1 ORDER BY d.started, d.id";

/// Every daemon that registered for `job`, oldest first. A daemon that
/// died keeps its row: its heartbeat tells how long ago it was last seen.
pub fn daemons(client: &mut ::postgres::Client, job: JobId) -> Result<Vec<DaemonRow>> {
    let rows = client.query(DAEMONS, &[&job.0])?;
    Ok(rows
        .iter()
        .map(|row| DaemonRow {
            host: row.get(0),
            pid: row.get::<_, i32>(1) as u32,
            started: row.get(2),
            last_heartbeat: row.get(3),
            pages_per_second: row.get(4),
            leases_held: row.get(5),
        })
        .collect())
}

/// Why a stage's tasks failed for good: each kind with its count.
const FAILURE_REASONS: &str = "SELECT coalesce(failure_kind, ''), count(*) \
     FROM pagecrawl_tasks WHERE job_id = $1 AND stage = $2 AND state = 'failed' \
     GROUP BY 1 ORDER BY 2 DESC, 1";

/// The kinds of failure of `stage`'s failed tasks, most common first (then
/// by name), as `status` shows them. Read through the partial index of
/// failed tasks: the work is in the failed tasks, not in the queue.
pub fn failure_reasons(
    client: &mut ::postgres::Client,
    job: JobId,
    stage: Stage,
) -> Result<Vec<(String, u64)>> {
    let rows = client.query(FAILURE_REASONS, &[&job.0, &stage.as_str()])?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect())
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;

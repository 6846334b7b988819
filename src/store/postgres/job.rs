//! Jobs and daemons in the database: a job is found (or created) by its
//! name and must keep its identity; its counters live on its row, changed
//! in the same transaction as the tasks they count; each daemon registers a
//! row and keeps its heartbeat fresh.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::Value;

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
        listing_pending: row.get(0),
        listing_done: row.get(1),
        listing_failed: row.get(2),
        detail_pending: row.get(3),
        detail_done: row.get(4),
        detail_failed: row.get(5),
        items: row.get(6),
        bytes: row.get(7),
    })
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
    Ok(Counters {
        listing_pending: row.get(0),
        listing_done: row.get(1),
        listing_failed: row.get(2),
        detail_pending: row.get(3),
        detail_done: row.get(4),
        detail_failed: row.get(5),
        items: row.get(6),
        bytes: 0,
    })
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

/// Refreshes a daemon's heartbeat and its stats (pages/s, leases held...).
pub fn heartbeat(client: &mut ::postgres::Client, daemon: DaemonId, stats: &Value) -> Result<()> {
    client.execute(
        "UPDATE pagecrawl_daemons SET heartbeat = now(), stats = $2 WHERE id = $1",
        &[&daemon.0, stats],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::postgres::Postgres;
    use crate::store::postgres::schema::migrate;
    use serde_json::json;

    #[test]
    fn a_job_keeps_its_identity_and_its_counters_match_a_recount() {
        let Some(server) = Postgres::for_test("a_job_keeps_its_identity") else {
            return;
        };
        let mut client = server.connect().unwrap();
        migrate(&mut client).unwrap();
        let identity = json!({"url": "http://127.0.0.1/{page}", "pages": "1..=10"});
        let job = ensure_job(&mut client, "wooyun", &identity).unwrap();
        assert_eq!(ensure_job(&mut client, "wooyun", &identity).unwrap(), job);
        let other = json!({"url": "http://127.0.0.1/{page}", "pages": "1..=11"});
        let error = ensure_job(&mut client, "wooyun", &other).unwrap_err();
        assert_eq!(
            crate::error::exit_for(&error),
            crate::exit_code::Exit::Usage
        );
        assert!(error.to_string().contains("job named 'wooyun'"), "{error}");
        assert_eq!(enqueue_pages(&mut client, job, 1, 10).unwrap(), 10);
        assert_eq!(enqueue_pages(&mut client, job, 5, 12).unwrap(), 2);
        let counted = counters(&mut client, job).unwrap();
        assert_eq!(counted.listing_pending, 12);
        assert_eq!(counted, recount(&mut client, job).unwrap());
        let daemon = register_daemon(&mut client, job, "host-a", 42).unwrap();
        heartbeat(&mut client, daemon, &json!({"pages_per_second": 3.5})).unwrap();
        let stats: Value = client
            .query_one(
                "SELECT stats FROM pagecrawl_daemons WHERE id = $1",
                &[&daemon.0],
            )
            .unwrap()
            .get(0);
        assert_eq!(stats["pages_per_second"], 3.5);
    }

    #[test]
    fn gaps_are_the_range_less_the_known_runs() {
        assert_eq!(gaps(1, 10, &[]), [(1, 10)]);
        assert_eq!(gaps(1, 10, &[(1, 10)]), []);
        assert_eq!(gaps(1, 10, &[(1, 2), (5, 5), (9, 10)]), [(3, 4), (6, 8)]);
        assert_eq!(gaps(1, 10, &[(3, 4)]), [(1, 2), (5, 10)]);
        assert_eq!(gaps(5, 4, &[]), []);
        assert_eq!(
            gaps(i64::MAX - 2, i64::MAX, &[(i64::MAX, i64::MAX)]),
            [(i64::MAX - 2, i64::MAX - 1)]
        );
    }

    fn listing_numbers(client: &mut ::postgres::Client, job: JobId) -> Vec<i64> {
        client
            .query(
                "SELECT number FROM pagecrawl_tasks WHERE job_id = $1 AND stage = 'listing' \
                 ORDER BY number",
                &[&job.0],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    #[test]
    fn an_enqueue_adds_the_unknown_pages_and_leaves_the_known_ones_as_they_are() {
        let Some(server) = Postgres::for_test("an_enqueue_adds_the_unknown_pages") else {
            return;
        };
        let mut client = server.connect().unwrap();
        migrate(&mut client).unwrap();
        let job = ensure_job(&mut client, "holes", &json!({})).unwrap();
        let other = ensure_job(&mut client, "other", &json!({})).unwrap();
        assert_eq!(enqueue_pages(&mut client, other, 1, 30).unwrap(), 30);
        for (first, last) in [(3, 4), (7, 7), (10, 12)] {
            enqueue_pages(&mut client, job, first, last).unwrap();
        }
        // Known pages in every state stay in it.
        client
            .batch_execute(&format!(
                "UPDATE pagecrawl_tasks SET state = 'done' WHERE job_id = {0} AND number = 3; \
                 UPDATE pagecrawl_tasks SET state = 'failed' WHERE job_id = {0} AND number = 7; \
                 UPDATE pagecrawl_jobs SET listing_pending = listing_pending - 2, \
                   listing_done = 1, listing_failed = 1 WHERE id = {0}",
                job.0
            ))
            .unwrap();
        assert_eq!(enqueue_pages(&mut client, job, 1, 20).unwrap(), 14);
        assert_eq!(
            listing_numbers(&mut client, job),
            (1..=20).collect::<Vec<_>>()
        );
        let states: Vec<(i64, String)> = client
            .query(
                "SELECT number, state FROM pagecrawl_tasks \
                 WHERE job_id = $1 AND state <> 'pending' ORDER BY number",
                &[&job.0],
            )
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert_eq!(states, [(3, "done".into()), (7, "failed".into())]);
        assert_eq!(enqueue_pages(&mut client, job, 1, 20).unwrap(), 0);
        let counted = counters(&mut client, job).unwrap();
        assert_eq!(counted.listing_pending, 18);
        assert_eq!(counted, recount(&mut client, job).unwrap());
        assert_eq!(
            listing_numbers(&mut client, other),
            (1..=30).collect::<Vec<_>>()
        );

        let error = enqueue_pages(&mut client, JobId(job.0 + 100), 1, 5).unwrap_err();
        assert!(format!("{error:#}").contains("no job"), "{error:#}");
        assert!(listing_numbers(&mut client, JobId(job.0 + 100)).is_empty());
    }

    #[test]
    fn overlapping_enqueues_of_one_job_at_once_add_each_page_once() {
        let Some(server) = Postgres::for_test("overlapping_enqueues_of_one_job") else {
            return;
        };
        let mut client = server.connect().unwrap();
        migrate(&mut client).unwrap();
        let job = ensure_job(&mut client, "race", &json!({})).unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let enqueuers: Vec<_> = [(1, 20_000), (10_000, 30_000), (5_000, 25_000)]
            .into_iter()
            .map(|(first, last)| {
                let mut client = server.connect().unwrap();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    enqueue_pages(&mut client, job, first, last).map_err(|e| format!("{e:#}"))
                })
            })
            .collect();
        let added: u64 = enqueuers
            .into_iter()
            .map(|enqueuer| enqueuer.join().unwrap().unwrap())
            .sum();
        assert_eq!(added, 30_000);
        assert_eq!(
            listing_numbers(&mut client, job),
            (1..=30_000).collect::<Vec<_>>()
        );
        assert_eq!(
            counters(&mut client, job).unwrap(),
            recount(&mut client, job).unwrap()
        );
    }

    /// Issue 13's figure, timed (`cargo test --lib -- --ignored
    /// postgres::job`): queueing a million pages takes at most 5 s, and
    /// queueing them again (all known) too. Ignored: a slow or busy machine
    /// must not fail CI for it.
    #[test]
    #[ignore]
    fn enqueue_of_a_million_pages_takes_at_most_5_s() {
        let Some(server) = Postgres::for_test("enqueue_of_a_million_pages") else {
            return;
        };
        let mut client = server.connect().unwrap();
        migrate(&mut client).unwrap();
        let job = ensure_job(&mut client, "big", &json!({})).unwrap();
        let begun = std::time::Instant::now();
        assert_eq!(
            enqueue_pages(&mut client, job, 1, 1_000_000).unwrap(),
            1_000_000
        );
        let first = begun.elapsed();
        let begun = std::time::Instant::now();
        assert_eq!(enqueue_pages(&mut client, job, 1, 1_000_000).unwrap(), 0);
        let again = begun.elapsed();
        eprintln!("enqueue of 1,000,000 pages: {first:?}; of the same pages again: {again:?}");
        assert_eq!(
            counters(&mut client, job).unwrap().listing_pending,
            1_000_000
        );
        assert!(first <= std::time::Duration::from_secs(5), "{first:?}");
        assert!(again <= std::time::Duration::from_secs(5), "{again:?}");
    }
}

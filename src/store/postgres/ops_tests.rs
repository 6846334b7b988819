//! The commands' changes to a job in a store, against a real throwaway
//! server: what `retry` moves and names, and `queue` over more rows than
//! one batch and over detail tasks.

use super::*;
use crate::fixture::postgres::Postgres;
use crate::store::postgres::job::{counters, ensure_job, recount};
use crate::store::postgres::schema::migrate;
use serde_json::json;

fn job(server: &Postgres) -> (::postgres::Client, JobId) {
    let mut client = server.connect().unwrap();
    migrate(&mut client).unwrap();
    let job = ensure_job(&mut client, "ops", &json!({})).unwrap();
    (client, job)
}

#[test]
fn retry_names_only_the_pages_it_did_not_move() {
    let Some(server) = Postgres::for_test("store retry") else {
        return;
    };
    let (mut client, job) = job(&server);
    job::enqueue_pages(&mut client, job, 1, 5).unwrap();
    client
        .execute(
            "UPDATE pagecrawl_tasks SET state = 'failed', failure_kind = 'HTTP 500' \
             WHERE job_id = $1 AND number IN (2, 4)",
            &[&job.0],
        )
        .unwrap();
    client
        .execute(
            "UPDATE pagecrawl_jobs SET listing_pending = 3, listing_failed = 2 WHERE id = $1",
            &[&job.0],
        )
        .unwrap();
    let report = retry(&mut client, job, &[4, 3, 4, 9]).unwrap();
    assert_eq!(report.moved, 1);
    assert_eq!(
        report.not_failed,
        [3, 9],
        "4 was moved; 3 and 9 were not failed"
    );
    assert_eq!(
        counters(&mut client, job).unwrap(),
        recount(&mut client, job).unwrap()
    );
    let all = retry(&mut client, job, &[]).unwrap();
    assert_eq!((all.moved, all.details_moved), (1, 0));
    assert!(all.not_failed.is_empty());
    assert_eq!(counters(&mut client, job).unwrap().listing_failed, 0);
}

#[test]
fn queue_streams_past_one_batch_and_lists_detail_tasks_with_their_page() {
    let Some(server) = Postgres::for_test("store queue") else {
        return;
    };
    let (mut client, job) = job(&server);
    let pages = BATCH as i64 * 2 + 5;
    job::enqueue_pages(&mut client, job, 1, pages).unwrap();
    let mut seen = Vec::new();
    queue_each(
        &mut client,
        job,
        Stage::Listing,
        "pending",
        usize::MAX,
        &mut |row| {
            seen.push(row.page);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen.len() as i64, pages, "every row, across batches");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in number order");
    let mut limited = 0;
    queue_each(
        &mut client,
        job,
        Stage::Listing,
        "pending",
        BATCH as usize,
        &mut |_| {
            limited += 1;
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(limited, BATCH);
    // A leased task is pending, shown as in flight.
    let daemon = job::register_daemon(&mut client, job, "h", 1).unwrap();
    crate::store::postgres::lease::lease_batch(
        &mut client,
        job,
        daemon,
        1,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let mut states = Vec::new();
    queue_each(&mut client, job, Stage::Listing, "pending", 2, &mut |row| {
        states.push((row.page, row.state));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        states,
        [(1, "in flight".to_string()), (2, "pending".to_string())]
    );

    client
        .execute(
            "INSERT INTO pagecrawl_tasks (job_id, stage, number, page, url, state, attempts, \
             failure_kind, failure_detail) VALUES \
             ($1, 'detail', 7, 3, 'http://127.0.0.1:9/d/7', 'failed', 2, 'HTTP 404', 'HTTP 404 from d/7')",
            &[&job.0],
        )
        .unwrap();
    let mut details = Vec::new();
    queue_each(&mut client, job, Stage::Detail, "failed", 10, &mut |row| {
        details.push(row);
        Ok(())
    })
    .unwrap();
    assert_eq!(details.len(), 1);
    let row = &details[0];
    assert_eq!(
        (
            row.page,
            row.listing_page,
            row.stage.as_deref(),
            row.url.as_deref()
        ),
        (7, Some(3), Some("detail"), Some("http://127.0.0.1:9/d/7"))
    );
    assert_eq!((row.attempts, row.reason.as_deref()), (2, Some("HTTP 404")));
    let mut listing_failed = 0;
    queue_each(&mut client, job, Stage::Listing, "failed", 10, &mut |row| {
        assert_eq!((row.stage, row.listing_page), (None, None));
        listing_failed += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(listing_failed, 0, "a detail task is not a listing page");
}

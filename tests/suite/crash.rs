//! Crash safety: SIGKILL at several moments under faults, then resume; and
//! the graceful stop on SIGTERM.

use std::time::Duration;

use pagecrawl::fixture::{Charset, Faults, Site};
use pagecrawl::store::Store;

use crate::harness::*;

/// A site with every fault kind switched on for the first two attempts of
/// a page, GBK-encoded, and one page that always fails.
fn faulty_site(pages: u64, seed: u64) -> Site {
    Site {
        pages,
        per_page: 5,
        padding: 500,
        latency: Duration::from_millis(1),
        charset: Charset::GbkMeta,
        beyond_not_found: false,
        faults: Faults {
            seed,
            server_error: 0.05,
            too_many_requests: 0.02,
            retry_after: 1,
            reset: 0.03,
            hang: 0.005,
            hang_for: Duration::from_millis(1500),
            truncate: 0.03,
            faulty_attempts: 2,
            always_fail: vec![777],
            ..Faults::default()
        },
        ..Site::default()
    }
}

#[test]
fn kill_9_at_several_moments_loses_and_repeats_nothing() {
    let pages = 1200;
    let job = Job::new(faulty_site(pages, 42))
        .concurrency(8)
        .with("request_timeout = \"1s\"")
        .with("commit_every = 16");
    // Kill points, by requests the server has seen: during start-up (before
    // the first request), early, several mid-crawl under load, near the end.
    let kill_after_requests = [0, 60, 300, 600, 900, 1150];
    let mut kills = 0;
    for threshold in kill_after_requests {
        let mut child = job.spawn_run();
        if threshold == 0 {
            std::thread::sleep(Duration::from_millis(30));
        } else {
            let reached = wait_until(Duration::from_secs(60), || {
                job.server.stats().total() >= threshold || child.try_wait().ok().flatten().is_some()
            });
            assert!(
                reached,
                "the crawl made no progress towards {threshold} requests"
            );
        }
        if child.try_wait().unwrap().is_none() {
            signal(&child, "KILL");
            kills += 1;
        }
        let _ = child.wait();
    }
    assert!(kills >= 4, "only {kills} kills landed mid-crawl");
    job.run_ok();

    let mut expected = job.expected_bugs(1..=pages);
    expected.retain(|b| b.page != 777);
    assert_same_items(&job.output_bugs(), &expected);
    let status = job.status();
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(
        status["done"].as_u64().unwrap() + status["failed"].as_u64().unwrap(),
        pages
    );
    assert_eq!(status["failed"], 1);

    let store = Store::open_existing(&job.state_dir()).unwrap();
    assert_eq!(
        store.recount().unwrap(),
        store.counters(),
        "counters equal a recount after {kills} kills"
    );
}

#[test]
fn sigterm_stops_gracefully_and_the_next_run_completes() {
    let site = Site {
        pages: 200,
        latency: Duration::from_millis(50),
        ..Site::default()
    };
    let job = Job::new(site).concurrency(4);
    let child = job.spawn_run();
    assert!(wait_until(Duration::from_secs(30), || job
        .server
        .stats()
        .total()
        >= 30));
    signal(&child, "TERM");
    let output = finish(child, Duration::from_secs(15));
    assert_success(&output);
    assert!(stdout(&output).contains("stopped:"), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("still pending"),
        "{}",
        stdout(&output)
    );
    let status = job.status();
    let done = status["done"].as_u64().unwrap();
    assert!((20..200).contains(&done), "done {done}");
    // Everything that was fetched before the stop was committed.
    let fetched = job.server.stats().total();
    assert!(fetched - done <= 4, "{fetched} fetched, {done} committed");

    job.run_ok();
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=200));
}

//! Crash safety: SIGKILL at several moments under faults, then resume; and
//! the graceful stop on SIGTERM.

use std::time::Duration;

use pagecrawl::fixture::{Charset, Faults, Site};
use pagecrawl::store::Store;

use crate::harness::*;

/// A site with every fault kind switched on for the first two attempts of
/// a page, GBK-encoded, and one page that always fails.
/// A site with every fault kind on a few attempts of some pages, and
/// page 777 always failing (the store campaign shares it).
pub(crate) fn faulty_site(pages: u64, seed: u64) -> Site {
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
    job.run_with_failures();
    eprintln!(
        "kill -9 at fixed moments | pages {pages} | faults injected {} | kills {kills} | peak concurrency {}",
        job.server.stats().total().saturating_sub(pages),
        job.server.stats().peak_concurrency()
    );

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

/// The crash campaign: a crawl with every fault kind switched on, killed
/// with SIGKILL at moments drawn from a seeded generator (during start-up and
/// the output's truncation too), then finished; every item must be there
/// exactly once and the counters must equal a recount.
///
/// `PAGECRAWL_CAMPAIGN=full` runs the full campaign (3,000 pages, ≥ 20
/// kills; CI does); the default is a quick one. `PAGECRAWL_CAMPAIGN_SEED=N`
/// replays a seed (each run prints its seed).
#[test]
fn crash_campaign() {
    let full = std::env::var("PAGECRAWL_CAMPAIGN").is_ok_and(|v| v == "full");
    let (pages, kills_wanted) = if full { (3000, 20) } else { (600, 6) };
    let seed = campaign_seed();
    eprintln!(
        "crash campaign: seed {seed} (replay with PAGECRAWL_CAMPAIGN_SEED={seed}), {pages} pages"
    );
    let mut site = faulty_site(pages, seed);
    site.latency = Duration::from_millis(6);
    let always_failing = pages / 3;
    site.faults.always_fail = vec![always_failing];
    let job = Job::new(site)
        .concurrency(8)
        .with("request_timeout = \"1s\"")
        .with("commit_every = 16");
    let kills = kill_at_random_moments(&job, seed, kills_wanted, 400);
    job.run_with_failures();

    let mut expected = job.expected_bugs(1..=pages);
    expected.retain(|b| b.page != always_failing);
    let bugs = job.output_bugs();
    assert_same_items(&bugs, &expected);
    let status = job.status();
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["failed"], 1, "{status}");
    assert_eq!(status["done"].as_u64().unwrap() + 1, pages);
    let store = Store::open_existing(&job.state_dir()).unwrap();
    assert_eq!(
        store.recount().unwrap(),
        store.counters(),
        "counters equal a recount"
    );
    let stats = job.server.stats();
    eprintln!(
        "crash campaign | pages {pages} | faults injected {} | kills {kills} | items missing 0 | duplicated 0 | peak concurrency {}",
        stats.total().saturating_sub(pages),
        stats.peak_concurrency()
    );
    assert!(
        kills >= kills_wanted,
        "only {kills} kills landed before the crawl finished (seed {seed})"
    );
    // Across the kills too: a killed process's requests (a hanging one
    // lasts 1.5 s on the server) end for the site when their connections
    // close with it, before the next process asks anything.
    assert!(
        stats.peak_concurrency() <= 8,
        "concurrency = 8: the site saw {} requests at once (seed {seed})",
        stats.peak_concurrency()
    );
}

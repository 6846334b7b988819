//! Open ranges (`pages = "1.."`): how far past the last page with items the
//! crawl looks before the run of empty pages ends it, and how `status` and
//! the start-up log present such a job.

use std::time::{Duration, Instant};

use pagecrawl::fixture::Site;

use crate::harness::{assert_same_items, stderr, stdout, Job};

const LAST: u64 = 295;
const EMPTY_RUN: u64 = 3;

/// Crawls a `LAST`-page site as an open range at `concurrency`; returns the
/// requests for pages past the last one with items, and the wall time.
fn crawl_open(concurrency: usize, beyond_not_found: bool, latency: Duration) -> (u64, Duration) {
    let site = Site {
        pages: LAST,
        beyond_not_found,
        latency,
        ..Site::default()
    };
    let job = Job::new(site)
        .pages("1..")
        .concurrency(concurrency)
        .with(&format!("stop_after_empty = {EMPTY_RUN}"));
    let started = Instant::now();
    job.run_ok();
    let elapsed = started.elapsed();
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=LAST));
    let stats = job.server.stats();
    let past: u64 = (LAST + 1..LAST + 1000)
        .map(|page| u64::from(stats.requests_for(page)))
        .sum();
    let status = job.status();
    assert_eq!(status["open_range_end"], LAST + 1, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    (past, elapsed)
}

#[test]
fn an_open_range_requests_at_most_stop_after_empty_plus_concurrency_pages_past_its_end() {
    let mut seen = Vec::new();
    for beyond_not_found in [false, true] {
        for concurrency in [1, 8, 32] {
            let (past, elapsed) = crawl_open(concurrency, beyond_not_found, Duration::ZERO);
            eprintln!(
                "concurrency {concurrency}, 404s past the end: {beyond_not_found}: {past} requests past page {LAST} in {elapsed:.2?}"
            );
            seen.push((concurrency, beyond_not_found, past));
        }
    }
    for (concurrency, beyond_not_found, past) in seen {
        assert!(
            past <= EMPTY_RUN + concurrency as u64,
            "concurrency {concurrency} (404s past the end: {beyond_not_found}): {past} requests past the last page"
        );
        assert!(past >= EMPTY_RUN, "the empty run itself was fetched");
    }
}

/// Not a guarantee but a figure: `cargo test --test suite open_range::timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_of_an_open_range_at_20ms_latency() {
    for concurrency in [8, 32] {
        let (past, elapsed) = crawl_open(concurrency, false, Duration::from_millis(20));
        eprintln!(
            "concurrency {concurrency}, 20 ms latency: {past} requests past the end, {elapsed:.2?}"
        );
    }
}

#[test]
fn an_open_range_reads_as_its_listing_in_status_and_the_start_up_log() {
    let site = Site {
        pages: 20,
        ..Site::default()
    };
    let job = Job::new(site)
        .pages("1..")
        .concurrency(4)
        .with(&format!("stop_after_empty = {EMPTY_RUN}"));
    let run = job.run_ok();
    assert!(
        stderr(&run)
            .contains("(open range from page 1, ends after 3 empty pages) with 4 connections"),
        "{}",
        stderr(&run)
    );
    let status = job.status();
    assert_eq!(status["open_range_end"], 21, "{status}");
    assert_eq!(status["open_range_last_page"], 20, "{status}");
    let past = status["done_past_end"].as_u64().unwrap();
    assert!(
        (EMPTY_RUN..=EMPTY_RUN + 4).contains(&past),
        "the empty run and the look-ahead: {status}"
    );
    assert_eq!(status["done"].as_u64().unwrap(), 20 + past, "{status}");
    let text = stdout(&job.exec(&["status"]));
    assert!(
        text.contains(&format!(
            "pages     20 done, 0 pending, 0 failed (of pages 1..=20); the open range ended at page 20: {past} pages from 21 on had no items"
        )),
        "{text}"
    );
    assert!(text.contains("finished: nothing pending"), "{text}");

    // Resumed, it says where it ended, and fetches nothing.
    let served = job.server.stats().total();
    let again = job.run_ok();
    assert!(
        stderr(&again)
            .contains("(open range, ended at page 20 before the empty pages from 21; 0 pending,"),
        "{}",
        stderr(&again)
    );
    assert_eq!(job.server.stats().total(), served);
}

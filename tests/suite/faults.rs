//! Retries, Retry-After, permanent failures and `retry`, and the
//! politeness caps as the server sees them.

use std::time::{Duration, Instant};

use pagecrawl::fixture::{Fault, Faults, Site};

use crate::harness::*;

#[test]
fn retry_after_is_honoured_and_5xx_are_retried() {
    let faults = Faults {
        scripted: vec![
            (5, 0, Fault::TooManyRequests { retry_after: 1 }),
            (6, 0, Fault::ServerError),
            (6, 1, Fault::ServerError),
            (7, 0, Fault::Reset),
            (8, 0, Fault::Truncate),
        ],
        ..Faults::default()
    };
    let job = Job::new(Site {
        pages: 10,
        faults,
        ..Site::default()
    });
    job.run_ok();
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=10));
    let arrivals = job.server.stats().arrivals_of(5);
    assert_eq!(arrivals.len(), 2, "one 429, one success");
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_millis(990),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
    assert_eq!(job.server.stats().requests_for(6), 3);
    assert_eq!(job.server.stats().requests_for(7), 2, "a reset is retried");
    assert_eq!(
        job.server.stats().requests_for(8),
        2,
        "a truncated body is retried"
    );
    // 5 retries, or 4 when page 7's reset came on a kept-alive connection
    // (a request lost there before any byte of its answer is resent once
    // without spending a retry; whether the connection was reused depends
    // on timing). Flaky before, when it asserted 5.
    let retries = job.status()["retries"].as_u64().unwrap();
    assert!((4..=5).contains(&retries), "{retries} retries");
}

#[test]
fn a_page_that_keeps_failing_ends_in_failed_and_retry_requeues_it() {
    let faults = Faults {
        always_fail: vec![7],
        not_found: vec![8],
        ..Faults::default()
    };
    let job = Job::new(Site {
        pages: 10,
        faults,
        ..Site::default()
    })
    .with("retries = 2");
    let output = job.run_with_failures();
    assert!(
        stdout(&output).contains("8 pages done, 2 failed"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        job.server.stats().requests_for(7),
        3,
        "first attempt + 2 retries"
    );
    assert_eq!(
        job.server.stats().requests_for(8),
        1,
        "a 404 is not retried"
    );

    let queue = job.exec(&["queue", "--state", "failed", "--json"]);
    assert_success(&queue);
    let rows: serde_json::Value = serde_json::from_slice(&queue.stdout).unwrap();
    assert_eq!(rows[0]["page"], 7);
    assert_eq!(rows[0]["reason"], "HTTP 500");
    assert_eq!(rows[0]["attempts"], 3);
    assert!(
        rows[0]["error"].as_str().unwrap().contains("page=7"),
        "{rows}"
    );
    assert_eq!(rows[1]["reason"], "HTTP 404");
    let status = job.status();
    assert_eq!(status["failed"], 2);
    assert_eq!(status["errors"].as_array().unwrap().len(), 2);

    job.server.update(|site| site.faults.always_fail.clear());
    let retry = job.exec(&["retry", "7"]);
    assert_success(&retry);
    assert!(
        stdout(&retry).contains("1 failed pages back"),
        "{}",
        stdout(&retry)
    );
    job.run_with_failures();
    let mut expected = job.expected_bugs(1..=10);
    expected.retain(|b| b.page != 8);
    assert_same_items(&job.output_bugs(), &expected);
    let status = job.status();
    assert_eq!(
        (status["done"].as_u64(), status["failed"].as_u64()),
        (Some(9), Some(1))
    );
}

#[test]
fn the_server_never_sees_more_requests_at_once_than_concurrency() {
    let site = Site {
        pages: 120,
        latency: Duration::from_millis(40),
        ..Site::default()
    };
    let job = Job::new(site).concurrency(4);
    job.run_ok();
    let peak = job.server.stats().peak_concurrency();
    assert!(peak <= 4, "peak {peak} > concurrency 4");
    assert!(peak >= 3, "the pool really ran in parallel (peak {peak})");
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=120));
}

#[test]
fn the_rate_limit_holds_in_every_one_second_window() {
    let site = Site {
        pages: 50,
        ..Site::default()
    };
    let job = Job::new(site).concurrency(8).with("rate_limit = 20");
    let started = Instant::now();
    job.run_ok();
    let peak = job.server.stats().peak_in_window(Duration::from_secs(1));
    assert!(
        peak <= 20,
        "{peak} requests in one second with rate_limit = 20"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "50 requests at 20/s take ≥ 2.45 s"
    );
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=50));
}

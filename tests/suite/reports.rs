//! What pagecrawl reports is true: the run's closing summary and `status`
//! give the same numbers, a reload logs the concurrency it applies, no
//! ETA is promised while paused, and routine events are not warnings.

use std::time::Duration;

use pagecrawl::fixture::Site;
use regex::Regex;

use crate::harness::*;

/// The summary's "D pages done, F failed, I items ... (R pages/s)".
fn summary_numbers(stdout: &str) -> (u64, u64, u64, Option<String>) {
    let line = Regex::new(
        r"(?m)^(?:finished|stopped): (\d+) pages done, (\d+) failed, (\d+) items in [\d.]+ s \(([\d.]+) pages/s|no new pages\)",
    )
    .unwrap();
    let captures = line
        .captures(stdout)
        .unwrap_or_else(|| panic!("no summary line in {stdout}"));
    let number = |i: usize| captures[i].parse::<u64>().unwrap();
    (
        number(1),
        number(2),
        number(3),
        captures.get(4).map(|m| m.as_str().to_string()),
    )
}

#[test]
fn the_run_summary_and_status_give_the_same_numbers() {
    let job = Job::new(Site {
        pages: 300,
        latency: Duration::from_millis(2),
        faults: pagecrawl::fixture::Faults {
            not_found: vec![7],
            ..Default::default()
        },
        ..Site::default()
    });
    let first = job.run_with_failures();
    let status = job.status();
    let (done, failed, items, rate) = summary_numbers(&stdout(&first));
    assert_eq!((done, failed, items), (299, 1, 299 * 20));
    assert_eq!(status["done"], done);
    assert_eq!(status["failed"], failed);
    assert_eq!(status["items"], items);
    let status_rate = format!("{:.1}", status["rate"].as_f64().unwrap());
    assert_eq!(rate.as_deref(), Some(status_rate.as_str()), "the same rate");

    // Three done pages crawled again: the totals still agree with status,
    // and the summary says what this run crawled.
    assert_success(&job.exec(&["enqueue", "1..=3"]));
    let second = job.run_with_failures();
    let status = job.status();
    let (done, failed, items, rate) = summary_numbers(&stdout(&second));
    assert_eq!((done, failed), (299, 1), "{}", stdout(&second));
    assert_eq!(status["done"], done);
    assert_eq!(status["items"], items);
    assert_eq!(
        items,
        302 * 20,
        "the re-crawled pages' items are appended again"
    );
    let status_rate = status["rate"].as_f64().map(|r| format!("{r:.1}"));
    assert_eq!(rate, status_rate);
    assert!(
        stdout(&second).contains("\n3 pages were crawled in this run\n"),
        "{}",
        stdout(&second)
    );
    // A run with nothing to do shows no rate it did not measure.
    let third = job.run_with_failures();
    assert!(
        stdout(&third).contains("(no new pages)"),
        "{}",
        stdout(&third)
    );
}

#[test]
fn a_reload_logs_the_concurrency_it_really_applies() {
    let job = Job::new(Site {
        pages: 3000,
        latency: Duration::from_millis(20),
        ..Site::default()
    })
    .concurrency(4);
    let child = job.spawn_run();
    job.wait_for_daemon();
    job.edit_config("concurrency", "concurrency = 1000");
    signal(&child, "HUP");
    assert!(
        wait_until(Duration::from_secs(20), || job
            .server
            .stats()
            .peak_concurrency()
            > 4),
        "the higher concurrency applies"
    );
    // Paused: no ETA is promised, and the state says so.
    assert_success(&job.exec(&["pause"]));
    let status = job.status();
    assert_eq!(status["state"], "paused");
    assert_eq!(status["eta_seconds"], serde_json::Value::Null, "{status}");
    assert_success(&job.exec(&["resume"]));
    signal(&child, "TERM");
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);
    let log = stderr(&output);
    let reloaded = log
        .lines()
        .find(|l| l.contains("SIGHUP: reloaded"))
        .unwrap_or_else(|| panic!("no reload line: {log}"));
    assert!(
        reloaded.contains("concurrency 16 (asked 1000: a running crawl has 16 fetch threads"),
        "{reloaded}"
    );
    let peak = job.server.stats().peak_concurrency();
    assert!(peak <= 16, "the server saw {peak} at once");
    // Routine events are not warnings.
    for event in [
        "SIGHUP: reloaded",
        "SIGTERM: stopping",
        "paused by",
        "resumed by",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(event))
            .unwrap_or_else(|| panic!("no {event:?} line: {log}"));
        assert!(line.contains(" INFO "), "{line}");
    }
}

/// With no `--state-dir` or `--config`, the inspection commands use the
/// one crawl state in the current folder, and say which to pick when there
/// are several.
#[test]
fn inspection_commands_find_the_one_job_in_the_current_folder() {
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    });
    job.run_ok();
    let here = job.dir.path();
    let status = finish(
        pagecrawl(&["status", "--json"])
            .current_dir(here)
            .spawn()
            .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_success(&status);
    let value: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(value["done"], 3);
    assert_eq!(value["state_dir"], "state");
    // A second job beside it: which one must be said.
    let other = Job::new(Site {
        pages: 2,
        ..Site::default()
    });
    other.run_ok();
    std::fs::rename(other.state_dir(), here.join("other.state")).unwrap();
    let ambiguous = finish(
        pagecrawl(&["queue"]).current_dir(here).spawn().unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_eq!(ambiguous.status.code(), Some(2));
    assert_eq!(
        stderr(&ambiguous).trim_end(),
        "pagecrawl: error: no state directory given, and 2 here (other.state, state): pass --state-dir DIR to say which"
    );
}

/// `queue` shows the pages a running crawl has handed out (to be fetched,
/// parsed or committed) as in flight, not as pending with 0 attempts; once
/// the crawl ends none is.
#[test]
fn queue_shows_pages_in_flight_as_in_flight() {
    let job = Job::new(Site {
        pages: 40,
        latency: Duration::from_millis(400),
        ..Site::default()
    })
    .concurrency(2);
    let run = job.spawn_run();
    job.wait_for_daemon();
    let in_flight = |json: &serde_json::Value| -> Vec<u64> {
        json.as_array()
            .unwrap()
            .iter()
            .filter(|row| row["state"] == "in flight")
            .map(|row| row["page"].as_u64().unwrap())
            .collect()
    };
    let mut seen = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let output = job.exec(&["queue", "--json", "--limit", "100"]);
            let rows: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            seen = if rows.is_array() {
                in_flight(&rows)
            } else {
                Vec::new()
            };
            !seen.is_empty()
        }),
        "no page listed as in flight"
    );
    // Handed out (queued for a fetch thread, being fetched, parsed or
    // committed): the server is answering some of them now.
    assert!(
        seen.iter()
            .any(|&page| job.server.stats().requests_for(page) > 0),
        "the pages in flight are being fetched: {seen:?}"
    );
    let text = stdout(&job.exec(&["queue"]));
    assert!(text.contains("in flight"), "{text}");
    signal(&run, "TERM");
    assert_success(&finish(run, COMMAND_TIMEOUT));
    let after: serde_json::Value =
        serde_json::from_slice(&job.exec(&["queue", "--json", "--limit", "100"]).stdout).unwrap();
    assert!(in_flight(&after).is_empty(), "{after}");
}

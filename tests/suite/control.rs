//! The control socket under races, load and abuse: requests that race the
//! start and the end of a run, many clients at once, clients that drip
//! bytes, a stopped daemon, and replies too large to hold in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use pagecrawl::fixture::{Faults, Site};

use crate::harness::*;

/// Pages 1..=100 answer 404, so a first run leaves them failed (for
/// `retry`); pages past 100 have items (for `enqueue`).
fn site_with_failed_pages(latency_ms: u64) -> Site {
    Site {
        pages: 400,
        latency: Duration::from_millis(latency_ms),
        faults: Faults {
            not_found: (1..=100).collect(),
            ..Faults::default()
        },
        ..Site::default()
    }
}

/// One racing command and what became of it.
struct Raced {
    page: u64,
    retry: bool,
    output: Output,
}

/// Starts `run`, and as soon as it holds the state (its pid file exists)
/// and `ready` says so, fires `retry P` for each of `retries` and
/// `enqueue P` for each of `enqueues`, as fast as processes start (up to
/// `AT_ONCE` at a time), while the run starts, crawls and ends.
fn race(
    job: &Job,
    retries: &[u64],
    enqueues: &[u64],
    ready: impl Fn() -> bool,
) -> (Output, Vec<Raced>) {
    let run = job.spawn_run();
    let pid_file = job.state_dir().join("run.pid");
    assert!(
        wait_until(Duration::from_secs(30), || pid_file.exists()),
        "run did not open its state"
    );
    assert!(wait_until(Duration::from_secs(60), &ready), "never ready");
    // At most this many at once: past the run's end each one opens the
    // state itself, one after the other, and 200 in a row on a loaded
    // machine outlast the time a command waits for the state.
    const AT_ONCE: usize = 50;
    let mut running: std::collections::VecDeque<(u64, bool, Child)> = Default::default();
    let mut raced = Vec::new();
    let settle = |(page, retry, child): (u64, bool, Child)| Raced {
        page,
        retry,
        output: finish(child, COMMAND_TIMEOUT),
    };
    let plan = retries
        .iter()
        .map(|&p| (p, true))
        .chain(enqueues.iter().map(|&p| (p, false)));
    for (page, retry) in plan {
        if running.len() == AT_ONCE {
            raced.push(settle(running.pop_front().expect("one runs")));
        }
        let page_text = page.to_string();
        let args = if retry {
            ["retry", page_text.as_str()]
        } else {
            ["enqueue", page_text.as_str()]
        };
        let mut command = job.command(&args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        running.push_back((page, retry, command.spawn().expect("pagecrawl starts")));
    }
    raced.extend(running.into_iter().map(settle));
    (finish(run, COMMAND_TIMEOUT), raced)
}

/// `queue --state STATE --json` of a state with no daemon: the pages.
fn pages_in(job: &Job, state: &str) -> BTreeSet<u64> {
    let output = job.exec(&["queue", "--state", state, "--limit", "100000", "--json"]);
    assert_success(&output);
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    rows.as_array()
        .expect("an array")
        .iter()
        .map(|row| row["page"].as_u64().expect("a page number"))
        .collect()
}

/// Checks what each raced command was told against what the run did: a
/// request the running crawl acknowledged was crawled in that run; one it
/// could not take was applied to the state by the CLI itself (pending for
/// the next run); nothing got a malformed reply or was lost.
fn check_race(job: &Job, run: &Output, raced: &[Raced], fetches_before: &BTreeMap<u64, u32>) {
    assert_success(run);
    let pending = pages_in(job, "pending");
    let done = pages_in(job, "done");
    let failed = pages_in(job, "failed");
    let stats = job.server.stats();
    let mut by_daemon = 0;
    let mut by_cli = 0;
    let mut refused_as_finishing = 0;
    for command in raced {
        let (out, err) = (stdout(&command.output), stderr(&command.output));
        let what = format!(
            "{} {}: {out}{err}",
            if command.retry { "retry" } else { "enqueue" },
            command.page
        );
        assert!(!err.contains("malformed"), "{what}");
        assert!(command.output.status.success(), "{what}");
        let page = command.page;
        let fetched_in_run = stats.requests_for(page) - fetches_before.get(&page).unwrap_or(&0);
        if out.contains("the running crawl fetches them") {
            by_daemon += 1;
            assert_eq!(fetched_in_run, 1, "acknowledged, then not crawled: {what}");
            let settled = if command.retry { &failed } else { &done };
            assert!(settled.contains(&page), "acknowledged, not settled: {what}");
        } else {
            assert!(
                out.contains("`pagecrawl run` fetches them"),
                "the reply says who applied it: {what}"
            );
            by_cli += 1;
            refused_as_finishing += err.contains("was finishing") as u32;
            assert_eq!(fetched_in_run, 0, "{what}");
            assert!(pending.contains(&page), "applied by the CLI: {what}");
        }
    }
    eprintln!(
        "{by_daemon} taken by the running crawl, {by_cli} applied by the CLI \
         ({refused_as_finishing} of them refused by the crawl as it was finishing)"
    );
}

#[test]
fn an_acknowledged_enqueue_or_retry_is_crawled_in_that_run_racing_its_start_and_end() {
    // Start-up: the run has nothing to do, so it starts and ends at once.
    let job = Job::new(site_with_failed_pages(0)).pages("1..=100");
    job.run_ok();
    assert_eq!(pages_in(&job, "failed").len(), 100);
    let before: BTreeMap<u64, u32> = (1..=100).map(|p| (p, 1)).collect();
    let (run, raced) = race(
        &job,
        &(1..=100).collect::<Vec<_>>(),
        &(101..=200).collect::<Vec<_>>(),
        || true,
    );
    check_race(&job, &run, &raced, &before);

    // The last commit: the requests start as the last of 40 slow pages
    // are fetched, and arrive until past the run's end.
    let job = Job::new(site_with_failed_pages(5))
        .pages("1..=100")
        .concurrency(4);
    job.run_ok();
    assert_success(&job.exec(&["enqueue", "101..=140"]));
    let before: BTreeMap<u64, u32> = (1..=100).map(|p| (p, 1)).collect();
    let served = || job.server.stats().total();
    let (run, raced) = race(
        &job,
        &(1..=100).collect::<Vec<_>>(),
        &(141..=240).collect::<Vec<_>>(),
        || served() >= 100 + 38,
    );
    check_race(&job, &run, &raced, &before);
}

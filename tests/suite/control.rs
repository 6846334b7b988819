//! The control socket under races, load and abuse: requests that race the
//! start and the end of a run, many clients at once, clients that drip
//! bytes, a stopped daemon, and replies too large to hold in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

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
    // Retried pages fail again (404): a finished run exits 8 with them.
    assert!(
        matches!(run.status.code(), Some(0) | Some(8)),
        "the run failed ({:?}): {}",
        run.status.code(),
        stderr(run)
    );
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
    job.run_with_failures();
    assert_eq!(pages_in(&job, "failed").len(), 100);
    let before: BTreeMap<u64, u32> = (1..=100).map(|p| (p, 1)).collect();
    let (run, raced) = race(
        &job,
        &(1..=100).collect::<Vec<_>>(),
        &(101..=200).collect::<Vec<_>>(),
        || true,
    );
    check_race(&job, &run, &raced, &before);

    // The last commit, 20 times: a run crawls 10 pages, and once the last of
    // them is fetched (its commit is on the way) 5 retries and 5 enqueues
    // arrive.
    let job = Job::new(site_with_failed_pages(20))
        .pages("1..=100")
        .concurrency(4);
    job.run_with_failures();
    for round in 0..20u64 {
        let work = 201 + round * 10;
        assert_success(&job.exec(&["enqueue", &format!("{work}..={}", work + 9)]));
        let retries: Vec<u64> = (1 + round * 5..=5 + round * 5).collect();
        let enqueues: Vec<u64> = (101 + round * 5..=105 + round * 5).collect();
        let stats = job.server.stats();
        let before: BTreeMap<u64, u32> = retries
            .iter()
            .chain(&enqueues)
            .map(|&p| (p, stats.requests_for(p)))
            .collect();
        let served = stats.total();
        let (run, raced) = race(&job, &retries, &enqueues, || {
            job.server.stats().total() >= served + 10
        });
        check_race(&job, &run, &raced, &before);
    }
}

fn slow_site(pages: u64, latency_ms: u64) -> Site {
    Site {
        pages,
        latency: Duration::from_millis(latency_ms),
        ..Site::default()
    }
}

/// The pid of a running crawl, as `status` reports it.
fn pid_of(child: &Child) -> u32 {
    child.id()
}

#[test]
fn two_hundred_concurrent_status_calls_are_all_answered() {
    let job = Job::new(slow_site(400, 50)).concurrency(2);
    let run = job.spawn_run();
    job.wait_for_daemon();
    let calls: Vec<Child> = (0..200)
        .map(|_| {
            let mut command = job.command(&["status", "--json"]);
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            command.spawn().expect("pagecrawl starts")
        })
        .collect();
    let failures: Vec<String> = calls
        .into_iter()
        .map(|call| finish(call, COMMAND_TIMEOUT))
        .filter_map(|output| {
            let answered = output.status.success()
                && serde_json::from_slice::<serde_json::Value>(&output.stdout)
                    .is_ok_and(|status| status["pid"] == pid_of(&run));
            (!answered).then(|| format!("{}{}", stdout(&output), stderr(&output)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 200 not answered by the crawl, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    signal(&run, "TERM");
    assert_success(&finish(run, COMMAND_TIMEOUT));
}

#[test]
fn clients_dripping_bytes_are_cut_off_and_lock_no_one_out() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let job = Job::new(slow_site(400, 50)).concurrency(2);
    let run = job.spawn_run();
    job.wait_for_daemon();
    let socket = job.state_dir().join("control.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let cut_off = Arc::new(AtomicUsize::new(0));
    // 16 clients that send a byte every 300 ms and never a whole line,
    // reconnecting whenever the daemon drops them.
    let drippers: Vec<_> = (0..16)
        .map(|_| {
            let (socket, stop, cut_off) = (socket.clone(), stop.clone(), cut_off.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) else {
                        return;
                    };
                    let connected = Instant::now();
                    stream
                        .set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    let mut reply = Vec::new();
                    while !stop.load(Ordering::SeqCst) && stream.write_all(b"{").is_ok() {
                        let mut buffer = [0u8; 256];
                        match stream.read(&mut buffer) {
                            Ok(0) => break,
                            Ok(n) => reply.extend_from_slice(&buffer[..n]),
                            Err(_) => {}
                        }
                        if reply.ends_with(b"\n") {
                            break;
                        }
                    }
                    let text = String::from_utf8_lossy(&reply);
                    if text.contains("no complete request within 2 s")
                        && connected.elapsed() < Duration::from_secs(4)
                    {
                        cut_off.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let asked = Instant::now();
        let status = job.status();
        assert_eq!(status["pid"], run.id(), "{status}");
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "status took {:?} with 16 clients dripping bytes",
            asked.elapsed()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || cut_off.load(Ordering::SeqCst)
            >= 16),
        "a client dripping bytes is cut off after 2 s: {} cut off",
        cut_off.load(Ordering::SeqCst)
    );
    stop.store(true, Ordering::SeqCst);
    for dripper in drippers {
        dripper.join().unwrap();
    }
    signal(&run, "TERM");
    assert_success(&finish(run, COMMAND_TIMEOUT));
}

#[test]
fn a_stopped_daemon_is_reported_within_three_seconds_with_its_pid() {
    let job = Job::new(slow_site(400, 50)).concurrency(2);
    let run = job.spawn_run();
    job.wait_for_daemon();
    signal(&run, "STOP");
    // Whatever the command, and whether the backlog is free or not.
    for args in [&["status"][..], &["enqueue", "500"], &["queue", "--json"]] {
        let asked = Instant::now();
        let output = job.exec(args);
        let took = asked.elapsed();
        let err = stderr(&output);
        assert!(!output.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "the running crawl (pid {}) does not answer; it is stopped",
                run.id()
            )),
            "{args:?}: {err}"
        );
        assert!(took < Duration::from_millis(3500), "{args:?} took {took:?}");
    }
    signal(&run, "CONT");
    assert_eq!(job.status()["pid"], run.id(), "answers again once resumed");
    let pending: Vec<u64> = {
        let output = job.exec(&["queue", "--json", "--limit", "1000"]);
        assert_success(&output);
        let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["page"].as_u64().unwrap())
            .collect()
    };
    assert!(
        !pending.contains(&500),
        "the enqueue reported as not answered was not applied late"
    );
    signal(&run, "TERM");
    assert_success(&finish(run, COMMAND_TIMEOUT));
}

/// The peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn listing_a_million_pages_leaves_the_daemons_memory_flat() {
    let job = Job::new(slow_site(5, 2000)).pages("1..=5").concurrency(1);
    job.run_ok();
    assert_success(&job.exec(&["enqueue", "1..=1000000"]));
    let run = job.spawn_run();
    job.wait_for_daemon();
    let before = peak_rss_kib(run.id());
    let mut queue = job.command(&["queue", "--limit", "5000000", "--json"]);
    queue.stdout(Stdio::piped());
    let mut child = queue.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Count the rows as they stream by, without keeping them (the last
    // bytes of a read are kept for a marker cut in two).
    const MARKER: &[u8] = b"\"page\": ";
    let mut rows = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    let mut carried = 0;
    loop {
        let n = std::io::Read::read(&mut stdout, &mut buffer[carried..]).unwrap();
        if n == 0 {
            break;
        }
        let filled = carried + n;
        rows += buffer[..filled]
            .windows(MARKER.len())
            .filter(|w| *w == MARKER)
            .count() as u64;
        carried = (MARKER.len() - 1).min(filled);
        buffer.copy_within(filled - carried..filled, 0);
    }
    assert_success(&finish(child, COMMAND_TIMEOUT));
    let after = peak_rss_kib(run.id());
    assert_eq!(rows, 1_000_000, "rows listed");
    assert!(
        after < 64 * 1024,
        "the daemon's peak RSS went from {before} KiB to {after} KiB while listing {rows} pages"
    );
    eprintln!("daemon VmHWM {before} KiB before, {after} KiB after listing {rows} pages");
    signal(&run, "TERM");
    assert_success(&finish(run, COMMAND_TIMEOUT));
}

/// `job.command(args)` with another pagecrawl binary (for measuring a
/// build before and after a change).
fn command_with(bin: &str, job: &Job, args: &[&str]) -> std::process::Command {
    let template = job.command(args);
    let mut command = std::process::Command::new(bin);
    command.args(template.get_args());
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command.stdin(Stdio::null());
    command
}

/// Runs `command` under `/usr/bin/time -v` with stdout to /dev/null; its
/// peak RSS in KiB.
fn peak_rss_of_command(command: std::process::Command) -> u64 {
    let mut timed = std::process::Command::new("/usr/bin/time");
    timed
        .arg("-v")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(key, value);
        } else {
            timed.env_remove(key);
        }
    }
    let output = timed
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stderr(&output)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.parse().ok())
        .expect("/usr/bin/time -v reports the peak")
}

/// Not a test: the figures for the report. Builds a state with a large
/// output and a million pending pages, then measures the peak RSS of
/// `export` (JSONL and CSV) and of the daemon during `queue --limit
/// 5000000 --json`, with the binary in `PAGECRAWL_MEASURE_BIN`:
/// `PAGECRAWL_MEASURE_BIN=target/release/pagecrawl cargo test --test suite
/// control::measure -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_peak_rss_of_export_and_queue() {
    let bin = std::env::var("PAGECRAWL_MEASURE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_pagecrawl").to_string());
    let pages: u64 = std::env::var("PAGECRAWL_MEASURE_PAGES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(10_000);
    let job = Job::new(Site {
        pages,
        per_page: 100,
        ..Site::default()
    })
    .concurrency(8);
    let crawl = command_with(&bin, &job, &["run"]).output().unwrap();
    assert_success(&crawl);
    let output_bytes = std::fs::metadata(job.output_path("items.jsonl"))
        .unwrap()
        .len();
    for format in ["jsonl", "csv"] {
        let rss = peak_rss_of_command(command_with(&bin, &job, &["export", "--format", format]));
        eprintln!(
            "MEASURE export --format {format} of a {output_bytes}-byte output: peak RSS {rss} KiB"
        );
    }
    let first = pages + 1;
    let range = format!("{first}..={}", first + 999_999);
    assert_success(
        &command_with(&bin, &job, &["enqueue", &range])
            .output()
            .unwrap(),
    );
    job.server
        .update(|site| site.latency = Duration::from_secs(5));
    let run = Running::new(
        command_with(&bin, &job, &["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    job.wait_for_daemon();
    let before = peak_rss_kib(run.id());
    let started = Instant::now();
    let queue = command_with(
        &bin,
        &job,
        &[
            "queue", "--state", "pending", "--limit", "5000000", "--json",
        ],
    )
    .stdout(Stdio::null())
    .output()
    .unwrap();
    assert_success(&queue);
    let after = peak_rss_kib(run.id());
    eprintln!(
        "MEASURE daemon VmHWM {before} KiB before, {after} KiB after queue --limit 5000000 --json of 1000000 pending pages ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    signal(&run, "KILL");
}

#[test]
fn a_listing_its_reader_stops_reading_ends_quietly() {
    // `pagecrawl queue | head`: the reader goes away mid-listing.
    let job = Job::new(slow_site(3, 0)).pages("1..=3");
    job.run_ok();
    assert_success(&job.exec(&["enqueue", "1..=200000"]));
    let mut queue = job.command(&["queue", "--limit", "200000", "--json"]);
    queue.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = queue.spawn().unwrap();
    let mut first = [0u8; 64];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
}

//! The running daemon: the control socket, pause/resume, follow mode,
//! SIGHUP, and the systemd notify protocol.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use pagecrawl::fixture::wooyun::{self, Bug};
use pagecrawl::fixture::Site;

use crate::harness::*;

fn slow_site(pages: u64, latency_ms: u64) -> Site {
    Site {
        pages,
        latency: Duration::from_millis(latency_ms),
        ..Site::default()
    }
}

#[test]
fn control_commands_reach_a_running_crawl() {
    let job = Job::new(slow_site(80, 60)).pages("1..=60").concurrency(2);
    let child = job.spawn_run();
    job.wait_for_daemon();

    let first = job.status();
    assert_eq!(first["state"], "running", "{first}");
    assert_eq!(first["pid"], child.id());
    assert!(
        wait_until(Duration::from_secs(30), || job.status()["done"].as_u64()
            > first["done"].as_u64()),
        "counts advance"
    );

    let queued = job.exec(&["enqueue", "61..=65"]);
    assert_success(&queued);
    assert!(stdout(&queued).contains("5 new"), "{}", stdout(&queued));
    let rows: serde_json::Value =
        serde_json::from_slice(&job.exec(&["queue", "--json", "--limit", "500"]).stdout).unwrap();
    assert!(
        rows.as_array().unwrap().iter().any(|r| r["page"] == 65),
        "enqueued page listed by the daemon"
    );

    let paused = job.exec(&["pause"]);
    assert_success(&paused);
    assert!(
        stdout(&paused).contains("paused (pid"),
        "{}",
        stdout(&paused)
    );
    assert_eq!(job.status()["state"], "paused");
    // In-flight requests finish; then the server's count stays flat.
    std::thread::sleep(Duration::from_millis(300));
    let while_paused = job.server.stats().total();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        job.server.stats().total(),
        while_paused,
        "no request while paused"
    );

    assert_success(&job.exec(&["resume"]));
    assert!(
        wait_until(Duration::from_secs(10), || job.server.stats().total()
            > while_paused),
        "resumed"
    );
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=65));

    // Without a daemon the same command answers from the store, same shape.
    let direct = job.status();
    assert_eq!(direct["state"], "finished");
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&direct), keys(&first));
    let not_running = job.exec(&["pause"]);
    assert_eq!(
        not_running.status.code(),
        Some(2),
        "{}",
        stderr(&not_running)
    );
}

#[test]
fn socket_permissions_second_run_and_a_stale_socket_after_kill_9() {
    let job = Job::new(slow_site(100, 100)).concurrency(2);
    let mut child = job.spawn_run();
    job.wait_for_daemon();
    let socket = job.state_dir().join("control.sock");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600, "socket is owner-only");
    assert_eq!(
        mode(&job.state_dir()),
        0o700,
        "state directory is owner-only"
    );

    let second = job.exec(&["run"]);
    assert_eq!(second.status.code(), Some(3));
    assert!(
        stderr(&second).contains(&format!("pid {}", child.id())),
        "{}",
        stderr(&second)
    );

    signal(&child, "KILL");
    let _ = child.wait();
    assert!(socket.exists(), "kill -9 leaves the socket behind");
    let status = job.status();
    assert_eq!(
        status["state"], "idle",
        "a stale socket is not mistaken for a daemon: {status}"
    );

    let mut again = job.spawn_run();
    job.wait_for_daemon();
    assert_eq!(
        job.status()["pid"],
        again.id(),
        "the stale socket was replaced"
    );
    signal(&again, "KILL");
    let _ = again.wait();
}

#[test]
fn malformed_and_oversized_requests_get_errors_and_the_crawl_goes_on() {
    use std::io::{BufRead, BufReader, Write};
    let job = Job::new(slow_site(40, 50)).concurrency(2);
    let child = job.spawn_run();
    job.wait_for_daemon();
    let socket = job.state_dir().join("control.sock");
    let ask = |bytes: &[u8]| -> serde_json::Value {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let _ = stream.write_all(bytes);
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
    };
    for request in [
        &b"not json\n"[..],
        b"{\"v\":1,\"cmd\":\"explode\"}\n",
        b"{\"v\":9,\"cmd\":\"status\"}\n",
    ] {
        let reply = ask(request);
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(reply["error"].as_str().unwrap().len() > 5);
    }
    let huge = vec![b'x'; 200 * 1024];
    assert_eq!(ask(&huge)["ok"], false);
    assert_eq!(ask(b"{\"v\":1,\"cmd\":\"status\"}\n")["ok"], true);
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=40));
}

#[test]
fn the_systemd_notify_protocol() {
    let job = Job::new(slow_site(200, 40)).concurrency(2);
    let socket_path = job.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut command = job.command(&["run"]);
    command
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let child = Running::new(command.spawn().unwrap());
    let mut messages: Vec<String> = Vec::new();
    let mut buffer = [0u8; 4096];
    let started = Instant::now();
    let mut terminated = false;
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        if !terminated && started.elapsed() > Duration::from_millis(2500) {
            signal(&child, "TERM");
            terminated = true;
        }
        if messages.iter().any(|m| m == "STOPPING=1") && terminated {
            break;
        }
    }
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);
    let count = |prefix: &str| messages.iter().filter(|m| m.starts_with(prefix)).count();
    assert_eq!(count("READY=1"), 1, "{messages:?}");
    assert!(count("STATUS=") >= 1, "{messages:?}");
    assert!(
        count("WATCHDOG=1") >= 5,
        "a ping every 200 ms: {messages:?}"
    );
    assert!(count("STOPPING=1") >= 1, "{messages:?}");
    let ready = messages.iter().position(|m| m == "READY=1").unwrap();
    assert!(
        messages[..ready].iter().all(|m| !m.starts_with("STATUS=")),
        "READY comes first"
    );
}

#[test]
fn follow_mode_writes_each_entry_once_as_the_listing_shifts() {
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    })
    .concurrency(2)
    .with("key = \"url\"")
    .with("follow = \"300ms\"")
    .with("refresh_pages = 2");
    let child = job.spawn_run();
    job.wait_for_daemon();
    assert!(wait_until(Duration::from_secs(20), || job
        .server
        .stats()
        .requests_for(1)
        >= 1
        && job.status()["pending"] == 0));
    for (round, new_on_top) in [(2, 5), (3, 12)] {
        job.server.update(|site| site.new_on_top = new_on_top);
        assert!(
            wait_until(Duration::from_secs(20), || job
                .server
                .stats()
                .requests_for(2)
                > round),
            "round {round} re-crawled page 2"
        );
    }
    assert!(wait_until(Duration::from_secs(20), || job.status()
        ["pending"]
        == 0));
    signal(&child, "TERM");
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);

    let mut urls: Vec<String> = job.output_bugs().into_iter().map(|b: Bug| b.url).collect();
    let mut expected: Vec<String> = job
        .expected_bugs(1..=3)
        .into_iter()
        .map(|b| b.url)
        .collect();
    expected.extend((0..12).map(|i| wooyun::newer_bug(1, i).url));
    urls.sort();
    expected.sort();
    assert_eq!(urls, expected, "every entry exactly once across rounds");
}

#[test]
fn recrawling_a_page_with_a_key_writes_nothing_twice() {
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    })
    .with("key = \"url\"");
    job.run_ok();
    assert_success(&job.exec(&["enqueue", "1..=2"]));
    let second = job.run_ok();
    assert!(
        stdout(&second).contains("40 items were already in the output (same key)"),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        job.server.stats().requests_for(1),
        2,
        "page 1 was fetched again"
    );
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=3));
}

#[test]
fn sighup_applies_a_new_rate_and_refuses_a_new_pattern() {
    let job = Job::new(Site {
        pages: 400,
        ..Site::default()
    })
    .concurrency(4)
    .with("rate_limit = 4");
    let child = job.spawn_run();
    job.wait_for_daemon();
    std::thread::sleep(Duration::from_millis(1500));
    let slow_total = job.server.stats().total();
    assert!(slow_total <= 8, "{slow_total} requests in 1.5 s at 4/s");

    job.edit_config("rate_limit", "rate_limit = 40");
    signal(&child, "HUP");
    assert!(
        wait_until(Duration::from_secs(15), || job.server.stats().total()
            >= slow_total + 20),
        "the new rate applies"
    );
    let peak = job.server.stats().peak_in_window(Duration::from_secs(1));
    assert!(peak <= 40, "{peak} in a second");

    job.edit_config("pattern", "pattern = '(?P<other>x)'");
    signal(&child, "HUP");
    let before = job.server.stats().total();
    assert!(
        wait_until(Duration::from_secs(15), || job.server.stats().total()
            >= before + 20),
        "the crawl goes on"
    );
    signal(&child, "TERM");
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);
    assert!(
        stderr(&output).contains("kept the running configuration"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("pattern changed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn pages_enqueued_below_a_running_crawl_are_fetched_and_written_once() {
    // The pages in flight have no key of their own until they settle; a
    // rescan of the ranges (after the enqueue) must not hand them out again.
    let job = Job::new(slow_site(600, 40))
        .pages("300..=600")
        .concurrency(8);
    let child = job.spawn_run();
    job.wait_for_daemon();
    assert!(wait_until(Duration::from_secs(15), || job
        .server
        .stats()
        .total()
        >= 40));
    assert_success(&job.exec(&["enqueue", "1..=200"]));
    assert!(
        wait_until(Duration::from_secs(60), || job.status()["pending"] == 0),
        "the crawl ends"
    );
    signal(&child, "TERM");
    assert_success(&finish(child, COMMAND_TIMEOUT));
    let stats = job.server.stats();
    let twice: Vec<u64> = (1..=200)
        .chain(300..=600)
        .filter(|&page| stats.requests_for(page) != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "pages not fetched exactly once: {twice:?}"
    );
    assert_same_items(
        &job.output_bugs(),
        &job.expected_bugs((1..=200).chain(300..=600)),
    );
    assert_eq!(job.status()["done"], 501);
}

#[test]
fn sighup_raises_concurrency_past_the_threads_that_were_working() {
    let job = Job::new(slow_site(300, 150)).concurrency(1);
    let child = job.spawn_run();
    job.wait_for_daemon();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(job.server.stats().peak_concurrency(), 1);

    job.edit_config("concurrency", "concurrency = 6");
    signal(&child, "HUP");
    assert!(
        wait_until(Duration::from_secs(15), || job
            .server
            .stats()
            .peak_concurrency()
            == 6),
        "threads standing by joined in: peak {}",
        job.server.stats().peak_concurrency()
    );
    signal(&child, "TERM");
    assert_success(&finish(child, COMMAND_TIMEOUT));
}

#[test]
fn under_journald_log_lines_carry_priorities_and_no_timestamps() {
    let job = Job::new(Site {
        pages: 3,
        faults: pagecrawl::fixture::Faults {
            not_found: vec![2],
            ..Default::default()
        },
        ..Site::default()
    });
    let mut command = job.command(&["run"]);
    command.env("JOURNAL_STREAM", "8:12345");
    let output = finish(Running::new(command.spawn().unwrap()), COMMAND_TIMEOUT);
    assert_finished_with_failures(&output);
    let log = stderr(&output);
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("<6>crawling ")),
        "info lines are <6>: {log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>page 2 failed: HTTP 404")),
        "warnings are <4>: {log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with('<') && !l.contains("T1") && !l.contains("Z ")),
        "no timestamps: {log}"
    );
}

/// Issue 11.7: a SIGHUP with a value out of its range (ones that crashed the
/// running crawl: a rate of 1e-300, a timeout of 2^64 s) keeps the running
/// configuration and logs one error line; the crawl goes on, a good reload
/// after them applies, and the output is exact.
#[test]
fn a_reload_with_a_bad_value_keeps_the_running_configuration() {
    let job = Job::new(slow_site(300, 5))
        .concurrency(2)
        .with("rate_limit = 5");
    let log_path = job.dir.path().join("run.log");
    let mut command = job.command(&["run"]);
    command.stderr(std::fs::File::create(&log_path).unwrap());
    let child = Running::new(command.spawn().expect("pagecrawl starts"));
    job.wait_for_daemon();
    let reloads = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("SIGHUP:"))
            .count()
    };
    let long_agent = format!("user_agent = \"{}\"", "a".repeat(2000));
    // (key, bad line, the line put back after it)
    let bad = [
        ("rate_limit", "rate_limit = 1e-300", "rate_limit = 5"),
        ("rate_limit", "rate_limit = 1e9", "rate_limit = 5"),
        (
            "request_timeout",
            "request_timeout = \"18446744073709551615s\"",
            "request_timeout = \"30s\"",
        ),
        (
            "connect_timeout",
            "connect_timeout = \"0s\"",
            "connect_timeout = \"10s\"",
        ),
        ("headers", "headers = { X = \"a\\r\\nb\" }", "headers = {}"),
        (
            "user_agent",
            long_agent.as_str(),
            "user_agent = \"pagecrawl-test\"",
        ),
        ("concurrency", "concurrency = 100000", "concurrency = 2"),
    ];
    for (i, (key, line, good)) in bad.iter().enumerate() {
        job.edit_config(key, line);
        signal(&child, "HUP");
        assert!(
            wait_until(Duration::from_secs(60), || reloads() > i),
            "the reload of {line} was logged"
        );
        job.edit_config(key, good);
    }
    let before = job.server.stats().total();
    assert!(
        wait_until(Duration::from_secs(15), || job.server.stats().total()
            >= before + 5),
        "the crawl goes on after the refused reloads"
    );
    let peak = job.server.stats().peak_in_window(Duration::from_secs(1));
    assert!(
        peak <= 20,
        "the running rate limit stayed: {peak} in a second"
    );
    job.edit_config("rate_limit", "rate_limit = 1000");
    signal(&child, "HUP");
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let kept: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("SIGHUP: kept the running configuration"))
        .collect();
    assert_eq!(
        kept.len(),
        bad.len(),
        "one error line per refused reload:\n{log}"
    );
    assert!(
        log.contains("rate limit 1000/s"),
        "the good reload applied:\n{log}"
    );
    assert!(
        !log.contains("panicked") && !log.contains("internal error"),
        "{log}"
    );
    assert!(
        kept[0].contains("key 'rate_limit': 1e-300 is out of range"),
        "{}",
        kept[0]
    );
    assert!(kept[2].contains("key 'request_timeout'"), "{}", kept[2]);
    assert!(
        kept[4].contains("key 'headers'") && !kept[4].contains('\r'),
        "{}",
        kept[4]
    );
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=300));
}

//! The inspection and queue commands on a real state directory.

use pagecrawl::fixture::Site;

use crate::harness::*;

#[test]
fn enqueue_queue_status_and_recrawl() {
    let job = Job::new(Site {
        pages: 30,
        ..Site::default()
    })
    .pages("1..=10");
    job.run_ok();

    let queued = job.exec(&["enqueue", "11..=12", "20..22", "3"]);
    assert_success(&queued);
    assert!(
        stdout(&queued).contains("queued 5 pages (4 new, 1 again)"),
        "{}",
        stdout(&queued)
    );

    let listing = job.exec(&["queue"]);
    assert_success(&listing);
    let text = stdout(&listing);
    for page in ["3", "11", "12", "20", "21"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(page)),
            "page {page} listed: {text}"
        );
    }
    let json = job.exec(&["queue", "--json", "--limit", "2"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["state"], "pending");

    let human = job.exec(&["status"]);
    assert_success(&human);
    assert!(
        stdout(&human).contains("9 done, 5 pending, 0 failed (of 14)"),
        "{}",
        stdout(&human)
    );

    job.run_ok();
    let status = job.status();
    assert_eq!(
        (status["done"].as_u64(), status["pending"].as_u64()),
        (Some(14), Some(0))
    );
    // Page 3 was asked for again, so its items are in the output twice.
    let mut expected = job.expected_bugs((1..=12).chain([3, 20, 21]));
    expected.sort();
    assert_same_items(&job.output_bugs(), &expected);
}

#[test]
fn help_and_usage_errors() {
    let help = finish(pagecrawl(&["--help"]).spawn().unwrap(), COMMAND_TIMEOUT);
    assert_success(&help);
    for command in [
        "run", "status", "queue", "enqueue", "retry", "export", "try", "demo",
    ] {
        assert!(stdout(&help).contains(command), "{command} in --help");
    }
    let typo = finish(pagecrawl(&["stauts"]).spawn().unwrap(), COMMAND_TIMEOUT);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        stderr(&typo).contains("status"),
        "clap suggests the right command: {}",
        stderr(&typo)
    );
}

#[test]
fn the_demo_crawls_the_built_in_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let output = finish(
        pagecrawl(&[
            "demo",
            "--dir",
            dir.path().to_str().unwrap(),
            "--latency-ms",
            "0",
        ])
        .spawn()
        .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_success(&output);
    assert!(
        stdout(&output).contains("295 pages done, 0 failed, 5900 items"),
        "{}",
        stdout(&output)
    );
    let path = dir.path().join("wooyun.state/items.jsonl");
    // Both stages: the links are absolute, each item has its detail
    // fields or, for the mirror's planted 404s, the reason.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut gone = 0;
    for line in text.lines() {
        let item: serde_json::Value = serde_json::from_str(line).unwrap();
        match item.get("detail_error") {
            Some(reason) => {
                assert!(reason.as_str().unwrap().starts_with("HTTP 404"), "{line}");
                gone += 1;
            }
            None => assert!(
                item["vendor"].is_string()
                    && item["tags"].is_array()
                    && item["timeline"].is_array(),
                "{line}"
            ),
        }
    }
    let expected = pagecrawl::fixture::wooyun::expected(295, 20);
    let planted = expected
        .iter()
        .filter(|bug| {
            let share =
                pagecrawl::fixture::Site::demo_mirror(std::time::Duration::ZERO).detail_not_found;
            pagecrawl::fixture::wooyun::detail_not_found(bug, share)
        })
        .count();
    assert!(planted > 0);
    assert_eq!(gone, planted);
    let origin = text
        .split("/bugs/")
        .next()
        .unwrap()
        .rsplit('"')
        .next()
        .unwrap()
        .to_string();
    assert!(origin.starts_with("http://127.0.0.1:"), "{origin}");
    let relative = text.replace(&origin, "");
    std::fs::write(&path, relative).unwrap();
    assert_same_items(&read_jsonl_bugs(&path), &expected);
}

/// The example config's pattern, as the one-shot flag would take it.
fn example_pattern() -> String {
    let example: toml::Table = toml::from_str(include_str!("../../data/wooyun.toml")).unwrap();
    example["pattern"].as_str().unwrap().to_string()
}

/// `run --url --pages --pattern` in a folder: the one-shot command line.
fn one_shot(job: &Job, pages: &str, extra: &[&str]) -> std::process::Command {
    let url = job.server.url_template();
    let pattern = example_pattern();
    let mut command = pagecrawl(&[
        "run",
        "--url",
        &url,
        "--pages",
        pages,
        "--pattern",
        &pattern,
    ]);
    command.args(extra).current_dir(job.dir.path());
    command
}

/// Issue 15.5: a one-shot crawl needs no TOML file; its state is
/// `pagecrawl.state` in the current folder, which the same command resumes
/// and the inspection commands find; `--output` is relative to the folder.
#[test]
fn a_one_shot_crawl_from_flags_needs_no_config_file_and_resumes() {
    let job = Job::new(Site {
        pages: 20,
        ..Site::default()
    });
    let output = finish(
        one_shot(&job, "1..=20", &["--output", "links.jsonl"])
            .spawn()
            .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_success(&output);
    let written = job.dir.path().join("links.jsonl");
    assert_same_items(&read_jsonl_bugs(&written), &job.expected_bugs(1..=20));
    assert!(job.dir.path().join("pagecrawl.state").is_dir());
    assert!(
        !job.dir.path().join("pagecrawl.toml").exists(),
        "no file is written"
    );

    let requests = job.server.stats().total();
    let again = finish(
        one_shot(&job, "1..=20", &["--output", "links.jsonl"])
            .spawn()
            .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_success(&again);
    assert_eq!(
        job.server.stats().total(),
        requests,
        "the same command resumes: nothing to fetch"
    );
    assert_same_items(&read_jsonl_bugs(&written), &job.expected_bugs(1..=20));

    let status = finish(
        pagecrawl(&["status", "--json"])
            .current_dir(job.dir.path())
            .spawn()
            .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_success(&status);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["done"], 20, "status finds the one state here");
}

/// A one-shot crawl's values go through the config file's checks and
/// messages, said about the flags; a job given twice or half is refused.
/// Each is one line, exit 2, and creates no state.
#[test]
fn one_shot_flags_that_conflict_or_are_missing_or_bad_are_one_line_errors() {
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    });
    let url = job.server.url_template();
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec!["run", "--config", "job.toml", "--url", &url],
            "--config job.toml and --url both describe the job",
        ),
        (
            vec!["run", "--url", &url, "--pages", "1..=3"],
            "a one-shot crawl needs --url, --pages and --pattern: add --pattern RE",
        ),
        (vec!["run"], "run needs a job: --config FILE"),
        (
            vec![
                "run",
                "--url",
                &url,
                "--pages",
                "5..1",
                "--pattern",
                "(?P<a>x)",
            ],
            "--pages: '5..1' is an empty page range",
        ),
        (
            vec![
                "run",
                "--url",
                "http://127.0.0.1:1/",
                "--pages",
                "1..=3",
                "--pattern",
                "(?P<a>x)",
            ],
            "--url: 'http://127.0.0.1:1/' has no {page} placeholder",
        ),
    ];
    for (args, expected) in cases {
        let output = finish(
            pagecrawl(&args)
                .current_dir(job.dir.path())
                .spawn()
                .unwrap(),
            COMMAND_TIMEOUT,
        );
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert_eq!(
            text.trim_end().lines().count(),
            1,
            "{args:?}: one line: {text}"
        );
        assert!(text.contains(expected), "{args:?}: {text}");
        assert!(
            !job.dir.path().join("pagecrawl.state").exists(),
            "{args:?}: no state"
        );
    }
}

/// SIGHUP re-reads the config file; a one-shot crawl has none, so it says
/// there is nothing to reload, and neither reads a `pagecrawl.toml` that
/// happens to be in the folder nor stops: the crawl ends exact.
#[test]
fn sighup_on_a_one_shot_crawl_has_nothing_to_reload_and_goes_on() {
    let job = Job::new(Site {
        pages: 200,
        latency: std::time::Duration::from_millis(60),
        ..Site::default()
    });
    std::fs::write(job.dir.path().join("pagecrawl.toml"), "concurrency = 0\n").unwrap();
    let log_path = job.dir.path().join("run.log");
    let mut command = one_shot(&job, "1..=200", &[]);
    command.stderr(std::fs::File::create(&log_path).unwrap());
    let child = Running::new(command.spawn().unwrap());
    let socket = job.dir.path().join("pagecrawl.state").join("control.sock");
    assert!(
        wait_until(std::time::Duration::from_secs(30), || socket.exists()
            && std::os::unix::net::UnixStream::connect(&socket).is_ok()),
        "the crawl's control socket appears"
    );
    signal(&child, "HUP");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        wait_until(std::time::Duration::from_secs(30), || log()
            .contains("SIGHUP: nothing to reload")),
        "the SIGHUP is answered: {}",
        log()
    );
    let output = finish(child, COMMAND_TIMEOUT);
    assert_success(&output);
    assert!(
        !log().contains("kept the running configuration") && !log().contains("SIGHUP: reloaded"),
        "the folder's pagecrawl.toml was not read: {}",
        log()
    );
    let items = read_jsonl_bugs(&job.dir.path().join("pagecrawl.state").join("items.jsonl"));
    assert_same_items(&items, &job.expected_bugs(1..=200));
}

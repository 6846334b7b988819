//! Bad input of every kind: one line naming the problem, the right exit
//! code, no panic, and existing state untouched.

use std::time::Duration;

use pagecrawl::fixture::Site;

use crate::harness::*;

/// Asserts a failed command printed exactly one error line mentioning
/// `needle`, exited with `code`, and did not panic.
fn assert_one_line_error(output: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "panic: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("pagecrawl: error: "), "{err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {err}");
}

const PATTERN: &str = "pattern = '<a href=\"(?P<url>[^\"]+)\">'";

#[test]
fn each_bad_configuration_is_one_line_naming_the_key_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good_url = "url = \"http://127.0.0.1:9/p?page={page}\"";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no {page}",
            format!("url = \"http://127.0.0.1:9/p\"\npages = \"1..=3\"\n{PATTERN}"),
            "'url'",
        ),
        (
            "bad range",
            format!("{good_url}\npages = \"one to three\"\n{PATTERN}"),
            "'pages'",
        ),
        (
            "bad regex",
            format!("{good_url}\npages = \"1..=3\"\npattern = '(?P<url>[unclosed'"),
            "'pattern'",
        ),
        (
            "no named group",
            format!("{good_url}\npages = \"1..=3\"\npattern = '<a>'"),
            "no named group",
        ),
        (
            "concurrency 0",
            format!("{good_url}\npages = \"1..=3\"\n{PATTERN}\nconcurrency = 0"),
            "'concurrency'",
        ),
        (
            "unknown key",
            format!("{good_url}\npages = \"1..=3\"\n{PATTERN}\nconcurency = 4"),
            "concurency",
        ),
        ("missing key", format!("{good_url}\n{PATTERN}"), "pages"),
        ("not TOML", "this is not toml".to_string(), "line 1"),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join(format!("{}.toml", name.replace(' ', "_")));
        std::fs::write(&path, text).unwrap();
        let state = dir.path().join("state");
        let output = finish(
            pagecrawl(&[
                "run",
                "--config",
                path.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ])
            .spawn()
            .unwrap(),
            COMMAND_TIMEOUT,
        );
        assert_one_line_error(&output, 2, needle);
        assert!(!state.exists(), "{name}: no state created for a bad config");
        let tried = finish(
            pagecrawl(&["try", "--config", path.to_str().unwrap(), "--page", "1"])
                .spawn()
                .unwrap(),
            COMMAND_TIMEOUT,
        );
        assert_one_line_error(&tried, 2, needle);
    }
    let missing = finish(
        pagecrawl(&["run", "--config", "/nonexistent/job.toml"])
            .spawn()
            .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_one_line_error(&missing, 2, "/nonexistent/job.toml");
}

#[test]
fn a_second_run_on_a_held_state_directory_is_refused_naming_the_pid() {
    let site = Site {
        pages: 100,
        latency: Duration::from_millis(200),
        ..Site::default()
    };
    let job = Job::new(site).concurrency(2);
    let mut child = job.spawn_run();
    assert!(wait_until(Duration::from_secs(30), || job
        .server
        .stats()
        .total()
        >= 1));
    let second = job.exec(&["run"]);
    assert_one_line_error(
        &second,
        3,
        &format!("in use by a running pagecrawl (pid {})", child.id()),
    );
    signal(&child, "KILL");
    let _ = child.wait();
}

#[test]
fn a_different_job_on_existing_state_is_refused_and_the_state_is_untouched() {
    let job = Job::new(Site {
        pages: 5,
        ..Site::default()
    });
    job.run_ok();
    let output_before = std::fs::read(job.output_path("items.jsonl")).unwrap();
    let status_before = job.status();

    let changed = job.with("format = \"csv\"");
    let refused = changed.exec(&["run"]);
    assert_one_line_error(&refused, 2, "belongs to a different job");
    assert!(
        stderr(&refused).contains("format was 'jsonl', is now 'csv'"),
        "{}",
        stderr(&refused)
    );
    let changed = changed.pages("1..=9");
    let refused = changed.exec(&["run"]);
    assert_one_line_error(&refused, 2, "pages was '1..=5', is now '1..=9'");
    assert_eq!(
        std::fs::read(changed.output_path("items.jsonl")).unwrap(),
        output_before
    );
    assert_eq!(changed.status(), status_before);
}

#[test]
fn unusable_state_directories_and_arguments_are_clear_errors() {
    let job = Job::new(Site {
        pages: 2,
        ..Site::default()
    });
    let file = job.dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let config = job.write_config();
    let under_file = file.join("state");
    let output = finish(
        pagecrawl(&[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            under_file.to_str().unwrap(),
        ])
        .spawn()
        .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_one_line_error(&output, 1, "cannot create the state directory");
    let output = finish(
        pagecrawl(&["status", "--state-dir", job.dir.path().to_str().unwrap()])
            .spawn()
            .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_one_line_error(&output, 2, "no crawl state");
    let output = finish(pagecrawl(&["status"]).spawn().unwrap(), COMMAND_TIMEOUT);
    assert_one_line_error(&output, 2, "--state-dir");

    job.run_ok();
    for bad in ["5..=1", "x", "1.."] {
        let output = job.exec(&["enqueue", bad]);
        assert_one_line_error(&output, 2, bad);
    }
    assert_eq!(job.status()["pending"], 0, "bad enqueues changed nothing");
}

#[test]
fn a_truncated_output_file_is_refused_not_overwritten() {
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    });
    job.run_ok();
    std::fs::write(job.output_path("items.jsonl"), "").unwrap();
    job.exec(&["enqueue", "1"]);
    let output = job.exec(&["run"]);
    assert_one_line_error(
        &output,
        1,
        "was truncated outside pagecrawl; run `pagecrawl repair`",
    );
}

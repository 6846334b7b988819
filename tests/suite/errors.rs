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

/// Runs `pagecrawl run` on a config holding `text`, with a state directory
/// that does not exist yet.
fn run_config(dir: &std::path::Path, name: &str, text: &str) -> (std::process::Output, bool) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let state = dir.join(format!("{name}.state"));
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
    (output, state.exists())
}

/// Issue 11.7: values that panicked (exit 101) or misbehaved after the state
/// directory was made are refused first: one line, exit 2, nothing created.
#[test]
fn every_out_of_range_value_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let base =
        format!("url = \"http://127.0.0.1:9/p?page={{page}}\"\npages = \"1..=3\"\n{PATTERN}");
    let cases = [
        ("rate_limit = 1e-300", "key 'rate_limit': 1e-300 is out of range"),
        (
            "request_timeout = \"18446744073709551615s\"",
            "key 'request_timeout': '18446744073709551615s' is out of range; write a duration from 1ms to 24h",
        ),
        ("connect_timeout = \"0s\"", "key 'connect_timeout': '0s' is out of range"),
        ("headers = { X = \"a\\r\\nb\" }", "key 'headers': the value of 'X', 'a\\r\\nb', holds a character not allowed"),
        ("headers = { \"X\\r\\nY\" = \"a\" }", "key 'headers': 'X\\r\\nY' is not a valid HTTP header name"),
        ("output = \"\"", "key 'output': '' is not a file path"),
        ("output = \".\"", "key 'output': '.' is not a file path"),
        ("max_body_size = \"100GiB\"", "key 'max_body_size'"),
    ];
    for (i, (line, needle)) in cases.iter().enumerate() {
        let (output, created) = run_config(
            dir.path(),
            &format!("case{i}"),
            &format!("{base}\n{line}\n"),
        );
        assert_one_line_error(&output, 2, needle);
        assert!(!created, "{line}: no state directory for a bad config");
    }
    let replaced = [
        (
            "url = \"http://127.0.0.1:9/p?page={page}\"",
            "url = \"http://127.0.0.1:99999/p?page={page}\"",
            "has port 99999; a port is from 1 to 65535",
        ),
        (
            PATTERN,
            "pattern = '(?P<a>x*)'",
            "key 'pattern': can match the empty string",
        ),
        (
            "pages = \"1..=3\"",
            "pages = \"18446744073709551614..\"",
            "is past the largest page number, 1000000000000000",
        ),
        (
            "pages = \"1..=3\"",
            "pages = \"0..=3\"",
            "holds page 0, and pages are numbered from 1; write \"1..=3\"",
        ),
    ];
    for (i, (old, new, needle)) in replaced.iter().enumerate() {
        let (output, created) =
            run_config(dir.path(), &format!("replaced{i}"), &base.replace(old, new));
        assert_one_line_error(&output, 2, needle);
        assert!(!created, "{new}: no state directory for a bad config");
    }
    let agent = format!("{base}\nuser_agent = \"{}\"\n", "a".repeat(50 << 20));
    let (output, created) = run_config(dir.path(), "agent", &agent);
    assert_one_line_error(&output, 2, "is larger than 1024 KiB");
    assert!(!created);
    let agent = format!("{base}\nuser_agent = \"{}\"\n", "a".repeat(2000));
    let (output, created) = run_config(dir.path(), "agent2", &agent);
    assert_one_line_error(&output, 2, "key 'user_agent'");
    assert!(
        stderr(&output).len() < 400,
        "the value is cut short: {}",
        stderr(&output)
    );
    assert!(!created);
    let state = dir.path().join("zero.state");
    let zero = finish(
        pagecrawl(&[
            "run",
            "--config",
            "/dev/zero",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .spawn()
        .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_one_line_error(
        &zero,
        2,
        "cannot read config file /dev/zero: it is not a regular file",
    );
    assert!(!state.exists());
}

/// Issue 15.1: config and range errors say what to write, word for word.
#[test]
fn config_errors_say_what_to_write_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let base =
        format!("url = \"http://127.0.0.1:9/p?page={{page}}\"\npages = \"1..=3\"\n{PATTERN}");
    let cases = [
        (base.clone() + "\nconcurency = 4", "line 4: unknown key 'concurency'; did you mean 'concurrency'?"),
        (base.clone() + "\nrequest_timeout = 30", "line 4: key 'request_timeout' takes a duration in quotes, not the number 30; write request_timeout = \"30s\""),
        (base.replace("\"1..=3\"", "295"), "line 2: key 'pages' takes a page range in quotes, not the number 295; write pages = \"1..=295\""),
        (base.replace("\"1..=3\"", "\"5..1\""), "key 'pages': '5..1' is an empty page range: the end is before the start; write \"1..=5\""),
        (base.lines().skip(1).collect::<Vec<_>>().join("\n"), "key 'url' is missing; add a line such as url = \"https://example.com/list?page={page}\""),
        (
            base.replace(PATTERN, r#"pattern = "<td>(?P<id>\d+)</td>""#),
            r#"line 3: in double quotes a backslash starts a TOML escape (\n, \t...), so a regex's \d or \. is refused; write the value in single quotes, a TOML literal string where \ is an ordinary character: pattern = '<td>(?P<id>\d+)</td>'"#,
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let (output, created) = run_config(dir.path(), &format!("job{i}"), text);
        assert_one_line_error(&output, 2, expected);
        let path = dir.path().join(format!("job{i}.toml"));
        assert_eq!(
            stderr(&output).trim_end(),
            format!("pagecrawl: error: config {}: {expected}", path.display())
        );
        assert!(!created);
    }
    let state = dir.path().join("none.state");
    let enqueue = |range: &str| {
        finish(
            pagecrawl(&["enqueue", range, "--state-dir", state.to_str().unwrap()])
                .spawn()
                .unwrap(),
            COMMAND_TIMEOUT,
        )
    };
    let output = enqueue("abc");
    assert_eq!(
        stderr(&output).trim_end(),
        "pagecrawl: error: 'abc' is not a page range: 'abc' is not a page number; write 1..=295 (end included), 1..296 (end excluded) or 7"
    );
    assert_one_line_error(&output, 2, "abc");
    assert_one_line_error(
        &enqueue("0..=4"),
        2,
        "holds page 0, and pages are numbered from 1; write 1..=4",
    );
    assert_one_line_error(
        &enqueue("9..2"),
        2,
        "the end is before the start; write 2..=9",
    );
    assert_one_line_error(
        &enqueue("3.."),
        2,
        "'3..' is an open range; this command takes closed ranges: write 3..=N",
    );
    assert!(
        !state.exists(),
        "enqueue checks the ranges before touching anything"
    );
}

/// Page numbers given as arguments (`try --page`, `retry PAGE`) are held to
/// the range's limits: page 0 and pages past 10^15 are refused, exit 2.
#[test]
fn page_arguments_are_held_to_the_page_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        format!("url = \"http://127.0.0.1:9/p?page={{page}}\"\npages = \"1..=3\"\n{PATTERN}\n"),
    )
    .unwrap();
    let state = dir.path().join("job.state");
    for args in [
        vec!["try", "--config", config.to_str().unwrap(), "--page", "0"],
        vec![
            "try",
            "--config",
            config.to_str().unwrap(),
            "--page",
            "1000000000000001",
        ],
        vec!["retry", "0", "--state-dir", state.to_str().unwrap()],
    ] {
        let output = finish(pagecrawl(&args).spawn().unwrap(), COMMAND_TIMEOUT);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains("is not in 1..=1000000000000000"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert!(!state.exists());
}

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
    let bugs = read_jsonl_bugs(&dir.path().join("wooyun.state/items.jsonl"));
    assert_same_items(&bugs, &pagecrawl::fixture::wooyun::expected(295, 20));
}

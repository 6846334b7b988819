//! Whole crawls: the 295-page mirror in both formats, charsets, open ranges,
//! export, and `try`.

use std::time::Duration;

use pagecrawl::fixture::{Charset, Site};

use crate::harness::*;

#[test]
fn a_full_crawl_writes_every_item_exactly_once() {
    let job = Job::new(Site::default());
    let output = job.run_ok();
    assert!(
        stdout(&output).contains("finished: 295 pages done, 0 failed, 5900 items"),
        "{}",
        stdout(&output)
    );
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=295));
    let status = job.status();
    assert_eq!(
        (
            status["done"].as_u64(),
            status["pending"].as_u64(),
            status["failed"].as_u64()
        ),
        (Some(295), Some(0), Some(0))
    );
    assert_eq!(status["items"], 5900);
    for page in 1..=295 {
        assert_eq!(
            job.server.stats().requests_for(page),
            1,
            "page {page} fetched once"
        );
    }

    // A second run finds nothing to do and changes nothing.
    let before = std::fs::read(job.output_path("items.jsonl")).unwrap();
    let output = job.run_ok();
    assert!(
        stdout(&output).contains("finished: 0 pages done"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        std::fs::read(job.output_path("items.jsonl")).unwrap(),
        before
    );
}

#[test]
fn pages_are_committed_in_full_groups() {
    // 640 fast pages in groups of 64: about ten commits, each one fsync of
    // the output and one of sled. A feeder that kept saying "waiting for
    // commits" while it was only waiting to hand out work once made the
    // commit stage flush groups of four pages, with an fsync each.
    let site = Site {
        pages: 640,
        ..Site::default()
    };
    let job = Job::new(site)
        .pages("1..=640")
        .concurrency(8)
        .with("commit_every = 64")
        .with("commit_interval = \"1h\"");
    let output = job.run_logged();
    let log = stderr(&output);
    let groups: Vec<u64> = log
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("committed ")? + "committed ".len()..];
            rest.split(' ').next()?.parse().ok()
        })
        .collect();
    assert_eq!(groups.iter().sum::<u64>(), 640, "{log}");
    assert!(
        groups.len() <= 15,
        "{} commit groups for 640 pages (sizes {groups:?})",
        groups.len()
    );
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=640));
}

#[test]
fn a_connection_the_server_closed_is_not_reused() {
    // The server drops a kept-alive connection after 100 ms without a
    // request, as Apache does after its KeepAliveTimeout, and the crawl asks
    // only every 300 ms: each request must find its pooled connection
    // closed and open a new one, never fail on the dead one.
    let site = Site {
        pages: 4,
        idle_timeout: Duration::from_millis(100),
        ..Site::default()
    };
    let job = Job::new(site)
        .pages("1..=4")
        .concurrency(1)
        .with("rate_limit = 3.3");
    let output = job.run_logged();
    let log = stderr(&output);
    assert!(
        stdout(&output).contains("finished: 4 pages done, 0 failed"),
        "{}",
        stdout(&output)
    );
    assert!(!log.contains("retry 1 of"), "no request failed: {log}");
    assert_eq!(job.status()["retries"], 0, "{log}");
    for page in 1..=4 {
        assert_eq!(job.server.stats().requests_for(page), 1, "page {page}");
    }
    assert!(
        job.server.stats().connections() >= 4,
        "a new connection per request ({} in all)",
        job.server.stats().connections()
    );
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=4));
}

#[test]
fn csv_output_and_export_in_both_directions() {
    let job = Job::new(Site::default()).with("format = \"csv\"");
    job.run_ok();
    let read_csv = |bytes: &[u8]| -> Vec<pagecrawl::fixture::wooyun::Bug> {
        let mut reader = csv::Reader::from_reader(bytes);
        assert_eq!(
            reader.headers().unwrap(),
            vec!["page", "date", "url", "title", "author"]
        );
        reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                pagecrawl::fixture::wooyun::Bug {
                    page: r[0].parse().unwrap(),
                    date: r[1].into(),
                    url: r[2].into(),
                    title: r[3].into(),
                    author: r[4].into(),
                }
            })
            .collect()
    };
    let written = std::fs::read(job.output_path("items.csv")).unwrap();
    assert_same_items(&read_csv(&written), &job.expected_bugs(1..=295));

    let exported = job.exec(&[
        "export",
        "--format",
        "jsonl",
        "--output",
        job.dir.path().join("out.jsonl").to_str().unwrap(),
    ]);
    assert_success(&exported);
    assert_same_items(
        &read_jsonl_bugs(&job.dir.path().join("out.jsonl")),
        &job.expected_bugs(1..=295),
    );

    let to_stdout = job.exec(&["export", "--format", "csv"]);
    assert_success(&to_stdout);
    assert_eq!(
        to_stdout.stdout, written,
        "csv to csv is the committed file itself"
    );
}

#[test]
fn gbk_pages_come_out_as_utf8_whether_declared_in_the_header_or_meta() {
    for charset in [Charset::GbkHeader, Charset::GbkMeta] {
        let job = Job::new(Site {
            pages: 12,
            charset,
            ..Site::default()
        });
        job.run_ok();
        let bugs = job.output_bugs();
        assert_same_items(&bugs, &job.expected_bugs(1..=12));
        assert!(
            bugs.iter().any(|b| b.title.contains("存在")),
            "{charset:?}: Chinese titles survive"
        );
    }
}

#[test]
fn an_open_range_stops_after_the_empty_run_and_resumes_after_a_kill() {
    let site = Site {
        pages: 37,
        latency: Duration::from_millis(15),
        ..Site::default()
    };
    let job = Job::new(site)
        .pages("1..")
        .concurrency(3)
        .with("stop_after_empty = 3");
    let mut child = job.spawn_run();
    assert!(
        wait_until(Duration::from_secs(30), || job.server.stats().total() >= 12),
        "crawl started"
    );
    signal(&child, "KILL");
    let _ = child.wait();
    job.run_ok();
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=37));
    let status = job.status();
    assert_eq!(status["open_range_end"], 38, "{status}");
    assert_eq!(status["pending"], 0);
    // The look-ahead past the end is bounded: 2 × concurrency + the run.
    let past_end: u32 = (41..300).map(|p| job.server.stats().requests_for(p)).sum();
    assert!(past_end <= 9, "{past_end} requests past the end");
    // Resuming a finished open range fetches nothing more.
    let total = job.server.stats().total();
    job.run_ok();
    assert_eq!(job.server.stats().total(), total);
}

#[test]
fn an_open_range_also_ends_at_a_run_of_404s() {
    let site = Site {
        pages: 9,
        beyond_not_found: true,
        ..Site::default()
    };
    let job = Job::new(site).pages("1..").concurrency(2);
    job.run_ok();
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=9));
    assert_eq!(job.status()["open_range_end"], 10);
}

/// An open range cannot run past the largest page number: started near it
/// (once `18446744073709551614..` hung with 0 pending), the crawl fetches the
/// last pages there are and ends.
#[test]
fn an_open_range_ends_at_the_largest_page_number() {
    let max = pagecrawl::range::MAX_PAGE;
    let job = Job::new(Site {
        pages: 5,
        ..Site::default()
    })
    .pages(&format!("{}..", max - 1))
    .concurrency(2);
    let output = job.run_ok();
    assert!(
        stdout(&output).contains("finished: 2 pages done"),
        "{}",
        stdout(&output)
    );
    assert_eq!(job.server.stats().requests_for(max - 1), 1);
    assert_eq!(job.server.stats().requests_for(max), 1);
    assert_eq!(
        job.server.stats().requests_for(max + 1),
        0,
        "no page past the largest"
    );
    assert_eq!(job.status()["pending"], 0);
}

#[test]
fn try_prints_one_page_and_touches_no_state() {
    let job = Job::new(Site::default());
    let output = job.exec(&["try", "--page", "3"]);
    assert_success(&output);
    let lines: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .collect();
    assert_eq!(lines.len(), 20);
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["title"], job.expected_bugs([3])[0].title.as_str());
    assert!(stderr(&output).contains("20 items"), "{}", stderr(&output));
    assert!(!job.state_dir().exists(), "try created no state");

    let empty = job.exec(&["try", "--page", "999"]);
    assert_success(&empty);
    assert!(
        stderr(&empty).contains("matched nothing"),
        "{}",
        stderr(&empty)
    );
}

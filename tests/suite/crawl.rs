//! Whole crawls: the 295-page mirror in both formats, charsets, open ranges,
//! export, and `try`.

use std::time::Duration;

use pagecrawl::fixture::{Charset, Fault, Faults, Hostile, Site};

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
        stdout(&output).contains("finished: 295 pages done, 0 failed, 5900 items in")
            && stdout(&output).contains("(no new pages)"),
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
fn a_request_lost_on_a_connection_the_server_just_closed_is_sent_again_for_free() {
    // The server closes each kept-alive connection right after its response
    // (idle_timeout zero), or 10 ms after it, without `Connection: close`:
    // a request sent on the pooled connection as the close crosses it gets
    // no byte back. It is sent again on a fresh connection without spending
    // a retry, so no page fails even with no retries at all.
    let mut problems = Vec::new();
    for (close_after, retries) in [
        (Duration::ZERO, 0),
        (Duration::ZERO, 1),
        (Duration::from_millis(10), 0),
        (Duration::from_millis(10), 1),
    ] {
        let case = format!("closed {close_after:?} after each response, retries = {retries}");
        let site = Site {
            pages: 400,
            per_page: 2,
            padding: 200,
            close_after_response: Some(close_after),
            ..Site::default()
        };
        let job = Job::new(site)
            .concurrency(4)
            .with(&format!("retries = {retries}"));
        job.run_ok();
        let status = job.status();
        let stats = job.server.stats();
        let unanswered = (1..=400).filter(|p| stats.requests_for(*p) != 1).count();
        eprintln!(
            "closing server | {case} | failed {} | retries {} | pages not requested exactly once {unanswered} | connections {} | requests {}",
            status["failed"],
            status["retries"],
            stats.connections(),
            stats.total()
        );
        if status["failed"] != 0 || status["retries"] != 0 || unanswered != 0 {
            problems.push(format!(
                "{case}: {} failed, {} retries, {unanswered} pages not requested exactly once",
                status["failed"], status["retries"]
            ));
            continue;
        }
        assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=400));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_server_that_really_fails_on_a_reused_connection_is_still_retried_then_failed() {
    // The free resend is for a request on a reused connection no byte of
    // whose answer came. A server that closes on every request of page 2
    // gets it at most once more per attempt, and the page still spends its
    // retries and fails; a body cut short on page 3 (some bytes came) is
    // never sent again free, nor is page 1, closed on its first request on
    // a new connection: it spends a retry.
    let faults = Faults {
        scripted: (0..6)
            .map(|attempt| (2, attempt, Fault::Reset))
            .chain((0..3).map(|attempt| (3, attempt, Fault::Truncate)))
            .chain([(1, 0, Fault::Reset)])
            .collect(),
        ..Faults::default()
    };
    let site = Site {
        pages: 4,
        faults,
        ..Site::default()
    };
    let job = Job::new(site).concurrency(1).with("retries = 2");
    let output = job.run_with_failures();
    assert!(
        stdout(&output).contains("finished: 2 pages done, 2 failed"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        job.status()["retries"],
        5,
        "one for page 1, two for each failed page"
    );
    let stats = job.server.stats();
    assert!(
        (3..=6).contains(&stats.requests_for(2)),
        "page 2: {} requests for 3 attempts",
        stats.requests_for(2)
    );
    assert_eq!(stats.requests_for(3), 3, "page 3: one request per attempt");
    assert_eq!(stats.requests_for(1), 2, "page 1: one request per attempt");
    assert_same_items(&job.output_bugs(), &job.expected_bugs([1, 4]));
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
        to_stdout.stdout.len(),
        written.len(),
        "csv to csv is the committed file's bytes, in page order"
    );
    assert_eq!(read_csv(&to_stdout.stdout), job.expected_bugs(1..=295));
}

/// Pages are committed in the order they finish; `export` must still write
/// them in page order, with exactly the items of the file, in both formats.
#[test]
fn export_writes_items_in_page_order_whatever_the_commit_order() {
    let job = Job::new(Site {
        pages: 60,
        jitter: Duration::from_millis(30),
        ..Site::default()
    })
    .concurrency(8);
    job.run_ok();
    let written = job.output_bugs();
    let pages: Vec<u64> = written.iter().map(|b| b.page).collect();
    assert!(
        pages.windows(2).any(|w| w[0] > w[1]),
        "the crawl's own output is out of page order (else this test holds nothing)"
    );
    let expected = job.expected_bugs(1..=60);
    assert_same_items(&written, &expected);

    let jsonl = job.dir.path().join("ordered.jsonl");
    assert_success(&job.exec(&["export", "--output", jsonl.to_str().unwrap()]));
    assert_eq!(
        read_jsonl_bugs(&jsonl),
        expected,
        "JSON Lines export in page order"
    );

    let csv = job.exec(&["export", "--format", "csv"]);
    assert_success(&csv);
    let mut reader = csv::Reader::from_reader(&csv.stdout[..]);
    let exported: Vec<pagecrawl::fixture::wooyun::Bug> = reader
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
        .collect();
    assert_eq!(exported, expected, "CSV export in page order");
}

/// Issue 15.6: `absolute = ["url"]` writes links resolved against the
/// page's URL (`/bugs/x` on `http://127.0.0.1:PORT/wooyun/bugs.php?page=N`
/// is `http://127.0.0.1:PORT/bugs/x`), in both formats; the other fields
/// are as the page wrote them. A name that is no group is exit 2.
#[test]
fn absolute_links_are_resolved_against_the_page_url_in_both_formats() {
    for format in ["jsonl", "csv"] {
        let job = Job::new(Site {
            pages: 6,
            ..Site::default()
        })
        .with("absolute = [\"url\"]")
        .with(&format!("format = \"{format}\""));
        job.run_ok();
        let template = job.server.url_template();
        let origin = &template[..template.find("/wooyun/").unwrap()];
        let expected: Vec<_> = job
            .expected_bugs(1..=6)
            .into_iter()
            .map(|mut bug| {
                assert!(bug.url.starts_with("/bugs/"), "the page writes {}", bug.url);
                bug.url = format!("{origin}{}", bug.url);
                bug
            })
            .collect();
        let written = match format {
            "jsonl" => job.output_bugs(),
            _ => {
                let bytes = std::fs::read(job.output_path("items.csv")).unwrap();
                csv::Reader::from_reader(&bytes[..])
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
            }
        };
        assert_same_items(&written, &expected);
    }

    let job = Job::new(Site {
        pages: 2,
        ..Site::default()
    })
    .with("absolute = [\"link\"]");
    let output = job.exec(&["run"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("key 'absolute': 'link' is not a named group of the pattern (groups: date, url, title, author)"),
        "{text}"
    );
    assert!(!job.state_dir().exists(), "no state for a refused config");
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

    // Past the end: exit 1, as grep for no match, and said so.
    let empty = job.exec(&["try", "--page", "999"]);
    assert_eq!(empty.status.code(), Some(1), "{}", stderr(&empty));
    assert!(
        stderr(&empty).contains(
            "page 1 has 20 items with this pattern: page 999 is probably past the end of the listing"
        ),
        "{}",
        stderr(&empty)
    );
    // No --page: page 1.
    let first = job.exec(&["try"]);
    assert_success(&first);
    assert!(
        stderr(&first).contains("page 1: 20 items"),
        "{}",
        stderr(&first)
    );
}

#[test]
fn try_shows_control_characters_from_the_page_escaped() {
    // A title that retitles the window, clears the screen, and holds a
    // NUL, a C1 CSI and a right-to-left override: the readable view
    // (what a terminal gets; `--pretty` here, to a pipe) shows them as
    // escapes in the field, in the first match and in the no-match hint;
    // the JSON Lines view stays valid JSON with the title as it is.
    let job = Job::new(Site {
        pages: 3,
        hostile: vec![(2, Hostile::ControlCharacters)],
        ..Site::default()
    });
    let raw = |text: &str| {
        text.chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}')
    };
    let escaped = r"\u{1b}]0;pwned\u{7}\u{1b}[2J\0\u{9b}31m\u{202e}";

    let pretty = job.exec(&["try", "--page", "2", "--pretty"]);
    assert_success(&pretty);
    let shown = stdout(&pretty);
    assert!(!raw(&shown), "{shown:?}");
    assert_eq!(
        shown.matches(escaped).count(),
        2,
        "in the title field and in the first match: {shown}"
    );

    let json = job.exec(&["try", "--page", "2", "--json"]);
    assert_success(&json);
    let first: serde_json::Value =
        serde_json::from_str(stdout(&json).lines().next().unwrap()).unwrap();
    let title = first["title"].as_str().unwrap();
    assert!(
        title.starts_with(pagecrawl::fixture::CONTROL_CHARACTERS),
        "{title:?}"
    );
    assert!(
        !stdout(&json).chars().any(|c| c < ' ' && c != '\n'),
        "JSON escapes C0 itself (C1 and U+202E stay, as in the output file)"
    );

    // The same page for a pattern that fails after `pwned`.
    let config = std::fs::read_to_string(job.write_config()).unwrap();
    let config: String = config
        .lines()
        .map(|line| match line.starts_with("pattern =") {
            true => "pattern = 'pwned(?P<never>NEVER)'\n".to_string(),
            false => format!("{line}\n"),
        })
        .collect();
    let path = job.dir.path().join("unmatched.toml");
    std::fs::write(&path, config).unwrap();
    let hinted = finish(
        pagecrawl(&[
            "try",
            "--config",
            path.to_str().unwrap(),
            "--page",
            "2",
            "--pretty",
        ])
        .spawn()
        .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_eq!(hinted.status.code(), Some(1), "nothing matched: exit 1");
    let hints = stderr(&hinted);
    assert!(hints.contains("matched nothing"), "{hints}");
    assert!(!raw(&hints), "{hints:?}");
    assert!(
        hints.contains(r"pwned\u{7}\u{1b}[2J\0\u{9b}31m\u{202e}"),
        "{hints}"
    );
}

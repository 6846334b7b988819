//! Hostile servers, robots.txt, politeness under load, and the durability
//! contract: every case ends in a bounded, logged outcome.

use std::time::{Duration, Instant};

use pagecrawl::fixture::{Fault, Faults, Hostile, Site};
use pagecrawl::store::Store;

use crate::harness::*;

fn failed_reasons(job: &Job) -> Vec<(u64, String)> {
    let queue = job.exec(&["queue", "--state", "failed", "--json"]);
    assert_success(&queue);
    let rows: serde_json::Value = serde_json::from_slice(&queue.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["page"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn hostile_replies_end_in_bounded_logged_outcomes() {
    let other_host = "http://127.0.0.2:9/wooyun/bugs.php?page=6".to_string();
    let site = Site {
        pages: 12,
        hostile: vec![
            (2, Hostile::Huge(3 << 20)),
            (3, Hostile::EndlessChunked),
            (4, Hostile::Drip),
            (5, Hostile::RedirectLoop),
            (6, Hostile::RedirectTo(other_host)),
            (7, Hostile::ContentType("image/png".into())),
            (8, Hostile::InvalidBytes),
            (9, Hostile::GzipBomb(16 << 20)),
        ],
        ..Site::default()
    };
    let job = Job::new(site)
        .concurrency(4)
        .with("max_body_size = \"1MiB\"")
        .with("request_timeout = \"2s\"")
        .with("retries = 1");
    let started = Instant::now();
    let (output, peak_kb) = run_watching_memory(&job);
    assert_finished_with_failures(&output);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "every hostile page ended"
    );
    assert!(
        peak_kb < 150_000,
        "memory stayed bounded: peak {peak_kb} KiB"
    );

    let reasons = failed_reasons(&job);
    let expected = [
        (2, "body too large"),
        (3, "body too large"),
        (4, "timeout"),
        (5, "redirect"),
        (6, "redirect"),
        (7, "content type"),
        (9, "body too large"),
    ];
    assert_eq!(reasons, expected.map(|(p, r)| (p, r.to_string())).to_vec());
    let log = stderr(&output);
    assert!(
        log.contains("page 6 failed: redirect to another host (127.0.0.2:9) refused"),
        "{log}"
    );
    assert!(
        log.contains("page 7 failed: unexpected content type image/png"),
        "{log}"
    );
    assert_eq!(
        job.server.stats().requests_for(2),
        1,
        "a too-large body is not retried"
    );
    assert_eq!(
        job.server.stats().requests_for(4),
        2,
        "a dripping server times out, once retried"
    );
    assert_eq!(
        job.server.stats().requests_for(5),
        6,
        "the first request and 5 redirects"
    );

    let bugs = job.output_bugs();
    let mut expected_bugs = job.expected_bugs([1, 10, 11, 12]);
    let page8: Vec<_> = bugs.iter().filter(|b| b.page == 8).collect();
    assert!(
        page8.len() >= 15,
        "invalid bytes cost at most the item they hit ({} items)",
        page8.len()
    );
    expected_bugs.extend(page8.into_iter().cloned());
    assert_same_items(&bugs, &expected_bugs);
}

#[test]
fn malformed_answers_fail_at_once_with_their_own_reason() {
    // More header lines than the client parses (128), and a gzip body that
    // does not inflate: the same bytes come back on every attempt, so they
    // fail at once, each with its own reason, not as a cut-short body that
    // is retried. 100 extra lines are still read.
    let site = Site {
        pages: 5,
        hostile: vec![
            (2, Hostile::ManyHeaders(200)),
            (3, Hostile::CorruptGzip),
            (4, Hostile::ManyHeaders(100)),
        ],
        ..Site::default()
    };
    let job = Job::new(site).with("retries = 3");
    let output = job.run_with_failures();
    assert_eq!(
        failed_reasons(&job),
        vec![
            (2, "too many headers".to_string()),
            (3, "corrupt gzip body".to_string())
        ]
    );
    let log = stderr(&output);
    assert!(
        log.contains("page 2 failed: too many headers in the response"),
        "{log}"
    );
    assert!(log.contains("page 3 failed: corrupt gzip body: "), "{log}");
    for page in [2, 3] {
        assert_eq!(
            job.server.stats().requests_for(page),
            1,
            "page {page} is not retried"
        );
    }
    assert_eq!(job.status()["retries"], 0);
    assert_same_items(&job.output_bugs(), &job.expected_bugs([1, 4, 5]));
}

#[test]
fn a_redirect_off_http_or_off_the_origin_is_refused_at_once() {
    // A `Location` with another scheme than HTTP(S) is not a path to
    // resolve, and another port of the same host is another origin (another
    // server, maybe another owner): both are refused without a request, and
    // not retried.
    let site = Site {
        pages: 6,
        hostile: vec![
            (2, Hostile::RedirectTo("file:///etc/passwd".into())),
            (3, Hostile::RedirectTo("javascript:alert(1)".into())),
            (4, Hostile::RedirectTo("mailto:someone@example.com".into())),
            (
                5,
                Hostile::RedirectTo("http://127.0.0.1:9/wooyun/bugs.php?page=5".into()),
            ),
        ],
        ..Site::default()
    };
    let job = Job::new(site).with("retries = 3");
    let output = job.run_with_failures();
    let reasons = failed_reasons(&job);
    assert_eq!(
        reasons,
        (2..=5)
            .map(|p| (p, "redirect".to_string()))
            .collect::<Vec<_>>()
    );
    let log = stderr(&output);
    for line in [
        "page 2 failed: redirect to a non-HTTP URL (file:) refused",
        "page 3 failed: redirect to a non-HTTP URL (javascript:) refused",
        "page 4 failed: redirect to a non-HTTP URL (mailto:) refused",
        "page 5 failed: redirect to another host (127.0.0.1:9) refused",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
    for page in 2..=5 {
        assert_eq!(
            job.server.stats().requests_for(page),
            1,
            "page {page}: one request, the redirect, is all"
        );
    }
    assert_eq!(
        job.server.stats().total(),
        6,
        "nothing requested but the pages"
    );
    assert_same_items(&job.output_bugs(), &job.expected_bugs([1, 6]));
}

#[test]
fn robots_txt_is_obeyed_by_default_and_crawl_delay_kept() {
    let robots =
        "User-agent: *\nDisallow: /wooyun/bugs.php?page=3$\nCrawl-delay: 0.25\n".to_string();
    let job = Job::new(Site {
        pages: 10,
        robots: Some(robots.clone()),
        ..Site::default()
    })
    .concurrency(4);
    let output = job.run_with_failures();
    assert_eq!(
        job.server.stats().requests_for(3),
        0,
        "a disallowed page is never requested"
    );
    assert_eq!(failed_reasons(&job), vec![(3, "robots.txt".to_string())]);
    assert!(
        stdout(&output).contains("9 pages done, 1 failed"),
        "{}",
        stdout(&output)
    );
    assert!(
        job.server.stats().peak_in_window(Duration::from_secs(1)) <= 4,
        "Crawl-delay 0.25 s: ≤ 4 a second"
    );
    assert!(job.server.stats().robots_requests() >= 1);

    let ignoring = Job::new(Site {
        pages: 4,
        robots: Some(robots),
        ..Site::default()
    })
    .with("robots = false");
    ignoring.run_ok();
    assert_eq!(ignoring.server.stats().requests_for(3), 1);
    assert_eq!(
        ignoring.server.stats().robots_requests(),
        0,
        "robots = false does not even ask"
    );
}

#[test]
fn politeness_holds_under_load_with_faults_and_retries() {
    let site = Site {
        pages: 300,
        per_page: 5,
        jitter: Duration::from_millis(1500),
        faults: Faults {
            seed: 9,
            server_error: 0.08,
            too_many_requests: 0.04,
            retry_after: 1,
            reset: 0.03,
            faulty_attempts: 2,
            ..Faults::default()
        },
        ..Site::default()
    };
    let job = Job::new(site).concurrency(32).with("rate_limit = 50");
    job.run_ok();
    let stats = job.server.stats();
    assert!(
        stats.total() > 300,
        "retries happened ({} requests)",
        stats.total()
    );
    assert!(
        stats.peak_concurrency() <= 32,
        "peak concurrency {}",
        stats.peak_concurrency()
    );
    let window = stats.peak_in_window(Duration::from_secs(1));
    eprintln!(
        "politeness under load | pages 300 | requests {} (retries included) | peak concurrency {} of 32 | peak {} in a second of 50",
        stats.total(),
        stats.peak_concurrency(),
        window
    );
    assert!(
        window <= 50,
        "{window} requests in one second, retries included"
    );
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=300));
}

#[test]
fn an_unwritable_output_or_a_corrupt_database_is_a_clear_error() {
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    });
    let file = job.dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let blocked = Job::new(Site {
        pages: 3,
        ..Site::default()
    })
    .with(&format!("output = \"{}/items.jsonl\"", file.display()));
    let output = blocked.exec(&["run"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim_end(),
        format!(
            "pagecrawl: error: cannot create the output folder {}: File exists",
            file.display()
        )
    );
    assert!(
        !blocked.state_dir().join("queue.sled").exists()
            || Store::open_existing(&blocked.state_dir())
                .unwrap()
                .job()
                .unwrap()
                .is_none(),
        "no job recorded"
    );

    job.run_ok();
    let before = std::fs::read(job.output_path("items.jsonl")).unwrap();
    let db = job.state_dir().join("queue.sled");
    for entry in std::fs::read_dir(&db).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, vec![0xA5; 4096]).unwrap();
        }
    }
    for command in [&["run"][..], &["status"]] {
        let output = job.exec(command);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {err}");
        assert!(
            err.starts_with("pagecrawl: error: ") && err.lines().count() == 1,
            "{command:?}: {err}"
        );
        assert!(
            err.contains("queue.sled") || err.contains("state"),
            "{command:?}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(job.output_path("items.jsonl")).unwrap(),
        before,
        "output untouched"
    );
}

#[test]
fn dying_right_after_a_commit_loses_nothing_committed() {
    let site = Site {
        pages: 60,
        latency: Duration::from_millis(2),
        ..Site::default()
    };
    let job = Job::new(site).concurrency(4).with("commit_every = 8");
    let mut command = job.command(&["run"]);
    command.env("PAGECRAWL_FAULT_ABORT_AFTER_COMMITS", "3");
    let output = finish(command.spawn().unwrap(), COMMAND_TIMEOUT);
    assert!(!output.status.success(), "the hook aborted the process");

    let (done_pages, items) = {
        let store = Store::open_existing(&job.state_dir()).unwrap();
        let done: Vec<u64> = store
            .list(pagecrawl::store::StateFilter::Done, 1000)
            .unwrap()
            .into_iter()
            .map(|(page, _)| page)
            .collect();
        (done, store.counters().items)
    };
    assert!(!done_pages.is_empty(), "three groups were committed");
    let bugs = job.output_bugs();
    assert_eq!(
        bugs.len() as u64,
        items,
        "the output holds exactly the committed items"
    );
    assert_same_items(&bugs, &job.expected_bugs(done_pages.iter().copied()));

    job.run_ok();
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=60));
}

#[test]
fn a_scripted_fault_on_the_last_attempt_fails_the_page_with_its_reason() {
    let faults = Faults {
        scripted: vec![
            (2, 0, Fault::Truncate),
            (2, 1, Fault::Truncate),
            (2, 2, Fault::Truncate),
        ],
        ..Faults::default()
    };
    let job = Job::new(Site {
        pages: 3,
        faults,
        ..Site::default()
    })
    .with("retries = 2");
    job.run_with_failures();
    assert_eq!(
        failed_reasons(&job),
        vec![(2, "truncated body".to_string())]
    );
}

#[test]
fn a_stage_that_panics_fails_the_run_which_then_resumes() {
    // `PAGECRAWL_FAULT_PANIC` stands in for a bug in one stage. The run must
    // end (not wait forever for the page that thread had), fail with a
    // one-line error naming the thread, and leave a state the next run
    // finishes with every item once.
    for stage in ["feeder", "fetch", "parse", "commit"] {
        let site = Site {
            pages: 40,
            latency: Duration::from_millis(5),
            ..Site::default()
        };
        let job = Job::new(site).concurrency(4).with("commit_every = 4");
        let mut command = job.command(&["run"]);
        command.env("PAGECRAWL_FAULT_PANIC", format!("{stage}:10"));
        let output = finish(command.spawn().unwrap(), COMMAND_TIMEOUT);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{stage}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(&format!("internal error in the {stage}")),
            "{stage}: {}",
            stderr(&output)
        );
        job.run_ok();
        assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=40));
    }
}

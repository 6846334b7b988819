//! Detail pages (`[detail]`): every item written once with its detail
//! fields, across `kill -9` on both stages; one politeness budget; a detail
//! page fetched once however many items link to it; failures kept, listed
//! and retried; memory bounded with 1,000 items on one listing page.

use std::collections::BTreeMap;
use std::time::Duration;

use pagecrawl::fixture::wooyun::{self, Bug, Detail};
use pagecrawl::fixture::{Charset, Faults, Site};
use pagecrawl::store::Store;
use serde_json::{json, Value};

use crate::harness::*;

/// The `detail` line of a job on the mirror: the fixture's patterns.
pub fn detail_line(on_failure: &str) -> String {
    format!(
        "detail = {{ link = \"url\", pattern = '{}', collect = {{ tags = '{}', timeline = '{}' }}, on_failure = \"{on_failure}\" }}",
        wooyun::DETAIL_PATTERN,
        wooyun::TAGS_PATTERN,
        wooyun::TIMELINE_PATTERN
    )
}

/// The item pagecrawl should write for `bug` (its detail page's fields, or
/// the failure's reason when `failed` names one), as a JSON object.
fn expected_item(job: &Job, bug: &Bug, detail: Option<&Detail>) -> Value {
    let mut item = json!({
        "page": bug.page,
        "date": bug.date,
        "url": format!("http://{}{}", job.server.addr(), bug.url),
        "title": bug.title,
        "author": bug.author,
    });
    if let Some(d) = detail {
        let object = item.as_object_mut().unwrap();
        object.insert("vendor".into(), json!(d.vendor));
        object.insert("type".into(), json!(d.kind));
        object.insert("severity".into(), json!(d.severity));
        object.insert("status".into(), json!(d.status));
        object.insert("description".into(), json!(d.description));
        object.insert("tags".into(), json!(d.tags));
        object.insert("timeline".into(), json!(d.timeline));
    }
    item
}

/// The output's items, keyed by URL; fails on an item written twice.
fn output_items(job: &Job) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(job.output_path("items.jsonl")).unwrap_or_default();
    let mut items = BTreeMap::new();
    for line in text.lines() {
        let item: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let url = item["url"].as_str().unwrap().to_string();
        if let Some(first) = items.insert(url.clone(), item.clone()) {
            panic!("{url} written twice:\n  {first}\n  {item}");
        }
    }
    items
}

/// Compares the output with what the generator says, item by item, with a
/// short report of what differs.
fn assert_items(actual: &BTreeMap<String, Value>, expected: &BTreeMap<String, Value>) {
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<&String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let differ: Vec<String> = expected
        .iter()
        .filter_map(|(k, v)| {
            actual
                .get(k)
                .filter(|a| *a != v)
                .map(|a| format!("{k}:\n  got      {a}\n  expected {v}"))
        })
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{} missing (e.g. {:?}), {} unexpected (e.g. {:?}), differing: {}",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>(),
        differ.join("\n")
    );
}

fn expected_items(job: &Job, with_failed: Option<&str>) -> BTreeMap<String, Value> {
    job.site
        .expected_with_details()
        .into_iter()
        .filter_map(|(bug, detail)| {
            let mut item = expected_item(job, &bug, detail.as_ref());
            match (&detail, with_failed) {
                (Some(_), _) => {}
                (None, None) => return None,
                (None, Some(reason)) => {
                    let text = item.as_object_mut().unwrap();
                    text.insert("detail_error".into(), json!(reason));
                }
            }
            Some((item["url"].as_str().unwrap().to_string(), item))
        })
        .collect()
}

#[test]
fn every_item_is_written_once_with_its_detail_fields() {
    let site = Site {
        pages: 12,
        detail_not_found: 0.05,
        gbk_details: 0.3,
        charset: Charset::GbkMeta,
        ..Site::default()
    };
    let job = Job::new(site)
        .concurrency(6)
        .with("retries = 1")
        .with(&detail_line("wait"));
    let output = job.run_with_failures();
    let missing = job
        .site
        .expected_with_details()
        .iter()
        .filter(|(_, d)| d.is_none())
        .count() as u64;
    assert!(missing > 0, "the site has 404 detail pages");
    assert!(
        !stdout(&output).contains("already in the output"),
        "no key, so no item is a duplicate: {}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains(&format!("{missing} detail pages failed for good")),
        "{}",
        stdout(&output)
    );
    assert_items(&output_items(&job), &expected_items(&job, None));
    let status = job.status();
    assert_eq!(status["detail_stage"], true);
    assert_eq!(status["done"], 12);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["detail_pending"], 0);
    assert_eq!(status["detail_failed"], missing);
    assert_eq!(
        status["items_waiting"], missing,
        "their items wait: {status}"
    );
    assert_eq!(status["detail_done"], 12 * 20 - missing);
    assert_eq!(status["failed_for_good"], missing);
    assert_eq!(
        status["items"],
        12 * 20 - missing,
        "items counts what was written"
    );
    assert_eq!(status["detail_errors"][0]["reason"], "HTTP 404");
    // Each detail page was asked for once (no faults here), each listing
    // page once.
    let stats = job.server.stats();
    assert_eq!(stats.detail_requests(), 12 * 20);
    assert_eq!(stats.listing_requests(), 12);

    // The failed ones are listed with their item, and a retry gets them
    // once the site answers.
    let listed = job.exec(&["queue", "--stage", "detail", "--state", "failed", "--json"]);
    assert_success(&listed);
    let rows: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows.len() as u64, missing);
    assert!(rows.iter().all(|r| r["stage"] == "detail"
        && r["reason"] == "HTTP 404"
        && r["listing_page"]
            .as_u64()
            .is_some_and(|p| (1..=12).contains(&p))
        && r["url"].as_str().unwrap().contains("/bugs/wooyun-")));
    job.server.update(|site| site.detail_not_found = 0.0);
    let retried = job.exec(&["retry"]);
    assert_success(&retried);
    assert!(
        stdout(&retried).contains(&format!("{missing} failed detail pages back")),
        "{}",
        stdout(&retried)
    );
    job.run_ok();
    let mut all = expected_items(&job, None);
    let everything = Site {
        detail_not_found: 0.0,
        ..job.site.clone()
    };
    for (bug, detail) in everything.expected_with_details() {
        let item = expected_item(&job, &bug, detail.as_ref());
        all.insert(item["url"].as_str().unwrap().to_string(), item);
    }
    assert_items(&output_items(&job), &all);
    let status = job.status();
    assert_eq!(
        (
            status["items_waiting"].as_u64(),
            status["detail_failed"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let store = Store::open_existing(&job.state_dir()).unwrap();
    assert_eq!(store.recount().unwrap(), store.counters());
}

#[test]
fn with_on_failure_write_an_item_is_written_with_its_reason() {
    let site = Site {
        pages: 5,
        detail_not_found: 0.1,
        ..Site::default()
    };
    let job = Job::new(site)
        .with("retries = 0")
        .with(&detail_line("write"));
    job.run_with_failures();
    let items = output_items(&job);
    let failed: Vec<&Value> = items
        .values()
        .filter(|i| i.get("detail_error").is_some())
        .collect();
    assert!(!failed.is_empty());
    let reason = failed[0]["detail_error"].as_str().unwrap().to_string();
    assert!(reason.starts_with("HTTP 404 from http://"), "{reason}");
    for item in &failed {
        assert!(item.get("vendor").is_none(), "{item}");
    }
    // Every reason names its own page; compare without it.
    let mut normalised = items.clone();
    for item in normalised.values_mut() {
        if let Some(reason) = item.get_mut("detail_error") {
            *reason = json!("failed");
        }
    }
    assert_items(&normalised, &expected_items(&job, Some("failed")));
    let status = job.status();
    assert_eq!(status["items_waiting"], 0);
    assert_eq!(
        status["items"], 100,
        "items counts those written with their reason"
    );

    // Re-crawled (no key: every item again), each item's detail page is
    // known: done ones are merged, failed ones written with their reason,
    // at once and without a request.
    assert_success(&job.exec(&["enqueue", "1..=5"]));
    job.run_with_failures();
    let text = std::fs::read_to_string(job.output_path("items.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 200);
    let failures = text
        .lines()
        .filter(|l| l.contains("\"detail_error\""))
        .count();
    assert_eq!(failures, 2 * failed.len());
    let status = job.status();
    assert_eq!(
        (status["items"].as_u64(), status["items_waiting"].as_u64()),
        (Some(200), Some(0))
    );
    assert_eq!(
        job.server.stats().detail_requests(),
        100,
        "no detail page fetched twice"
    );
}

#[test]
fn a_detail_page_linked_twice_is_fetched_once_and_follow_fetches_only_new_items_details() {
    // Newer reports push the listing down: page 2's first item was page
    // 1's last. With key = "url" it is written once and its detail page
    // fetched once; a follow round fetches only the new items' details.
    let site = Site {
        pages: 4,
        ..Site::default()
    };
    let job = Job::new(site)
        .with("key = \"url\"")
        .with("follow = \"300ms\"")
        .with(&detail_line("wait"));
    let child = job.spawn_run();
    let stats = || job.server.stats();
    assert!(wait_until(Duration::from_secs(60), || stats()
        .detail_requests()
        >= 80));
    // Round 2 comes with three new reports on top.
    job.server.update(|site| site.new_on_top = 3);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let status = job.status();
            status["detail_done"].as_u64() >= Some(83) && status["items_waiting"] == 0
        }),
        "{}",
        job.status()
    );
    signal(&child, "TERM");
    let output = finish(child, Duration::from_secs(30));
    assert_success(&output);
    let counts = stats().detail_request_counts();
    assert!(
        counts.values().all(|&n| n == 1),
        "a detail page fetched twice: {counts:?}"
    );
    assert_eq!(counts.len(), 83, "80 reports and the 3 new ones");
    let items = output_items(&job);
    assert_eq!(items.len(), 83);
    let status = job.status();
    assert_eq!(status["detail_done"], 83);
    assert_eq!(status["items_waiting"], 0);
}

#[test]
fn detail_requests_share_the_concurrency_cap_and_the_rate_limit() {
    let site = Site {
        pages: 6,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(20),
        slow_details: 0.2,
        detail_slow_by: Duration::from_millis(80),
        ..Site::default()
    };
    let job = Job::new(site)
        .concurrency(5)
        .with("rate_limit = 40.0")
        .with(&detail_line("wait"));
    job.run_ok();
    let stats = job.server.stats();
    assert_eq!(stats.listing_requests() + stats.detail_requests(), 6 + 120);
    assert!(
        stats.peak_concurrency() <= 5,
        "peak {}",
        stats.peak_concurrency()
    );
    let per_second = stats.peak_in_window(Duration::from_secs(1));
    assert!(per_second <= 40, "{per_second} requests in one second");
    assert_eq!(output_items(&job).len(), 120);
}

#[test]
fn a_detail_link_to_another_host_is_refused_unless_its_host_is_listed() {
    // The listing server names its detail pages on another server.
    let details = pagecrawl::fixture::Server::start(Site::default()).unwrap();
    let site = Site {
        pages: 2,
        link_prefix: format!("http://localhost:{}", details.addr().port()),
        ..Site::default()
    };
    let pattern = r#"pattern = '<a href="(?P<url>[^"]+)" title="(?P<title>[^"]*)"'"#;
    let job = Job::new(site.clone())
        .pattern(pattern)
        .with("retries = 0")
        .with(&detail_line("wait"));
    job.run_with_failures();
    assert_eq!(
        details.stats().detail_requests(),
        0,
        "nothing asked of the other host"
    );
    let status = job.status();
    assert_eq!(status["detail_failed"], 40);
    assert_eq!(status["detail_errors"][0]["reason"], "other host");
    assert_eq!(status["items_waiting"], 40);

    let listed = Job::new(site)
        .pattern(pattern)
        .with(&detail_line("wait").replace("on_failure", "hosts = [\"localhost\"], on_failure"));
    listed.run_ok();
    assert_eq!(details.stats().detail_requests(), 40);
    assert_eq!(output_items(&listed).len(), 40);
}

#[test]
fn a_thousand_items_on_one_listing_page_keep_memory_bounded() {
    let site = Site {
        pages: 2,
        per_page: 1000,
        padding: 0,
        ..Site::default()
    };
    let job = Job::new(site).concurrency(16).with(&detail_line("wait"));
    let (output, peak_kb) = run_watching_memory(&job);
    let finished = job.server.stats().detail_requests() >= 2000;
    assert!(finished);
    assert_success(&output);
    assert_eq!(output_items(&job).len(), 2000);
    eprintln!(
        "1,000 items per listing page: peak RSS {} MiB",
        peak_kb / 1024
    );
    assert!(
        peak_kb > 0 && peak_kb < 128 * 1024,
        "peak RSS {peak_kb} KiB"
    );
}

#[test]
fn a_changed_detail_table_is_another_job() {
    let site = Site {
        pages: 1,
        ..Site::default()
    };
    let job = Job::new(site).with(&detail_line("wait"));
    job.run_ok();
    let other = job.with(&detail_line("write"));
    let output = other.exec(&["run"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("[detail] was"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
}

#[test]
fn try_shows_items_merged_with_their_detail_pages() {
    let job = Job::new(Site::default()).with(&detail_line("wait"));
    let output = job.exec(&["try", "--page", "1", "--json"]);
    assert_success(&output);
    let items: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 3);
    let expected: Vec<Value> = job
        .site
        .expected_with_details()
        .into_iter()
        .take(3)
        .map(|(bug, detail)| expected_item(&job, &bug, detail.as_ref()))
        .collect();
    assert_eq!(items, expected);

    let broken = job.with(&detail_line("wait").replace("wybug_type", "wybug_kind"));
    let output = broken.exec(&["try", "--page", "1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("the detail pattern matched nothing"),
        "{}",
        stderr(&output)
    );
}

/// The two-stage crash campaign: every fault kind on listing and detail
/// pages, SIGKILLs at seeded random moments, then every item exactly once
/// with its detail fields, compared with the generator.
///
/// `PAGECRAWL_CAMPAIGN=full` (CI) runs 60 listing pages (1,200 detail
/// pages) with ≥ 20 kills; the default is a quick one.
#[test]
fn two_stage_crash_campaign() {
    let full = std::env::var("PAGECRAWL_CAMPAIGN").is_ok_and(|v| v == "full");
    let (pages, kills_wanted) = if full { (60, 20) } else { (20, 6) };
    let seed = campaign_seed();
    eprintln!("two-stage crash campaign: seed {seed} (PAGECRAWL_CAMPAIGN_SEED={seed}), {pages} listing pages");
    let site = Site {
        pages,
        padding: 300,
        latency: Duration::from_millis(4),
        charset: Charset::GbkMeta,
        gbk_details: 0.3,
        detail_not_found: 0.02,
        faults: Faults {
            seed,
            server_error: 0.05,
            too_many_requests: 0.02,
            retry_after: 1,
            reset: 0.03,
            hang: 0.005,
            hang_for: Duration::from_millis(1200),
            truncate: 0.03,
            faulty_attempts: 2,
            ..Faults::default()
        },
        ..Site::default()
    };
    let job = Job::new(site)
        .concurrency(8)
        .with("request_timeout = \"1s\"")
        .with("commit_every = 16")
        .with(&detail_line("wait"));
    let kills = kill_at_random_moments(&job, seed, kills_wanted, 500);
    job.run_with_failures();
    assert_items(&output_items(&job), &expected_items(&job, None));
    let status = job.status();
    let missing = job
        .site
        .expected_with_details()
        .iter()
        .filter(|(_, d)| d.is_none())
        .count() as u64;
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["detail_pending"], 0, "{status}");
    assert_eq!(status["detail_failed"], missing, "{status}");
    assert_eq!(status["items_waiting"], missing, "{status}");
    let store = Store::open_existing(&job.state_dir()).unwrap();
    assert_eq!(
        store.recount().unwrap(),
        store.counters(),
        "counters equal a recount"
    );
    let stats = job.server.stats();
    eprintln!(
        "two-stage crash campaign | listing pages {pages} | detail pages {} | requests {} | kills {kills} | items missing 0 | duplicated 0 | peak concurrency {}",
        pages * 20,
        stats.total(),
        stats.peak_concurrency()
    );
    assert!(
        kills >= kills_wanted,
        "only {kills} kills landed (seed {seed})"
    );
}

#[test]
fn hostile_detail_pages_end_in_bounded_logged_outcomes() {
    use pagecrawl::fixture::Hostile;
    let bugs = wooyun::expected(2, 20);
    let path = |i: usize| bugs[i].url.clone();
    let hostile = vec![
        (path(1), Hostile::Huge(3 << 20)),
        (path(2), Hostile::EndlessChunked),
        (path(3), Hostile::Drip),
        (path(4), Hostile::RedirectLoop),
        (
            path(5),
            Hostile::RedirectTo("http://127.0.0.2:9/bugs/x".into()),
        ),
        (path(6), Hostile::ContentType("image/png".into())),
        (path(7), Hostile::GzipBomb(16 << 20)),
        (path(8), Hostile::ControlCharacters),
    ];
    let site = Site {
        pages: 2,
        hostile_details: hostile,
        ..Site::default()
    };
    let job = Job::new(site)
        .concurrency(4)
        .with("max_body_size = \"1MiB\"")
        .with("request_timeout = \"2s\"")
        .with("retries = 1")
        .with(&detail_line("wait"));
    let started = std::time::Instant::now();
    let (output, peak_kb) = run_watching_memory(&job);
    let ended = started.elapsed() < Duration::from_secs(60);
    assert!(ended, "every hostile detail page ended");
    assert_finished_with_failures(&output);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        peak_kb < 150_000,
        "memory stayed bounded: peak {peak_kb} KiB"
    );
    let queue = job.exec(&["queue", "--stage", "detail", "--state", "failed", "--json"]);
    assert_success(&queue);
    let rows: Vec<Value> = serde_json::from_slice(&queue.stdout).unwrap();
    let origin = format!("http://{}", job.server.addr());
    let reasons: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                r["url"].as_str().unwrap().replace(&origin, ""),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        (1, "body too large"),
        (2, "body too large"),
        (3, "timeout"),
        (4, "redirect"),
        (5, "redirect"),
        (6, "content type"),
        (7, "body too large"),
    ]
    .into_iter()
    .map(|(i, r)| (path(i), r.to_string()))
    .collect();
    assert_eq!(reasons, expected);
    assert!(
        stderr(&output).contains("redirect to another host (127.0.0.2:9) refused"),
        "{}",
        stderr(&output)
    );
    // The control characters reach the output only JSON-escaped, and the
    // other 33 items are there with their details.
    let items = output_items(&job);
    assert_eq!(items.len(), 40 - 7);
    let odd = &items[&format!("{origin}{}", path(8))];
    assert!(odd["vendor"].as_str().unwrap().contains('\u{1b}'), "{odd}");
    let raw = std::fs::read(job.output_path("items.jsonl")).unwrap();
    assert!(!raw.contains(&0x1b), "an ESC byte in the output");
}

#[test]
fn an_open_range_ends_on_empty_listing_pages_whatever_the_detail_pages_do() {
    let site = Site {
        pages: 5,
        detail_not_found: 0.2,
        ..Site::default()
    };
    let job = Job::new(site)
        .pages("1..")
        .with("retries = 0")
        .with(&detail_line("write"));
    job.run_with_failures();
    let status = job.status();
    assert_eq!(status["open_range_last_page"], 5, "{status}");
    assert_eq!(
        status["detail_done"].as_u64().unwrap() + status["detail_failed"].as_u64().unwrap(),
        100
    );
    assert_eq!(output_items(&job).len(), 100);
    // 404 detail pages did not count as empty listing pages: the range
    // went on to its three empty listing pages (and at most the
    // look-ahead, concurrency 8, past them).
    let listing = job.server.stats().listing_requests();
    assert!(
        (5 + 3..=5 + 3 + 8).contains(&listing),
        "{listing} listing requests"
    );
}

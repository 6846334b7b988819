//! Metrics for an operator: `pagecrawl metrics` over the control socket and
//! `GET /metrics` on `metrics_listen`, checked against `status --json`
//! while a real crawl runs, and the address checks that keep an
//! unauthenticated endpoint off the network unless asked.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pagecrawl::fixture::{Fault, Faults, Site};

use crate::harness::*;

/// Every family a running crawl exposes, with its OpenMetrics type.
const FAMILIES: &[(&str, &str)] = &[
    ("pagecrawl_pages_done", "gauge"),
    ("pagecrawl_pages_pending", "gauge"),
    ("pagecrawl_pages_failed", "gauge"),
    ("pagecrawl_pages_failed_by_reason", "gauge"),
    ("pagecrawl_items_written", "counter"),
    ("pagecrawl_retries", "counter"),
    ("pagecrawl_last_commit_timestamp_seconds", "gauge"),
    ("pagecrawl_running", "gauge"),
    ("pagecrawl_paused", "gauge"),
    ("pagecrawl_http_requests", "counter"),
    ("pagecrawl_fetch_errors", "counter"),
    ("pagecrawl_fetched_bytes", "counter"),
    ("pagecrawl_fetch_duration_seconds", "histogram"),
    ("pagecrawl_requests_in_flight", "gauge"),
    ("pagecrawl_rate_limit_wait_seconds", "counter"),
];

/// The families that need a running crawl.
const LIVE_ONLY: &[&str] = &[
    "pagecrawl_paused",
    "pagecrawl_http_requests",
    "pagecrawl_fetch_errors",
    "pagecrawl_fetched_bytes",
    "pagecrawl_fetch_duration_seconds",
    "pagecrawl_requests_in_flight",
    "pagecrawl_rate_limit_wait_seconds",
];

/// A metrics text, parsed: each family's type, and each sample's value.
#[derive(Debug)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    /// Parses the text format strictly: every line is a `# HELP`, `# TYPE`,
    /// `# UNIT` or `# EOF` line or a `name{labels} value` sample whose name
    /// belongs to a declared family; it ends with `# EOF`.
    fn parse(text: &str) -> Exposition {
        assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}"));
            let name = series.split('{').next().unwrap_or_default();
            assert!(
                types.keys().any(|family| name.starts_with(family.as_str())),
                "sample {name} of no declared family"
            );
            samples.insert(series.to_string(), value);
        }
        Exposition { types, samples }
    }

    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series} in {:?}", self.samples))
    }

    /// The sum of a family's samples named `name` (whatever their labels).
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, value)| value)
            .sum()
    }

    fn assert_families(&self, families: &[(&str, &str)]) {
        for (name, kind) in families {
            assert_eq!(
                self.types.get(*name).map(String::as_str),
                Some(*kind),
                "family {name} ({kind}) in {:?}",
                self.types
            );
        }
    }
}

/// A port free on loopback now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// 300 pages, two of them 404 (failed for good, reason `HTTP 404`), and a
/// 500 on the first attempt of a few others (retries).
fn site() -> Site {
    Site {
        pages: 300,
        latency: Duration::from_millis(10),
        faults: Faults {
            not_found: vec![3, 7],
            scripted: (20..=24)
                .map(|page| (page, 0, Fault::ServerError))
                .collect(),
            ..Faults::default()
        },
        ..Site::default()
    }
}

fn get_metrics(port: u16) -> (String, String) {
    let mut response = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .expect("GET /metrics answers");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.body_mut().read_to_string().expect("a text body");
    (content_type, body)
}

/// Pages done, pending and failed as `status --json` has them.
fn counts(status: &serde_json::Value) -> [u64; 3] {
    ["done", "pending", "failed"].map(|key| status[key].as_u64().expect(key))
}

#[test]
fn metrics_of_a_running_crawl_name_every_family_and_agree_with_status() {
    let port = free_port();
    let job = Job::new(site())
        .concurrency(2)
        // Slow enough to be caught running, and to wait on the limit.
        .with("rate_limit = 40")
        .with(&format!("metrics_listen = \"127.0.0.1:{port}\""));
    let run = job.spawn_run();
    job.wait_for_daemon();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let status = job.status();
            status["done"].as_u64() >= Some(40) && status["failed"].as_u64() == Some(2)
        }),
        "the crawl did not get going"
    );
    assert_success(&job.exec(&["pause"]));
    // Paused: the requests in flight (and one that was waiting for the rate
    // limit) finish and commit, then nothing moves. Read status, metrics,
    // status until the two statuses agree and nothing is in flight.
    let mut agreed = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let before = job.status();
            let output = job.exec(&["metrics"]);
            assert_success(&output);
            assert_eq!(stderr(&output), "", "no note while a crawl runs");
            let (content_type, served) = get_metrics(port);
            let after = job.status();
            let idle =
                |text: &str| Exposition::parse(text).value("pagecrawl_requests_in_flight") == 0.0;
            let stable =
                counts(&before) == counts(&after) && idle(&stdout(&output)) && idle(&served);
            if stable {
                agreed = Some((after, stdout(&output), content_type, served));
            }
            stable
        }),
        "the paused crawl kept moving"
    );
    let (status, text, content_type, served) = agreed.unwrap();
    for text in [&text, &served] {
        let metrics = Exposition::parse(text);
        metrics.assert_families(FAMILIES);
        let [done, pending, failed] = counts(&status);
        assert_eq!(metrics.value("pagecrawl_pages_done"), done as f64);
        assert_eq!(metrics.value("pagecrawl_pages_pending"), pending as f64);
        assert_eq!(metrics.value("pagecrawl_pages_failed"), failed as f64);
        assert_eq!(
            metrics.sum("pagecrawl_pages_failed_by_reason"),
            failed as f64
        );
        assert_eq!(
            metrics.value("pagecrawl_pages_failed_by_reason{reason=\"HTTP 404\"}"),
            2.0
        );
        assert_eq!(
            metrics.value("pagecrawl_items_written_total"),
            status["items"].as_u64().unwrap() as f64
        );
        assert_eq!(
            metrics.value("pagecrawl_retries_total"),
            status["retries"].as_u64().unwrap() as f64
        );
        assert!(metrics.value("pagecrawl_retries_total") >= 5.0);
        assert!(metrics.value("pagecrawl_http_requests_total{code=\"200\"}") >= done as f64);
        assert!(metrics.value("pagecrawl_http_requests_total{code=\"500\"}") >= 5.0);
        assert!(metrics.value("pagecrawl_http_requests_total{code=\"404\"}") >= 2.0);
        assert!(metrics.value("pagecrawl_fetch_errors_total{reason=\"HTTP 500\"}") >= 5.0);
        assert!(metrics.value("pagecrawl_fetched_bytes_total") >= 2000.0 * done as f64);
        assert!(metrics.value("pagecrawl_fetch_duration_seconds_count") >= done as f64);
        assert!(
            metrics.value("pagecrawl_fetch_duration_seconds_sum") >= 0.01 * done as f64 * 0.9,
            "each fetch took at least the fixture's 10 ms"
        );
        assert_eq!(metrics.value("pagecrawl_requests_in_flight"), 0.0);
        assert!(metrics.value("pagecrawl_rate_limit_wait_seconds_total") > 0.0);
        assert_eq!(metrics.value("pagecrawl_running"), 1.0);
        assert_eq!(metrics.value("pagecrawl_paused"), 1.0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let last_commit = metrics.value("pagecrawl_last_commit_timestamp_seconds");
        assert!(
            last_commit <= now.as_secs_f64() + 1.0 && last_commit > now.as_secs_f64() - 60.0,
            "last commit {last_commit}, now {now:?}"
        );
    }
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );

    assert_success(&job.exec(&["resume"]));
    assert_finished_with_failures(&finish(run, COMMAND_TIMEOUT));
    // With no crawl running: the state's counters, and a note saying what
    // needs a running crawl.
    let output = job.exec(&["metrics"]);
    assert_success(&output);
    assert!(
        stderr(&output).contains("no crawl is running") && stderr(&output).contains("latency"),
        "{}",
        stderr(&output)
    );
    let metrics = Exposition::parse(&stdout(&output));
    let store_families: Vec<(&str, &str)> = FAMILIES
        .iter()
        .filter(|(name, _)| !LIVE_ONLY.contains(name))
        .copied()
        .collect();
    metrics.assert_families(&store_families);
    for name in LIVE_ONLY {
        assert!(!metrics.types.contains_key(*name), "{name} with no crawl");
    }
    let status = job.status();
    assert_eq!(metrics.value("pagecrawl_pages_done"), 298.0);
    assert_eq!(metrics.value("pagecrawl_pages_pending"), 0.0);
    assert_eq!(
        metrics.value("pagecrawl_items_written_total"),
        status["items"].as_u64().unwrap() as f64
    );
    assert_eq!(metrics.value("pagecrawl_running"), 0.0);
    assert!(
        ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .is_err(),
        "metrics_listen closes with the crawl"
    );
}

#[test]
fn a_metrics_address_other_hosts_can_reach_needs_consent() {
    let port = free_port();
    for (listen, wanted) in [
        (format!("0.0.0.0:{port}"), "metrics_allow_remote = true"),
        (format!("localhost:{port}"), "not an IP address and port"),
    ] {
        let job = Job::new(Site {
            pages: 3,
            ..Site::default()
        })
        .with(&format!("metrics_listen = \"{listen}\""));
        let output = job.exec(&["run"]);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains("metrics_listen") && message.contains(wanted),
            "{message}"
        );
        assert_eq!(message.trim().lines().count(), 1, "{message}");
        assert!(!job.state_dir().exists(), "nothing created");
        assert_eq!(job.server.stats().total(), 0, "nothing fetched");
    }
}

#[test]
fn a_metrics_port_already_taken_stops_the_run_before_anything_changes() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    })
    .with(&format!("metrics_listen = \"127.0.0.1:{port}\""));
    let output = job.exec(&["run"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("cannot serve metrics on 127.0.0.1:{port}")),
        "{message}"
    );
    assert_eq!(message.trim().lines().count(), 1, "{message}");
    assert!(!job.state_dir().exists(), "nothing created");
    assert_eq!(job.server.stats().total(), 0, "nothing fetched");
}

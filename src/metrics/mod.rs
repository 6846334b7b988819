//! Metrics for an operator, in the Prometheus text format (OpenMetrics, as
//! the official client `prometheus-client` writes it): what `pagecrawl
//! metrics` prints and `GET /metrics` on `metrics_listen` serves.
//!
//! Two kinds of numbers, kept apart:
//! - **From the store** (the state's counters, the same as `status`):
//!   pages done, pending and failed (and failed by reason), items written, retries,
//!   the last commit's time. They survive restarts, and can be read with
//!   no crawl running.
//! - **Live** ([`Live`], kept by the fetch threads of the running crawl):
//!   requests by HTTP status, fetch errors, bytes fetched, fetch latency,
//!   requests in flight, time waited on the rate limit. They start at zero
//!   with each run, as Prometheus counters do with each process.
//!
//! The hot path only touches atomics (and the histogram's short lock once
//! a page); a scrape builds a fresh registry around clones of the live
//! metrics (clones share their values) and the store's counters as they
//! are at that moment, so nothing has to be reset between scrapes.

mod listener;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use anyhow::Result;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::store::Store;
pub use listener::{listen_address, MetricsListener};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the fetch latency buckets, in seconds: from a page served
/// on loopback to the default 30 s request timeout.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Labels of a request count: the HTTP status of each response.
type CodeLabel = [(&'static str, u16); 1];
/// Labels of a failure count: the short reason (`HTTP 503`, `timeout`...).
type KindLabel = [(&'static str, String); 1];

/// The running crawl's own counters, kept by the fetch threads.
#[derive(Debug)]
pub struct Live {
    /// Every response the server sent, redirects included, by status.
    requests: Family<CodeLabel, Counter>,
    /// Fetch attempts that failed, by reason (a status, a timeout...).
    fetch_errors: Family<KindLabel, Counter>,
    /// Body bytes of the pages fetched, as read (after decompression).
    fetched_bytes: Counter,
    /// Time of each page's fetch, from the request to the end of its body.
    fetch_duration: Histogram,
    /// Requests being made now.
    in_flight: Gauge<i64, AtomicI64>,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            requests: Family::default(),
            fetch_errors: Family::default(),
            fetched_bytes: Counter::default(),
            fetch_duration: Histogram::new(LATENCY_BUCKETS),
            in_flight: Gauge::default(),
        }
    }
}

impl Live {
    /// A response with this status came (each hop of a redirect counts).
    pub fn response(&self, status: u16) {
        self.requests.get_or_create(&[("code", status)]).inc();
    }

    /// A page's fetch ended after `took`: its body of `bytes` was read, or
    /// it failed (`error` is the reason).
    pub fn fetched(&self, took: Duration, bytes: Option<u64>, error: Option<String>) {
        self.fetch_duration.observe(took.as_secs_f64());
        if let Some(bytes) = bytes {
            self.fetched_bytes.inc_by(bytes);
        }
        if let Some(kind) = error {
            self.fetch_errors.get_or_create(&[("reason", kind)]).inc();
        }
    }

    /// A request starts; the guard marks its end when dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }
}

/// One request in flight (see [`Live::in_flight`]).
pub struct InFlight<'a>(&'a Gauge<i64, AtomicI64>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the running crawl adds to the store's numbers.
pub struct Running<'a> {
    pub live: &'a Live,
    /// Time fetch threads spent waiting for the rate limit, all together.
    pub rate_limit_wait: Duration,
    pub paused: bool,
}

/// The counts a job keeps (in a state directory or a store database),
/// which the metrics text gives whether or not a crawl runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kept {
    pub done: u64,
    pub pending: u64,
    pub failed: u64,
    pub detail_done: u64,
    pub detail_pending: u64,
    pub detail_failed: u64,
    pub waiting: u64,
    pub items: u64,
    pub retries: u64,
    pub last_commit_ms: u64,
    /// Failed listing pages by reason.
    pub reasons: Vec<(String, u64)>,
}

impl Kept {
    /// A state directory's durable counts, as `status` gives them.
    pub fn of(store: &Store) -> Result<Kept> {
        let c = store.committed_counters();
        Ok(Kept {
            done: c.done,
            pending: c.pending,
            failed: c.failed,
            detail_done: c.detail_done,
            detail_pending: c.detail_pending,
            detail_failed: c.detail_failed,
            waiting: c.waiting,
            items: c.items,
            retries: c.retries,
            last_commit_ms: c.last_commit_ms,
            reasons: store.reasons()?,
        })
    }

    /// A job's counts as `status` shows them (a job in a store database).
    pub fn of_status(s: &crate::control::ops::Status) -> Kept {
        Kept {
            done: s.done,
            pending: s.pending,
            failed: s.failed,
            detail_done: s.detail_done,
            detail_pending: s.detail_pending,
            detail_failed: s.detail_failed,
            waiting: s.items_waiting,
            items: s.items,
            retries: s.retries,
            last_commit_ms: 0,
            reasons: s
                .errors
                .iter()
                .map(|e| (e.reason.clone(), e.pages))
                .collect(),
        }
    }
}

/// The metrics text: the store's counters, and the running crawl's when
/// there is one (`running`).
pub fn render(store: &Store, running: Option<Running<'_>>) -> Result<String> {
    render_kept(&Kept::of(store)?, running)
}

/// [`render`] from counts already read.
pub fn render_kept(counters: &Kept, running: Option<Running<'_>>) -> Result<String> {
    let mut registry = Registry::with_prefix("pagecrawl");
    let gauge = |value: u64| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(
        "pages_done",
        "Pages done (their items are in the output), as `status` counts them",
        gauge(counters.done),
    );
    registry.register(
        "pages_pending",
        "Pages waiting to be fetched (or fetched again)",
        gauge(counters.pending),
    );
    registry.register(
        "pages_failed",
        "Pages failed for good after their retries",
        gauge(counters.failed),
    );
    registry.register(
        "detail_pages_done",
        "Detail pages done ([detail]; 0 without it)",
        gauge(counters.detail_done),
    );
    registry.register(
        "detail_pages_pending",
        "Detail pages waiting to be fetched (or fetched again)",
        gauge(counters.detail_pending),
    );
    registry.register(
        "detail_pages_failed",
        "Detail pages failed for good",
        gauge(counters.detail_failed),
    );
    registry.register(
        "items_waiting",
        "Items recorded with their listing page, waiting for their detail page",
        gauge(counters.waiting),
    );
    let failed = Family::<KindLabel, Gauge>::default();
    for (reason, pages) in &counters.reasons {
        failed
            .get_or_create(&[("reason", reason.clone())])
            .set(i64::try_from(*pages).unwrap_or(i64::MAX));
    }
    // Written only when a page failed: an empty family has no lines.
    registry.register(
        "pages_failed_by_reason",
        "Pages failed for good after their retries, by reason (as `status` lists them)",
        failed,
    );
    registry.register(
        "items_written",
        "Items written to the output",
        ConstCounter::new(counters.items),
    );
    registry.register(
        "retries",
        "Failed attempts that were rescheduled",
        ConstCounter::new(counters.retries),
    );
    registry.register_with_unit(
        "last_commit_timestamp",
        "When the last checkpoint was committed, in Unix time (0: never)",
        Unit::Seconds,
        ConstGauge::new(counters.last_commit_ms as f64 / 1000.0),
    );
    registry.register(
        "running",
        "1 while a crawl runs on this state, 0 when these numbers were read from the store",
        ConstGauge::new(i64::from(running.is_some())),
    );
    if let Some(running) = running {
        let live = running.live;
        registry.register(
            "paused",
            "1 while the crawl is paused (`pagecrawl pause`)",
            ConstGauge::new(i64::from(running.paused)),
        );
        registry.register(
            "http_requests",
            "Responses from the site by HTTP status, redirects included, since the crawl started",
            live.requests.clone(),
        );
        registry.register(
            "fetch_errors",
            "Fetch attempts that failed, by reason, since the crawl started",
            live.fetch_errors.clone(),
        );
        registry.register_with_unit(
            "fetched",
            "Body bytes of the pages fetched since the crawl started",
            Unit::Bytes,
            live.fetched_bytes.clone(),
        );
        registry.register_with_unit(
            "fetch_duration",
            "Time to fetch a page, from its request to the end of its body",
            Unit::Seconds,
            live.fetch_duration.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being made now",
            live.in_flight.clone(),
        );
        registry.register_with_unit(
            "rate_limit_wait",
            "Time the fetch threads spent waiting for the rate limit, added up",
            Unit::Seconds,
            ConstCounter::new(running.rate_limit_wait.as_secs_f64()),
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// A nanosecond total that threads add to (the rate limit's waits).
#[derive(Debug, Default)]
pub struct Waited(AtomicU64);

impl Waited {
    pub fn add(&self, waited: Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.0
            .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of a text, as `name{labels}` → value.
    fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (name, value) = line.rsplit_once(' ').unwrap();
                (name.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn live_counts_responses_errors_bytes_latency_and_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let live = Live::default();
        live.response(200);
        live.response(200);
        live.response(503);
        live.fetched(Duration::from_millis(20), Some(1500), None);
        live.fetched(Duration::from_secs(2), None, Some("HTTP 503".into()));
        let request = live.in_flight();
        let text = render(
            &store,
            Some(Running {
                live: &live,
                rate_limit_wait: Duration::from_millis(1500),
                paused: false,
            }),
        )
        .unwrap();
        let parsed = samples(&text);
        let value = |name: &str| parsed.get(name).copied();
        assert_eq!(
            value("pagecrawl_http_requests_total{code=\"200\"}"),
            Some(2.0)
        );
        assert_eq!(
            value("pagecrawl_http_requests_total{code=\"503\"}"),
            Some(1.0)
        );
        assert_eq!(
            value("pagecrawl_fetch_errors_total{reason=\"HTTP 503\"}"),
            Some(1.0)
        );
        assert_eq!(value("pagecrawl_fetched_bytes_total"), Some(1500.0));
        assert_eq!(value("pagecrawl_fetch_duration_seconds_count"), Some(2.0));
        assert_eq!(
            value("pagecrawl_fetch_duration_seconds_bucket{le=\"0.025\"}"),
            Some(1.0)
        );
        assert_eq!(
            value("pagecrawl_fetch_duration_seconds_bucket{le=\"2.5\"}"),
            Some(2.0)
        );
        assert_eq!(value("pagecrawl_requests_in_flight"), Some(1.0));
        assert_eq!(value("pagecrawl_rate_limit_wait_seconds_total"), Some(1.5));
        assert_eq!(value("pagecrawl_running"), Some(1.0));
        drop(request);
        let quiet = render(
            &store,
            Some(Running {
                live: &live,
                rate_limit_wait: Duration::ZERO,
                paused: true,
            }),
        )
        .unwrap();
        let quiet = self::samples(&quiet);
        assert_eq!(quiet.get("pagecrawl_requests_in_flight"), Some(&0.0));
        assert_eq!(quiet.get("pagecrawl_paused"), Some(&1.0));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn without_a_crawl_only_the_store_families_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let text = render(&store, None).unwrap();
        let samples = samples(&text);
        for name in [
            "pagecrawl_pages_done",
            "pagecrawl_pages_pending",
            "pagecrawl_pages_failed",
            "pagecrawl_items_written_total",
            "pagecrawl_retries_total",
            "pagecrawl_last_commit_timestamp_seconds",
            "pagecrawl_detail_pages_done",
            "pagecrawl_detail_pages_pending",
            "pagecrawl_detail_pages_failed",
            "pagecrawl_items_waiting",
        ] {
            assert!(samples.contains_key(name), "{name} in {text}");
        }
        assert_eq!(samples.get("pagecrawl_running"), Some(&0.0));
        assert!(!text.contains("http_requests"), "{text}");
        assert!(!text.contains("by_reason"), "no reason, no lines: {text}");
    }

    #[test]
    fn waits_add_up() {
        let waited = Waited::default();
        waited.add(Duration::from_millis(250));
        waited.add(Duration::from_millis(750));
        assert_eq!(waited.total(), Duration::from_secs(1));
    }
}

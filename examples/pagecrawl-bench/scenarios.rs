//! The scenarios pagecrawl runs: latency-bound, CPU-bound (one crawl each,
//! checked against the server's count), two-stage (listing pages and each
//! item's detail page, the output checked item by item) and scale (a
//! million pages pending: `enqueue`, start-up, `status`).

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pagecrawl::fixture::wooyun::PER_PAGE;

use crate::bench::Bench;
use crate::detail_pages::{self, DETAIL_LINE};
use crate::job::{
    count_lines, fresh_dir, pagecrawl_command, parse_detail_summary, parse_summary, write_config,
};
use crate::measure::{children_cpu, measure, terminate, Usage};
use crate::report::Row;
use crate::server::unix_ns;
use crate::server_process::{ServerProcess, ServerStats};
use crate::{Engine, ScenarioName};

/// A crawl scenario.
#[derive(Debug, Clone, Copy)]
pub struct Crawl {
    pub name: ScenarioName,
    pub label: &'static str,
    pub pages: u64,
    pub concurrency: usize,
    pub latency_ms: u64,
    /// Two stages: every listed item's detail page is fetched too.
    pub detail: bool,
}

impl Crawl {
    /// Items the listing pages hold (and, with `detail`, detail pages).
    pub fn items(&self) -> u64 {
        self.pages * PER_PAGE as u64
    }

    /// Requests a complete crawl makes: listing pages, and detail pages.
    pub fn requests(&self) -> u64 {
        self.pages + if self.detail { self.items() } else { 0 }
    }
}

/// The scale scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub enqueue: u64,
    pub crawl: u64,
    pub concurrency: usize,
}

/// The two-stage scenarios' labels (the targets look their rows up).
pub const TWO_STAGE_LATENCY: &str = "two-stage c=16";
pub const TWO_STAGE_CPU: &str = "two-stage CPU-bound";
/// The one-stage CPU-bound scenario's label.
pub const ONE_STAGE_CPU: &str = "CPU-bound";

pub fn scenarios(quick: bool) -> (Vec<Crawl>, Scale) {
    let (latency_pages, cpu_pages) = if quick { (640, 500) } else { (2_000, 20_000) };
    // The WooYun mirror's 295 listing pages (5,900 detail pages); for the
    // CPU-bound two-stage run, about as many requests as the one-stage one.
    let (detail_pages, detail_cpu_pages) = if quick { (32, 25) } else { (295, 1_000) };
    let crawls = vec![
        Crawl {
            name: ScenarioName::Latency16,
            label: "latency-bound c=16",
            pages: latency_pages,
            concurrency: 16,
            latency_ms: 50,
            detail: false,
        },
        Crawl {
            name: ScenarioName::Latency64,
            label: "latency-bound c=64",
            pages: latency_pages,
            concurrency: 64,
            latency_ms: 50,
            detail: false,
        },
        Crawl {
            name: ScenarioName::Cpu,
            label: ONE_STAGE_CPU,
            pages: cpu_pages,
            concurrency: 8,
            latency_ms: 0,
            detail: false,
        },
        Crawl {
            name: ScenarioName::Detail16,
            label: TWO_STAGE_LATENCY,
            pages: detail_pages,
            concurrency: 16,
            latency_ms: 50,
            detail: true,
        },
        Crawl {
            name: ScenarioName::DetailCpu,
            label: TWO_STAGE_CPU,
            pages: detail_cpu_pages,
            concurrency: 8,
            latency_ms: 0,
            detail: true,
        },
    ];
    let scale = if quick {
        Scale {
            enqueue: 20_000,
            crawl: 1_000,
            concurrency: 8,
        }
    } else {
        Scale {
            enqueue: 1_000_000,
            crawl: 10_000,
            concurrency: 8,
        }
    };
    (crawls, scale)
}

pub fn server_check(stats: Option<ServerStats>, expected: u64) -> String {
    match stats {
        Some(s) => format!(
            "{} pages{}{}{}, peak {} at once",
            s.requests,
            if s.repeats > 0 || s.requests != expected {
                format!(" ({} repeated)", s.repeats)
            } else {
                String::new()
            },
            if s.other > 0 {
                format!(" + {} other", s.other)
            } else {
                String::new()
            },
            if s.detail_requests > 0 {
                format!(
                    " + {} detail pages ({} repeated)",
                    s.detail_requests, s.detail_repeats
                )
            } else {
                String::new()
            },
            s.peak
        ),
        None => "(fixture: no stats)".into(),
    }
}

/// Where the wall time went: start-up until the first page request, and
/// from the last page sent until the client exited.
pub fn timing(stats: Option<ServerStats>, spawned_ns: u64, wall: Duration) -> String {
    match stats {
        Some(s) if s.first_ns > 0 && s.last_ns > 0 => {
            let ended_ns = spawned_ns + wall.as_nanos() as u64;
            format!(
                "; first page +{:.0} ms, exit {:.0} ms after the last",
                s.first_ns.saturating_sub(spawned_ns) as f64 / 1e6,
                ended_ns.saturating_sub(s.last_ns) as f64 / 1e6
            )
        }
        _ => String::new(),
    }
}

pub fn crawl_once(ctx: &Bench, server: &ServerProcess, crawl: &Crawl, run: usize) -> Result<Row> {
    let dir = fresh_dir(ctx, &format!("{:?}-{run}", crawl.name).to_lowercase())?;
    let config = write_config(
        ctx,
        &dir,
        &server.url_template(),
        &format!("1..={}", crawl.pages),
        crawl.concurrency,
        if crawl.detail { &[DETAIL_LINE] } else { &[] },
    )?;
    let state = dir.join("state");
    let mut command = pagecrawl_command(ctx, &["run", "--config"]);
    command.arg(&config).arg("--state-dir").arg(&state);
    let spawned_ns = unix_ns();
    let usage = measure(command, &dir.join("run"), ctx.limit, |_, _| {})?;
    let stats = server.stats();
    let items = count_lines(&state.join("items.jsonl"));
    let (done, failed, reported_items) = parse_summary(&usage.stdout).unwrap_or_default();
    let expected_items = crawl.items();
    let mut check = server_check(stats, crawl.pages) + &timing(stats, spawned_ns, usage.wall);
    let mut ok = usage.ok() && done == crawl.pages && failed == 0 && items == expected_items;
    if crawl.detail {
        // Every detail page done, none failed, no item left waiting, and
        // every item written once with its detail page's fields.
        let (detail_done, detail_pending, detail_failed, waiting) =
            parse_detail_summary(&usage.stdout).unwrap_or((0, 0, 0, u64::MAX));
        let verdict = detail_pages::check_output(&state.join("items.jsonl"), expected_items);
        ok &= detail_done == expected_items
            && detail_pending == 0
            && detail_failed == 0
            && waiting == 0
            && verdict.is_ok();
        check = match verdict {
            Ok(()) => format!("{expected_items} items with their detail fields; {check}"),
            Err(problem) => format!(
                "{problem}; detail pages {detail_done} done, {detail_pending} pending, {detail_failed} failed, {waiting} items waiting; {check}"
            ),
        };
    }
    if !ok {
        check = format!(
            "FAILED: {}; {done} done, {failed} failed, {items} items in the output (want {expected_items}, summary says {reported_items}); {check}",
            if usage.stdout.starts_with("stopped:") {
                "stopped by a signal the benchmark did not send".into()
            } else {
                usage.outcome()
            }
        );
    }
    if !ctx.verbose && ok {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(Row {
        scenario: crawl.label.to_string(),
        client: "pagecrawl".into(),
        pages: crawl.requests(),
        concurrency: crawl.concurrency,
        latency_ms: crawl.latency_ms,
        wall: usage.wall,
        cpu: usage.cpu,
        sys: usage.sys,
        peak_rss_kib: usage.peak_rss_kib,
        check,
        ok,
    })
}

/// One run of the scale scenario.
#[derive(Debug, Clone)]
pub struct ScaleResult {
    pub enqueue: Usage,
    pub enqueue_ok: bool,
    /// From spawning `run` to the server seeing the first request.
    pub first_request: Option<Duration>,
    pub crawl: Row,
    /// `status` after the crawl, one per call.
    pub status: Vec<Usage>,
    /// `status` while the crawl runs.
    pub live_status: Option<Usage>,
    pub pending_after: Option<u64>,
}

pub fn scale_once(ctx: &Bench, scale: &Scale, run: usize) -> Result<ScaleResult> {
    if ctx.engine != Engine::Fast {
        bail!("the scale scenario needs the fast server's request log (--server fast)");
    }
    let dir = fresh_dir(ctx, &format!("scale-{run}"))?;
    let server = ServerProcess::start(Engine::Fast, 0, scale.enqueue, ctx.padding)?;
    // A state exists only after a first `run`: one page of a one-page job.
    let config = write_config(
        ctx,
        &dir,
        &server.url_template(),
        "1",
        scale.concurrency,
        &[],
    )?;
    let state = dir.join("state");
    let state_arg = state.to_string_lossy().to_string();
    let config_arg = config.to_string_lossy().to_string();
    let setup = measure(
        pagecrawl_command(
            ctx,
            &["run", "--config", &config_arg, "--state-dir", &state_arg],
        ),
        &dir.join("setup"),
        ctx.limit,
        |_, _| {},
    )?;
    if !setup.ok() {
        bail!("the scale setup run failed: {}", setup.describe_failure());
    }
    let range = format!("1..={}", scale.enqueue);
    let enqueue = measure(
        pagecrawl_command(ctx, &["enqueue", "--state-dir", &state_arg, &range]),
        &dir.join("enqueue"),
        ctx.limit,
        |_, _| {},
    )?;
    let enqueue_ok = enqueue.ok()
        && enqueue
            .stdout
            .contains(&format!("queued {} pages", scale.enqueue));
    if !enqueue_ok {
        bail!(
            "enqueue failed: {} ({})",
            enqueue.describe_failure(),
            enqueue.stdout.trim()
        );
    }

    server.reset();
    let spawned_ns = unix_ns();
    let mut terminated = false;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    // CPU of the helpers started while the crawl runs (kill(1), the live
    // `status`): they are reaped children too, and are subtracted.
    let mut helpers_cpu = Duration::ZERO;
    let mut live_status: Option<Usage> = None;
    let mut crawl_usage = measure(
        pagecrawl_command(
            ctx,
            &["run", "--config", &config_arg, "--state-dir", &state_arg],
        ),
        &dir.join("crawl"),
        ctx.limit,
        |pid, _| {
            if terminated || last_check.elapsed() < Duration::from_millis(5) {
                return;
            }
            last_check = Instant::now();
            let Some(stats) = server.stats() else { return };
            let before = children_cpu().unwrap_or_default();
            if stats.requests >= scale.crawl {
                terminate(pid);
                terminated = true;
            } else if live_status.is_none() && stats.requests >= scale.crawl / 2 {
                // `status` while `run` holds the state: answered by the
                // running daemon over its control socket, where it has one.
                live_status = measure(
                    pagecrawl_command(ctx, &["status", "--state-dir", &state_arg]),
                    &dir.join("status-live"),
                    ctx.limit,
                    |_, _| {},
                )
                .ok();
            }
            helpers_cpu += children_cpu().unwrap_or_default().saturating_sub(before);
        },
    )?;
    crawl_usage.cpu = crawl_usage.cpu.saturating_sub(helpers_cpu);
    let stats = server.stats();
    let first_request = stats
        .filter(|s| s.first_ns > 0)
        .map(|s| Duration::from_nanos(s.first_ns.saturating_sub(spawned_ns)));
    let mut status = Vec::new();
    for i in 0..5 {
        status.push(measure(
            pagecrawl_command(ctx, &["status", "--state-dir", &state_arg]),
            &dir.join(format!("status-{i}")),
            ctx.limit,
            |_, _| {},
        )?);
    }
    let json = measure(
        pagecrawl_command(ctx, &["status", "--json", "--state-dir", &state_arg]),
        &dir.join("status-json"),
        ctx.limit,
        |_, _| {},
    )?;
    let value: Option<serde_json::Value> = serde_json::from_str(&json.stdout).ok();
    let field = |name: &str| value.as_ref()?.get(name)?.as_u64();
    // `enqueue` put the setup run's page back to pending: every done page
    // was crawled by this run.
    let done = field("done").unwrap_or(0);
    let pending_after = field("pending");
    let _ = server.stop();
    let ok = crawl_usage.status.is_some_and(|s| s.success())
        && !crawl_usage.timed_out
        && terminated
        && done >= scale.crawl;
    let mut check = server_check(stats, scale.crawl);
    if !ok {
        check = format!("FAILED: {}; {done} done; {check}", crawl_usage.outcome());
    }
    if !ctx.verbose && ok {
        let _ = fs::remove_dir_all(&dir);
    }
    let crawl = Row {
        scenario: format!("scale: first {} of {} pending", scale.crawl, scale.enqueue),
        client: "pagecrawl".into(),
        pages: done,
        concurrency: scale.concurrency,
        latency_ms: 0,
        wall: crawl_usage.wall,
        cpu: crawl_usage.cpu,
        sys: crawl_usage.sys,
        peak_rss_kib: crawl_usage.peak_rss_kib,
        check,
        ok,
    };
    Ok(ScaleResult {
        enqueue,
        enqueue_ok,
        first_request,
        crawl,
        status,
        live_status,
        pending_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_stage_scenarios_count_both_stages_requests() {
        let (crawls, _) = scenarios(false);
        let find = |name| crawls.iter().find(|c| c.name == name).unwrap();
        let detail = find(ScenarioName::Detail16);
        assert_eq!(
            (detail.pages, detail.items(), detail.requests()),
            (295, 5_900, 6_195)
        );
        assert_eq!((detail.concurrency, detail.latency_ms), (16, 50));
        let cpu = find(ScenarioName::DetailCpu);
        assert!(cpu.detail && cpu.latency_ms == 0);
        assert_eq!(find(ScenarioName::Cpu).requests(), 20_000);
        let (quick, _) = scenarios(true);
        assert!(quick.iter().all(|c| c.requests() < 1_000));
    }
}

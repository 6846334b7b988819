//! The tables: one row per scenario and client, medians over runs, the
//! scale table, and the targets of issue 5 met or not.

use std::fs;
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::bench::Bench;
use crate::scenarios::{Scale, ScaleResult, ONE_STAGE_CPU, TWO_STAGE_CPU, TWO_STAGE_LATENCY};
use crate::BenchArgs;

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub client: String,
    pub pages: u64,
    pub concurrency: usize,
    pub latency_ms: u64,
    pub wall: Duration,
    pub cpu: Duration,
    pub sys: Duration,
    pub peak_rss_kib: u64,
    /// What the server (or the client) says, e.g. repeats or mismatches.
    pub check: String,
    pub ok: bool,
}

impl Row {
    pub fn pages_per_s(&self) -> f64 {
        self.pages as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The ideal wall time over the real one; `None` without latency. For
    /// a two-stage row `pages` counts both stages' requests, so the ideal is
    /// (listing + detail pages) · L / C.
    pub fn efficiency(&self) -> Option<f64> {
        (self.latency_ms > 0).then(|| {
            ideal_seconds(self.pages, self.latency_ms, self.concurrency)
                / self.wall.as_secs_f64().max(1e-9)
        })
    }

    pub fn cpu_ms_per_page(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.pages.max(1) as f64
    }
}

/// The shortest a crawl of `requests` can take when each one waits
/// `latency_ms` on the server and `concurrency` run at once: N · L / C.
pub fn ideal_seconds(requests: u64, latency_ms: u64, concurrency: usize) -> f64 {
    requests as f64 * latency_ms as f64 / 1000.0 / concurrency.max(1) as f64
}

/// The two-stage run's CPU per request over the one-stage run's CPU per
/// page (issue 12's target: at most 1.2).
pub fn cpu_ratio(two_stage: &Row, one_stage: &Row) -> f64 {
    two_stage.cpu_ms_per_page() / one_stage.cpu_ms_per_page().max(1e-9)
}

/// [`cpu_ratio`] of each two-stage run over the one-stage run of the same
/// round (runs go round the scenarios), for the rounds where both succeeded.
pub fn paired_ratios(two_stage: &[Row], one_stage: &[Row]) -> Vec<f64> {
    two_stage
        .iter()
        .zip(one_stage)
        .filter(|(two, one)| two.ok && one.ok)
        .map(|(two, one)| cpu_ratio(two, one))
        .collect()
}

pub fn median<T: Copy + PartialOrd>(values: &mut [T]) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// A row whose wall, CPU and RSS are the medians of `runs` (each column on
/// its own).
pub fn median_row(all: &[Row]) -> Row {
    let good: Vec<&Row> = all.iter().filter(|r| r.ok).collect();
    let failed = all.len() - good.len();
    let runs: Vec<&Row> = if good.is_empty() {
        all.iter().collect()
    } else {
        good
    };
    let mut row = runs[runs.len() / 2].clone();
    row.wall = median(&mut runs.iter().map(|r| r.wall).collect::<Vec<_>>());
    row.cpu = median(&mut runs.iter().map(|r| r.cpu).collect::<Vec<_>>());
    row.sys = median(&mut runs.iter().map(|r| r.sys).collect::<Vec<_>>());
    row.pages = median(&mut runs.iter().map(|r| r.pages).collect::<Vec<_>>());
    row.peak_rss_kib = median(&mut runs.iter().map(|r| r.peak_rss_kib).collect::<Vec<_>>());
    if failed > 0 && row.ok {
        row.check = format!(
            "{}; {failed} of {} runs failed and are left out",
            row.check,
            all.len()
        );
    }
    row
}

pub fn print_header(ctx: &Bench, args: &BenchArgs, repeat: usize) {
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
    let version = Command::new(&ctx.pagecrawl)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".into(), |s| s.trim().to_string());
    println!(
        "pagecrawl-bench{}: {} ({version}, tree at {}), server {:?}, pages of ~{} bytes, {} CPUs, load {}, runs {repeat}",
        if args.quick { " --quick" } else { "" },
        ctx.pagecrawl.display(),
        commit,
        ctx.engine,
        args.page_bytes,
        thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    if !ctx.config_lines.is_empty() {
        println!("extra config: {}", ctx.config_lines.join("; "));
    }
}

/// KiB as MiB for a table; "n/a" when the process ended before the first
/// reading.
pub fn mib(kib: u64) -> String {
    if kib == 0 {
        "n/a".into()
    } else {
        format!("{:.1}", kib as f64 / 1024.0)
    }
}

pub fn print_row_line(row: &Row, tag: &str) {
    println!(
        "  {tag}: {} / {}: {} pages in {:.2} s ({:.0} pages/s{}), CPU {:.3} ms/page ({:.0}% sys), peak RSS {} MiB; {}",
        row.scenario,
        row.client,
        row.pages,
        row.wall.as_secs_f64(),
        row.pages_per_s(),
        row.efficiency()
            .map_or(String::new(), |e| format!(", efficiency {e:.2}")),
        row.cpu_ms_per_page(),
        100.0 * row.sys.as_secs_f64() / row.cpu.as_secs_f64().max(1e-9),
        mib(row.peak_rss_kib),
        row.check
    );
}

pub fn print_table(rows: &[Row]) {
    println!("| scenario | client | pages | conc. | latency | wall s | pages/s | efficiency | CPU ms/page | of it sys | peak RSS MiB | server saw |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} ms | {:.2} | {:.0} | {} | {:.3} | {:.0}% | {} | {} |",
            row.scenario,
            row.client,
            row.pages,
            row.concurrency,
            row.latency_ms,
            row.wall.as_secs_f64(),
            row.pages_per_s(),
            row.efficiency().map_or("–".into(), |e| format!("{e:.2}")),
            row.cpu_ms_per_page(),
            100.0 * row.sys.as_secs_f64() / row.cpu.as_secs_f64().max(1e-9),
            mib(row.peak_rss_kib),
            row.check
        );
    }
}

pub fn print_scale(scale: &Scale, results: &[ScaleResult]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut enqueue: Vec<f64> = results
        .iter()
        .map(|r| r.enqueue.wall.as_secs_f64())
        .collect();
    let mut enqueue_rss: Vec<u64> = results.iter().map(|r| r.enqueue.peak_rss_kib).collect();
    let mut first: Vec<f64> = results
        .iter()
        .filter_map(|r| r.first_request.map(ms))
        .collect();
    let mut status: Vec<f64> = results
        .iter()
        .flat_map(|r| r.status.iter().map(|u| ms(u.wall)))
        .collect();
    let mut status_rss: Vec<u64> = results
        .iter()
        .flat_map(|r| r.status.iter().map(|u| u.peak_rss_kib))
        .collect();
    let peak_rss = results
        .iter()
        .flat_map(|r| {
            [r.enqueue.peak_rss_kib, r.crawl.peak_rss_kib]
                .into_iter()
                .chain(r.status.iter().map(|u| u.peak_rss_kib))
        })
        .max()
        .unwrap_or(0);
    println!();
    println!(
        "| scale ({} pages enqueued, {} crawled; medians of {} runs) | measured | target |",
        scale.enqueue,
        scale.crawl,
        results.len()
    );
    println!("| --- | ---: | ---: |");
    println!(
        "| `enqueue 1..={}` into a one-page state | {:.2} s (CPU {:.2} s, peak RSS {} MiB) | ≤ 5 s |",
        scale.enqueue,
        median(&mut enqueue),
        median(&mut results.iter().map(|r| r.enqueue.cpu.as_secs_f64()).collect::<Vec<_>>()),
        mib(median(&mut enqueue_rss))
    );
    println!(
        "| `run` start to first request, {} pending | {} | ≤ 1000 ms |",
        scale.enqueue,
        if first.is_empty() {
            "not seen".into()
        } else {
            format!("{:.0} ms", median(&mut first))
        }
    );
    println!(
        "| `status` after the crawl ({} calls) | {:.1} ms (peak RSS {} MiB) | ≤ 50 ms |",
        status.len(),
        median(&mut status),
        mib(median(&mut status_rss))
    );
    let mut live: Vec<f64> = results
        .iter()
        .filter_map(|r| r.live_status.as_ref())
        .filter(|u| u.ok())
        .map(|u| ms(u.wall))
        .collect();
    let refused = results
        .iter()
        .filter_map(|r| r.live_status.as_ref())
        .find(|u| !u.ok());
    println!(
        "| `status` during the crawl (the running `run` answers) | {} | |",
        match (live.is_empty(), refused) {
            (false, _) => format!("{:.1} ms", median(&mut live)),
            (true, Some(u)) => format!("refused: {}", u.describe_failure()),
            (true, None) => "not measured".into(),
        }
    );
    println!(
        "| pending left after the crawl | {} | |",
        results
            .last()
            .and_then(|r| r.pending_after)
            .map_or("?".into(), |p| p.to_string())
    );
    println!(
        "| peak RSS of any step (enqueue, run, status) | {:.1} MiB | ≤ 64 MiB |",
        peak_rss as f64 / 1024.0
    );
    if results.iter().any(|r| !r.enqueue_ok) {
        println!("(an enqueue did not report the expected count)");
    }
}

pub fn print_targets(
    rows: &[Row],
    scale: &[ScaleResult],
    ratios: &[(String, String, f64)],
    paired: &[f64],
    quick: bool,
) {
    let ours = |label: &str| {
        rows.iter()
            .find(|r| r.client == "pagecrawl" && r.scenario == label)
    };
    let mut lines: Vec<(String, String, bool)> = Vec::new();
    for label in ["latency-bound c=16", "latency-bound c=64"] {
        if let Some(e) = ours(label).and_then(Row::efficiency) {
            lines.push((
                format!("{label} efficiency ≥ 0.90"),
                format!("{e:.2}"),
                e >= 0.90,
            ));
        }
    }
    if let Some(e) = ours(TWO_STAGE_LATENCY).and_then(Row::efficiency) {
        lines.push((
            format!(
                "{TWO_STAGE_LATENCY} efficiency ≥ 0.95 (ideal (listing + detail pages) · L / C)"
            ),
            format!("{e:.2}"),
            e >= 0.95,
        ));
    }
    if let (Some(two), Some(one)) = (ours(TWO_STAGE_CPU), ours(ONE_STAGE_CPU)) {
        // With several rounds, the median of each round's own ratio: the
        // two runs of a round saw the same load.
        let (ratio, rounds) = match paired.len() {
            0 | 1 => (cpu_ratio(two, one), String::new()),
            n => {
                let mut sorted = paired.to_vec();
                let ratio = median(&mut sorted);
                (
                    ratio,
                    format!(
                        "; median of {n} rounds' ratios, {:.2}–{:.2}",
                        sorted[0],
                        sorted[n - 1]
                    ),
                )
            }
        };
        lines.push((
            format!("{TWO_STAGE_CPU} CPU per request ≤ 1.2× one-stage CPU-bound's"),
            format!(
                "{ratio:.2}× ({:.3} vs {:.3} ms{rounds})",
                two.cpu_ms_per_page(),
                one.cpu_ms_per_page()
            ),
            ratio <= 1.2,
        ));
    }
    if let Some(row) = ours(ONE_STAGE_CPU) {
        let cpu = row.cpu_ms_per_page();
        lines.push((
            "CPU-bound CPU ≤ 0.10 ms/page".into(),
            format!("{cpu:.3} ms"),
            cpu <= 0.10,
        ));
    }
    if let Some((_, _, ratio)) = ratios
        .iter()
        .find(|(s, p, _)| s == "CPU-bound" && p == "scrapy")
    {
        lines.push((
            "CPU-bound ≥ 10× Scrapy's pages/s".into(),
            format!("{ratio:.1}×"),
            *ratio >= 10.0,
        ));
    }
    if !scale.is_empty() {
        let mut enqueue: Vec<f64> = scale.iter().map(|r| r.enqueue.wall.as_secs_f64()).collect();
        let e = median(&mut enqueue);
        lines.push(("enqueue ≤ 5 s".into(), format!("{e:.2} s"), e <= 5.0));
        let mut first: Vec<f64> = scale
            .iter()
            .filter_map(|r| r.first_request.map(|d| d.as_secs_f64()))
            .collect();
        if !first.is_empty() {
            let f = median(&mut first);
            lines.push((
                "first request ≤ 1 s".into(),
                format!("{:.0} ms", f * 1000.0),
                f <= 1.0,
            ));
        }
        let mut status: Vec<f64> = scale
            .iter()
            .flat_map(|r| r.status.iter().map(|u| u.wall.as_secs_f64()))
            .collect();
        let s = median(&mut status);
        lines.push((
            "status ≤ 50 ms".into(),
            format!("{:.1} ms", s * 1000.0),
            s <= 0.050,
        ));
    }
    let peak = rows
        .iter()
        .filter(|r| r.client == "pagecrawl")
        .map(|r| r.peak_rss_kib)
        .chain(scale.iter().flat_map(|r| {
            std::iter::once(r.enqueue.peak_rss_kib).chain(r.status.iter().map(|u| u.peak_rss_kib))
        }))
        .max();
    if let Some(peak) = peak {
        let mib = peak as f64 / 1024.0;
        lines.push((
            "peak RSS ≤ 64 MiB (every pagecrawl process)".into(),
            format!("{mib:.1} MiB"),
            mib <= 64.0,
        ));
    }
    if lines.is_empty() {
        return;
    }
    println!();
    println!(
        "targets of issues 5 and 12{}:",
        if quick {
            " (--quick uses smaller sizes: indicative only)"
        } else {
            ""
        }
    );
    for (what, value, met) in lines {
        println!(
            "  {} {what}: {value}",
            if met { "met    " } else { "NOT MET" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pages: u64, latency_ms: u64, concurrency: usize, wall_ms: u64, cpu_ms: u64) -> Row {
        Row {
            scenario: "s".into(),
            client: "pagecrawl".into(),
            pages,
            concurrency,
            latency_ms,
            wall: Duration::from_millis(wall_ms),
            cpu: Duration::from_millis(cpu_ms),
            sys: Duration::ZERO,
            peak_rss_kib: 0,
            check: String::new(),
            ok: true,
        }
    }

    #[test]
    fn efficiency_is_the_ideal_of_both_stages_over_the_wall_time() {
        // (295 + 5,900) · 50 ms / 16 = 19.359375 s.
        assert!((ideal_seconds(6_195, 50, 16) - 19.359_375).abs() < 1e-9);
        let e = row(6_195, 50, 16, 20_378, 0).efficiency().unwrap();
        assert!((e - 0.95).abs() < 0.001, "{e}");
        assert_eq!(row(6_195, 0, 16, 1_000, 0).efficiency(), None);
        assert!(
            (ideal_seconds(100, 10, 0) - 1.0).abs() < 1e-9,
            "no division by 0"
        );
    }

    #[test]
    fn the_cpu_ratio_compares_per_request_figures() {
        let one = row(20_000, 0, 8, 5_000, 8_000); // 0.4 ms a page
        let two = row(21_000, 0, 8, 5_000, 10_080); // 0.48 ms a request
        assert!((cpu_ratio(&two, &one) - 1.2).abs() < 1e-9);
    }

    #[test]
    fn paired_ratios_compare_each_round_and_leave_out_failed_runs() {
        let one = [
            row(20_000, 0, 8, 1_000, 2_000),
            row(20_000, 0, 8, 1_000, 4_000),
            row(20_000, 0, 8, 1_000, 2_000),
        ];
        let mut failed = row(21_000, 0, 8, 1_000, 2_100);
        failed.ok = false;
        let two = [
            row(21_000, 0, 8, 1_000, 2_310), // 0.110 over 0.100 ms
            row(21_000, 0, 8, 1_000, 4_200), // 0.200 over 0.200 ms
            failed,
        ];
        let ratios = paired_ratios(&two, &one);
        assert_eq!(ratios.len(), 2, "{ratios:?}");
        assert!((ratios[0] - 1.1).abs() < 1e-9, "{ratios:?}");
        assert!((ratios[1] - 1.0).abs() < 1e-9, "{ratios:?}");
    }
}

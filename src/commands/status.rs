//! `pagecrawl status`: counts, rate, ETA, top errors; O(1) in the queue size.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::exit_code::Exit;
use crate::store::Store;

/// The `--json` shape (documented in the README; add fields, never rename).
#[derive(Debug, Serialize)]
pub struct Status {
    pub state_dir: String,
    pub url: Option<String>,
    pub range: Option<String>,
    pub pending: u64,
    pub done: u64,
    pub failed: u64,
    /// pending + done + failed.
    pub total: u64,
    pub items: u64,
    pub retries: u64,
    pub output: Option<String>,
    pub output_bytes: u64,
    /// Pages per second during the last run, if it committed anything.
    pub rate: Option<f64>,
    /// Seconds until the pending pages are done at that rate.
    pub eta_seconds: Option<f64>,
    /// Open ranges: the first page of the empty run that ended the range.
    pub open_range_end: Option<u64>,
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Serialize)]
pub struct ErrorCount {
    pub reason: String,
    pub pages: u64,
}

pub fn gather(store: &Store) -> Result<Status> {
    let counters = store.counters();
    let job = store.job()?;
    let elapsed_ms = counters
        .last_commit_ms
        .saturating_sub(counters.run_started_ms);
    let done_in_run = counters.done.saturating_sub(counters.run_done_base);
    let rate = (elapsed_ms > 0 && done_in_run > 0)
        .then(|| done_in_run as f64 * 1000.0 / elapsed_ms as f64);
    let reasons = store.reasons()?;
    Ok(Status {
        state_dir: store.dir().display().to_string(),
        url: job.as_ref().map(|j| j.url.clone()),
        range: job.as_ref().map(|j| j.pages.clone()),
        pending: counters.pending,
        done: counters.done,
        failed: counters.failed,
        total: counters.pending + counters.done + counters.failed,
        items: counters.items,
        retries: counters.retries,
        output: job.as_ref().map(|j| j.output.display().to_string()),
        output_bytes: counters.output_len,
        rate,
        eta_seconds: rate.map(|r| counters.pending as f64 / r),
        open_range_end: counters.open_end(),
        errors: reasons
            .into_iter()
            .map(|(reason, pages)| ErrorCount { reason, pages })
            .collect(),
    })
}

pub fn command(dir: &Path, json: bool) -> Result<Exit> {
    let store = Store::open_existing(dir)?;
    let status = gather(&store)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(Exit::Success)
}

fn render(s: &Status) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("{label:<9} {value}\n"))
    };
    line(&mut out, "state", s.state_dir.clone());
    if let (Some(url), Some(range)) = (&s.url, &s.range) {
        line(&mut out, "job", format!("{url} pages {range}"));
    }
    line(
        &mut out,
        "pages",
        format!(
            "{} done, {} pending, {} failed (of {})",
            s.done, s.pending, s.failed, s.total
        ),
    );
    if let Some(output) = &s.output {
        line(
            &mut out,
            "items",
            format!("{} in {} ({} bytes)", s.items, output, s.output_bytes),
        );
    }
    let rate = match (s.rate, s.eta_seconds) {
        (Some(rate), Some(eta)) if s.pending > 0 => {
            format!("{rate:.1} pages/s in the last run; ETA {}", duration(eta))
        }
        (Some(rate), _) => format!("{rate:.1} pages/s in the last run"),
        _ => "no pages committed yet".into(),
    };
    line(&mut out, "rate", rate);
    line(&mut out, "retries", s.retries.to_string());
    if let Some(end) = s.open_range_end {
        line(
            &mut out,
            "end",
            format!("open range ended at page {end} (a run of empty pages)"),
        );
    }
    if !s.errors.is_empty() {
        let top: Vec<String> = s
            .errors
            .iter()
            .take(5)
            .map(|e| format!("{} × {}", e.reason, e.pages))
            .collect();
        line(
            &mut out,
            "errors",
            format!("{} (see: pagecrawl queue --state failed)", top.join(", ")),
        );
    }
    out
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

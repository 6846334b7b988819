//! `pagecrawl status`: state, counts, rate, ETA, top errors; O(1) in the
//! queue size. Asks the running daemon when there is one.

use std::path::Path;

use anyhow::Result;

use crate::control::ops::Status;
use crate::control::Backend;
use crate::exit_code::Exit;

pub fn command(dir: &Path, json: bool) -> Result<Exit> {
    let status = Backend::connect(dir)?.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(Exit::Success)
}

/// The human summary (also printed by `pause` and `resume`).
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("{label:<9} {value}\n"))
    };
    let state = match s.pid {
        Some(pid) => format!("{} (pid {pid})", s.state),
        None => s.state.clone(),
    };
    line(&mut out, "state", format!("{state} in {}", s.state_dir));
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

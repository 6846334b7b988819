//! `pagecrawl-bench profile`: one CPU-bound crawl under callgrind or perf,
//! and the reports. Build the `profiling` profile for this: its binaries
//! keep line tables, the release ones do not.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bench::Bench;
use crate::job::{find_pagecrawl, write_config};
use crate::measure::measure;
use crate::scenarios::server_check;
use crate::server::padding_for;
use crate::server_process::ServerProcess;
use crate::{Engine, Tool};

/// `profile`: one CPU-bound crawl under callgrind or perf, and the report.
pub fn profile(
    pages: u64,
    concurrency: usize,
    tool: Tool,
    pagecrawl: Option<PathBuf>,
    page_bytes: usize,
    out: Option<PathBuf>,
) -> Result<()> {
    let pagecrawl = find_pagecrawl(pagecrawl)?;
    if built_in(&pagecrawl, "release") {
        eprintln!(
            "pagecrawl-bench: warning: release binaries have no line tables; the reports will \
             name functions but not lines (cargo build --profile profiling --bin pagecrawl \
             --example pagecrawl-bench)"
        );
    }
    let out = match out {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("pagecrawl-profile-")
            .tempdir()?
            .keep(),
    };
    fs::create_dir_all(&out)?;
    let ctx = Bench {
        pagecrawl: pagecrawl.clone(),
        engine: Engine::Fast,
        padding: padding_for(page_bytes),
        config_lines: Vec::new(),
        work: out.clone(),
        limit: Duration::from_secs(1_800),
        verbose: true,
        peers: Vec::new(),
    };
    let server = ServerProcess::start(Engine::Fast, 0, pages, ctx.padding)?;
    let config = write_config(
        &ctx,
        &out,
        &server.url_template(),
        &format!("1..={pages}"),
        concurrency,
        &[],
    )?;
    let state = out.join("state");
    if state.exists() {
        fs::remove_dir_all(&state)?;
    }
    let data = out.join(match tool {
        Tool::Callgrind => "callgrind.out",
        Tool::Perf => "perf.data",
    });
    let mut command = match tool {
        Tool::Callgrind => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", data.display()));
            c
        }
        Tool::Perf => {
            let mut c = Command::new("perf");
            // cpu-clock: a software event, so it works in a VM too; no
            // call graphs (release builds have no frame pointers), the
            // inclusive view is callgrind's.
            c.args(["record", "-e", "cpu-clock", "-F", "2999", "-o"])
                .arg(&data)
                .arg("--");
            c
        }
    };
    command
        .arg(&pagecrawl)
        .args(["-q", "run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state);
    println!("profiling {pages} pages at 0 ms, concurrency {concurrency}, with {tool:?}...");
    let usage = measure(command, &out.join("profiled"), ctx.limit, |_, _| {})?;
    let stats = server.stats();
    let _ = server.stop();
    if !usage.ok() {
        bail!(
            "the profiled run failed: {} (logs in {})",
            usage.describe_failure(),
            out.display()
        );
    }
    println!(
        "profiled run: {:.1} s wall under the tool; server saw {}",
        usage.wall.as_secs_f64(),
        server_check(stats, pages)
    );
    let reports: Vec<(&str, Command)> = match tool {
        Tool::Callgrind => {
            let annotate = |inclusive: &str| {
                let mut c = Command::new("callgrind_annotate");
                c.arg(format!("--inclusive={inclusive}"))
                    .arg("--threshold=99")
                    .arg(&data);
                c
            };
            vec![
                ("callgrind-self.txt", annotate("no")),
                ("callgrind-inclusive.txt", annotate("yes")),
            ]
        }
        Tool::Perf => {
            let report = |sort: &str| {
                let mut c = Command::new("perf");
                c.args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--percent-limit",
                    "0.5",
                ])
                .args(["--sort", sort, "-i"])
                .arg(&data);
                c
            };
            vec![
                ("perf-threads.txt", report("comm")),
                ("perf-self.txt", report("dso,sym")),
            ]
        }
    };
    for (name, mut command) in reports {
        let output = command.output().context("cannot run the report tool")?;
        let path = out.join(name);
        fs::write(&path, &output.stdout)?;
        println!("\n== {} (first 45 lines) ==", path.display());
        for line in String::from_utf8_lossy(&output.stdout).lines().take(45) {
            println!("{line}");
        }
    }
    if tool == Tool::Callgrind {
        if let Some(total) = fs::read_to_string(&data).ok().and_then(|text| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        }) {
            println!(
                "\ntotal: {total} instructions, {:.0} per page ({pages} pages, whole process: start-up and final flush included)",
                total as f64 / pages as f64
            );
        }
    }
    println!("\nprofile and reports in {}", out.display());
    Ok(())
}

/// Whether `binary` is in cargo's folder for `profile` (`target/PROFILE/`).
fn built_in(binary: &Path, profile: &str) -> bool {
    binary
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == profile)
}

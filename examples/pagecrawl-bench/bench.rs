//! The default command: the scenarios' runs in rounds (each scenario with
//! its own server), the peers on the same servers, then the tables and the
//! targets.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::job::find_pagecrawl;
use crate::peers::{peer_once, python_with, Peer};
use crate::report::{
    median_row, paired_ratios, print_header, print_row_line, print_scale, print_table,
    print_targets, Row,
};
use crate::scenarios::{crawl_once, scale_once, scenarios};
use crate::server::padding_for;
use crate::server_process::ServerProcess;
use crate::{BenchArgs, Engine, ScenarioName};

/// What every run of a benchmark shares: the binary, the server engine, the
/// work folder and the limits.
pub struct Bench {
    pub pagecrawl: PathBuf,
    pub engine: Engine,
    pub padding: usize,
    pub config_lines: Vec<String>,
    pub work: PathBuf,
    pub limit: Duration,
    pub verbose: bool,
    /// The real Python interpreter for each installed peer.
    pub peers: Vec<(Peer, PathBuf)>,
}

/// `pagecrawl-bench` with no subcommand: the scenarios, then the tables.
pub fn bench(args: &BenchArgs) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("pagecrawl-bench: warning: this is a debug build; the server is slower than in an optimized one (cargo build --profile profiling --bin pagecrawl --example pagecrawl-bench)");
    }
    let pagecrawl = find_pagecrawl(args.pagecrawl.clone())?;
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let (temp, work) = match &args.dir {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            (None, dir.clone())
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("pagecrawl-bench-")
                .tempdir()?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };
    let mut peers = Vec::new();
    if args.peers {
        for peer in [Peer::Threads, Peer::Scrapy] {
            match python_with(peer.module()) {
                Some(python) => peers.push((peer, python)),
                None => println!(
                    "peer skipped: {} (python3 with `{}` not installed; pip install {})",
                    peer.name(),
                    peer.module(),
                    peer.module()
                ),
            }
        }
    }
    let ctx = Bench {
        pagecrawl,
        engine: args.server,
        padding: padding_for(args.page_bytes),
        config_lines: args.config_lines.clone(),
        work,
        limit: Duration::from_secs(if args.quick { 120 } else { 900 }),
        verbose: args.verbose,
        peers,
    };
    let (crawls, scale) = scenarios(args.quick);
    // The two-stage CPU-bound run is compared with the one-stage one of the
    // same run, so selecting it selects that one too.
    let wanted = |name: ScenarioName| {
        args.only.is_empty()
            || args.only.contains(&name)
            || (name == ScenarioName::Cpu && args.only.contains(&ScenarioName::DetailCpu))
    };
    print_header(&ctx, args, repeat);
    if wanted(ScenarioName::DetailCpu)
        && !args.only.is_empty()
        && !args.only.contains(&ScenarioName::Cpu)
    {
        println!("(cpu runs too: detailcpu's CPU per request is compared with it)");
    }

    let mut table: Vec<Row> = Vec::new();
    let mut ratios: Vec<(String, String, f64)> = Vec::new();
    // Every selected scenario gets its server first; then the runs go
    // round the scenarios (run 1 of each, then run 2...), so that a ratio
    // between two scenarios compares runs made under the same load.
    let mut selected = Vec::new();
    for crawl in crawls.iter().filter(|c| wanted(c.name)) {
        if crawl.detail && ctx.engine != Engine::Fast {
            println!(
                "scenario skipped: {} (detail pages are served by the fast server only; leave out --server fixture)",
                crawl.label
            );
            continue;
        }
        let server = ServerProcess::start_serving(
            ctx.engine,
            crawl.latency_ms,
            crawl.pages,
            ctx.padding,
            crawl.detail,
        )?;
        selected.push((crawl, server, Vec::new()));
    }
    for run in 0..repeat {
        for (crawl, server, runs) in &mut selected {
            server.reset();
            let row = crawl_once(&ctx, server, crawl, run)?;
            if ctx.verbose || !row.ok {
                print_row_line(&row, &format!("run {}", run + 1));
            }
            runs.push(row);
        }
    }
    let runs_of = |name: ScenarioName| {
        selected
            .iter()
            .find(|(crawl, _, _)| crawl.name == name)
            .map(|(_, _, runs)| runs.clone())
    };
    let paired = match (runs_of(ScenarioName::DetailCpu), runs_of(ScenarioName::Cpu)) {
        (Some(two), Some(one)) => paired_ratios(&two, &one),
        _ => Vec::new(),
    };
    for (crawl, server, runs) in selected {
        let ours = median_row(&runs);
        table.push(ours.clone());
        for &(peer, ref python) in &ctx.peers {
            if crawl.detail && !peer.two_stage() {
                println!(
                    "peer skipped for {}: {} (no two-stage mode)",
                    crawl.label,
                    peer.name()
                );
                continue;
            }
            server.reset();
            let row = peer_once(&ctx, &server, crawl, peer, python)?;
            if ctx.verbose || !row.ok {
                print_row_line(&row, "run 1");
            }
            if row.ok && ours.ok {
                ratios.push((
                    crawl.label.to_string(),
                    peer.name().to_string(),
                    ours.pages_per_s() / row.pages_per_s(),
                ));
            }
            table.push(row);
        }
        let server_cpu = server.stop()?;
        if ctx.verbose {
            println!(
                "  server CPU for {}: {:.2} s",
                crawl.label,
                server_cpu.as_secs_f64()
            );
        }
    }
    let mut scale_results = Vec::new();
    if wanted(ScenarioName::Scale) {
        for run in 0..repeat {
            let result = scale_once(&ctx, &scale, run)?;
            if ctx.verbose {
                print_row_line(&result.crawl, &format!("run {}", run + 1));
            }
            scale_results.push(result);
        }
        table.push(median_row(
            &scale_results
                .iter()
                .map(|r| r.crawl.clone())
                .collect::<Vec<_>>(),
        ));
    }

    println!();
    if repeat > 1 {
        println!("pagecrawl rows: medians of {repeat} runs; peers: one run each.");
    }
    if !table.is_empty() {
        print_table(&table);
    }
    if !ratios.is_empty() {
        println!();
        println!("| scenario | pagecrawl pages/s ÷ peer pages/s |");
        println!("| --- | --- |");
        for (scenario, peer, ratio) in &ratios {
            println!("| {scenario} | {ratio:.1}× {peer} |");
        }
    }
    if !scale_results.is_empty() {
        print_scale(&scale, &scale_results);
    }
    print_targets(&table, &scale_results, &ratios, &paired, args.quick);
    println!(
        "\nload average at the end: {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if temp.is_none() {
        println!("logs and states kept in {}", ctx.work.display());
    }
    drop(temp);
    Ok(())
}

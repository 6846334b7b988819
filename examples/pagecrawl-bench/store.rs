//! `pagecrawl-bench store`: the commands of a job in a PostgreSQL store,
//! timed through the real binary against a throwaway server this process
//! starts (`initdb` and `pg_ctl` into a temporary folder, on loopback):
//! `enqueue` of a million pages, then `status` with them all pending
//! (issue 13's targets: at most 5 s, and at most 50 ms).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pagecrawl::fixture::postgres::{bin_dir, Postgres};
use pagecrawl::store::postgres::{job, schema};

use crate::job::find_pagecrawl;
use crate::report::median;

pub fn store(pages: u64, status_runs: usize, pagecrawl: Option<std::path::PathBuf>) -> Result<()> {
    let pagecrawl = find_pagecrawl(pagecrawl)?;
    if bin_dir().is_none() {
        println!(
            "store benchmark skipped: PostgreSQL's server binaries (initdb, pg_ctl) are not installed \
             (apt-get install postgresql, or set PAGECRAWL_PG_BINDIR)"
        );
        return Ok(());
    }
    let pg = Postgres::new().context("starting the throwaway PostgreSQL")?;
    let mut client = pg.connect()?;
    schema::migrate(&mut client)?;
    let identity = job::Identity {
        url: "http://127.0.0.1:9/bugs.php?page={page}".into(),
        pages: format!("1..={pages}"),
        pattern: "(?P<title>t)".into(),
        format: "jsonl".into(),
        fields: vec!["title".into()],
        key: None,
        detail: None,
    };
    job::ensure_job(&mut client, "bench", &identity.to_json())?;
    let url = pg.url();
    let command = |args: &[&str]| {
        let mut command = std::process::Command::new(&pagecrawl);
        command
            .args(args)
            .args(["--store", &url, "--job", "bench"])
            .env("PGPASSWORD", pg.password())
            .stdin(std::process::Stdio::null());
        command
    };
    let timed = |args: &[&str]| -> Result<(Duration, String)> {
        let started = Instant::now();
        let output = command(args).output()?;
        let took = started.elapsed();
        if !output.status.success() {
            bail!(
                "pagecrawl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok((took, String::from_utf8_lossy(&output.stdout).into_owned()))
    };
    let range = format!("1..={pages}");
    let (enqueue, said) = timed(&["enqueue", &range])?;
    let mut statuses = Vec::new();
    let mut last = String::new();
    for _ in 0..status_runs.max(1) {
        let (took, out) = timed(&["status", "--json"])?;
        statuses.push(took);
        last = out;
    }
    let status: serde_json::Value = serde_json::from_str(&last)?;
    if status["pending"].as_u64() != Some(pages) {
        bail!(
            "status after the enqueue says {} pending, not {pages}",
            status["pending"]
        );
    }
    let fastest = *statuses.iter().min().unwrap_or(&Duration::ZERO);
    let status_median = median(&mut statuses.clone());
    println!(
        "pagecrawl-bench store: {} against a throwaway PostgreSQL on 127.0.0.1",
        pagecrawl.display()
    );
    println!();
    println!("| command | pages | wall | target |");
    println!("| --- | ---: | ---: | --- |");
    println!(
        "| `enqueue 1..={pages}` | {pages} | {:.2} s | ≤ 5 s for 1,000,000 |",
        enqueue.as_secs_f64()
    );
    println!(
        "| `status --json`, {pages} pending (median of {}, fastest {:.1} ms) | {pages} | {:.1} ms | ≤ 50 ms with 1,000,000 pending |",
        statuses.len(),
        fastest.as_secs_f64() * 1000.0,
        status_median.as_secs_f64() * 1000.0
    );
    println!();
    println!("enqueue said: {}", said.trim());
    println!("(each time is the whole command: process start, connection, the work, exit)");
    let mut met = true;
    if pages >= 1_000_000 {
        let (e, s) = (
            enqueue <= Duration::from_secs(5),
            status_median <= Duration::from_millis(50),
        );
        println!(
            "targets of issue 13:\n  {}  enqueue of 1,000,000 pages ≤ 5 s: {:.2} s\n  {}  status ≤ 50 ms with 1,000,000 pending: {:.1} ms",
            if e { "met    " } else { "NOT MET" },
            enqueue.as_secs_f64(),
            if s { "met    " } else { "NOT MET" },
            status_median.as_secs_f64() * 1000.0
        );
        met = e && s;
    }
    if !met {
        println!("(a target was missed)");
    }
    Ok(())
}

/// `pagecrawl-bench store-daemons`: 1, 2 and 4 daemons on one job in a
/// throwaway PostgreSQL, against the fast server at `latency_ms`, with the
/// job's `concurrency` (the cap across daemons) and each daemon's
/// `daemon_concurrency`: wall time, pages/s, efficiency against the ideal
/// N·L / min(concurrency, daemons × daemon_concurrency), and the daemons'
/// CPU per page (PostgreSQL's own is not counted).
pub fn daemons(
    pages: u64,
    latency_ms: u64,
    concurrency: usize,
    per_daemon: usize,
    pagecrawl: Option<std::path::PathBuf>,
) -> Result<()> {
    use crate::measure::children_cpu;
    use crate::server_process::ServerProcess;
    let pagecrawl = find_pagecrawl(pagecrawl)?;
    if bin_dir().is_none() {
        println!("store-daemons benchmark skipped: PostgreSQL's server binaries (initdb, pg_ctl) are not installed");
        return Ok(());
    }
    let pg = Postgres::new().context("starting the throwaway PostgreSQL")?;
    let server = ServerProcess::start_serving(
        crate::Engine::Fast,
        latency_ms,
        pages,
        crate::server::padding_for(20_000),
        false,
    )?;
    let work = tempfile::Builder::new()
        .prefix("pagecrawl-bench-store-")
        .tempdir()?;
    let pattern = crate::job::pattern_line();
    println!(
        "pagecrawl-bench store-daemons: {} against a throwaway PostgreSQL, {pages} pages at {latency_ms} ms, concurrency {concurrency}, daemon_concurrency {per_daemon}",
        pagecrawl.display()
    );
    println!();
    println!("| daemons | wall s | pages/s | efficiency | daemons' CPU ms/page | server saw |");
    println!("| ---: | ---: | ---: | ---: | ---: | --- |");
    let mut rates = Vec::new();
    for count in [1usize, 2, 4] {
        server.reset();
        let config = work.path().join(format!("d{count}.toml"));
        std::fs::write(
            &config,
            format!(
                "url = \"{}\"\npages = \"1..={pages}\"\n{pattern}\nconcurrency = {concurrency}\n\
                 daemon_concurrency = {per_daemon}\nstore = \"{}\"\njob = \"daemons-{count}\"\n",
                server.url_template(),
                pg.url()
            ),
        )?;
        let cpu_before = children_cpu()?;
        let started = Instant::now();
        let children: Vec<std::process::Child> = (0..count)
            .map(|_| {
                std::process::Command::new(&pagecrawl)
                    .args(["-q", "run", "--config"])
                    .arg(&config)
                    .env("PGPASSWORD", pg.password())
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        for mut child in children {
            let status = child.wait()?;
            if !status.success() {
                bail!("a daemon of the {count}-daemon run failed: {status}");
            }
        }
        let wall = started.elapsed();
        let cpu = children_cpu()?.saturating_sub(cpu_before);
        let stats = server.stats().unwrap_or_default();
        let c = concurrency.min(count * per_daemon).max(1);
        let ideal = pages as f64 * latency_ms as f64 / 1000.0 / c as f64;
        let rate = pages as f64 / wall.as_secs_f64();
        rates.push(rate);
        println!(
            "| {count} | {:.2} | {rate:.0} | {:.2} | {:.3} | {} pages ({} repeated), peak {} at once |",
            wall.as_secs_f64(),
            ideal / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1000.0 / pages as f64,
            stats.requests,
            stats.repeats,
            stats.peak
        );
    }
    drop(server);
    if let (Some(one), Some(four)) = (rates.first(), rates.last()) {
        let ratio = four / one;
        println!(
            "\ntarget of issue 13:\n  {}  throughput from 1 to 4 daemons ≥ 3.5×: {ratio:.2}×",
            if ratio >= 3.5 { "met    " } else { "NOT MET" }
        );
    }
    Ok(())
}

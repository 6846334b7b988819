//! The Python peers kept in bench/ (threads + requests, and Scrapy): finding
//! an interpreter that has them, and one run of a peer on the benchmark's
//! server. For the two-stage scenarios Scrapy follows each item to its
//! detail page (`response.follow` with `cb_kwargs`); the threads peer has
//! no such mode and is not run there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;
use pagecrawl::fixture::wooyun::PER_PAGE;

use crate::bench::Bench;
use crate::detail_pages::{self, detail_pattern, tags_pattern};
use crate::job::{count_lines, fresh_dir, pattern_text};
use crate::measure::measure;
use crate::report::Row;
use crate::scenarios::{server_check, timing, Crawl};
use crate::server::unix_ns;
use crate::server_process::ServerProcess;

/// The Python peers kept in bench/.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Threads,
    Scrapy,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Threads => "python threads",
            Peer::Scrapy => "scrapy",
        }
    }

    pub fn script(self) -> &'static str {
        match self {
            Peer::Threads => "peer_threads.py",
            Peer::Scrapy => "peer_scrapy.py",
        }
    }

    /// Whether it can crawl detail pages too.
    pub fn two_stage(self) -> bool {
        self == Peer::Scrapy
    }

    pub fn module(self) -> &'static str {
        match self {
            Peer::Threads => "requests",
            Peer::Scrapy => "scrapy",
        }
    }
}

/// The real interpreter of a `python3` that can import `module`.
pub fn python_with(module: &str) -> Option<PathBuf> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!("import sys, {module}; print(sys.executable)"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    path.is_file().then_some(path)
}

/// `key=value` pairs of a peer's closing line.
pub fn parse_pairs(stdout: &str, key: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .flat_map(|l| l.split_whitespace())
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

pub fn peer_once(
    ctx: &Bench,
    server: &ServerProcess,
    crawl: &Crawl,
    peer: Peer,
    python: &Path,
) -> Result<Row> {
    let dir = fresh_dir(
        ctx,
        &format!("{:?}-{}", crawl.name, peer.module()).to_lowercase(),
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join(peer.script());
    let out = dir.join("items.jsonl");
    let mut command = Command::new(python);
    command
        .arg(&script)
        .arg("--url")
        .arg(server.url_template())
        .arg("--pages")
        .arg(crawl.pages.to_string())
        .arg("--concurrency")
        .arg(crawl.concurrency.to_string())
        .arg("--pattern")
        .arg(pattern_text())
        .arg("--out")
        .arg(&out)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if crawl.detail {
        command
            .arg("--detail-pattern")
            .arg(detail_pattern())
            .arg("--tags-pattern")
            .arg(tags_pattern());
    }
    let spawned_ns = unix_ns();
    let usage = measure(command, &dir.join("run"), ctx.limit, |_, _| {})?;
    let items = count_lines(&out);
    let done = parse_pairs(&usage.stdout, "pages").unwrap_or(0);
    let expected_items = crawl.pages * PER_PAGE as u64;
    let stats = server.stats();
    let mut check = server_check(stats, crawl.pages) + &timing(stats, spawned_ns, usage.wall);
    // The peer counts every 200 response, detail pages included.
    let mut ok = usage.ok() && done == crawl.requests() && items == expected_items;
    if crawl.detail {
        let verdict = detail_pages::check_output(&out, expected_items);
        ok &= verdict.is_ok();
        check = match verdict {
            Ok(()) => format!("{expected_items} items with their detail fields; {check}"),
            Err(problem) => format!("{problem}; {check}"),
        };
    }
    if !ok {
        check = format!(
            "FAILED: {}; {done} pages, {items} items (want {expected_items}); {check}",
            usage.outcome()
        );
    }
    if !ctx.verbose && ok {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(Row {
        scenario: crawl.label.to_string(),
        client: peer.name().into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_closing_line_parses() {
        assert_eq!(
            parse_pairs("pages=20 failed=0 items=400", "items"),
            Some(400)
        );
    }
}

//! What the benchmark gives a `pagecrawl` run and reads back from it: the
//! binary, its config (the example job's pattern), its work folder, and
//! its summary line.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bench::Bench;

/// The example job; the benchmark uses its pattern.
pub const EXAMPLE_CONFIG: &str = include_str!("../../data/wooyun.toml");

/// The pagecrawl binary: the flag, else `pagecrawl` beside this binary, or
/// one folder up when this one is in cargo's `examples/` folder.
pub fn find_pagecrawl(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = flag {
        if !path.is_file() {
            bail!(
                "no pagecrawl binary at {} (pass --pagecrawl PATH to an existing one)",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let candidates = pagecrawl_candidates(&exe);
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no pagecrawl binary at {} (run `{}` first, or pass --pagecrawl PATH)",
        looked.join(" or "),
        build_command(&exe)
    );
}

/// Where `pagecrawl` may be for a benchmark binary at `exe`: beside it,
/// then, for `target/PROFILE/examples/`, in `target/PROFILE/`.
fn pagecrawl_candidates(exe: &Path) -> Vec<PathBuf> {
    let Some(dir) = exe.parent() else {
        return Vec::new();
    };
    let mut candidates = vec![dir.join("pagecrawl")];
    if dir.file_name().is_some_and(|name| name == "examples") {
        if let Some(up) = dir.parent() {
            candidates.push(up.join("pagecrawl"));
        }
    }
    candidates
}

/// The cargo command that builds `pagecrawl` in the profile of the folder
/// `exe` is in (`target/PROFILE/` or `target/PROFILE/examples/`).
fn build_command(exe: &Path) -> String {
    let mut dir = exe.parent();
    if dir
        .and_then(Path::file_name)
        .is_some_and(|name| name == "examples")
    {
        dir = dir.and_then(Path::parent);
    }
    match dir.and_then(Path::file_name).and_then(|name| name.to_str()) {
        Some("debug") => "cargo build --bin pagecrawl".into(),
        Some("release") => "cargo build --release --bin pagecrawl".into(),
        Some(profile) if !profile.is_empty() => {
            format!("cargo build --profile {profile} --bin pagecrawl")
        }
        _ => "cargo build --profile profiling --bin pagecrawl".into(),
    }
}

/// The config the benchmark gives pagecrawl: `extra` lines (such as the
/// two-stage scenarios' `detail` table), then the `--config-line` ones.
pub fn write_config(
    ctx: &Bench,
    dir: &Path,
    url: &str,
    pages: &str,
    concurrency: usize,
    extra: &[&str],
) -> Result<PathBuf> {
    let mut text = format!(
        "url = \"{url}\"\npages = \"{pages}\"\n{}\nconcurrency = {concurrency}\n",
        pattern_line()
    );
    for line in extra
        .iter()
        .copied()
        .chain(ctx.config_lines.iter().map(String::as_str))
    {
        text.push_str(line);
        text.push('\n');
    }
    let path = dir.join("bench.toml");
    fs::write(&path, text)?;
    Ok(path)
}

pub fn pattern_line() -> &'static str {
    EXAMPLE_CONFIG
        .lines()
        .find(|l| l.starts_with("pattern ="))
        .unwrap_or_default()
}

/// The pattern itself (the TOML literal string's content).
pub fn pattern_text() -> &'static str {
    let line = pattern_line();
    let start = line.find('\'').map_or(0, |i| i + 1);
    let end = line.rfind('\'').unwrap_or(line.len());
    line.get(start..end).unwrap_or_default()
}

pub fn fresh_dir(ctx: &Bench, name: &str) -> Result<PathBuf> {
    let dir = ctx.work.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn pagecrawl_command(ctx: &Bench, args: &[&str]) -> Command {
    let mut command = Command::new(&ctx.pagecrawl);
    command.arg("-q").args(args);
    command
}

/// The numbers in pagecrawl's summary line: (done, failed, items).
pub fn parse_summary(stdout: &str) -> Option<(u64, u64, u64)> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("finished:") || l.starts_with("stopped:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let number_before = |word: &str| {
        words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .and_then(|i| words.get(i.checked_sub(1)?))
            .and_then(|w| w.parse::<u64>().ok())
    };
    Some((
        number_before("pages")?,
        number_before("failed")?,
        number_before("items")?,
    ))
}

/// The numbers in pagecrawl's detail line: (done, pending, failed, items
/// waiting).
pub fn parse_detail_summary(stdout: &str) -> Option<(u64, u64, u64, u64)> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("detail pages:"))?;
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    match numbers[..] {
        [done, pending, failed, waiting] => Some((done, pending, failed, waiting)),
        _ => None,
    }
}

pub fn count_lines(path: &Path) -> u64 {
    fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_and_the_example_pattern_parse() {
        let line =
            "finished: 295 pages done, 0 failed, 5900 items in 0.91 s (324.2 pages/s); output: x";
        assert_eq!(parse_summary(line), Some((295, 0, 5900)));
        assert!(pattern_text().starts_with("<td>(?P<date>"));
        let detail =
            "detail pages: 5900 done, 2 pending, 1 failed; 3 items wait for their detail page";
        assert_eq!(parse_detail_summary(detail), Some((5900, 2, 1, 3)));
        assert_eq!(parse_detail_summary(line), None);
        assert_eq!(parse_detail_summary("detail pages: 5 done"), None);
        assert_eq!(
            parse_detail_summary("detail pages: 1 done, 2 pending, 3 failed; 4 items, 5 more"),
            None
        );
    }

    #[test]
    fn pagecrawl_is_found_beside_the_benchmark_or_above_examples() {
        let example = Path::new("/t/target/profiling/examples/pagecrawl-bench");
        assert_eq!(
            pagecrawl_candidates(example),
            [
                PathBuf::from("/t/target/profiling/examples/pagecrawl"),
                PathBuf::from("/t/target/profiling/pagecrawl"),
            ]
        );
        assert_eq!(
            build_command(example),
            "cargo build --profile profiling --bin pagecrawl"
        );
        let beside = Path::new("/opt/bench/pagecrawl-bench");
        assert_eq!(
            pagecrawl_candidates(beside),
            [PathBuf::from("/opt/bench/pagecrawl")]
        );
        assert_eq!(
            build_command(Path::new("/t/target/release/examples/pagecrawl-bench")),
            "cargo build --release --bin pagecrawl"
        );
        assert_eq!(
            build_command(Path::new("/t/target/debug/examples/pagecrawl-bench")),
            "cargo build --bin pagecrawl"
        );
    }
}

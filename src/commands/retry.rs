//! `pagecrawl retry [PAGE...]`: failed pages back to pending.

use std::path::Path;

use anyhow::Result;

use crate::control::Backend;
use crate::exit_code::Exit;

pub fn command(dir: &Path, pages: &[u64]) -> Result<Exit> {
    let mut backend = Backend::connect(dir)?;
    let asked_daemon = backend.is_daemon();
    let report = backend.retry(pages)?;
    if asked_daemon && !backend.is_daemon() {
        eprintln!("pagecrawl: note: the running crawl was finishing and took no more pages; they were put back in the state instead");
    }
    print_report(&report, who_fetches(&backend));
    Ok(Exit::Success)
}

/// `retry --store URL --job NAME [PAGE...]`: failed tasks of the job in a
/// PostgreSQL store back to pending.
pub fn command_store(url: &str, job: &str, pages: &[u64]) -> Result<Exit> {
    let mut remote = crate::store::postgres::read::open_job(url, job)?;
    let report = crate::store::postgres::ops::retry(&mut remote.client, remote.id, pages)?;
    print_report(&report, "the job's daemons fetch them");
    Ok(Exit::Success)
}

/// What a retry moved, and the pages named that were not failed.
fn print_report(report: &crate::control::ops::RetryReport, who: &str) {
    let details = if report.details_moved > 0 {
        format!(" and {} failed detail pages", report.details_moved)
    } else {
        String::new()
    };
    println!(
        "{} failed pages{details} back in the queue; {who}",
        report.moved
    );
    if !report.not_failed.is_empty() {
        let list: Vec<String> = report.not_failed.iter().map(u64::to_string).collect();
        eprintln!(
            "pagecrawl: note: not failed, left as they are: {}",
            list.join(" ")
        );
    }
}

/// Who crawls the pages a command queued: the daemon that took them, or
/// the next run.
pub(super) fn who_fetches(backend: &Backend) -> &'static str {
    if backend.is_daemon() {
        "the running crawl fetches them"
    } else {
        "`pagecrawl run` fetches them"
    }
}

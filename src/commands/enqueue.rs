//! `pagecrawl enqueue RANGE...`: add pages (done or failed ones again).

use std::path::Path;

use anyhow::Result;

use crate::control::Backend;
use crate::error::UserError;
use crate::exit_code::Exit;
use crate::range::parse_closed_ranges;

pub fn command(dir: &Path, ranges: &[String]) -> Result<Exit> {
    // Check the ranges before touching anything.
    parse_closed_ranges(ranges).map_err(UserError::Usage)?;
    let mut backend = Backend::connect(dir)?;
    let asked_daemon = backend.is_daemon();
    let report = backend.enqueue(ranges)?;
    if asked_daemon && !backend.is_daemon() {
        eprintln!("pagecrawl: note: the running crawl was finishing and took no more pages; they were queued in the state instead");
    }
    println!(
        "queued {} pages ({} new, {} again); {} were already pending; {}",
        report.added + report.requeued,
        report.added,
        report.requeued,
        report.already_pending,
        super::retry::who_fetches(&backend)
    );
    Ok(Exit::Success)
}

/// `enqueue --store URL --job NAME RANGE...`: pages queued in the job in a
/// PostgreSQL store; its daemons lease them.
pub fn command_store(url: &str, job: &str, ranges: &[String]) -> Result<Exit> {
    let parsed = parse_closed_ranges(ranges).map_err(UserError::Usage)?;
    let mut remote = crate::store::postgres::read::open_job(url, job)?;
    let report = crate::store::postgres::ops::enqueue(&mut remote.client, remote.id, &parsed)?;
    println!(
        "queued {} pages ({} new, {} again); {} were already pending; the job's daemons fetch them",
        report.added + report.requeued,
        report.added,
        report.requeued,
        report.already_pending,
    );
    Ok(Exit::Success)
}

//! `pagecrawl enqueue RANGE...`: add pages (done or failed ones again).

use std::path::Path;

use anyhow::Result;

use crate::error::UserError;
use crate::exit_code::Exit;
use crate::range::parse_closed_ranges;
use crate::store::Store;

pub fn command(dir: &Path, ranges: &[String]) -> Result<Exit> {
    let ranges = parse_closed_ranges(ranges).map_err(UserError::Usage)?;
    let store = Store::open_existing(dir)?;
    let report = store.enqueue(&ranges)?;
    store.flush()?;
    println!(
        "queued {} pages ({} new, {} again); {} were already pending",
        report.added + report.requeued,
        report.added,
        report.requeued,
        report.already_pending
    );
    Ok(Exit::Success)
}

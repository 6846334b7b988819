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
    let report = Backend::connect(dir)?.enqueue(ranges)?;
    println!(
        "queued {} pages ({} new, {} again); {} were already pending",
        report.added + report.requeued,
        report.added,
        report.requeued,
        report.already_pending
    );
    Ok(Exit::Success)
}

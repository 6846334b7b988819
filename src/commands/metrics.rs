//! `pagecrawl metrics`: the Prometheus text of the running crawl, asked
//! over its control socket; with none running, the counters its state
//! keeps (pages, items, retries, failures, last commit), and a note on
//! stderr that the live ones need a running crawl.

use std::path::Path;

use anyhow::Result;

use crate::control::Backend;
use crate::exit_code::Exit;

pub fn command(dir: &Path) -> Result<Exit> {
    let (text, live) = Backend::connect(dir)?.metrics()?;
    if !live {
        crate::logger::eprint_line(&format!(
            "pagecrawl: no crawl is running in {}: these are the counters kept in its state; \
             requests, bytes, latency, in-flight and rate-limit waits need a running crawl",
            dir.display()
        ));
    }
    super::write_stdout(text.as_bytes())?;
    Ok(Exit::Success)
}

/// `metrics --store URL --job NAME`: the counts of the job in a PostgreSQL
/// store, in the same text; the live families need the daemon that
/// measures them.
pub fn command_store(url: &str, job: &str) -> Result<Exit> {
    let status = crate::store::postgres::read::open_job(url, job)?.status()?;
    let text = crate::metrics::render_kept(&crate::metrics::Kept::of_status(&status), None)?;
    super::write_stdout(text.as_bytes())?;
    Ok(Exit::Success)
}

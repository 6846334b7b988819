//! `pagecrawl reopen`: start a new output file once the old one was moved
//! aside, the daemon convention for rotating a log (nginx's reopen). With
//! a crawl running, its commit stage does it at its next commit boundary
//! (SIGUSR1 does the same); with none, the checkpoint is pointed at a new
//! file here.

use std::path::Path;

use anyhow::{bail, Result};

use crate::control::Backend;
use crate::exit_code::Exit;
use crate::output::matches_checkpoint;
use crate::output::{csv_header, open_no_follow, Format};
use crate::store::{Fingerprint, Store};

pub fn command(dir: &Path) -> Result<Exit> {
    let started = match Backend::connect(dir)? {
        Backend::Daemon(socket) => Backend::reopen_running(&socket)?,
        Backend::Direct(store) => reopen_stopped(&store)?,
    };
    if started {
        println!("reopened: new items go to a new output file; the one moved aside holds everything before");
    } else {
        println!(
            "nothing to reopen: the output was not moved aside (rename it first, then reopen)"
        );
    }
    Ok(Exit::Success)
}

/// No crawl runs: if the output was moved aside, start the new file (with
/// its CSV header) and record it as the checkpoint's file, in one batch.
fn reopen_stopped(store: &Store) -> Result<bool> {
    let Some(job) = store.job()? else {
        bail!(
            "no job is recorded in {}; nothing to reopen",
            store.dir().display()
        );
    };
    let counters = store.counters();
    if let Ok(existing) = std::fs::File::open(&job.output) {
        let metadata = existing.metadata()?;
        if metadata.len() >= counters.output_len
            && matches_checkpoint(
                &existing,
                counters.output_len,
                counters.output_fingerprint(),
            )
            && (counters.output_len > 0 || metadata.len() == 0)
        {
            return Ok(false);
        }
        if metadata.len() > 0 {
            bail!(
                "cannot reopen: {} holds {} bytes that this crawl did not write; move it aside too, or remove it",
                job.output.display(),
                metadata.len()
            );
        }
    }
    let mut file = open_no_follow(&job.output)?;
    let mut header = Vec::new();
    if Format::from_name(&job.format) == Some(Format::Csv) {
        use std::io::Write;
        header = csv_header(&job.fields);
        file.write_all(&header)?;
    }
    file.sync_all()?;
    crate::util::sync_parent(&job.output)?;
    store.record_output(Fingerprint::of(&header), header.len() as u64)?;
    store.flush()?;
    Ok(true)
}

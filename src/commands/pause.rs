//! `pagecrawl pause` / `resume`: stop and restart feeding a running crawl
//! without stopping the process. In-flight requests finish; no new one
//! starts until `resume`.

use std::path::Path;

use anyhow::Result;

use crate::control::Backend;
use crate::exit_code::Exit;

pub fn command(dir: &Path, paused: bool) -> Result<Exit> {
    let status = Backend::connect(dir)?.set_paused(paused)?;
    print!("{}", super::status::render(&status));
    Ok(Exit::Success)
}

/// `pause` / `resume` with `--store URL --job NAME`: the job's flag in the
/// database, which every daemon of the job obeys (none leases while it is
/// set), and a notification for those that listen.
pub fn command_store(url: &str, job: &str, paused: bool) -> Result<Exit> {
    let mut remote = crate::store::postgres::read::open_job(url, job)?;
    crate::store::postgres::ops::set_paused(&mut remote.client, remote.id, paused)?;
    print!("{}", super::status::render(&remote.status()?));
    Ok(Exit::Success)
}

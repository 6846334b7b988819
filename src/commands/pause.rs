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

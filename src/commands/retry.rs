//! `pagecrawl retry [PAGE...]`: failed pages back to pending.

use std::path::Path;

use anyhow::Result;

use crate::control::Backend;
use crate::exit_code::Exit;

pub fn command(dir: &Path, pages: &[u64]) -> Result<Exit> {
    let backend = Backend::connect(dir)?;
    let report = backend.retry(pages)?;
    let next = match backend {
        Backend::Daemon(_) => "the running crawl fetches them",
        Backend::Direct(_) => "`pagecrawl run` fetches them",
    };
    println!("{} failed pages back in the queue; {next}", report.moved);
    if !report.not_failed.is_empty() {
        let list: Vec<String> = report.not_failed.iter().map(u64::to_string).collect();
        eprintln!(
            "pagecrawl: note: not failed, left as they are: {}",
            list.join(" ")
        );
    }
    Ok(Exit::Success)
}

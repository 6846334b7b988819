//! `pagecrawl retry [PAGE...]`: failed pages back to pending.

use std::path::Path;

use anyhow::Result;

use crate::exit_code::Exit;
use crate::store::Store;

pub fn command(dir: &Path, pages: &[u64]) -> Result<Exit> {
    let store = Store::open_existing(dir)?;
    let (moved, not_failed) = store.retry((!pages.is_empty()).then_some(pages))?;
    store.flush()?;
    println!("{moved} failed pages back in the queue; `pagecrawl run` fetches them");
    if !not_failed.is_empty() {
        let list: Vec<String> = not_failed.iter().map(u64::to_string).collect();
        eprintln!(
            "pagecrawl: note: not failed, left as they are: {}",
            list.join(" ")
        );
    }
    Ok(Exit::Success)
}

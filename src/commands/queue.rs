//! `pagecrawl queue`: pages in one state, in page order.

use std::path::Path;

use anyhow::Result;

use crate::cli::PageStateArg;
use crate::control::Backend;
use crate::exit_code::Exit;

pub fn command(dir: &Path, which: PageStateArg, limit: usize, json: bool) -> Result<Exit> {
    let state = match which {
        PageStateArg::Pending => "pending",
        PageStateArg::Done => "done",
        PageStateArg::Failed => "failed",
    };
    let rows = Backend::connect(dir)?.queue(state, limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Exit::Success);
    }
    if rows.is_empty() {
        println!("no {state} pages");
        return Ok(Exit::Success);
    }
    println!("{:>8}  {:<8}  {:>8}  detail", "page", "state", "attempts");
    for row in &rows {
        let detail = match (&row.items, &row.bytes, &row.error) {
            (Some(items), Some(bytes), _) => format!("{items} items, {bytes} bytes"),
            (_, _, Some(error)) => error.clone(),
            _ => String::new(),
        };
        println!(
            "{:>8}  {:<8}  {:>8}  {detail}",
            row.page, row.state, row.attempts
        );
    }
    Ok(Exit::Success)
}

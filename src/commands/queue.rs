//! `pagecrawl queue`: pages in one state, in page order.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::cli::PageStateArg;
use crate::exit_code::Exit;
use crate::store::{PageState, StateFilter, Store};

pub fn command(dir: &Path, which: PageStateArg, limit: usize, json: bool) -> Result<Exit> {
    let store = Store::open_existing(dir)?;
    let filter = match which {
        PageStateArg::Pending => StateFilter::Pending,
        PageStateArg::Done => StateFilter::Done,
        PageStateArg::Failed => StateFilter::Failed,
    };
    let rows = store.list(filter, limit)?;
    if json {
        let values: Vec<serde_json::Value> = rows
            .iter()
            .map(|(page, state)| match state {
                PageState::Pending(p) => {
                    json!({"page": page, "state": "pending", "attempts": p.attempts,
                    "error": (!p.last_error.is_empty()).then_some(&p.last_error),
                    "not_before_ms": (p.not_before_ms > 0).then_some(p.not_before_ms)})
                }
                PageState::Done(d) => json!({"page": page, "state": "done", "attempts": d.attempts,
                    "items": d.items, "bytes": d.bytes, "at_ms": d.at_ms}),
                PageState::Failed(f) => {
                    json!({"page": page, "state": "failed", "attempts": f.attempts,
                    "reason": f.kind, "error": f.detail, "at_ms": f.at_ms})
                }
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(Exit::Success);
    }
    if rows.is_empty() {
        println!("no {} pages", format!("{which:?}").to_lowercase());
        return Ok(Exit::Success);
    }
    println!("{:>8}  {:<8}  {:>8}  detail", "page", "state", "attempts");
    for (page, state) in &rows {
        let (name, attempts, detail) = match state {
            PageState::Pending(p) => ("pending", p.attempts, p.last_error.clone()),
            PageState::Done(d) => (
                "done",
                d.attempts,
                format!("{} items, {} bytes", d.items, d.bytes),
            ),
            PageState::Failed(f) => ("failed", f.attempts, f.to_string()),
        };
        println!("{page:>8}  {name:<8}  {attempts:>8}  {detail}");
    }
    Ok(Exit::Success)
}

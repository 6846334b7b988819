//! `pagecrawl repair`: after the output was truncated, deleted or replaced
//! behind the crawl (or the state lost its queue), keep every item still
//! in the file and re-queue exactly the pages whose items are gone. See
//! `crate::repair` for how the file is read back.

use std::path::Path;

use anyhow::Result;

use crate::control::Backend;
use crate::error::UserError;
use crate::exit_code::Exit;

pub fn command(dir: &Path) -> Result<Exit> {
    let store = match Backend::connect(dir)? {
        Backend::Direct(store) => *store,
        Backend::Daemon(_) => {
            return Err(UserError::Busy(format!(
                "a crawl is running in {}; stop it first (repair needs the state to itself)",
                dir.display()
            ))
            .into())
        }
    };
    let report = crate::repair::repair(&store)?;
    println!("{report}");
    Ok(Exit::Success)
}

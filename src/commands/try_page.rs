//! `pagecrawl try --config F --page N`: fetch one page, show what the
//! pattern extracts, touch no state. The way to debug a pattern.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Result};

use crate::charset;
use crate::config::Config;
use crate::exit_code::Exit;
use crate::extract::Extractor;
use crate::http::Fetcher;
use crate::output::{render, Format};

pub fn command(config_path: &Path, page: u64) -> Result<Exit> {
    let config = Config::load(config_path)?;
    let url = config.page_url(page);
    let started = Instant::now();
    let response = Fetcher::new(&config)
        .fetch(&url)
        .map_err(|e| anyhow!("fetching page {page} ({url}): {e}"))?;
    let elapsed = started.elapsed();
    let (text, encoding) = charset::decode(
        response.content_type.as_deref(),
        &response.body,
        config.charset,
    );
    let items = Extractor::new(config.pattern.clone()).extract(&text);
    let rendered = render(Format::Jsonl, page, &config.fields, &items);
    print!("{}", String::from_utf8_lossy(&rendered));
    eprintln!(
        "pagecrawl: page {page}: {} items ({} bytes, {}, {:.0?}) from {url}",
        items.len(),
        response.body.len(),
        encoding.name(),
        elapsed
    );
    if items.is_empty() {
        eprintln!(
            "pagecrawl: the pattern matched nothing on this page. Check it against the page source \
             (curl '{url}'); if the text looks garbled, set `charset` in the config."
        );
    }
    Ok(Exit::Success)
}

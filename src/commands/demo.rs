//! `pagecrawl demo`: serve the built-in WooYun-style mirror on an ephemeral
//! port of 127.0.0.1 and crawl it with the example config, so a newcomer
//! sees a real crawl in seconds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::exit_code::Exit;
use crate::fixture::{Server, Site};

/// The example config shipped in `data/`; the demo points it at its mirror.
const EXAMPLE_CONFIG: &str = include_str!("../../data/wooyun.toml");
const EXAMPLE_URL: &str = "http://127.0.0.1:8080/wooyun/bugs.php?page={page}";

pub fn command(dir: Option<PathBuf>, latency_ms: u64, listing_only: bool) -> Result<Exit> {
    let dir = match dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("pagecrawl-demo-")
            .tempdir()
            .context("cannot create a temporary folder for the demo")?
            .keep(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // As a real mirror: some detail pages slow, some in GBK, a few gone.
    let site = Site::demo_mirror(Duration::from_millis(latency_ms));
    let not_found = site.detail_not_found;
    let server = Server::start(site).context("cannot start the demo mirror on 127.0.0.1")?;
    eprintln!(
        "pagecrawl demo: serving a WooYun-style mirror ({} pages of {} bug reports, {latency_ms} ms per page) at http://{}/wooyun/",
        crate::fixture::wooyun::PAGES,
        crate::fixture::wooyun::PER_PAGE,
        server.addr()
    );
    // The mirror's port changes every time, and the job's URL is part of its
    // identity: each demo gets a state directory of its own.
    let config_path = dir.join("wooyun.toml");
    let mut config_text = EXAMPLE_CONFIG.replace(EXAMPLE_URL, &server.url_template());
    if listing_only {
        config_text = config_text
            .lines()
            .filter(|line| !line.starts_with("detail = "))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }
    std::fs::write(&config_path, &config_text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::parse(&config_text, &config_path)?;
    let state_dir = super::run_state_dir(None, &config);
    if crate::store::exists(&state_dir) {
        std::fs::remove_dir_all(&state_dir)
            .with_context(|| format!("cannot clear the old demo state {}", state_dir.display()))?;
    }
    let mut exit = super::run::crawl(&config, &state_dir, None)?;
    if exit == Exit::FailedPages && !listing_only {
        // The mirror's planted 404s: what a real site has, not a failure
        // of the demo.
        eprintln!(
            "pagecrawl demo: the mirror answers 404 for about {:.1}% of its detail pages on purpose; their items are written with detail_error (on_failure = \"write\"); see them with\n  pagecrawl queue --stage detail --state failed --state-dir {}",
            not_found * 100.0,
            state_dir.display()
        );
        exit = Exit::Success;
    }
    eprintln!(
        "pagecrawl demo: config {}; look around with\n  pagecrawl status --state-dir {}\n  pagecrawl export --state-dir {} --format csv | head",
        config_path.display(),
        state_dir.display(),
        state_dir.display()
    );
    Ok(exit)
}

//! `pagecrawl-bench parts`: the CPU each part of a page's work costs on its
//! own, in this process (fetch bare and through ureq, decode + extract +
//! render with each engine, checkpoint in sled).

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use anyhow::{anyhow, bail, Result};
use pagecrawl::fixture::wooyun::PER_PAGE;

use crate::job::pattern_line;
use crate::measure::process_cpu;
use crate::server::padding_for;
use crate::server_process::ServerProcess;
use crate::server_speed::bare_clients;
use crate::Engine;

/// `parts`: each part of a page's work alone, CPU of this process per page.
pub fn parts(pages: u64, concurrency: usize, page_bytes: usize) -> Result<()> {
    let padding = padding_for(page_bytes);
    let server = ServerProcess::start(Engine::Fast, 0, pages, padding)?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("bench.toml");
    let url = server.url_template();
    fs::write(
        &config_path,
        format!(
            "url = \"{url}\"\npages = \"1..={pages}\"\n{}\nconcurrency = {concurrency}\n",
            pattern_line()
        ),
    )?;
    let config = pagecrawl::config::Config::load(&config_path).map_err(|e| anyhow!("{e}"))?;
    let me = std::process::id();
    let cpu_ms = || process_cpu(me).unwrap_or_default().as_secs_f64() * 1e3;
    println!("| part (alone, this process) | pages | threads | CPU ms/page |");
    println!("| --- | ---: | ---: | ---: |");
    let row = |part: &str, threads: usize, run: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let before = cpu_ms();
        run()?;
        let per_page = (cpu_ms() - before) / pages as f64;
        println!("| {part} | {pages} | {threads} | {per_page:.3} |");
        Ok(per_page)
    };

    // Fetching with a bare HTTP/1.1 keep-alive client: the kernel's share.
    row("fetch: bare keep-alive client", concurrency, &mut || {
        bare_clients(server.addr, pages, concurrency).map(drop)
    })?;

    // The same through ureq, as a fetch thread does it.
    let fetcher = Arc::new(pagecrawl::http::Fetcher::new(&config));
    let mut bodies: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    row(
        "fetch: ureq (pagecrawl's fetcher)",
        concurrency,
        &mut || {
            let next = Arc::new(AtomicU64::new(0));
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (next, fetcher, config) = (next.clone(), fetcher.clone(), config.clone());
                    thread::spawn(move || -> Result<Vec<(Option<String>, Vec<u8>)>> {
                        let mut kept = Vec::new();
                        loop {
                            let page = next.fetch_add(1, Ordering::SeqCst) + 1;
                            if page > pages {
                                return Ok(kept);
                            }
                            let response = fetcher.fetch(&config.page_url(page))?;
                            if kept.len() < 16 {
                                kept.push((response.content_type, response.body));
                            }
                        }
                    })
                })
                .collect();
            for worker in workers {
                bodies.extend(
                    worker
                        .join()
                        .map_err(|_| anyhow!("a fetch thread panicked"))??,
                );
            }
            Ok(())
        },
    )?;
    server.stop()?;

    // Decoding, extracting and rendering, on bodies fetched above: with
    // each engine that takes this pattern (the first is the one pagecrawl
    // uses).
    use pagecrawl::extract::{Engine as Extraction, Extractor};
    let engines: Vec<(String, Extractor)> = [
        Extraction::Sequence,
        Extraction::OnePass,
        Extraction::General,
    ]
    .into_iter()
    .filter_map(|engine| {
        let extractor = Extractor::with_engine(config.pattern.clone(), engine)?;
        Some((
            format!("decode + extract + render ({} engine)", engine.describe()),
            extractor,
        ))
    })
    .collect();
    for (part, extractor) in engines {
        let mut items = 0usize;
        row(&part, 1, &mut || {
            let mut rendered = Vec::new();
            for page in 0..pages {
                let (content_type, body) = &bodies[page as usize % bodies.len()];
                let (text, _) =
                    pagecrawl::charset::decode(content_type.as_deref(), body, config.charset);
                rendered.clear();
                extractor.for_each(&text, |values| {
                    pagecrawl::output::render_into(
                        &mut rendered,
                        config.format,
                        page,
                        &config.fields,
                        values,
                    );
                    items += 1;
                });
            }
            Ok(())
        })?;
        if items as u64 != pages * PER_PAGE as u64 {
            bail!("extracted {items} items from {pages} pages, expected {PER_PAGE} a page");
        }
    }

    // Checkpointing: read pages from the lazy range, commit them in groups
    // of `commit_every` with a flush each, as the commit stage does.
    let store = pagecrawl::store::Store::open(&dir.path().join("state"))?;
    store.enqueue(&[pagecrawl::range::PageRange::Closed {
        start: 1,
        end: pages,
    }])?;
    row("checkpoint: sled commit groups + flush", 1, &mut || {
        let (mut after, mut output_len) = (None, 0);
        loop {
            let batch = store.lazy_after(after, 256)?;
            let Some(&last) = batch.last() else {
                return Ok(());
            };
            after = Some(last);
            for group in batch.chunks(config.commit_every) {
                let settles: Vec<_> = group
                    .iter()
                    .map(|&page| pagecrawl::store::Settle::Done {
                        page,
                        attempts: 1,
                        items: PER_PAGE as u32,
                        extracted: PER_PAGE as u32,
                        bytes: page_bytes as u64,
                        keys: Vec::new(),
                    })
                    .collect();
                output_len += 4_000 * group.len() as u64;
                store.commit(&settles, output_len, None)?;
                store.flush()?;
            }
        }
    })?;
    if store.counters().done != pages {
        bail!(
            "the store recorded {} pages done, expected {pages}",
            store.counters().done
        );
    }
    println!("(CPU: user + sys of this process from /proc/self/stat around each part, tick accounting; the server is another process)");
    Ok(())
}

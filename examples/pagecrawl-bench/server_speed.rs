//! `pagecrawl-bench server-speed`: the two server engines compared with a
//! minimal keep-alive client (also used by `parts` as the bare fetch).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pagecrawl::fixture::{page_body, Site};

use crate::measure::process_cpu;
use crate::server::{padding_for, Pages, PAGE_PATH};
use crate::server_process::ServerProcess;
use crate::Engine;

/// `server-speed`: each engine in turn, hammered by `concurrency` keep-alive
/// connections for `pages` requests.
pub fn server_speed(pages: u64, concurrency: usize, page_bytes: usize) -> Result<()> {
    let padding = padding_for(page_bytes);
    println!("| server engine | requests | connections | wall s | requests/s | server CPU µs/request | mean body bytes |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for engine in [Engine::Fixture, Engine::Fast] {
        let server = ServerProcess::start(engine, 0, pages, padding)?;
        let cpu_before = process_cpu(server.child.id()).unwrap_or_default();
        let started = Instant::now();
        let bytes = bare_clients(server.addr, pages, concurrency)?;
        let wall = started.elapsed();
        let cpu = process_cpu(server.child.id())
            .unwrap_or_default()
            .saturating_sub(cpu_before);
        server.stop()?;
        println!(
            "| {engine:?} | {pages} | {concurrency} | {:.2} | {:.0} | {:.1} | {} |",
            wall.as_secs_f64(),
            pages as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / pages as f64,
            bytes / pages.max(1)
        );
    }
    println!("(server CPU: /proc/PID/stat of the server around the requests, start-up and pre-rendering excluded; tick accounting, ±10 ms)");
    // Rendering alone, in this process, one thread.
    let site = Site {
        pages,
        padding,
        ..Site::default()
    };
    let fast = Pages::new(pages, padding)?;
    let count = pages.min(2_000);
    let started = Instant::now();
    let fixture_bytes: usize = (1..=count).map(|p| page_body(&site, p).len()).sum();
    let fixture_render = started.elapsed();
    let started = Instant::now();
    let fast_bytes: usize = (1..=count).map(|p| fast.body(p).len()).sum();
    let fast_render = started.elapsed();
    println!(
        "rendering one page: fixture {:.1} µs, fast {:.1} µs ({} pages, {} and {} bytes)",
        fixture_render.as_secs_f64() * 1e6 / count as f64,
        fast_render.as_secs_f64() * 1e6 / count as f64,
        count,
        fixture_bytes,
        fast_bytes
    );
    Ok(())
}

/// Fetches pages 1..=`pages` with `connections` bare keep-alive clients in
/// threads of their own; returns the body bytes read.
pub fn bare_clients(addr: SocketAddr, pages: u64, connections: usize) -> Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (next, bytes) = (next.clone(), bytes.clone());
            thread::spawn(move || keep_alive_client(addr, &next, pages, &bytes))
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    Ok(bytes.load(Ordering::SeqCst))
}

/// Fetches pages `next+1..=total` over one keep-alive connection, reading
/// each answer by its Content-Length.
pub fn keep_alive_client(
    addr: SocketAddr,
    next: &AtomicU64,
    total: u64,
    bytes: &AtomicU64,
) -> Result<()> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        let page = next.fetch_add(1, Ordering::SeqCst) + 1;
        if page > total {
            return Ok(());
        }
        // One write: with TCP_NODELAY, each piece of a `write!` would be a
        // packet of its own.
        let request = format!("GET {PAGE_PATH}{page} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        writer.write_all(request.as_bytes())?;
        let mut length = None;
        line.clear();
        reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("page {page}: {line:?}");
        }
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("connection closed mid-answer");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.context("no Content-Length")?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
        bytes.fetch_add(length as u64, Ordering::Relaxed);
    }
}

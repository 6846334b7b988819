//! `pagecrawl-bench serve`: the benchmark site on 127.0.0.1, with its two
//! engines (this binary's fast keep-alive server, or the library's test
//! fixture), and the counters the fast one answers on `/__bench/stats`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use pagecrawl::fixture::wooyun::{self, PER_PAGE};
use pagecrawl::fixture::{page_body, Server, Site};

use crate::detail_pages;
use crate::{Engine, ServeArgs};

/// Where the listing pages are on the benchmark server.
pub const PAGE_PATH: &str = "/wooyun/bugs.php?page=";

/// The marker before which the boilerplate padding sits in a rendered page.
pub const TABLE_MARKER: &str = "<table class=\"listTable\">";

/// The listing pages' content type.
pub const HTML: &str = "text/html; charset=utf-8";

/// Pages whose responses fit in this many bytes are rendered once, at start.
pub const PRERENDER_BUDGET: u64 = 640 << 20;

/// Page bodies identical to `pagecrawl::fixture::page_body` for a UTF-8
/// site, but with the boilerplate (the bulk of a page, and the same on every
/// page) rendered once: a request renders only its 20 rows.
pub struct Pages {
    pub total: u64,
    /// The padding block of a rendered page.
    pub padding_block: String,
    /// Whole keep-alive responses (head and body) of pages 1..=total+1,
    /// back to back, when they fit the budget: then a request costs one
    /// `write` and no rendering.
    pub prerendered: Option<(Vec<u8>, Vec<usize>)>,
    /// The detail pages of the listed items (`serve --detail`), or none:
    /// then their links answer 404, as before the two-stage scenarios.
    pub details: Option<DetailPages>,
}

/// Whole keep-alive responses of the detail pages of every listed item,
/// back to back, in listing order (5,900 of ~4 KB take ~25 MB).
pub struct DetailPages {
    pub items: u64,
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
}

impl DetailPages {
    /// Renders the detail pages of the first `items` listed bugs.
    pub fn new(items: u64) -> Result<DetailPages> {
        if items > detail_pages::MAX_ITEMS {
            bail!(
                "detail pages are served for at most {} items, not {items}",
                detail_pages::MAX_ITEMS
            );
        }
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(items as usize);
        for (index, bug) in detail_pages::listed_bugs(items).iter().enumerate() {
            let body = detail_pages::render(index as u64, bug);
            bytes.extend_from_slice(&response("200 OK", HTML, body.as_bytes(), false));
            ends.push(bytes.len());
        }
        Ok(DetailPages { items, bytes, ends })
    }

    /// The listing position of the item whose detail page is at `target`.
    pub fn index_of(&self, target: &str) -> Option<u64> {
        detail_pages::index_of(target, self.items)
    }

    /// The keep-alive response for the item at `index` (< `items`).
    pub fn response(&self, index: u64) -> &[u8] {
        let index = index as usize;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.bytes[start..self.ends[index]]
    }
}

impl Pages {
    pub fn new(total: u64, padding: usize) -> Result<Pages> {
        let padded = wooyun::render_page(1, &[], 1, "utf-8", padding);
        let bare = wooyun::render_page(1, &[], 1, "utf-8", 0);
        let at = bare
            .find(TABLE_MARKER)
            .context("the page layout changed: no table marker")?;
        let block = padded[at..at + (padded.len() - bare.len())].to_string();
        let mut pages = Pages {
            total,
            padding_block: block,
            prerendered: None,
            details: None,
        };
        let site = Site {
            pages: total,
            padding,
            ..Site::default()
        };
        for page in [1, 2, total / 2 + 1, total, total + 1] {
            if pages.body(page) != page_body(&site, page) {
                bail!("the fast server's page {page} differs from the fixture's");
            }
        }
        let estimate = (total + 1).saturating_mul(pages.body(1).len() as u64 + 100);
        if estimate <= PRERENDER_BUDGET {
            let mut bytes = Vec::with_capacity(estimate as usize);
            let mut ends = Vec::with_capacity(total as usize + 1);
            for page in 1..=total + 1 {
                bytes.extend_from_slice(&response("200 OK", HTML, &pages.body(page), false));
                ends.push(bytes.len());
            }
            pages.prerendered = Some((bytes, ends));
        }
        Ok(pages)
    }

    /// The whole response for `page`: pre-rendered if possible.
    pub fn response(&self, page: u64, close: bool) -> std::borrow::Cow<'_, [u8]> {
        if let (Some((bytes, ends)), false) = (&self.prerendered, close) {
            if page >= 1 && page <= self.total + 1 {
                let index = (page - 1) as usize;
                let start = if index == 0 { 0 } else { ends[index - 1] };
                return std::borrow::Cow::Borrowed(&bytes[start..ends[index]]);
            }
        }
        std::borrow::Cow::Owned(response("200 OK", HTML, &self.body(page), close))
    }

    pub fn body(&self, page: u64) -> Vec<u8> {
        let bugs = if page >= 1 && page <= self.total {
            wooyun::bugs_on_page(page, PER_PAGE)
        } else {
            Vec::new()
        };
        let bare = wooyun::render_page(page, &bugs, self.total, "utf-8", 0);
        let at = bare.find(TABLE_MARKER).unwrap_or(bare.len());
        let mut body = Vec::with_capacity(bare.len() + self.padding_block.len());
        body.extend_from_slice(&bare.as_bytes()[..at]);
        body.extend_from_slice(self.padding_block.as_bytes());
        body.extend_from_slice(&bare.as_bytes()[at..]);
        body
    }
}

/// What the fast server counts; `/__bench/stats` returns it as JSON and
/// `/__bench/reset` zeroes it.
pub struct Counters {
    pub requests: AtomicU64,
    /// Requests for a page that had been requested before.
    pub repeats: AtomicU64,
    /// Requests for anything else (e.g. `/robots.txt`).
    pub other: AtomicU64,
    pub active: AtomicUsize,
    pub peak: AtomicUsize,
    /// Unix time in ns of the first page request's arrival and of the
    /// latest page response's end (0: none).
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
    pub seen: Vec<AtomicU32>,
    /// Detail page requests, and those for a detail page requested before.
    pub detail_requests: AtomicU64,
    pub detail_repeats: AtomicU64,
    pub detail_seen: Vec<AtomicU32>,
}

impl Counters {
    /// Counters for `pages` listing pages and `details` detail pages.
    pub fn new(pages: u64, details: u64) -> Counters {
        Counters {
            requests: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
            other: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            seen: (0..=pages + 1).map(|_| AtomicU32::new(0)).collect(),
            detail_requests: AtomicU64::new(0),
            detail_repeats: AtomicU64::new(0),
            detail_seen: (0..details).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub fn reset(&self) {
        for counter in [
            &self.requests,
            &self.repeats,
            &self.other,
            &self.first_ns,
            &self.last_ns,
            &self.detail_requests,
            &self.detail_repeats,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
        self.peak
            .store(self.active.load(Ordering::SeqCst), Ordering::SeqCst);
        for seen in self.seen.iter().chain(&self.detail_seen) {
            seen.store(0, Ordering::Relaxed);
        }
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"requests\":{},\"repeats\":{},\"other\":{},\"peak\":{},\"first_ns\":{},\"last_ns\":{},\"detail_requests\":{},\"detail_repeats\":{}}}",
            self.requests.load(Ordering::SeqCst),
            self.repeats.load(Ordering::SeqCst),
            self.other.load(Ordering::SeqCst),
            self.peak.load(Ordering::SeqCst),
            self.first_ns.load(Ordering::SeqCst),
            self.last_ns.load(Ordering::SeqCst),
            self.detail_requests.load(Ordering::SeqCst),
            self.detail_repeats.load(Ordering::SeqCst),
        )
    }

    /// Counts a page request; returns a guard that ends it.
    pub fn begin(&self, page: u64) -> Active<'_> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let slot = usize::try_from(page)
            .unwrap_or(usize::MAX)
            .min(self.seen.len() - 1);
        if self.seen[slot].fetch_add(1, Ordering::Relaxed) > 0 && slot < self.seen.len() - 1 {
            self.repeats.fetch_add(1, Ordering::SeqCst);
        }
        self.start()
    }

    /// Counts a request for the detail page of the item at `index`.
    pub fn begin_detail(&self, index: u64) -> Active<'_> {
        self.detail_requests.fetch_add(1, Ordering::SeqCst);
        if self.detail_seen[index as usize].fetch_add(1, Ordering::Relaxed) > 0 {
            self.detail_repeats.fetch_add(1, Ordering::SeqCst);
        }
        self.start()
    }

    /// A request of either stage begins: the clock and the requests in
    /// flight, which count both.
    fn start(&self) -> Active<'_> {
        let now = unix_ns();
        let _ = self
            .first_ns
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        let now_active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now_active, Ordering::SeqCst);
        Active(self)
    }
}

/// A page request in progress; dropping it ends it.
pub struct Active<'a>(&'a Counters);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.last_ns.fetch_max(unix_ns(), Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `pagecrawl-bench serve`: prints `listening ADDR`, serves until stdin
/// closes or `--max-seconds` pass.
pub fn serve(args: &ServeArgs) -> Result<()> {
    let latency = Duration::from_millis(args.latency_ms);
    // Held until the process exits.
    let _fixture;
    if args.detail && args.engine != Engine::Fast {
        bail!("detail pages are served by the fast engine only (--engine fast)");
    }
    let addr = match args.engine {
        Engine::Fixture => {
            let server = Server::start(Site {
                pages: args.pages,
                padding: args.padding,
                latency,
                ..Site::default()
            })
            .context("cannot start the fixture server")?;
            let addr = server.addr();
            _fixture = server;
            addr
        }
        Engine::Fast => {
            let mut pages = Pages::new(args.pages, args.padding)?;
            let items = if args.detail {
                args.pages * PER_PAGE as u64
            } else {
                0
            };
            if args.detail {
                pages.details = Some(DetailPages::new(items)?);
            }
            let pages = Arc::new(pages);
            let counters = Arc::new(Counters::new(args.pages, items));
            let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen")?;
            let addr = listener.local_addr()?;
            thread::Builder::new()
                .name("accept".into())
                .spawn(move || {
                    for stream in listener.incoming().flatten() {
                        let (pages, counters) = (pages.clone(), counters.clone());
                        let _ = thread::Builder::new()
                            .name("conn".into())
                            .spawn(move || serve_connection(stream, &pages, &counters, latency));
                    }
                })?;
            addr
        }
    };
    println!("listening {addr}");
    std::io::stdout().flush()?;
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(Duration::from_secs(args.max_seconds));
    Ok(())
}

pub fn serve_connection(stream: TcpStream, pages: &Pages, counters: &Counters, latency: Duration) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = String::new();
    loop {
        let Some((target, close)) = read_request(&mut reader, &mut line) else {
            return;
        };
        let written = if let Some(page) = target
            .strip_prefix(PAGE_PATH)
            .and_then(|p| p.parse::<u64>().ok())
        {
            let _active = counters.begin(page);
            if !latency.is_zero() {
                thread::sleep(latency);
            }
            writer.write_all(&pages.response(page, close))
        } else if let Some((details, index)) = pages
            .details
            .as_ref()
            .and_then(|d| Some((d, d.index_of(&target)?)))
        {
            let _active = counters.begin_detail(index);
            if !latency.is_zero() {
                thread::sleep(latency);
            }
            if close {
                let body = detail_pages::render(
                    index,
                    &detail_pages::listed_bugs(index + 1)[index as usize],
                );
                writer.write_all(&response("200 OK", HTML, body.as_bytes(), true))
            } else {
                writer.write_all(details.response(index))
            }
        } else if target == "/__bench/stats" {
            let json = counters.json().into_bytes();
            writer.write_all(&response("200 OK", "application/json", &json, close))
        } else if target == "/__bench/reset" {
            counters.reset();
            writer.write_all(&response("200 OK", "text/plain", b"ok\n", close))
        } else {
            counters.other.fetch_add(1, Ordering::SeqCst);
            writer.write_all(&response(
                "404 Not Found",
                "text/plain",
                b"no such page\n",
                close,
            ))
        };
        if written.is_err() || close {
            return;
        }
    }
}

/// An HTTP/1.1 response, head and body.
pub fn response(status: &str, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads one request head; returns its target and whether the connection
/// closes after the answer. `None` at the end of the stream.
pub fn read_request(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
) -> Option<(String, bool)> {
    line.clear();
    if reader.read_line(line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let _method = parts.next()?;
    let target = parts.next()?.to_string();
    let mut close = parts.next() == Some("HTTP/1.0");
    let mut content_length = 0u64;
    loop {
        line.clear();
        if reader.read_line(line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            }
        }
    }
    if content_length > 0 {
        std::io::copy(&mut reader.take(content_length), &mut std::io::sink()).ok()?;
    }
    Some((target, close))
}

/// The padding that makes an average page about `page_bytes` long.
pub fn padding_for(page_bytes: usize) -> usize {
    let bugs = wooyun::bugs_on_page(1, PER_PAGE);
    let bare = wooyun::render_page(1, &bugs, wooyun::PAGES, "utf-8", 0).len();
    page_bytes.saturating_sub(bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_pages_equal_the_fixture_pages() {
        // Pages::new compares several pages with the fixture's and refuses
        // to start on any difference.
        let pages = Pages::new(300, padding_for(20_000)).unwrap();
        let size = pages.body(7).len();
        assert!((18_000..22_000).contains(&size), "{size}");
    }

    #[test]
    fn detail_responses_are_the_rendered_pages_of_their_items() {
        let details = DetailPages::new(45).unwrap();
        let bugs = detail_pages::listed_bugs(45);
        for index in [0, 1, 20, 44] {
            let bug = &bugs[index as usize];
            assert_eq!(details.index_of(&bug.url), Some(index));
            let body = detail_pages::render(index, bug);
            assert_eq!(
                details.response(index),
                &response("200 OK", HTML, body.as_bytes(), false)[..]
            );
        }
        assert_eq!(details.index_of(&detail_pages::link(45)), None);
        assert!(DetailPages::new(detail_pages::MAX_ITEMS + 1).is_err());
    }

    #[test]
    fn detail_requests_are_counted_apart_and_in_flight_with_listing_ones() {
        let counters = Counters::new(3, 60);
        let listing = counters.begin(1);
        let first = counters.begin_detail(5);
        drop(first);
        let again = counters.begin_detail(5);
        let json: serde_json::Value = serde_json::from_str(&counters.json()).unwrap();
        assert_eq!(json["requests"], 1);
        assert_eq!(json["detail_requests"], 2);
        assert_eq!(json["detail_repeats"], 1);
        assert_eq!(json["peak"], 2);
        drop((listing, again));
        counters.reset();
        let json: serde_json::Value = serde_json::from_str(&counters.json()).unwrap();
        assert_eq!(
            (
                json["detail_requests"].as_u64(),
                json["detail_repeats"].as_u64()
            ),
            (Some(0), Some(0))
        );
        drop(counters.begin_detail(5));
        assert_eq!(counters.detail_repeats.load(Ordering::SeqCst), 0);
    }
}

//! The fetch pool. Each thread does one request at a time, and a request
//! starts only with a permit from the gate, so `concurrency` is a hard cap on
//! simultaneous requests even after a reload lowers it. A thread never
//! sleeps on a retry: failures go on to the commit stage, which reschedules
//! them through the feeder. While paused, no new request starts.
//!
//! Every request on the wire takes its turn from the rate limiter: the
//! first, each redirect followed, and a request sent again on a new
//! connection after the server closed the kept-alive one under it. All of
//! them are made under the same permit, one at a time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{Fetched, Shared, Task, Work};
use crate::http::FetchError;

/// Fetch thread number `index` (from 0): threads past the concurrency limit
/// take no work until a reload raises it, and end with the others.
pub(super) fn run(index: usize, work: Receiver<Work>, fetched: Sender<Fetched>, shared: &Shared) {
    let done = || shared.stopping() || shared.feeder_ended.load(Ordering::SeqCst);
    // The listing's URL is part of the job's identity: a reload keeps it.
    let listing = Origin::of(&shared.config().url);
    while shared.gate.stand_by(index, done) {
        let Ok(Work {
            task,
            attempts,
            url: detail_url,
        }) = work.recv()
        else {
            return;
        };
        super::fault_panic("fetch");
        let permit = loop {
            while shared.paused.load(Ordering::SeqCst) && !shared.stopping() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let permit = shared.gate.acquire(&shared.stop);
            // A pause that came while this thread waited at the gate holds.
            if permit.is_none() || !shared.paused.load(Ordering::SeqCst) {
                break permit;
            }
        };
        // A job in a store: one of the job's slots too, across its daemons.
        let job_slot = match (&permit, &shared.job_limits) {
            (Some(_), Some(limits)) => Some(limits.slot(&shared.stop)),
            _ => None,
        };
        let pace = || {
            shared.limiter.acquire(&shared.stop)
                && shared
                    .job_limits
                    .as_ref()
                    .is_none_or(|limits| limits.turn(&shared.stop))
        };
        let go = permit.is_some() && !matches!(job_slot, Some(None)) && pace();
        let message = if !go {
            Fetched::Abandoned
        } else {
            let url = match (&task, &detail_url) {
                (Task::Detail(_), Some(url)) => url.to_string(),
                (Task::Page(page), _) => shared.config().page_url(*page),
                (Task::Detail(_), None) => String::new(),
            };
            // robots.txt is the listing site's: a detail page on another
            // host (`[detail] hosts`) is not under its rules.
            let robots_apply = matches!(task, Task::Page(_))
                || listing.as_ref().is_some_and(|origin| origin.holds(&url));
            let allowed =
                !robots_apply || shared.robots.allows(&crate::robots::path_and_query(&url));
            let fetched = if allowed {
                let metrics = &shared.metrics;
                let in_flight = metrics.in_flight();
                let started = Instant::now();
                let fetched = shared
                    .fetcher()
                    .fetch_paced(&url, &mut || pace(), &mut |status| metrics.response(status));
                drop(in_flight);
                match &fetched {
                    Err(FetchError::Abandoned) => {}
                    Ok(response) => {
                        metrics.fetched(started.elapsed(), Some(response.body.len() as u64), None)
                    }
                    Err(error) => metrics.fetched(started.elapsed(), None, Some(error.kind())),
                }
                fetched
            } else {
                Err(FetchError::Robots)
            };
            match fetched {
                Err(FetchError::Abandoned) => Fetched::Abandoned,
                Ok(response) => Fetched::Body {
                    task,
                    attempts: attempts + 1,
                    url: detail_url,
                    response,
                },
                Err(error) => {
                    log::debug!("{task}: {error} ({url})");
                    Fetched::Failure {
                        task,
                        attempts: attempts + 1,
                        url: detail_url,
                        error,
                    }
                }
            }
        };
        drop(job_slot);
        drop(permit);
        if fetched.send(message).is_err() {
            return;
        }
    }
}

/// A URL's scheme, host (lowercase) and port: what "the same host" means
/// for robots.txt and for detail links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
    /// `scheme://host[:port]` as the `url` crate writes it: the start of
    /// every URL it resolved on this origin (detail links are resolved).
    prefix: String,
}

impl Origin {
    /// The origin of `text` (a URL, or the listing's URL template).
    pub(super) fn of(text: &str) -> Option<Origin> {
        let url = url::Url::parse(&text.replace("{page}", "1")).ok()?;
        Some(Origin {
            scheme: url.scheme().to_string(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default(),
            prefix: url.origin().ascii_serialization(),
        })
    }

    /// Whether `url` is on this origin: a URL written the way the `url`
    /// crate writes one is known by its start, without being parsed; any
    /// other is parsed.
    pub(super) fn holds(&self, url: &str) -> bool {
        let fast = url
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        fast || Origin::of(url).is_some_and(|other| other.same(self))
    }

    fn same(&self, other: &Origin) -> bool {
        (&self.scheme, &self.host, self.port) == (&other.scheme, &other.host, other.port)
    }
}

#[cfg(test)]
mod tests {
    use super::Origin;

    #[test]
    fn an_origin_holds_its_own_urls_however_they_are_written() {
        let listing = Origin::of("http://Example.com/bugs.php?page={page}").unwrap();
        for url in [
            "http://example.com/bugs/1",
            "http://EXAMPLE.com/x",
            "http://example.com:80/x",
            "http://user@example.com/x",
        ] {
            assert!(listing.holds(url), "{url}");
        }
        for url in [
            "http://example.com.evil.net/x",
            "http://example.com:8080/x",
            "https://example.com/x",
            "http://other.example.com/x",
            "not a url",
            "",
        ] {
            assert!(!listing.holds(url), "{url}");
        }
        let port = Origin::of("http://127.0.0.1:8080/p={page}").unwrap();
        assert!(port.holds("http://127.0.0.1:8080/d"));
        assert!(!port.holds("http://127.0.0.1/d"));
        assert!(!port.holds("http://127.0.0.1:80801/d"));
    }
}

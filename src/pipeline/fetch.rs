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
        let go = permit.is_some() && shared.limiter.acquire(&shared.stop);
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
            let robots_apply =
                matches!(task, Task::Page(_)) || same_host(&url, &shared.config().url);
            let allowed =
                !robots_apply || shared.robots.allows(&crate::robots::path_and_query(&url));
            let fetched = if allowed {
                let metrics = &shared.metrics;
                let in_flight = metrics.in_flight();
                let started = Instant::now();
                let fetched = shared.fetcher().fetch_paced(
                    &url,
                    &mut || shared.limiter.acquire(&shared.stop),
                    &mut |status| metrics.response(status),
                );
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
        drop(permit);
        if fetched.send(message).is_err() {
            return;
        }
    }
}

/// Whether two URLs name the same host (and scheme and port).
pub(super) fn same_host(a: &str, b: &str) -> bool {
    let origin = |text: &str| {
        let url = url::Url::parse(&text.replace("{page}", "1")).ok()?;
        Some((
            url.scheme().to_string(),
            url.host_str()?.to_ascii_lowercase(),
            url.port_or_known_default(),
        ))
    };
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

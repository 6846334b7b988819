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

use super::{Fetched, Shared, Work};
use crate::http::FetchError;

/// Fetch thread number `index` (from 0): threads past the concurrency limit
/// take no work until a reload raises it, and end with the others.
pub(super) fn run(index: usize, work: Receiver<Work>, fetched: Sender<Fetched>, shared: &Shared) {
    let done = || shared.stopping() || shared.feeder_ended.load(Ordering::SeqCst);
    while shared.gate.stand_by(index, done) {
        let Ok(Work { page, attempts }) = work.recv() else {
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
            let url = shared.config().page_url(page);
            let fetched = if shared.robots.allows(&crate::robots::path_and_query(&url)) {
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
                    page,
                    attempts: attempts + 1,
                    response,
                },
                Err(error) => {
                    log::debug!("page {page}: {error} ({url})");
                    Fetched::Failure {
                        page,
                        attempts: attempts + 1,
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

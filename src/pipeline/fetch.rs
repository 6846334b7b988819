//! The fetch pool: N threads, each one request at a time, so N is a hard cap
//! on concurrent requests. A thread never sleeps on a retry: failures go on
//! to the commit stage, which reschedules them through the feeder.

use crossbeam_channel::{Receiver, Sender};

use super::rate::RateLimiter;
use super::{Fetched, Shared, Work};
use crate::config::Config;
use crate::http::Fetcher;

pub(super) fn run(
    config: &Config,
    fetcher: &Fetcher,
    limiter: Option<&RateLimiter>,
    work: Receiver<Work>,
    fetched: Sender<Fetched>,
    shared: &Shared,
) {
    for Work { page, attempts } in work {
        let go = !shared.stopping() && limiter.is_none_or(|l| l.acquire(&shared.stop));
        let message = if !go {
            Fetched::Abandoned
        } else {
            let url = config.page_url(page);
            match fetcher.fetch(&url) {
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
        if fetched.send(message).is_err() {
            return;
        }
    }
}

//! The rate limit: a hard cap on requests per second across all fetch
//! threads, retries included.
//!
//! Two rules together: requests are spaced at least 1/rate apart (smooth
//! pacing), and no request starts until the one `rate` requests before it
//! started more than a second (plus a margin) ago. The second rule is what
//! makes it a cap as the *server* counts: a request delayed by the scheduler
//! cannot let the next ones bunch up into a window with too many. The rate
//! can change while the crawl runs (SIGHUP) or be switched off.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allowance for the time between a request starting here and the server
/// noting it (connection reuse, scheduling on a loaded machine), so the
/// server's one-second windows hold too. It keeps the sustained rate about
/// 9% under the limit, which is the side to err on.
const MARGIN: Duration = Duration::from_millis(100);
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct State {
    /// Spacing between requests; `None` = no limit.
    interval: Option<Duration>,
    /// Requests allowed in any one-second window.
    per_window: usize,
    /// Start times of the last `per_window` requests.
    recent: VecDeque<Instant>,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    state: Mutex<State>,
    /// Time callers spent waiting here, all together (for the metrics).
    pub waited: crate::metrics::Waited,
}

impl RateLimiter {
    pub fn new(per_second: Option<f64>) -> RateLimiter {
        let limiter = RateLimiter::default();
        limiter.set_rate(per_second);
        limiter
    }

    pub fn set_rate(&self, per_second: Option<f64>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.interval = per_second.map(|rate| Duration::from_secs_f64(1.0 / rate));
        state.per_window = per_second.map_or(0, |rate| (rate.floor() as usize).max(1));
        while state.recent.len() > state.per_window {
            state.recent.pop_front();
        }
    }

    /// Waits until a request may start; false if the crawl stopped meanwhile.
    pub fn acquire(&self, stop: &AtomicBool) -> bool {
        // Set at the first wait: a request that need not wait reads no clock.
        let mut waiting_since: Option<Instant> = None;
        let granted = self.wait_turn(stop, &mut waiting_since);
        if let Some(since) = waiting_since {
            self.waited.add(since.elapsed());
        }
        granted
    }

    fn wait_turn(&self, stop: &AtomicBool, waiting_since: &mut Option<Instant>) -> bool {
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let Some(interval) = state.interval else {
                    return true;
                };
                let now = Instant::now();
                let mut earliest = state.recent.back().map_or(now, |last| *last + interval);
                if state.recent.len() >= state.per_window {
                    if let Some(oldest) = state.recent.front() {
                        earliest = earliest.max(*oldest + WINDOW + MARGIN);
                    }
                }
                if now >= earliest {
                    if state.recent.len() >= state.per_window {
                        state.recent.pop_front();
                    }
                    state.recent.push_back(now);
                    return true;
                }
                waiting_since.get_or_insert(now);
                earliest - now
            };
            std::thread::sleep(wait.min(Duration::from_millis(20)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_holds_more_than_the_rate() {
        let limiter = RateLimiter::new(Some(50.0));
        let stop = AtomicBool::new(false);
        let mut starts = Vec::new();
        for _ in 0..120 {
            assert!(limiter.acquire(&stop));
            starts.push(Instant::now());
        }
        for (i, start) in starts.iter().enumerate() {
            let in_window = starts[i..]
                .iter()
                .take_while(|t| **t - *start < WINDOW)
                .count();
            assert!(in_window <= 50, "{in_window} starts within a second");
        }
        // 120 requests at 50/s: the last ones waited well over a second.
        assert!(
            limiter.waited.total() > Duration::from_secs(1),
            "{:?}",
            limiter.waited.total()
        );
        stop.store(true, Ordering::SeqCst);
        assert!(!limiter.acquire(&stop), "a stopped crawl does not wait");
        limiter.set_rate(None);
        stop.store(false, Ordering::SeqCst);
        let waited = limiter.waited.total();
        assert!(limiter.acquire(&stop), "no limit, no wait");
        assert_eq!(limiter.waited.total(), waited, "and no wait counted");
    }
}

//! The rate limit: a hard cap on requests per second across all fetch
//! threads. Each request reserves the next free slot; slots are spaced 1%
//! wider than 1/rate, so loopback or network jitter cannot make the host see
//! more than `rate` requests in any one-second window. The rate can change
//! while the crawl runs (SIGHUP) or be switched off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct RateLimiter {
    /// (interval between requests, next free slot); no interval = no limit.
    state: Mutex<(Option<Duration>, Option<Instant>)>,
}

impl RateLimiter {
    pub fn new(per_second: Option<f64>) -> RateLimiter {
        let limiter = RateLimiter::default();
        limiter.set_rate(per_second);
        limiter
    }

    pub fn set_rate(&self, per_second: Option<f64>) {
        let interval = per_second.map(|rate| Duration::from_secs_f64(1.01 / rate));
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = interval;
    }

    /// Waits for this request's slot; false if the crawl stopped meanwhile.
    pub fn acquire(&self, stop: &AtomicBool) -> bool {
        let slot = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(interval) = state.0 else { return true };
            let now = Instant::now();
            let slot = state.1.map_or(now, |next| next.max(now));
            state.1 = Some(slot + interval);
            slot
        };
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= slot {
                return true;
            }
            std::thread::sleep((slot - now).min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_interval() {
        let limiter = RateLimiter::new(Some(100.0));
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        for _ in 0..11 {
            assert!(limiter.acquire(&stop));
        }
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "10 intervals of ≥10 ms"
        );
        stop.store(true, Ordering::SeqCst);
        for _ in 0..5 {
            limiter.acquire(&stop);
        }
        assert!(
            !limiter.acquire(&stop),
            "a stopped crawl does not wait for its slot"
        );
        limiter.set_rate(None);
        assert!(limiter.acquire(&stop), "no limit, no wait");
    }
}

//! The rate limit: a hard cap on requests per second across all fetch
//! threads. Each request reserves the next free slot; slots are spaced 1%
//! wider than 1/rate, so loopback or network jitter cannot make the host see
//! more than `rate` requests in any one-second window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    interval: Duration,
    next_slot: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(per_second: f64) -> RateLimiter {
        RateLimiter {
            interval: Duration::from_secs_f64(1.01 / per_second),
            next_slot: Mutex::new(None),
        }
    }

    /// Waits for this request's slot; false if the crawl stopped meanwhile.
    pub fn acquire(&self, stop: &AtomicBool) -> bool {
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
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
        let limiter = RateLimiter::new(100.0);
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
    }
}

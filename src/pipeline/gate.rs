//! An adjustable semaphore: at most `limit` fetches at once. The limit can
//! be lowered or raised while the crawl runs (SIGHUP), and a fetch thread
//! waits here rather than exceeding it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub struct Gate {
    /// (limit, permits in use)
    state: Mutex<(usize, usize)>,
    changed: Condvar,
}

/// A held permit; dropping it lets the next fetch in.
pub struct Permit<'a>(&'a Gate);

impl Gate {
    pub fn new(limit: usize) -> Gate {
        Gate {
            state: Mutex::new((limit, 0)),
            changed: Condvar::new(),
        }
    }

    /// Waits for a permit; `None` if `stop` is set first.
    pub fn acquire<'a>(&'a self, stop: &AtomicBool) -> Option<Permit<'a>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            if state.1 < state.0 {
                state.1 += 1;
                return Some(Permit(self));
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = limit;
        self.changed.notify_all();
    }

    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).1 -= 1;
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_capped_and_the_cap_can_change() {
        let gate = Gate::new(2);
        let stop = AtomicBool::new(false);
        let a = gate.acquire(&stop).unwrap();
        let _b = gate.acquire(&stop).unwrap();
        stop.store(true, Ordering::SeqCst);
        assert!(gate.acquire(&stop).is_none(), "full gate + stop returns");
        stop.store(false, Ordering::SeqCst);
        gate.set_limit(3);
        let _c = gate.acquire(&stop).unwrap();
        drop(a);
        gate.set_limit(1);
        stop.store(true, Ordering::SeqCst);
        assert!(
            gate.acquire(&stop).is_none(),
            "lowered below use: nobody new gets in"
        );
    }
}

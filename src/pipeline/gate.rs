//! An adjustable semaphore: at most `limit` fetches at once. The limit can
//! be lowered or raised while the crawl runs (SIGHUP), and a fetch thread
//! waits here rather than exceeding it.
//!
//! There are more fetch threads than the limit (so a reload can raise it);
//! the ones numbered past it stand by without taking work, so that the
//! working ones never queue for a permit and hand it over with a wake-up
//! per page.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    /// A permit was returned or the limit changed.
    changed: Condvar,
    /// The limit changed (for threads standing by).
    resized: Condvar,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_use: usize,
    /// Threads waiting in `acquire`: a returned permit wakes one only when
    /// there is one (a notify is a system call even with nobody waiting).
    waiting: usize,
}

/// A held permit; dropping it lets the next fetch in.
pub struct Permit<'a>(&'a Gate);

impl Gate {
    pub fn new(limit: usize) -> Gate {
        Gate {
            state: Mutex::new(State {
                limit,
                in_use: 0,
                waiting: 0,
            }),
            changed: Condvar::new(),
            resized: Condvar::new(),
        }
    }

    /// Waits while fetch thread number `index` (from 0) is past the limit;
    /// false if `done` (no more work will come) says so first.
    pub fn stand_by(&self, index: usize, done: impl Fn() -> bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if done() {
                return false;
            }
            if index < state.limit {
                return true;
            }
            state = self
                .resized
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for a permit; `None` if `stop` is set first.
    pub fn acquire<'a>(&'a self, stop: &AtomicBool) -> Option<Permit<'a>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            if state.in_use < state.limit {
                state.in_use += 1;
                return Some(Permit(self));
            }
            state.waiting += 1;
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.waiting -= 1;
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).limit = limit;
        self.changed.notify_all();
        self.resized.notify_all();
    }

    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).limit
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_use -= 1;
        let waiting = state.waiting > 0;
        drop(state);
        if waiting {
            self.0.changed.notify_one();
        }
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

    #[test]
    fn threads_past_the_limit_stand_by_until_it_is_raised() {
        let gate = std::sync::Arc::new(Gate::new(2));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let done = || stop.load(Ordering::SeqCst);
        assert!(gate.stand_by(1, done), "thread 1 of 2 works");
        let waiter = {
            let (gate, stop) = (gate.clone(), stop.clone());
            std::thread::spawn(move || gate.stand_by(3, || stop.load(Ordering::SeqCst)))
        };
        std::thread::sleep(Duration::from_millis(150));
        assert!(!waiter.is_finished(), "thread 3 of 2 stands by");
        gate.set_limit(4);
        assert!(waiter.join().unwrap(), "raising the limit lets it work");
        stop.store(true, Ordering::SeqCst);
        assert!(!gate.stand_by(9, done), "stop ends the wait");
    }
}

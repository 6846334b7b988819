//! The feeder: streams pending pages from sled into the fetch pool in page
//! order, never more than `window` at once, never a page twice at once.
//! Pages waiting for a retry stay leased (in flight) in a timer heap rather
//! than holding a fetch thread. In open-range mode it extends the queue past
//! the frontier until the commit stage has found the run of empty pages
//! that ends the range.
//!
//! Leases live only in memory: after a crash every page that was in flight
//! is simply pending again, which is what makes `kill -9` safe.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{select, Receiver, Sender};

use super::{Settled, Shared, Work};
use crate::config::Config;
use crate::store::Store;
use crate::util::now_ms;

/// Pending pages read from sled per scan step.
const SCAN_BATCH: usize = 256;
/// Longest the feeder sleeps without looking at the stop flag.
const TICK: Duration = Duration::from_millis(100);

pub(super) fn run(
    config: &Config,
    store: &Store,
    work: Sender<Work>,
    settled: Receiver<Settled>,
    shared: &Shared,
    window: usize,
) -> Result<()> {
    let mut in_flight: HashSet<u64> = HashSet::new();
    let mut retries: BinaryHeap<Reverse<(Instant, u64, u32)>> = BinaryHeap::new();
    let mut fresh: VecDeque<Work> = VecDeque::new();
    let mut cursor: Option<u64> = None;
    let mut exhausted = false;
    let open = config.pages.is_open();

    loop {
        if shared.stopping() {
            return Ok(());
        }
        while let Ok(message) = settled.try_recv() {
            settle(message, &mut in_flight, &mut retries);
        }
        // Retries that are due go first; they are already counted in flight.
        let now = Instant::now();
        while retries
            .peek()
            .is_some_and(|Reverse((due, _, _))| *due <= now)
        {
            let Some(Reverse((_, page, attempts))) = retries.pop() else {
                break;
            };
            if work.send(Work { page, attempts }).is_err() {
                return Ok(());
            }
        }
        while in_flight.len() < window && !shared.stopping() {
            if fresh.is_empty() && !exhausted {
                let batch = store.pending_after(cursor, SCAN_BATCH)?;
                exhausted = batch.len() < SCAN_BATCH;
                let now_wall = now_ms();
                for (page, pending) in batch {
                    cursor = Some(page);
                    if in_flight.contains(&page) {
                        continue;
                    }
                    if pending.not_before_ms > now_wall {
                        // A retry scheduled before a restart: keep its time.
                        let wait = Duration::from_millis(pending.not_before_ms - now_wall);
                        in_flight.insert(page);
                        retries.push(Reverse((Instant::now() + wait, page, pending.attempts)));
                        continue;
                    }
                    fresh.push_back(Work {
                        page,
                        attempts: pending.attempts,
                    });
                }
            }
            let Some(next) = fresh.pop_front() else { break };
            in_flight.insert(next.page);
            if work.send(next).is_err() {
                return Ok(());
            }
        }
        let drained = exhausted && fresh.is_empty();
        // Open ranges look ahead only as far as keeps every fetch thread busy,
        // so the crawl overshoots the real end by a few pages, not a window.
        let lookahead = 2 * config.concurrency + config.stop_after_empty as usize;
        if open && drained && in_flight.len() < lookahead && store.counters().open_end().is_none() {
            store.extend((lookahead - in_flight.len()) as u64)?;
            exhausted = false;
            continue;
        }
        if drained && in_flight.is_empty() {
            return Ok(());
        }
        let wait = retries.peek().map_or(TICK, |Reverse((due, _, _))| {
            due.saturating_duration_since(Instant::now()).min(TICK)
        });
        select! {
            recv(settled) -> message => match message {
                Ok(message) => settle(message, &mut in_flight, &mut retries),
                Err(_) => return Ok(()),
            },
            default(wait) => {}
        }
    }
}

fn settle(
    message: Settled,
    in_flight: &mut HashSet<u64>,
    retries: &mut BinaryHeap<Reverse<(Instant, u64, u32)>>,
) {
    match message {
        Settled::Finished(page) => {
            in_flight.remove(&page);
        }
        Settled::Retry {
            page,
            attempts,
            not_before,
        } => retries.push(Reverse((not_before, page, attempts))),
    }
}

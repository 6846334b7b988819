//! The feeder: streams pending pages from sled into the fetch pool in page
//! order, never more than `window` at once, never a page twice at once.
//! Pages waiting for a retry stay leased (in flight) in a timer heap rather
//! than holding a fetch thread. In open-range mode it extends the queue past
//! the frontier until the commit stage has found the run of empty pages
//! that ends the range. In follow mode, when everything is settled, it waits
//! for the next round and re-queues the first pages of the range.
//! Otherwise it ends once nothing is pending or in flight, and decides so
//! under the lock the control socket takes to add pages
//! ([`Shared::take_pages`]): a page enqueued or retried over the socket is
//! either seen by a scan of this run or refused, never acknowledged and
//! left behind.
//!
//! Leases live only in memory: after a crash every page that was in flight
//! is simply pending again, which is what makes `kill -9` safe.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{select, Receiver, Sender};

use super::{Settled, Shared, Task, Work};
use crate::config::Config;
use crate::range::PageRange;
use crate::store::Store;
use crate::util::now_ms;
use std::collections::HashMap;
use std::sync::Arc;

/// Pending pages read from sled per scan step. One step can put this many
/// pages waiting for a retry in flight at once, past the window.
pub(super) const SCAN_BATCH: usize = 256;
/// Longest the feeder sleeps without looking at its flags.
const TICK: Duration = Duration::from_millis(100);

type RetryHeap = BinaryHeap<Reverse<(Instant, Task, u32)>>;

pub(super) fn run(
    store: &Store,
    work: Sender<Work>,
    settled: Receiver<Settled>,
    shared: &Shared,
    window: usize,
) -> Result<()> {
    let mut in_flight: HashSet<Task> = HashSet::new();
    let mut retries: RetryHeap = BinaryHeap::new();
    let mut fresh: VecDeque<Work> = VecDeque::new();
    let mut details = DetailFeed::default();
    let mut cursor: Option<u64> = None;
    // The last page taken from the lazy ranges; those pages get no key
    // until they settle, so this cursor (not sled) says what was handed out.
    let mut lazy_cursor: Option<u64> = None;
    let mut keyed_exhausted = false;
    let mut exhausted = false;
    // An open range resumed: its pages found with items before this run
    // count for the look-ahead too.
    if shared.config().pages.is_open() {
        if let Some(page) = store.last_page_with_items()? {
            shared.saw_items(page);
        }
    }
    let mut stalled_warned = false;
    // Follow mode: round 1 (the first crawl) starts with the first run; a
    // restarted daemon keeps the round it finds.
    if shared.config().follow.is_some() {
        current_round(store)?;
    }

    loop {
        if shared.stopping() {
            return Ok(());
        }
        while let Ok(message) = settled.try_recv() {
            settle(message, &mut in_flight, &mut retries, &mut details, shared);
        }
        // Say at once when settled pages made room: the flag must not stay
        // set while this thread waits to hand out work (the commit stage
        // would go on committing groups of a few pages, each with an fsync).
        let blocked = waits_on_commits(exhausted && fresh.is_empty(), &retries, &in_flight, window);
        shared.waiting_on_commits.store(blocked, Ordering::SeqCst);
        if shared.rescan.swap(false, Ordering::SeqCst) {
            cursor = None;
            lazy_cursor = None;
            keyed_exhausted = false;
            exhausted = false;
            fresh.clear();
            details.rescan();
        }
        let config = shared.config();
        let paused = shared.paused.load(Ordering::SeqCst);
        if !paused {
            // Retries that are due go first; they are already in flight.
            let now = Instant::now();
            while retries
                .peek()
                .is_some_and(|Reverse((due, _, _))| *due <= now)
            {
                let Some(Reverse((_, task, attempts))) = retries.pop() else {
                    break;
                };
                shared.set_fetching(task, true);
                let url = details.url_of(task);
                if work
                    .send(Work {
                        task,
                        attempts,
                        url,
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
            // Detail pages first (depth first): the items of pages already
            // fetched reach the output before more listing pages are read.
            if config.detail.is_some() {
                while in_flight.len() < window && !shared.stopping() {
                    let Some(next) = details.next(store, &mut in_flight, &mut retries)? else {
                        break;
                    };
                    shared.set_fetching(next.task, true);
                    if work.send(next).is_err() {
                        return Ok(());
                    }
                }
            }
            while in_flight.len() < window
                && !shared.stopping()
                && listing_may_go(&config, store, &in_flight, &details)
            {
                if fresh.is_empty() && !exhausted {
                    // Pages with keys first (retries, resumed leases), then
                    // fresh pages from the lazy ranges.
                    if !keyed_exhausted {
                        keyed_exhausted =
                            scan(store, &mut cursor, &mut fresh, &mut in_flight, &mut retries)?;
                    }
                    if fresh.is_empty() && keyed_exhausted {
                        let pages = store.lazy_after(lazy_cursor, SCAN_BATCH)?;
                        exhausted = pages.is_empty();
                        lazy_cursor = pages.last().copied().or(lazy_cursor);
                        // Pages in flight have no key yet, so after a rescan
                        // the ranges offer them again.
                        fresh.extend(
                            pages
                                .into_iter()
                                .filter(|page| !in_flight.contains(&Task::Page(*page)))
                                .map(|page| Work {
                                    task: Task::Page(page),
                                    attempts: 0,
                                    url: None,
                                }),
                        );
                    }
                }
                let Some(next) = fresh.pop_front() else { break };
                if !in_flight.insert(next.task) {
                    continue;
                }
                super::fault_panic("feeder");
                shared.set_fetching(next.task, true);
                if work.send(next).is_err() {
                    return Ok(());
                }
            }
        }
        let drained = exhausted && fresh.is_empty();
        // Listing pages held back for the detail pages, and no detail page
        // to send: nothing goes out until a commit queues more.
        let held = config.detail.is_some()
            && !drained
            && details.is_idle()
            && !listing_may_go(&config, store, &in_flight, &details);
        let blocked = waits_on_commits(drained, &retries, &in_flight, window)
            || held
            || details_run_low(&config, store, &in_flight, &details);
        shared.waiting_on_commits.store(blocked, Ordering::SeqCst);
        if !paused
            && config.pages.is_open()
            && drained
            && store.counters().open_end().is_none()
            && store.counters().frontier <= crate::range::MAX_PAGE
        {
            let counters = store.counters();
            // Never past the largest page number a range may hold.
            let count = pages_to_extend(
                counters.frontier,
                shared.highest_with_items(),
                &config,
                in_flight.len(),
            )
            .min(crate::range::MAX_PAGE + 1 - counters.frontier);
            if count > 0 {
                store.extend(count)?;
                exhausted = false;
                continue;
            }
            if in_flight.is_empty() && !stalled_warned {
                stalled_warned = true;
                log::warn!(
                    "open range: no items on pages {}..={} but no {} empty pages in a row either (some failed); stopping there: `pagecrawl retry` queues the failed pages again",
                    shared.highest_with_items().map_or(config.pages.start(), |p| p + 1),
                    counters.frontier.saturating_sub(1),
                    config.stop_after_empty
                );
            }
        }
        let mut wait = retries.peek().map_or(TICK, |Reverse((due, _, _))| {
            due.saturating_duration_since(Instant::now()).min(TICK)
        });
        let details_left = store.counters().detail_pending > 0;
        if drained && in_flight.is_empty() && details_left && (paused || details.rescan_if_idle()) {
            // Detail pages pending that no scan handed out (numbered
            // before the cursor, e.g. queued again by `retry`): look again
            // from the first. Paused, wait. A scan from the first that
            // hands none out ends the run as below (the count is wrong).
            if !paused {
                continue;
            }
        } else if drained && in_flight.is_empty() {
            if details_left {
                log::warn!(
                    "the state counts {} detail pages pending but none is queued; ending the run",
                    store.counters().detail_pending
                );
            }
            let Some(every) = config.follow else {
                // Pages enqueued since the last scan keep the run going.
                if shared.close_intake() {
                    return Ok(());
                }
                continue;
            };
            let (round, started_ms) = current_round(store)?;
            let due_ms = started_ms.saturating_add(every.as_millis() as u64);
            let now = now_ms();
            if now >= due_ms {
                let first = config.pages.start();
                let last = first.saturating_add(config.refresh_pages - 1);
                let round = round + 1;
                store.start_round(
                    round,
                    now,
                    &[PageRange::Closed {
                        start: first,
                        end: last,
                    }],
                )?;
                shared.progress.rounds.fetch_add(1, Ordering::Relaxed);
                log::info!("follow: round {round}, re-crawling pages {first}..={last}");
                cursor = None;
                lazy_cursor = None;
                keyed_exhausted = false;
                exhausted = false;
                continue;
            }
            wait = wait.min(Duration::from_millis(due_ms - now));
        }
        select! {
            recv(settled) -> message => match message {
                Ok(message) => settle(message, &mut in_flight, &mut retries, &mut details, shared),
                Err(_) => return Ok(()),
            },
            // A page was found with items: an open range may queue more.
            recv(shared.items_seen.1) -> _ => {}
            default(wait) => {}
        }
    }
}

/// How many pages an open range queues past `frontier` now. It looks
/// ahead `stop_after_empty + concurrency` pages past the highest page found
/// with items (or from its start), so that at most that many are requested
/// past its last page with items, whatever the concurrency; the
/// `concurrency` part keeps every connection busy in the body of the range
/// (a page's items are known as soon as it is parsed, so the look-ahead
/// moves on long before the commit). Never more than twice the
/// concurrency plus the run in flight, as a memory bound when pages wait
/// for retries.
fn pages_to_extend(
    frontier: u64,
    highest_with_items: Option<u64>,
    config: &Config,
    in_flight: usize,
) -> u64 {
    let reach = config.stop_after_empty as u64 + config.concurrency as u64;
    let last_allowed = match highest_with_items {
        Some(page) => page.saturating_add(reach),
        None => config.pages.start().saturating_add(reach - 1),
    };
    let by_items = last_allowed.saturating_add(1).saturating_sub(frontier);
    let lookahead = 2 * config.concurrency + config.stop_after_empty as usize;
    by_items.min(lookahead.saturating_sub(in_flight) as u64)
}

/// Follow mode: the round in progress and when it started, from the state.
/// State without one (a first run, or written before rounds were kept)
/// records round 1 as starting now.
fn current_round(store: &Store) -> Result<(u64, u64)> {
    if let Some(round) = store.round() {
        return Ok(round);
    }
    let now = now_ms();
    store.start_round(1, now, &[])?;
    Ok((1, now))
}

/// Whether nothing more can go out until pages settle (the queue is drained
/// and no retry waits, or the window is full): then the commit stage should
/// not sit on a part-filled group waiting for `commit_interval`.
fn waits_on_commits(
    drained: bool,
    retries: &RetryHeap,
    in_flight: &HashSet<Task>,
    window: usize,
) -> bool {
    (drained && retries.is_empty()) || in_flight.len() >= window
}

/// Reads the next batch of pending pages after the cursor into `fresh`
/// (pages with a future not-before time go to the retry heap). Returns true
/// when the scan reached the end of the queue.
fn scan(
    store: &Store,
    cursor: &mut Option<u64>,
    fresh: &mut VecDeque<Work>,
    in_flight: &mut HashSet<Task>,
    retries: &mut RetryHeap,
) -> Result<bool> {
    let batch = store.pending_after(*cursor, SCAN_BATCH)?;
    let exhausted = batch.len() < SCAN_BATCH;
    let now_wall = now_ms();
    for (page, pending) in batch {
        *cursor = Some(page);
        let task = Task::Page(page);
        if in_flight.contains(&task) {
            continue;
        }
        if pending.not_before_ms > now_wall {
            // A retry scheduled before a restart: keep its time.
            let wait = Duration::from_millis(pending.not_before_ms - now_wall);
            in_flight.insert(task);
            retries.push(Reverse((Instant::now() + wait, task, pending.attempts)));
            continue;
        }
        fresh.push_back(Work {
            task,
            attempts: pending.attempts,
            url: None,
        });
    }
    Ok(exhausted)
}

fn settle(
    message: Settled,
    in_flight: &mut HashSet<Task>,
    retries: &mut RetryHeap,
    details: &mut DetailFeed,
    shared: &Shared,
) {
    let task = match &message {
        Settled::Finished(task) | Settled::Retry { task, .. } => *task,
    };
    shared.set_fetching(task, false);
    match message {
        Settled::Finished(task) => {
            in_flight.remove(&task);
            details.forget(task);
        }
        Settled::Retry {
            task,
            attempts,
            not_before,
        } => retries.push(Reverse((not_before, task, attempts))),
    }
}

/// Whether another listing page may go out with `[detail]`: only while
/// the detail pages queued and not yet handed out, with those the listing
/// pages in flight will add, stay under two per connection, two commit
/// groups and one listing page's worth: the server is kept busy with detail
/// pages (the next listing page's arrive before these run out), commit
/// groups fill (a group flushed short costs two fsyncs all the same), and
/// few items wait. Until a listing page is done (nothing to estimate its
/// items by) one at a time.
fn listing_may_go(
    config: &Config,
    store: &Store,
    in_flight: &HashSet<Task>,
    details: &DetailFeed,
) -> bool {
    match detail_backlog(config, store, in_flight, details) {
        None => true,
        Some(backlog) if backlog.per_page == 0 => backlog.listing == 0,
        Some(backlog) => {
            backlog.unsent + backlog.listing * backlog.per_page
                < (2 * config.concurrency + 2 * config.commit_every) as u64 + backlog.per_page
        }
    }
}

/// Whether the detail pages queued run low while a listing page that will
/// add more is in flight or waits in a commit group: then the commit stage
/// should not wait for `commit_interval` (the connections would go idle).
fn details_run_low(
    config: &Config,
    store: &Store,
    in_flight: &HashSet<Task>,
    details: &DetailFeed,
) -> bool {
    detail_backlog(config, store, in_flight, details)
        .is_some_and(|b| b.listing > 0 && b.unsent < config.concurrency as u64)
}

/// The detail stage's queue as the feeder schedules by it.
struct Backlog {
    /// Detail pages pending and not handed out.
    unsent: u64,
    /// Listing pages out (fetched, parsed or waiting for their commit).
    listing: u64,
    /// Items per listing page so far (0 before one is done).
    per_page: u64,
}

fn detail_backlog(
    config: &Config,
    store: &Store,
    in_flight: &HashSet<Task>,
    details: &DetailFeed,
) -> Option<Backlog> {
    config.detail.as_ref()?;
    let counters = store.counters();
    // Every detail task in flight has its URL in the feed (retries too).
    let listing = in_flight.len().saturating_sub(details.in_flight()) as u64;
    let per_page = match counters.done {
        0 => 0,
        done => ((counters.items + counters.waiting) / done).max(1),
    };
    let unsent = counters
        .detail_pending
        .saturating_sub(details.in_flight() as u64);
    Some(Backlog {
        unsent,
        listing,
        per_page,
    })
}

/// The detail pages the feeder streams from the state, in number order
/// (new ones get higher numbers, so the cursor also finds them as listing
/// pages commit), and the URLs of those in flight.
#[derive(Debug, Default)]
struct DetailFeed {
    cursor: Option<u64>,
    fresh: VecDeque<(u64, Arc<str>, u32)>,
    urls: HashMap<u64, Arc<str>>,
    /// The last scan from the cursor found nothing.
    idle: bool,
    /// A scan from the first record found nothing pending (the cursor
    /// then stands past every record, not at the start).
    swept: bool,
}

impl DetailFeed {
    /// The next detail page to fetch, if any is due.
    fn next(
        &mut self,
        store: &Store,
        in_flight: &mut HashSet<Task>,
        retries: &mut RetryHeap,
    ) -> Result<Option<Work>> {
        loop {
            if let Some((id, url, attempts)) = self.fresh.pop_front() {
                let task = Task::Detail(id);
                if !in_flight.insert(task) {
                    continue;
                }
                self.urls.insert(id, url.clone());
                return Ok(Some(Work {
                    task,
                    attempts,
                    url: Some(url),
                }));
            }
            // Past the pages done or failed too, so that the next scan
            // does not walk them again.
            let from_start = self.cursor.is_none();
            let (batch, scanned) = store.detail_pending_scan(self.cursor, SCAN_BATCH)?;
            self.cursor = scanned;
            self.idle = batch.is_empty();
            if batch.is_empty() {
                self.swept |= from_start;
                return Ok(None);
            }
            let now_wall = now_ms();
            for (id, task) in batch {
                let key = Task::Detail(id);
                if in_flight.contains(&key) {
                    continue;
                }
                let url: Arc<str> = task.url.into();
                if task.not_before_ms > now_wall {
                    let wait = Duration::from_millis(task.not_before_ms - now_wall);
                    in_flight.insert(key);
                    self.urls.insert(id, url);
                    retries.push(Reverse((Instant::now() + wait, key, task.attempts)));
                    continue;
                }
                self.fresh.push_back((id, url, task.attempts));
            }
        }
    }

    /// A task's URL, for a retry (listing pages have none).
    fn url_of(&self, task: Task) -> Option<Arc<str>> {
        match task {
            Task::Detail(id) => self.urls.get(&id).cloned(),
            Task::Page(_) => None,
        }
    }

    fn forget(&mut self, task: Task) {
        if let Task::Detail(id) = task {
            self.urls.remove(&id);
        }
    }

    fn in_flight(&self) -> usize {
        self.urls.len()
    }

    /// Nothing fetched from the cursor's scan and nothing waiting to go.
    fn is_idle(&self) -> bool {
        self.idle && self.fresh.is_empty()
    }

    fn rescan(&mut self) {
        self.cursor = None;
        self.fresh.clear();
        self.swept = false;
    }

    /// Starts the scan over from the first detail page; false when it
    /// already scanned from there and found nothing (wait, not spin).
    fn rescan_if_idle(&mut self) -> bool {
        if self.swept {
            return false;
        }
        self.rescan();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DetailCommit, DetailSettle, Fingerprint};

    #[test]
    fn a_sweep_that_finds_no_detail_page_pending_is_not_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let created = crate::store::detail::queued(3);
        store
            .commit_known(&[], &[], created, (0, Fingerprint(1)), None)
            .unwrap();
        let mut feed = DetailFeed::default();
        let (mut in_flight, mut retries) = (HashSet::new(), RetryHeap::new());
        let mut sent = Vec::new();
        while let Some(work) = feed.next(&store, &mut in_flight, &mut retries).unwrap() {
            sent.push(work.task);
        }
        assert_eq!(sent, (0..3).map(Task::Detail).collect::<Vec<_>>());
        let done = DetailCommit {
            settled: (0..3)
                .map(|id| DetailSettle::Done {
                    id,
                    done: Default::default(),
                })
                .collect(),
            next_id: 3,
            ..DetailCommit::default()
        };
        store
            .commit_known(&[], &[], done, (0, Fingerprint(1)), None)
            .unwrap();
        // A scan from past the cursor found nothing: look from the first.
        assert!(feed.rescan_if_idle());
        in_flight.clear();
        assert!(feed
            .next(&store, &mut in_flight, &mut retries)
            .unwrap()
            .is_none());
        // That scan, from the first record, found none pending either:
        // the feeder must not start it again (it would spin).
        assert!(!feed.rescan_if_idle());
        feed.rescan();
        assert!(
            feed.rescan_if_idle(),
            "a rescan asked for starts a new sweep"
        );
    }
}

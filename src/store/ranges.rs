//! Lazy ranges: how a million pages are queued in O(1).
//!
//! Queuing `1..=1000000` does not write a million keys (sled needs seconds
//! and hundreds of MiB for that). It writes one range record; the feeder
//! then *materializes* pages from the lowest range a few hundred at a time,
//! giving each a pending key just before it is fetched.
//!
//! Invariants, kept by every batch under the store's lock:
//! - ranges never overlap or touch (adding one merges its neighbours);
//! - a range may cover pages that have keys (pending, done or failed); those
//!   are counted by their keys, not by the range, and materializing skips
//!   them;
//! - `counters.pending` = pending keys + pages in ranges that have no key.

use std::collections::HashSet;

use anyhow::Result;

use super::keys::{named_key, page_key, page_of, DONE, FAILED, LAZY, META, PENDING};
use super::{EnqueueReport, Failed, Store, COUNTERS_KEY, MOVE_CHUNK};
use crate::range::PageRange;

/// How many pages two inclusive ranges share.
fn overlap(a: (u64, u64), b: (u64, u64)) -> u64 {
    let (start, end) = (a.0.max(b.0), a.1.min(b.1));
    if start <= end {
        end - start + 1
    } else {
        0
    }
}

fn range_of(key: &[u8], value: &[u8]) -> Option<(u64, u64)> {
    let start = page_of(key)?;
    let end = u64::from_be_bytes(value.try_into().ok()?);
    Some((start, end))
}

impl Store {
    /// Ranges that overlap or touch `first..=last`, in order.
    fn ranges_near(&self, first: u64, last: u64) -> Result<Vec<(u64, u64)>> {
        let mut near = Vec::new();
        if let Some(entry) = self
            .tree
            .range(page_key(LAZY, 0)..=page_key(LAZY, first))
            .next_back()
        {
            let (key, value) = entry?;
            if let Some((start, end)) = range_of(&key, &value) {
                if end.saturating_add(1) >= first {
                    near.push((start, end));
                }
            }
        }
        if first < u64::MAX {
            let upper = page_key(LAZY, last.saturating_add(1));
            for entry in self.tree.range(page_key(LAZY, first + 1)..=upper) {
                let (key, value) = entry?;
                if let Some(range) = range_of(&key, &value) {
                    near.push(range);
                }
            }
        }
        Ok(near)
    }

    /// Pages in `first..=last` that have a key of any state.
    fn keyed_pages(&self, first: u64, last: u64) -> Result<Vec<u64>> {
        let mut pages = Vec::new();
        for prefix in [PENDING, DONE, FAILED] {
            for key in self
                .tree
                .range(page_key(prefix, first)..=page_key(prefix, last))
                .keys()
            {
                pages.extend(page_of(&key?));
            }
        }
        Ok(pages)
    }

    /// Queues `first..=last` lazily; returns how many pages it newly made
    /// pending (pages with keys or already in a range are not counted).
    /// `frontier`, when given, is recorded in the same batch.
    pub(super) fn add_lazy(&self, first: u64, last: u64, frontier: Option<u64>) -> Result<u64> {
        let mut counters = self.lock();
        let near = self.ranges_near(first, last)?;
        let inside = |page: u64| near.iter().any(|&(s, e)| s <= page && page <= e);
        let covered: u64 = near
            .iter()
            .map(|&range| overlap(range, (first, last)))
            .sum();
        let keyed_outside = self
            .keyed_pages(first, last)?
            .into_iter()
            .filter(|&p| !inside(p))
            .count() as u64;
        let added = (last - first + 1) - covered - keyed_outside;
        let merged_start = near.first().map_or(first, |&(s, _)| s.min(first));
        let merged_end = near.last().map_or(last, |&(_, e)| e.max(last));
        let mut batch = sled::Batch::default();
        for (start, _) in &near {
            batch.remove(&page_key(LAZY, *start)[..]);
        }
        batch.insert(
            &page_key(LAZY, merged_start)[..],
            &merged_end.to_be_bytes()[..],
        );
        let mut next = *counters;
        next.pending += added;
        if let Some(frontier) = frontier {
            next.frontier = frontier;
        }
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        self.tree.apply_batch(batch)?;
        *counters = next;
        Ok(added)
    }

    /// Open ranges: queues the next `count` pages past the frontier.
    pub fn extend(&self, count: u64) -> Result<u64> {
        let first = self.counters().frontier;
        let last = first.saturating_add(count.max(1) - 1);
        self.add_lazy(first, last, Some(last.saturating_add(1)))
    }

    /// Gives up to `limit` pages of the lowest lazy range pending keys of
    /// their own and returns them, in order; empty when no range is left.
    pub fn materialize(&self, limit: usize) -> Result<Vec<u64>> {
        let counters = self.lock();
        loop {
            let Some(entry) = self.tree.scan_prefix([LAZY]).next() else {
                return Ok(Vec::new());
            };
            let (key, value) = entry?;
            let Some((start, end)) = range_of(&key, &value) else {
                self.tree.remove(key)?;
                continue;
            };
            let last = end.min(start.saturating_add(limit.max(1) as u64 - 1));
            let keyed: HashSet<u64> = self.keyed_pages(start, last)?.into_iter().collect();
            let mut batch = sled::Batch::default();
            let mut pages = Vec::new();
            for page in start..=last {
                if !keyed.contains(&page) {
                    batch.insert(&page_key(PENDING, page)[..], &[][..]);
                    pages.push(page);
                }
            }
            batch.remove(key);
            if last < end {
                batch.insert(&page_key(LAZY, last + 1)[..], &end.to_be_bytes()[..]);
            }
            // The pending count does not change: these pages were counted
            // by their range and are now counted by their keys.
            batch.insert(named_key(META, COUNTERS_KEY), counters.encode());
            self.tree.apply_batch(batch)?;
            if !pages.is_empty() {
                return Ok(pages);
            }
        }
    }

    /// The first `limit` lazily queued pages (no key yet), in order.
    pub(super) fn lazy_pages(&self, limit: usize) -> Result<Vec<u64>> {
        let mut pages = Vec::new();
        for entry in self.tree.scan_prefix([LAZY]) {
            let (key, value) = entry?;
            let Some((start, end)) = range_of(&key, &value) else {
                continue;
            };
            let mut page = start;
            while page <= end && pages.len() < limit {
                if self.state_of(page)?.is_none() {
                    pages.push(page);
                }
                if page == u64::MAX {
                    break;
                }
                page += 1;
            }
            if pages.len() >= limit {
                break;
            }
        }
        Ok(pages)
    }

    /// Pages in lazy ranges that have no key (for `recount`).
    pub(super) fn count_lazy(&self) -> Result<u64> {
        let mut total = 0;
        for entry in self.tree.scan_prefix([LAZY]) {
            let (key, value) = entry?;
            let Some((start, end)) = range_of(&key, &value) else {
                continue;
            };
            total += (end - start + 1) - self.keyed_pages(start, end)?.len() as u64;
        }
        Ok(total)
    }

    /// Queues pages by hand: new pages are added (lazily), done and failed
    /// ones are put back to be crawled again (that is what asking for them
    /// means). O(pages that already have keys), not O(range size).
    pub fn enqueue(&self, ranges: &[PageRange]) -> Result<EnqueueReport> {
        let mut report = EnqueueReport::default();
        for range in ranges {
            let PageRange::Closed { start, end } = *range else {
                continue;
            };
            let requeued = self.requeue(DONE, start, end)? + self.requeue(FAILED, start, end)?;
            let added = self.add_lazy(start, end, None)?;
            // Every page of the range is new, re-queued, or already pending.
            report.added += added;
            report.requeued += requeued;
            report.already_pending += (end - start + 1) - added - requeued;
        }
        Ok(report)
    }

    /// Moves every done (or failed, by `prefix`) page of `first..=last`
    /// back to pending with a fresh retry budget; returns how many moved.
    pub(super) fn requeue(&self, prefix: u8, first: u64, last: u64) -> Result<u64> {
        let mut moved = 0;
        loop {
            let mut counters = self.lock();
            let entries: Vec<(u64, sled::IVec)> = self
                .tree
                .range(page_key(prefix, first)..=page_key(prefix, last))
                .take(MOVE_CHUNK)
                .filter_map(|entry| entry.ok())
                .filter_map(|(key, value)| page_of(&key).map(|page| (page, value)))
                .collect();
            if entries.is_empty() {
                return Ok(moved);
            }
            let mut next = *counters;
            let mut batch = sled::Batch::default();
            let mut reasons = std::collections::HashMap::new();
            for (page, value) in &entries {
                batch.remove(&page_key(prefix, *page)[..]);
                batch.insert(&page_key(PENDING, *page)[..], &[][..]);
                next.pending += 1;
                if prefix == DONE {
                    next.done -= 1;
                } else {
                    next.failed -= 1;
                    *reasons.entry(Failed::decode(value).kind).or_insert(0i64) -= 1;
                }
            }
            self.add_reason_changes(&mut batch, &reasons)?;
            batch.insert(named_key(META, COUNTERS_KEY), next.encode());
            self.tree.apply_batch(batch)?;
            *counters = next;
            moved += entries.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Settle;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        (dir, store)
    }

    fn closed(start: u64, end: u64) -> PageRange {
        PageRange::Closed { start, end }
    }

    #[test]
    fn a_million_pages_queue_in_one_record_and_materialize_in_order() {
        let (_dir, store) = store();
        let report = store.enqueue(&[closed(1, 1_000_000)]).unwrap();
        assert_eq!(
            report,
            EnqueueReport {
                added: 1_000_000,
                requeued: 0,
                already_pending: 0
            }
        );
        assert_eq!(store.counters().pending, 1_000_000);
        assert_eq!(store.materialize(3).unwrap(), vec![1, 2, 3]);
        assert_eq!(store.materialize(2).unwrap(), vec![4, 5]);
        assert_eq!(
            store.counters().pending,
            1_000_000,
            "materializing does not change the count"
        );
        assert_eq!(store.recount().unwrap(), store.counters());
        let listed: Vec<u64> = store
            .list(crate::store::StateFilter::Pending, 7)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(listed, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn overlapping_enqueues_count_each_page_once() {
        let (_dir, store) = store();
        store.enqueue(&[closed(10, 20)]).unwrap();
        store.materialize(2).unwrap(); // 10 and 11 get keys
        store
            .commit(
                &[Settle::Done {
                    page: 10,
                    attempts: 1,
                    items: 1,
                    extracted: 1,
                    bytes: 1,
                    keys: vec![],
                }],
                0,
                None,
            )
            .unwrap();
        let report = store
            .enqueue(&[closed(5, 12), closed(21, 22), closed(30, 30)])
            .unwrap();
        // 5..=9 new, 10 re-queued, 11 and 12 already pending; 21, 22, 30 new.
        assert_eq!(
            report,
            EnqueueReport {
                added: 8,
                requeued: 1,
                already_pending: 2
            }
        );
        assert_eq!(store.counters().pending, 11 + 5 + 3);
        assert_eq!(store.recount().unwrap(), store.counters());
        let mut all = Vec::new();
        loop {
            let pages = store.materialize(4).unwrap();
            if pages.is_empty() {
                break;
            }
            all.extend(pages);
        }
        let expected: Vec<u64> = (5..=9).chain(12..=22).chain([30]).collect();
        assert_eq!(
            all, expected,
            "keyed pages (10, 11) are not materialized again"
        );
        assert_eq!(store.recount().unwrap(), store.counters());
    }

    #[test]
    fn extend_moves_the_frontier() {
        let (_dir, store) = store();
        store
            .set_job(&crate::store::tests::job(), &PageRange::Open { start: 3 })
            .unwrap();
        assert_eq!(store.extend(4).unwrap(), 4);
        assert_eq!(store.counters().frontier, 7);
        assert_eq!(store.materialize(100).unwrap(), vec![3, 4, 5, 6]);
    }
}

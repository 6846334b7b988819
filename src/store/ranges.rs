//! Lazy ranges: how a million pages are queued in O(1), and crawled with
//! one write per page.
//!
//! Queuing `1..=1000000` does not write a million keys (sled needs seconds
//! and hundreds of MiB for that). It writes one range record. The feeder
//! reads pages from the ranges in order ([`Store::lazy_after`]) and hands
//! them out without writing anything; a page gets its first key when it
//! settles (done, failed, or waiting for a retry), in the commit's batch.
//! So a page costs one sled write, not three (a pending key, its removal
//! and the done key). After each commit the lowest range's start moves past
//! the settled pages at its head ([`Store::trim_lazy`]).
//!
//! Invariants, kept by every batch under the store's lock:
//! - ranges never overlap or touch (adding one merges its neighbours);
//! - a range may cover pages that have keys (pending, done or failed); those
//!   are counted by their keys, not by the range, and reading the range
//!   skips them;
//! - `counters.pending` = pending keys + pages in ranges that have no key.
//!
//! A crash loses nothing: a page handed out but not committed still has no
//! key inside its range, so it is pending again.

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

    /// Open ranges: queues the next `count` pages past the frontier, never
    /// past [`MAX_PAGE`](crate::range::MAX_PAGE) (there the range ends).
    pub fn extend(&self, count: u64) -> Result<u64> {
        let first = self.counters().frontier;
        if first > crate::range::MAX_PAGE {
            return Ok(0);
        }
        let last = first
            .saturating_add(count.max(1) - 1)
            .min(crate::range::MAX_PAGE);
        self.add_lazy(first, last, Some(last.saturating_add(1)))
    }

    /// Up to `limit` lazily queued pages (in a range, with no key) after
    /// `after` (from the start if `None`), in page order. Nothing is
    /// written: a page handed out to be fetched stays counted by its range
    /// until the commit stage gives it a done, failed or retry key.
    pub fn lazy_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<u64>> {
        let mut pages = Vec::new();
        let first = match after {
            Some(u64::MAX) => return Ok(pages),
            Some(page) => page + 1,
            None => 0,
        };
        // The range starting before `first` (it may hold it), then every
        // range from `first` on.
        let before = self
            .tree
            .range(page_key(LAZY, 0)..page_key(LAZY, first))
            .next_back();
        let later = self.tree.range(page_key(LAZY, first)..);
        for entry in before.into_iter().chain(later) {
            let (key, value) = entry?;
            let Some((start, end)) = range_of(&key, &value) else {
                continue;
            };
            let mut from = start.max(first);
            while from <= end && pages.len() < limit {
                // Look at a window of the range at a time: its keyed pages
                // are skipped.
                let to = end.min(from.saturating_add(limit.max(64) as u64 - 1));
                let keyed: HashSet<u64> = self.keyed_pages(from, to)?.into_iter().collect();
                pages.extend(
                    (from..=to)
                        .filter(|page| !keyed.contains(page))
                        .take(limit - pages.len()),
                );
                if to == u64::MAX {
                    break;
                }
                from = to + 1;
            }
            if pages.len() >= limit {
                break;
            }
        }
        Ok(pages)
    }

    /// Whether `page` lies in a lazy range.
    pub(super) fn in_lazy_range(&self, page: u64) -> Result<bool> {
        let Some(entry) = self
            .tree
            .range(page_key(LAZY, 0)..=page_key(LAZY, page))
            .next_back()
        else {
            return Ok(false);
        };
        let (key, value) = entry?;
        Ok(range_of(&key, &value).is_some_and(|(_, end)| page <= end))
    }

    /// Adds to `batch` what moves the start of the lowest range past the
    /// pages at its head that have keys (settled, waiting for a retry, or
    /// getting a key in this batch: `keyed_now`), or drops the range when
    /// none of its pages is left. Counts do not change: those pages are
    /// counted by their keys. Done at each commit, this keeps the lowest
    /// range starting at most a window behind the crawl, so reading the
    /// queue never wades through pages that are long done; the work is the
    /// pages settled since the last commit.
    pub(super) fn trim_lazy(
        &self,
        batch: &mut sled::Batch,
        keyed_now: &HashSet<u64>,
    ) -> Result<()> {
        /// Pages looked at per read of the keys.
        const STEP: u64 = 4096;
        let Some(entry) = self.tree.scan_prefix([LAZY]).next() else {
            return Ok(());
        };
        let (key, value) = entry?;
        let Some((start, end)) = range_of(&key, &value) else {
            batch.remove(key);
            return Ok(());
        };
        // The first page of the range with no key (`None`: there is none).
        let mut head = Some(start);
        while let Some(from) = head.filter(|&page| page <= end) {
            let last = end.min(from.saturating_add(STEP - 1));
            let keyed: HashSet<u64> = self.keyed_pages(from, last)?.into_iter().collect();
            let settled = (from..=last)
                .take_while(|p| keyed.contains(p) || keyed_now.contains(p))
                .count() as u64;
            head = from.checked_add(settled);
            if settled < last - from + 1 {
                break;
            }
        }
        if head != Some(start) {
            batch.remove(key);
            if let Some(head) = head.filter(|&head| head <= end) {
                batch.insert(&page_key(LAZY, head)[..], &end.to_be_bytes()[..]);
            }
        }
        Ok(())
    }

    /// The first `limit` lazily queued pages (no key yet), in order.
    pub(super) fn lazy_pages(&self, limit: usize) -> Result<Vec<u64>> {
        self.lazy_after(None, limit)
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
    fn a_million_pages_queue_in_one_record_and_are_read_in_order() {
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
        assert_eq!(store.lazy_after(None, 3).unwrap(), vec![1, 2, 3]);
        assert_eq!(store.lazy_after(Some(3), 2).unwrap(), vec![4, 5]);
        assert_eq!(
            store.counters().pending,
            1_000_000,
            "reading does not change the count"
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
            let pages = store.lazy_after(all.last().copied(), 4).unwrap();
            if pages.is_empty() {
                break;
            }
            all.extend(pages);
        }
        let expected: Vec<u64> = (5..=9).chain(11..=22).chain([30]).collect();
        assert_eq!(
            all, expected,
            "the keyed page (10, pending again) is not read from the ranges"
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
        assert_eq!(store.lazy_after(None, 100).unwrap(), vec![3, 4, 5, 6]);
    }

    #[test]
    fn pages_settle_with_one_key_and_the_range_start_follows() {
        let (_dir, store) = store();
        store.enqueue(&[closed(1, 100)]).unwrap();
        let done = |page| Settle::Done {
            page,
            attempts: 1,
            items: 1,
            extracted: 1,
            bytes: 1,
            keys: vec![],
        };
        // 1, 2 and 4 settle (3 is still out), plus a retry of 5.
        let retry = Settle::Retry {
            page: 5,
            attempts: 1,
            not_before_ms: 0,
            error: "HTTP 503".into(),
        };
        store
            .commit(&[done(1), done(2), done(4), retry], 0, None)
            .unwrap();
        let counters = store.counters();
        assert_eq!((counters.pending, counters.done), (97, 3));
        assert_eq!(store.recount().unwrap(), counters);
        assert_eq!(
            store.ranges_near(1, 100).unwrap(),
            vec![(3, 100)],
            "trimmed to page 3"
        );
        assert_eq!(
            store.tree.scan_prefix([PENDING]).count(),
            1,
            "only the retry has a pending key"
        );
        // Reading the ranges skips settled and keyed pages.
        assert_eq!(store.lazy_after(None, 3).unwrap(), vec![3, 6, 7]);
        store.commit(&[done(3), done(5)], 0, None).unwrap();
        assert_eq!(store.ranges_near(1, 100).unwrap(), vec![(6, 100)]);
        // A page committed twice is recorded once.
        store.commit(&[done(3)], 0, None).unwrap();
        assert_eq!(store.counters().done, 5);
        assert_eq!(store.recount().unwrap(), store.counters());
        // A page outside every range and without a key is not pending.
        store.commit(&[done(500)], 0, None).unwrap();
        assert_eq!(store.counters().done, 5);
    }
}

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

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::keys::{named_key, page_key, page_of, DONE, FAILED, LAZY, META, PENDING};
use super::{Counters, EnqueueReport, Failed, Store, COUNTERS_KEY};
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

    /// Adds to `batch` what queues every range of `wanted` lazily, and
    /// returns how many pages that newly makes pending (pages with keys or
    /// already in a range are not counted). The ranges may overlap or touch
    /// each other and the ranges already stored: the stored ones they touch
    /// are merged with them. Reads the tree as it is before `batch`.
    pub(super) fn plan_lazy(&self, batch: &mut sled::Batch, wanted: &[(u64, u64)]) -> Result<u64> {
        let wanted = merge_ranges(wanted.to_vec());
        let mut near: Vec<(u64, u64)> = Vec::new();
        for &(first, last) in &wanted {
            for range in self.ranges_near(first, last)? {
                if !near.contains(&range) {
                    near.push(range);
                }
            }
        }
        let inside = |page: u64| near.iter().any(|&(s, e)| s <= page && page <= e);
        let mut added = 0;
        for &(first, last) in &wanted {
            let covered: u64 = near
                .iter()
                .map(|&range| overlap(range, (first, last)))
                .sum();
            let keyed_outside = self
                .keyed_pages(first, last)?
                .into_iter()
                .filter(|&p| !inside(p))
                .count() as u64;
            added += (last - first + 1) - covered - keyed_outside;
        }
        for (start, _) in &near {
            batch.remove(&page_key(LAZY, *start)[..]);
        }
        for (start, end) in merge_ranges(near.iter().chain(&wanted).copied().collect()) {
            batch.insert(&page_key(LAZY, start)[..], &end.to_be_bytes()[..]);
        }
        Ok(added)
    }

    /// Queues `first..=last` lazily in one batch; returns how many pages it
    /// newly made pending. `frontier`, when given, is recorded in the same
    /// batch.
    pub(super) fn add_lazy(&self, first: u64, last: u64, frontier: Option<u64>) -> Result<u64> {
        let mut counters = self.lock();
        let mut batch = sled::Batch::default();
        let added = self.plan_lazy(&mut batch, &[(first, last)])?;
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
    /// means). One batch for the whole request, so it stands or falls
    /// whole; O(pages that already have keys), not O(range size).
    pub fn enqueue(&self, ranges: &[PageRange]) -> Result<EnqueueReport> {
        self.enqueue_and(ranges, |_| {})
    }

    /// [`Store::enqueue`], with `edit` applied to the counters in the same
    /// batch (a follow round's number and start, see `follow`).
    pub(super) fn enqueue_and(
        &self,
        ranges: &[PageRange],
        edit: impl FnOnce(&mut Counters),
    ) -> Result<EnqueueReport> {
        let wanted: Vec<(u64, u64)> = ranges
            .iter()
            .filter_map(|range| match *range {
                PageRange::Closed { start, end } => Some((start, end)),
                PageRange::Open { .. } => None,
            })
            .collect();
        let wanted = merge_ranges(wanted);
        let mut counters = self.lock();
        let mut next = *counters;
        let mut batch = sled::Batch::default();
        let mut reasons = HashMap::new();
        let mut requeued = 0;
        for &(start, end) in &wanted {
            for prefix in [DONE, FAILED] {
                requeued +=
                    self.plan_requeue(&mut batch, &mut next, &mut reasons, prefix, start, end)?;
            }
        }
        // The re-queued pages keep a key (now pending), so the lazy part
        // counts them as keyed, as it did before they moved.
        let added = self.plan_lazy(&mut batch, &wanted)?;
        next.pending += added;
        self.add_reason_changes(&mut batch, &reasons)?;
        edit(&mut next);
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        self.tree.apply_batch(batch)?;
        *counters = next;
        let asked: u64 = wanted.iter().map(|&(s, e)| e - s + 1).sum();
        Ok(EnqueueReport {
            added,
            requeued,
            already_pending: asked - added - requeued,
        })
    }

    /// Moves failed pages back to pending with a fresh retry budget: the
    /// given ones, or all, in one batch. Returns the pages moved and those
    /// that were not failed.
    pub fn retry(&self, only: Option<&[u64]>) -> Result<(u64, Vec<u64>)> {
        let mut counters = self.lock();
        let mut next = *counters;
        let mut batch = sled::Batch::default();
        let mut reasons = HashMap::new();
        let mut moved = 0;
        let mut not_failed = Vec::new();
        match only {
            None => {
                moved =
                    self.plan_requeue(&mut batch, &mut next, &mut reasons, FAILED, 0, u64::MAX)?
            }
            Some(pages) => {
                let mut seen = HashSet::new();
                for &page in pages.iter().filter(|&&page| seen.insert(page)) {
                    match self.plan_requeue(
                        &mut batch,
                        &mut next,
                        &mut reasons,
                        FAILED,
                        page,
                        page,
                    )? {
                        0 => not_failed.push(page),
                        count => moved += count,
                    }
                }
            }
        }
        self.add_reason_changes(&mut batch, &reasons)?;
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        self.tree.apply_batch(batch)?;
        *counters = next;
        Ok((moved, not_failed))
    }

    /// Adds to `batch` (and `next`, `reasons`) what moves every done (or
    /// failed, by `prefix`) page of `first..=last` back to pending with a
    /// fresh retry budget; returns how many move. The batch holds one
    /// removal and one insertion per page moved.
    pub(super) fn plan_requeue(
        &self,
        batch: &mut sled::Batch,
        next: &mut super::Counters,
        reasons: &mut HashMap<String, i64>,
        prefix: u8,
        first: u64,
        last: u64,
    ) -> Result<u64> {
        let mut moved = 0;
        for entry in self
            .tree
            .range(page_key(prefix, first)..=page_key(prefix, last))
        {
            let (key, value) = entry?;
            let Some(page) = page_of(&key) else { continue };
            batch.remove(&page_key(prefix, page)[..]);
            batch.insert(&page_key(PENDING, page)[..], &[][..]);
            next.pending += 1;
            if prefix == DONE {
                next.done -= 1;
            } else {
                next.failed -= 1;
                *reasons.entry(Failed::decode(&value).kind).or_insert(0) -= 1;
            }
            moved += 1;
        }
        Ok(moved)
    }
}

/// Sorts inclusive ranges and merges those that overlap or touch.
pub(super) fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Fingerprint, Settle};

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
            .set_job(
                &crate::store::tests::job(),
                &PageRange::Open { start: 3 },
                Fingerprint::default(),
            )
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

//! The detail stage's state (`[detail]`): detail pages pending, done and
//! failed, each with a number of its own; the number of each detail URL
//! (so two items that link to one page fetch it once); and the items
//! waiting for their detail page.
//!
//! A listing page's items are recorded (waiting, or written when their
//! detail page is done already) in the same batch that records the
//! listing page done, and their new detail pages are queued in that batch
//! too; a detail page's items are written and their waiting records
//! removed in the batch that records the detail page done. So a listing
//! page is never fetched again for its details, and after `kill -9` the
//! detail pages that were in flight are simply pending.

use std::collections::HashSet;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::keys::{
    named_key, page_key, waiting_key, waiting_of, DETAIL_DONE, DETAIL_FAILED, DETAIL_PENDING,
    DETAIL_URL, META, WAITING,
};
use super::{Store, COUNTERS_KEY};
use crate::util::now_ms;

/// A detail page waiting to be fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailTask {
    pub url: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub not_before_ms: u64,
    #[serde(default)]
    pub last_error: String,
}

/// What a detail page gave: the pattern's fields (in its group order),
/// then one list per `collect` entry (in name order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailValues {
    pub fields: Vec<String>,
    pub lists: Vec<Vec<String>>,
}

/// A detail page fetched and parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailDone {
    pub url: String,
    pub attempts: u32,
    pub at_ms: u64,
    pub bytes: u64,
    pub values: DetailValues,
}

/// A detail page that failed for good.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailFailed {
    pub url: String,
    pub attempts: u32,
    pub at_ms: u64,
    pub kind: String,
    pub detail: String,
}

/// A detail page's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetailState {
    Pending(DetailTask),
    Done(DetailDone),
    Failed(DetailFailed),
}

/// An item waiting for its detail page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingItem {
    pub detail: u64,
    pub page: u64,
    pub index: u32,
    /// The listing's values, the link resolved.
    pub values: Vec<String>,
}

/// A detail page as `queue` lists it: its number, state, and the first
/// item waiting for it (listing page, index there).
pub type DetailRow = (u64, DetailState, Option<(u64, u32)>);

/// A settled detail page, as the commit stage records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetailSettle {
    Done { id: u64, done: DetailDone },
    Retry { id: u64, task: DetailTask },
    Failed { id: u64, failed: DetailFailed },
}

/// The detail stage's part of one commit group (see [`Store::commit_known`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetailCommit {
    /// New detail pages to fetch: number and URL.
    pub created: Vec<(u64, String)>,
    /// New detail pages failed at once (a link to another host): number
    /// and record.
    pub refused: Vec<(u64, DetailFailed)>,
    /// Items now waiting for their detail page.
    pub waiting_added: Vec<WaitingItem>,
    /// Waiting items now written: (detail, page, index).
    pub waiting_written: Vec<(u64, u64, u32)>,
    pub settled: Vec<DetailSettle>,
    /// Items written from detail pages (merged, or with their failure).
    pub items_written: u64,
    /// The number the next new detail page gets.
    pub next_id: u64,
}

fn decode<T: for<'a> Deserialize<'a> + Default>(bytes: &[u8]) -> T {
    serde_json::from_slice(bytes).unwrap_or_default()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl Store {
    /// The number and state of the detail page at `url`, if one was queued.
    pub fn detail_by_url(&self, url: &str) -> Result<Option<(u64, DetailState)>> {
        let Some(id) = self.tree.get(named_key(DETAIL_URL, url))? else {
            return Ok(None);
        };
        let id = u64::from_be_bytes(id.as_ref().try_into().unwrap_or_default());
        Ok(self.detail_state(id)?.map(|state| (id, state)))
    }

    /// The state of detail page `id`.
    pub fn detail_state(&self, id: u64) -> Result<Option<DetailState>> {
        if let Some(v) = self.tree.get(page_key(DETAIL_PENDING, id))? {
            return Ok(Some(DetailState::Pending(decode(&v))));
        }
        if let Some(v) = self.tree.get(page_key(DETAIL_DONE, id))? {
            return Ok(Some(DetailState::Done(decode(&v))));
        }
        if let Some(v) = self.tree.get(page_key(DETAIL_FAILED, id))? {
            return Ok(Some(DetailState::Failed(decode(&v))));
        }
        Ok(None)
    }

    /// Whether detail page `id` is pending (so its result may be recorded).
    pub fn detail_is_pending(&self, id: u64) -> Result<bool> {
        Ok(self.tree.contains_key(page_key(DETAIL_PENDING, id))?)
    }

    /// Up to `limit` pending detail pages after `after`, in number order.
    pub fn detail_pending_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, DetailTask)>> {
        self.details_after(DETAIL_PENDING, after, limit)
    }

    fn details_after<T: for<'a> Deserialize<'a> + Default>(
        &self,
        prefix: u8,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, T)>> {
        let from = match after {
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(id) => id + 1,
            None => 0,
        };
        let mut out = Vec::new();
        for entry in self
            .tree
            .range(page_key(prefix, from)..=page_key(prefix, u64::MAX))
            .take(limit)
        {
            let (key, value) = entry?;
            if let Some(id) = super::keys::page_of(&key) {
                out.push((id, decode(&value)));
            }
        }
        Ok(out)
    }

    /// Up to `limit` detail pages in one state after `after`, in number
    /// order, with the first item waiting for each (page, index).
    pub fn list_details(
        &self,
        filter: super::StateFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DetailRow>> {
        let states: Vec<(u64, DetailState)> = match filter {
            super::StateFilter::Pending => self
                .details_after::<DetailTask>(DETAIL_PENDING, after, limit)?
                .into_iter()
                .map(|(id, v)| (id, DetailState::Pending(v)))
                .collect(),
            super::StateFilter::Done => self
                .details_after::<DetailDone>(DETAIL_DONE, after, limit)?
                .into_iter()
                .map(|(id, v)| (id, DetailState::Done(v)))
                .collect(),
            super::StateFilter::Failed => self
                .details_after::<DetailFailed>(DETAIL_FAILED, after, limit)?
                .into_iter()
                .map(|(id, v)| (id, DetailState::Failed(v)))
                .collect(),
        };
        let mut rows = Vec::with_capacity(states.len());
        for (id, state) in states {
            let first = self
                .tree
                .scan_prefix(waiting_prefix(id))
                .keys()
                .next()
                .transpose()?
                .and_then(|key| waiting_of(&key))
                .map(|(_, page, index)| (page, index));
            rows.push((id, state, first));
        }
        Ok(rows)
    }

    /// The items waiting for detail page `id`.
    pub fn waiting_for(&self, id: u64) -> Result<Vec<WaitingItem>> {
        let mut items = Vec::new();
        for entry in self.tree.scan_prefix(waiting_prefix(id)) {
            let (key, value) = entry?;
            let Some((detail, page, index)) = waiting_of(&key) else {
                continue;
            };
            items.push(WaitingItem {
                detail,
                page,
                index,
                values: decode(&value),
            });
        }
        Ok(items)
    }

    /// The listing pages that have items waiting for a detail page (their
    /// items may lie past the checkpoint after a crash).
    pub fn pages_with_waiting_items(&self) -> Result<HashSet<u64>> {
        let mut pages = HashSet::new();
        for key in self.tree.scan_prefix([WAITING]).keys() {
            if let Some((_, page, _)) = waiting_of(&key?) {
                pages.insert(page);
            }
        }
        Ok(pages)
    }

    /// Failure reasons of detail pages with their counts, most common first.
    pub fn detail_reasons(&self) -> Result<Vec<(String, u64)>> {
        let mut counts: std::collections::HashMap<String, u64> = Default::default();
        for value in self.tree.scan_prefix([DETAIL_FAILED]).values() {
            let failed: DetailFailed = decode(&value?);
            *counts.entry(failed.kind).or_default() += 1;
        }
        let mut reasons: Vec<_> = counts.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(reasons)
    }

    /// Puts failed detail pages back to pending (all of them, or those
    /// numbered in `only`), in one batch; returns how many moved and the
    /// numbers asked for that were not failed.
    pub fn retry_details(&self, only: Option<&[u64]>) -> Result<(u64, Vec<u64>)> {
        let mut counters = self.lock();
        let mut next = *counters;
        let mut batch = sled::Batch::default();
        let mut moved = 0;
        let mut not_failed = Vec::new();
        let mut requeue = |id: u64, value: &[u8], batch: &mut sled::Batch| {
            let failed: DetailFailed = decode(value);
            batch.remove(&page_key(DETAIL_FAILED, id)[..]);
            batch.insert(
                &page_key(DETAIL_PENDING, id)[..],
                encode(&DetailTask {
                    url: failed.url,
                    ..DetailTask::default()
                }),
            );
            moved += 1;
        };
        match only {
            None => {
                for entry in self.tree.scan_prefix([DETAIL_FAILED]) {
                    let (key, value) = entry?;
                    if let Some(id) = super::keys::page_of(&key) {
                        requeue(id, &value, &mut batch);
                    }
                }
            }
            Some(ids) => {
                let mut seen = HashSet::new();
                for &id in ids.iter().filter(|&&id| seen.insert(id)) {
                    match self.tree.get(page_key(DETAIL_FAILED, id))? {
                        Some(value) => requeue(id, &value, &mut batch),
                        None => not_failed.push(id),
                    }
                }
            }
        }
        next.detail_failed -= moved;
        next.detail_pending += moved;
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        self.tree.apply_batch(batch)?;
        *counters = next;
        Ok((moved, not_failed))
    }

    /// Adds the detail stage's part of a commit group to `batch` and
    /// `next`. Detail pages that are no longer pending are skipped (their
    /// result was recorded already); the caller checked that before
    /// writing their items.
    pub(super) fn plan_details(
        &self,
        batch: &mut sled::Batch,
        next: &mut super::Counters,
        details: &DetailCommit,
    ) -> Result<()> {
        let now = now_ms();
        for (id, url) in &details.created {
            batch.insert(
                &page_key(DETAIL_PENDING, *id)[..],
                encode(&DetailTask {
                    url: url.clone(),
                    ..DetailTask::default()
                }),
            );
            batch.insert(named_key(DETAIL_URL, url), &id.to_be_bytes());
            next.detail_pending += 1;
        }
        for (id, failed) in &details.refused {
            batch.insert(&page_key(DETAIL_FAILED, *id)[..], encode(failed));
            batch.insert(named_key(DETAIL_URL, &failed.url), &id.to_be_bytes());
            next.detail_failed += 1;
        }
        for item in &details.waiting_added {
            batch.insert(
                &waiting_key(item.detail, item.page, item.index)[..],
                encode(&item.values),
            );
            next.waiting += 1;
        }
        // The detail pages whose result this batch records.
        let mut recorded = HashSet::new();
        for settle in &details.settled {
            let id = match settle {
                DetailSettle::Done { id, .. }
                | DetailSettle::Retry { id, .. }
                | DetailSettle::Failed { id, .. } => *id,
            };
            if recorded.contains(&id) || !self.detail_is_pending(id)? {
                log::warn!("detail page {id} was already settled; recording it once");
                continue;
            }
            recorded.insert(id);
            match settle {
                DetailSettle::Done { done, .. } => {
                    batch.remove(&page_key(DETAIL_PENDING, id)[..]);
                    let done = DetailDone {
                        at_ms: now,
                        ..done.clone()
                    };
                    batch.insert(&page_key(DETAIL_DONE, id)[..], encode(&done));
                    next.detail_pending -= 1;
                    next.detail_done += 1;
                    next.bytes += done.bytes;
                }
                DetailSettle::Retry { task, .. } => {
                    batch.insert(&page_key(DETAIL_PENDING, id)[..], encode(task));
                    next.retries += 1;
                }
                DetailSettle::Failed { failed, .. } => {
                    batch.remove(&page_key(DETAIL_PENDING, id)[..]);
                    let failed = DetailFailed {
                        at_ms: now,
                        ..failed.clone()
                    };
                    batch.insert(&page_key(DETAIL_FAILED, id)[..], encode(&failed));
                    next.detail_pending -= 1;
                    next.detail_failed += 1;
                }
            }
        }
        // Read from the tree in this group by the commit stage (the only
        // writer) for a detail page settled in it: there until this batch,
        // unless that page's result was recorded already.
        for &(detail, page, index) in &details.waiting_written {
            if recorded.contains(&detail) {
                batch.remove(&waiting_key(detail, page, index)[..]);
                next.waiting -= 1;
            }
        }
        next.items += details.items_written;
        next.detail_next = next.detail_next.max(details.next_id);
        Ok(())
    }
}

fn waiting_prefix(id: u64) -> [u8; 9] {
    page_key(WAITING, id)
}

/// Reads a detail record for messages that need its URL.
pub fn url_of(state: &DetailState) -> &str {
    match state {
        DetailState::Pending(task) => &task.url,
        DetailState::Done(done) => &done.url,
        DetailState::Failed(failed) => &failed.url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::PageRange;
    use crate::store::{Fingerprint, PendingAs, Settle};

    fn recount(store: &Store) -> (u64, u64, u64, u64) {
        let c = store.recount().unwrap();
        (c.detail_pending, c.detail_done, c.detail_failed, c.waiting)
    }

    fn listing_done(page: u64, keys: &[&str]) -> Settle {
        Settle::Done {
            page,
            attempts: 1,
            items: 0,
            extracted: keys.len() as u32,
            bytes: 10,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn detail_pages_and_waiting_items_move_with_their_counters_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let job = crate::store::tests::job();
        store
            .set_job(
                &job,
                &PageRange::Closed { start: 1, end: 2 },
                Fingerprint(1),
            )
            .unwrap();
        let item = |detail, index| WaitingItem {
            detail,
            page: 1,
            index,
            values: vec![format!("v{index}")],
        };
        // Page 1: two items link to detail 0, one to detail 1 (refused).
        let first = DetailCommit {
            created: vec![(0, "http://x/d/0".into())],
            refused: vec![(
                1,
                DetailFailed {
                    url: "http://elsewhere/d".into(),
                    kind: "other host".into(),
                    ..DetailFailed::default()
                },
            )],
            waiting_added: vec![
                item(0, 0),
                item(0, 1),
                WaitingItem {
                    page: 2,
                    ..item(1, 2)
                },
            ],
            next_id: 2,
            ..DetailCommit::default()
        };
        store
            .commit_known(
                &[listing_done(1, &["a", "b", "c"])],
                &[Some(PendingAs::InRange)],
                &first,
                (0, Fingerprint(1)),
                None,
            )
            .unwrap();
        let counters = store.counters();
        assert_eq!(
            (
                counters.detail_pending,
                counters.detail_failed,
                counters.waiting,
                counters.detail_next
            ),
            (1, 1, 3, 2)
        );
        assert_eq!(recount(&store), (1, 0, 1, 3));
        assert!(
            store.has_item_key("b").unwrap(),
            "keys are claimed when their items wait"
        );
        assert_eq!(store.waiting_for(0).unwrap(), vec![item(0, 0), item(0, 1)]);
        assert_eq!(
            store.pages_with_waiting_items().unwrap(),
            HashSet::from([1, 2])
        );
        assert_eq!(
            store.detail_reasons().unwrap(),
            [("other host".to_string(), 1)]
        );
        let (id, state) = store.detail_by_url("http://x/d/0").unwrap().unwrap();
        assert!(matches!(state, DetailState::Pending(_)) && id == 0);
        let listed = store
            .list_details(crate::store::StateFilter::Failed, None, 10)
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].2,
            Some((2, 2)),
            "a failed detail page names its item"
        );

        // Detail 0 comes in: its two items are written, in the same batch.
        let values = DetailValues {
            fields: vec!["vendor".into()],
            lists: vec![vec!["t".into()]],
        };
        let second = DetailCommit {
            waiting_written: vec![(0, 1, 0), (0, 1, 1)],
            settled: vec![DetailSettle::Done {
                id: 0,
                done: DetailDone {
                    url: "http://x/d/0".into(),
                    attempts: 1,
                    bytes: 7,
                    values: values.clone(),
                    ..DetailDone::default()
                },
            }],
            items_written: 2,
            next_id: 2,
            ..DetailCommit::default()
        };
        store
            .commit_known(&[], &[], &second, (100, Fingerprint(2)), None)
            .unwrap();
        // A second result for the same detail page is not recorded twice
        // (the commit stage writes no items for it: it checks first).
        let again = DetailCommit {
            items_written: 0,
            ..second.clone()
        };
        store
            .commit_known(&[], &[], &again, (100, Fingerprint(2)), None)
            .unwrap();
        let counters = store.counters();
        assert_eq!(
            (
                counters.detail_pending,
                counters.detail_done,
                counters.waiting,
                counters.items
            ),
            (0, 1, 1, 2)
        );
        assert_eq!(recount(&store), (0, 1, 1, 1));
        match store.detail_state(0).unwrap() {
            Some(DetailState::Done(done)) => assert_eq!(done.values, values),
            other => panic!("{other:?}"),
        }

        // `retry` puts the refused one back; its item still waits.
        assert_eq!(store.retry_details(Some(&[1, 5])).unwrap(), (1, vec![5]));
        let counters = store.counters();
        assert_eq!((counters.detail_pending, counters.detail_failed), (1, 0));
        assert_eq!(
            store.detail_pending_after(None, 10).unwrap()[0].1.url,
            "http://elsewhere/d"
        );
        assert_eq!(recount(&store), (1, 1, 0, 1));
        assert!(store.detail_reasons().unwrap().is_empty());
    }

    #[test]
    fn detail_pages_are_read_a_batch_at_a_time_from_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let commit = DetailCommit {
            created: (0..5).map(|id| (id, format!("http://x/d/{id}"))).collect(),
            next_id: 5,
            ..DetailCommit::default()
        };
        store
            .commit_known(&[], &[], &commit, (0, Fingerprint(1)), None)
            .unwrap();
        let ids =
            |rows: Vec<(u64, DetailTask)>| rows.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(store.detail_pending_after(None, 2).unwrap()), [0, 1]);
        assert_eq!(ids(store.detail_pending_after(Some(1), 2).unwrap()), [2, 3]);
        assert_eq!(ids(store.detail_pending_after(Some(3), 10).unwrap()), [4]);
        assert!(store.detail_pending_after(Some(4), 10).unwrap().is_empty());
        assert!(store
            .detail_pending_after(Some(u64::MAX), 10)
            .unwrap()
            .is_empty());
        let listed = store
            .list_details(crate::store::StateFilter::Pending, Some(2), 10)
            .unwrap();
        assert_eq!(listed.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(store.counters().detail_next, 5);
    }
}

//! The detail stage's state (`[detail]`): one record per detail page, under
//! a number of its own, that says whether it is pending, done or failed and
//! holds the items waiting for it; and the number of each detail URL (so
//! two items that link to one page fetch it once).
//!
//! A listing page's items are recorded (waiting in their detail page's
//! record, or written when that page is done already) in the same batch
//! that records the listing page done, and their new detail pages are
//! queued in that batch too; a detail page's items are written, and its
//! record becomes a done one without them, in the batch that records it
//! done. So a listing page is never fetched again for its details, and
//! after `kill -9` the detail pages that were in flight are simply pending.
//!
//! One record that changes state in place, not a key per state and a key
//! per waiting item: a detail page then costs the tree one new key (and its
//! URL's) and one overwrite instead of four new keys and two removals, and
//! sled splits a leaf every few new keys and merges one as keys go (issue
//! 12's CPU target; see the README's Performance section).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::keys::{named_key, page_key, page_of, DETAIL, DETAIL_URL, META};
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

/// Pending detail pages with their numbers, in number order.
pub type PendingDetails = Vec<(u64, DetailTask)>;

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
    /// Waiting items now written: (detail, page, index). For a detail
    /// page settled done in the same commit, every item that waited for it.
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

/// The first byte of a detail record: its state.
const PENDING_TAG: u8 = b'p';
const DONE_TAG: u8 = b'd';
const FAILED_TAG: u8 = b'f';

/// An item waiting in its detail page's record: (listing page, index on
/// it, the listing's values).
type Waiting = (u64, u32, Vec<String>);

/// A detail page's record as the tree holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Pending(DetailTask, Vec<Waiting>),
    Done(DetailDone),
    /// With `on_failure = "wait"`, its items still wait (for `retry`).
    Failed(DetailFailed, Vec<Waiting>),
}

impl Record {
    /// The state byte, the state's JSON, and (pending and failed) a line
    /// feed and the waiting items' JSON: the feeder and `queue` read the
    /// state without decoding the items.
    fn encode(&self) -> Vec<u8> {
        let (tag, mut bytes, waiting) = match self {
            Record::Pending(task, waiting) => (PENDING_TAG, encode(task), Some(waiting)),
            Record::Done(done) => (DONE_TAG, encode(done), None),
            Record::Failed(failed, waiting) => (FAILED_TAG, encode(failed), Some(waiting)),
        };
        bytes.insert(0, tag);
        if let Some(waiting) = waiting.filter(|w| !w.is_empty()) {
            bytes.push(b'\n');
            bytes.extend(encode(waiting));
        }
        bytes
    }

    /// The state byte, the state's JSON and the waiting items' JSON (empty
    /// when none) of an encoded record.
    fn parts(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        // Compact JSON holds no raw line feed: the first one ends the state.
        Some(match memchr::memchr(b'\n', rest) {
            Some(at) => (tag, &rest[..at], &rest[at + 1..]),
            None => (tag, rest, &[]),
        })
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        let (tag, state, waiting) = Record::parts(bytes)?;
        let waiting = || match waiting {
            [] => Vec::new(),
            json => decode(json),
        };
        match tag {
            PENDING_TAG => Some(Record::Pending(decode(state), waiting())),
            DONE_TAG => Some(Record::Done(decode(state))),
            FAILED_TAG => Some(Record::Failed(decode(state), waiting())),
            _ => None,
        }
    }

    /// The state alone, as the commands show it.
    fn state(bytes: &[u8]) -> Option<DetailState> {
        let (tag, state, _) = Record::parts(bytes)?;
        match tag {
            PENDING_TAG => Some(DetailState::Pending(decode(state))),
            DONE_TAG => Some(DetailState::Done(decode(state))),
            FAILED_TAG => Some(DetailState::Failed(decode(state))),
            _ => None,
        }
    }

    /// The state, and the first item waiting (listing page, index).
    fn into_row(self) -> (DetailState, Option<(u64, u32)>) {
        let first = self
            .waiting()
            .first()
            .map(|(page, index, _)| (*page, *index));
        let state = match self {
            Record::Pending(task, _) => DetailState::Pending(task),
            Record::Done(done) => DetailState::Done(done),
            Record::Failed(failed, _) => DetailState::Failed(failed),
        };
        (state, first)
    }

    fn into_waiting(self) -> Vec<Waiting> {
        match self {
            Record::Pending(_, waiting) | Record::Failed(_, waiting) => waiting,
            Record::Done(_) => Vec::new(),
        }
    }

    fn waiting(&self) -> &[Waiting] {
        match self {
            Record::Pending(_, waiting) | Record::Failed(_, waiting) => waiting,
            Record::Done(_) => &[],
        }
    }
}

fn waiting_items(id: u64, record: Record) -> Vec<WaitingItem> {
    record
        .into_waiting()
        .into_iter()
        .map(|(page, index, values)| WaitingItem {
            detail: id,
            page,
            index,
            values,
        })
        .collect()
}

fn tag_of(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

fn filter_tag(filter: super::StateFilter) -> u8 {
    match filter {
        super::StateFilter::Pending => PENDING_TAG,
        super::StateFilter::Done => DONE_TAG,
        super::StateFilter::Failed => FAILED_TAG,
    }
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
        Ok(self
            .tree
            .get(page_key(DETAIL, id))?
            .and_then(|v| Record::state(&v)))
    }

    fn record(&self, id: u64) -> Result<Option<Record>> {
        Ok(self
            .tree
            .get(page_key(DETAIL, id))?
            .and_then(|v| Record::decode(&v)))
    }

    /// Whether detail page `id` is pending (so its result may be recorded).
    pub fn detail_is_pending(&self, id: u64) -> Result<bool> {
        Ok(self
            .tree
            .get(page_key(DETAIL, id))?
            .and_then(|v| tag_of(&v))
            == Some(PENDING_TAG))
    }

    /// Up to `limit` pending detail pages after `after`, in number order.
    #[cfg(test)]
    pub fn detail_pending_after(&self, after: Option<u64>, limit: usize) -> Result<PendingDetails> {
        Ok(self.detail_pending_scan(after, limit)?.0)
    }

    /// [`Store::detail_pending_after`], and the last number the scan went
    /// past (pending or not): where the next scan may start.
    pub fn detail_pending_scan(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(PendingDetails, Option<u64>)> {
        let mut last = after;
        let mut out = Vec::new();
        for entry in self.detail_range(after) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            let Some(id) = page_of(&key) else { continue };
            last = Some(id);
            if tag_of(&value) == Some(PENDING_TAG) {
                if let Some(DetailState::Pending(task)) = Record::state(&value) {
                    out.push((id, task));
                }
            }
        }
        Ok((out, last))
    }

    /// The detail records after `after` (from the first if `None`).
    fn detail_range(&self, after: Option<u64>) -> sled::Iter {
        let from = match after {
            Some(u64::MAX) => return self.tree.range(page_key(DETAIL, 1)..page_key(DETAIL, 1)),
            Some(id) => id + 1,
            None => 0,
        };
        self.tree
            .range(page_key(DETAIL, from)..=page_key(DETAIL, u64::MAX))
    }

    /// Up to `limit` detail pages in one state after `after`, in number
    /// order, with the first item waiting for each (page, index).
    pub fn list_details(
        &self,
        filter: super::StateFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DetailRow>> {
        let tag = filter_tag(filter);
        let mut rows = Vec::new();
        for entry in self.detail_range(after) {
            if rows.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            let Some(id) = page_of(&key) else { continue };
            if tag_of(&value) != Some(tag) {
                continue;
            }
            if let Some(record) = Record::decode(&value) {
                let (state, first) = record.into_row();
                rows.push((id, state, first));
            }
        }
        Ok(rows)
    }

    /// The items waiting for detail page `id`.
    #[cfg(test)]
    pub fn waiting_for(&self, id: u64) -> Result<Vec<WaitingItem>> {
        Ok(self
            .record(id)?
            .map(|record| waiting_items(id, record))
            .unwrap_or_default())
    }

    /// The items waiting for detail page `id` if it is pending (one read:
    /// the commit stage's check that a result may be recorded).
    pub fn waiting_if_pending(&self, id: u64) -> Result<Option<Vec<WaitingItem>>> {
        Ok(match self.record(id)? {
            Some(record @ Record::Pending(..)) => Some(waiting_items(id, record)),
            _ => None,
        })
    }

    /// The listing pages that have items waiting for a detail page (their
    /// items may lie past the checkpoint after a crash).
    pub fn pages_with_waiting_items(&self) -> Result<HashSet<u64>> {
        let mut pages = HashSet::new();
        for value in self.tree.scan_prefix([DETAIL]).values() {
            let value = value?;
            if tag_of(&value) == Some(DONE_TAG) {
                continue;
            }
            if let Some(record) = Record::decode(&value) {
                pages.extend(record.waiting().iter().map(|(page, _, _)| *page));
            }
        }
        Ok(pages)
    }

    /// Failure reasons of detail pages with their counts, most common first.
    pub fn detail_reasons(&self) -> Result<Vec<(String, u64)>> {
        let mut counts: std::collections::HashMap<String, u64> = Default::default();
        for value in self.tree.scan_prefix([DETAIL]).values() {
            let value = value?;
            if tag_of(&value) != Some(FAILED_TAG) {
                continue;
            }
            if let Some(DetailState::Failed(failed)) = Record::state(&value) {
                *counts.entry(failed.kind).or_default() += 1;
            }
        }
        let mut reasons: Vec<_> = counts.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(reasons)
    }

    /// Detail pages by state and the items waiting, counted from the
    /// records (slow; for `recount`).
    pub(super) fn recount_details(&self) -> Result<(u64, u64, u64, u64)> {
        let (mut pending, mut done, mut failed, mut waiting) = (0, 0, 0, 0);
        for value in self.tree.scan_prefix([DETAIL]).values() {
            match Record::decode(&value?) {
                Some(Record::Pending(_, w)) => {
                    pending += 1;
                    waiting += w.len() as u64;
                }
                Some(Record::Done(_)) => done += 1,
                Some(Record::Failed(_, w)) => {
                    failed += 1;
                    waiting += w.len() as u64;
                }
                None => {}
            }
        }
        Ok((pending, done, failed, waiting))
    }

    /// Puts failed detail pages back to pending (all of them, or those
    /// numbered in `only`), their waiting items with them, in one batch;
    /// returns how many moved and the numbers asked for that were not
    /// failed.
    pub fn retry_details(&self, only: Option<&[u64]>) -> Result<(u64, Vec<u64>)> {
        let mut counters = self.lock();
        let mut next = *counters;
        let mut batch = sled::Batch::default();
        let mut moved = 0;
        let mut not_failed = Vec::new();
        let mut requeue = |id: u64, value: &[u8], batch: &mut sled::Batch| -> bool {
            let Some(Record::Failed(failed, waiting)) = Record::decode(value) else {
                return false;
            };
            let task = DetailTask {
                url: failed.url,
                ..DetailTask::default()
            };
            batch.insert(
                &page_key(DETAIL, id)[..],
                Record::Pending(task, waiting).encode(),
            );
            moved += 1;
            true
        };
        match only {
            None => {
                for entry in self.tree.scan_prefix([DETAIL]) {
                    let (key, value) = entry?;
                    if let Some(id) = page_of(&key) {
                        requeue(id, &value, &mut batch);
                    }
                }
            }
            Some(ids) => {
                let mut seen = HashSet::new();
                for &id in ids.iter().filter(|&&id| seen.insert(id)) {
                    let value = self.tree.get(page_key(DETAIL, id))?;
                    if !value.is_some_and(|value| requeue(id, &value, &mut batch)) {
                        not_failed.push(id);
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

    /// The items still waiting for detail page `id` once those in `written`
    /// are: from the record as this group left it, or as the tree holds it.
    fn still_waiting(
        &self,
        touched: &mut HashMap<u64, Record>,
        id: u64,
        written: &[(u64, u32)],
        next: &mut super::Counters,
    ) -> Result<Vec<Waiting>> {
        let waiting = match touched.remove(&id) {
            Some(record) => record.into_waiting(),
            None => self
                .record(id)?
                .map(Record::into_waiting)
                .unwrap_or_default(),
        };
        let before = waiting.len() as u64;
        let waiting: Vec<Waiting> = waiting
            .into_iter()
            .filter(|(page, index, _)| !written.contains(&(*page, *index)))
            .collect();
        next.waiting -= before - waiting.len() as u64;
        Ok(waiting)
    }

    /// Adds the detail stage's part of a commit group to `batch` and
    /// `next`: each detail record it changes is written once, with every
    /// change of the group. Detail pages that are no longer pending are
    /// skipped (their result was recorded already); the caller checked
    /// that before writing their items.
    pub(super) fn plan_details(
        &self,
        batch: &mut sled::Batch,
        next: &mut super::Counters,
        details: DetailCommit,
    ) -> Result<()> {
        let now = now_ms();
        let mut touched: HashMap<u64, Record> = HashMap::new();
        for (id, url) in details.created {
            batch.insert(named_key(DETAIL_URL, &url), &id.to_be_bytes());
            let task = DetailTask {
                url,
                ..DetailTask::default()
            };
            touched.insert(id, Record::Pending(task, Vec::new()));
            next.detail_pending += 1;
        }
        for (id, failed) in details.refused {
            batch.insert(named_key(DETAIL_URL, &failed.url), &id.to_be_bytes());
            touched.insert(id, Record::Failed(failed, Vec::new()));
            next.detail_failed += 1;
        }
        // Items written in this group, by their detail page (a list: in
        // follow mode two items at one place on a page, found in two
        // rounds, can wait for the same detail page).
        let mut written: HashMap<u64, Vec<(u64, u32)>> = HashMap::new();
        for &(detail, page, index) in &details.waiting_written {
            written.entry(detail).or_default().push((page, index));
        }
        // The detail pages whose result this batch records.
        let mut recorded = HashSet::new();
        for settle in details.settled {
            let id = match &settle {
                DetailSettle::Done { id, .. }
                | DetailSettle::Retry { id, .. }
                | DetailSettle::Failed { id, .. } => *id,
            };
            let pending = !recorded.contains(&id)
                && match touched.get(&id) {
                    Some(record) => matches!(record, Record::Pending(..)),
                    None => self.detail_is_pending(id)?,
                };
            if !pending {
                log::warn!("detail page {id} was already settled; recording it once");
                continue;
            }
            recorded.insert(id);
            // The items written with this result leave the record.
            let mine = written.remove(&id).unwrap_or_default();
            let record = match settle {
                DetailSettle::Done { done, .. } => {
                    // Every item waiting for it is in `mine` (see
                    // `DetailCommit::waiting_written`): the old record need
                    // not be read.
                    next.waiting -= mine.len() as u64;
                    next.detail_pending -= 1;
                    next.detail_done += 1;
                    next.bytes += done.bytes;
                    Record::Done(DetailDone { at_ms: now, ..done })
                }
                DetailSettle::Retry { task, .. } => {
                    let waiting = self.still_waiting(&mut touched, id, &mine, next)?;
                    next.retries += 1;
                    Record::Pending(task, waiting)
                }
                DetailSettle::Failed { failed, .. } => {
                    let waiting = self.still_waiting(&mut touched, id, &mine, next)?;
                    next.detail_pending -= 1;
                    next.detail_failed += 1;
                    Record::Failed(
                        DetailFailed {
                            at_ms: now,
                            ..failed
                        },
                        waiting,
                    )
                }
            };
            touched.insert(id, record);
        }
        for item in details.waiting_added {
            let record = match touched.entry(item.detail) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    match self.record(item.detail)? {
                        Some(record) => entry.insert(record),
                        None => anyhow::bail!(
                            "internal error: an item waits for detail page {} that is not queued",
                            item.detail
                        ),
                    }
                }
            };
            match record {
                Record::Pending(_, waiting) | Record::Failed(_, waiting) => {
                    waiting.push((item.page, item.index, item.values));
                    next.waiting += 1;
                }
                Record::Done(_) => anyhow::bail!(
                    "internal error: an item waits for detail page {} that is done",
                    item.detail
                ),
            }
        }
        for (id, record) in touched {
            batch.insert(&page_key(DETAIL, id)[..], record.encode());
        }
        next.items += details.items_written;
        next.detail_next = next.detail_next.max(details.next_id);
        Ok(())
    }
}

impl Store {
    /// Moves the detail pages of a layout version 1 state (a key per state
    /// and one per waiting item) to their records, and marks the state
    /// version 2, in one batch: a crash leaves the old layout or the new.
    pub(super) fn migrate_v1(&self) -> Result<()> {
        use super::keys::v1;
        let mut counters = self.lock();
        let mut batch = sled::Batch::default();
        // One record per number: were a number under two old states, the
        // later state (failed over done over pending) is the one kept.
        let mut records: std::collections::BTreeMap<u64, Record> = Default::default();
        for prefix in [v1::DETAIL_PENDING, v1::DETAIL_DONE, v1::DETAIL_FAILED] {
            for entry in self.tree.scan_prefix([prefix]) {
                let (key, value) = entry?;
                batch.remove(key.clone());
                let Some(id) = page_of(&key) else { continue };
                let record = match prefix {
                    v1::DETAIL_PENDING => Record::Pending(decode(&value), Vec::new()),
                    v1::DETAIL_DONE => Record::Done(decode(&value)),
                    _ => Record::Failed(decode(&value), Vec::new()),
                };
                records.insert(id, record);
            }
        }
        let mut unplaced = 0u64;
        for entry in self.tree.scan_prefix([v1::WAITING]) {
            let (key, value) = entry?;
            batch.remove(key.clone());
            let placed = v1::waiting_of(&key).and_then(|(detail, page, index)| {
                match records.get_mut(&detail)? {
                    Record::Pending(_, waiting) | Record::Failed(_, waiting) => {
                        waiting.push((page, index, decode(&value)));
                        Some(())
                    }
                    Record::Done(_) => None,
                }
            });
            unplaced += u64::from(placed.is_none());
        }
        if unplaced > 0 {
            // Version 1 never left one (it wrote them with their record
            // and removed them with its items written).
            log::warn!(
                "{unplaced} waiting items of the old layout had no pending or failed detail page; they are dropped"
            );
        }
        // The counters follow what was moved, so that they equal a recount
        // whatever the old state held.
        let mut next = *counters;
        (
            next.detail_pending,
            next.detail_done,
            next.detail_failed,
            next.waiting,
        ) = (0, 0, 0, 0);
        for (id, record) in &records {
            match record {
                Record::Pending(_, waiting) => {
                    next.detail_pending += 1;
                    next.waiting += waiting.len() as u64;
                }
                Record::Done(_) => next.detail_done += 1,
                Record::Failed(_, waiting) => {
                    next.detail_failed += 1;
                    next.waiting += waiting.len() as u64;
                }
            }
            batch.insert(&page_key(DETAIL, *id)[..], record.encode());
        }
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        batch.insert(
            named_key(META, super::SCHEMA_KEY),
            &super::SCHEMA_VERSION.to_be_bytes(),
        );
        self.tree.apply_batch(batch)?;
        *counters = next;
        Ok(())
    }
}

/// A detail commit that queues detail pages `0..n`, at `http://x/d/{id}`
/// (for tests).
#[cfg(test)]
pub(crate) fn queued(n: u64) -> DetailCommit {
    DetailCommit {
        created: (0..n).map(|id| (id, format!("http://x/d/{id}"))).collect(),
        next_id: n,
        ..DetailCommit::default()
    }
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
                first,
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
            .commit_known(&[], &[], second.clone(), (100, Fingerprint(2)), None)
            .unwrap();
        // A second result for the same detail page is not recorded twice
        // (the commit stage writes no items for it: it checks first).
        let again = DetailCommit {
            items_written: 0,
            ..second.clone()
        };
        store
            .commit_known(&[], &[], again, (100, Fingerprint(2)), None)
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
        let commit = queued(5);
        store
            .commit_known(&[], &[], commit, (0, Fingerprint(1)), None)
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

    #[test]
    fn a_layout_version_1_state_moves_to_the_records_at_open_nothing_lost() {
        use crate::store::keys::v1;
        let dir = tempfile::tempdir().unwrap();
        let counters = {
            let store = Store::open(dir.path()).unwrap();
            store
                .set_job(
                    &crate::store::tests::job(),
                    &PageRange::Closed { start: 1, end: 2 },
                    Fingerprint(1),
                )
                .unwrap();
            // The old layout, as version 1 wrote it.
            let tree = &store.tree;
            let old = |prefix, id| page_key(prefix, id);
            let wait = |detail: u64, page: u64, index: u32| {
                let mut key = vec![v1::WAITING];
                key.extend(detail.to_be_bytes());
                key.extend(page.to_be_bytes());
                key.extend(index.to_be_bytes());
                key
            };
            let task = DetailTask {
                url: "http://x/d/0".into(),
                attempts: 2,
                ..DetailTask::default()
            };
            tree.insert(old(v1::DETAIL_PENDING, 0), encode(&task))
                .unwrap();
            let done = DetailDone {
                url: "http://x/d/1".into(),
                values: DetailValues {
                    fields: vec!["v".into()],
                    lists: vec![],
                },
                ..DetailDone::default()
            };
            tree.insert(old(v1::DETAIL_DONE, 1), encode(&done)).unwrap();
            let failed = DetailFailed {
                url: "http://x/d/2".into(),
                kind: "HTTP 404".into(),
                ..DetailFailed::default()
            };
            tree.insert(old(v1::DETAIL_FAILED, 2), encode(&failed))
                .unwrap();
            tree.insert(wait(0, 1, 3), encode(&vec!["a"])).unwrap();
            tree.insert(wait(0, 2, 0), encode(&vec!["b"])).unwrap();
            tree.insert(wait(2, 2, 1), encode(&vec!["c"])).unwrap();
            // None such was ever written; dropped, and not counted.
            tree.insert(wait(1, 1, 0), encode(&vec!["x"])).unwrap();
            tree.insert(wait(7, 1, 1), encode(&vec!["y"])).unwrap();
            tree.insert(
                named_key(META, crate::store::SCHEMA_KEY),
                &1u64.to_be_bytes(),
            )
            .unwrap();
            store.counters()
        };
        let store = crate::store::tests::once_released(|| Store::open(dir.path()));
        assert!(
            store.tree.iter().keys().all(|k| !matches!(
                k.unwrap()[0],
                v1::DETAIL_PENDING | v1::DETAIL_DONE | v1::DETAIL_FAILED | v1::WAITING
            )),
            "no key of the old layout is left"
        );
        assert_eq!(recount(&store), (1, 1, 1, 3));
        let moved = store.counters();
        assert_eq!(
            moved,
            crate::store::Counters {
                detail_pending: 1,
                detail_done: 1,
                detail_failed: 1,
                waiting: 3,
                ..counters
            },
            "the detail counters are those moved, the others unchanged"
        );
        let waiting = |id| {
            store
                .waiting_for(id)
                .unwrap()
                .into_iter()
                .map(|w| (w.page, w.index, w.values))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            waiting(0),
            [(1, 3, vec!["a".to_string()]), (2, 0, vec!["b".to_string()])]
        );
        assert_eq!(waiting(2), [(2, 1, vec!["c".to_string()])]);
        assert_eq!(store.detail_pending_after(None, 9).unwrap(), [(0, task())]);
        assert!(
            matches!(store.detail_state(1).unwrap(), Some(DetailState::Done(d)) if d.values.fields == ["v"])
        );
        assert_eq!(
            store.detail_reasons().unwrap(),
            [("HTTP 404".to_string(), 1)]
        );
        drop(store);
        // Opened again: version 2, nothing moved twice.
        let store = crate::store::tests::once_released(|| Store::open(dir.path()));
        assert_eq!(recount(&store), (1, 1, 1, 3));
        let schema = store
            .tree
            .get(named_key(META, crate::store::SCHEMA_KEY))
            .unwrap()
            .unwrap();
        assert_eq!(schema.as_ref(), crate::store::SCHEMA_VERSION.to_be_bytes());

        fn task() -> DetailTask {
            DetailTask {
                url: "http://x/d/0".into(),
                attempts: 2,
                ..DetailTask::default()
            }
        }
    }

    #[test]
    fn a_scan_goes_past_done_pages_so_the_next_one_does_not_walk_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let commit = queued(4);
        store
            .commit_known(&[], &[], commit, (0, Fingerprint(1)), None)
            .unwrap();
        let done = |id: u64| DetailSettle::Done {
            id,
            done: DetailDone {
                url: format!("http://x/d/{id}"),
                ..DetailDone::default()
            },
        };
        let settle = DetailCommit {
            settled: vec![done(2), done(3)],
            next_id: 4,
            ..DetailCommit::default()
        };
        store
            .commit_known(&[], &[], settle, (0, Fingerprint(1)), None)
            .unwrap();
        let (rows, last) = store.detail_pending_scan(Some(1), 10).unwrap();
        assert!(rows.is_empty());
        assert_eq!(last, Some(3), "the cursor moves past the done pages");
        let (rows, last) = store.detail_pending_scan(None, 1).unwrap();
        assert_eq!((rows.len(), last), (1, Some(0)));
        assert_eq!(
            store.detail_pending_scan(Some(3), 10).unwrap(),
            (vec![], Some(3))
        );
    }

    #[test]
    fn a_retried_or_failed_detail_page_keeps_the_items_not_written_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let item = |detail, page, index| WaitingItem {
            detail,
            page,
            index,
            values: vec![format!("{page}.{index}")],
        };
        // Detail pages 0, 1 and 2, each with two items waiting.
        let first = DetailCommit {
            waiting_added: (0..3)
                .flat_map(|id| [item(id, 1, 2 * id as u32), item(id, 2, 2 * id as u32)])
                .collect(),
            ..queued(3)
        };
        store
            .commit_known(&[], &[], first, (0, Fingerprint(1)), None)
            .unwrap();
        assert_eq!(
            store.waiting_if_pending(1).unwrap(),
            Some(vec![item(1, 1, 2), item(1, 2, 2)])
        );
        assert_eq!(store.waiting_if_pending(9).unwrap(), None, "no such page");
        assert_eq!(
            store.detail_pending_after(None, 1).unwrap()[0].1.url,
            "http://x/d/0"
        );
        let failed = |id| DetailSettle::Failed {
            id,
            failed: DetailFailed {
                url: format!("http://x/d/{id}"),
                kind: "HTTP 404".into(),
                ..DetailFailed::default()
            },
        };
        // 0 is retried: both wait still. 1 fails, its items waiting (on
        // failure, wait). 2 fails with one of its items written.
        let second = DetailCommit {
            settled: vec![
                DetailSettle::Retry {
                    id: 0,
                    task: DetailTask {
                        url: "http://x/d/0".into(),
                        attempts: 1,
                        ..DetailTask::default()
                    },
                },
                failed(1),
                failed(2),
            ],
            waiting_written: vec![(2, 2, 4)],
            items_written: 1,
            next_id: 3,
            ..DetailCommit::default()
        };
        store
            .commit_known(&[], &[], second, (10, Fingerprint(2)), None)
            .unwrap();
        let counters = store.counters();
        assert_eq!(
            (
                counters.detail_pending,
                counters.detail_failed,
                counters.waiting,
                counters.retries
            ),
            (1, 2, 5, 1)
        );
        match store.detail_state(1).unwrap() {
            Some(DetailState::Failed(failed)) => assert!(failed.at_ms > 0, "{failed:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(recount(&store), (1, 0, 2, 5));
        assert_eq!(
            store.waiting_for(0).unwrap(),
            vec![item(0, 1, 0), item(0, 2, 0)]
        );
        assert_eq!(
            store.waiting_for(1).unwrap(),
            vec![item(1, 1, 2), item(1, 2, 2)]
        );
        assert_eq!(store.waiting_for(2).unwrap(), vec![item(2, 1, 4)]);
        match store.detail_state(0).unwrap() {
            Some(DetailState::Pending(task)) => assert_eq!(task.attempts, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.waiting_if_pending(2).unwrap(),
            None,
            "failed, not pending"
        );
        // `retry` puts both failed pages back with what waits for them.
        assert_eq!(store.retry_details(None).unwrap(), (2, vec![]));
        assert_eq!(
            store.waiting_if_pending(2).unwrap(),
            Some(vec![item(2, 1, 4)])
        );
        assert_eq!(recount(&store), (3, 0, 0, 5));
        // 1 comes in: its two items are written; the record keeps none.
        let third = DetailCommit {
            settled: vec![DetailSettle::Done {
                id: 1,
                done: DetailDone {
                    url: "http://x/d/1".into(),
                    bytes: 7,
                    ..DetailDone::default()
                },
            }],
            waiting_written: vec![(1, 1, 2), (1, 2, 2)],
            items_written: 2,
            next_id: 3,
            ..DetailCommit::default()
        };
        store
            .commit_known(&[], &[], third, (20, Fingerprint(3)), None)
            .unwrap();
        assert_eq!(store.counters().waiting, 3);
        assert_eq!(store.counters().bytes, 7, "a detail page's bytes count");
        assert_eq!(recount(&store), (2, 1, 0, 3));
        assert_eq!(
            store.waiting_if_pending(1).unwrap(),
            None,
            "done, not pending"
        );
        match store.detail_state(1).unwrap() {
            Some(DetailState::Done(done)) => assert!(done.at_ms > 0, "{done:?}"),
            other => panic!("{other:?}"),
        }
    }
}

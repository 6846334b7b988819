//! Rebuilding the checkpoint from what the output file holds (see
//! `crate::repair`), in one batch.

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::keys::{named_key, page_key, page_of, DONE, FAILED, ITEM_KEY, META, PENDING};
use super::records::{Done, Failed};
use super::{Fingerprint, Store, COUNTERS_KEY, DAMAGED_KEY};
use crate::util::now_ms;

/// What the output file holds, as `repair` read it.
#[derive(Debug, Default)]
pub struct Rebuild {
    /// Per page whose items are in the file, the items of its last group.
    pub pages: HashMap<u64, u32>,
    /// Items in the file.
    pub items: u64,
    /// The items' keys and their pages, when the job has a `key`: the
    /// keyspace of written keys becomes exactly these.
    pub keys: Option<Vec<(String, u64)>>,
    pub output_len: u64,
    pub fingerprint: Fingerprint,
    /// The job's range, to queue again when the state had lost it.
    pub requeue_range: Option<(u64, u64)>,
}

/// What the rebuild changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Done pages whose items are not (all) in the file, now pending.
    pub requeued: u64,
    /// Pages whose items are in the file, now recorded as done.
    pub adopted: u64,
}

impl Store {
    /// Makes the checkpoint say what the file holds: done pages whose
    /// items are missing go back to pending, pages whose items are all
    /// there are done, and the counters, item keys, output length and
    /// fingerprint follow; the damage mark is cleared. One batch.
    pub fn rebuild_from_output(&self, rebuild: &Rebuild) -> Result<Rebuilt> {
        let mut counters = self.lock();
        let mut next = *counters;
        let mut batch = sled::Batch::default();
        let mut rebuilt = Rebuilt::default();
        let mut reasons: HashMap<String, i64> = HashMap::new();
        if let Some((start, end)) = rebuild.requeue_range {
            next.pending += self.plan_lazy(&mut batch, &[(start, end)])?;
        }
        let in_requeued_range = |page: u64| {
            rebuild
                .requeue_range
                .is_some_and(|(start, end)| start <= page && page <= end)
        };
        let mut done_pages = HashSet::new();
        for entry in self.tree.scan_prefix([DONE]) {
            let (key, value) = entry?;
            let Some(page) = page_of(&key) else { continue };
            done_pages.insert(page);
            let done = Done::decode(&value);
            if done.items > 0 && rebuild.pages.get(&page) != Some(&done.items) {
                batch.remove(&page_key(DONE, page)[..]);
                batch.insert(&page_key(PENDING, page)[..], &[][..]);
                next.done -= 1;
                next.pending += 1;
                rebuilt.requeued += 1;
            }
        }
        for (&page, &items) in &rebuild.pages {
            if done_pages.contains(&page) {
                continue;
            }
            let keyed_pending = self.tree.contains_key(page_key(PENDING, page))?;
            let failed = self.tree.get(page_key(FAILED, page))?;
            let lazily_pending = !keyed_pending
                && failed.is_none()
                && (self.in_lazy_range(page)? || in_requeued_range(page));
            if keyed_pending {
                batch.remove(&page_key(PENDING, page)[..]);
            }
            if let Some(failed) = &failed {
                batch.remove(&page_key(FAILED, page)[..]);
                *reasons.entry(Failed::decode(failed).kind).or_default() -= 1;
                next.failed -= 1;
            } else if keyed_pending || lazily_pending {
                next.pending -= 1;
            } else {
                // Items of a page the job does not know: they stay in the
                // file, but no page is recorded for them.
                continue;
            }
            let done = Done {
                items,
                bytes: 0,
                at_ms: now_ms(),
                attempts: 1,
                extracted: items,
            };
            batch.insert(&page_key(DONE, page)[..], done.encode());
            next.done += 1;
            rebuilt.adopted += 1;
        }
        if let Some(keys) = &rebuild.keys {
            for key in self.tree.scan_prefix([ITEM_KEY]).keys() {
                batch.remove(key?);
            }
            for (key, page) in keys {
                batch.insert(named_key(ITEM_KEY, key), &page.to_be_bytes());
            }
        }
        self.add_reason_changes(&mut batch, &reasons)?;
        next.items = rebuild.items;
        next.output_len = rebuild.output_len;
        next.output_fingerprint = rebuild.fingerprint.0;
        batch.remove(named_key(META, DAMAGED_KEY));
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        self.tree.apply_batch(batch)?;
        *counters = next;
        Ok(rebuilt)
    }
}

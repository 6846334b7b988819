//! Committing a group of settled pages: one atomic sled batch with the
//! pages' new states, their item keys, the failure-reason counts, the
//! counters, the output's committed length and, for open ranges, the end
//! found by a run of empty pages.

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::detail::DetailCommit;
use super::keys::{named_key, page_key, DONE, FAILED, ITEM_KEY, META, PENDING, REASON};
use super::records::{Done, Failed, Pending};
use super::{is_end_marker, Fingerprint, PageState, PendingAs, Settle, Store, COUNTERS_KEY};
use crate::util::now_ms;

impl Store {
    /// Records settled pages and the output's new committed length in one
    /// atomic batch. `empty_run` (open ranges) is the number of consecutive
    /// empty pages that ends the range; an end found here is recorded in the
    /// same batch.
    pub fn commit(
        &self,
        settled: &[Settle],
        output_len: u64,
        empty_run: Option<u32>,
    ) -> Result<()> {
        let pending = settled
            .iter()
            .map(|settle| self.pending_as(settle.page()))
            .collect::<Result<Vec<_>>>()?;
        self.commit_known(
            settled,
            &pending,
            DetailCommit::default(),
            (output_len, Fingerprint::default()),
            empty_run,
        )
    }

    /// [`Store::commit`] with each page's [`Store::pending_as`] already read
    /// (the commit stage reads it before writing a page's items, and only
    /// the commit stage changes it for a pending page). A done or failed
    /// page that was not pending is not recorded. `details` is the detail
    /// stage's part of the group (see `detail`), in the same batch.
    pub fn commit_known(
        &self,
        settled: &[Settle],
        pending: &[Option<PendingAs>],
        details: DetailCommit,
        (output_len, fingerprint): (u64, Fingerprint),
        empty_run: Option<u32>,
    ) -> Result<()> {
        anyhow::ensure!(
            settled.len() == pending.len(),
            "internal error: {} pages to commit but {} pending states",
            settled.len(),
            pending.len()
        );
        let mut counters = self.lock();
        let mut next = *counters;
        let now = now_ms();
        let mut batch = sled::Batch::default();
        let mut reasons: HashMap<String, i64> = HashMap::new();
        let mut empties_here: Vec<u64> = Vec::new();
        let mut in_batch: HashSet<u64> = HashSet::new();
        for (settle, pending) in settled.iter().zip(pending) {
            // The tree does not see this batch: a page twice in it would
            // pass the pending check twice.
            if !in_batch.insert(settle.page()) {
                log::warn!(
                    "page {} was settled twice in one commit; recording it once",
                    settle.page()
                );
                continue;
            }
            match settle {
                Settle::Done {
                    page,
                    attempts,
                    items,
                    extracted,
                    bytes,
                    keys,
                } => {
                    let Some(pending) = pending else {
                        log::warn!(
                            "page {page} was committed but is no longer pending; recording it once"
                        );
                        continue;
                    };
                    if *pending == PendingAs::Keyed {
                        batch.remove(&page_key(PENDING, *page)[..]);
                    }
                    let done = Done {
                        items: *items,
                        bytes: *bytes,
                        at_ms: now,
                        attempts: *attempts,
                        extracted: *extracted,
                    };
                    batch.insert(&page_key(DONE, *page)[..], done.encode());
                    next.pending -= 1;
                    next.done += 1;
                    next.items += u64::from(*items);
                    next.bytes += bytes;
                    if *extracted == 0 {
                        empties_here.push(*page);
                    }
                    for key in keys {
                        batch.insert(named_key(ITEM_KEY, key), &page.to_be_bytes());
                    }
                }
                Settle::Retry {
                    page,
                    attempts,
                    not_before_ms,
                    error,
                } => {
                    let pending = Pending {
                        attempts: *attempts,
                        not_before_ms: *not_before_ms,
                        last_error: error.clone(),
                    };
                    batch.insert(&page_key(PENDING, *page)[..], pending.encode());
                    next.retries += 1;
                }
                Settle::Failed {
                    page,
                    attempts,
                    kind,
                    detail,
                } => {
                    let Some(pending) = pending else {
                        continue;
                    };
                    if *pending == PendingAs::Keyed {
                        batch.remove(&page_key(PENDING, *page)[..]);
                    }
                    let failed = Failed {
                        attempts: *attempts,
                        at_ms: now,
                        kind: kind.clone(),
                        detail: detail.clone(),
                    };
                    batch.insert(&page_key(FAILED, *page)[..], failed.encode());
                    *reasons.entry(kind.clone()).or_default() += 1;
                    next.pending -= 1;
                    next.failed += 1;
                    if is_end_marker(kind) {
                        empties_here.push(*page);
                    }
                }
            }
        }
        if let Some(run) = empty_run {
            for &page in &empties_here {
                if let Some(start) = self.empty_run_through(page, run, &empties_here)? {
                    let plus_one = start + 1;
                    if next.open_end_plus_one == 0 || plus_one < next.open_end_plus_one {
                        next.open_end_plus_one = plus_one;
                    }
                }
            }
        }
        self.plan_details(&mut batch, &mut next, details)?;
        next.output_len = output_len;
        next.output_fingerprint = fingerprint.0;
        next.last_commit_ms = now;
        self.add_reason_changes(&mut batch, &reasons)?;
        let keyed_now: HashSet<u64> = settled.iter().map(Settle::page).collect();
        self.trim_lazy(&mut batch, &keyed_now)?;
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        self.tree.apply_batch(batch).map_err(|e| {
            anyhow::anyhow!(
                "cannot record the checkpoint: {}",
                crate::util::sled_reason(&e)
            )
        })?;
        *counters = next;
        Ok(())
    }

    /// How `page` is pending, if it is: by a pending key, or by lying in a
    /// lazy range with no key of any state (pages being fetched from a range
    /// have no key; see `ranges`).
    pub fn pending_as(&self, page: u64) -> Result<Option<PendingAs>> {
        if self.tree.contains_key(page_key(PENDING, page))? {
            return Ok(Some(PendingAs::Keyed));
        }
        let settled = self.tree.contains_key(page_key(DONE, page))?
            || self.tree.contains_key(page_key(FAILED, page))?;
        Ok((!settled && self.in_lazy_range(page)?).then_some(PendingAs::InRange))
    }

    /// Whether `page` lies in a run of `run` consecutive empty pages; returns
    /// the run's first page. `also_empty` are pages of the batch being built.
    fn empty_run_through(&self, page: u64, run: u32, also_empty: &[u64]) -> Result<Option<u64>> {
        let is_empty = |p: u64| -> Result<bool> {
            if also_empty.contains(&p) {
                return Ok(true);
            }
            Ok(match self.state_of(p)? {
                Some(PageState::Done(done)) => done.extracted == 0,
                Some(PageState::Failed(failed)) => is_end_marker(&failed.kind),
                _ => false,
            })
        };
        let run = u64::from(run.max(1));
        let mut first = page;
        while first > 0 && page - (first - 1) < run && is_empty(first - 1)? {
            first -= 1;
        }
        let mut last = page;
        while last - first + 1 < run && last < u64::MAX && is_empty(last + 1)? {
            last += 1;
        }
        Ok((last - first + 1 >= run).then_some(first))
    }

    pub(super) fn add_reason_changes(
        &self,
        batch: &mut sled::Batch,
        changes: &HashMap<String, i64>,
    ) -> Result<()> {
        for (kind, change) in changes {
            let key = named_key(REASON, kind);
            let current = self.tree.get(&key)?.map_or(0, |v| {
                u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default())
            });
            let updated = (current as i64 + change).max(0) as u64;
            if updated == 0 {
                batch.remove(key);
            } else {
                batch.insert(key, &updated.to_be_bytes());
            }
        }
        Ok(())
    }
}

//! The commit stage, the only writer of the output and of page states.
//!
//! Pages are committed in groups (every `commit_every` pages or
//! `commit_interval`, whichever comes first, or at once when the feeder can
//! send nothing more until pages settle: the end of a crawl, a full window). For each group, in this order:
//! 1. append the group's items to the output and `fsync` it;
//! 2. apply one sled batch: pages done/failed/rescheduled, item keys,
//!    counters, and the output's new committed length; then `flush` sled;
//! 3. only then tell the feeder the pages are settled.
//!
//! A crash before 2 leaves bytes past the committed length, which the next
//! start truncates away (their pages are still pending and are fetched
//! again); a crash after 2 loses nothing. Because the output is synced
//! before the checkpoint, this also holds across power loss.
//!
//! When the job has a `key`, an item whose key is already in the store (or
//! earlier in the same group) is not written again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::fetch::Origin;
use super::groups::{Groups, Step};
use super::{failure_detail, retry_delay, tried_again, Parsed, Settled, Shared, Task};
use crate::config::detail::{Detail, OnFailure};
use crate::output::{csv_header, render_merged, Damage, Merge, OutputFile};
use crate::store::detail::{DetailDone, DetailFailed, DetailTask, WaitingItem};
use crate::store::{DetailCommit, DetailSettle, DetailState, DetailValues, Settle, Store};
use crate::util::now_ms;

pub(super) fn run(
    store: &Store,
    output: &mut OutputFile,
    parsed: Receiver<Parsed>,
    settled: Sender<Settled>,
    shared: &Shared,
) -> Result<()> {
    let result = commit_groups(store, output, parsed, settled, shared);
    if let Err(error) = &result {
        // Recorded so that `status` says so and the next `run` waits for
        // `repair` instead of writing after a hole.
        if let Some(damage) = error.downcast_ref::<Damage>() {
            if let Err(e) = store.set_damaged(&damage.0) {
                log::error!("cannot record in the state that the output is damaged: {e:#}");
            }
        }
    }
    result
}

fn commit_groups(
    store: &Store,
    output: &mut OutputFile,
    parsed: Receiver<Parsed>,
    settled: Sender<Settled>,
    shared: &Shared,
) -> Result<()> {
    let mut groups = Groups::default();
    loop {
        shared.beat();
        if let Ok(reply) = shared.reopen_requests.1.try_recv() {
            // At a commit boundary: what was parsed so far goes to the old
            // file, everything after to the new one.
            flush(store, output, &mut groups.group, &settled, shared)?;
            groups.flushed();
            let outcome = reopen(store, output, shared).map_err(|e| crate::error::one_line(&e));
            // The asker may have given up waiting; the log says it anyway.
            let _ = reply.try_send(outcome);
        }
        match groups.next(&parsed, shared) {
            Step::Wait => {}
            Step::Flush => {
                flush(store, output, &mut groups.group, &settled, shared)?;
                groups.flushed();
            }
            Step::Last => return flush(store, output, &mut groups.group, &settled, shared),
        }
    }
}

fn flush(
    store: &Store,
    output: &mut OutputFile,
    group: &mut Vec<Parsed>,
    settled: &Sender<Settled>,
    shared: &Shared,
) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    super::fault_panic("commit");
    let config = shared.config();
    let mut settles = Vec::with_capacity(group.len());
    // Each settle's page, as pending as it was read below.
    let mut pending = Vec::with_capacity(group.len());
    let mut notices = Vec::with_capacity(group.len());
    let mut keys_in_group: HashSet<String> = HashSet::new();
    let mut tasks_in_group: HashSet<Task> = HashSet::new();
    let mut details = Details::new(store, &config);
    let mut tally = Tally::default();
    // Detail pages first: a listing page of this group whose item links
    // to a detail page done in this group then writes the item at once
    // (the waiting records read from the tree cannot include its own).
    group.sort_by_key(|message| {
        !matches!(
            message,
            Parsed::Detail { .. }
                | Parsed::Failure {
                    task: Task::Detail(_),
                    ..
                }
        )
    });
    for message in group.drain(..) {
        // A task is settled once: a second result for it (which would be a
        // bug upstream) must not write its items again.
        let task = match &message {
            Parsed::Done { page, .. } => Some(Task::Page(*page)),
            Parsed::Detail { id, .. } => Some(Task::Detail(*id)),
            Parsed::Failure { task, .. } => Some(*task),
            Parsed::Abandoned => None,
        };
        match task {
            Some(Task::Page(page)) => {
                let state = store.pending_as(page)?;
                if !tasks_in_group.insert(Task::Page(page)) || state.is_none() {
                    log::warn!("page {page} was already settled; its second result is dropped");
                    notices.push(Settled::Finished(Task::Page(page)));
                    continue;
                }
                pending.push(state);
            }
            Some(Task::Detail(id)) => {
                let waiting = match tasks_in_group.insert(Task::Detail(id)) {
                    true => store.waiting_if_pending(id)?,
                    false => None,
                };
                let Some(waiting) = waiting else {
                    log::warn!(
                        "detail page {id} was already settled; its second result is dropped"
                    );
                    notices.push(Settled::Finished(Task::Detail(id)));
                    continue;
                };
                details.waiting.insert(id, waiting);
            }
            None => {}
        }
        match message {
            Parsed::Done {
                page,
                attempts,
                bytes,
                items,
            } => {
                let extracted = items.count() as u32;
                let mut count = 0;
                let mut keys = Vec::new();
                if let Some(detail) = &config.detail {
                    let has_keys = !items.keys.is_empty();
                    for (index, values) in items.values.into_iter().enumerate() {
                        if has_keys {
                            let key = &items.keys[index];
                            if keys_in_group.contains(key) || store.has_item_key(key)? {
                                continue;
                            }
                            keys_in_group.insert(key.clone());
                            keys.push(key.clone());
                        }
                        if details.item(output, detail, page, index as u32, values)? {
                            count += 1;
                        }
                    }
                } else if items.keys.is_empty() {
                    output.append(&items.bytes)?;
                    count = extracted;
                } else {
                    let mut start = 0;
                    for (end, key) in items.ends.iter().zip(items.keys) {
                        let seen = keys_in_group.contains(&key) || store.has_item_key(&key)?;
                        if !seen {
                            output.append(&items.bytes[start..*end])?;
                            keys_in_group.insert(key.clone());
                            keys.push(key);
                            count += 1;
                        }
                        start = *end;
                    }
                }
                // Items not taken because their key was written (or
                // claimed by an item waiting for its detail page).
                tally.duplicates += u64::from(extracted) - keys_taken(&config, extracted, &keys);
                settles.push(Settle::Done {
                    page,
                    attempts,
                    items: count,
                    extracted,
                    bytes,
                    keys,
                });
                notices.push(Settled::Finished(Task::Page(page)));
                tally.done += 1;
                tally.written += u64::from(count);
            }
            Parsed::Detail {
                id,
                attempts,
                bytes,
                url,
                values,
            } => {
                let detail = config.detail.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("internal error: a detail page without [detail]")
                })?;
                details.done(output, detail, id, attempts, bytes, &url, values)?;
                notices.push(Settled::Finished(Task::Detail(id)));
                tally.details_done += 1;
            }
            Parsed::Failure {
                task,
                attempts,
                url,
                error,
            } => {
                let where_ = match (&task, &url) {
                    (Task::Detail(_), Some(url)) => url.to_string(),
                    (task, _) => match task {
                        Task::Page(page) => config.page_url(*page),
                        Task::Detail(_) => String::new(),
                    },
                };
                if tried_again(&config, attempts, &error) {
                    let delay = retry_delay(&config, attempts, &error);
                    // In the bar, the summary and `status`; in the log
                    // only with -v: a person need not act on a retry.
                    log::debug!(
                        "{task}: {error}; retry {attempts} of {} in {delay:.1?}",
                        config.retries
                    );
                    let not_before_ms = now_ms() + delay.as_millis() as u64;
                    match task {
                        Task::Page(page) => settles.push(Settle::Retry {
                            page,
                            attempts,
                            not_before_ms,
                            error: error.to_string(),
                        }),
                        Task::Detail(id) => details.commit.settled.push(DetailSettle::Retry {
                            id,
                            task: DetailTask {
                                url: where_.clone(),
                                attempts,
                                not_before_ms,
                                last_error: error.to_string(),
                            },
                        }),
                    }
                    notices.push(Settled::Retry {
                        task,
                        attempts,
                        not_before: Instant::now() + delay,
                    });
                    tally.retried += 1;
                } else {
                    let detail = failure_detail(&error, &where_, attempts);
                    log::warn!("{task} failed: {detail}");
                    match task {
                        Task::Page(page) => settles.push(Settle::Failed {
                            page,
                            attempts,
                            kind: error.kind(),
                            detail,
                        }),
                        Task::Detail(id) => {
                            let failed = DetailFailed {
                                url: where_,
                                attempts,
                                at_ms: 0,
                                kind: error.kind(),
                                detail,
                            };
                            if let Some(table) = &config.detail {
                                details.failed(output, table, id, &failed)?;
                            }
                            details
                                .commit
                                .settled
                                .push(DetailSettle::Failed { id, failed });
                        }
                    }
                    notices.push(Settled::Finished(task));
                    tally.failed += 1;
                }
            }
            Parsed::Abandoned => {}
        }
    }
    // Also when nothing was appended in this group: the CSV header written
    // at the start counts in the committed length too.
    output.sync()?;
    let empty_run = config.pages.is_open().then_some(config.stop_after_empty);
    let detail_commit = details.finish();
    let from_details = detail_commit.items_written;
    store.commit_known(
        &settles,
        &pending,
        detail_commit,
        (output.len(), output.fingerprint()),
        empty_run,
    )?;
    store.flush()?;
    fault_injection::after_commit();
    log::debug!(
        "committed {} tasks ({} pages done, {} detail pages done, {} failed, {} to retry), {} items; output at {} bytes",
        tasks_in_group.len(),
        tally.done,
        tally.details_done,
        tally.failed,
        tally.retried,
        tally.written + from_details,
        output.len()
    );
    let progress = &shared.progress;
    progress.done.fetch_add(tally.done, Ordering::Relaxed);
    progress
        .details_done
        .fetch_add(tally.details_done, Ordering::Relaxed);
    progress.failed.fetch_add(tally.failed, Ordering::Relaxed);
    progress.retries.fetch_add(tally.retried, Ordering::Relaxed);
    progress
        .items
        .fetch_add(tally.written + from_details, Ordering::Relaxed);
    progress
        .duplicates
        .fetch_add(tally.duplicates, Ordering::Relaxed);
    for notice in notices {
        // The feeder may already have stopped; then nobody needs to know.
        // Full cannot happen (the channel holds every task in flight).
        if let Err(TrySendError::Full(notice)) = settled.try_send(notice) {
            log::error!("internal error: the feeder's channel is full; {notice:?} is lost");
        }
    }
    Ok(())
}

/// Counts of one commit group, for the progress counters and the log.
#[derive(Debug, Default)]
struct Tally {
    done: u64,
    details_done: u64,
    failed: u64,
    retried: u64,
    written: u64,
    duplicates: u64,
}

/// Items a listing page took: with a key, those whose key was new; without
/// one, all of them.
fn keys_taken(config: &crate::config::Config, extracted: u32, keys: &[String]) -> u64 {
    if config.key.is_some() {
        keys.len() as u64
    } else {
        u64::from(extracted)
    }
}

/// Where a detail URL stands within the group being built.
#[derive(Debug, Clone)]
enum Known {
    Pending,
    Done(DetailValues),
    /// Done in this group: its values are in the group's settled list
    /// (not copied here: most detail pages have one item).
    DoneHere,
    Failed(String),
}

/// The detail stage's part of one commit group: what its detail pages
/// gave, the new detail pages its listing pages link to, and the items
/// written or left waiting (see `store::detail`).
struct Details<'a> {
    store: &'a Store,
    format: crate::output::Format,
    fields: Vec<String>,
    /// The listing's own host: detail links elsewhere need `[detail] hosts`.
    listing: Option<Origin>,
    commit: DetailCommit,
    /// Detail pages settled or created in this group, by number and URL.
    by_id: HashMap<u64, Known>,
    by_url: HashMap<String, u64>,
    /// The items waiting for each detail page settled in this group, as
    /// read when its result was found to be new.
    waiting: HashMap<u64, Vec<WaitingItem>>,
    buffer: Vec<u8>,
}

impl<'a> Details<'a> {
    fn new(store: &'a Store, config: &crate::config::Config) -> Details<'a> {
        Details {
            store,
            format: config.format,
            fields: config.fields.clone(),
            listing: Origin::of(&config.url),
            commit: DetailCommit {
                next_id: store.counters().detail_next,
                ..DetailCommit::default()
            },
            by_id: HashMap::new(),
            by_url: HashMap::new(),
            waiting: HashMap::new(),
            buffer: Vec::new(),
        }
    }

    fn finish(self) -> DetailCommit {
        self.commit
    }

    fn write(
        &mut self,
        output: &mut OutputFile,
        detail: &Detail,
        page: u64,
        values: &[String],
        merge: Merge<'_>,
    ) -> Result<()> {
        self.buffer.clear();
        render_merged(
            &mut self.buffer,
            self.format,
            page,
            &self.fields,
            values,
            detail,
            merge,
        );
        output.append(&self.buffer)
    }

    /// A detail page came in: its waiting items are written.
    #[allow(clippy::too_many_arguments)]
    fn done(
        &mut self,
        output: &mut OutputFile,
        detail: &Detail,
        id: u64,
        attempts: u32,
        bytes: u64,
        url: &str,
        values: DetailValues,
    ) -> Result<()> {
        self.write_waiting(output, detail, id, Merge::Values(&values))?;
        self.by_id.insert(id, Known::DoneHere);
        self.commit.settled.push(DetailSettle::Done {
            id,
            done: DetailDone {
                url: url.to_string(),
                attempts,
                at_ms: 0,
                bytes,
                values,
            },
        });
        Ok(())
    }

    /// A detail page failed for good: with `on_failure = "write"`, its
    /// waiting items are written with the reason.
    fn failed(
        &mut self,
        output: &mut OutputFile,
        detail: &Detail,
        id: u64,
        failed: &DetailFailed,
    ) -> Result<()> {
        self.by_id.insert(id, Known::Failed(failed.detail.clone()));
        if detail.on_failure != OnFailure::Write {
            return Ok(());
        }
        self.write_waiting(output, detail, id, Merge::Failed(&failed.detail))
    }

    /// Writes the items waiting for detail page `id`, each merged with
    /// `merge`, and records them written.
    fn write_waiting(
        &mut self,
        output: &mut OutputFile,
        detail: &Detail,
        id: u64,
        merge: Merge<'_>,
    ) -> Result<()> {
        for item in self.waiting.remove(&id).unwrap_or_default() {
            self.write(output, detail, item.page, &item.values, merge)?;
            self.commit
                .waiting_written
                .push((id, item.page, item.index));
            self.commit.items_written += 1;
        }
        Ok(())
    }

    /// One item of a listing page: written now when its detail page is in
    /// (or failed, with `on_failure = "write"`), else left waiting, its
    /// detail page queued if it is new. Returns whether it was written.
    fn item(
        &mut self,
        output: &mut OutputFile,
        detail: &Detail,
        page: u64,
        index: u32,
        values: Vec<String>,
    ) -> Result<bool> {
        let link = values.get(detail.link).cloned().unwrap_or_default();
        let (id, known) = self.lookup(detail, &link)?;
        match known {
            Known::Done(got) => {
                self.write(output, detail, page, &values, Merge::Values(&got))?;
                Ok(true)
            }
            Known::Failed(reason) if detail.on_failure == OnFailure::Write => {
                self.write(output, detail, page, &values, Merge::Failed(&reason))?;
                Ok(true)
            }
            // (`DoneHere` is resolved by `lookup`.)
            Known::Failed(_) | Known::Pending | Known::DoneHere => {
                self.commit.waiting_added.push(WaitingItem {
                    detail: id,
                    page,
                    index,
                    values,
                });
                Ok(false)
            }
        }
    }

    /// What this group knows of detail page `id` (which it settled or
    /// created), with the values of one done here.
    fn known_here(&self, id: u64) -> Known {
        match &self.by_id[&id] {
            Known::DoneHere => self
                .commit
                .settled
                .iter()
                .find_map(|settle| match settle {
                    DetailSettle::Done {
                        id: done,
                        done: got,
                    } if *done == id => Some(Known::Done(got.values.clone())),
                    _ => None,
                })
                .unwrap_or(Known::Pending),
            known => known.clone(),
        }
    }

    /// The number and standing of the detail page at `link`, queuing it
    /// (or refusing it: another host, no link) when it is new.
    fn lookup(&mut self, detail: &Detail, link: &str) -> Result<(u64, Known)> {
        if let Some(&id) = self.by_url.get(link) {
            return Ok((id, self.known_here(id)));
        }
        if let Some((id, state)) = self.store.detail_by_url(link)? {
            let known = match self.by_id.contains_key(&id) {
                true => self.known_here(id),
                false => match state {
                    DetailState::Pending(_) => Known::Pending,
                    DetailState::Done(done) => Known::Done(done.values),
                    DetailState::Failed(failed) => Known::Failed(failed.detail),
                },
            };
            return Ok((id, known));
        }
        let id = self.commit.next_id;
        self.commit.next_id += 1;
        let refusal = if link.is_empty() {
            Some(("no link", "the item's link field is empty".to_string()))
        } else if !self
            .listing
            .as_ref()
            .is_some_and(|origin| origin.holds(link))
            && !other_host_allowed(detail, link)
        {
            Some((
                "other host",
                format!(
                    "the detail link {link} is on another host; list the host in [detail] hosts to follow it"
                ),
            ))
        } else {
            None
        };
        let known = match refusal {
            Some((kind, why)) => {
                log::warn!("detail page {id} not fetched: {why}");
                self.commit.refused.push((
                    id,
                    DetailFailed {
                        url: link.to_string(),
                        attempts: 0,
                        at_ms: now_ms(),
                        kind: kind.to_string(),
                        detail: why.clone(),
                    },
                ));
                Known::Failed(why)
            }
            None => {
                self.commit.created.push((id, link.to_string()));
                Known::Pending
            }
        };
        self.by_url.insert(link.to_string(), id);
        self.by_id.insert(id, known.clone());
        Ok((id, known))
    }
}

/// Whether `link` is on a host `[detail] hosts` lists (over http or https).
fn other_host_allowed(detail: &Detail, link: &str) -> bool {
    url::Url::parse(link).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some_and(|host| detail.allows_host(host))
    })
}

/// Rotation: a new output file at the same path, once the old one was
/// moved aside. Returns whether a new file was started.
fn reopen(store: &Store, output: &mut OutputFile, shared: &Shared) -> Result<bool> {
    let config = shared.config();
    let header =
        (config.format == crate::output::Format::Csv).then(|| csv_header(&config.columns()));
    let old_len = output.len();
    if !output.reopen(header.as_deref())? {
        log::info!(
            "reopen: {} was not moved aside; still writing to it",
            output.path().display()
        );
        return Ok(false);
    }
    store.record_output(output.fingerprint(), output.len())?;
    store.flush()?;
    log::info!(
        "reopen: started a new {}; the file moved aside holds the {old_len} bytes before it",
        output.path().display()
    );
    Ok(true)
}

/// A hook for the durability test: with `PAGECRAWL_FAULT_ABORT_AFTER_COMMITS=N`
/// set, the process aborts (no destructors, no flush: as abrupt as
/// `kill -9`) right after its Nth durable commit. Unset, it costs one
/// relaxed atomic load per commit group.
mod fault_injection {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static COMMITS: AtomicU64 = AtomicU64::new(0);

    pub fn after_commit() {
        let limit = LIMIT.get_or_init(|| {
            std::env::var("PAGECRAWL_FAULT_ABORT_AFTER_COMMITS")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(limit) = limit {
            if COMMITS.fetch_add(1, Ordering::Relaxed) + 1 >= *limit {
                std::process::abort();
            }
        }
    }
}

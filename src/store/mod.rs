//! The crawl's queue and checkpoint in sled: pending, done and failed pages,
//! failure-reason counts, counters and the job's identity, all in one tree
//! (see `keys` for why) and changed only through atomic batches.
//!
//! Every mutation takes the store's lock, reads the in-memory counters,
//! builds one batch holding both the page changes and the new counters, and
//! applies it; so the counters always equal a recount of the keyspaces, even
//! after `kill -9` (the `recount` test helper checks exactly that).

mod commit;
pub mod detail;
mod follow;
pub mod keys;
mod open_end;
pub mod postgres;
mod ranges;
pub mod records;
mod repair;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::UserError;
use crate::range::PageRange;
use crate::util::now_ms;
pub use detail::{DetailCommit, DetailSettle, DetailState, DetailValues};
use keys::{named_key, page_key, page_of, DONE, FAILED, ITEM_KEY, META, PENDING, REASON};
pub use open_end::PastEnd;
pub use records::{Counters, Done, Failed, Fingerprint, OutputIdentity, Pending};
pub use repair::{Rebuild, Rebuilt};

/// Bumped when the on-disk layout changes incompatibly.
pub const SCHEMA_VERSION: u64 = 2;
/// sled's page cache. Deliberately small: the queue is streamed, never
/// loaded, and a crawler should not grow with its queue.
const CACHE_BYTES: u64 = 16 << 20;

const COUNTERS_KEY: &str = "counters";
const JOB_KEY: &str = "job";
const SCHEMA_KEY: &str = "schema";
/// Set when the output was found changed behind the crawl; cleared by
/// `repair` (or `reopen`). Its value says what was found.
const DAMAGED_KEY: &str = "damaged";

/// What makes a state directory belong to one job. Running a different job
/// against it is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub url: String,
    pub pages: String,
    pub pattern: String,
    pub format: String,
    pub fields: Vec<String>,
    /// The field that identifies an item (absent in state written before
    /// keys existed).
    #[serde(default)]
    pub key: Option<String>,
    /// The output file, as an absolute path.
    pub output: PathBuf,
    /// The `[detail]` table as canonical JSON (absent without one, and in
    /// state written before detail pages existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A page's state, as `queue` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageState {
    Pending(Pending),
    Done(Done),
    Failed(Failed),
}

/// Which pages `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Pending,
    Done,
    Failed,
}

impl StateFilter {
    fn prefix(self) -> u8 {
        match self {
            StateFilter::Pending => PENDING,
            StateFilter::Done => DONE,
            StateFilter::Failed => FAILED,
        }
    }
}

/// How a page is pending (see [`Store::pending_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingAs {
    Keyed,
    InRange,
}

/// One settled page, as the commit stage records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// `items` of its `extracted` items were appended to the output (the
    /// rest had keys already written); `keys` are the keys written.
    Done {
        page: u64,
        attempts: u32,
        items: u32,
        extracted: u32,
        bytes: u64,
        keys: Vec<String>,
    },
    /// It failed but has retries left; fetch again after `not_before_ms`.
    Retry {
        page: u64,
        attempts: u32,
        not_before_ms: u64,
        error: String,
    },
    /// It failed for good.
    Failed {
        page: u64,
        attempts: u32,
        kind: String,
        detail: String,
    },
}

impl Settle {
    pub fn page(&self) -> u64 {
        match self {
            Settle::Done { page, .. }
            | Settle::Retry { page, .. }
            | Settle::Failed { page, .. } => *page,
        }
    }
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueReport {
    pub added: u64,
    /// Done or failed pages put back to be crawled again.
    pub requeued: u64,
    pub already_pending: u64,
}

/// An open crawl state directory.
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    counters: Mutex<Counters>,
    /// The counters as of the last batch made durable (see
    /// [`Store::committed_counters`]). Boxed like `durable`.
    committed: Box<Mutex<Counters>>,
    /// What makes a flush durable: sled's log file, and the names in the
    /// database's folder as last made durable (see [`Store::flush`]).
    /// Boxed: the store travels by value in `control::Backend`.
    durable: Box<Mutex<Durability>>,
}

/// sled 0.34's `flush` ends in `sync_file_range`, which neither flushes
/// the disk's cache nor the file's size; its own `fsync` comes only every
/// 500 ms (spacejam/sled#1452). So after each flush the log file is
/// `fdatasync`ed, and the folder too when sled added or removed a file in
/// it; and once when the database is opened (see `sync_opened`).
struct Durability {
    /// sled's log file, `queue.sled/db`.
    log: std::fs::File,
    /// The names in the database's folder as last made durable.
    names: Vec<std::ffi::OsString>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// The sled database inside a state directory.
fn db_path(dir: &Path) -> PathBuf {
    dir.join("queue.sled")
}

/// The file where a running `run` leaves its pid, for "busy" messages.
pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("run.pid")
}

/// True if `dir` holds a crawl state.
pub fn exists(dir: &Path) -> bool {
    db_path(dir).join("conf").exists() || db_path(dir).join("db").exists()
}

impl Store {
    /// Opens (creating if needed) the state in `dir`, which is created with
    /// owner-only permissions.
    pub fn open(dir: &Path) -> Result<Store> {
        create_private_dir(dir)?;
        Store::open_db(dir)
    }

    /// Opens the state in `dir`, which must already hold one (for the
    /// inspection commands, which must not create state by accident).
    pub fn open_existing(dir: &Path) -> Result<Store> {
        refuse_untrusted(dir)?;
        if !exists(dir) {
            return Err(UserError::Usage(format!(
                "no crawl state in {} (start one with `pagecrawl run --config FILE`, or pass the right --state-dir)",
                dir.display()
            ))
            .into());
        }
        Store::open_db(dir)
    }

    fn open_db(dir: &Path) -> Result<Store> {
        let path = db_path(dir);
        // The names of a database that was there before this open were
        // made durable by the process that opened it last (right after
        // its open, below); what sled creates or removes while it opens
        // is compared with them.
        let names_before = if path.join("db").exists() {
            list_names(&path)?
        } else {
            Vec::new()
        };
        let config = sled::Config::new().path(&path).cache_capacity(CACHE_BYTES);
        // sled panics on some corrupt files instead of returning an error;
        // that must reach the user as a message, not a backtrace.
        let mut opened = crate::util::quietly(|| config.open());
        if matches!(&opened, Ok(Err(sled::Error::Corruption { .. })))
            && remove_unfinished_snapshots(&path)
        {
            opened = crate::util::quietly(|| config.open());
        }
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_error(dir, e)),
            Err(panic) => {
                return Err(anyhow::anyhow!(
                    "the state database in {} is corrupt ({panic}); move the folder aside and start afresh",
                    dir.display()
                ))
            }
        };
        let durable = sync_opened(dir, &path, names_before)?;
        let tree = db
            .open_tree("queue")
            .with_context(|| format!("cannot open the queue in {}", dir.display()))?;
        let schema = tree
            .get(named_key(META, SCHEMA_KEY))?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default()));
        match schema {
            // A fresh database gets its version with its job (`set_job`).
            None | Some(SCHEMA_VERSION) => {}
            // Version 1 kept detail pages a key per state (moved below).
            Some(1) => {}
            Some(other) => {
                return Err(UserError::Usage(format!(
                    "the state in {} has layout version {other}, this pagecrawl reads version {SCHEMA_VERSION}; \
                     use the pagecrawl that wrote it, or start afresh with a new --state-dir",
                    dir.display()
                ))
                .into())
            }
        }
        let counters = tree
            .get(named_key(META, COUNTERS_KEY))?
            .map(|v| Counters::decode(&v))
            .unwrap_or_default();
        let store = Store {
            dir: dir.to_path_buf(),
            db,
            tree,
            counters: Mutex::new(counters),
            // Read after `sync_opened`: durable.
            committed: Box::new(Mutex::new(counters)),
            durable: Box::new(Mutex::new(durable)),
        };
        if schema == Some(1) {
            store.migrate_v1().with_context(|| {
                format!(
                    "cannot move the state in {} to layout version {SCHEMA_VERSION}",
                    dir.display()
                )
            })?;
            store.flush()?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Counters> {
        // A panic while holding the lock cannot leave a half-applied batch
        // (batches are atomic), so the counters inside are still right.
        self.counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The counters as of the last batch applied, durable or not: for the
    /// stages that write the state.
    pub fn counters(&self) -> Counters {
        *self.lock()
    }

    /// The counters as of the last batch made durable (by a flush, or
    /// already on disk when the state was opened): what `status`, the
    /// metrics and `export` report, so that nothing they call done can
    /// come back pending after a power loss. A group applied but still
    /// being flushed is not in them yet.
    pub fn committed_counters(&self) -> Counters {
        *self
            .committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The job this state belongs to, if one was recorded.
    pub fn job(&self) -> Result<Option<Job>> {
        let Some(bytes) = self.tree.get(named_key(META, JOB_KEY))? else {
            return Ok(None);
        };
        let job = serde_json::from_slice(&bytes)
            .with_context(|| format!("the job record in {} is unreadable", self.dir.display()))?;
        Ok(Some(job))
    }

    /// Records the job (first run only) and queues its range: a closed
    /// range as one lazy range (O(1), see `ranges`), an open one by
    /// setting the frontier the feeder extends from. One batch: the layout
    /// version, the job, its pages and the counters stand or fall together,
    /// so no state can hold a job without its pages.
    pub fn set_job(&self, job: &Job, range: &PageRange, output: Fingerprint) -> Result<()> {
        let mut counters = self.lock();
        let mut next = *counters;
        let mut batch = sled::Batch::default();
        next.frontier = range.start();
        if let PageRange::Closed { start, end } = *range {
            next.pending += self.plan_lazy(&mut batch, &[(start, end)])?;
        }
        next.output_fingerprint = output.0;
        batch.insert(named_key(META, SCHEMA_KEY), &SCHEMA_VERSION.to_be_bytes());
        batch.insert(named_key(META, JOB_KEY), serde_json::to_vec(job)?);
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        self.tree.apply_batch(batch)?;
        *counters = next;
        Ok(())
    }

    /// What was found wrong with the output, if it was found changed
    /// behind the crawl and not repaired since.
    pub fn damaged(&self) -> Result<Option<String>> {
        Ok(self
            .tree
            .get(named_key(META, DAMAGED_KEY))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records (durably) that the output was found changed behind the
    /// crawl, so that `status` says so and `run` waits for `repair`.
    pub fn set_damaged(&self, why: &str) -> Result<()> {
        self.tree
            .insert(named_key(META, DAMAGED_KEY), why.as_bytes())?;
        self.flush()
    }

    /// Records a new output file (after a rotation): the checkpoint now
    /// covers `committed` bytes ending in `fingerprint`. One batch.
    pub fn record_output(&self, fingerprint: Fingerprint, committed: u64) -> Result<()> {
        let mut counters = self.lock();
        let mut next = *counters;
        next.output_fingerprint = fingerprint.0;
        next.output_len = committed;
        let mut batch = sled::Batch::default();
        batch.insert(named_key(META, COUNTERS_KEY), next.encode());
        batch.remove(named_key(META, DAMAGED_KEY));
        self.tree.apply_batch(batch)?;
        *counters = next;
        Ok(())
    }

    /// Pages that failed for good, less those that only mark where an open
    /// range ends (a 404 or 410 at or past the end found): what a
    /// finished crawl reports as failures.
    pub fn real_failures(&self) -> Result<u64> {
        let counters = self.counters();
        let Some(end) = counters.open_end() else {
            return Ok(counters.failed);
        };
        let mut markers = 0;
        for entry in self
            .tree
            .range(page_key(FAILED, end)..=page_key(FAILED, u64::MAX))
        {
            let (_, value) = entry?;
            if is_end_marker(&Failed::decode(&value).kind) {
                markers += 1;
            }
        }
        Ok(counters.failed.saturating_sub(markers))
    }

    /// Test help: makes this state what a power loss between the two
    /// batches of older pagecrawls' job creation left (the job and its
    /// counters' frontier, no page in any state, no item keys).
    #[cfg(test)]
    pub(crate) fn forget_pages(&self) {
        for prefix in [PENDING, DONE, FAILED, keys::LAZY, ITEM_KEY, REASON] {
            for key in self.tree.scan_prefix([prefix]).keys() {
                self.tree.remove(key.unwrap()).unwrap();
            }
        }
        let mut counters = self.lock();
        *counters = Counters {
            frontier: counters.frontier,
            ..Counters::default()
        };
        self.tree
            .insert(named_key(META, COUNTERS_KEY), counters.encode())
            .unwrap();
    }

    /// Whether this state holds a job whose closed range has no page in
    /// any state: what a power loss between the two batches of older
    /// pagecrawls' job creation left. Such a state is not finished; it
    /// lost its queue.
    pub fn lost_its_pages(&self) -> Result<bool> {
        let Some(job) = self.job()? else {
            return Ok(false);
        };
        let closed = matches!(
            crate::range::parse_range(&job.pages),
            Ok(PageRange::Closed { .. })
        );
        let counters = self.counters();
        Ok(closed
            && counters.pending + counters.done + counters.failed == 0
            && self.tree.scan_prefix([keys::LAZY]).next().is_none())
    }

    /// The state of one page, if it is known.
    pub fn state_of(&self, page: u64) -> Result<Option<PageState>> {
        if let Some(v) = self.tree.get(page_key(PENDING, page))? {
            return Ok(Some(PageState::Pending(Pending::decode(&v))));
        }
        if let Some(v) = self.tree.get(page_key(DONE, page))? {
            return Ok(Some(PageState::Done(Done::decode(&v))));
        }
        if let Some(v) = self.tree.get(page_key(FAILED, page))? {
            return Ok(Some(PageState::Failed(Failed::decode(&v))));
        }
        Ok(None)
    }

    /// Up to `limit` pending pages after `after` (from the start if `None`),
    /// in page order.
    pub fn pending_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Pending)>> {
        let from = match after {
            Some(page) if page == u64::MAX => return Ok(Vec::new()),
            Some(page) => page_key(PENDING, page + 1),
            None => page_key(PENDING, 0),
        };
        let mut pages = Vec::with_capacity(limit);
        for entry in self
            .tree
            .range(from..=page_key(PENDING, u64::MAX))
            .take(limit)
        {
            let (key, value) = entry?;
            if let Some(page) = page_of(&key) {
                pages.push((page, Pending::decode(&value)));
            }
        }
        Ok(pages)
    }

    /// Whether an item with this key was already written.
    pub fn has_item_key(&self, key: &str) -> Result<bool> {
        Ok(self.tree.contains_key(named_key(ITEM_KEY, key))?)
    }

    /// Failure reasons with their page counts, most common first.
    pub fn reasons(&self) -> Result<Vec<(String, u64)>> {
        let mut reasons = Vec::new();
        for entry in self.tree.scan_prefix([REASON]) {
            let (key, value) = entry?;
            let count = u64::from_be_bytes(value.as_ref().try_into().unwrap_or_default());
            reasons.push((String::from_utf8_lossy(&key[1..]).into_owned(), count));
        }
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(reasons)
    }

    /// Up to `limit` pages in one state, in page order (pending pages of
    /// lazy ranges included).
    pub fn list(&self, filter: StateFilter, limit: usize) -> Result<Vec<(u64, PageState)>> {
        self.list_after(filter, None, limit)
    }

    /// Up to `limit` pages in one state after `after` (from the start if
    /// `None`), in page order; pending pages include those in lazy ranges.
    /// A caller lists a long queue a batch at a time from the last page seen.
    pub fn list_after(
        &self,
        filter: StateFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, PageState)>> {
        let first = match after {
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(page) => page + 1,
            None => 0,
        };
        let mut rows = self.list_keyed(filter, first, limit)?;
        if filter == StateFilter::Pending {
            let lazy = self.lazy_after(after, limit)?;
            rows.extend(
                lazy.into_iter()
                    .map(|page| (page, PageState::Pending(Pending::default()))),
            );
            rows.sort_by_key(|(page, _)| *page);
            rows.truncate(limit);
        }
        Ok(rows)
    }

    fn list_keyed(
        &self,
        filter: StateFilter,
        first: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PageState)>> {
        let mut rows = Vec::new();
        let keys = page_key(filter.prefix(), first)..=page_key(filter.prefix(), u64::MAX);
        for entry in self.tree.range(keys).take(limit) {
            let (key, value) = entry?;
            let Some(page) = page_of(&key) else { continue };
            let state = match filter {
                StateFilter::Pending => PageState::Pending(Pending::decode(&value)),
                StateFilter::Done => PageState::Done(Done::decode(&value)),
                StateFilter::Failed => PageState::Failed(Failed::decode(&value)),
            };
            rows.push((page, state));
        }
        Ok(rows)
    }

    /// Marks the start of a run, for the rate `status` reports, and
    /// records the output's fingerprint when older state did not.
    pub fn start_run(&self, output: Fingerprint) -> Result<()> {
        let mut counters = self.lock();
        let mut next = *counters;
        if next.output_fingerprint().is_unknown() {
            next.output_fingerprint = output.0;
        }
        next.run_started_ms = now_ms();
        // Both stages: the rate is of pages fetched, listing or detail.
        next.run_done_base = next.tasks_done();
        self.tree
            .insert(named_key(META, COUNTERS_KEY), next.encode())?;
        *counters = next;
        Ok(())
    }

    /// Counts the page keyspaces from scratch (slow; for checks and tests).
    /// The other fields are copied from the stored counters.
    pub fn recount(&self) -> Result<Counters> {
        let mut counted = self.counters();
        counted.pending = self.tree.scan_prefix([PENDING]).count() as u64 + self.count_lazy()?;
        counted.done = self.tree.scan_prefix([DONE]).count() as u64;
        counted.failed = self.tree.scan_prefix([FAILED]).count() as u64;
        (
            counted.detail_pending,
            counted.detail_done,
            counted.detail_failed,
            counted.waiting,
        ) = self.recount_details()?;
        Ok(counted)
    }

    /// Makes every applied batch durable, across a power loss too: sled's
    /// flush, then an `fdatasync` of its log, then (when its list of files
    /// changed) an `fsync` of its folder and of the state directory; only
    /// then do the batches it covers count in [`Store::committed_counters`].
    pub fn flush(&self) -> Result<()> {
        let path = db_path(&self.dir);
        let mut durable = self
            .durable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Every batch these counters include was applied before sled's
        // flush below, which therefore covers it.
        let covered = self.counters();
        // Names first: a file sled made since the last flush must be
        // durable before the log that may refer to it is.
        sync_names(&self.dir, &path, &mut durable)?;
        self.db.flush().map_err(|e| {
            anyhow::anyhow!(
                "cannot flush the state database: {}",
                crate::util::sled_reason(&e)
            )
        })?;
        durable
            .log
            .sync_data()
            .with_context(|| format!("cannot sync the state database in {}", path.display()))?;
        // And the names sled created or removed since (a blob file).
        sync_names(&self.dir, &path, &mut durable)?;
        *self
            .committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = covered;
        Ok(())
    }
}

/// Makes what sled did while opening the database durable at once, and
/// what this command is about to read from it.
///
/// sled 0.34 writes its snapshots only while it opens a database (nowhere
/// else: `snapshot_after_ops` does nothing in 0.34): when the log ran
/// ahead of the last snapshot, it writes `snap.N`, renames it into place,
/// removes the older one, then zeroes the log segments that only the
/// older one needed (and may sync the log before `open` returns). Every
/// command opens the state that way, `status` included, and most never
/// flush: if the new names waited for a flush, a power loss would bring
/// back the older snapshot (the power-loss test saw that in every round)
/// beside a log that may no longer hold what it needs. The log is synced too (the
/// last process may have been killed before its own sync), and `conf`,
/// which sled writes but never syncs: what a command reads and reports
/// now is what a power loss keeps.
fn sync_opened(
    dir: &Path,
    path: &Path,
    names_before: Vec<std::ffi::OsString>,
) -> Result<Durability> {
    let log_path = path.join("db");
    let log = std::fs::File::open(&log_path)
        .with_context(|| format!("cannot open {} to sync it", log_path.display()))?;
    // A new `conf` is synced with the other new files.
    let old_conf = names_before.iter().any(|name| name == "conf");
    let mut durable = Durability {
        log,
        names: names_before,
    };
    sync_names(dir, path, &mut durable)?;
    if old_conf {
        let conf = path.join("conf");
        std::fs::File::open(&conf)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync {}", conf.display()))?;
    }
    durable
        .log
        .sync_data()
        .with_context(|| format!("cannot sync the state database in {}", path.display()))?;
    Ok(durable)
}

/// Syncs the files new in the database's folder (`path`, in the state
/// directory `dir`) since the last call, then the folder (and, the first
/// time, the state directory).
fn sync_names(dir: &Path, path: &Path, durable: &mut Durability) -> Result<()> {
    let names = list_names(path)?;
    if names != durable.names {
        // New files first (sled never syncs its `conf`; a snapshot is
        // synced by sled, once more costs little), then their names.
        for name in names.iter().filter(|name| !durable.names.contains(name)) {
            let file = path.join(name);
            if file.is_file() {
                std::fs::File::open(&file)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("cannot sync {}", file.display()))?;
            }
        }
        crate::util::sync_dir(path)?;
        if durable.names.is_empty() {
            // The database's folder itself is new in the state directory.
            crate::util::sync_dir(dir)?;
        }
        durable.names = names;
    }
    Ok(())
}

/// A failure that, in an open range, counts like an empty page: the site
/// saying there is no such page.
fn is_end_marker(kind: &str) -> bool {
    kind == "HTTP 404" || kind == "HTTP 410"
}

/// Creates `dir` (and parents) with mode 0700, and checks it is a folder.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() && !dir.is_dir() {
        return Err(UserError::Usage(format!(
            "the state directory {} is a file, not a folder",
            dir.display()
        ))
        .into());
    }
    refuse_untrusted(dir)?;
    let created = !dir.exists();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create the state directory {}: {}",
                dir.display(),
                crate::util::io_reason(&e)
            )
        })?;
    if created {
        // Its name must survive a power loss as its contents do.
        crate::util::sync_parent(dir)?;
    }
    Ok(())
}

/// The names in a folder, sorted.
fn list_names(path: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.file_name()))
        .collect();
    names.sort();
    Ok(names)
}

/// sled writes a snapshot as `snap.N.generating`, syncs it and renames it
/// `snap.N`; but when it opens, it reads the highest `snap.*` file,
/// `.generating` ones included. One left by a full disk or a crash is
/// incomplete, and sled then refuses the whole database as corrupt
/// ("Read corrupted data"). It is never the only copy of anything (the
/// previous snapshot and the log are still there), so it is removed, and
/// the database opened again. Only under sled's own lock on its log file:
/// a running crawl may be writing a snapshot right now. Returns whether
/// one was removed.
fn remove_unfinished_snapshots(db: &Path) -> bool {
    let Ok(log) = std::fs::File::open(db.join("db")) else {
        return false;
    };
    // sled takes this lock (flock, exclusive) for as long as it has the
    // database open; held by another process, it is not ours to touch.
    if rustix::fs::flock(&log, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(db) else {
        return false;
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    removed = true;
                    log::info!(
                    "removed {}, an unfinished snapshot of the state database (a full disk or a crash cut it short)",
                    entry.path().display()
                    )
                }
                Err(e) => log::debug!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
    // Dropping the file releases the lock before sled takes it.
    drop(log);
    removed
}

/// Refuses a state directory that another user owns or may write in.
fn refuse_untrusted(dir: &Path) -> Result<()> {
    match crate::util::untrusted_dir(dir, false) {
        Some(why) => Err(UserError::Usage(format!("the state directory {why}")).into()),
        None => Ok(()),
    }
}

/// Turns sled's open errors into messages a user can act on.
fn open_error(dir: &Path, error: sled::Error) -> anyhow::Error {
    let text = error.to_string();
    if text.contains("could not acquire lock") {
        let holder = std::fs::read_to_string(pid_path(dir))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .map(|pid| format!(" (pid {pid})"))
            .unwrap_or_default();
        return UserError::Busy(format!(
            "the state directory {} is in use by a running pagecrawl{holder}; wait for it or stop it first",
            dir.display()
        ))
        .into();
    }
    if let sled::Error::Io(io) = &error {
        let hint = if io.raw_os_error() == Some(libc::EROFS) {
            " (sled writes to open its database, even to read it: copy the folder to writable storage to inspect it there)"
        } else {
            ""
        };
        return anyhow::anyhow!(
            "cannot open the state in {}: {}{hint}",
            dir.display(),
            crate::util::io_reason(io)
        );
    }
    anyhow::anyhow!(
        "the state database in {} cannot be read ({text}); the items written so far are safe in the output file: \
         keep this folder aside for a report (mv {0} {0}.corrupt) and start afresh with the output moved aside too",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(start: u64, end: u64) -> PageRange {
        PageRange::Closed { start, end }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        (dir, store)
    }

    /// Opens again, in this process, a state a test's store held: sled's
    /// background threads may keep its lock a moment after that store is
    /// dropped (sled issue 1234; seen under CI's load), so a Busy refusal
    /// is waited out, up to 10 s. Any other error fails the test at once.
    pub fn once_released(open: impl Fn() -> Result<Store>) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Ok(store) => return store,
                Err(e)
                    if crate::error::exit_for(&e) == crate::exit_code::Exit::Busy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{e:#}"),
            }
        }
    }

    pub(super) fn job() -> Job {
        Job {
            url: "http://x/{page}".into(),
            pages: "1..=10".into(),
            pattern: "(?P<a>.)".into(),
            format: "jsonl".into(),
            fields: vec!["a".into()],
            key: None,
            output: "/tmp/o".into(),
            detail: None,
        }
    }

    #[test]
    fn commits_keep_counters_equal_to_a_recount() {
        let (_dir, store) = store();
        store
            .set_job(&job(), &closed(1, 10), Fingerprint::default())
            .unwrap();
        assert_eq!(store.counters().pending, 10);
        assert_eq!(store.lazy_after(None, 100).unwrap().len(), 10);
        let settled = [
            Settle::Done {
                page: 1,
                attempts: 1,
                items: 20,
                extracted: 20,
                bytes: 100,
                keys: vec![],
            },
            Settle::Retry {
                page: 2,
                attempts: 1,
                not_before_ms: 5,
                error: "HTTP 503".into(),
            },
            Settle::Failed {
                page: 3,
                attempts: 6,
                kind: "HTTP 500".into(),
                detail: "HTTP 500 at x".into(),
            },
        ];
        store.commit(&settled, 42, None).unwrap();
        let counters = store.counters();
        assert_eq!(
            (
                counters.pending,
                counters.done,
                counters.failed,
                counters.items
            ),
            (8, 1, 1, 20)
        );
        assert_eq!(counters.output_len, 42);
        assert_eq!(store.recount().unwrap(), counters);
        assert_eq!(store.reasons().unwrap(), vec![("HTTP 500".to_string(), 1)]);
        assert_eq!(
            store.pending_after(None, 2).unwrap()[0],
            (
                2,
                Pending {
                    attempts: 1,
                    not_before_ms: 5,
                    last_error: "HTTP 503".into()
                }
            )
        );

        let (moved, not_failed) = store.retry(Some(&[3, 4])).unwrap();
        assert_eq!((moved, not_failed), (1, vec![4]));
        assert!(store.reasons().unwrap().is_empty());
        let report = store.enqueue(&[closed(1, 1), closed(11, 12)]).unwrap();
        assert_eq!(
            report,
            EnqueueReport {
                added: 2,
                requeued: 1,
                already_pending: 0
            }
        );
        assert_eq!(store.recount().unwrap(), store.counters());
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        {
            let store = Store::open(&path).unwrap();
            store
                .set_job(&job(), &closed(5, 6), Fingerprint::default())
                .unwrap();
            store
                .commit(
                    &[Settle::Done {
                        page: 5,
                        attempts: 1,
                        items: 3,
                        extracted: 3,
                        bytes: 9,
                        keys: vec!["k1".into()],
                    }],
                    7,
                    None,
                )
                .unwrap();
            store.flush().unwrap();
        }
        let store = once_released(|| Store::open_existing(&path));
        assert_eq!(store.job().unwrap(), Some(job()));
        assert_eq!(
            (
                store.counters().done,
                store.counters().pending,
                store.counters().output_len
            ),
            (1, 1, 7)
        );
        assert_eq!(store.list(StateFilter::Done, 10).unwrap().len(), 1);
        assert!(store.has_item_key("k1").unwrap() && !store.has_item_key("k2").unwrap());
    }

    #[test]
    fn open_range_end_is_found_from_a_run_of_empty_pages() {
        let (_dir, store) = store();
        store
            .set_job(
                &job(),
                &PageRange::Open { start: 1 },
                Fingerprint::default(),
            )
            .unwrap();
        store.extend(10).unwrap();
        let done = |page, items| Settle::Done {
            page,
            attempts: 1,
            items,
            extracted: items,
            bytes: 1,
            keys: vec![],
        };
        store
            .commit(&[done(1, 5), done(4, 0), done(6, 0)], 0, Some(3))
            .unwrap();
        assert_eq!(store.counters().open_end(), None);
        let not_found = Settle::Failed {
            page: 5,
            attempts: 1,
            kind: "HTTP 404".into(),
            detail: String::new(),
        };
        store.commit(&[not_found], 0, Some(3)).unwrap();
        assert_eq!(store.counters().open_end(), Some(4));
    }

    #[test]
    fn a_second_open_is_refused_as_busy() {
        let (dir, _store) = store();
        let err = Store::open(&dir.path().join("state")).unwrap_err();
        assert_eq!(
            crate::error::exit_for(&err),
            crate::exit_code::Exit::Busy,
            "{err:#}"
        );
    }

    #[test]
    fn inspection_refuses_a_folder_without_state() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open_existing(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no crawl state"), "{err}");
    }
}

//! The PostgreSQL backend's feeder and commit stages: tasks are leased from
//! the job's table (fenced, see `store::postgres::lease`) instead of read
//! from sled, and a commit group is one transaction that writes the items
//! into `pagecrawl_items` with the tasks' states and the job's counters.
//! The fetch and parse stages between them are the embedded backend's.
//!
//! What this daemon leases it renews every third of the lease time while
//! it works; leases it still holds when it stops (tasks fetched but not
//! committed, tasks not fetched yet) are released, so another daemon (or
//! the next start) takes them at once instead of after the lease time.
//! Listing pages only so far: `run` refuses a `[detail]` job on a store.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender};
use serde_json::json;

use super::groups::{Groups, Step};
use super::{
    failure_detail, retry_delay, tried_again, Feed, Parsed, Record, Settled, Shared, Stages, Task,
    Work,
};
use crate::store::postgres::connect::{connect, StoreUrl};
use crate::store::postgres::export::item_json;
use crate::store::postgres::job::{self, DaemonId, JobId};
use crate::store::postgres::lease::{self, NewItem, Outcome, Settled as Settle, TaskId};
use crate::store::postgres::ops;

/// How long the feeder waits before asking again when nothing could be
/// leased (every task is leased by others, or waits for its retry time).
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// What both stages share: the job, this daemon, and the lease token of
/// each task it holds (the commit names it; the feeder renews it).
struct Leases {
    url: StoreUrl,
    job: JobId,
    daemon: DaemonId,
    lease_for: Duration,
    tokens: Mutex<HashMap<u64, i64>>,
}

impl Leases {
    fn token_of(&self, page: u64) -> Option<i64> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&page)
            .copied()
    }

    fn forget(&self, page: u64) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&page);
    }

    fn live_tokens(&self) -> Vec<i64> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let set: HashSet<i64> = tokens.values().copied().collect();
        set.into_iter().collect()
    }
}

/// The stages of a crawl of `job` in the store at `url`, as `daemon`.
pub(super) fn stages(url: StoreUrl, job: JobId, daemon: DaemonId, lease_for: Duration) -> Stages {
    let leases = Arc::new(Leases {
        url,
        job,
        daemon,
        lease_for,
        tokens: Mutex::new(HashMap::new()),
    });
    let for_commit = leases.clone();
    let feed: Feed =
        Box::new(move |work, settled, shared, window| feed(&leases, work, settled, shared, window));
    let record: Record =
        Box::new(move |parsed, settled, shared| commit(&for_commit, parsed, settled, shared));
    Stages {
        feed,
        record,
        values: true,
        limits: None,
    }
}

fn feed(
    leases: &Leases,
    work: Sender<Work>,
    settled: Receiver<Settled>,
    shared: &Shared,
    window: usize,
) -> Result<()> {
    let mut client = connect(&leases.url)?;
    listen_for_pause(&mut client, leases.job, shared)?;
    let mut state = FeedState {
        in_flight: HashSet::new(),
        renewed: Instant::now(),
        done_since: 0,
        beat: Instant::now(),
        fence_refused: false,
        unsent: std::collections::VecDeque::new(),
        pause_checked: Instant::now(),
    };
    loop {
        if shared.stopping() {
            return Ok(());
        }
        match feed_once(
            leases,
            &mut client,
            &mut state,
            &work,
            &settled,
            shared,
            window,
        ) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if client.is_closed() => {
                log::warn!(
                    "lost the connection to the store ({}); reconnecting",
                    crate::error::one_line(&e)
                );
                match reconnect(&leases.url, shared) {
                    Some(again) => client = again,
                    None => return Ok(()),
                }
                // A pause or a resume may have come while it was away.
                if let Err(e) = listen_for_pause(&mut client, leases.job, shared) {
                    log::debug!("cannot listen for pause yet: {e:#}");
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the feeder keeps between its rounds.
struct FeedState {
    in_flight: HashSet<u64>,
    renewed: Instant,
    done_since: u64,
    beat: Instant,
    /// Fencing a silent daemon was refused (said once).
    fence_refused: bool,
    /// Leased work not yet taken by a fetcher, in lease order.
    unsent: std::collections::VecDeque<Work>,
    /// When the job's pause flag was last read.
    pause_checked: Instant,
}

impl FeedState {
    /// The commit stage settled a task: it is no longer in flight nor
    /// leased by this daemon.
    fn take_in(&mut self, message: Settled, leases: &Leases) {
        let task = match message {
            Settled::Finished(task) | Settled::Retry { task, .. } => task,
        };
        if let Task::Page(page) = task {
            self.in_flight.remove(&page);
            leases.forget(page);
            self.done_since += 1;
        }
    }

    /// The lease `token` now holds only `held`: work of it not yet taken
    /// by a fetcher and no longer held (taken over while this daemon was
    /// frozen or cut off) is not fetched.
    fn drop_lost(&mut self, leases: &Leases, token: i64, held: &HashSet<i64>) {
        let mut lost = 0;
        let in_flight = &mut self.in_flight;
        self.unsent.retain(|work| {
            let Task::Page(page) = work.task else {
                return true;
            };
            let keep = leases.token_of(page) != Some(token) || held.contains(&(page as i64));
            if !keep {
                leases.forget(page);
                in_flight.remove(&page);
                lost += 1;
            }
            keep
        });
        if lost > 0 {
            log::warn!(
                "{lost} leased pages were taken over by another daemon before this one fetched them \
                 (their lease had expired): not fetched here"
            );
        }
    }

    /// Waits up to [`IDLE_WAIT`] for the commit stage's news.
    fn wait(&mut self, settled: &Receiver<Settled>, leases: &Leases) {
        if let Ok(message) = settled.recv_timeout(IDLE_WAIT) {
            self.take_in(message, leases);
        }
    }
}

/// One round of the feeder: the commit stage's news, lease renewals and
/// the heartbeat when due, then as many new leases as there is room for.
/// Returns true once the job has nothing left for this daemon.
fn feed_once(
    leases: &Leases,
    client: &mut ::postgres::Client,
    state: &mut FeedState,
    work: &Sender<Work>,
    settled: &Receiver<Settled>,
    shared: &Shared,
    window: usize,
) -> Result<bool> {
    while let Ok(message) = settled.try_recv() {
        state.take_in(message, leases);
    }
    check_pause(client, leases.job, shared, &mut state.pause_checked)?;
    if state.renewed.elapsed() >= leases.lease_for / 3 {
        for token in leases.live_tokens() {
            let held = lease::renew(client, leases.job, token, leases.lease_for)?;
            state.drop_lost(leases, token, &held);
        }
        state.renewed = Instant::now();
    }
    if state.beat.elapsed() >= heartbeat_every(leases.lease_for) {
        let rate = state.done_since as f64 / state.beat.elapsed().as_secs_f64();
        job::heartbeat(client, leases.daemon, &json!({ "pages_per_second": rate }))?;
        state.done_since = 0;
        state.beat = Instant::now();
        fence_silent(leases, client, state)?;
    }
    if shared.paused.load(Ordering::SeqCst) {
        // Paused: nothing more goes to the fetchers (they also hold what
        // they have not started); the leases are kept and renewed.
        state.wait(settled, leases);
        return Ok(false);
    }
    // Work the fetchers had no room for yet goes first. The feeder never
    // blocks on them: it must go on renewing its leases and beating while
    // every fetcher waits (for one of the job's slots, say).
    while let Some(next) = state.unsent.pop_front() {
        match work.try_send(next) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(next)) => {
                state.unsent.push_front(next);
                state.wait(settled, leases);
                return Ok(false);
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Ok(true),
        }
    }
    let room = window.saturating_sub(state.in_flight.len());
    if room == 0 {
        state.wait(settled, leases);
        return Ok(false);
    }
    let leased = lease::lease_batch(client, leases.job, leases.daemon, room, leases.lease_for)?;
    if leased.tasks.is_empty() {
        if state.in_flight.is_empty() && job::counters(client, leases.job)?.listing_pending == 0 {
            return Ok(true);
        }
        state.wait(settled, leases);
        return Ok(false);
    }
    {
        let mut tokens = leases.tokens.lock().unwrap_or_else(|p| p.into_inner());
        for task in &leased.tasks {
            tokens.insert(task.id.number as u64, leased.token);
        }
    }
    for task in leased.tasks {
        let page = task.id.number as u64;
        state.in_flight.insert(page);
        state.unsent.push_back(Work {
            task: Task::Page(page),
            attempts: task.attempts.max(0) as u32,
            url: None,
        });
    }
    Ok(false)
}

/// Listens on the pause channel (`pagecrawl pause` and `resume` notify
/// it), then reads whether the job is paused now.
fn listen_for_pause(client: &mut ::postgres::Client, job: JobId, shared: &Shared) -> Result<()> {
    client.batch_execute(&format!("LISTEN {}", ops::PAUSE_CHANNEL))?;
    set_paused(shared, ops::is_paused(client, job)?);
    Ok(())
}

/// How often a daemon reads whether its job is paused: `pause` and
/// `resume` reach every daemon within this.
const PAUSE_CHECK: Duration = Duration::from_millis(250);

/// Reads the job's pause flag when [`PAUSE_CHECK`] has passed, or at once
/// when the pause channel has a notification for this job. The sync client
/// reads notifications only while it runs a query, so the read is what
/// bounds the delay; the notifications then come with it.
fn check_pause(
    client: &mut ::postgres::Client,
    job: JobId,
    shared: &Shared,
    checked: &mut Instant,
) -> Result<()> {
    use ::postgres::fallible_iterator::FallibleIterator;
    let mut ours = false;
    {
        let mut notifications = client.notifications();
        let mut pending = notifications.iter();
        while let Some(notification) = pending.next()? {
            ours |= notification.payload() == job.0.to_string();
        }
    }
    if ours || checked.elapsed() >= PAUSE_CHECK {
        set_paused(shared, ops::is_paused(client, job)?);
        *checked = Instant::now();
    }
    Ok(())
}

/// The job's pause flag, as read from the store, for every stage (the fetch
/// threads start nothing new while it is set); says so when it changes.
fn set_paused(shared: &Shared, paused: bool) {
    if shared.paused.swap(paused, Ordering::SeqCst) != paused {
        if paused {
            log::info!(
                "the job was paused (`pagecrawl pause`): no new request until it is resumed"
            );
        } else {
            log::info!("the job was resumed");
        }
    }
}

/// How often a daemon says it is alive: every 5 s, and at least three
/// times a lease, so that one silent for a whole lease is known to be
/// frozen (or cut off), not slow to report.
fn heartbeat_every(lease_for: Duration) -> Duration {
    (lease_for / 3).min(Duration::from_secs(5))
}

/// Fences off the job's daemons silent for a whole lease (see
/// [`job::fence_silent_daemons`]), saying so once each. A refusal (no right
/// to signal their backends) is said once, and the crawl goes on: a frozen
/// daemon then keeps its slots until it wakes or dies.
fn fence_silent(
    leases: &Leases,
    client: &mut ::postgres::Client,
    state: &mut FeedState,
) -> Result<()> {
    match job::fence_silent_daemons(client, leases.job, leases.daemon, leases.lease_for) {
        Ok(fenced) => {
            for daemon in fenced {
                log::warn!(
                    "the daemon on {} (pid {}) has not been heard from for {:.0} s, longer than a lease \
                     (lease_time = {:.0?}): closed its {} connections to the store, freeing the job's \
                     concurrency slots it held; its pages are fetched again by the others",
                    daemon.host,
                    daemon.pid,
                    daemon.silent_for,
                    leases.lease_for,
                    daemon.connections
                );
            }
            Ok(())
        }
        Err(e) if lost_connection(&e) => Err(e),
        Err(e) => {
            if !state.fence_refused {
                state.fence_refused = true;
                log::warn!(
                    "cannot close the connections of a daemon silent for a whole lease ({}): \
                     it keeps its concurrency slots until it wakes or dies; grant this role \
                     pg_signal_backend, or run every daemon as the same role (not a superuser)",
                    crate::error::one_line(&e)
                );
            }
            Ok(())
        }
    }
}

/// Whether `error` says the connection to the store broke (the server
/// went away or is shutting down, the network failed), as opposed to a
/// refusal that would come again on a new connection.
fn is_lost(error: &::postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.as_db_error() {
        // 08: connection exception; 57: operator intervention (shutdown,
        // crash recovery, terminated by an administrator).
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57")
        }
        None => std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>()),
    }
}

/// [`is_lost`] for any error that holds a PostgreSQL one.
fn lost_connection(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<::postgres::Error>()
            .is_some_and(is_lost)
    })
}

/// Whether a commit of `settles` whose outcome was lost went through: its
/// first task is settled under the token it was leased with.
fn committed_before(
    client: &mut ::postgres::Client,
    job: JobId,
    settles: &[Settle],
) -> Result<bool> {
    let Some(first) = settles.first() else {
        return Ok(true);
    };
    Ok(lease::settled_by(client, job, first.token)?.contains(&first.task))
}

/// A new connection to the store after the last one broke (the server
/// restarted, the network went away): tried again with a growing pause,
/// up to 5 s, until it works or the crawl stops (`None`). Says once when
/// it is back.
fn reconnect(url: &StoreUrl, shared: &Shared) -> Option<::postgres::Client> {
    let lost = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        if shared.stopping() {
            return None;
        }
        match connect(url) {
            Ok(client) => {
                log::info!(
                    "connected to the store again after {:.1} s",
                    lost.elapsed().as_secs_f64()
                );
                return Some(client);
            }
            Err(e) => log::debug!("the store is not back yet: {e}"),
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

fn commit(
    leases: &Leases,
    parsed: Receiver<Parsed>,
    settled: Sender<Settled>,
    shared: &Shared,
) -> Result<()> {
    let mut client = connect(&leases.url)?;
    let mut groups = Groups::default();
    let result = (|| -> Result<()> {
        loop {
            shared.beat();
            match groups.next(&parsed, shared) {
                Step::Wait => {}
                Step::Flush => {
                    flush(leases, &mut client, &mut groups.group, &settled, shared)?;
                    groups.flushed();
                }
                Step::Last => {
                    return flush(leases, &mut client, &mut groups.group, &settled, shared)
                }
            }
        }
    })();
    // The feeder has ended (the channel is closed only once every fetch
    // and parse thread has): what this daemon still holds is released.
    let tokens = leases.live_tokens();
    for token in tokens {
        if let Err(e) = lease::release(&mut client, leases.job, token) {
            log::warn!("cannot release this daemon's leases (they expire by themselves): {e:#}");
            break;
        }
    }
    result
}

fn flush(
    leases: &Leases,
    client: &mut ::postgres::Client,
    group: &mut Vec<Parsed>,
    settled: &Sender<Settled>,
    shared: &Shared,
) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    let config = shared.config();
    let mut settles: Vec<Settle> = Vec::with_capacity(group.len());
    let (mut done, mut failed, mut retried) = (0u64, 0u64, 0u64);
    for message in group.drain(..) {
        let (page, outcome) = match message {
            Parsed::Done {
                page, bytes, items, ..
            } => {
                let items = items
                    .values
                    .iter()
                    .enumerate()
                    .map(|(index, values)| NewItem {
                        page: page as i64,
                        index: index as i32,
                        item: item_json(&config.fields, values, None),
                        key: items.keys.get(index).cloned(),
                    })
                    .collect();
                done += 1;
                (
                    page,
                    Outcome::Done {
                        items,
                        bytes: bytes as i64,
                        details: Vec::new(),
                    },
                )
            }
            Parsed::Failure {
                task: Task::Page(page),
                attempts,
                error,
                ..
            } => {
                if tried_again(&config, attempts, &error) {
                    retried += 1;
                    (
                        page,
                        Outcome::Retry {
                            after: retry_delay(&config, attempts, &error),
                            kind: error.kind(),
                            detail: error.to_string(),
                        },
                    )
                } else {
                    failed += 1;
                    let detail = failure_detail(&error, &config.page_url(page), attempts);
                    log::warn!("page {page} failed: {detail}");
                    (
                        page,
                        Outcome::Failed {
                            kind: error.kind(),
                            detail,
                        },
                    )
                }
            }
            Parsed::Detail { .. }
            | Parsed::Failure {
                task: Task::Detail(_),
                ..
            } => anyhow::bail!("internal error: a detail page in a store job without [detail]"),
            Parsed::Abandoned => continue,
        };
        let Some(token) = leases.token_of(page) else {
            log::warn!("page {page} is no longer leased by this daemon; its result is dropped");
            continue;
        };
        settles.push(Settle {
            task: TaskId::listing(page as i64),
            token,
            outcome,
        });
    }
    let pages: Vec<u64> = settles.iter().map(|s| s.task.number as u64).collect();
    let outcome = loop {
        match lease::commit_group(client, leases.job, &settles) {
            Err(lease::CommitError::Database(e)) if client.is_closed() || is_lost(&e) => {
                // Whether the commit happened is unknown: once connected
                // again, the tasks' tokens say (a settled task keeps the
                // token that settled it; one transaction settles all).
                log::warn!(
                    "lost the connection to the store during a commit ({}); reconnecting",
                    crate::error::one_line(&anyhow::Error::new(e))
                );
                let Some(again) = reconnect(&leases.url, shared) else {
                    anyhow::bail!("stopped while the store was unreachable; the next start resumes from the last commit");
                };
                *client = again;
                if committed_before(client, leases.job, &settles)? {
                    log::info!("the commit had gone through before the connection was lost");
                    break Ok(None);
                }
            }
            other => break other.map(Some),
        }
    };
    match outcome {
        Ok(committed) => {
            let progress = &shared.progress;
            progress.done.fetch_add(done, Ordering::Relaxed);
            progress.failed.fetch_add(failed, Ordering::Relaxed);
            // A commit found gone through after a lost answer: its counts
            // of items are not known here (the job's counters have them).
            if let Some(committed) = committed {
                progress.retries.fetch_add(retried, Ordering::Relaxed);
                progress
                    .items
                    .fetch_add(committed.items_written, Ordering::Relaxed);
                progress
                    .duplicates
                    .fetch_add(committed.items_skipped, Ordering::Relaxed);
                log::debug!(
                    "committed {} pages, {} items",
                    pages.len(),
                    committed.items_written
                );
            }
        }
        Err(lease::CommitError::Fenced { lost }) => {
            // Another daemon took these over after our lease expired (this
            // one was frozen, or too slow): it writes them; nothing here was.
            log::warn!(
                "{} of {} pages of a commit were taken over by another daemon (their lease had expired); \
                 this daemon wrote none of the group; the daemon that took them over writes them",
                lost.len(),
                pages.len()
            );
        }
        Err(lease::CommitError::Database(e)) => {
            return Err(anyhow::Error::new(e).context("cannot commit to the store"))
        }
    }
    for page in pages {
        // The feeder may already have stopped; then nobody needs to know.
        let _ = settled.try_send(Settled::Finished(Task::Page(page)));
    }
    Ok(())
}

/// The job's politeness caps across all its daemons: a request starts only
/// holding one of the job's `concurrency` slots (a session advisory lock,
/// which the server frees if this daemon's connection dies) and, with a
/// rate, at a send time reserved on the job's shared row, so the site sees
/// at most `concurrency` requests at once and `rate_limit` a second
/// whatever the number of daemons.
pub(super) struct JobLimits {
    url: StoreUrl,
    job: JobId,
    /// Requests a second for the whole job (`rate_limit`, or robots.txt's
    /// `Crawl-delay`), if any.
    rate: Option<f64>,
    /// One connection per local slot, each with the slots it holds.
    pool: Mutex<
        Vec<(
            ::postgres::Client,
            crate::store::postgres::politeness::Slots,
        )>,
    >,
    freed: std::sync::Condvar,
    /// The connection the rate's turns are reserved on (with a rate).
    turns: Option<Mutex<::postgres::Client>>,
    /// The longest a request can still be in flight (`request_timeout`).
    request_timeout: Duration,
    /// No slot is taken before then: a connection of the pool was lost
    /// (the server restarted, or fenced this daemon off), and with it the
    /// slots it held, while their requests may still be on the wire; the
    /// other daemons lost theirs too in a restart, and wait the same.
    quiet_until: Mutex<Option<Instant>>,
}

/// The most of the job's slots one daemon holds at once: one connection
/// each. With `concurrency` above it, more daemons make up the rest.
pub(super) const MAX_SLOTS_PER_DAEMON: usize = 32;

/// How long a request waits before asking again for a slot every daemon
/// holds.
const SLOT_RETRY: Duration = Duration::from_millis(10);

/// A slot of the job held for one request: given back when dropped.
pub(super) struct SlotHeld<'a> {
    limits: &'a JobLimits,
    held: Option<(
        ::postgres::Client,
        crate::store::postgres::politeness::Slots,
        u32,
    )>,
}

impl Drop for SlotHeld<'_> {
    fn drop(&mut self) {
        if let Some((mut client, mut slots, slot)) = self.held.take() {
            if let Err(e) = slots.release(&mut client, slot) {
                // The connection broke: the server frees a dead session's
                // locks, so it goes back holding none, and the next
                // request on it connects again.
                log::debug!(
                    "cannot give a concurrency slot back ({e:#}); its connection is gone with it"
                );
                self.limits.lost_slots();
                slots = crate::store::postgres::politeness::Slots::new(
                    self.limits.job,
                    slots.len() as u32,
                );
            }
            self.limits
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((client, slots));
            self.limits.freed.notify_one();
        }
    }
}

impl JobLimits {
    pub(super) fn new(
        url: &StoreUrl,
        job: JobId,
        concurrency: usize,
        local: usize,
        rate: Option<f64>,
        request_timeout: Duration,
    ) -> Result<JobLimits> {
        let url = url.clone();
        let held = local.min(concurrency).min(MAX_SLOTS_PER_DAEMON);
        let mut pool = Vec::with_capacity(held);
        for _ in 0..held {
            pool.push((
                connect(&url)?,
                crate::store::postgres::politeness::Slots::new(job, concurrency as u32),
            ));
        }
        Ok(JobLimits {
            job,
            rate,
            pool: Mutex::new(pool),
            freed: std::sync::Condvar::new(),
            turns: match rate {
                Some(_) => Some(Mutex::new(connect(&url)?)),
                None => None,
            },
            url,
            request_timeout,
            quiet_until: Mutex::new(None),
        })
    }

    /// A connection holding slots was lost: no slot is taken for a
    /// request's time from now (see `quiet_until`).
    ///
    /// The pool's connections are found lost one by one as they are next
    /// used, the last of them only once the quiet period has ended: a loss
    /// found within two request times of the one that started the quiet
    /// period is the same loss, and does not start another.
    fn lost_slots(&self) {
        let now = Instant::now();
        let mut quiet = self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
        let same_loss = quiet.is_some_and(|until| now < until + self.request_timeout);
        if !same_loss {
            *quiet = Some(now + self.request_timeout);
        }
    }

    /// Waits out a quiet period (see `quiet_until`); false once `stop` is
    /// set.
    fn wait_quiet(&self, stop: &std::sync::atomic::AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let until = *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(until) if Instant::now() < until => std::thread::sleep(
                    until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(50)),
                ),
                _ => return true,
            }
        }
    }

    /// Waits for one of the job's slots; `None` once `stop` is set (or the
    /// database cannot be asked: the request is then not made).
    pub(super) fn slot(&self, stop: &std::sync::atomic::AtomicBool) -> Option<SlotHeld<'_>> {
        let (mut client, mut slots) = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
                if let Some(free) = pool.pop() {
                    break free;
                }
                pool = self
                    .freed
                    .wait_timeout(pool, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        loop {
            if stop.load(Ordering::SeqCst) {
                self.pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((client, slots));
                self.freed.notify_one();
                return None;
            }
            if !self.wait_quiet(stop) {
                continue;
            }
            match slots.try_take(&mut client) {
                Ok(Some(slot)) => {
                    return Some(SlotHeld {
                        limits: self,
                        held: Some((client, slots, slot)),
                    })
                }
                Ok(None) => std::thread::sleep(SLOT_RETRY),
                // The connection broke (the feeder and the commit stage
                // say so in the log): a new one holds no slot yet.
                Err(e) => {
                    log::debug!("cannot take a concurrency slot of the job: {e:#}");
                    std::thread::sleep(SLOT_RETRY);
                    if client.is_closed() || lost_connection(&e) {
                        self.lost_slots();
                        if let Ok(again) = connect(&self.url) {
                            client = again;
                            slots = crate::store::postgres::politeness::Slots::new(
                                self.job,
                                slots.len() as u32,
                            );
                        }
                    }
                }
            }
        }
    }

    /// Waits for the job's next send time under its rate; false once
    /// `stop` is set (or the turn cannot be reserved).
    pub(super) fn turn(&self, stop: &std::sync::atomic::AtomicBool) -> bool {
        let (Some(rate), Some(turns)) = (self.rate, &self.turns) else {
            return true;
        };
        let turn = loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let mut client = turns.lock().unwrap_or_else(|p| p.into_inner());
            match crate::store::postgres::politeness::reserve_turn(&mut client, self.job, rate) {
                Ok(turn) => break Ok(turn),
                Err(e) if client.is_closed() || lost_connection(&e) => {
                    log::debug!("cannot reserve the job's next send time: {e:#}");
                    std::thread::sleep(SLOT_RETRY * 10);
                    if let Ok(again) = connect(&self.url) {
                        *client = again;
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match turn {
            Ok(turn) => {
                let until = Instant::now() + turn.wait;
                while Instant::now() < until {
                    if stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(
                        until
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(50)),
                    );
                }
                true
            }
            Err(e) => {
                log::warn!("cannot reserve the job's next send time: {e:#}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::postgres::Postgres;
    use crate::store::postgres::job::{enqueue_pages, ensure_job, register_daemon};
    use crate::store::postgres::schema::migrate;

    #[test]
    fn a_broken_connection_is_lost_and_a_refused_query_is_not() {
        let Some(server) = Postgres::for_test("is_lost") else {
            return;
        };
        let mut victim = server.connect().unwrap();
        let refused = victim.query_one("SELECT 1 / 0", &[]).unwrap_err();
        assert!(!is_lost(&refused), "{refused}");
        assert!(!lost_connection(&anyhow::Error::new(refused)));
        let pid: i32 = victim
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let mut killer = server.connect().unwrap();
        killer
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
        let broken = victim.query_one("SELECT 1", &[]).unwrap_err();
        assert!(is_lost(&broken), "{broken}");
        assert!(lost_connection(
            &anyhow::Error::new(broken).context("leasing")
        ));
        assert!(!lost_connection(&anyhow::anyhow!("no database error here")));
    }

    #[test]
    fn a_commit_whose_answer_was_lost_is_known_by_its_first_task() {
        let Some(server) = Postgres::for_test("committed_before") else {
            return;
        };
        let mut client = server.connect().unwrap();
        migrate(&mut client).unwrap();
        let job = ensure_job(&mut client, "lost", &json!({})).unwrap();
        enqueue_pages(&mut client, job, 1, 4).unwrap();
        let daemon = register_daemon(&mut client, job, "h", 1).unwrap();
        let lease =
            lease::lease_batch(&mut client, job, daemon, 4, Duration::from_secs(60)).unwrap();
        let settle = |page: i64| Settle {
            task: TaskId::listing(page),
            token: lease.token,
            outcome: Outcome::Done {
                items: Vec::new(),
                bytes: 1,
                details: Vec::new(),
            },
        };
        let first = [settle(1), settle(2)];
        let second = [settle(3), settle(4)];
        lease::commit_group(&mut client, job, &first).unwrap();
        assert!(committed_before(&mut client, job, &first).unwrap());
        assert!(
            !committed_before(&mut client, job, &second).unwrap(),
            "same lease, not committed yet"
        );
        assert!(
            committed_before(&mut client, job, &[]).unwrap(),
            "nothing to commit"
        );
    }
}

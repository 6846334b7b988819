//! Reading a job in a store database from any machine: `status` and
//! `export` with `--store URL --job NAME` (or a config's `store` and
//! `job`). Nothing here writes: the schema is checked, not migrated, and a
//! job that is not there is refused, not created.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::connect::{connect, parse_store_url, PasswordSources};
use super::job::{self, Identity, JobId};
use super::lease::Stage;
use super::schema;
use crate::config::detail::{Detail, OnFailure};
use crate::control::ops::{DaemonStatus, ErrorCount, Status};
use crate::error::UserError;
use crate::util::shown;

/// A daemon whose last heartbeat is at most this old counts as running.
pub const SEEN_WITHIN: Duration = Duration::from_secs(30);

/// A job in a store database, opened to be read.
pub struct RemoteJob {
    pub client: ::postgres::Client,
    pub id: JobId,
    pub name: String,
    pub identity: Identity,
    /// The store's URL without its password.
    pub shown_url: String,
}

/// Connects to `url` (its password from the URL, `PGPASSWORD` or the
/// password file) and finds the job `name` there.
pub fn open_job(url: &str, name: &str) -> Result<RemoteJob> {
    let parsed = parse_store_url(url, &PasswordSources::from_environment())?;
    let mut client = connect(&parsed)?;
    schema::check(&mut client, &parsed.shown)?;
    let Some((id, stored)) = job::find(&mut client, name)? else {
        return Err(UserError::Usage(format!(
            "the database {} holds no job named '{}': check `job` (or --job; a config \
             without one names its job after its file)",
            parsed.shown,
            shown(name)
        ))
        .into());
    };
    let identity: Identity = serde_json::from_value(stored).map_err(|e| {
        UserError::Usage(format!(
            "the job '{}' in {} was recorded in a shape this pagecrawl does not read ({e}); \
             use the pagecrawl that runs it",
            shown(name),
            parsed.shown
        ))
    })?;
    Ok(RemoteJob {
        client,
        id,
        name: name.to_string(),
        identity,
        shown_url: parsed.shown,
    })
}

impl RemoteJob {
    /// The job's `[detail]` table, if it has one.
    pub fn detail(&self) -> Result<Option<Detail>> {
        self.identity
            .detail
            .as_deref()
            .map(|json| crate::config::detail::from_identity(json, &self.identity.fields))
            .transpose()
            .map_err(|why| {
                UserError::Usage(format!("{why}; use the pagecrawl that runs it")).into()
            })
    }

    /// What `status` shows of the job, in its `--json` shape.
    pub fn status(&mut self) -> Result<Status> {
        let counters = job::counters(&mut self.client, self.id)?;
        let daemons = job::daemons(&mut self.client, self.id)?;
        let reasons = |client: &mut ::postgres::Client, stage| -> Result<Vec<ErrorCount>> {
            Ok(job::failure_reasons(client, self.id, stage)?
                .into_iter()
                .map(|(reason, pages)| ErrorCount { reason, pages })
                .collect())
        };
        let errors = reasons(&mut self.client, Stage::Listing)?;
        let detail_errors = reasons(&mut self.client, Stage::Detail)?;
        let detail = self.detail()?;
        let now = SystemTime::now();
        let daemons: Vec<DaemonStatus> = daemons
            .into_iter()
            .map(|d| DaemonStatus {
                host: d.host,
                pid: d.pid,
                started: epoch_seconds(d.started),
                last_heartbeat: epoch_seconds(d.last_heartbeat),
                heartbeat_age_seconds: now
                    .duration_since(d.last_heartbeat)
                    .unwrap_or_default()
                    .as_secs(),
                pages_per_second: d.pages_per_second,
                leases_held: d.leases_held.max(0) as u64,
            })
            .collect();
        let running: Vec<&DaemonStatus> = daemons
            .iter()
            .filter(|d| d.heartbeat_age_seconds <= SEEN_WITHIN.as_secs())
            .collect();
        let count = |n: i64| n.max(0) as u64;
        let (pending, done, failed) = (
            count(counters.listing_pending),
            count(counters.listing_done),
            count(counters.listing_failed),
        );
        let (detail_pending, detail_done, detail_failed) = (
            count(counters.detail_pending),
            count(counters.detail_done),
            count(counters.detail_failed),
        );
        let paused = super::ops::is_paused(&mut self.client, self.id)?;
        let state = if paused {
            "paused"
        } else if !running.is_empty() {
            "running"
        } else if pending + detail_pending == 0 {
            "finished"
        } else {
            "idle"
        };
        let rate = running
            .iter()
            .filter_map(|d| d.pages_per_second)
            .reduce(|a, b| a + b);
        // A detail task carries the item waiting for it; with on_failure =
        // "wait", a failed one keeps it.
        let waits_on_failed = detail
            .as_ref()
            .is_some_and(|d| d.on_failure == OnFailure::Wait);
        Ok(Status {
            state: state.into(),
            pid: None,
            state_dir: String::new(),
            url: Some(self.identity.url.clone()),
            range: Some(self.identity.pages.clone()),
            pending,
            done,
            failed,
            total: pending + done + failed,
            items: count(counters.items),
            retries: 0,
            output: None,
            output_bytes: 0,
            rate,
            eta_seconds: rate
                .filter(|r| *r > 0.0)
                .map(|r| (pending + detail_pending) as f64 / r),
            open_range_end: None,
            errors,
            rate_last_minute: None,
            open_range: false,
            frontier: None,
            damaged: None,
            failed_for_good: failed + detail_failed,
            open_range_last_page: None,
            done_past_end: 0,
            failed_past_end: 0,
            round: None,
            next_round_at: None,
            detail_stage: detail.is_some(),
            detail_pending,
            detail_done,
            detail_failed,
            items_waiting: detail_pending + if waits_on_failed { detail_failed } else { 0 },
            detail_errors,
            store: Some(self.shown_url.clone()),
            job: Some(self.name.clone()),
            daemons,
        })
    }
}

fn epoch_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;

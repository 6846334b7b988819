//! How the commit stages of both backends gather the parse stage's results
//! into commit groups: a group is committed once it holds `commit_every`
//! results, once `commit_interval` has passed since its first, when the
//! feeder waits on commits (it has nothing more to hand out until some
//! settle), and a last time on abort or once the parse stage is done.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::{Parsed, Shared};

/// Longest a commit stage waits without looking at the abort flag (and
/// pinging the heartbeat).
const TICK: Duration = Duration::from_millis(100);

/// What the commit stage does with the group now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing yet: look again.
    Wait,
    /// Commit the group, then go on.
    Flush,
    /// Commit the group and end: aborted, or nothing more will come.
    Last,
}

/// The group being gathered, and when it is due.
#[derive(Default)]
pub(super) struct Groups {
    pub group: Vec<Parsed>,
    deadline: Option<Instant>,
}

impl Groups {
    /// Waits up to a tick for the next result and says what to do.
    pub fn next(&mut self, parsed: &Receiver<Parsed>, shared: &Shared) -> Step {
        let config = shared.config();
        let wait = self.deadline.map_or(TICK, |d| {
            d.saturating_duration_since(Instant::now()).min(TICK)
        });
        let aborted = || shared.abort.load(Ordering::SeqCst);
        let feeder_waits = || shared.waiting_on_commits.load(Ordering::SeqCst);
        match parsed.recv_timeout(wait) {
            Ok(message) => {
                self.deadline
                    .get_or_insert_with(|| Instant::now() + config.commit_interval);
                self.group.push(message);
                if aborted() {
                    Step::Last
                } else if self.group.len() >= config.commit_every
                    || (feeder_waits() && parsed.is_empty())
                {
                    Step::Flush
                } else {
                    Step::Wait
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if aborted() {
                    Step::Last
                } else if self.deadline.is_some_and(|d| Instant::now() >= d)
                    || (feeder_waits() && !self.group.is_empty())
                {
                    Step::Flush
                } else {
                    Step::Wait
                }
            }
            Err(RecvTimeoutError::Disconnected) => Step::Last,
        }
    }

    /// The group was committed (and emptied): the next one starts afresh.
    pub fn flushed(&mut self) {
        self.deadline = None;
    }
}

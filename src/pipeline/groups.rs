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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::robots::Robots;

    fn shared(extra: &str) -> Shared {
        let text =
            format!("url = \"http://h/{{page}}\"\npages = \"1\"\npattern = \"(?P<a>a)\"\n{extra}");
        Shared::new(
            &Config::parse(&text, "t.toml".as_ref()).unwrap(),
            Robots::allow_all(),
        )
    }

    #[test]
    fn a_group_is_due_when_full_or_when_its_interval_has_passed() {
        let shared = shared("commit_every = 3\ncommit_interval = \"300ms\"");
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut groups = Groups::default();
        assert_eq!(groups.next(&rx, &shared), Step::Wait, "nothing came");
        for _ in 0..3 {
            tx.send(Parsed::Abandoned).unwrap();
        }
        assert_eq!(groups.next(&rx, &shared), Step::Wait);
        assert_eq!(groups.next(&rx, &shared), Step::Wait);
        assert_eq!(groups.next(&rx, &shared), Step::Flush, "commit_every");
        assert_eq!(groups.group.len(), 3);
        groups.group.clear();
        groups.flushed();
        // One result, then its interval: due only once 300 ms have passed.
        let started = Instant::now();
        tx.send(Parsed::Abandoned).unwrap();
        assert_eq!(groups.next(&rx, &shared), Step::Wait);
        let step = loop {
            let step = groups.next(&rx, &shared);
            if step != Step::Wait || started.elapsed() > Duration::from_secs(5) {
                break step;
            }
        };
        assert_eq!(step, Step::Flush, "commit_interval");
        assert!(started.elapsed() >= Duration::from_millis(300));
        groups.group.clear();
        groups.flushed();
        assert_eq!(groups.next(&rx, &shared), Step::Wait, "no deadline left");
        drop(tx);
        assert_eq!(
            groups.next(&rx, &shared),
            Step::Last,
            "the parse stage ended"
        );
    }

    #[test]
    fn an_abort_ends_and_a_waiting_feeder_gets_what_there_is() {
        let shared = shared("commit_every = 100");
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut groups = Groups::default();
        shared.waiting_on_commits.store(true, Ordering::SeqCst);
        assert_eq!(groups.next(&rx, &shared), Step::Wait, "an empty group");
        tx.send(Parsed::Abandoned).unwrap();
        tx.send(Parsed::Abandoned).unwrap();
        assert_eq!(groups.next(&rx, &shared), Step::Wait, "more is queued");
        assert_eq!(groups.next(&rx, &shared), Step::Flush, "the feeder waits");
        groups.group.clear();
        groups.flushed();
        tx.send(Parsed::Abandoned).unwrap();
        shared.waiting_on_commits.store(false, Ordering::SeqCst);
        assert_eq!(groups.next(&rx, &shared), Step::Wait);
        shared.waiting_on_commits.store(true, Ordering::SeqCst);
        assert_eq!(
            groups.next(&rx, &shared),
            Step::Flush,
            "on a tick, with a group"
        );
        groups.group.clear();
        groups.flushed();
        shared.abort.store(true, Ordering::SeqCst);
        assert_eq!(groups.next(&rx, &shared), Step::Last, "aborted, waiting");
        tx.send(Parsed::Abandoned).unwrap();
        assert_eq!(groups.next(&rx, &shared), Step::Last, "aborted, a result");
        assert_eq!(groups.group.len(), 1);
    }
}

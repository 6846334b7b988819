//! Follow mode's rounds in the state: which round runs and when it
//! started, so that a restarted daemon goes on counting and starts the
//! next round when it is due, not a whole interval after it started.

use anyhow::Result;

use super::{EnqueueReport, Store};
use crate::range::PageRange;

impl Store {
    /// The round in progress (or last started) and its start (ms since the
    /// epoch); `None` when no round was recorded.
    pub fn round(&self) -> Option<(u64, u64)> {
        let counters = self.counters();
        (counters.round > 0).then_some((counters.round, counters.round_started_ms))
    }

    /// Records that `round` started at `started_ms` and queues its pages,
    /// in one batch: a crash cannot queue a round's pages without counting
    /// it, or count it without its pages.
    pub fn start_round(
        &self,
        round: u64,
        started_ms: u64,
        pages: &[PageRange],
    ) -> Result<EnqueueReport> {
        self.enqueue_and(pages, |next| {
            next.round = round;
            next.round_started_ms = started_ms;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_and_its_pages_are_recorded_together_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.round(), None);
            store.start_round(1, 1_000, &[]).unwrap();
            assert_eq!(store.round(), Some((1, 1_000)));
            let report = store
                .start_round(2, 5_000, &[PageRange::Closed { start: 1, end: 3 }])
                .unwrap();
            assert_eq!(report.added, 3);
            store.flush().unwrap();
        }
        let store = crate::store::tests::once_released(|| Store::open(dir.path()));
        assert_eq!(store.round(), Some((2, 5_000)));
        assert_eq!(store.counters().pending, 3);
    }
}

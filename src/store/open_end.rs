//! Open ranges (`pages = "1.."`): what the feeder needs to bound its
//! look-ahead (the last page found with items) and what `status` shows
//! apart from the job's pages (those fetched at or past the end).

use anyhow::Result;

use super::keys::{page_key, DONE, FAILED};
use super::{Done, Store};

/// Pages settled at or past the first page of the empty run that ended an
/// open range: the run itself and the look-ahead. They are not part of
/// the job's listing, so `status` counts them apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PastEnd {
    /// Done pages (empty ones, mostly).
    pub done: u64,
    /// Failed pages (the 404s or 410s that mark the end, mostly).
    pub failed: u64,
    /// The last page settled past the end.
    pub last: Option<u64>,
}

impl Store {
    /// The highest done page whose pattern found items. Reads done pages
    /// backwards from the highest, so it costs the empty pages at the top
    /// (a few in an open range), not the queue.
    pub fn last_page_with_items(&self) -> Result<Option<u64>> {
        let done = self
            .tree
            .range(page_key(DONE, 0)..=page_key(DONE, u64::MAX));
        for entry in done.rev() {
            let (key, value) = entry?;
            if Done::decode(&value).extracted > 0 {
                return Ok(super::keys::page_of(&key));
            }
        }
        Ok(None)
    }

    /// The pages settled at or past the open range's end (none before it
    /// is found). O(pages past the end).
    pub fn past_end(&self) -> Result<PastEnd> {
        let mut past = PastEnd::default();
        let Some(end) = self.counters().open_end() else {
            return Ok(past);
        };
        for (prefix, count) in [(DONE, &mut past.done), (FAILED, &mut past.failed)] {
            for key in self
                .tree
                .range(page_key(prefix, end)..=page_key(prefix, u64::MAX))
                .keys()
            {
                let page = super::keys::page_of(&key?);
                *count += 1;
                past.last = past.last.max(page);
            }
        }
        Ok(past)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Settle;

    fn done(page: u64, extracted: u32) -> Settle {
        Settle::Done {
            page,
            attempts: 1,
            items: extracted,
            extracted,
            bytes: 10,
            keys: Vec::new(),
        }
    }

    #[test]
    fn the_last_page_with_items_skips_the_empty_pages_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .set_job(
                &crate::store::tests::job(),
                &crate::range::PageRange::Open { start: 1 },
                crate::store::Fingerprint::default(),
            )
            .unwrap();
        assert_eq!(store.last_page_with_items().unwrap(), None);
        store.extend(8).unwrap();
        store
            .commit(
                &[done(1, 2), done(2, 0), done(3, 5), done(4, 0), done(5, 0)],
                0,
                Some(3),
            )
            .unwrap();
        assert_eq!(store.last_page_with_items().unwrap(), Some(3));
        assert_eq!(store.past_end().unwrap(), PastEnd::default(), "no end yet");
        store.commit(&[done(6, 0), done(8, 0)], 0, Some(3)).unwrap();
        assert_eq!(store.counters().open_end(), Some(4));
        assert_eq!(
            store.past_end().unwrap(),
            PastEnd {
                done: 4,
                failed: 0,
                last: Some(8)
            }
        );
        assert_eq!(store.last_page_with_items().unwrap(), Some(3));
    }
}

//! Key layout of the single sled tree that holds a crawl's state.
//!
//! One tree with a one-byte prefix per keyspace, rather than one tree per
//! state: sled applies a `Batch` atomically only within one tree, and moving a
//! page from pending to done *together with* the counters and the output's
//! committed length is exactly what must be atomic. Page numbers are
//! big-endian so iteration runs in page order.

/// Pages waiting to be fetched (value: [`super::records::Pending`]).
pub const PENDING: u8 = b'p';
/// Pages whose items are in the output (value: [`super::records::Done`]).
pub const DONE: u8 = b'd';
/// Pages that exhausted their retries (value: [`super::records::Failed`]).
pub const FAILED: u8 = b'f';
/// Failure-reason counters: prefix + reason kind, value u64.
pub const REASON: u8 = b'r';
/// Job metadata and counters: prefix + name.
pub const META: u8 = b'm';
/// Lazy ranges of pending pages not yet given keys of their own: prefix +
/// first page, value the last page (both big-endian, inclusive).
pub const LAZY: u8 = b'q';
/// Keys of items already written (the `key` field): prefix + key, value the
/// page that wrote it.
pub const ITEM_KEY: u8 = b'k';

/// Detail pages: prefix + detail number, value the page's record (its
/// state, and the items waiting for it; see `super::detail`).
pub const DETAIL: u8 = b'T';
/// A detail page's number by its URL: prefix + URL, value the number.
pub const DETAIL_URL: u8 = b'u';

/// The keyspaces of detail pages in layout version 1, one per state, and
/// of the items waiting for them (a key each: prefix + detail number +
/// page + index, big-endian); read only to move them to [`DETAIL`].
pub mod v1 {
    pub const DETAIL_PENDING: u8 = b'P';
    pub const DETAIL_DONE: u8 = b'D';
    pub const DETAIL_FAILED: u8 = b'F';
    pub const WAITING: u8 = b'w';

    /// The detail number, page and index of a waiting item's key.
    pub fn waiting_of(key: &[u8]) -> Option<(u64, u64, u32)> {
        if key.len() != 21 || key[0] != WAITING {
            return None;
        }
        let detail = u64::from_be_bytes(key[1..9].try_into().ok()?);
        let page = u64::from_be_bytes(key[9..17].try_into().ok()?);
        let index = u32::from_be_bytes(key[17..].try_into().ok()?);
        Some((detail, page, index))
    }
}

/// The key of `page` in the keyspace `prefix`.
pub fn page_key(prefix: u8, page: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&page.to_be_bytes());
    key
}

/// The page number in a page key, or `None` if the key is not one.
pub fn page_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    (key.len() == 9).then(|| u64::from_be_bytes(bytes))
}

/// The key of a named meta value or reason counter.
pub fn named_key(prefix: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(prefix);
    key.extend_from_slice(name.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_keys_round_trip_and_sort_in_page_order() {
        let pages = [0u64, 1, 255, 256, 65_536, u64::MAX];
        let keys: Vec<[u8; 9]> = pages.iter().map(|&p| page_key(PENDING, p)).collect();
        for (key, &page) in keys.iter().zip(&pages) {
            assert_eq!(page_of(key), Some(page));
        }
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(page_of(b"short"), None);
        assert_eq!(page_of(&[b'p'; 10]), None);
    }
}

//! The values stored per page and the counters record, with their byte
//! encodings. Fixed-width big-endian fields first, free text last, so a
//! record can gain fields at its end without breaking old state.

use std::fmt;

/// A page waiting to be fetched. A fresh page is stored as an empty value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be fetched before this time (ms since the epoch); 0 = now.
    pub not_before_ms: u64,
    /// Why the last attempt failed.
    pub last_error: String,
}

/// A page whose items were written to the output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    pub items: u32,
    /// Body bytes received.
    pub bytes: u64,
    /// When it was committed (ms since the epoch).
    pub at_ms: u64,
    /// Attempts it took (1 = first try).
    pub attempts: u32,
    /// Items the pattern found (more than `items` when some were already
    /// written under the same key). Zero means an empty page.
    pub extracted: u32,
}

/// A page that failed for good, with its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failed {
    pub attempts: u32,
    pub at_ms: u64,
    /// Short reason used for grouping, e.g. `HTTP 404`, `timeout`.
    pub kind: String,
    /// The full reason.
    pub detail: String,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or_default()))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
}

fn text_from(bytes: &[u8], at: usize) -> String {
    bytes
        .get(at..)
        .map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned())
}

impl Pending {
    pub fn encode(&self) -> Vec<u8> {
        if *self == Pending::default() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(12 + self.last_error.len());
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.extend_from_slice(&self.not_before_ms.to_be_bytes());
        out.extend_from_slice(self.last_error.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Pending {
        Pending {
            attempts: u32_at(bytes, 0),
            not_before_ms: u64_at(bytes, 4),
            last_error: text_from(bytes, 12),
        }
    }
}

impl Done {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.items.to_be_bytes());
        out.extend_from_slice(&self.bytes.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.extend_from_slice(&self.extracted.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Done {
        let items = u32_at(bytes, 0);
        Done {
            items,
            bytes: u64_at(bytes, 4),
            at_ms: u64_at(bytes, 12),
            attempts: u32_at(bytes, 20),
            // Records from before `extracted` existed wrote every item.
            extracted: if bytes.len() >= 28 {
                u32_at(bytes, 24)
            } else {
                items
            },
        }
    }
}

impl Failed {
    pub fn encode(&self) -> Vec<u8> {
        let kind = &self.kind.as_bytes()[..self.kind.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(14 + kind.len() + self.detail.len());
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(self.detail.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Failed {
        let kind_len = bytes
            .get(12..14)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
        let kind_end = (14 + kind_len).min(bytes.len());
        Failed {
            attempts: u32_at(bytes, 0),
            at_ms: u64_at(bytes, 4),
            kind: bytes
                .get(14..kind_end)
                .map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned()),
            detail: text_from(bytes, kind_end),
        }
    }
}

/// Counters kept current in every batch, so `status` is O(1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub pending: u64,
    pub done: u64,
    pub failed: u64,
    /// Items written to the output (including re-crawls).
    pub items: u64,
    /// Body bytes received for done pages.
    pub bytes: u64,
    /// Attempts that failed and were rescheduled.
    pub retries: u64,
    /// Bytes of the output file covered by this checkpoint.
    pub output_len: u64,
    /// The next page the job's range has not yet put in the queue.
    pub frontier: u64,
    /// Open ranges: first page of the empty run that ended the range, plus
    /// one (0 = not found yet).
    pub open_end_plus_one: u64,
    /// When the current (or last) `run` started, and `done` at that moment:
    /// together they give the rate.
    pub run_started_ms: u64,
    pub run_done_base: u64,
    /// When the last commit happened.
    pub last_commit_ms: u64,
    /// A fingerprint of the output's last bytes before `output_len` (see
    /// [`Fingerprint`]; 0 in state written before it was recorded).
    pub output_fingerprint: u64,
    /// Follow mode: the round in progress or last started (the first crawl
    /// is round 1; 0 = not recorded, as in state from before rounds were
    /// kept), and when it started (ms since the epoch). A restarted daemon
    /// starts the next round at `round_started_ms` + `follow`.
    pub round: u64,
    pub round_started_ms: u64,
    /// Detail pages (`[detail]`): pending (in flight included), done and
    /// failed for good.
    pub detail_pending: u64,
    pub detail_done: u64,
    pub detail_failed: u64,
    /// Items recorded with their listing page and not yet written: they
    /// wait for their detail page.
    pub waiting: u64,
    /// The number the next new detail page gets.
    pub detail_next: u64,
}

/// What the output's bytes just before the checkpoint's length hash to:
/// the file a checkpoint covers is recognised by its content, so a copy
/// or a restore of the state and output (new inodes) is still the same
/// output, and another file at the path is not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint(pub u64);

impl Fingerprint {
    /// Bytes hashed: the end of the last item or two.
    pub const TAIL: usize = 256;

    /// FNV-1a over the last [`Fingerprint::TAIL`] bytes of `bytes`; never 0
    /// (0 means unknown).
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let tail = &bytes[bytes.len().saturating_sub(Fingerprint::TAIL)..];
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in tail {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Fingerprint(hash.max(1))
    }

    pub fn is_unknown(self) -> bool {
        self.0 == 0
    }
}

/// Which file an open output is, as the file system names it now (for
/// comparing the open file with the one at its path; not stored, since a
/// copied state directory has new inodes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl OutputIdentity {
    pub fn of(metadata: &std::fs::Metadata) -> OutputIdentity {
        use std::os::unix::fs::MetadataExt;
        OutputIdentity {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

impl Counters {
    const FIELDS: usize = 20;

    /// The fingerprint of the output the checkpoint covers.
    pub fn output_fingerprint(&self) -> Fingerprint {
        Fingerprint(self.output_fingerprint)
    }

    fn as_array(&self) -> [u64; Counters::FIELDS] {
        [
            self.pending,
            self.done,
            self.failed,
            self.items,
            self.bytes,
            self.retries,
            self.output_len,
            self.frontier,
            self.open_end_plus_one,
            self.run_started_ms,
            self.run_done_base,
            self.last_commit_ms,
            self.output_fingerprint,
            self.round,
            self.round_started_ms,
            self.detail_pending,
            self.detail_done,
            self.detail_failed,
            self.waiting,
            self.detail_next,
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        self.as_array()
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect()
    }

    pub fn decode(bytes: &[u8]) -> Counters {
        let v = |i: usize| u64_at(bytes, i * 8);
        Counters {
            pending: v(0),
            done: v(1),
            failed: v(2),
            items: v(3),
            bytes: v(4),
            retries: v(5),
            output_len: v(6),
            frontier: v(7),
            open_end_plus_one: v(8),
            run_started_ms: v(9),
            run_done_base: v(10),
            last_commit_ms: v(11),
            output_fingerprint: v(12),
            round: v(13),
            round_started_ms: v(14),
            detail_pending: v(15),
            detail_done: v(16),
            detail_failed: v(17),
            waiting: v(18),
            detail_next: v(19),
        }
    }

    /// Listing and detail pages done.
    pub fn tasks_done(&self) -> u64 {
        self.done + self.detail_done
    }

    /// Listing and detail pages failed for good.
    pub fn tasks_failed(&self) -> u64 {
        self.failed + self.detail_failed
    }

    /// Listing and detail pages still to fetch: those queued, and the
    /// detail pages the pending listing pages will add at the rate seen so
    /// far (none before a listing page is done).
    pub fn tasks_pending(&self) -> u64 {
        let details = self.detail_done + self.detail_pending + self.detail_failed;
        let expected = match self.done {
            0 => 0,
            done => (self.pending as u128 * details as u128 / done as u128) as u64,
        };
        self.pending + self.detail_pending + expected
    }

    /// The page an open range ended at, once found.
    pub fn open_end(&self) -> Option<u64> {
        self.open_end_plus_one.checked_sub(1)
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            if self.detail.is_empty() {
                &self.kind
            } else {
                &self.detail
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let pending = Pending {
            attempts: 2,
            not_before_ms: 99,
            last_error: "HTTP 503 (retry)".into(),
        };
        assert_eq!(Pending::decode(&pending.encode()), pending);
        assert!(Pending::default().encode().is_empty());
        assert_eq!(Pending::decode(&[]), Pending::default());
        let done = Done {
            items: 20,
            bytes: 20_000,
            at_ms: 5,
            attempts: 1,
            extracted: 25,
        };
        assert_eq!(Done::decode(&done.encode()), done);
        let old_layout = &done.encode()[..24];
        assert_eq!(
            Done::decode(old_layout).extracted,
            20,
            "old records: extracted = items"
        );
        let failed = Failed {
            attempts: 6,
            at_ms: 7,
            kind: "HTTP 500".into(),
            detail: "HTTP 500 from http://x/".into(),
        };
        assert_eq!(Failed::decode(&failed.encode()), failed);
        let counters = Counters {
            pending: 1,
            done: 2,
            output_len: 3,
            last_commit_ms: 12,
            output_fingerprint: 13,
            round: 14,
            round_started_ms: 15,
            detail_pending: 16,
            detail_done: 17,
            detail_failed: 18,
            waiting: 19,
            detail_next: 20,
            ..Counters::default()
        };
        assert_eq!(Counters::decode(&counters.encode()), counters);
        // State written before the follow rounds were kept: 13 fields.
        let old_layout = &counters.encode()[..13 * 8];
        let old = Counters::decode(old_layout);
        assert_eq!((old.round, old.round_started_ms), (0, 0));
        assert_eq!(old.output_fingerprint, 13);
        // State written before detail pages existed: 15 fields.
        let old = Counters::decode(&counters.encode()[..15 * 8]);
        assert_eq!(
            (old.round_started_ms, old.detail_pending, old.detail_next),
            (15, 0, 0)
        );
    }

    #[test]
    fn short_or_garbled_values_decode_without_panicking() {
        for bytes in [&b""[..], b"\x01", b"\x00\x00\x00\x01\xff\xff", &[0xff; 40]] {
            let _ = Pending::decode(bytes);
            let _ = Done::decode(bytes);
            let _ = Failed::decode(bytes);
            let _ = Counters::decode(bytes);
        }
    }
}

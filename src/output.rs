//! The output file: rendering a page's items as JSON Lines or CSV, and the
//! append-only file whose committed length lives in the checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::extract::Item;
use crate::store::{Fingerprint, OutputIdentity};

/// How items are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line: `"page"` then one key per named group.
    Jsonl,
    /// A header line `page,field...`, then one row an item.
    Csv,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "jsonl" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// The default output file name in the state directory.
    pub fn default_file_name(self) -> &'static str {
        match self {
            Format::Jsonl => "items.jsonl",
            Format::Csv => "items.csv",
        }
    }
}

/// Renders one page's items in `format`, ready to append.
pub fn render(format: Format, page: u64, fields: &[String], items: &[Item]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * 128);
    for item in items {
        render_into(&mut out, format, page, fields, item);
    }
    out
}

/// Appends one item, as one JSON line or one CSV row, to `out`.
pub fn render_into<S: AsRef<str>>(
    out: &mut Vec<u8>,
    format: Format,
    page: u64,
    fields: &[String],
    item: &[S],
) {
    match format {
        Format::Jsonl => {
            out.extend_from_slice(b"{\"page\":");
            // Into the buffer directly: no String per item.
            let _ = write!(out, "{page}");
            for (name, value) in fields.iter().zip(item) {
                out.push(b',');
                write_json_string(out, name);
                out.push(b':');
                write_json_string(out, value.as_ref());
            }
            out.extend_from_slice(b"}\n");
        }
        Format::Csv => {
            let page = page.to_string();
            // A small buffer: the default 8 KiB is allocated and zeroed
            // for every item.
            let mut writer = csv::WriterBuilder::new()
                .has_headers(false)
                .buffer_capacity(256)
                .from_writer(&mut *out);
            let row = std::iter::once(page.as_str()).chain(item.iter().map(|value| value.as_ref()));
            // Writing to a Vec cannot fail.
            let _ = writer.write_record(row);
            let _ = writer.flush();
        }
    }
}

/// What an item with `[detail]` gets from its detail page.
#[derive(Debug, Clone, Copy)]
pub enum Merge<'a> {
    Values(&'a crate::store::DetailValues),
    /// The detail page failed for good (`on_failure = "write"`): the reason.
    Failed(&'a str),
}

/// Appends one item of a job with `[detail]`: the listing's `values`,
/// then the detail page's fields and lists (JSON arrays; in CSV, a cell
/// holding the array's JSON), or the failure's reason. In JSONL, a failed
/// item has no detail fields, only `detail_error`; in CSV every row has
/// every column.
pub fn render_merged(
    out: &mut Vec<u8>,
    format: Format,
    page: u64,
    fields: &[String],
    values: &[String],
    detail: &crate::config::detail::Detail,
    merge: Merge<'_>,
) {
    use crate::config::detail::{OnFailure, ERROR_FIELD};
    let list_json = |list: &[String]| serde_json::to_string(list).unwrap_or_default();
    match format {
        Format::Jsonl => {
            out.extend_from_slice(b"{\"page\":");
            let _ = write!(out, "{page}");
            let field = |out: &mut Vec<u8>, name: &str, value: &str| {
                out.push(b',');
                write_json_string(out, name);
                out.push(b':');
                write_json_string(out, value);
            };
            for (name, value) in fields.iter().zip(values) {
                field(out, name, value);
            }
            match merge {
                Merge::Values(got) => {
                    for (name, value) in detail.fields.iter().zip(&got.fields) {
                        field(out, name, value);
                    }
                    for (field, list) in detail.collect.iter().zip(&got.lists) {
                        out.push(b',');
                        write_json_string(out, &field.name);
                        out.push(b':');
                        let _ = serde_json::to_writer(&mut *out, list);
                    }
                }
                Merge::Failed(reason) => field(out, ERROR_FIELD, reason),
            }
            out.extend_from_slice(b"}\n");
        }
        Format::Csv => {
            let page = page.to_string();
            let mut row: Vec<String> = Vec::with_capacity(1 + fields.len() + detail.fields.len());
            row.push(page);
            row.extend(values.iter().cloned());
            match merge {
                Merge::Values(got) => {
                    row.extend(got.fields.iter().cloned());
                    row.extend(got.lists.iter().map(|l| list_json(l)));
                    if detail.on_failure == OnFailure::Write {
                        row.push(String::new());
                    }
                }
                Merge::Failed(reason) => {
                    row.extend(std::iter::repeat_n(
                        String::new(),
                        detail.fields.len() + detail.collect.len(),
                    ));
                    row.push(reason.to_string());
                }
            }
            let mut writer = csv::WriterBuilder::new()
                .has_headers(false)
                .buffer_capacity(256)
                .from_writer(&mut *out);
            let _ = writer.write_record(&row);
            let _ = writer.flush();
        }
    }
}

/// The CSV header line for `fields`.
pub fn csv_header(fields: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut writer = csv::Writer::from_writer(&mut out);
        let _ =
            writer.write_record(std::iter::once("page").chain(fields.iter().map(String::as_str)));
        let _ = writer.flush();
    }
    out
}

fn write_json_string(out: &mut Vec<u8>, value: &str) {
    // Most values need no escaping at all: copy them as they are.
    if !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json escapes exactly what JSON requires; writing into a Vec
    // cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// "WHAT PATH: reason", without Rust's "(os error N)".
fn io_error(error: std::io::Error, what: &str, path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} {}: {}",
        path.display(),
        crate::util::io_reason(&error)
    )
}

/// The append-only output file. Only the commit stage writes it.
///
/// Appended items are gathered in memory and written with one `write` per
/// commit group (or per [`WRITE_EVERY`] bytes), just before the `fsync`.
/// Before each write the open file is compared with what was written to
/// it: a file truncated, extended or deleted behind the crawl stops the
/// crawl ([`Damage`]) instead of taking items into a hole or into nowhere.
/// A file moved aside (renamed) is not damaged: it keeps taking items until
/// [`OutputFile::reopen`], as a daemon's log does until nginx's reopen.
#[derive(Debug)]
pub struct OutputFile {
    path: PathBuf,
    file: File,
    /// Appended, not yet written to the file.
    buffer: Vec<u8>,
    /// Bytes appended in all (written or buffered).
    len: u64,
    /// Bytes written to the file (what its length must be).
    written: u64,
    /// Bytes known to be on disk (synced, or there when the file was opened).
    synced: u64,
    /// The last bytes appended (up to [`Fingerprint::TAIL`]), for the
    /// checkpoint's fingerprint.
    tail: Vec<u8>,
}

/// Buffered bytes that are written out even before the next sync.
const WRITE_EVERY: usize = 1 << 20;

/// The output was changed behind the crawl: what was found. The crawl
/// stops writing; `pagecrawl repair` brings back what was lost.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Damage(pub String);

/// What [`OutputFile::open`] needs to know about the checkpoint.
pub struct Checkpoint<'a> {
    /// Bytes of the output the checkpoint covers.
    pub committed: u64,
    /// The fingerprint of the bytes it covers (unknown in older state).
    pub fingerprint: Fingerprint,
    pub format: Format,
    /// Whether a page's items are recorded as committed (done): bytes past
    /// the checkpoint may hold items of pages that are not, and nothing
    /// else a crash can leave.
    pub is_done: &'a dyn Fn(u64) -> Result<bool>,
}

/// The command that brings back what a damaged output lost.
pub const REPAIR_HINT: &str =
    "run `pagecrawl repair` to re-queue exactly the pages whose items are no longer in the file";

impl OutputFile {
    /// Opens the output (never through a symlink) and cuts it back to the
    /// checkpoint's length, dropping items written after the last
    /// checkpoint (their pages are fetched again), but only when the
    /// checkpoint proves those bytes uncommitted: whole items of pages not
    /// recorded as done, and at most a torn last line. Anything else (a
    /// shorter file, another file, items of done pages past the
    /// checkpoint) is refused with the file left as it is.
    pub fn open(path: &Path, checkpoint: &Checkpoint, header: Option<&[u8]>) -> Result<OutputFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let created = !parent.exists();
            std::fs::create_dir_all(parent)
                .map_err(|e| io_error(e, "cannot create the output folder", parent))?;
            if created {
                crate::util::sync_dir(parent.parent().unwrap_or(parent))?;
            }
        }
        let existed = path.symlink_metadata().is_ok();
        let mut file = open_no_follow(path)?;
        let metadata = file
            .metadata()
            .map_err(|e| io_error(e, "cannot read", path))?;
        if !metadata.is_file() {
            bail!("the output {} is not a regular file", path.display());
        }
        let actual = metadata.len();
        let committed = checkpoint.committed;
        if committed > 0 && !existed {
            return Err(Damage(format!(
                "the output file {} is missing; if you moved it aside to rotate it, run `pagecrawl reopen`; otherwise {REPAIR_HINT}",
                path.display()
            ))
            .into());
        }
        if actual < committed {
            return Err(Damage(format!(
                "the output file {} holds {actual} bytes but the checkpoint says {committed} were written: it was truncated outside pagecrawl; {REPAIR_HINT}",
                path.display()
            ))
            .into());
        }
        let tail = tail_before(&file, committed).map_err(|e| io_error(e, "cannot read", path))?;
        if committed > 0
            && !checkpoint.fingerprint.is_unknown()
            && Fingerprint::of(&tail) != checkpoint.fingerprint
        {
            return Err(Damage(format!(
                "the output file {} is not the file this crawl wrote (its bytes before the checkpoint's {committed} differ: \
                 it was replaced or rewritten); if you moved it aside to rotate it, run `pagecrawl reopen`; otherwise {REPAIR_HINT}",
                path.display()
            ))
            .into());
        }
        if actual > committed {
            check_tail(&mut file, path, committed, actual, checkpoint)?;
            log::info!(
                "dropping {} uncommitted bytes at the end of {} (their pages will be fetched again)",
                actual - committed,
                path.display()
            );
            file.set_len(committed)
                .map_err(|e| io_error(e, "cannot truncate", path))?;
            file.sync_data()
                .map_err(|e| io_error(e, "cannot sync", path))?;
        }
        if !existed {
            // The new file's name must survive a power loss as its items do.
            crate::util::sync_parent(path)?;
        }
        let mut output = OutputFile {
            path: path.to_path_buf(),
            file,
            buffer: Vec::new(),
            len: committed,
            written: committed,
            synced: committed,
            tail,
        };
        if committed == 0 {
            if let Some(header) = header {
                output.append(header)?;
                output.write_buffer()?;
            }
        }
        Ok(output)
    }

    /// The file as the file system names it now.
    pub fn identity(&self) -> Result<OutputIdentity> {
        let metadata = self
            .file
            .metadata()
            .map_err(|e| io_error(e, "cannot read", &self.path))?;
        Ok(OutputIdentity::of(&metadata))
    }

    /// The fingerprint of everything appended so far.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.tail)
    }

    /// Appends bytes (not yet durable: see [`OutputFile::sync`]).
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let keep = Fingerprint::TAIL
            .saturating_sub(bytes.len())
            .min(self.tail.len());
        self.tail.drain(..self.tail.len() - keep);
        self.tail
            .extend_from_slice(&bytes[bytes.len().saturating_sub(Fingerprint::TAIL)..]);
        self.buffer.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        if self.buffer.len() >= WRITE_EVERY {
            self.write_buffer()?;
        }
        Ok(())
    }

    /// Checks the open file is still what was written to it.
    pub fn verify(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let metadata = self
            .file
            .metadata()
            .map_err(|e| io_error(e, "cannot read", &self.path))?;
        let path = self.path.display();
        if metadata.nlink() == 0 {
            let how = if self.path.symlink_metadata().is_ok() {
                "replaced"
            } else {
                "deleted"
            };
            return Err(Damage(format!(
                "the output file {path} was {how} behind the crawl; stopped writing; {REPAIR_HINT}"
            ))
            .into());
        }
        if metadata.len() != self.written {
            let how = if metadata.len() < self.written {
                "truncated"
            } else {
                "written to"
            };
            return Err(Damage(format!(
                "the output file {path} was {how} behind the crawl ({} bytes, {} expected); stopped writing; {REPAIR_HINT}",
                metadata.len(),
                self.written
            ))
            .into());
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Err(damage) = self.verify() {
            self.buffer.clear();
            return Err(damage);
        }
        let written = self.file.write_all(&self.buffer);
        let count = self.buffer.len() as u64;
        self.buffer.clear();
        written.map_err(|e| io_error(e, "cannot write to the output file", &self.path))?;
        self.written += count;
        Ok(())
    }

    /// Makes everything appended so far durable (nothing to do when it is).
    pub fn sync(&mut self) -> Result<()> {
        if self.synced == self.len {
            return self.verify();
        }
        self.write_buffer()?;
        self.file
            .sync_data()
            .map_err(|e| io_error(e, "cannot sync the output file", &self.path))?;
        // Again after the write: a change that raced with it must be found
        // before the checkpoint records these bytes. (Writes append, so a
        // file cut just before one does not hide the cut under a hole.)
        self.verify()?;
        self.synced = self.len;
        Ok(())
    }

    /// Starts a new file at the output's path, after the old one was moved
    /// aside (renamed): the daemon convention for rotating a log. Returns
    /// `false` when the path still names the open file (nothing was moved;
    /// nothing to do). A file found at the path must be empty (logrotate's
    /// `create`); one with content is refused, not written into.
    pub fn reopen(&mut self, header: Option<&[u8]>) -> Result<bool> {
        self.sync()?;
        let current = self.identity()?;
        if let Ok(metadata) = self.path.symlink_metadata() {
            if OutputIdentity::of(&metadata) == current {
                return Ok(false);
            }
            if metadata.len() > 0 {
                bail!(
                    "cannot reopen the output: {} holds {} bytes that this crawl did not write; move it aside too, or remove it",
                    self.path.display(),
                    metadata.len()
                );
            }
        }
        let file = open_no_follow(&self.path)?;
        crate::util::sync_parent(&self.path)?;
        *self = OutputFile {
            path: self.path.clone(),
            file,
            buffer: Vec::new(),
            len: 0,
            written: 0,
            synced: 0,
            tail: Vec::new(),
        };
        if let Some(header) = header {
            self.append(header)?;
            self.sync()?;
        }
        Ok(true)
    }

    /// Bytes written, committed or not.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How the output file at `path` disagrees with the checkpoint, if it
/// does in a way a crash cannot explain (for `status`, which must not
/// change anything): missing, shorter, or another file.
pub fn mismatch(path: &Path, counters: &crate::store::Counters) -> Option<String> {
    if counters.output_len == 0 {
        return None;
    }
    let Ok(file) = File::open(path) else {
        return Some(format!("{} is missing", path.display()));
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if len < counters.output_len {
        return Some(format!(
            "{} holds {len} bytes, fewer than the {} committed",
            path.display(),
            counters.output_len
        ));
    }
    (!matches_checkpoint(&file, counters.output_len, counters.output_fingerprint())).then(|| {
        format!(
            "{} is not the file this crawl wrote (replaced, rewritten, or moved aside without `pagecrawl reopen`)",
            path.display()
        )
    })
}

/// Whether `file`'s bytes before `committed` have the checkpoint's
/// fingerprint (true when it is unknown, in older state).
pub fn matches_checkpoint(file: &File, committed: u64, fingerprint: Fingerprint) -> bool {
    fingerprint.is_unknown()
        || committed == 0
        || tail_before(file, committed).is_ok_and(|tail| Fingerprint::of(&tail) == fingerprint)
}

/// The up to [`Fingerprint::TAIL`] bytes of `file` before `len` (its
/// end, for `u64::MAX`).
pub(crate) fn tail_before(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let size = file.metadata()?.len().min(len);
    let start = size.saturating_sub(Fingerprint::TAIL as u64);
    let mut tail = vec![0; (size - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    Ok(tail)
}

/// Opens (creating if needed) a file for reading and writing without
/// following a symlink at its name: a link planted there cannot make the
/// crawl write someone else's file.
pub fn open_no_follow(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                anyhow::Error::from(crate::error::UserError::Usage(format!(
                    "the output {} is a symbolic link; pagecrawl does not write through links (set `output` to the real path)",
                    path.display()
                )))
            } else {
                io_error(e, "cannot open the output file", path)
            }
        })
}

/// Refuses to cut bytes past the checkpoint unless a crash explains them:
/// complete items of pages the checkpoint has not recorded as done, then
/// at most a torn last line (or the zeros a file system may leave where a
/// write was lost).
fn check_tail(
    file: &mut File,
    path: &Path,
    committed: u64,
    actual: u64,
    checkpoint: &Checkpoint,
) -> Result<()> {
    use std::io::{BufRead, BufReader, Read};
    file.seek(SeekFrom::Start(committed))
        .map_err(|e| io_error(e, "cannot seek in", path))?;
    let mut reader = BufReader::new(&mut *file).take(actual - committed);
    let mut line = Vec::new();
    let mut offset = committed;
    let refuse = |why: String| -> anyhow::Error {
        Damage(format!(
            "the output file {} holds {} bytes past the checkpoint ({committed} bytes), and {why}: a crash cannot explain that, so nothing was cut; {REPAIR_HINT}",
            path.display(),
            actual - committed
        ))
        .into()
    };
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_error(e, "cannot read", path))?;
        if read == 0 || !line.ends_with(b"\n") {
            return Ok(());
        }
        if line.iter().all(|&b| b == 0 || b == b'\n') {
            offset += read as u64;
            continue;
        }
        match page_of_line(checkpoint.format, &line) {
            Some(page) if !(checkpoint.is_done)(page)? => {}
            Some(page) => {
                return Err(refuse(format!(
                    "the line at byte {offset} is an item of page {page}, which the checkpoint records as done"
                )))
            }
            None => {
                return Err(refuse(format!(
                    "the line at byte {offset} is not an item pagecrawl wrote"
                )))
            }
        }
        offset += read as u64;
    }
}

/// The page of one output line (a JSON line, or a CSV row that holds no
/// line break), if it is an item line.
pub fn page_of_line(format: Format, line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let digits = match format {
        Format::Jsonl => {
            if !line.ends_with(b"}") {
                return None;
            }
            line.strip_prefix(b"{\"page\":")?
        }
        Format::Csv => line,
    };
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let separator = digits.get(end).copied();
    let ok = match format {
        Format::Jsonl => separator == Some(b',') || separator == Some(b'}'),
        Format::Csv => separator == Some(b',') || separator.is_none(),
    };
    if end == 0 || !ok {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<String> {
        vec!["url".into(), "title".into()]
    }

    #[test]
    fn jsonl_lines_are_valid_json_in_field_order() {
        let items = vec![vec!["/a\"b".to_string(), "标题\n二".to_string()]];
        let text = String::from_utf8(render(Format::Jsonl, 7, &fields(), &items)).unwrap();
        assert_eq!(
            text,
            "{\"page\":7,\"url\":\"/a\\\"b\",\"title\":\"标题\\n二\"}\n"
        );
        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(value["title"], "标题\n二");
    }

    #[test]
    fn csv_rows_quote_what_needs_it() {
        let items = vec![vec!["/a,b".to_string(), "say \"hi\"".to_string()]];
        let text = String::from_utf8(render(Format::Csv, 3, &fields(), &items)).unwrap();
        assert_eq!(text, "3,\"/a,b\",\"say \"\"hi\"\"\"\n");
        assert_eq!(csv_header(&fields()), b"page,url,title\n");
    }

    #[test]
    fn csv_rows_longer_than_the_writer_buffer_come_out_whole() {
        let long = "标题, \"quoted\"\n".repeat(100);
        let items = vec![vec![long.clone(), "x".repeat(700)]];
        let bytes = render(Format::Csv, 9, &fields(), &items);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&bytes[..]);
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].iter().collect::<Vec<_>>(),
            vec!["9", &long, &"x".repeat(700)]
        );
    }

    fn never_done(_: u64) -> Result<bool> {
        Ok(false)
    }

    fn checkpoint(committed: u64) -> Checkpoint<'static> {
        Checkpoint {
            committed,
            fingerprint: Fingerprint::default(),
            format: Format::Jsonl,
            is_done: &never_done,
        }
    }

    #[test]
    fn open_truncates_to_the_checkpoint_and_refuses_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, b"committed\npartial").unwrap();
        let mut output = OutputFile::open(&path, &checkpoint(10), None).unwrap();
        output.append(b"next\n").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"committed\n",
            "appended bytes wait in memory for the sync"
        );
        output.sync().unwrap();
        drop(output);
        assert_eq!(std::fs::read(&path).unwrap(), b"committed\nnext\n");
        let err = OutputFile::open(&path, &checkpoint(100), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truncated outside pagecrawl") && err.contains("pagecrawl repair"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"committed\nnext\n");
    }

    #[test]
    fn only_bytes_a_crash_can_explain_are_cut_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let committed = b"{\"page\":1,\"a\":\"x\"}\n";
        let tail = b"{\"page\":2,\"a\":\"y\"}\n{\"page\":3,\"a\":\"z\"}\n{\"page\":3,\"a";
        let write = |extra: &[u8]| {
            let mut bytes = committed.to_vec();
            bytes.extend_from_slice(extra);
            std::fs::write(&path, &bytes).unwrap();
            bytes
        };
        let len = committed.len() as u64;
        // Items of pages not done, then a torn line: cut.
        write(tail);
        OutputFile::open(&path, &checkpoint(len), None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), committed);
        // Zeros where a write was lost: cut too.
        write(&[0u8; 100]);
        OutputFile::open(&path, &checkpoint(len), None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), committed);
        // An item of a page recorded as done: refused, file kept.
        let kept = write(tail);
        let page_2_done = |page: u64| Ok(page == 2);
        let refused = OutputFile::open(
            &path,
            &Checkpoint {
                is_done: &page_2_done,
                ..checkpoint(len)
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains("page 2, which the checkpoint records as done"),
            "{refused}"
        );
        assert!(refused.contains("pagecrawl repair"), "{refused}");
        assert_eq!(std::fs::read(&path).unwrap(), kept);
        // A line pagecrawl never wrote: refused, file kept.
        let kept = write(b"not an item\n");
        let refused = OutputFile::open(&path, &checkpoint(len), None)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("is not an item pagecrawl wrote"),
            "{refused}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), kept);
    }

    #[test]
    fn another_file_at_the_output_path_is_refused_and_a_copy_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut output = OutputFile::open(&path, &checkpoint(0), None).unwrap();
        output.append(b"{\"page\":1,\"a\":\"x\"}\n").unwrap();
        output.sync().unwrap();
        let written = Checkpoint {
            fingerprint: output.fingerprint(),
            ..checkpoint(output.len())
        };
        drop(output);
        // A copy (new inode, same bytes), as a restored backup is: accepted.
        let copy = dir.path().join("copy");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::rename(&copy, &path).unwrap();
        OutputFile::open(&path, &written, None).unwrap();
        // Other bytes of the same length: refused, kept.
        std::fs::write(&path, b"{\"page\":1,\"a\":\"y\"}\n").unwrap();
        let refused = OutputFile::open(&path, &written, None)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("is not the file this crawl wrote") && refused.contains("reopen"),
            "{refused}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"page\":1,\"a\":\"y\"}\n");
        // Missing: refused, named.
        std::fs::remove_file(&path).unwrap();
        let missing = OutputFile::open(&path, &written, None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("is missing"), "{missing}");
    }

    #[test]
    fn the_fingerprint_follows_the_last_bytes_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut output = OutputFile::open(&path, &checkpoint(0), None).unwrap();
        let mut all = Vec::new();
        for size in [10usize, 300, 1, 255, 256, 700, 3] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            output.append(&bytes).unwrap();
            all.extend_from_slice(&bytes);
            assert_eq!(
                output.fingerprint(),
                Fingerprint::of(&all),
                "after {size} bytes"
            );
        }
        output.sync().unwrap();
        let reopened = OutputFile::open(
            &path,
            &Checkpoint {
                fingerprint: Fingerprint::of(&all),
                ..checkpoint(all.len() as u64)
            },
            None,
        )
        .unwrap();
        assert_eq!(
            reopened.fingerprint(),
            Fingerprint::of(&all),
            "read back at open"
        );
    }

    #[test]
    fn changes_behind_the_open_file_are_found_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut output = OutputFile::open(&path, &checkpoint(0), None).unwrap();
        output.append(b"0123456789\n").unwrap();
        output.sync().unwrap();
        output.verify().unwrap();
        // Truncated.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(3)
            .unwrap();
        output.append(b"more\n").unwrap();
        let err = output.sync().unwrap_err();
        assert!(err.downcast_ref::<Damage>().is_some(), "{err}");
        assert!(
            err.to_string().contains("was truncated behind the crawl"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"012",
            "nothing written after the damage"
        );
        // Written into by someone else.
        let mut output = OutputFile::open(&path, &checkpoint(3), None).unwrap();
        std::fs::write(&path, b"0123").unwrap();
        output.append(b"x").unwrap();
        assert!(output
            .sync()
            .unwrap_err()
            .to_string()
            .contains("was written to behind the crawl"));
        // Deleted.
        let mut output = OutputFile::open(&path, &checkpoint(4), None).unwrap();
        std::fs::remove_file(&path).unwrap();
        output.append(b"x").unwrap();
        assert!(output
            .sync()
            .unwrap_err()
            .to_string()
            .contains("was deleted behind the crawl"));
    }

    #[test]
    fn a_moved_aside_output_is_reopened_as_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let mut output = OutputFile::open(&path, &checkpoint(0), Some(b"page,a\n")).unwrap();
        output.append(b"1,x\n").unwrap();
        output.sync().unwrap();
        assert!(
            !output.reopen(Some(b"page,a\n")).unwrap(),
            "not moved: nothing to do"
        );
        let aside = dir.path().join("out.csv.1");
        std::fs::rename(&path, &aside).unwrap();
        output.append(b"2,y\n").unwrap();
        output.verify().unwrap();
        assert!(output.reopen(Some(b"page,a\n")).unwrap());
        output.append(b"3,z\n").unwrap();
        output.sync().unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), b"page,a\n1,x\n2,y\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"page,a\n3,z\n");
        assert_eq!(output.len(), 11);
        // A file with content at the path is not written into.
        std::fs::rename(&path, dir.path().join("out.csv.2")).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        assert!(output
            .reopen(None)
            .unwrap_err()
            .to_string()
            .contains("did not write"));
    }

    #[test]
    fn status_tells_a_file_that_is_not_the_checkpoints() {
        use crate::store::Counters;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let bytes = b"{\"page\":1,\"a\":\"x\"}\n{\"page\":2,\"a\":\"y\"}\n";
        let counters = Counters {
            output_len: bytes.len() as u64,
            output_fingerprint: Fingerprint::of(bytes).0,
            ..Counters::default()
        };
        assert!(
            mismatch(&path, &Counters::default()).is_none(),
            "nothing committed"
        );
        assert!(mismatch(&path, &counters).unwrap().contains("is missing"));
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(mismatch(&path, &counters)
            .unwrap()
            .contains("fewer than the 38 committed"));
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(mismatch(&path, &counters), None);
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"{\"page\":3");
        std::fs::write(&path, &longer).unwrap();
        assert_eq!(
            mismatch(&path, &counters),
            None,
            "a torn tail past the checkpoint is a crash's"
        );
        std::fs::write(
            &path,
            b"{\"page\":1,\"a\":\"x\"}\n{\"page\":2,\"a\":\"z\"}\n",
        )
        .unwrap();
        assert!(mismatch(&path, &counters)
            .unwrap()
            .contains("is not the file this crawl wrote"));
        let file = File::open(&path).unwrap();
        assert!(!matches_checkpoint(
            &file,
            counters.output_len,
            counters.output_fingerprint()
        ));
        assert!(
            matches_checkpoint(&file, counters.output_len, Fingerprint::default()),
            "unknown: older state"
        );
        assert!(
            matches_checkpoint(&file, 0, counters.output_fingerprint()),
            "nothing committed"
        );
    }

    #[test]
    fn an_empty_file_at_the_path_is_taken_by_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut output = OutputFile::open(&path, &checkpoint(0), None).unwrap();
        output.append(b"1\n").unwrap();
        output.sync().unwrap();
        std::fs::rename(&path, dir.path().join("out.jsonl.1")).unwrap();
        // logrotate's `create` leaves an empty file there.
        std::fs::write(&path, b"").unwrap();
        assert!(output.reopen(None).unwrap());
        output.append(b"2\n").unwrap();
        output.sync().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"2\n");
    }

    #[test]
    fn the_output_is_never_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let path = dir.path().join("out.jsonl");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = OutputFile::open(&path, &checkpoint(0), None).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert_eq!(crate::error::exit_for(&err), crate::exit_code::Exit::Usage);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }

    #[test]
    fn page_numbers_are_read_from_item_lines_only() {
        assert_eq!(
            page_of_line(Format::Jsonl, b"{\"page\":42,\"a\":\"b\"}\n"),
            Some(42)
        );
        assert_eq!(page_of_line(Format::Jsonl, b"{\"page\":42}"), Some(42));
        assert_eq!(page_of_line(Format::Jsonl, b"{\"page\":42,\"a\":"), None);
        assert_eq!(page_of_line(Format::Jsonl, b"{\"page\":x}"), None);
        assert_eq!(page_of_line(Format::Jsonl, b"{\"page\":4x2}"), None);
        assert_eq!(page_of_line(Format::Csv, b"7,a,b\n"), Some(7));
        assert_eq!(page_of_line(Format::Csv, b"7\n"), Some(7));
        assert_eq!(page_of_line(Format::Csv, b"page,a\n"), None);
        assert_eq!(page_of_line(Format::Csv, b"7a,b\n"), None);
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use crate::config::Config;
    use crate::store::DetailValues;

    fn config(on_failure: &str) -> Config {
        Config::parse(
            &format!(
                "url = \"http://h/{{page}}\"\npages = \"1\"\npattern = '(?P<a>a)(?P<b>b)'\n[detail]\nlink = \"a\"\npattern = '(?P<c>c)(?P<d>d)'\ncollect = {{ e = '(?P<e>e)', f = '(?P<f>f)' }}\non_failure = \"{on_failure}\"\n"
            ),
            "t.toml".as_ref(),
        )
        .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Whatever the values, a merged item is one JSON object with every
        /// field once (lists as arrays), or one CSV record with every
        /// column; a failed one carries its reason instead.
        #[test]
        fn merged_items_hold_every_field_once_in_both_formats(
            values in proptest::collection::vec("\\PC{0,12}|[\"\\\\,\n\r]{0,3}", 2),
            fields in proptest::collection::vec("\\PC{0,12}|[\"\\\\,\n]{0,3}", 2),
            lists in proptest::collection::vec(proptest::collection::vec("\\PC{0,6}|[\",\n]", 0..4), 2),
            reason in "\\PC{0,20}",
            page in 1u64..u64::MAX,
        ) {
            for on_failure in ["wait", "write"] {
                let config = config(on_failure);
                let detail = config.detail.as_ref().unwrap();
                let got = DetailValues { fields: fields.clone(), lists: lists.clone() };
                let mut merges = vec![Merge::Values(&got)];
                if on_failure == "write" {
                    merges.push(Merge::Failed(&reason));
                }
                for merge in merges {
                    let mut line = Vec::new();
                    render_merged(&mut line, Format::Jsonl, page, &config.fields, &values, detail, merge);
                    proptest::prop_assert!(line.ends_with(b"\n") && line.iter().filter(|&&b| b == b'\n').count() == 1);
                    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&line).unwrap();
                    proptest::prop_assert_eq!(object["page"].as_u64(), Some(page));
                    proptest::prop_assert_eq!(object["a"].as_str(), Some(values[0].as_str()));
                    proptest::prop_assert_eq!(object["b"].as_str(), Some(values[1].as_str()));
                    match merge {
                        Merge::Values(_) => {
                            proptest::prop_assert_eq!(object.len(), 7);
                            proptest::prop_assert_eq!(object["c"].as_str(), Some(fields[0].as_str()));
                            proptest::prop_assert_eq!(object["d"].as_str(), Some(fields[1].as_str()));
                            let e: Vec<String> = serde_json::from_value(object["e"].clone()).unwrap();
                            let f: Vec<String> = serde_json::from_value(object["f"].clone()).unwrap();
                            proptest::prop_assert_eq!(&e, &lists[0]);
                            proptest::prop_assert_eq!(&f, &lists[1]);
                        }
                        Merge::Failed(why) => {
                            proptest::prop_assert_eq!(object.len(), 4);
                            proptest::prop_assert_eq!(object["detail_error"].as_str(), Some(why));
                        }
                    }
                    let mut row = Vec::new();
                    render_merged(&mut row, Format::Csv, page, &config.fields, &values, detail, merge);
                    let header = csv_header(&config.columns());
                    let mut both = header.clone();
                    both.extend_from_slice(&row);
                    let mut reader = csv::Reader::from_reader(&both[..]);
                    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
                    proptest::prop_assert_eq!(records.len(), 1);
                    let record = &records[0];
                    proptest::prop_assert_eq!(record.len(), 1 + config.columns().len());
                    proptest::prop_assert_eq!(&record[1], values[0].as_str());
                    if let Merge::Values(_) = merge {
                        let e: Vec<String> = serde_json::from_str(&record[5]).unwrap();
                        proptest::prop_assert_eq!(&e, &lists[0]);
                    }
                }
            }
        }
    }
}

//! The output file: rendering a page's items as JSON Lines or CSV, and the
//! append-only file whose committed length lives in the checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::extract::Item;

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
#[derive(Debug)]
pub struct OutputFile {
    path: PathBuf,
    file: File,
    /// Appended, not yet written to the file.
    buffer: Vec<u8>,
    /// Bytes appended in all (written or buffered).
    len: u64,
    /// Bytes known to be on disk (synced, or there when the file was opened).
    synced: u64,
}

/// Buffered bytes that are written out even before the next sync.
const WRITE_EVERY: usize = 1 << 20;

impl OutputFile {
    /// Opens the output and cuts it back to `committed` bytes, dropping any
    /// items written after the last checkpoint (they will be written again).
    /// A file shorter than the checkpoint means someone else changed it: that
    /// is refused rather than silently losing items.
    pub fn open(path: &Path, committed: u64, header: Option<&[u8]>) -> Result<OutputFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_error(e, "cannot create the output folder", parent))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error(e, "cannot open the output file", path))?;
        let actual = file
            .metadata()
            .map_err(|e| io_error(e, "cannot read", path))?
            .len();
        if actual < committed {
            bail!(
                "the output file {} holds {actual} bytes but the checkpoint says {committed} were written; \
                 it was truncated or replaced outside pagecrawl (restore it, or start afresh with a new --state-dir)",
                path.display()
            );
        }
        if actual > committed {
            log::info!(
                "dropping {} uncommitted bytes at the end of {} (their pages will be fetched again)",
                actual - committed,
                path.display()
            );
            file.set_len(committed)
                .map_err(|e| io_error(e, "cannot truncate", path))?;
        }
        file.seek(SeekFrom::Start(committed))
            .map_err(|e| io_error(e, "cannot seek in", path))?;
        let mut output = OutputFile {
            path: path.to_path_buf(),
            file,
            buffer: Vec::new(),
            len: committed,
            synced: committed,
        };
        if committed == 0 {
            if let Some(header) = header {
                output.append(header)?;
                output.write_buffer()?;
            }
        }
        Ok(output)
    }

    /// Appends bytes (not yet durable: see [`OutputFile::sync`]).
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        if self.buffer.len() >= WRITE_EVERY {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<()> {
        let written = self.file.write_all(&self.buffer);
        self.buffer.clear();
        written.map_err(|e| io_error(e, "cannot write to the output file", &self.path))
    }

    /// Makes everything appended so far durable (nothing to do when it is).
    pub fn sync(&mut self) -> Result<()> {
        if self.synced == self.len {
            return Ok(());
        }
        self.write_buffer()?;
        self.file
            .sync_data()
            .map_err(|e| io_error(e, "cannot sync the output file", &self.path))?;
        self.synced = self.len;
        Ok(())
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

    #[test]
    fn open_truncates_to_the_checkpoint_and_refuses_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, b"committed\npartial").unwrap();
        let mut output = OutputFile::open(&path, 10, None).unwrap();
        output.append(b"next\n").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"committed\n",
            "appended bytes wait in memory for the sync"
        );
        output.sync().unwrap();
        drop(output);
        assert_eq!(std::fs::read(&path).unwrap(), b"committed\nnext\n");
        let err = OutputFile::open(&path, 100, None).unwrap_err().to_string();
        assert!(err.contains("truncated or replaced"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"committed\nnext\n");
    }
}

//! `pagecrawl export`: the committed part of the output, as JSON Lines or
//! CSV, in page order. Bytes past the checkpoint (a crawl in progress or cut
//! short) are never exported.
//!
//! The crawl writes pages in commit order, and the items of one page are
//! contiguous. So one pass over the committed bytes builds an index of runs
//! (page, byte start, byte end), one per run of consecutive items of one
//! page; the index is sorted by page (stably: a page crawled twice keeps
//! both runs, in file order), and each run is then copied with a seek,
//! converted a line or record at a time when the format changes. Memory is
//! one index entry per run, whatever the number or size of the items.

use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::FormatArg;
use crate::control::Backend;
use crate::exit_code::Exit;
use crate::output::{csv_header, page_of_line, render_into, Format};

pub fn command(dir: &Path, format: FormatArg, destination: Option<&Path>) -> Result<Exit> {
    let mut backend = Backend::connect(dir)?;
    if let Some(why) = backend.status()?.damaged {
        return Err(crate::output::Damage(format!(
            "the output is damaged ({why}); exporting it would leave items out; {}",
            crate::output::REPAIR_HINT
        ))
        .into());
    }
    let job = backend.export_info()?;
    let open = || {
        std::fs::File::open(&job.output)
            .with_context(|| format!("cannot open the output {}", job.output.display()))
    };
    let from = Format::from_name(&job.format).unwrap_or(Format::Jsonl);
    let to = match format {
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Csv => Format::Csv,
    };
    let runs = index_runs(
        BufReader::with_capacity(64 << 10, open()?.take(job.committed)),
        from,
    )?;
    let committed = Runs::new(open()?, runs);
    write_out(destination, |mut out| {
        copy(committed, &mut out, from, to, &job.fields)
    })?;
    Ok(Exit::Success)
}

/// `export --store URL --job NAME`: the job's items from a PostgreSQL
/// store, in page order, from any machine.
pub fn command_store(
    url: &str,
    job: &str,
    format: FormatArg,
    destination: Option<&Path>,
) -> Result<Exit> {
    let mut remote = crate::store::postgres::read::open_job(url, job)?;
    let detail = remote.detail()?;
    let fields = remote.identity.fields.clone();
    let to = match format {
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Csv => Format::Csv,
    };
    write_out(destination, |mut out| {
        crate::store::postgres::export::export(
            &mut remote.client,
            remote.id,
            &fields,
            detail.as_ref(),
            to,
            &mut out,
        )
        .map(|_| ())
    })?;
    Ok(Exit::Success)
}

/// Runs `write` into the file at `destination` (saying how many bytes it
/// wrote), or into standard output, where a reader that went away (`|
/// head`) ends the export without an error.
fn write_out(
    destination: Option<&Path>,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    match destination {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut out = Counted {
                inner: BufWriter::with_capacity(64 << 10, file),
                bytes: 0,
            };
            write(&mut out)
                .and_then(|()| Ok(out.flush()?))
                .with_context(|| format!("cannot export to {}", path.display()))?;
            eprintln!("pagecrawl: wrote {} bytes to {}", out.bytes, path.display());
        }
        None => {
            let mut stdout = BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
            let written = write(&mut stdout).and_then(|()| Ok(stdout.flush()?));
            if let Err(e) = written {
                let broken_pipe = e.chain().any(|cause| {
                    cause
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                });
                if !broken_pipe {
                    return Err(e).context("cannot write to standard output");
                }
            }
        }
    }
    Ok(())
}

/// Counts the bytes written through it.
struct Counted<W: Write> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One run of consecutive items of one page: bytes `start..end` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    page: u64,
    start: u64,
    end: u64,
}

/// The runs of the committed bytes, sorted by page (stable: a page's runs
/// stay in file order), and where the CSV header ends (0 for JSON Lines).
#[derive(Debug, PartialEq, Eq)]
struct Index {
    header_end: u64,
    runs: Vec<Run>,
}

/// One pass over `input` (the committed bytes): the runs of items of one
/// page. A line that is not an item (an empty line) joins the run before.
fn index_runs(input: impl BufRead, format: Format) -> Result<Index> {
    let mut runs: Vec<Run> = Vec::new();
    let mut push = |page: Option<u64>, start: u64, end: u64| match (runs.last_mut(), page) {
        (Some(last), Some(page)) if last.page == page && last.end == start => last.end = end,
        (Some(last), None) if last.end == start => last.end = end,
        (_, page) => runs.push(Run {
            page: page.unwrap_or(0),
            start,
            end,
        }),
    };
    let mut header_end = 0;
    match format {
        Format::Jsonl => {
            let mut input = input;
            let mut line = Vec::new();
            let mut offset = 0u64;
            loop {
                line.clear();
                let read = input.read_until(b'\n', &mut line)? as u64;
                if read == 0 {
                    break;
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                let page = if text.is_empty() {
                    None
                } else {
                    Some(
                        page_of_line(Format::Jsonl, text)
                            .with_context(|| format!("the line at byte {offset} is not an item"))?,
                    )
                };
                push(page, offset, offset + read);
                offset += read;
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(input);
            let mut record = csv::ByteRecord::new();
            let mut first = true;
            loop {
                let start = reader.position().byte();
                if !reader
                    .read_byte_record(&mut record)
                    .context("the CSV output is malformed")?
                {
                    break;
                }
                let end = reader.position().byte();
                if first {
                    first = false;
                    header_end = end;
                    continue;
                }
                let page = std::str::from_utf8(record.get(0).unwrap_or_default())
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .with_context(|| format!("the CSV record at byte {start} is not an item"))?;
                push(Some(page), start, end);
            }
        }
    }
    runs.sort_by_key(|run| run.page);
    Ok(Index { header_end, runs })
}

/// The committed bytes in page order: the CSV header, then each run.
struct Runs<F> {
    file: F,
    index: Index,
}

impl<F: Read + Seek> Runs<F> {
    fn new(file: F, index: Index) -> Runs<F> {
        Runs { file, index }
    }

    /// Each run in turn (preceded by the header when `with_header`), as a
    /// reader of its bytes.
    fn for_each(
        &mut self,
        with_header: bool,
        mut each: impl FnMut(&mut dyn BufRead) -> Result<()>,
    ) -> Result<()> {
        let header = Run {
            page: 0,
            start: 0,
            end: self.index.header_end,
        };
        let runs = with_header
            .then_some(header)
            .into_iter()
            .chain(self.index.runs.iter().copied());
        for run in runs {
            if run.end == run.start {
                continue;
            }
            self.file.seek(SeekFrom::Start(run.start))?;
            let mut bytes =
                BufReader::with_capacity(64 << 10, (&mut self.file).take(run.end - run.start));
            each(&mut bytes)?;
        }
        Ok(())
    }
}

/// Writes the committed output to `out` in page order, as it is or
/// re-rendered in the other format, one line or record at a time.
fn copy<F: Read + Seek>(
    mut input: Runs<F>,
    out: &mut impl Write,
    from: Format,
    to: Format,
    fields: &[String],
) -> Result<()> {
    if from == to {
        return input.for_each(true, |run| {
            std::io::copy(run, out)?;
            Ok(())
        });
    }
    if to == Format::Csv {
        out.write_all(&csv_header(fields))?;
    }
    input.for_each(false, |run| convert(run, out, from, to, fields))
}

/// Re-renders the items of `input` (no CSV header) in the other format.
fn convert(
    mut input: impl BufRead,
    out: &mut impl Write,
    from: Format,
    to: Format,
    fields: &[String],
) -> Result<()> {
    let mut rendered = Vec::new();
    let mut emit = |out: &mut dyn Write, page: u64, values: &[String]| -> Result<()> {
        rendered.clear();
        render_into(&mut rendered, to, page, fields, values);
        out.write_all(&rendered)?;
        Ok(())
    };
    match from {
        Format::Jsonl => {
            let mut line = Vec::new();
            let mut number = 0;
            loop {
                line.clear();
                if input.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                number += 1;
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                if text.is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_slice(text)
                    .with_context(|| format!("output line {number} is not JSON"))?;
                let page = value["page"].as_u64().unwrap_or(0);
                let values: Vec<String> = fields
                    .iter()
                    .map(|f| value[f].as_str().unwrap_or_default().to_string())
                    .collect();
                emit(out, page, &values)?;
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(input);
            let mut record = csv::StringRecord::new();
            while reader
                .read_record(&mut record)
                .context("the CSV output is malformed")?
            {
                let page = record.get(0).and_then(|p| p.parse().ok()).unwrap_or(0);
                let values: Vec<String> = (1..=fields.len())
                    .map(|i| record.get(i).unwrap_or_default().to_string())
                    .collect();
                emit(out, page, &values)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render;

    fn convert(bytes: &[u8], from: Format, to: Format, fields: &[String]) -> Vec<u8> {
        let index = index_runs(bytes, from).unwrap();
        let mut out = Vec::new();
        copy(
            Runs::new(std::io::Cursor::new(bytes), index),
            &mut out,
            from,
            to,
            fields,
        )
        .unwrap();
        out
    }

    #[test]
    fn runs_of_one_page_are_indexed_and_sorted_stably_by_page() {
        let fields = vec!["url".to_string()];
        let one = |page, url: &str| render(Format::Jsonl, page, &fields, &[vec![url.to_string()]]);
        let mut jsonl = Vec::new();
        for (page, url) in [(3, "a"), (3, "b"), (1, "c"), (3, "d"), (2, "e")] {
            jsonl.extend(one(page, url));
        }
        let index = index_runs(&jsonl[..], Format::Jsonl).unwrap();
        let pages: Vec<(u64, u64)> = index
            .runs
            .iter()
            .map(|r| (r.page, r.end - r.start))
            .collect();
        let line = one(1, "a").len() as u64;
        assert_eq!(pages, [(1, line), (2, line), (3, 2 * line), (3, line)]);
        let mut expected = Vec::new();
        for (page, url) in [(1, "c"), (2, "e"), (3, "a"), (3, "b"), (3, "d")] {
            expected.extend(one(page, url));
        }
        assert_eq!(
            convert(&jsonl, Format::Jsonl, Format::Jsonl, &fields),
            expected
        );
    }

    #[test]
    fn csv_runs_hold_quoted_newlines_and_come_out_in_page_order() {
        let fields = vec!["title".to_string()];
        let mut csv = csv_header(&fields);
        csv.extend(render(Format::Csv, 2, &fields, &[vec!["x\n1,0".into()]]));
        csv.extend(render(Format::Csv, 1, &fields, &[vec!["y\n2,".into()]]));
        let mut expected = csv_header(&fields);
        expected.extend(render(Format::Csv, 1, &fields, &[vec!["y\n2,".into()]]));
        expected.extend(render(Format::Csv, 2, &fields, &[vec!["x\n1,0".into()]]));
        assert_eq!(convert(&csv, Format::Csv, Format::Csv, &fields), expected);
        let mut jsonl = render(Format::Jsonl, 1, &fields, &[vec!["y\n2,".into()]]);
        jsonl.extend(render(Format::Jsonl, 2, &fields, &[vec!["x\n1,0".into()]]));
        assert_eq!(convert(&csv, Format::Csv, Format::Jsonl, &fields), jsonl);
    }

    #[test]
    fn jsonl_and_csv_convert_both_ways() {
        let fields = vec!["url".to_string(), "title".to_string()];
        let items = vec![
            vec!["/a".to_string(), "x, \"y\"".to_string()],
            vec!["/b".to_string(), "标题\nline".to_string()],
        ];
        let jsonl = render(Format::Jsonl, 4, &fields, &items);
        let csv = convert(&jsonl, Format::Jsonl, Format::Csv, &fields);
        let mut expected_csv = csv_header(&fields);
        expected_csv.extend(render(Format::Csv, 4, &fields, &items));
        assert_eq!(csv, expected_csv);
        assert_eq!(convert(&csv, Format::Csv, Format::Jsonl, &fields), jsonl);
        assert_eq!(
            convert(&jsonl, Format::Jsonl, Format::Jsonl, &fields),
            jsonl
        );
    }
}

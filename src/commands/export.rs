//! `pagecrawl export`: the committed part of the output, as JSON Lines or
//! CSV. Bytes past the checkpoint (a crawl in progress or cut short) are
//! never exported. The output is streamed, a line or record at a time, so
//! memory stays flat whatever its size.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::FormatArg;
use crate::control::Backend;
use crate::exit_code::Exit;
use crate::output::{csv_header, render_into, Format};

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
    let file = std::fs::File::open(&job.output)
        .with_context(|| format!("cannot open the output {}", job.output.display()))?;
    let committed = BufReader::with_capacity(64 << 10, file.take(job.committed));
    let from = Format::from_name(&job.format).unwrap_or(Format::Jsonl);
    let to = match format {
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Csv => Format::Csv,
    };
    match destination {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut out = Counted {
                inner: BufWriter::with_capacity(64 << 10, file),
                bytes: 0,
            };
            copy(committed, &mut out, from, to, &job.fields)
                .and_then(|()| Ok(out.flush()?))
                .with_context(|| format!("cannot export to {}", path.display()))?;
            eprintln!("pagecrawl: wrote {} bytes to {}", out.bytes, path.display());
        }
        None => {
            let mut stdout = BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
            let written = copy(committed, &mut stdout, from, to, &job.fields)
                .and_then(|()| Ok(stdout.flush()?));
            if let Err(e) = written {
                match e.downcast_ref::<std::io::Error>() {
                    Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {}
                    _ => return Err(e).context("cannot write to standard output"),
                }
            }
        }
    }
    Ok(Exit::Success)
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

/// Writes the committed output to `out`, as it is or re-rendered in the
/// other format, one line or record at a time.
fn copy(
    mut input: impl BufRead,
    out: &mut impl Write,
    from: Format,
    to: Format,
    fields: &[String],
) -> Result<()> {
    if from == to {
        std::io::copy(&mut input, out)?;
        return Ok(());
    }
    if to == Format::Csv {
        out.write_all(&csv_header(fields))?;
    }
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
            let mut reader = csv::Reader::from_reader(input);
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
        let mut out = Vec::new();
        copy(bytes, &mut out, from, to, fields).unwrap();
        out
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

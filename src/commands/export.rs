//! `pagecrawl export`: the committed part of the output, as JSON Lines or
//! CSV. Bytes past the checkpoint (a crawl in progress or cut short) are
//! never exported.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::FormatArg;
use crate::control::Backend;
use crate::exit_code::Exit;
use crate::output::{csv_header, render, Format};

pub fn command(dir: &Path, format: FormatArg, destination: Option<&Path>) -> Result<Exit> {
    let backend = Backend::connect(dir)?;
    if let Some(why) = backend.status()?.damaged {
        return Err(crate::output::Damage(format!(
            "the output is damaged ({why}); exporting it would leave items out; {}",
            crate::output::REPAIR_HINT
        ))
        .into());
    }
    let job = backend.export_info()?;
    let mut bytes = Vec::new();
    std::fs::File::open(&job.output)
        .with_context(|| format!("cannot open the output {}", job.output.display()))?
        .take(job.committed)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", job.output.display()))?;
    let from = Format::from_name(&job.format).unwrap_or(Format::Jsonl);
    let to = match format {
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Csv => Format::Csv,
    };
    let converted = if from == to {
        bytes
    } else {
        convert(&bytes, from, to, &job.fields)?
    };
    match destination {
        Some(path) => {
            std::fs::write(path, &converted)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "pagecrawl: wrote {} bytes to {}",
                converted.len(),
                path.display()
            );
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout.write_all(&converted).and_then(|()| stdout.flush()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e).context("cannot write to standard output");
                }
            }
        }
    }
    Ok(Exit::Success)
}

/// Re-renders committed output in the other format.
fn convert(bytes: &[u8], from: Format, to: Format, fields: &[String]) -> Result<Vec<u8>> {
    let mut out = if to == Format::Csv {
        csv_header(fields)
    } else {
        Vec::new()
    };
    let mut emit = |page: u64, values: Vec<String>| out.extend(render(to, page, fields, &[values]));
    match from {
        Format::Jsonl => {
            for (number, line) in bytes
                .split(|&b| b == b'\n')
                .enumerate()
                .filter(|(_, l)| !l.is_empty())
            {
                let value: serde_json::Value = serde_json::from_slice(line)
                    .with_context(|| format!("output line {} is not JSON", number + 1))?;
                let page = value["page"].as_u64().unwrap_or(0);
                let values = fields
                    .iter()
                    .map(|f| value[f].as_str().unwrap_or_default().to_string())
                    .collect();
                emit(page, values);
            }
        }
        Format::Csv => {
            let mut reader = csv::Reader::from_reader(bytes);
            for record in reader.records() {
                let record = record.context("the CSV output is malformed")?;
                let page = record.get(0).and_then(|p| p.parse().ok()).unwrap_or(0);
                let values = (1..=fields.len())
                    .map(|i| record.get(i).unwrap_or_default().to_string())
                    .collect();
                emit(page, values);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_csv_convert_both_ways() {
        let fields = vec!["url".to_string(), "title".to_string()];
        let items = vec![
            vec!["/a".to_string(), "x, \"y\"".to_string()],
            vec!["/b".to_string(), "标题".to_string()],
        ];
        let jsonl = render(Format::Jsonl, 4, &fields, &items);
        let csv = convert(&jsonl, Format::Jsonl, Format::Csv, &fields).unwrap();
        let mut expected_csv = csv_header(&fields);
        expected_csv.extend(render(Format::Csv, 4, &fields, &items));
        assert_eq!(csv, expected_csv);
        assert_eq!(
            convert(&csv, Format::Csv, Format::Jsonl, &fields).unwrap(),
            jsonl
        );
    }
}

//! `pagecrawl queue`: pages in one state, in page order, printed as they
//! arrive (from the running crawl or the store), so a listing of millions
//! of pages needs no more memory than one.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::cli::{PageStateArg, StageArg};
use crate::control::ops::QueueRow;
use crate::control::Backend;
use crate::exit_code::Exit;

pub fn command(
    dir: &Path,
    which: PageStateArg,
    stage: StageArg,
    limit: usize,
    json: bool,
) -> Result<Exit> {
    let (_, asked) = asked(which, stage);
    let state = asked.as_str();
    let mut backend = Backend::connect(dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut listing = Listing {
        json,
        rows: 0,
        out: &mut out,
    };
    let listed = backend
        .queue_each(state, limit, &mut |row| listing.row(&row))
        .and_then(|()| listing.end(state));
    match listed.and_then(|()| Ok(out.flush()?)) {
        Err(e) if is_broken_pipe(&e) => Ok(Exit::Success),
        Err(e) => Err(e),
        Ok(()) => Ok(Exit::Success),
    }
}

/// `queue --store URL --job NAME`: the job's tasks in a PostgreSQL store,
/// in the same shapes.
pub fn command_store(
    url: &str,
    job: &str,
    which: PageStateArg,
    stage: StageArg,
    limit: usize,
    json: bool,
) -> Result<Exit> {
    use crate::store::postgres::lease::Stage;
    let (state, asked) = asked(which, stage);
    let stage = match stage {
        StageArg::Listing => Stage::Listing,
        StageArg::Detail => Stage::Detail,
    };
    let mut remote = crate::store::postgres::read::open_job(url, job)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut listing = Listing {
        json,
        rows: 0,
        out: &mut out,
    };
    let listed = crate::store::postgres::ops::queue_each(
        &mut remote.client,
        remote.id,
        stage,
        state,
        limit,
        &mut |row| listing.row(&row),
    )
    .and_then(|()| listing.end(&asked));
    match listed.and_then(|()| Ok(out.flush()?)) {
        Err(e) if is_broken_pipe(&e) => Ok(Exit::Success),
        Err(e) => Err(e),
        Ok(()) => Ok(Exit::Success),
    }
}

/// The state asked for, and the same with its stage as the control
/// socket names it (`detail failed` for a detail stage's).
fn asked(which: PageStateArg, stage: StageArg) -> (&'static str, String) {
    let state = match which {
        PageStateArg::Pending => "pending",
        PageStateArg::Done => "done",
        PageStateArg::Failed => "failed",
    };
    let asked = match stage {
        StageArg::Listing => state.to_string(),
        StageArg::Detail => format!("{}{state}", crate::control::ops::DETAIL_STAGE),
    };
    (state, asked)
}

/// A reader that went away (`| head`) has what it wanted.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Prints rows one at a time, as a table or as the pretty-printed JSON
/// array `serde_json::to_string_pretty` makes of the whole list.
struct Listing<'a> {
    json: bool,
    rows: u64,
    out: &'a mut dyn Write,
}

impl Listing<'_> {
    fn row(&mut self, row: &QueueRow) -> Result<()> {
        if self.json {
            self.out
                .write_all(if self.rows == 0 { b"[\n" } else { b",\n" })?;
            let pretty = serde_json::to_string_pretty(row)?;
            for (index, line) in pretty.lines().enumerate() {
                if index > 0 {
                    self.out.write_all(b"\n")?;
                }
                write!(self.out, "  {line}")?;
            }
        } else {
            if self.rows == 0 {
                let (number, what) = match row.stage {
                    Some(_) => ("number", "url and item"),
                    None => ("page", "detail"),
                };
                writeln!(
                    self.out,
                    "{number:>8}  {:<8}  {:>8}  {what}",
                    "state", "attempts"
                )?;
            }
            let mut detail = match (&row.items, &row.bytes, &row.error) {
                (Some(items), Some(bytes), _) => format!("{items} items, {bytes} bytes"),
                (_, Some(bytes), None) => format!("{bytes} bytes"),
                (_, _, Some(error)) => error.clone(),
                _ => String::new(),
            };
            if let Some(url) = &row.url {
                let item = match (row.listing_page, row.item_index) {
                    (Some(page), Some(index)) => format!(" (item {index} of page {page})"),
                    _ => String::new(),
                };
                detail = if detail.is_empty() {
                    format!("{url}{item}")
                } else {
                    format!("{url}{item}: {detail}")
                };
            }
            writeln!(
                self.out,
                "{:>8}  {:<8}  {:>8}  {detail}",
                row.page, row.state, row.attempts
            )?;
        }
        self.rows += 1;
        Ok(())
    }

    fn end(&mut self, state: &str) -> Result<()> {
        match (self.json, self.rows) {
            (true, 0) => writeln!(self.out, "[]")?,
            (true, _) => writeln!(self.out, "\n]")?,
            (false, 0) => match state.strip_prefix(crate::control::ops::DETAIL_STAGE) {
                Some(state) => writeln!(self.out, "no {state} detail pages")?,
                None => writeln!(self.out, "no {state} pages")?,
            },
            (false, _) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(page: u64) -> QueueRow {
        QueueRow {
            page,
            state: "failed".into(),
            attempts: 3,
            reason: Some("HTTP 500".into()),
            error: Some("HTTP 500 \"quoted\"\nsecond line".into()),
            not_before_ms: None,
            items: None,
            bytes: None,
            at_ms: Some(17),
            stage: None,
            url: None,
            listing_page: None,
            item_index: None,
        }
    }

    #[test]
    fn the_table_has_one_header_and_a_detail_per_state() {
        let done = QueueRow {
            page: 8,
            state: "done".into(),
            attempts: 1,
            reason: None,
            error: None,
            not_before_ms: None,
            items: Some(20),
            bytes: Some(4096),
            at_ms: Some(1),
            stage: None,
            url: None,
            listing_page: None,
            item_index: None,
        };
        let mut bytes = Vec::new();
        let mut listing = Listing {
            json: false,
            rows: 0,
            out: &mut bytes,
        };
        listing.row(&done).unwrap();
        listing.row(&row(9)).unwrap();
        listing.end("done").unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(text.matches("attempts").count(), 1, "one header: {text}");
        assert!(lines[0].contains("page") && lines[0].contains("detail"));
        assert!(lines[1].ends_with("20 items, 4096 bytes"), "{text}");
        assert!(lines[2].contains("HTTP 500 \"quoted\""), "{text}");

        let mut empty = Vec::new();
        Listing {
            json: false,
            rows: 0,
            out: &mut empty,
        }
        .end("pending")
        .unwrap();
        assert_eq!(String::from_utf8(empty).unwrap(), "no pending pages\n");
    }

    #[test]
    fn only_a_reader_gone_away_is_not_an_error() {
        let gone = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&gone));
        let full = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!is_broken_pipe(&full));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }

    #[test]
    fn streamed_json_is_byte_for_byte_the_pretty_array() {
        for count in [0, 1, 3] {
            let rows: Vec<QueueRow> = (1..=count).map(row).collect();
            let mut bytes = Vec::new();
            let mut listing = Listing {
                json: true,
                rows: 0,
                out: &mut bytes,
            };
            for row in &rows {
                listing.row(row).unwrap();
            }
            listing.end("failed").unwrap();
            let expected = serde_json::to_string_pretty(&rows).unwrap() + "\n";
            assert_eq!(String::from_utf8(bytes).unwrap(), expected, "{count} rows");
        }
    }
}

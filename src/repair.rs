//! Repair: reading an output file back and rebuilding the checkpoint from
//! what it holds, after the file was changed behind the crawl (truncated,
//! deleted, replaced, written into) or the state lost its queue.
//!
//! Items are appended a page at a time, so the file is a run of *groups*:
//! consecutive items of one page. A group followed by another is whole; the
//! last one may have been cut. Repair keeps every whole group, cuts the
//! last one unless the checkpoint records its page as done with exactly
//! that many items, and then, in one batch: pages whose items are no
//! longer in the file go back to pending (their item keys with them), pages
//! whose whole group is in the file but that the state does not record as
//! done are recorded as done, and the counters, the output's length and
//! identity are set to what the file now holds. Nothing the file holds
//! beyond a torn last item is destroyed: when more would go, the file is
//! first kept beside it as `NAME.damaged-SECONDS`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::output::{csv_header, matches_checkpoint, open_no_follow, page_of_line, Format};
use crate::store::{Fingerprint, Job, PageState, Rebuild, Store};

/// What a repair did, for the one-line report.
#[derive(Debug, Default)]
pub struct Report {
    pub requeued: u64,
    pub adopted: u64,
    pub kept_items: u64,
    pub kept_bytes: u64,
    /// Where the damaged file was kept, when it was.
    pub kept_aside: Option<PathBuf>,
    /// What was wrong, as found.
    pub found: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "repaired ({}): the output keeps {} items ({} bytes); {} pages re-queued, {} pages recorded as done from the file",
            self.found, self.kept_items, self.kept_bytes, self.requeued, self.adopted
        )?;
        if let Some(aside) = &self.kept_aside {
            write!(f, "; the damaged file is kept as {}", aside.display())?;
        }
        write!(f, "; `pagecrawl run` now writes each missing item once")
    }
}

/// One page's consecutive items in the file.
#[derive(Debug, Clone)]
struct Group {
    page: u64,
    start: u64,
    items: u32,
    /// The items' keys (when the job has a `key`).
    keys: Vec<String>,
}

/// What reading the file found.
#[derive(Debug, Default)]
struct Scan {
    /// Where each group starts, in file order.
    groups: Vec<Group>,
    /// Bytes of whole items read (the header included).
    intact: u64,
    /// The bytes after `intact` are only a torn last line or zeros.
    rest_is_torn: bool,
    len: u64,
}

/// Repairs the output of the job in `store` and rebuilds its checkpoint.
pub fn repair(store: &Store) -> Result<Report> {
    let Some(job) = store.job()? else {
        bail!(
            "no job is recorded in {}; nothing to repair",
            store.dir().display()
        );
    };
    if job.detail.is_some() {
        return Err(crate::error::UserError::Usage(format!(
            "repair does not handle jobs with [detail] yet (items wait in the state for their detail pages, and the output alone cannot say which); \
             move {} and the state directory {} aside and crawl afresh",
            job.output.display(),
            store.dir().display()
        ))
        .into());
    }
    let format = Format::from_name(&job.format).unwrap_or(Format::Jsonl);
    let header = (format == Format::Csv).then(|| csv_header(&job.fields));
    let header_len = header.as_ref().map_or(0, |h| h.len() as u64);
    let counters = store.counters();
    let lost_pages = store.lost_its_pages()?;
    let path = job.output.clone();
    let mut report = Report::default();
    let mut found = Vec::new();
    if let Some(why) = store.damaged()? {
        found.push(why);
    }
    if lost_pages {
        found.push("the state had lost its queue".into());
    }
    let scan = match path.symlink_metadata() {
        Err(_) => {
            found.push(format!("{} is missing", path.display()));
            None
        }
        Ok(metadata) if metadata.file_type().is_symlink() => {
            bail!(
                "the output {} is a symbolic link; pagecrawl does not write through links: \
                 remove it (or set `output` to the real path), then repair again",
                path.display()
            )
        }
        Ok(metadata)
            if metadata.len() >= counters.output_len
                && !File::open(&path).is_ok_and(|file| {
                    matches_checkpoint(&file, counters.output_len, counters.output_fingerprint())
                }) =>
        {
            found.push(format!("{} was replaced", path.display()));
            report.kept_aside = Some(keep_aside(&path)?);
            None
        }
        Ok(_) => Some(scan(&path, format, &job)?),
    };
    let (groups, kept_len) = match &scan {
        None => (Vec::new(), 0),
        Some(scan) => {
            let (groups, kept) = kept_groups(store, scan)?;
            if scan.len < counters.output_len {
                found.push(format!(
                    "{} was truncated to {} of {} bytes",
                    path.display(),
                    scan.len,
                    counters.output_len
                ));
            } else if scan.len > counters.output_len {
                found.push(format!(
                    "{} holds {} bytes past the checkpoint",
                    path.display(),
                    scan.len - counters.output_len
                ));
            }
            (groups, kept)
        }
    };
    let kept_len = kept_len.max(header_len);
    let fingerprint = match &scan {
        Some(scan) if scan.rest_is_torn || scan.intact == scan.len => {
            cut_in_place(&path, kept_len, header.as_deref())?
        }
        Some(_) => {
            let aside = keep_aside(&path)?;
            let fingerprint = copy_prefix(&aside, &path, kept_len, header.as_deref())?;
            report.kept_aside = Some(aside);
            fingerprint
        }
        None => copy_prefix(Path::new(""), &path, 0, header.as_deref())?,
    };
    let mut pages: HashMap<u64, u32> = HashMap::new();
    let mut keys = Vec::new();
    let mut items = 0;
    for group in groups {
        pages.insert(group.page, group.items);
        items += u64::from(group.items);
        keys.extend(group.keys.into_iter().map(|key| (key, group.page)));
    }
    let range = match crate::range::parse_range(&job.pages) {
        Ok(crate::range::PageRange::Closed { start, end }) if lost_pages => Some((start, end)),
        _ => None,
    };
    let rebuilt = store.rebuild_from_output(&Rebuild {
        pages,
        items,
        keys: job.key.is_some().then_some(keys),
        output_len: kept_len,
        fingerprint,
        requeue_range: range,
    })?;
    store.flush()?;
    report.requeued = rebuilt.requeued;
    report.adopted = rebuilt.adopted;
    report.kept_items = items;
    report.kept_bytes = kept_len;
    report.found = if found.is_empty() {
        "the output matched the checkpoint".into()
    } else {
        found.join("; ")
    };
    Ok(report)
}

/// Reads the file's items into groups, up to the first line that is not
/// a whole item.
fn scan(path: &Path, format: Format, job: &Job) -> Result<Scan> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut scan = Scan {
        len,
        ..Scan::default()
    };
    let mut line = Vec::new();
    if format == Format::Csv {
        let header = csv_header(&job.fields);
        reader.read_until(b'\n', &mut line)?;
        if line != header {
            scan.rest_is_torn = header.starts_with(&line);
            return Ok(scan);
        }
        scan.intact = line.len() as u64;
    }
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            scan.rest_is_torn = true;
            return Ok(scan);
        }
        let Some((page, key)) = item_of_line(format, &line, job) else {
            // A torn last line, or zeros where a write was lost, end the
            // file as a crash leaves it; anything else is foreign.
            let mut rest = line.clone();
            reader.read_to_end(&mut rest)?;
            scan.rest_is_torn =
                !rest.contains(&b'\n') || rest.iter().all(|&b| b == 0 || b == b'\n');
            return Ok(scan);
        };
        match scan.groups.last_mut() {
            Some(group) if group.page == page => group.items += 1,
            _ => scan.groups.push(Group {
                page,
                start: scan.intact,
                items: 1,
                keys: Vec::new(),
            }),
        }
        if let (Some(key), Some(group)) = (key, scan.groups.last_mut()) {
            group.keys.push(key);
        }
        scan.intact += read as u64;
    }
}

/// The page of one whole item line and its key (when the job has one).
fn item_of_line(format: Format, line: &[u8], job: &Job) -> Option<(u64, Option<String>)> {
    if !line.ends_with(b"\n") {
        return None;
    }
    let page = page_of_line(format, line)?;
    match format {
        Format::Jsonl => {
            let value: serde_json::Value = serde_json::from_slice(line).ok()?;
            let key = match &job.key {
                Some(name) => Some(value.get(name)?.as_str()?.to_string()),
                None => None,
            };
            Some((page, key))
        }
        Format::Csv => {
            let record = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(line)
                .records()
                .next()?
                .ok()?;
            if record.len() != job.fields.len() + 1 {
                return None;
            }
            let key = match &job.key {
                Some(name) => {
                    let at = job.fields.iter().position(|f| f == name)?;
                    Some(record.get(at + 1)?.to_string())
                }
                None => None,
            };
            Some((page, key))
        }
    }
}

/// The groups to keep and the length they end at: every group, but the
/// last only when the checkpoint records its page as done with exactly its
/// items (otherwise it may have been cut, and its page is fetched again).
fn kept_groups(store: &Store, scan: &Scan) -> Result<(Vec<Group>, u64)> {
    let mut groups = scan.groups.clone();
    let Some(last) = groups.last() else {
        return Ok((groups, scan.intact));
    };
    let whole = match store.state_of(last.page)? {
        Some(PageState::Done(done)) => done.items == last.items,
        _ => false,
    };
    if whole {
        return Ok((groups, scan.intact));
    }
    let start = last.start;
    groups.pop();
    Ok((groups, start))
}

/// Cuts the file to `len` (writing the CSV header when even that was
/// lost) and syncs it; returns the fingerprint of what it keeps.
fn cut_in_place(path: &Path, len: u64, header: Option<&[u8]>) -> Result<Fingerprint> {
    let mut file = open_no_follow(path)?;
    let header_len = header.map_or(0, |h| h.len() as u64);
    if len <= header_len {
        file.set_len(0)?;
        if let Some(header) = header {
            file.write_all(header)?;
        }
    } else {
        file.set_len(len)?;
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    fingerprint_of(&file)
}

/// The fingerprint of a whole file (what a checkpoint of its length
/// records).
fn fingerprint_of(file: &File) -> Result<Fingerprint> {
    Ok(Fingerprint::of(&crate::output::tail_before(
        file,
        u64::MAX,
    )?))
}

/// Moves a damaged file aside, beside itself; returns its new name.
fn keep_aside(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let seconds = crate::util::now_ms() / 1000;
    let aside = path.with_file_name(format!("{name}.damaged-{seconds}"));
    std::fs::rename(path, &aside).with_context(|| {
        format!(
            "cannot move {} aside to {}",
            path.display(),
            aside.display()
        )
    })?;
    crate::util::sync_parent(path)?;
    Ok(aside)
}

/// Writes a new file at `path` holding the first `len` bytes of `from`
/// (or only the CSV header), synced; returns its fingerprint.
fn copy_prefix(from: &Path, path: &Path, len: u64, header: Option<&[u8]>) -> Result<Fingerprint> {
    let mut file = open_no_follow(path)?;
    file.set_len(0)?;
    let header_len = header.map_or(0, |h| h.len() as u64);
    if len > header_len {
        let mut source =
            File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
        source.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut source.take(len), &mut file)
            .with_context(|| format!("cannot write {}", path.display()))?;
    } else if let Some(header) = header {
        file.write_all(header)?;
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    crate::util::sync_parent(path)?;
    fingerprint_of(&file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render;
    use crate::range::PageRange;
    use crate::store::{Settle, StateFilter};

    /// A job of `pages` pages, each done with `per_page` items written to
    /// the output in page order; returns the store, the output's path and
    /// each page's bytes.
    fn crawled(
        dir: &Path,
        format: Format,
        key: Option<&str>,
        pages: u64,
        per_page: usize,
    ) -> (Store, PathBuf, Vec<Vec<u8>>) {
        let fields = vec!["a".to_string(), "b".to_string()];
        let output = dir.join(if format == Format::Csv {
            "o.csv"
        } else {
            "o.jsonl"
        });
        let job = Job {
            url: "http://x/{page}".into(),
            pages: format!("1..={pages}"),
            pattern: "(?P<a>.)(?P<b>.)".into(),
            format: format.name().into(),
            fields: fields.clone(),
            key: key.map(str::to_string),
            output: output.clone(),
            detail: None,
        };
        let store = Store::open(&dir.join("state")).unwrap();
        let mut bytes = if format == Format::Csv {
            csv_header(&fields)
        } else {
            Vec::new()
        };
        store
            .set_job(
                &job,
                &PageRange::Closed {
                    start: 1,
                    end: pages,
                },
                Fingerprint::of(&bytes),
            )
            .unwrap();
        let mut chunks = Vec::new();
        for page in 1..=pages {
            let items: Vec<Vec<String>> = (0..per_page)
                .map(|i| vec![format!("p{page}i{i}"), "x".to_string()])
                .collect();
            let chunk = render(format, page, &fields, &items);
            bytes.extend_from_slice(&chunk);
            let keys = if key.is_some() {
                items.iter().map(|item| item[0].clone()).collect()
            } else {
                Vec::new()
            };
            store
                .commit(
                    &[Settle::Done {
                        page,
                        attempts: 1,
                        items: per_page as u32,
                        extracted: per_page as u32,
                        bytes: 1,
                        keys,
                    }],
                    bytes.len() as u64,
                    None,
                )
                .unwrap();
            chunks.push(chunk);
        }
        store
            .record_output(Fingerprint::of(&bytes), bytes.len() as u64)
            .unwrap();
        std::fs::write(&output, &bytes).unwrap();
        (store, output, chunks)
    }

    fn pending_pages(store: &Store) -> Vec<u64> {
        store
            .list(StateFilter::Pending, 1000)
            .unwrap()
            .into_iter()
            .map(|(page, _)| page)
            .collect()
    }

    #[test]
    fn a_truncation_keeps_whole_pages_and_requeues_the_rest() {
        for format in [Format::Jsonl, Format::Csv] {
            let dir = tempfile::tempdir().unwrap();
            let (store, output, chunks) = crawled(dir.path(), format, None, 6, 3);
            let header = if format == Format::Csv {
                csv_header(&["a".into(), "b".into()])
            } else {
                Vec::new()
            };
            let whole: usize = header.len() + chunks[..3].iter().map(Vec::len).sum::<usize>();
            // Cut two items into page 4 plus a torn third line.
            let line = chunks[3].len() / 3;
            let cut = whole + 2 * line + 5;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&output)
                .unwrap();
            file.set_len(cut as u64).unwrap();
            let report = repair(&store).unwrap();
            assert_eq!(report.requeued, 3, "{format:?}: pages 4, 5, 6");
            assert_eq!((report.adopted, report.kept_items), (0, 9), "{format:?}");
            assert_eq!(report.kept_bytes, whole as u64);
            assert!(report.kept_aside.is_none(), "only a torn line went");
            assert!(report.found.contains("was truncated"), "{}", report.found);
            assert_eq!(std::fs::read(&output).unwrap().len(), whole);
            assert_eq!(pending_pages(&store), vec![4, 5, 6]);
            let counters = store.counters();
            assert_eq!((counters.done, counters.pending, counters.items), (3, 3, 9));
            assert_eq!(counters.output_len, whole as u64);
            assert_eq!(
                counters.output_fingerprint(),
                Fingerprint::of(&std::fs::read(&output).unwrap()),
                "{format:?}: the fingerprint of what was kept"
            );
            assert_eq!(store.recount().unwrap(), counters);
            assert!(crate::output::mismatch(&output, &counters).is_none());
            assert!(
                report.to_string().starts_with("repaired (")
                    && report.to_string().contains("3 pages re-queued")
            );
        }
    }

    #[test]
    fn a_cut_at_a_page_boundary_keeps_that_page_when_it_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Jsonl, None, 4, 2);
        let two: usize = chunks[..2].iter().map(Vec::len).sum();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&output)
            .unwrap()
            .set_len(two as u64)
            .unwrap();
        let report = repair(&store).unwrap();
        assert_eq!((report.requeued, report.kept_items), (2, 4));
        assert_eq!(pending_pages(&store), vec![3, 4]);
        // Cut inside page 2 at a line boundary: page 2 is not whole.
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Jsonl, None, 4, 2);
        let cut = chunks[0].len() + chunks[1].len() / 2;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&output)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let report = repair(&store).unwrap();
        assert_eq!((report.requeued, report.kept_items), (3, 2));
        assert_eq!(std::fs::read(&output).unwrap(), chunks[0]);
    }

    #[test]
    fn a_deleted_output_requeues_every_page_with_items_and_forgets_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, _) = crawled(dir.path(), Format::Jsonl, Some("a"), 3, 2);
        assert!(store.has_item_key("p2i1").unwrap());
        std::fs::remove_file(&output).unwrap();
        let report = repair(&store).unwrap();
        assert_eq!(
            (report.requeued, report.kept_items, report.kept_bytes),
            (3, 0, 0)
        );
        assert!(report.found.contains("is missing"), "{}", report.found);
        assert!(output.exists(), "a new, empty output");
        assert!(
            !store.has_item_key("p2i1").unwrap(),
            "keys of items no longer written are forgotten"
        );
        assert_eq!(store.counters().items, 0);
    }

    #[test]
    fn a_replaced_output_is_kept_aside_and_everything_requeued() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Jsonl, None, 3, 2);
        let total: usize = chunks.iter().map(Vec::len).sum();
        std::fs::write(&output, vec![b'z'; total + 10]).unwrap();
        let report = repair(&store).unwrap();
        assert_eq!(report.requeued, 3);
        assert!(report.found.contains("was replaced"), "{}", report.found);
        let aside = report.kept_aside.expect("kept aside");
        assert_eq!(std::fs::read(&aside).unwrap(), vec![b'z'; total + 10]);
        assert_eq!(std::fs::read(&output).unwrap(), b"");
    }

    #[test]
    fn foreign_bytes_after_the_items_are_kept_aside_not_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Jsonl, Some("a"), 3, 2);
        // Cut inside page 2, then zeros and someone's lines (shorter than
        // the checkpoint, so it reads as a truncation written into).
        let mut bytes = chunks[0].clone();
        bytes.extend(vec![0u8; 10]);
        bytes.extend_from_slice(b"\ngarbage\n");
        std::fs::write(&output, &bytes).unwrap();
        let report = repair(&store).unwrap();
        let aside = report.kept_aside.clone().expect("the damaged file is kept");
        assert_eq!(std::fs::read(&aside).unwrap(), bytes);
        assert_eq!(
            std::fs::read(&output).unwrap(),
            chunks[0],
            "the intact items are copied"
        );
        assert_eq!((report.requeued, report.kept_items), (2, 2));
        assert!(store.has_item_key("p1i0").unwrap() && !store.has_item_key("p3i0").unwrap());
    }

    #[test]
    fn whole_pages_the_state_lost_are_recorded_as_done_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Jsonl, Some("a"), 5, 2);
        // The state forgets pages 3..=5 (as a rolled-back checkpoint
        // would), while the file keeps their items.
        store
            .enqueue(&[PageRange::Closed { start: 3, end: 5 }])
            .unwrap();
        let all: Vec<u8> = chunks.concat();
        std::fs::write(&output, &all).unwrap();
        let report = repair(&store).unwrap();
        assert_eq!(
            report.adopted, 2,
            "pages 3 and 4 are whole; page 5, the last, may be cut"
        );
        assert_eq!(pending_pages(&store), vec![5]);
        assert_eq!(report.kept_items, 8);
        let counters = store.counters();
        assert_eq!((counters.done, counters.pending), (4, 1));
        assert_eq!(store.recount().unwrap(), counters);
        assert!(store.has_item_key("p4i1").unwrap() && !store.has_item_key("p5i0").unwrap());
    }

    #[test]
    fn a_state_that_lost_its_queue_gets_it_back_with_the_pages_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Jsonl, Some("a"), 5, 2);
        store.forget_pages();
        assert!(store.lost_its_pages().unwrap());
        // The file holds pages 1..=5, then a page the job does not have.
        let mut bytes = chunks.concat();
        let fields = vec!["a".to_string(), "b".to_string()];
        let stranger = render(Format::Jsonl, 99, &fields, &[vec!["s".into(), "t".into()]]);
        bytes.extend_from_slice(&stranger);
        bytes.extend_from_slice(&render(
            Format::Jsonl,
            5,
            &fields,
            &[vec!["p5i9".into(), "x".into()]],
        ));
        std::fs::write(&output, &bytes).unwrap();
        let report = repair(&store).unwrap();
        assert!(report.found.contains("lost its queue"), "{}", report.found);
        assert!(
            report.found.contains("past the checkpoint"),
            "{}",
            report.found
        );
        // Pages 1..=5 and 99 are whole groups; the last group (page 5
        // again) may be cut, so it goes.
        assert_eq!(report.adopted, 5, "pages of the job only, not page 99");
        assert_eq!(report.kept_items, 11);
        let counters = store.counters();
        assert_eq!((counters.done, counters.pending), (5, 0));
        assert_eq!(store.recount().unwrap(), counters);
        assert!(!store.lost_its_pages().unwrap());
        assert!(store.has_item_key("p3i1").unwrap() && store.has_item_key("s").unwrap());
        assert!(!store.has_item_key("p5i9").unwrap());
        let kept = std::fs::read(&output).unwrap();
        assert_eq!(
            counters.output_fingerprint(),
            Fingerprint::of(&kept),
            "the fingerprint of what was kept"
        );
    }

    #[test]
    fn failed_and_retrying_pages_whose_items_are_in_the_file_become_done() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Jsonl, None, 4, 2);
        store
            .enqueue(&[PageRange::Closed { start: 5, end: 8 }])
            .unwrap();
        let len = store.counters().output_len;
        store
            .commit(
                &[
                    // An empty page: done with no items, none in the file.
                    Settle::Done {
                        page: 5,
                        attempts: 1,
                        items: 0,
                        extracted: 0,
                        bytes: 1,
                        keys: vec![],
                    },
                    Settle::Failed {
                        page: 6,
                        attempts: 3,
                        kind: "HTTP 500".into(),
                        detail: "HTTP 500 at x".into(),
                    },
                    Settle::Retry {
                        page: 7,
                        attempts: 1,
                        not_before_ms: 0,
                        error: "HTTP 503".into(),
                    },
                ],
                len,
                None,
            )
            .unwrap();
        assert_eq!(store.reasons().unwrap().len(), 1);
        // The file holds pages 6 and 7 too (a checkpoint that rolled back),
        // then page 8, the last group, which may be cut.
        let fields = vec!["a".to_string(), "b".to_string()];
        let mut bytes = chunks.concat();
        for page in [6, 7, 8] {
            bytes.extend(render(
                Format::Jsonl,
                page,
                &fields,
                &[vec![format!("p{page}"), "x".into()]],
            ));
        }
        std::fs::write(&output, &bytes).unwrap();
        let report = repair(&store).unwrap();
        assert_eq!(
            (report.adopted, report.requeued),
            (2, 0),
            "the empty page stays done"
        );
        let counters = store.counters();
        assert_eq!(
            (counters.done, counters.failed, counters.pending),
            (7, 0, 1)
        );
        assert_eq!(pending_pages(&store), vec![8]);
        assert!(
            store.reasons().unwrap().is_empty(),
            "the failure is gone with its page"
        );
        assert_eq!(store.recount().unwrap(), counters);
    }

    #[test]
    fn a_symlink_at_the_output_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, _) = crawled(dir.path(), Format::Jsonl, None, 2, 2);
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(&output, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &output).unwrap();
        let refused = repair(&store).unwrap_err().to_string();
        assert!(refused.contains("is a symbolic link"), "{refused}");
    }

    #[test]
    fn csv_keys_and_a_tail_of_zeros_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Csv, Some("b"), 3, 2);
        let header = csv_header(&["a".into(), "b".into()]);
        let mut bytes = header.clone();
        bytes.extend_from_slice(&chunks[0]);
        bytes.extend_from_slice(&chunks[1]);
        // Zeros where page 3's write was lost: a crash, not someone's bytes.
        bytes.extend(vec![0u8; chunks[2].len() / 2]);
        bytes.push(b'\n');
        bytes.extend(vec![0u8; 7]);
        std::fs::write(&output, &bytes).unwrap();
        let report = repair(&store).unwrap();
        assert!(report.kept_aside.is_none(), "zeros are cut in place");
        assert_eq!((report.requeued, report.kept_items), (1, 4));
        // Key "b" is the second field: "x" for every item.
        assert!(store.has_item_key("x").unwrap());
        assert!(
            !store.has_item_key("p1i0").unwrap(),
            "the first field is not the key"
        );
        let seconds = crate::util::now_ms() / 1000;
        // A replaced file is kept aside under the time it was found.
        std::fs::write(&output, vec![b'q'; bytes.len() * 3]).unwrap();
        let aside = repair(&store).unwrap().kept_aside.unwrap();
        let suffix: u64 = aside
            .to_string_lossy()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(suffix.abs_diff(seconds) <= 5, "{}", aside.display());
    }

    #[test]
    fn an_intact_output_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (store, output, chunks) = crawled(dir.path(), Format::Csv, None, 3, 2);
        let before = std::fs::read(&output).unwrap();
        let report = repair(&store).unwrap();
        assert_eq!((report.requeued, report.adopted), (0, 0));
        assert_eq!(report.found, "the output matched the checkpoint");
        assert_eq!(std::fs::read(&output).unwrap(), before);
        assert_eq!(report.kept_items, 6);
        assert_eq!(chunks.len(), 3);
    }
}

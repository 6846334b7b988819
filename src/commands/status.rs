//! `pagecrawl status`: state, counts, rate, ETA, top errors; O(1) in the
//! queue size. Asks the running daemon when there is one.

use std::path::Path;

use anyhow::Result;

use crate::control::ops::Status;
use crate::control::Backend;
use crate::exit_code::Exit;
use crate::progress::human_duration;

/// How many failure reasons the summary lists.
const TOP_ERRORS: usize = 5;

pub fn command(dir: &Path, json: bool) -> Result<Exit> {
    print(&Backend::connect(dir)?.status()?, json)
}

/// `status --store URL --job NAME`: the job in a PostgreSQL store, read
/// from any machine, in the same shapes (with the store, the job's name
/// and its daemons added).
pub fn command_store(url: &str, job: &str, json: bool) -> Result<Exit> {
    print(
        &crate::store::postgres::read::open_job(url, job)?.status()?,
        json,
    )
}

/// Writes `status` as JSON or as the human summary.
fn print(status: &Status, json: bool) -> Result<Exit> {
    let text = if json {
        serde_json::to_string_pretty(status)? + "\n"
    } else {
        render(status)
    };
    super::write_stdout(text.as_bytes())?;
    Ok(Exit::Success)
}

/// The human summary (also printed by `pause` and `resume`), one labelled
/// line per fact:
///
/// ```text
/// state     running (pid 4242)
/// job       http://127.0.0.1:8080/wooyun/bugs.php?page={page}, pages 1..=295
/// pages     120 done, 173 pending, 2 failed (of 295), 40% done
/// items     2400
/// rate      35.2 pages/s over the last minute
/// eta       5s
/// retries   7
/// errors    2 pages failed:
///             2 × HTTP 500
///           list them: pagecrawl queue --state failed --state-dir wooyun.state
/// output    /srv/wooyun.state/items.jsonl (1048576 bytes)
/// state dir /srv/wooyun.state
/// ```
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        for (index, text) in value.lines().enumerate() {
            let label = if index == 0 { label } else { "" };
            out.push_str(&format!("{label:<9} {text}\n"));
        }
    };
    let state = match (s.state.as_str(), s.pid) {
        ("running", Some(pid)) => format!("running (pid {pid})"),
        ("paused", Some(pid)) => format!("paused (pid {pid}); `pagecrawl resume` goes on"),
        ("idle", _) if s.store.is_some() => format!(
            "idle: no daemon of the job has been seen in the last {} s",
            crate::store::postgres::read::SEEN_WITHIN.as_secs()
        ),
        ("idle", _) => {
            "idle: no crawl is running; `pagecrawl run` with the same config resumes".to_string()
        }
        ("finished", _) if s.failed_for_good > 0 => format!(
            "finished with {} failed page{}: `pagecrawl queue --state failed{}` lists them, `pagecrawl retry` queues them again",
            s.failed_for_good,
            if s.failed_for_good == 1 { "" } else { "s" },
            if s.detail_failed == s.failed_for_good {
                " --stage detail"
            } else {
                ""
            }
        ),
        ("finished", _) => "finished: nothing pending".to_string(),
        ("damaged", pid) => format!(
            "damaged{}: `pagecrawl repair` brings back what was lost",
            pid.map(|pid| format!(" (pid {pid} stopped writing)"))
                .unwrap_or_default()
        ),
        (other, Some(pid)) => format!("{other} (pid {pid})"),
        (other, None) => other.to_string(),
    };
    line("state", state);
    if let (Some(url), Some(range)) = (&s.url, &s.range) {
        line("job", format!("{url}, pages {range}"));
    }
    line("pages", pages_line(s));
    if s.detail_stage {
        line(
            "details",
            format!(
                "{} done, {} pending, {} failed; {} items wait for theirs",
                s.detail_done, s.detail_pending, s.detail_failed, s.items_waiting
            ),
        );
    }
    line("items", s.items.to_string());
    if let Some(round) = s.round {
        line(
            "follow",
            follow_line(round, s.next_round_at, crate::util::now_ms() / 1000),
        );
    }
    let rate = match (s.rate_last_minute, s.rate) {
        (Some(recent), _) => format!("{recent:.1} pages/s over the last minute"),
        (None, Some(rate)) if s.pid.is_some() => format!("{rate:.1} pages/s in this run"),
        (None, Some(rate)) => format!("{rate:.1} pages/s in the last run"),
        (None, None) => "no pages committed yet".into(),
    };
    line("rate", rate);
    if s.pending + s.detail_pending > 0 {
        let eta = match s.eta_seconds {
            _ if s.open_range && s.open_range_end.is_none() => {
                "unknown: an open range ends at its first run of empty pages".to_string()
            }
            Some(eta) if s.pid.is_some() => human_duration(eta),
            Some(eta) => format!(
                "{} once resumed, at the last run's rate",
                human_duration(eta)
            ),
            None => "unknown until pages are committed".into(),
        };
        line("eta", eta);
    }
    line("retries", s.retries.to_string());
    if !s.errors.is_empty() {
        line("errors", errors_block(s, "page", s.failed, &s.errors, ""));
    }
    if !s.detail_errors.is_empty() {
        let block = errors_block(
            s,
            "detail page",
            s.detail_failed,
            &s.detail_errors,
            "--stage detail ",
        );
        line("errors", block);
    }
    if let Some(output) = &s.output {
        line("output", format!("{output} ({} bytes)", s.output_bytes));
    }
    if let Some(why) = &s.damaged {
        line(
            "damaged",
            format!("{why}; run: pagecrawl repair --state-dir {}", s.state_dir),
        );
    }
    match (&s.store, &s.job) {
        (Some(store), Some(job)) => {
            line("store", format!("{store}, job {job}"));
            line("daemons", daemons_block(&s.daemons));
        }
        _ => line("state dir", s.state_dir.clone()),
    }
    out
}

/// One line per daemon of a job in a store: where it runs, since when,
/// when it was last heard of, its speed and its leases.
fn daemons_block(daemons: &[crate::control::ops::DaemonStatus]) -> String {
    if daemons.is_empty() {
        return "none has registered".into();
    }
    let seen = crate::store::postgres::read::SEEN_WITHIN.as_secs();
    daemons
        .iter()
        .map(|d| {
            let age = d.heartbeat_age_seconds;
            format!(
                "{} pid {}, started {}, last heartbeat {} ago{}, {}, {} lease{} held",
                d.host,
                d.pid,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(d.started)
                ),
                human_duration(age as f64),
                if age > seen { " (gone?)" } else { "" },
                d.pages_per_second
                    .map_or("no rate yet".to_string(), |r| format!("{r:.1} pages/s")),
                d.leases_held,
                if d.leases_held == 1 { "" } else { "s" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The counts, and how far the job has come. An open range that found its
/// end counts the pages of its listing: the run of empty pages and the
/// look-ahead past it are said apart, not added to the job's total.
fn pages_line(s: &Status) -> String {
    let start = s
        .range
        .as_deref()
        .and_then(|range| crate::range::parse_range(range).ok())
        .map_or(1, |range| range.start());
    match (s.open_range, s.open_range_end, s.frontier) {
        (_, Some(end), _) => {
            let last = end.saturating_sub(1);
            let past = s.done_past_end + s.failed_past_end;
            let done = s.done.saturating_sub(s.done_past_end);
            let failed = s.failed.saturating_sub(s.failed_past_end);
            format!(
                "{done} done, {} pending, {failed} failed (of pages {start}..={last}); \
                 the open range ended at page {last}: {past} page{} from {end} on had no items \
                 (the empty run that ends it, and the look-ahead)",
                s.pending,
                if past == 1 { "" } else { "s" }
            )
        }
        (true, None, Some(frontier)) => format!(
            "{} done, {} pending, {} failed; open range from page {start}, queued up to page {} \
             (it ends at its first run of empty pages)",
            s.done,
            s.pending,
            s.failed,
            frontier.saturating_sub(1)
        ),
        _ => {
            let mut pages = format!(
                "{} done, {} pending, {} failed (of {})",
                s.done, s.pending, s.failed, s.total
            );
            if s.total > 0 && s.failed_for_good > 0 {
                pages.push_str(&format!(", {}% done", s.done * 100 / s.total.max(1)));
            } else if s.total > 0 {
                let finished = s.done + s.failed;
                pages.push_str(&format!(", {}% finished", finished * 100 / s.total.max(1)));
            }
            pages
        }
    }
}

/// The failure reasons of one stage (`what`: page, detail page), the most
/// common first, and how to list and retry them (`stage`: the `queue`
/// flag that lists that stage).
fn errors_block(
    s: &Status,
    what: &str,
    failed: u64,
    errors: &[crate::control::ops::ErrorCount],
    stage: &str,
) -> String {
    let mut block = format!(
        "{failed} {what}{} failed:\n",
        if failed == 1 { "" } else { "s" }
    );
    for error in errors.iter().take(TOP_ERRORS) {
        block.push_str(&format!("  {} × {}\n", error.pages, error.reason));
    }
    if errors.len() > TOP_ERRORS {
        block.push_str(&format!(
            "  ... and {} other reasons\n",
            errors.len() - TOP_ERRORS
        ));
    }
    block.push_str(&format!(
        "list them: pagecrawl queue {stage}--state failed --state-dir {}; retry: pagecrawl retry --state-dir {}",
        s.state_dir, s.state_dir
    ));
    block
}

/// Follow mode: the round, and when the next one starts (known while a
/// daemon follows).
fn follow_line(round: u64, next_round_at: Option<u64>, now_s: u64) -> String {
    match next_round_at {
        Some(at) => {
            let when = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(at),
            );
            let wait = if at > now_s {
                format!("in {}", human_duration((at - now_s) as f64))
            } else {
                "once this round's pages are done".to_string()
            };
            format!("round {round}; the next round starts at {when} ({wait})")
        }
        None => format!("round {round}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ops::ErrorCount;

    fn status() -> Status {
        Status {
            state: "running".into(),
            pid: Some(4242),
            state_dir: "/srv/job.state".into(),
            url: Some("http://127.0.0.1:8080/bugs.php?page={page}".into()),
            range: Some("1..=295".into()),
            pending: 173,
            done: 120,
            failed: 2,
            total: 295,
            items: 2400,
            retries: 7,
            output: Some("/srv/job.state/items.jsonl".into()),
            output_bytes: 1_048_576,
            rate: Some(30.0),
            eta_seconds: Some(4.9),
            open_range_end: None,
            errors: vec![
                ErrorCount {
                    reason: "HTTP 500".into(),
                    pages: 1,
                },
                ErrorCount {
                    reason: "timed out".into(),
                    pages: 1,
                },
            ],
            rate_last_minute: Some(35.24),
            open_range: false,
            frontier: None,
            damaged: None,
            failed_for_good: 2,
            open_range_last_page: None,
            done_past_end: 0,
            failed_past_end: 0,
            round: None,
            next_round_at: None,
            detail_stage: false,
            detail_pending: 0,
            detail_done: 0,
            detail_failed: 0,
            items_waiting: 0,
            detail_errors: Vec::new(),
            store: None,
            job: None,
            daemons: Vec::new(),
        }
    }

    #[test]
    fn follow_mode_says_its_round_and_when_the_next_starts() {
        assert_eq!(follow_line(3, None, 100), "round 3");
        assert_eq!(
            follow_line(3, Some(1_800_000_060), 1_800_000_000),
            "round 3; the next round starts at 2027-01-15T08:01:00Z (in 1m00s)"
        );
        assert_eq!(
            follow_line(3, Some(1_800_000_000), 1_800_000_010),
            "round 3; the next round starts at 2027-01-15T08:00:00Z (once this round's pages are done)"
        );
    }

    #[test]
    fn a_running_crawl_reads_as_labelled_lines() {
        assert_eq!(
            render(&status()),
            "state     running (pid 4242)\n\
             job       http://127.0.0.1:8080/bugs.php?page={page}, pages 1..=295\n\
             pages     120 done, 173 pending, 2 failed (of 295), 40% done\n\
             items     2400\n\
             rate      35.2 pages/s over the last minute\n\
             eta       5s\n\
             retries   7\n\
             errors    2 pages failed:\n\
             \x20           1 × HTTP 500\n\
             \x20           1 × timed out\n\
             \x20         list them: pagecrawl queue --state failed --state-dir /srv/job.state; retry: pagecrawl retry --state-dir /srv/job.state\n\
             output    /srv/job.state/items.jsonl (1048576 bytes)\n\
             state dir /srv/job.state\n"
        );
    }

    #[test]
    fn idle_finished_and_open_ranges_say_what_they_are() {
        let idle = render(&Status {
            state: "idle".into(),
            pid: None,
            rate_last_minute: None,
            eta_seconds: Some(130.0),
            ..status()
        });
        assert!(
            idle.starts_with("state     idle: no crawl is running"),
            "{idle}"
        );
        assert!(
            idle.contains("rate      30.0 pages/s in the last run\n"),
            "{idle}"
        );
        assert!(idle.contains("eta       2m10s once resumed"), "{idle}");
        let finished = render(&Status {
            state: "finished".into(),
            pid: None,
            pending: 0,
            errors: Vec::new(),
            failed: 0,
            failed_for_good: 0,
            ..status()
        });
        assert!(finished.contains("finished: nothing pending"), "{finished}");
        let with_failures = render(&Status {
            state: "finished".into(),
            pid: None,
            pending: 0,
            failed_for_good: 1,
            ..status()
        });
        assert!(
            with_failures.starts_with("state     finished with 1 failed page: `pagecrawl queue --state failed` lists them"),
            "{with_failures}"
        );
        assert!(with_failures.contains(", 40% done\n"), "{with_failures}");
        assert!(!finished.contains("eta"), "{finished}");
        assert!(!finished.contains("errors"), "{finished}");
        let open = render(&Status {
            open_range: true,
            frontier: Some(140),
            ..status()
        });
        assert!(
            open.contains("pages     120 done, 173 pending, 2 failed; open range from page 1, queued up to page 139 (it ends at its first run of empty pages)\n"),
            "{open}"
        );
        assert!(open.contains("eta       unknown: an open range"), "{open}");
        let many = render(&Status {
            errors: (1..=7)
                .map(|n| ErrorCount {
                    reason: format!("HTTP 50{n}"),
                    pages: 8 - n,
                })
                .collect(),
            ..status()
        });
        assert!(many.contains("  ... and 2 other reasons\n"), "{many}");
        let ended = Status {
            state: "finished".into(),
            range: Some("1..".into()),
            open_range: true,
            frontier: Some(307),
            open_range_end: Some(296),
            open_range_last_page: Some(295),
            done_past_end: 11,
            pending: 0,
            done: 306,
            failed: 0,
            total: 306,
            ..status()
        };
        let ended_text = render(&ended);
        assert!(
            ended_text.contains("pages     295 done, 0 pending, 0 failed (of pages 1..=295); the open range ended at page 295: 11 pages from 296 on had no items (the empty run that ends it, and the look-ahead)\n"),
            "{ended_text}"
        );
        let not_found = render(&Status {
            open_range_end: Some(10),
            done_past_end: 0,
            failed_past_end: 3,
            done: 9,
            failed: 3,
            ..ended.clone()
        });
        assert!(
            not_found.contains("pages     9 done, 0 pending, 0 failed (of pages 1..=9);"),
            "404s past the end are not failures of the job: {not_found}"
        );
        assert!(!many.contains("HTTP 506"), "{many}");
    }
}

//! `status` of a job in a store, against a real throwaway server, with the
//! job's row and its daemons set directly to the states `status` tells
//! apart.

use super::*;
use crate::fixture::postgres::Postgres;
use crate::store::postgres::job::{ensure_job, heartbeat, register_daemon};
use crate::store::postgres::schema::migrate;
use serde_json::json;

/// The `[detail]` table of a config with `on_failure`, as a job's
/// identity holds it.
fn detail_identity(on_failure: &str) -> String {
    let text = format!(
        "url = \"http://127.0.0.1:9/p?page={{page}}\"\npages = \"1..=10\"\n\
         pattern = '(?P<title>t)(?P<url>u)'\n\
         detail = {{ link = \"url\", pattern = '(?P<vendor>v)', on_failure = \"{on_failure}\" }}\n"
    );
    crate::config::Config::parse(&text, std::path::Path::new("/etc/job.toml"))
        .unwrap()
        .detail
        .unwrap()
        .identity
}

fn identity(detail: Option<String>) -> Identity {
    Identity {
        url: "http://127.0.0.1:9/p?page={page}".into(),
        pages: "1..=10".into(),
        pattern: "(?P<title>t)(?P<url>u)".into(),
        format: "jsonl".into(),
        fields: vec!["title".into(), "url".into()],
        key: None,
        detail,
    }
}

fn set_counts(client: &mut ::postgres::Client, job: JobId, counts: [i64; 7]) {
    client
        .execute(
            "UPDATE pagecrawl_jobs SET listing_pending = $2, listing_done = $3, \
             listing_failed = $4, detail_pending = $5, detail_done = $6, detail_failed = $7, \
             items = $8 WHERE id = $1",
            &[
                &job.0, &counts[0], &counts[1], &counts[2], &counts[3], &counts[4], &counts[5],
                &counts[6],
            ],
        )
        .unwrap();
}

#[test]
fn status_tells_running_idle_paused_and_finished_apart_and_adds_up_both_stages() {
    let Some(server) = Postgres::for_test("store status states") else {
        return;
    };
    let mut client = server.connect().unwrap();
    migrate(&mut client).unwrap();
    let job = ensure_job(
        &mut client,
        "two-stage",
        &identity(Some(detail_identity("wait"))).to_json(),
    )
    .unwrap();
    set_counts(&mut client, job, [5, 3, 2, 4, 6, 1, 9]);
    let (a, b) = (
        register_daemon(&mut client, job, "a", 1).unwrap(),
        register_daemon(&mut client, job, "b", 2).unwrap(),
    );
    heartbeat(&mut client, a, &json!({"pages_per_second": 2.0})).unwrap();
    heartbeat(&mut client, b, &json!({"pages_per_second": 3.0})).unwrap();
    // The password in the URL: the environment is the whole test run's.
    let url = server
        .url()
        .replacen('@', &format!(":{}@", server.password()), 1);
    let mut remote = open_job(&url, "two-stage").unwrap();

    let status = remote.status().unwrap();
    assert_eq!(status.state, "running");
    assert_eq!((status.total, status.items), (10, 9));
    assert_eq!(
        (
            status.detail_pending,
            status.detail_done,
            status.detail_failed
        ),
        (4, 6, 1)
    );
    assert!(status.detail_stage);
    assert_eq!(status.failed_for_good, 2 + 1);
    assert_eq!(
        status.items_waiting,
        4 + 1,
        "on_failure = wait: failed ones wait too"
    );
    assert_eq!(status.rate, Some(5.0), "both daemons' rates");
    assert_eq!(status.eta_seconds, Some((5.0 + 4.0) / 5.0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for daemon in &status.daemons {
        assert!(now.abs_diff(daemon.started) < 60, "{daemon:?}");
        assert!(now.abs_diff(daemon.last_heartbeat) < 60, "{daemon:?}");
        assert!(daemon.heartbeat_age_seconds < 60, "{daemon:?}");
    }

    // Running at 0 pages/s: no ETA (not an infinite one).
    heartbeat(&mut client, a, &json!({"pages_per_second": 0.0})).unwrap();
    heartbeat(&mut client, b, &json!({"pages_per_second": 0.0})).unwrap();
    let status = remote.status().unwrap();
    assert_eq!((status.rate, status.eta_seconds), (Some(0.0), None));

    // No heartbeat for an hour: nobody runs; the rate and ETA are unknown.
    client
        .execute(
            "UPDATE pagecrawl_daemons SET heartbeat = now() - interval '1 hour' WHERE job_id = $1",
            &[&job.0],
        )
        .unwrap();
    let status = remote.status().unwrap();
    assert_eq!(status.state, "idle");
    assert_eq!((status.rate, status.eta_seconds), (None, None));
    assert!(status
        .daemons
        .iter()
        .all(|d| d.heartbeat_age_seconds >= 3_500));

    // Only detail pages pending: not finished yet.
    set_counts(&mut client, job, [0, 8, 2, 4, 6, 1, 9]);
    assert_eq!(remote.status().unwrap().state, "idle");
    set_counts(&mut client, job, [0, 8, 2, 0, 10, 1, 9]);
    assert_eq!(remote.status().unwrap().state, "finished");
    crate::store::postgres::ops::set_paused(&mut client, job, true).unwrap();
    assert_eq!(remote.status().unwrap().state, "paused");

    // on_failure = write: a failed detail page's item is written, not waiting.
    let written = ensure_job(
        &mut client,
        "written",
        &identity(Some(detail_identity("write"))).to_json(),
    )
    .unwrap();
    set_counts(&mut client, written, [1, 0, 0, 4, 0, 3, 0]);
    let mut remote = open_job(&url, "written").unwrap();
    let status = remote.status().unwrap();
    assert_eq!(status.items_waiting, 4);
    assert!(remote.detail().unwrap().is_some());
}

//! Follow mode across restarts: the round counter and the last round's
//! start live in the state, so a daemon killed and started again goes on
//! counting and starts the next round when it is due, not a whole
//! interval after it came back.

use std::time::Duration;

use pagecrawl::fixture::wooyun::{self, Bug};
use pagecrawl::fixture::Site;

use crate::harness::{
    assert_success, finish, signal, stderr, stdout, wait_until, Job, COMMAND_TIMEOUT,
};

const EVERY: Duration = Duration::from_secs(3);

#[test]
fn a_restarted_follower_starts_the_next_round_when_due_and_counts_on() {
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    })
    .concurrency(2)
    .with("key = \"url\"")
    .with(&format!("follow = \"{}s\"", EVERY.as_secs()))
    .with("refresh_pages = 2");
    let first = job.spawn_run();
    job.wait_for_daemon();
    // Rounds 1 and 2 in the first daemon.
    assert!(
        wait_until(Duration::from_secs(30), || job
            .server
            .stats()
            .requests_for(1)
            >= 2
            && job.status()["pending"] == 0),
        "round 2 ran"
    );
    let before = job.status();
    assert_eq!(before["round"], 2, "{before}");
    let next = before["next_round_at"].as_u64().expect("next round known");
    signal(&first, "KILL");
    let _ = finish(first, COMMAND_TIMEOUT);
    job.server.update(|site| site.new_on_top = 5);
    // Down for half the interval: a daemon that forgot would wait a whole
    // one from its restart.
    std::thread::sleep(EVERY / 2);

    let second = job.spawn_run();
    job.wait_for_daemon();
    let after = job.status();
    assert_eq!(after["round"], 2, "the round survives the restart: {after}");
    assert_eq!(after["next_round_at"], next, "{after}");
    let text = stdout(&job.exec(&["status"]));
    assert!(
        text.contains("follow    round 2; the next round starts at "),
        "{text}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || job
            .server
            .stats()
            .requests_for(1)
            >= 3
            && job.status()["pending"] == 0),
        "round 3 ran"
    );
    let arrivals = job.server.stats().arrivals_of(1);
    let gap = arrivals[2] - arrivals[1];
    assert!(
        gap >= EVERY - Duration::from_millis(300) && gap <= EVERY + Duration::from_millis(900),
        "round 3 came {gap:?} after round 2 (the interval is {EVERY:?})"
    );
    assert_eq!(job.status()["round"], 3);
    signal(&second, "TERM");
    let output = finish(second, COMMAND_TIMEOUT);
    assert_success(&output);
    assert!(
        stderr(&output).contains("follow: round 3, re-crawling pages 1..=2"),
        "{}",
        stderr(&output)
    );

    let mut urls: Vec<String> = job.output_bugs().into_iter().map(|b: Bug| b.url).collect();
    let mut expected: Vec<String> = job
        .expected_bugs(1..=3)
        .into_iter()
        .map(|b| b.url)
        .collect();
    expected.extend((0..5).map(|i| wooyun::newer_bug(1, i).url));
    urls.sort();
    expected.sort();
    assert_eq!(
        urls, expected,
        "every entry exactly once across rounds and restarts"
    );
}

//! Leases and the fenced commit against a real throwaway server.

use super::*;
use crate::fixture::postgres::{wait_until, Postgres};
use crate::store::postgres::job::{
    counters, enqueue_pages, ensure_job, recount, register_daemon, Counters,
};
use crate::store::postgres::schema::migrate;
use serde_json::json;
use std::collections::HashSet;

const LONG: Duration = Duration::from_secs(600);

fn job_with_pages(server: &Postgres, pages: i64) -> (::postgres::Client, JobId) {
    let mut client = server.connect().unwrap();
    migrate(&mut client).unwrap();
    let job = ensure_job(&mut client, "test", &json!({"url": "u"})).unwrap();
    enqueue_pages(&mut client, job, 1, pages).unwrap();
    (client, job)
}

/// A page done with one item per page, keyed when `key` is given.
fn done(task: &LeasedTask, token: i64, key: Option<&str>) -> Settled {
    Settled {
        task: task.id,
        token,
        outcome: Outcome::Done {
            items: vec![NewItem {
                page: task.page,
                index: 0,
                item: json!({"page": task.page}),
                key: key.map(str::to_owned),
            }],
            bytes: 100,
            details: Vec::new(),
        },
    }
}

fn item_count(client: &mut ::postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM pagecrawl_items", &[])
        .unwrap()
        .get(0)
}

#[test]
fn daemons_leasing_at_once_never_hold_the_same_task() {
    let Some(server) = Postgres::for_test("daemons_leasing_at_once") else {
        return;
    };
    let (mut client, job) = job_with_pages(&server, 600);
    let workers: Vec<_> = (0..3)
        .map(|n| {
            let mut client = server.connect().unwrap();
            std::thread::spawn(move || {
                let owner = register_daemon(&mut client, job, "host", n).unwrap();
                let mut mine = Vec::new();
                loop {
                    let lease = lease_batch(&mut client, job, owner, 7, LONG).unwrap();
                    if lease.tasks.is_empty() {
                        return mine;
                    }
                    let group: Vec<Settled> = lease
                        .tasks
                        .iter()
                        .map(|t| done(t, lease.token, None))
                        .collect();
                    commit_group(&mut client, job, &group).unwrap();
                    mine.extend(lease.tasks.iter().map(|t| t.id.number));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for worker in workers {
        let mine = worker.join().unwrap();
        total += mine.len();
        seen.extend(mine);
    }
    assert_eq!(total, 600, "a task was leased (and committed) twice");
    assert_eq!(seen, (1..=600).collect::<HashSet<i64>>());
    assert_eq!(item_count(&mut client), 600);
    let counted = counters(&mut client, job).unwrap();
    assert_eq!(counted.listing_done, 600);
    assert_eq!(counted.bytes, 60_000);
    assert_eq!(
        Counters {
            bytes: 0,
            ..counted
        },
        recount(&mut client, job).unwrap()
    );
}

#[test]
fn a_lease_taken_over_after_expiry_fences_the_old_owner_out() {
    let Some(server) = Postgres::for_test("a_lease_taken_over_after_expiry") else {
        return;
    };
    let (mut a, job) = job_with_pages(&server, 3);
    let mut b = server.connect().unwrap();
    let owner_a = register_daemon(&mut a, job, "a", 1).unwrap();
    let owner_b = register_daemon(&mut b, job, "b", 2).unwrap();
    let short = Duration::from_millis(300);
    let old = lease_batch(&mut a, job, owner_a, 10, short).unwrap();
    assert_eq!(old.tasks.len(), 3);
    assert!(
        lease_batch(&mut b, job, owner_b, 10, LONG)
            .unwrap()
            .tasks
            .is_empty(),
        "a live lease was taken"
    );
    // Past its expiry, with no take-over yet, the lease is still the
    // owner's: the fence is the token, not the clock.
    let stale = old.clone();
    wait_until("the lease to expire", || {
        let expired: bool = a
            .query_one(
                "SELECT bool_and(lease_expires < clock_timestamp()) FROM pagecrawl_tasks",
                &[],
            )
            .unwrap()
            .get(0);
        expired
    });
    let mut new = lease_batch(&mut b, job, owner_b, 10, LONG).unwrap();
    assert_eq!(new.tasks.len(), 3, "the expired lease was not taken over");
    assert_ne!(new.token, stale.token);
    assert!(renew(&mut a, job, stale.token, LONG).unwrap().is_empty());
    // The old owner's group, mixed with one task it never held: refused
    // whole, nothing written.
    let group: Vec<Settled> = stale
        .tasks
        .iter()
        .map(|t| done(t, stale.token, None))
        .collect();
    match commit_group(&mut a, job, &group) {
        Err(CommitError::Fenced { lost }) => assert_eq!(lost.len(), 3),
        other => panic!("a taken-over lease committed: {other:?}"),
    }
    let mut mixed = vec![done(&new.tasks[0], new.token, None)];
    mixed.push(done(&stale.tasks[1], stale.token, None));
    assert!(matches!(
        commit_group(&mut a, job, &mixed),
        Err(CommitError::Fenced { .. })
    ));
    assert_eq!(item_count(&mut a), 0, "a refused commit wrote items");
    let before = counters(&mut a, job).unwrap();
    assert_eq!(before.listing_done, 0);
    // The new owner commits, and the old one's retry is still refused.
    assert_eq!(renew(&mut b, job, new.token, LONG).unwrap().len(), 3);
    let group: Vec<Settled> = new.tasks.iter().map(|t| done(t, new.token, None)).collect();
    commit_group(&mut b, job, &group).unwrap();
    assert!(
        commit_group(&mut a, job, &group[..1]).is_err(),
        "a settled task committed twice"
    );
    assert_eq!(item_count(&mut a), 3);
    assert_eq!(settled_by(&mut a, job, new.token).unwrap().len(), 3);
    assert!(settled_by(&mut a, job, stale.token).unwrap().is_empty());
    new.tasks.clear();
}

#[test]
fn expired_and_released_leases_return_to_pending_and_retries_wait() {
    let Some(server) = Postgres::for_test("expired_and_released_leases") else {
        return;
    };
    let (mut client, job) = job_with_pages(&server, 4);
    let owner = register_daemon(&mut client, job, "a", 1).unwrap();
    let short = lease_batch(&mut client, job, owner, 2, Duration::from_millis(100)).unwrap();
    let long = lease_batch(&mut client, job, owner, 2, LONG).unwrap();
    assert_eq!(
        short.tasks.iter().map(|t| t.id.number).collect::<Vec<_>>(),
        [1, 2],
        "leases go in page order"
    );
    wait_until("the short lease to expire", || {
        expire(&mut client, job).unwrap() == 2
    });
    assert_eq!(release(&mut client, job, long.token).unwrap(), 2);
    let again = lease_batch(&mut client, job, owner, 10, LONG).unwrap();
    assert_eq!(again.tasks.len(), 4);
    let group: Vec<Settled> = again
        .tasks
        .iter()
        .map(|t| Settled {
            task: t.id,
            token: again.token,
            outcome: if t.id.number == 4 {
                Outcome::Failed {
                    kind: "http 404".into(),
                    detail: "not found".into(),
                }
            } else {
                Outcome::Retry {
                    after: LONG,
                    kind: "http 503".into(),
                    detail: "busy".into(),
                }
            },
        })
        .collect();
    commit_group(&mut client, job, &group).unwrap();
    assert!(
        lease_batch(&mut client, job, owner, 10, LONG)
            .unwrap()
            .tasks
            .is_empty(),
        "a task to retry later was leased at once"
    );
    let counted = counters(&mut client, job).unwrap();
    assert_eq!((counted.listing_pending, counted.listing_failed), (3, 1));
    assert_eq!(
        Counters {
            bytes: 0,
            ..counted
        },
        recount(&mut client, job).unwrap()
    );
    let reason: String = client
        .query_one(
            "SELECT failure_kind FROM pagecrawl_tasks WHERE number = 4",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(reason, "http 404");
}

#[test]
fn an_item_key_is_written_once_even_from_two_daemons_at_once() {
    let Some(server) = Postgres::for_test("an_item_key_is_written_once") else {
        return;
    };
    let (mut client, job) = job_with_pages(&server, 40);
    let owner = register_daemon(&mut client, job, "a", 1).unwrap();
    // Two leases, committed at once by two connections, every item of
    // both under the same twenty keys.
    let first = lease_batch(&mut client, job, owner, 20, LONG).unwrap();
    let second = lease_batch(&mut client, job, owner, 20, LONG).unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let committers: Vec<_> = [first, second]
        .into_iter()
        .map(|lease| {
            let mut client = server.connect().unwrap();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let group: Vec<Settled> = lease
                    .tasks
                    .iter()
                    .enumerate()
                    .map(|(n, t)| done(t, lease.token, Some(&format!("key-{n}"))))
                    .collect();
                barrier.wait();
                commit_group(&mut client, job, &group).unwrap()
            })
        })
        .collect();
    let results: Vec<Committed> = committers.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(results.iter().map(|r| r.items_written).sum::<u64>(), 20);
    assert_eq!(results.iter().map(|r| r.items_skipped).sum::<u64>(), 20);
    assert_eq!(item_count(&mut client), 20);
    let counted = counters(&mut client, job).unwrap();
    assert_eq!((counted.items, counted.listing_done), (20, 40));
    // Items without a key are never taken for duplicates.
    enqueue_pages(&mut client, job, 41, 42).unwrap();
    let lease = lease_batch(&mut client, job, owner, 2, LONG).unwrap();
    let group: Vec<Settled> = lease
        .tasks
        .iter()
        .map(|t| done(t, lease.token, None))
        .collect();
    assert_eq!(
        commit_group(&mut client, job, &group)
            .unwrap()
            .items_written,
        2
    );
}

#[test]
fn a_listing_commit_queues_its_details_once_and_details_lease_first() {
    let Some(server) = Postgres::for_test("a_listing_commit_queues_its_details") else {
        return;
    };
    let (mut client, job) = job_with_pages(&server, 2);
    let owner = register_daemon(&mut client, job, "a", 1).unwrap();
    let lease = lease_batch(&mut client, job, owner, 1, LONG).unwrap();
    let page = &lease.tasks[0];
    let details: Vec<NewDetail> = (0..3)
        .map(|n| NewDetail {
            number: n,
            page: page.page,
            // Two items link to the same detail page: queued once.
            url: format!("http://127.0.0.1/d/{}", n.min(1)),
            payload: json!({"index": n}),
        })
        .collect();
    let group = [Settled {
        task: page.id,
        token: lease.token,
        outcome: Outcome::Done {
            items: Vec::new(),
            bytes: 10,
            details,
        },
    }];
    let committed = commit_group(&mut client, job, &group).unwrap();
    assert_eq!(committed.details_queued, 2);
    let next = lease_batch(&mut client, job, owner, 10, LONG).unwrap();
    let order: Vec<TaskId> = next.tasks.iter().map(|t| t.id).collect();
    assert_eq!(
        order,
        [TaskId::detail(0), TaskId::detail(1), TaskId::listing(2)],
        "page 1's details come before page 2"
    );
    let counted = counters(&mut client, job).unwrap();
    assert_eq!((counted.detail_pending, counted.listing_pending), (2, 1));
    assert_eq!(
        Counters {
            bytes: 0,
            ..counted
        },
        recount(&mut client, job).unwrap()
    );
}

#[test]
fn a_commit_cut_by_a_killed_connection_writes_all_or_nothing() {
    let Some(server) = Postgres::for_test("a_commit_cut_by_a_killed_connection") else {
        return;
    };
    let rounds = 8;
    let per_round = 50;
    let (mut watcher, job) = job_with_pages(&server, rounds * per_round);
    let owner = register_daemon(&mut watcher, job, "a", 1).unwrap();
    let mut cut = 0;
    for round in 0..rounds {
        let mut client = server.connect().unwrap();
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let lease = lease_batch(&mut client, job, owner, per_round as usize, LONG).unwrap();
        // Many items per task: the transaction lasts long enough to be cut.
        let group: Vec<Settled> = lease
            .tasks
            .iter()
            .map(|t| Settled {
                task: t.id,
                token: lease.token,
                outcome: Outcome::Done {
                    items: (0..200)
                        .map(|i| NewItem {
                            page: t.page,
                            index: i,
                            item: json!({"page": t.page, "i": i, "pad": "x".repeat(200)}),
                            key: None,
                        })
                        .collect(),
                    bytes: 1,
                    details: Vec::new(),
                },
            })
            .collect();
        let committer = std::thread::spawn(move || commit_group(&mut client, job, &group).is_ok());
        // Kill the backend once it is inside the transaction (from the
        // second round on, a little later each round).
        let mut polls = 0;
        loop {
            let in_transaction: Option<bool> = watcher
                .query_one(
                    "SELECT xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .ok()
                .and_then(|row| row.get(0));
            if in_transaction == Some(true) {
                polls += 1;
                if polls > round {
                    watcher
                        .execute("SELECT pg_terminate_backend($1)", &[&pid])
                        .unwrap();
                    break;
                }
            }
            if committer.is_finished() {
                break;
            }
        }
        let reported = committer.join().unwrap();
        let settled = settled_by(&mut watcher, job, lease.token).unwrap().len();
        let items: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pagecrawl_items WHERE page = ANY($1)",
                &[&lease.tasks.iter().map(|t| t.page).collect::<Vec<i64>>()],
            )
            .unwrap()
            .get(0);
        assert!(
            (settled, items) == (0, 0) || (settled, items) == (per_round as usize, 200 * per_round),
            "round {round}: {settled} tasks settled and {items} items: a torn commit"
        );
        if reported {
            assert_eq!(
                settled, per_round as usize,
                "a reported commit is not there"
            );
        }
        if settled == 0 {
            cut += 1;
            // The daemon, unsure, asks what its token settled, finds
            // nothing, and gives the tasks back.
            release(&mut watcher, job, lease.token).unwrap();
            let again = lease_batch(&mut watcher, job, owner, per_round as usize, LONG).unwrap();
            assert_eq!(again.tasks.len(), per_round as usize);
            release(&mut watcher, job, again.token).unwrap();
        }
        let counted = counters(&mut watcher, job).unwrap();
        assert_eq!(
            Counters {
                bytes: 0,
                ..counted
            },
            recount(&mut watcher, job).unwrap(),
            "round {round}: counters and tasks disagree"
        );
    }
    eprintln!("{cut} of {rounds} commits were cut by the kill");
    assert!(
        cut > 0,
        "no kill landed inside a commit: the test tested nothing"
    );
}

#[test]
fn leases_and_commits_survive_a_server_crash_and_restart() {
    let Some(mut server) = Postgres::for_test("leases_and_commits_survive_a_server_crash") else {
        return;
    };
    let (mut client, job) = job_with_pages(&server, 5);
    let owner = register_daemon(&mut client, job, "a", 1).unwrap();
    let lease = lease_batch(&mut client, job, owner, 2, LONG).unwrap();
    let first: Vec<Settled> = lease.tasks[..1]
        .iter()
        .map(|t| done(t, lease.token, None))
        .collect();
    commit_group(&mut client, job, &first).unwrap();
    server.restart().unwrap();
    assert!(
        client.query_one("SELECT 1", &[]).is_err(),
        "the old connection outlived the server"
    );
    let mut client = server.connect().unwrap();
    assert_eq!(item_count(&mut client), 1, "a committed item was lost");
    // The lease survived the crash: its owner commits the rest with it.
    let rest: Vec<Settled> = lease.tasks[1..]
        .iter()
        .map(|t| done(t, lease.token, None))
        .collect();
    commit_group(&mut client, job, &rest).unwrap();
    assert_eq!(item_count(&mut client), 2);
    let counted = counters(&mut client, job).unwrap();
    assert_eq!(
        Counters {
            bytes: 0,
            ..counted
        },
        recount(&mut client, job).unwrap()
    );
}

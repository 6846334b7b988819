//! Politeness across daemons: the job's `concurrency` as session-level
//! advisory locks (one per slot, released by the server when the holding
//! connection dies, so a killed daemon never keeps a slot), and its
//! `rate_limit` as one shared reservation row that hands out send times.

use std::time::Duration;

use anyhow::Result;

use super::job::JobId;

/// The first key of a job's slot locks: a hash of "pagecrawl" and the job's
/// id, so that another application's two-key advisory locks in the same
/// database are unlikely to meet ours (the second key is the slot).
pub fn slot_class(job: JobId) -> i32 {
    // FNV-1a over "pagecrawl" and the id's bytes: stable across builds,
    // unlike std's hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in b"pagecrawl".iter().chain(job.0.to_be_bytes().iter()) {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

/// The concurrency slots one connection holds. Advisory locks are
/// re-entrant within a session, so the server would grant a slot this
/// connection already holds: this remembers which ones it holds. Use one
/// `Slots` per connection, and only with that connection.
#[derive(Debug)]
pub struct Slots {
    class: i32,
    held: Vec<bool>,
}

impl Slots {
    /// The `concurrency` slots of `job`, none held yet.
    pub fn new(job: JobId, concurrency: u32) -> Slots {
        Slots {
            class: slot_class(job),
            held: vec![false; concurrency as usize],
        }
    }

    /// Takes a free slot, if any daemon left one, without waiting.
    pub fn try_take(&mut self, client: &mut ::postgres::Client) -> Result<Option<u32>> {
        // Start at a random slot: daemons probing at once rarely collide.
        let count = self.held.len();
        let start = if count == 0 {
            0
        } else {
            fastrand::usize(..count)
        };
        for offset in 0..count {
            let slot = (start + offset) % count;
            if self.held[slot] {
                continue;
            }
            let taken: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&self.class, &(slot as i32)],
                )?
                .get(0);
            if taken {
                self.held[slot] = true;
                return Ok(Some(slot as u32));
            }
        }
        Ok(None)
    }

    /// Gives a slot back.
    pub fn release(&mut self, client: &mut ::postgres::Client, slot: u32) -> Result<()> {
        if let Some(held) = self.held.get_mut(slot as usize).filter(|held| **held) {
            client.execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&self.class, &(slot as i32)],
            )?;
            *held = false;
        }
        Ok(())
    }

    /// How many slots the job has.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether the job has no slot at all.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// How many slots this connection holds.
    pub fn held(&self) -> usize {
        self.held.iter().filter(|held| **held).count()
    }
}

/// One request's turn under the job's shared rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Turn {
    /// How long to wait before sending.
    pub wait: Duration,
    /// The send time reserved, in seconds since the epoch on the server's
    /// clock (every daemon's turns are spaced on that one clock).
    pub at: f64,
}

/// Reserves the next send time of `job` at `per_second` requests a second:
/// the job's turns are spaced `1 / per_second` apart whichever daemons take
/// them; a job idle for a while gets no burst (the next turn is now).
pub fn reserve_turn(client: &mut ::postgres::Client, job: JobId, per_second: f64) -> Result<Turn> {
    let spacing_micros = (1_000_000.0 / per_second).ceil() as i64;
    let row = client.query_one(
        "WITH now AS (SELECT clock_timestamp() AS t) \
         UPDATE pagecrawl_rate SET next_allowed = \
           greatest(next_allowed, now.t) + $2::bigint * interval '1 microsecond' \
         FROM now WHERE job_id = $1 \
         RETURNING \
           extract(epoch FROM next_allowed - now.t)::float8 - $2::bigint / 1e6::float8, \
           extract(epoch FROM next_allowed)::float8 - $2::bigint / 1e6::float8",
        &[&job.0, &spacing_micros],
    )?;
    let wait: f64 = row.get(0);
    Ok(Turn {
        wait: Duration::from_secs_f64(wait.max(0.0)),
        at: row.get(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::postgres::Postgres;
    use crate::store::postgres::job::ensure_job;
    use crate::store::postgres::schema::migrate;
    use serde_json::json;
    use std::time::Instant;

    fn job(server: &Postgres) -> JobId {
        let mut client = server.connect().unwrap();
        migrate(&mut client).unwrap();
        ensure_job(&mut client, "polite", &json!({})).unwrap()
    }

    #[test]
    fn concurrency_slots_are_shared_and_a_dead_holder_frees_its_slots() {
        let Some(server) = Postgres::for_test("concurrency_slots_are_shared") else {
            return;
        };
        let job = job(&server);
        let mut a = server.connect().unwrap();
        let mut b = server.connect().unwrap();
        let mut a_slots = Slots::new(job, 3);
        let mut b_slots = Slots::new(job, 3);
        assert!(a_slots.try_take(&mut a).unwrap().is_some());
        assert!(a_slots.try_take(&mut a).unwrap().is_some());
        let b_slot = b_slots.try_take(&mut b).unwrap().expect("a third slot");
        assert_eq!(a_slots.try_take(&mut a).unwrap(), None, "a fourth slot");
        assert_eq!(b_slots.try_take(&mut b).unwrap(), None, "a fourth slot");
        b_slots.release(&mut b, b_slot).unwrap();
        assert!(a_slots.try_take(&mut a).unwrap().is_some());
        assert_eq!(a_slots.held(), 3);
        // The holder dies: the server frees its slots.
        let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        b.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut freed = 0;
        while freed < 3 {
            assert!(
                Instant::now() < deadline,
                "a dead connection kept its slots"
            );
            if b_slots.try_take(&mut b).unwrap().is_some() {
                freed += 1;
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(b_slots.try_take(&mut b).unwrap(), None);
    }

    #[test]
    fn connections_sharing_the_rate_stay_within_it_together() {
        let Some(server) = Postgres::for_test("connections_sharing_the_rate") else {
            return;
        };
        let job = job(&server);
        let rate = 25.0;
        let began = Instant::now();
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let mut client = server.connect().unwrap();
                std::thread::spawn(move || {
                    (0..10)
                        .map(|_| {
                            let turn = reserve_turn(&mut client, job, rate).unwrap();
                            std::thread::sleep(turn.wait);
                            turn.at
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        let mut turns: Vec<f64> = takers
            .into_iter()
            .flat_map(|taker| taker.join().unwrap())
            .collect();
        let elapsed = began.elapsed();
        turns.sort_by(f64::total_cmp);
        assert_eq!(turns.len(), 40);
        for pair in turns.windows(2) {
            assert!(
                pair[1] - pair[0] >= 1.0 / rate - 1e-6,
                "two turns {:.6} s apart, closer than 1/rate",
                pair[1] - pair[0]
            );
        }
        for (n, first) in turns.iter().enumerate() {
            let in_a_second = turns[n..].iter().take_while(|t| **t < first + 1.0).count();
            assert!(
                in_a_second <= rate as usize,
                "{in_a_second} turns in one second"
            );
        }
        // 40 turns at 25/s span 39/25 s: the waits were really waited.
        assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    }
}

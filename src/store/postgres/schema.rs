//! The PostgreSQL schema: its tables, its version, and the migration that
//! creates it, applied at start inside one transaction holding a
//! transaction-level advisory lock, so two daemons starting at once cannot
//! race (the second waits, then finds the schema current).
//!
//! Every object is named `pagecrawl_*`, in the connection's current schema
//! (the first of `search_path`), so a database shared with an application
//! keeps its own tables. A database whose `pagecrawl_*` tables pagecrawl did
//! not make (no version table, an unknown version, or the right names with
//! other columns) is refused, not altered: the check runs in the migration's
//! transaction, which is rolled back.

use anyhow::{Context, Result};

use crate::error::UserError;

/// The version this pagecrawl writes; a database at a higher version was
/// made by a newer pagecrawl and is refused.
pub const SCHEMA_VERSION: i32 = 1;

/// The key of `pg_advisory_xact_lock` held while migrating: "pagecrawl" in
/// ASCII, so it is recognisable in `pg_locks` (its single-`bigint` key
/// space is apart from the two-`int4` one the concurrency slots use).
pub const MIGRATION_LOCK: i64 = 0x7061_6765_6372_6177;

/// Migration `n` (1-based) takes the schema from version `n - 1` to `n`.
const MIGRATIONS: &[&str] = &[VERSION_1];

/// Version 1. Task states and stages are short text with CHECKs, readable in
/// `psql`; a task row stays narrow (the items live in their own table), as
/// a high-churn queue table should. A task's `lease_token` is kept after it
/// is settled: it says which lease settled it, which resolves a commit whose
/// outcome the daemon never heard (see `lease::settled_by`).
///
/// The partial indexes `pagecrawl_tasks_leased` and `_failed` hold only the
/// tasks in those states, a few against the queue (a pending task enters
/// neither, so queueing pays nothing for them): through them `status`
/// counts each daemon's leases and the failures by kind without reading
/// the queue.
///
/// `pagecrawl_tasks.job_id` has no foreign key: checked row by row, it was
/// 4 of the 11 s that queueing a million pages took. What it guaranteed
/// holds without it: listing tasks are inserted only by
/// `job::enqueue_pages`, which locks the job row `FOR KEY SHARE` (the
/// check the key made, once), and detail tasks only by a commit fenced by
/// leased tasks of the same job. No job is ever deleted; code that comes to
/// delete one deletes its tasks first.
const VERSION_1: &str = r#"
CREATE TABLE pagecrawl_schema (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE pagecrawl_jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    identity        jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    paused          boolean NOT NULL DEFAULT false,
    listing_pending bigint NOT NULL DEFAULT 0,
    listing_done    bigint NOT NULL DEFAULT 0,
    listing_failed  bigint NOT NULL DEFAULT 0,
    detail_pending  bigint NOT NULL DEFAULT 0,
    detail_done     bigint NOT NULL DEFAULT 0,
    detail_failed   bigint NOT NULL DEFAULT 0,
    items           bigint NOT NULL DEFAULT 0,
    bytes           bigint NOT NULL DEFAULT 0
);
CREATE TABLE pagecrawl_daemons (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id    bigint NOT NULL REFERENCES pagecrawl_jobs (id) ON DELETE CASCADE,
    host      text NOT NULL,
    pid       integer NOT NULL,
    started   timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now(),
    stats     jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE pagecrawl_tasks (
    job_id         bigint NOT NULL,
    stage          text NOT NULL CHECK (stage IN ('listing', 'detail')),
    number         bigint NOT NULL,
    page           bigint NOT NULL,
    url            text,
    payload        jsonb,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'leased', 'done', 'failed')),
    attempts       integer NOT NULL DEFAULT 0,
    not_before     timestamptz,
    lease_owner    bigint,
    lease_token    bigint,
    lease_expires  timestamptz,
    failure_kind   text,
    failure_detail text,
    PRIMARY KEY (job_id, stage, number),
    CHECK ((stage = 'detail') = (url IS NOT NULL)),
    CHECK ((stage = 'listing') <= (number = page)),
    CHECK ((state = 'leased') = (lease_expires IS NOT NULL)),
    CHECK ((state = 'leased') <= (lease_owner IS NOT NULL AND lease_token IS NOT NULL))
);
CREATE INDEX pagecrawl_tasks_open ON pagecrawl_tasks (job_id, page, stage DESC, number)
    WHERE state IN ('pending', 'leased');
CREATE UNIQUE INDEX pagecrawl_tasks_detail_url ON pagecrawl_tasks (job_id, url)
    WHERE stage = 'detail';
CREATE INDEX pagecrawl_tasks_leased ON pagecrawl_tasks (lease_owner)
    WHERE state = 'leased';
CREATE INDEX pagecrawl_tasks_failed ON pagecrawl_tasks (job_id, stage, failure_kind)
    WHERE state = 'failed';
CREATE INDEX pagecrawl_daemons_job ON pagecrawl_daemons (job_id);
CREATE TABLE pagecrawl_items (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES pagecrawl_jobs (id) ON DELETE CASCADE,
    page   bigint NOT NULL,
    index  integer NOT NULL,
    item   jsonb NOT NULL,
    key    text,
    UNIQUE (job_id, key)
);
CREATE INDEX pagecrawl_items_order ON pagecrawl_items (job_id, page, id);
CREATE TABLE pagecrawl_rate (
    job_id       bigint PRIMARY KEY REFERENCES pagecrawl_jobs (id) ON DELETE CASCADE,
    next_allowed timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE SEQUENCE pagecrawl_lease_tokens;
"#;

/// Every column of the current version, `(table, column, data type)` as
/// `information_schema.columns` names them: what a database must hold, no
/// more and no less, to be taken as pagecrawl's.
pub const COLUMNS: &[(&str, &str, &str)] = &[
    ("pagecrawl_daemons", "heartbeat", "timestamp with time zone"),
    ("pagecrawl_daemons", "host", "text"),
    ("pagecrawl_daemons", "id", "bigint"),
    ("pagecrawl_daemons", "job_id", "bigint"),
    ("pagecrawl_daemons", "pid", "integer"),
    ("pagecrawl_daemons", "started", "timestamp with time zone"),
    ("pagecrawl_daemons", "stats", "jsonb"),
    ("pagecrawl_items", "id", "bigint"),
    ("pagecrawl_items", "index", "integer"),
    ("pagecrawl_items", "item", "jsonb"),
    ("pagecrawl_items", "job_id", "bigint"),
    ("pagecrawl_items", "key", "text"),
    ("pagecrawl_items", "page", "bigint"),
    ("pagecrawl_jobs", "bytes", "bigint"),
    ("pagecrawl_jobs", "created_at", "timestamp with time zone"),
    ("pagecrawl_jobs", "detail_done", "bigint"),
    ("pagecrawl_jobs", "detail_failed", "bigint"),
    ("pagecrawl_jobs", "detail_pending", "bigint"),
    ("pagecrawl_jobs", "id", "bigint"),
    ("pagecrawl_jobs", "identity", "jsonb"),
    ("pagecrawl_jobs", "items", "bigint"),
    ("pagecrawl_jobs", "listing_done", "bigint"),
    ("pagecrawl_jobs", "listing_failed", "bigint"),
    ("pagecrawl_jobs", "listing_pending", "bigint"),
    ("pagecrawl_jobs", "name", "text"),
    ("pagecrawl_jobs", "paused", "boolean"),
    ("pagecrawl_rate", "job_id", "bigint"),
    ("pagecrawl_rate", "next_allowed", "timestamp with time zone"),
    ("pagecrawl_schema", "applied_at", "timestamp with time zone"),
    ("pagecrawl_schema", "version", "integer"),
    ("pagecrawl_tasks", "attempts", "integer"),
    ("pagecrawl_tasks", "failure_detail", "text"),
    ("pagecrawl_tasks", "failure_kind", "text"),
    ("pagecrawl_tasks", "job_id", "bigint"),
    (
        "pagecrawl_tasks",
        "lease_expires",
        "timestamp with time zone",
    ),
    ("pagecrawl_tasks", "lease_owner", "bigint"),
    ("pagecrawl_tasks", "lease_token", "bigint"),
    ("pagecrawl_tasks", "not_before", "timestamp with time zone"),
    ("pagecrawl_tasks", "number", "bigint"),
    ("pagecrawl_tasks", "page", "bigint"),
    ("pagecrawl_tasks", "payload", "jsonb"),
    ("pagecrawl_tasks", "stage", "text"),
    ("pagecrawl_tasks", "state", "text"),
    ("pagecrawl_tasks", "url", "text"),
];

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The version the database was at (0: no pagecrawl tables).
    pub from: i32,
    /// The version it is at now: [`SCHEMA_VERSION`].
    pub to: i32,
}

/// Brings the database's pagecrawl schema to [`SCHEMA_VERSION`], or refuses
/// a database that holds `pagecrawl_*` tables pagecrawl did not make (a
/// [`UserError::Config`], nothing changed). Safe to call from any number of
/// daemons at once.
/// The version of the pagecrawl schema the database holds (0: no pagecrawl
/// tables), or the refusal of tables pagecrawl did not make.
fn version_found(transaction: &mut ::postgres::Transaction) -> Result<i32> {
    let tables: Vec<String> = transaction
        .query(
            "SELECT c.relname::text FROM pg_class c \
             WHERE c.relnamespace = current_schema()::regnamespace \
             AND c.relname LIKE 'pagecrawl\\_%' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
             ORDER BY 1",
            &[],
        )
        .context("listing the database's pagecrawl tables")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let found = if tables.is_empty() {
        0
    } else if !tables.iter().any(|t| t == "pagecrawl_schema") {
        return Err(refused(format!(
            "it holds tables named like pagecrawl's that pagecrawl did not create ({})",
            tables.join(", ")
        )));
    } else {
        let version: Option<i32> = transaction
            .query_one("SELECT max(version) FROM pagecrawl_schema", &[])
            .map_err(|_| refused("its pagecrawl_schema table is not pagecrawl's".into()))?
            .get(0);
        match version {
            Some(version) if (1..=SCHEMA_VERSION).contains(&version) => version,
            Some(version) if version > SCHEMA_VERSION => {
                return Err(refused(format!(
                    "its pagecrawl schema is at version {version}, made by a newer pagecrawl \
                     (this one knows versions up to {SCHEMA_VERSION}): upgrade pagecrawl"
                )))
            }
            _ => {
                return Err(refused(format!(
                    "its pagecrawl_schema table holds no version pagecrawl knows ({version:?})"
                )))
            }
        }
    };
    Ok(found)
}

/// Checks, without changing anything, that the database holds a pagecrawl
/// schema this pagecrawl reads (for the commands that only read a job:
/// `status`, `export`). A database with none is refused with a
/// [`UserError::Usage`]; one that is not pagecrawl's, or a newer one's, as
/// [`migrate`] refuses it.
pub fn check(client: &mut ::postgres::Client, shown_url: &str) -> Result<()> {
    let mut transaction = client
        .build_transaction()
        .read_only(true)
        .start()
        .context("reading the schema")?;
    match version_found(&mut transaction)? {
        0 => Err(UserError::Usage(format!(
            "the database {shown_url} holds no pagecrawl job (it has no pagecrawl tables): \
             check `store`, or the job has not been started there yet"
        ))
        .into()),
        SCHEMA_VERSION => match column_difference(&mut transaction)? {
            Some(difference) => Err(refused(difference)),
            None => Ok(()),
        },
        older => Err(UserError::Usage(format!(
            "the database {shown_url} holds pagecrawl schema version {older}: start a pagecrawl \
             daemon of this version on it once to bring it to version {SCHEMA_VERSION}"
        ))
        .into()),
    }
}

pub fn migrate(client: &mut ::postgres::Client) -> Result<Migrated> {
    let mut transaction = client.transaction()?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .context("waiting for the schema lock")?;
    let from = version_found(&mut transaction)?;
    for (done, migration) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let version = done as i32 + 1;
        transaction
            .batch_execute(migration)
            .with_context(|| format!("creating the pagecrawl schema (version {version})"))?;
        transaction.execute(
            "INSERT INTO pagecrawl_schema (version) VALUES ($1)",
            &[&version],
        )?;
    }
    if let Some(difference) = column_difference(&mut transaction)? {
        // Dropping the transaction rolls back whatever was created.
        return Err(refused(difference));
    }
    transaction.commit()?;
    Ok(Migrated {
        from,
        to: SCHEMA_VERSION,
    })
}

/// How the database's `pagecrawl_*` columns differ from [`COLUMNS`], in
/// words, or `None` when they are the same.
fn column_difference(transaction: &mut ::postgres::Transaction) -> Result<Option<String>> {
    let found: Vec<(String, String, String)> = transaction
        .query(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name LIKE 'pagecrawl\\_%' \
             ORDER BY 1, 2",
            &[],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let expected = |t: &str, c: &str| COLUMNS.iter().find(|(et, ec, _)| *et == t && *ec == c);
    for (table, column, data_type) in &found {
        match expected(table, column) {
            None => {
                return Ok(Some(format!(
                    "its table {table} has a column {column} that pagecrawl's has not"
                )))
            }
            Some((_, _, wanted)) if wanted != data_type => {
                return Ok(Some(format!(
                    "its column {table}.{column} is {data_type}, pagecrawl's is {wanted}"
                )))
            }
            Some(_) => {}
        }
    }
    let missing = COLUMNS
        .iter()
        .find(|(t, c, _)| !found.iter().any(|(ft, fc, _)| ft == t && fc == c));
    Ok(missing.map(|(table, column, _)| format!("its table {table} has no column {column}")))
}

fn refused(why: String) -> anyhow::Error {
    UserError::Config(format!(
        "the database is not pagecrawl's: {why}; nothing was changed: point `store` at a \
         database (or a schema, through search_path) of its own"
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::postgres::Postgres;
    use std::sync::{Arc, Barrier};

    fn tables(client: &mut ::postgres::Client) -> Vec<String> {
        client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    #[test]
    fn the_schema_is_created_once_and_matches_its_column_list() {
        let Some(server) = Postgres::for_test("the_schema_is_created_once") else {
            return;
        };
        let mut client = server.connect().unwrap();
        let first = migrate(&mut client).unwrap();
        assert_eq!(first, Migrated { from: 0, to: 1 });
        // The column list the refusal compares with is the real schema's.
        let mut transaction = client.transaction().unwrap();
        assert_eq!(column_difference(&mut transaction).unwrap(), None);
        transaction.rollback().unwrap();
        let again = migrate(&mut client).unwrap();
        assert_eq!(again, Migrated { from: 1, to: 1 });
        let versions: i64 = client
            .query_one("SELECT count(*) FROM pagecrawl_schema", &[])
            .unwrap()
            .get(0);
        assert_eq!(versions, 1);
    }

    #[test]
    fn daemons_starting_at_once_migrate_without_racing() {
        let Some(server) = Postgres::for_test("daemons_starting_at_once_migrate") else {
            return;
        };
        let server = Arc::new(server);
        let barrier = Arc::new(Barrier::new(6));
        let starters: Vec<_> = (0..6)
            .map(|_| {
                let (server, barrier) = (server.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut client = server.connect().unwrap();
                    barrier.wait();
                    migrate(&mut client).map_err(|e| format!("{e:#}"))
                })
            })
            .collect();
        let outcomes: Vec<Migrated> = starters
            .into_iter()
            .map(|starter| starter.join().unwrap().unwrap())
            .collect();
        let created = outcomes.iter().filter(|m| m.from == 0).count();
        assert_eq!(created, 1, "exactly one daemon creates the schema");
        assert!(outcomes.iter().all(|m| m.to == SCHEMA_VERSION));
    }

    #[test]
    fn a_database_with_tables_that_are_not_pagecrawls_is_refused_and_left_alone() {
        let Some(server) = Postgres::for_test("a_database_with_tables_that_are_not") else {
            return;
        };
        let mut client = server.connect().unwrap();
        let cases: &[(&str, &str, &str)] = &[
            (
                "same names, no version table",
                "CREATE TABLE pagecrawl_tasks (id int)",
                "did not create (pagecrawl_tasks)",
            ),
            (
                "a version from the future",
                "SELECT 1",
                "version 99, made by a newer pagecrawl",
            ),
            (
                "a known version, a column of another type",
                "ALTER TABLE pagecrawl_items ALTER COLUMN key TYPE varchar(20)",
                "pagecrawl_items.key is character varying, pagecrawl's is text",
            ),
            (
                "a known version, a column too many",
                "ALTER TABLE pagecrawl_jobs ADD COLUMN owner text",
                "pagecrawl_jobs has a column owner",
            ),
            (
                "a known version, a column missing",
                "ALTER TABLE pagecrawl_daemons DROP COLUMN stats",
                "pagecrawl_daemons has no column stats",
            ),
        ];
        for (case, setup, expected) in cases {
            client
                .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                .unwrap();
            if !setup.starts_with("CREATE") {
                migrate(&mut client).unwrap();
            }
            if case.contains("future") {
                client
                    .batch_execute("INSERT INTO pagecrawl_schema (version) VALUES (99)")
                    .unwrap();
            }
            client.batch_execute(setup).unwrap();
            let before = tables(&mut client);
            let error = migrate(&mut client).expect_err(case);
            let message = crate::error::one_line(&error);
            assert!(message.contains(expected), "{case}: {message}");
            assert!(
                message.starts_with("the database is not pagecrawl's"),
                "{case}: {message}"
            );
            assert_eq!(
                crate::error::exit_for(&error),
                crate::exit_code::Exit::Usage,
                "{case}"
            );
            assert_eq!(
                tables(&mut client),
                before,
                "{case}: the database was altered"
            );
        }
    }
}

//! The PostgreSQL backend's groundwork (issue 13): the schema and its
//! migration, jobs and daemons, fenced leases and the commit transaction,
//! the job-wide politeness primitives (concurrency slots, the shared
//! rate), and the export of a job's items. Not yet wired into the
//! pipeline: the stages still talk to sled.
//!
//! Every function takes a `postgres::Client` (one connection, sync), so a
//! caller decides how connections are pooled and reconnected; none keeps
//! state across calls except [`politeness::Slots`], which is tied to the
//! connection that holds its locks.

pub mod connect;
pub mod export;
pub mod job;
pub mod lease;
pub mod ops;
pub mod politeness;
pub mod read;
pub mod schema;
pub mod tls;

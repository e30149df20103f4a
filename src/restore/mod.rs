//! Restore: planning and fetching archived log back out of the repository.

pub mod binlog_fetch;
pub mod mongodb;
pub mod mysql;
pub mod oplog_fetch;
pub mod owner;
pub mod pg;
pub mod pg_recover;
pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod planned;
pub mod prefetch;
pub mod time;
pub mod wal_fetch;

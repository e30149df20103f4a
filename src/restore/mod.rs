//! Restore: planning and fetching archived log back out of the repository.

pub mod wal_fetch;
pub mod binlog_fetch;
pub mod mysql;
pub mod pg;
pub mod plan;
pub mod prefetch;
#[cfg(test)]
mod plan_tests;
pub mod time;

//! Restore: planning and fetching archived log back out of the repository.

pub mod wal_fetch;
pub mod pg;
pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod time;

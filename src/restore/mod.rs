//! Restore: planning and fetching archived log back out of the repository.

pub mod wal_fetch;

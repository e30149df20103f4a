//! Restore: planning and fetching archived log back out of the repository,
//! one module per engine, and what they share.

pub mod binlog_fetch;
pub mod fetch;
pub mod mongodb;
pub mod mysql;
pub mod oplog_fetch;
pub mod owner;
pub mod plan_error;
pub mod postgres;
pub mod prefetch;
pub mod request;
pub mod session;
pub mod time;

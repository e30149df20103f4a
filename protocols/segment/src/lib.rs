//! pitr's on-object segment format.
//!
//! A segment is an immutable object holding a contiguous stretch of one
//! source's transaction log (PostgreSQL WAL, MySQL/MariaDB binlog events,
//! MongoDB oplog entries), exactly as the server sent it, compressed.
//! See `format` for the byte layout.

pub mod position;

pub use position::{Engine, Epoch, LogPos, TimestampMicros};

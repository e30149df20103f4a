//! The repository side of archiving: object keys, the catalog (time index),
//! roll-up index objects, compaction, source identity and gap records.

pub mod catalog;
pub mod compaction;
pub mod driver;
pub mod fence;
pub mod gaps;
pub mod identity;
pub mod index;
pub mod keys;
pub mod lease;
pub mod oplog_chain;
pub mod pins;
pub mod pipeline;
pub mod progress;
pub mod rollup;
pub mod segment_read;
pub mod sink;

//! MongoDB logical base backups (`pitr backup mongodb://...`): every
//! collection's options, UUID, indexes and documents, views, time-series
//! buckets, users and roles, streamed into the repository, with the oplog
//! positions at the start and end of the dump (see [`manifest`]).
//!
//! * [`take`]: the backup's steps, the wait for the archived oplog, the CLI.
//! * [`dump`]: what is read from the server and how (raw BSON batches).
//! * [`manifest`]: the contract between backup and restore.

pub mod dump;
pub mod manifest;
pub mod take;

//! MongoDB logical base backups (`pitr backup mongodb://...`): every
//! collection's options, UUID, indexes and documents, views, time-series
//! buckets, users and roles, streamed into the repository, with the oplog
//! positions at the start and end of the dump (see [`manifest`]).

pub mod manifest;
pub mod take;

//! `pitr`: point-in-time recovery sidecar. This crate is orchestration only;
//! every byte format lives in the `protocols/` crates.

pub mod archive;
pub mod backup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod monitor;
pub mod redact;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod secrets;
pub mod source;
pub mod storage;

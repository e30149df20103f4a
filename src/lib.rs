//! `pitr`: point-in-time recovery sidecar. This crate is orchestration only;
//! every byte format lives in the `protocols/` crates.

pub mod cli;

//! Streams of a logical base backup as stored objects: one zstd stream per
//! logical piece (a table's rows, a collection's documents, the schema), cut
//! into parts of at most the configured size (`<name>.zst.000`, `.001`, ...).
//! The parts of a stream concatenated form one zstd stream. `size`/`sha256`
//! of a stream are of its uncompressed bytes; a part's are of the stored
//! object.

use serde::{Deserialize, Serialize};

/// One stored object of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// A zstd stream stored as parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub name: String,
    /// Uncompressed size and sha256 (hex).
    pub size: u64,
    pub sha256: String,
    pub parts: Vec<Part>,
}

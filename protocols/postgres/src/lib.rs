//! PostgreSQL physical streaming-replication client and minimal WAL reader.

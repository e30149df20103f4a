//! MySQL/MariaDB binlog replication client and event decoding.

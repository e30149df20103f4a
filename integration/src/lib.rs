//! Throwaway real servers for tests: PostgreSQL 15/18 (+ streaming standby),
//! MariaDB 10.11, MySQL 9.x and an S3-compatible server, each on a free
//! loopback port in its own temp dir, stopped by pid when the handle drops.

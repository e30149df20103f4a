//! What a PostgreSQL base backup shows: bytes received and stored while it runs (on a
//! terminal's stderr only, rewritten in place), and one summary when it is complete.

use std::io::IsTerminal as _;

use super::take::{BackupReport as PgBackupReport, Progress};
use crate::engine::BackupReport;

/// What a finished PostgreSQL backup reports (`pitr backup`, `pitr run`).
pub fn report(r: &PgBackupReport) -> BackupReport {
    let m = &r.manifest;
    let json = serde_json::json!({
        "source": r.key.source.as_str(),
        "backup": r.key.dir(),
        "id": m.id,
        "timeline": m.timeline,
        "start_lsn": m.start_lsn.to_string(),
        "stop_lsn": m.stop_lsn.to_string(),
        "start_time": m.start_time,
        "stop_time": m.stop_time,
        "bytes": m.archives.iter().map(|a| a.size).sum::<u64>(),
        "stored_bytes": m.stored_bytes(),
        "archived_wal_itself": r.archived_wal_itself,
    });
    let summary = format!(
        "backup {} complete: {} .. {} on timeline {} ({} bytes stored)",
        r.key.dir(),
        m.start_lsn,
        m.stop_lsn,
        m.timeline,
        m.stored_bytes()
    );
    BackupReport {
        key: r.key.clone(),
        summary,
        json,
    }
}

/// Progress on stderr, shown only when asked for and stderr is a terminal.
#[derive(Debug)]
pub struct TerminalProgress {
    on: bool,
}

impl TerminalProgress {
    pub fn new(wanted: bool) -> Self {
        TerminalProgress {
            on: wanted && std::io::stderr().is_terminal(),
        }
    }

    /// Rewrites the progress line.
    pub fn show(&self, p: Progress) {
        if !self.on {
            return;
        }
        let pct = if p.total > 0 {
            format!(" ({:.0}%)", 100.0 * p.received as f64 / p.total as f64)
        } else {
            String::new()
        };
        eprint!(
            "\rbackup: {} MiB received{pct}, {} MiB stored   ",
            p.received >> 20,
            p.stored >> 20
        );
    }

    /// Ends the progress line (the backup finished, failed or was interrupted).
    pub fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}

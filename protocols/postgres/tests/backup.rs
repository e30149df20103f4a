//! `BASE_BACKUP` against real PostgreSQL servers.

#![allow(clippy::unwrap_used)]

use pitr_integration::{pg, require, PgServer, PgVersion};
use pitr_postgres::backup::{BackupEvent, BaseBackupOptions, BaseBackupStream};
use pitr_postgres::Config;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Names of the entries of a complete tar stream (512-byte headers).
fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut off = 0;
    while off + 512 <= tar.len() {
        let h = &tar[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        names.push(String::from_utf8_lossy(&h[..name_end]).into_owned());
        let size_field = std::str::from_utf8(&h[124..136]).unwrap();
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .unwrap() as usize;
        off += 512 + size.div_ceil(512) * 512;
    }
    names
}

fn base_backup(v: PgVersion) {
    let server = PgServer::start(v).unwrap();
    server
        .psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 50000) g")
        .unwrap();
    let cfg = Config::parse_with_env(&server.url_as("replicator", "replpass"), |_| None).unwrap();
    let (start, end, archives, manifest, progress) = rt().block_on(async {
        let mut s = BaseBackupStream::start_backup(&cfg, &BaseBackupOptions::default())
            .await
            .unwrap();
        let start = s.start().clone();
        let mut archives: Vec<(String, Vec<u8>)> = Vec::new();
        let mut manifest: Option<Vec<u8>> = None;
        let mut progress = 0u64;
        while let Some(ev) = s.next().await.unwrap() {
            match ev {
                BackupEvent::Archive { name, .. } => archives.push((name, Vec::new())),
                BackupEvent::Manifest => manifest = Some(Vec::new()),
                BackupEvent::Data(d) => match &mut manifest {
                    Some(m) => m.extend_from_slice(&d),
                    None => archives.last_mut().unwrap().1.extend_from_slice(&d),
                },
                BackupEvent::Progress(p) => {
                    assert!(p >= progress, "progress goes backwards");
                    progress = p;
                }
            }
        }
        let end = s.finish().await.unwrap();
        (start, end, archives, manifest.unwrap(), progress)
    });
    assert_eq!(start.timeline.0, 1);
    assert!(start.lsn <= end.lsn, "{} > {}", start.lsn, end.lsn);
    assert_eq!(end.timeline.0, 1);
    assert_eq!(start.tablespaces.len(), 1);
    assert_eq!(start.tablespaces[0].oid, None);
    assert!(start.tablespaces[0].size.unwrap() > 0);
    assert_eq!(archives.len(), 1);
    assert_eq!(archives[0].0, "base.tar");
    let names = tar_names(&archives[0].1);
    for must in [
        "PG_VERSION",
        "backup_label",
        "global/pg_control",
        "postgresql.conf",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "{must} missing from {names:?}"
        );
    }
    assert!(progress > 0 && progress <= archives[0].1.len() as u64);
    // The server's manifest names the same WAL range.
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert!(m["PostgreSQL-Backup-Manifest-Version"].as_i64().is_some());
    let files = m["Files"].as_array().unwrap();
    assert!(files.iter().any(|f| f["Path"] == "PG_VERSION"));
    let wal = &m["WAL-Ranges"][0];
    assert_eq!(wal["Start-LSN"].as_str().unwrap(), start.lsn.to_string());
    assert_eq!(wal["End-LSN"].as_str().unwrap(), end.lsn.to_string());
    // The server is still usable afterwards (backup mode ended).
    assert_eq!(server.psql("SELECT count(*) FROM t").unwrap(), "50000");
}

#[test]
fn base_backup_pg15() {
    require!(pg::available(PgVersion::V15));
    base_backup(PgVersion::V15);
}

#[test]
fn base_backup_pg18() {
    require!(pg::available(PgVersion::V18));
    base_backup(PgVersion::V18);
}

#[test]
fn plain_user_is_refused() {
    require!(pg::available(PgVersion::V15));
    let server = PgServer::start(PgVersion::V15).unwrap();
    let cfg = Config::parse_with_env(&server.url_as("plainuser", "plainpass"), |_| None).unwrap();
    let err = rt()
        .block_on(BaseBackupStream::start_backup(
            &cfg,
            &BaseBackupOptions::default(),
        ))
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

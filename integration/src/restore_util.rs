//! Helpers for end-to-end restore tests: run the `pitr` binary, start a
//! restored PostgreSQL data directory and query it, read the ground truth
//! (rows with their `pg_xact_commit_timestamp`) from the source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use crate::{pitr_bin, PgServer};

/// A background child process killed on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn pitr(args: &[&str]) -> Output {
    Command::new(pitr_bin()).args(args).output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn id(flag: &str) -> u32 {
    let o = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

pub fn as_postgres(cmd: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(cmd).current_dir("/");
    c
}

/// Starts the restored cluster in `dir`, runs `sql`, stops it.
pub fn query_restored(bin: &Path, dir: &Path, sql: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = as_postgres(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(dir.join("check.log"))
        .arg("-o")
        .arg(format!(
            "-p {port} -c listen_addresses='' -c unix_socket_directories={}",
            dir.display()
        ))
        .args(["-w", "start"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\nserver log:\n{}\nrecovery log:\n{}",
        text(&o),
        fs::read_to_string(dir.join("check.log")).unwrap_or_default(),
        fs::read_to_string(dir.join("pitr-recovery.log")).unwrap_or_default()
    );
    let q = as_postgres(&bin.join("psql"))
        .args(["-X", "-At", "-h"])
        .arg(dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    let _ = as_postgres(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .args(["-m", "fast", "-w", "stop"])
        .output();
    assert!(q.status.success(), "{}", text(&q));
    String::from_utf8_lossy(&q.stdout).trim().to_string()
}

pub struct Row {
    pub id: i64,
    pub micros: i64,
    pub ts: String,
}

pub fn rows(server: &PgServer, cond: &str) -> Vec<Row> {
    let out = server
        .psql(&format!(
            "SELECT id, (extract(epoch from c) * 1000000)::bigint, \
             to_char(c AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') \
             FROM (SELECT id, pg_xact_commit_timestamp(xmin) c FROM ledger) s {cond} ORDER BY id"
        ))
        .unwrap();
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Row {
                id: f[0].parse().unwrap(),
                micros: f[1].parse().unwrap(),
                ts: f[2].to_string(),
            }
        })
        .collect()
}

pub fn micros_text(server: &PgServer, micros: i64) -> String {
    server
        .psql(&format!(
            "SELECT to_char(timestamp 'epoch' + {micros} * interval '1 microsecond', 'YYYY-MM-DD HH24:MI:SS.US')"
        ))
        .unwrap()
}

/// Runs restores of one repository source into numbered directories.
pub struct Ctx {
    pub repo: PathBuf,
    pub work: PathBuf,
    pub bin: PathBuf,
    pub n: usize,
    pub name: String,
}

impl Ctx {
    /// Restores to `target` args with --recover; returns the restored ids.
    pub fn restore(&mut self, target: &[&str]) -> Vec<i64> {
        self.n += 1;
        let dir = self.work.join(format!("r{}", self.n));
        let mut args = vec![
            "restore",
            "--repo",
            self.repo.to_str().unwrap(),
            "--name",
            &self.name,
        ];
        args.extend_from_slice(target);
        args.extend_from_slice(&[
            "--target-dir",
            dir.to_str().unwrap(),
            "--recover",
            "--owner",
            "postgres",
            "--pg-bin",
            self.bin.to_str().unwrap(),
        ]);
        let o = pitr(&args);
        eprintln!(
            "pitr restore {target:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "restore {target:?}: {}", text(&o));
        let ids = query_restored(
            &self.bin,
            &dir,
            "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger",
        );
        let _ = fs::remove_dir_all(&dir);
        ids.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect()
    }
}

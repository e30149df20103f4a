//! Replay benchmark: `pitr restore` against `mariadb-binlog | mariadb`, from the same base
//! backup over the same binlog.
//!
//! The source holds three tables (`items` 50 000 rows, `accounts` 1 000 rows, `events`
//! growing). With `pitr archive` running, `pitr backup` takes the base backup; then the
//! stored procedure `bench.gen` writes rounds of: one 1 000-row INSERT ... SELECT into
//! `events`, one 1 000-row UPDATE of `items`, 20 small transactions (one UPDATE of
//! `accounts` + one single-row INSERT each) and one 1 000-row DELETE of the oldest
//! `events` — until the binlog after the backup coordinates reaches `--replay-mb`. The
//! native stop time T is a whole second after the last commit (binlog timestamps are
//! whole seconds and `--stop-datetime` stops at the first event at or after it); pitr
//! refuses times after the last archived commit, so it restores `--latest`, the same
//! transactions.
//!
//! Target A: `pitr restore --latest` (load of the backup, then the server-side apply of the
//! archived binlog; the two phases are split at the `loaded N rows` line on stderr).
//! Target B: `pitr restore --to-position <backup coordinates>` (the same load, nothing to
//! apply), `pitr binlog-fetch` of every file from the backup's on, then
//! `mariadb-binlog --start-position=<backup pos> --stop-datetime=T FILES | mariadb` over
//! TCP as the same user. Both must end with the source's `CHECKSUM TABLE` values.

use std::io::{BufRead, BufReader, Read as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pitr_integration::{Flavor, MySqlServer};

use crate::report::Settings;
use crate::util::{
    archived, binary_logs, binlog_total, bytes_since, checksums, cpu_seconds, json_field,
    master_status, pitr, run_ok, sql_script, wait_until, Bg,
};

/// Source name in the benchmark repositories.
pub const SOURCE: &str = "bench";

const SCHEMA: &str = "
CREATE DATABASE bench;
USE bench;
CREATE TABLE items (id INT PRIMARY KEY, grp INT NOT NULL, qty INT NOT NULL,
  price DECIMAL(12,2) NOT NULL, note VARCHAR(200) NOT NULL, updated DATETIME(6) NOT NULL,
  KEY (grp));
CREATE TABLE accounts (id INT PRIMARY KEY, balance DECIMAL(14,2) NOT NULL, n INT NOT NULL);
CREATE TABLE events (id BIGINT AUTO_INCREMENT PRIMARY KEY, item INT NOT NULL,
  kind TINYINT NOT NULL, payload VARCHAR(255) NOT NULL, at DATETIME(6) NOT NULL, KEY (item));
INSERT INTO items SELECT seq, seq % 97, 0, seq / 7, REPEAT(MD5(seq), 4), NOW(6) FROM seq_1_to_50000;
INSERT INTO accounts SELECT seq, 0, 0 FROM seq_1_to_1000;
INSERT INTO events (item, kind, payload, at) SELECT seq, 0, MD5(seq), NOW(6) FROM seq_1_to_20000;
DELIMITER //
CREATE PROCEDURE gen(IN rounds INT)
BEGIN
  DECLARE r INT DEFAULT 0;
  DECLARE i INT;
  DECLARE base INT;
  WHILE r < rounds DO
    SET base = FLOOR(RAND() * 49000) + 1;
    INSERT INTO bench.events (item, kind, payload, at)
      SELECT (seq * 7919 + base) % 50000 + 1, 1, REPEAT(MD5(seq + base), 3), NOW(6)
      FROM bench.seq_1_to_1000;
    UPDATE bench.items SET qty = qty + 1, price = price + 0.01,
      note = CONCAT(SUBSTR(note, 3), LEFT(MD5(base), 2)), updated = NOW(6)
      WHERE id BETWEEN base AND base + 999;
    SET i = 0;
    WHILE i < 20 DO
      START TRANSACTION;
      UPDATE bench.accounts SET balance = balance + 1.25, n = n + 1 WHERE id = (base + i) % 1000 + 1;
      INSERT INTO bench.events (item, kind, payload, at) VALUES (base + i, 2, MD5(i), NOW(6));
      COMMIT;
      SET i = i + 1;
    END WHILE;
    DELETE FROM bench.events ORDER BY id LIMIT 1000;
    SET r = r + 1;
  END WHILE;
END //
DELIMITER ;
";

/// `pitr restore` into target A.
#[derive(Debug, Clone, Default)]
pub struct PitrRun {
    pub total_secs: f64,
    pub load_secs: f64,
    pub apply_secs: f64,
    /// CPU seconds of `pitr restore` during the apply phase (sampled every 50 ms).
    pub client_cpu: f64,
    /// CPU seconds of the target server during the apply phase.
    pub server_cpu: f64,
    pub transactions: String,
    pub statements: String,
    /// Connections the binlog was applied over, transactions that ran alone,
    /// lock-conflict retries (from the JSON report).
    pub connections: String,
    pub alone: String,
    pub retries: String,
    /// Size of the target's binlog at the end (base load included), bytes.
    pub target_binlog: u64,
}

/// The native way into target B.
#[derive(Debug, Clone, Default)]
pub struct NativeRun {
    pub load_secs: f64,
    pub fetch_secs: f64,
    pub pipe_secs: f64,
    /// CPU seconds of mariadb-binlog, of the mariadb client and of the target server
    /// during the pipe.
    pub binlog_cpu: f64,
    pub client_cpu: f64,
    pub server_cpu: f64,
    /// Size of the target's binlog at the end (base load included), bytes.
    pub target_binlog: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ReplayResult {
    pub binlog_bytes: u64,
    pub files: usize,
    pub generate_secs: f64,
    pub rounds: u64,
    pub backup_at: String,
    pub target_time: String,
    pub pitr: PitrRun,
    /// The same restore over one connection (`--parallel 1`).
    pub pitr_serial: PitrRun,
    /// The same restore with the `--more-parallel` values.
    pub pitr_more: Vec<(u16, PitrRun)>,
    /// With `--skip-target-binlog` (with the variants).
    pub pitr_no_binlog: Option<PitrRun>,
    pub native: NativeRun,
    /// Reference variants of the native pipe (label, run).
    pub variants: Vec<(String, NativeRun)>,
    pub checksums: String,
    pub version: String,
}

pub fn run(s: &Settings, work: &Path) -> Result<ReplayResult> {
    let mut res = ReplayResult::default();
    let dir = work.join("replay");
    std::fs::create_dir_all(&dir)?;
    let repo = dir.join("repo");
    eprintln!("replay: starting the source ...");
    let src = MySqlServer::start(Flavor::MariaDb)?;
    res.version = src.sql("SELECT VERSION()")?;
    sql_script(&src, SCHEMA).context("creating the schema")?;
    let mut archiver = Bg::spawn(
        Command::new(pitr_integration::pitr_bin())
            .args(["archive", &src.url(), "--repo"])
            .arg(&repo)
            .args(["--name", SOURCE]),
        dir.join("pitr-archive.log"),
    )?;
    wait_archived(&src, &repo, &mut archiver)?;

    eprintln!("replay: base backup ...");
    let b = run_ok(&mut pitr(&repo, &["backup", &src.url(), "--json"]))?;
    let bfile = json_field(&b, "binlog_file").context("backup JSON: binlog_file")?;
    let bpos: u64 = json_field(&b, "binlog_pos")
        .and_then(|v| v.parse().ok())
        .context("backup JSON: binlog_pos")?;
    res.backup_at = format!("{bfile}:{bpos}");

    eprintln!("replay: generating {} MB of binlog ...", s.replay_mb);
    let t0 = Instant::now();
    while bytes_since(&binary_logs(&src)?, &bfile, bpos) < s.replay_mb * 1_000_000 {
        archiver.ensure_running()?;
        src.sql("CALL bench.gen(50)")?;
        res.rounds += 50;
    }
    res.generate_secs = t0.elapsed().as_secs_f64();
    let logs = binary_logs(&src)?;
    res.binlog_bytes = bytes_since(&logs, &bfile, bpos);
    let files: Vec<String> = logs
        .iter()
        .map(|(n, _)| n.clone())
        .skip_while(|n| *n != bfile)
        .collect();
    res.files = files.len();
    eprintln!(
        "  {:.0} MB in {:.0} s ({} files); waiting for the archiver ...",
        res.binlog_bytes as f64 / 1e6,
        res.generate_secs,
        files.len()
    );
    // MariaDB binlog timestamps are whole seconds: T is a whole second after the last commit.
    std::thread::sleep(Duration::from_millis(1100));
    res.target_time = src.sql("SELECT DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%d %H:%i:%s')")?;
    std::thread::sleep(Duration::from_millis(1100));
    wait_archived(&src, &repo, &mut archiver)?;
    archiver.stop("TERM")?;
    res.checksums = checksums(&src, "bench")?;
    drop(src);

    let a = MySqlServer::start(Flavor::MariaDb)?;
    let b = MySqlServer::start(Flavor::MariaDb)?;
    eprintln!("replay: pitr restore --latest ...");
    res.pitr = pitr_restore(&repo, &a, "4", &[])?;
    eprintln!(
        "  {:.1} s (load {:.1} s, apply {:.1} s)",
        res.pitr.total_secs, res.pitr.load_secs, res.pitr.apply_secs
    );
    let serial = MySqlServer::start(Flavor::MariaDb)?;
    eprintln!("replay: pitr restore --latest --parallel 1 ...");
    res.pitr_serial = pitr_restore(&repo, &serial, "1", &[])?;
    eprintln!(
        "  {:.1} s (load {:.1} s, apply {:.1} s)",
        res.pitr_serial.total_secs, res.pitr_serial.load_secs, res.pitr_serial.apply_secs
    );
    let got = checksums(&serial, "bench")?;
    if got != res.checksums {
        bail!(
            "checksums differ: source {}, pitr restore --parallel 1 {got}",
            res.checksums
        );
    }
    drop(serial);
    for n in &s.more_parallel {
        let t = MySqlServer::start(Flavor::MariaDb)?;
        eprintln!("replay: pitr restore --latest --parallel {n} ...");
        let run = pitr_restore(&repo, &t, &n.to_string(), &[])?;
        eprintln!("  apply {:.1} s", run.apply_secs);
        let got = checksums(&t, "bench")?;
        if got != res.checksums {
            bail!(
                "checksums differ: source {}, pitr restore --parallel {n} {got}",
                res.checksums
            );
        }
        res.pitr_more.push((*n, run));
    }

    eprintln!(
        "replay: native: base via pitr restore --to-position {} ...",
        res.backup_at
    );
    let t = Instant::now();
    run_ok(&mut pitr(
        &repo,
        &[
            "restore",
            "--to-position",
            &res.backup_at,
            "--target",
            &b.url(),
        ],
    ))?;
    res.native.load_secs = t.elapsed().as_secs_f64();
    let bin_dir = dir.join("binlogs");
    std::fs::create_dir_all(&bin_dir)?;
    let t = Instant::now();
    let mut paths = Vec::new();
    for f in &files {
        let dest = bin_dir.join(f);
        run_ok(pitr(&repo, &["binlog-fetch", f]).arg(&dest))?;
        paths.push(dest);
    }
    res.native.fetch_secs = t.elapsed().as_secs_f64();
    eprintln!("replay: mariadb-binlog | mariadb ...");
    native_pipe(
        &b,
        bpos,
        &res.target_time,
        &paths,
        &dir,
        &[],
        &mut res.native,
    )?;
    eprintln!(
        "  load {:.1} s, fetch {:.1} s, pipe {:.1} s",
        res.native.load_secs, res.native.fetch_secs, res.native.pipe_secs
    );

    let got_a = checksums(&a, "bench")?;
    let got_b = checksums(&b, "bench")?;
    if got_a != res.checksums || got_b != res.checksums {
        bail!(
            "checksums differ: source {}, pitr restore {got_a}, mariadb-binlog {got_b}",
            res.checksums
        );
    }
    drop((a, b));

    // Reference variants of the native pipe: what the target's own binlog and its
    // per-commit log flush cost (where a faster apply would have to save).
    if s.variants {
        let t = MySqlServer::start(Flavor::MariaDb)?;
        eprintln!("replay: pitr restore --latest --skip-target-binlog ...");
        let run = pitr_restore(&repo, &t, "4", &["--skip-target-binlog"])?;
        eprintln!("  apply {:.1} s", run.apply_secs);
        let got = checksums(&t, "bench")?;
        if got != res.checksums {
            bail!(
                "checksums differ: source {}, pitr restore --skip-target-binlog {got}",
                res.checksums
            );
        }
        res.pitr_no_binlog = Some(run);
        drop(t);
        let variants: [(&str, &[&str], &str); 3] = [
            (
                "mariadb-binlog --disable-log-bin \\| mariadb (target writes no binlog)",
                &["--disable-log-bin"],
                "",
            ),
            (
                "mariadb-binlog \\| mariadb, target `innodb_flush_log_at_trx_commit=2`",
                &[],
                "SET GLOBAL innodb_flush_log_at_trx_commit=2",
            ),
            (
                "mariadb-binlog \\| mariadb, target `binlog_annotate_row_events=OFF` (as pitr sets it)",
                &[],
                "SET GLOBAL binlog_annotate_row_events=OFF",
            ),
        ];
        for (label, extra, setup) in variants {
            eprintln!("replay: variant {label} ...");
            let c = MySqlServer::start(Flavor::MariaDb)?;
            if !setup.is_empty() {
                c.sql(setup)?;
            }
            let mut n = NativeRun::default();
            let t = Instant::now();
            run_ok(&mut pitr(
                &repo,
                &[
                    "restore",
                    "--to-position",
                    &res.backup_at,
                    "--target",
                    &c.url(),
                ],
            ))?;
            n.load_secs = t.elapsed().as_secs_f64();
            n.fetch_secs = res.native.fetch_secs;
            native_pipe(&c, bpos, &res.target_time, &paths, &dir, extra, &mut n)?;
            eprintln!("  pipe {:.1} s", n.pipe_secs);
            let got = checksums(&c, "bench")?;
            if got != res.checksums {
                bail!("checksums differ: source {}, {label}: {got}", res.checksums);
            }
            res.variants.push((label.to_string(), n));
        }
    }
    Ok(res)
}

/// The server's process id (from the pid file next to its data directory).
fn server_pid(s: &MySqlServer) -> Result<u32> {
    let dir = s.data_dir().parent().context("data dir has no parent")?;
    let path = dir.join("mysqld.pid");
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {}", path.display()))
}

/// Waits until the archive holds the source's binlog up to its current end.
fn wait_archived(src: &MySqlServer, repo: &Path, archiver: &mut Bg) -> Result<()> {
    let (file, pos) = master_status(src)?;
    wait_until("the archiver", Duration::from_secs(600), || {
        archiver.ensure_running()?;
        Ok(archived(repo)
            .unwrap_or_default()
            .iter()
            .any(|(f, end)| *f == file && *end >= pos))
    })
}

/// Times `pitr restore --latest --parallel N` into `a`, splitting load and apply at the
/// stderr line that ends the load.
fn pitr_restore(repo: &Path, a: &MySqlServer, parallel: &str, extra: &[&str]) -> Result<PitrRun> {
    let t0 = Instant::now();
    let url = a.url();
    let mut args = vec![
        "restore",
        "--latest",
        "--target",
        &url,
        "--parallel",
        parallel,
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut child = pitr(repo, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning pitr restore")?;
    // (when the load ended, pitr's CPU then, the target server's CPU then)
    let loaded: Arc<Mutex<Option<(Instant, f64, f64)>>> = Arc::default();
    let stderr = child.stderr.take().context("no stderr")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let seen = Arc::clone(&loaded);
    let (pid, server) = (child.id(), server_pid(a)?);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("loaded ") {
                if let Ok(mut l) = seen.lock() {
                    let cpu = |p| cpu_seconds(p).unwrap_or(f64::NAN);
                    l.get_or_insert_with(|| (Instant::now(), cpu(pid), cpu(server)));
                }
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let json = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut cpu = 0.0;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        cpu = cpu_seconds(pid).unwrap_or(cpu);
        std::thread::sleep(Duration::from_millis(50));
    };
    let total = t0.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(server)?;
    let err = reader.join().unwrap_or_default();
    let json = json.join().unwrap_or_default();
    if !status.success() {
        bail!("pitr restore failed: {err}");
    }
    let (at, pitr_cpu0, server_cpu0) = loaded
        .lock()
        .ok()
        .and_then(|l| *l)
        .context("pitr restore printed no `loaded N rows` line")?;
    let load = (at - t0).as_secs_f64();
    Ok(PitrRun {
        total_secs: total,
        load_secs: load,
        apply_secs: total - load,
        client_cpu: cpu - pitr_cpu0,
        server_cpu: server_cpu - server_cpu0,
        transactions: json_field(&json, "transactions_applied").unwrap_or_default(),
        statements: json_field(&json, "statements").unwrap_or_default(),
        connections: json_field(&json, "connections").unwrap_or_default(),
        alone: json_field(&json, "transactions_alone").unwrap_or_default(),
        retries: json_field(&json, "lock_retries").unwrap_or_default(),
        target_binlog: binlog_total(a)?,
    })
}

/// Times `mariadb-binlog ... | mariadb` into `b`.
fn native_pipe(
    b: &MySqlServer,
    start_pos: u64,
    stop_utc: &str,
    files: &[std::path::PathBuf],
    dir: &Path,
    extra: &[&str],
    n: &mut NativeRun,
) -> Result<()> {
    let server = server_pid(b)?;
    let server_cpu0 = cpu_seconds(server)?;
    let t = Instant::now();
    let mut dump = Command::new(b.bin("mariadb-binlog"))
        .env("TZ", "UTC")
        .arg("--no-defaults")
        .arg(format!("--start-position={start_pos}"))
        .arg(format!("--stop-datetime={stop_utc}"))
        .args(extra)
        .args(files)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("mariadb-binlog.err"))?)
        .spawn()
        .context("spawning mariadb-binlog")?;
    let pipe = dump.stdout.take().context("no stdout")?;
    let mut client = Command::new(b.bin("mariadb"))
        .arg("--no-defaults")
        .args(["-h", "127.0.0.1", "-P", &b.port().to_string()])
        .args(["-u", "pitr", "-ppitrpass"])
        .stdin(pipe)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("mariadb.err"))?)
        .spawn()
        .context("spawning mariadb")?;
    let (mut dump_st, mut client_st) = (None, None);
    while dump_st.is_none() || client_st.is_none() {
        if dump_st.is_none() {
            n.binlog_cpu = cpu_seconds(dump.id()).unwrap_or(n.binlog_cpu);
            dump_st = dump.try_wait()?;
        }
        if client_st.is_none() {
            n.client_cpu = cpu_seconds(client.id()).unwrap_or(n.client_cpu);
            client_st = client.try_wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    n.pipe_secs = t.elapsed().as_secs_f64();
    n.server_cpu = cpu_seconds(server)? - server_cpu0;
    n.target_binlog = binlog_total(b)?;
    if !matches!((dump_st, client_st), (Some(d), Some(c)) if d.success() && c.success()) {
        bail!(
            "mariadb-binlog ({dump_st:?}) | mariadb ({client_st:?}) failed: {}{}",
            crate::util::log_tail(&dir.join("mariadb.err"), 10),
            crate::util::log_tail(&dir.join("mariadb-binlog.err"), 10)
        );
    }
    Ok(())
}

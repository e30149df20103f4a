//! Writer leases against a real PostgreSQL 15, with real `pitr` processes:
//!
//! * two `pitr archive` of one source (different slots): one streams, a
//!   `--no-wait` one exits 1 naming the holder, a waiting one takes over when
//!   the holder is SIGKILLed; a base backup waits for the running archiver;
//!   `verify` is clean and a restore holds exactly the source's rows;
//! * a holder SIGSTOPped past its lease's expiry (the successor uses the
//!   same slot, freed when the server drops the paused connection) and
//!   SIGCONTed stops with
//!   "lost the writer lease"; an object of its generation reaching past the
//!   takeover is fenced: `verify` and `status` report it, restore skips it;
//! * the lease object deleted by hand after two takeovers: the next
//!   archiver continues above every earlier generation, so nothing it stores
//!   is fenced: `status` exits 0 and `restore --latest` has the newest row;
//! * a second archiver whose clock runs 25 s ahead (libfaketime) never takes
//!   the lease of a holder that keeps renewing it (before, it judged expiry
//!   by its own wall clock and took over at once); it takes over once the
//!   holder stops, and the archive is whole: `status` 0, exact restore;
//! * a lone `pitr backup` (no archiver) archives its WAL itself over a
//!   temporary slot and leaves no replication slot behind.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pitr_integration::archiver::{wait_child, wait_for};
use pitr_integration::restore_util::{id, pitr, text, Ctx};
use pitr_integration::{pg, pitr_bin, require, PgServer, PgVersion};

/// A `pitr archive` child with its log file; killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn archive(url: &str, repo: &Path, name: &str, slot: &str, extra: &[&str]) -> Proc {
        Proc::archive_by(Command::new(pitr_bin()), url, repo, name, slot, extra)
    }

    /// An archiver whose clocks run `ahead` (libfaketime's `faketime -f +<ahead>`).
    fn archive_ahead(url: &str, repo: &Path, name: &str, slot: &str, ahead: &str) -> Proc {
        let mut cmd = Command::new("faketime");
        cmd.args(["-f", ahead]).arg(pitr_bin());
        Proc::archive_by(cmd, url, repo, name, slot, &[])
    }

    fn archive_by(
        mut cmd: Command,
        url: &str,
        repo: &Path,
        name: &str,
        slot: &str,
        extra: &[&str],
    ) -> Proc {
        let log = repo.with_file_name(format!("{name}-{slot}.log"));
        let child = cmd
            .args(["archive", url, "--repo"])
            .arg(repo)
            .args(["--name", name, "--slot", slot, "--flush-interval", "200ms"])
            .args(["--lease-ttl", "3s", "-v"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    fn wait_log(&self, what: &str) {
        wait_for(what, Duration::from_secs(60), || self.log().contains(what));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn insert(server: &PgServer, ids: std::ops::RangeInclusive<i64>) {
    for i in ids {
        server
            .psql(&format!("INSERT INTO ledger VALUES ({i}, {i})"))
            .unwrap();
    }
}

fn repo_arg(repo: &Path) -> &str {
    repo.to_str().unwrap()
}

/// Waits until the archive of `name` reaches the server's current WAL position.
fn wait_archived(server: &PgServer, repo: &Path, name: &str) {
    // Everything written so far; the switch completes the WAL file holding it.
    let target: pitr_postgres::Lsn = server
        .psql("SELECT pg_current_wal_insert_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    server.psql("SELECT pg_switch_wal()").unwrap();
    wait_for("the archive to catch up", Duration::from_secs(60), || {
        let o = pitr(&[
            "restore",
            "--repo",
            repo_arg(repo),
            "--name",
            name,
            "--latest",
            "--dry-run",
            "--json",
        ]);
        let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        p["wal_to"]
            .as_str()
            .and_then(|s| s.parse::<pitr_postgres::Lsn>().ok())
            .is_some_and(|t| t >= target)
    });
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(segments(&p));
        } else if p.extension().is_some_and(|x| x == "seg") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn writer_lease_pg15() {
    require!(pg::available(PgVersion::V15));
    let server = PgServer::start(PgVersion::V15).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let url = server.url_as("replicator", "replpass");
    server
        .psql("CREATE TABLE ledger (id int PRIMARY KEY, amount int)")
        .unwrap();
    let t0 = std::time::Instant::now();
    takeover_after_kill(&server, &url, tmp.path());
    eprintln!("takeover after kill: done at {:?}", t0.elapsed());
    fenced_after_pause(&server, &url, tmp.path());
    eprintln!("fencing after a pause: done at {:?}", t0.elapsed());
    lone_backup_leaves_no_slot(&server, &url, tmp.path());
    eprintln!("lone backup: done at {:?}", t0.elapsed());
    lease_object_removed(&server, &url, tmp.path());
    eprintln!("lease object removed: done at {:?}", t0.elapsed());
    clock_ahead_waits_for_a_live_holder(&server, &url, tmp.path());
    eprintln!("clock ahead: done at {:?}", t0.elapsed());
}

fn takeover_after_kill(server: &PgServer, url: &str, tmp: &Path) {
    let repo = tmp.join("repo");
    let a = Proc::archive(url, &repo, "main", "pitr_first", &[]);
    a.wait_log("streaming WAL from");
    // A second archiver of the source refuses at once with --no-wait...
    let o = Command::new(pitr_bin())
        .args(["archive", url, "--repo", repo_arg(&repo), "--name", "main"])
        .args(["--slot", "pitr_refused", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the writer lease of main is held by")
            && err.contains(&format!("pid {}", a.child.id())),
        "{err}"
    );
    // ...and waits without touching the server otherwise.
    let b = Proc::archive(url, &repo, "main", "pitr_second", &[]);
    b.wait_log("waiting for the writer lease of main: held by");
    insert(server, 1..=10);
    assert_eq!(
        server
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('pitr_second', 'pitr_refused')")
            .unwrap(),
        "0",
        "a waiting archiver created its slot"
    );
    a.signal("-KILL");
    b.wait_log("streaming WAL from");
    assert!(
        b.log()
            .contains("took over the writer lease of main (generation 2)"),
        "{}",
        b.log()
    );
    insert(server, 11..=20);
    // The backup waits for the running archiver instead of archiving itself.
    let o = pitr(&[
        "backup",
        url,
        "--repo",
        repo_arg(&repo),
        "--name",
        "main",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["archived_wal_itself"], false, "{}", text(&o));
    insert(server, 21..=30);
    wait_archived(server, &repo, "main");
    let o = pitr(&["verify", "--repo", repo_arg(&repo)]);
    assert!(o.status.success(), "verify: {}", text(&o));
    let o = pitr(&["status", "--repo", repo_arg(&repo), "--json"]);
    assert!(o.status.success(), "status: {}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lease = &st["sources"][0]["writer_lease"];
    assert_eq!(lease["state"], "live", "{st}");
    assert_eq!(lease["generation"], 2, "{st}");
    assert_eq!(lease["holder_pid"], b.child.id(), "{st}");
    let work = tmp.join("work");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(id("-u")), Some(id("-g"))).unwrap();
    let mut ctx = Ctx {
        repo: repo.clone(),
        work,
        bin: server.bin("postgres").parent().unwrap().to_path_buf(),
        n: 0,
        name: "main".into(),
    };
    let truth: Vec<i64> = server
        .psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger")
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ctx.restore(&["--latest"]), truth);
    // SIGTERM releases the lease: status shows it, and stays healthy.
    b.signal("-TERM");
    let mut b = b;
    assert!(
        wait_child(&mut b.child, Duration::from_secs(60)).success(),
        "{}",
        b.log()
    );
    let o = pitr(&["status", "--repo", repo_arg(&repo), "--json"]);
    assert!(o.status.success(), "status: {}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        st["sources"][0]["writer_lease"]["state"], "released",
        "{st}"
    );
}

/// `status` exits 0 naming lease `generation`, `verify` is clean, and a
/// `--latest` restore of source `name` (worked in `work`) holds exactly the
/// server's ledger, which is returned.
fn whole_and_exact(
    server: &PgServer,
    repo: &Path,
    name: &str,
    generation: u64,
    work: &Path,
) -> Vec<i64> {
    let o = pitr(&["status", "--repo", repo_arg(repo), "--json"]);
    assert!(o.status.success(), "status: {}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        st["sources"][0]["writer_lease"]["generation"], generation,
        "{st}"
    );
    let o = pitr(&["verify", "--repo", repo_arg(repo)]);
    assert!(o.status.success(), "verify: {}", text(&o));
    fs::create_dir_all(work).unwrap();
    std::os::unix::fs::chown(work, Some(id("-u")), Some(id("-g"))).unwrap();
    let mut ctx = Ctx {
        repo: repo.to_path_buf(),
        work: work.to_path_buf(),
        bin: server.bin("postgres").parent().unwrap().to_path_buf(),
        n: 0,
        name: name.into(),
    };
    let truth: Vec<i64> = server
        .psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger")
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ctx.restore(&["--latest"]), truth);
    truth
}

/// After [`takeover_after_kill`] (generations 1 and 2, the lease released;
/// the other steps used other repositories):
/// an operator deletes `writer.json`, as the error for an unreadable lease
/// says to. The next archiver must not start again at generation 1, below
/// generation 2's takeover record, where all it stores would be fenced.
fn lease_object_removed(server: &PgServer, url: &str, tmp: &Path) {
    let repo = tmp.join("repo");
    fs::remove_file(repo.join("main/lease/writer.json")).unwrap();
    let c = Proc::archive(url, &repo, "main", "pitr_third", &[]);
    c.wait_log("streaming WAL from");
    insert(server, 1001..=1010);
    wait_archived(server, &repo, "main");
    let truth = whole_and_exact(server, &repo, "main", 3, &tmp.join("work-removed"));
    assert_eq!(truth.last(), Some(&1010));
    c.signal("-TERM");
    let mut c = c;
    assert!(
        wait_child(&mut c.child, Duration::from_secs(60)).success(),
        "{}",
        c.log()
    );
}

fn clock_ahead_waits_for_a_live_holder(server: &PgServer, url: &str, tmp: &Path) {
    let faketime = Command::new("faketime")
        .args(["-f", "+0s", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !faketime {
        pitr_integration::record_skip(module_path!(), "faketime is not installed");
        return;
    }
    let repo = tmp.join("skew-repo");
    let a = Proc::archive(url, &repo, "skew", "pitr_skew_a", &[]);
    a.wait_log("streaming WAL from");
    let o = pitr(&["backup", url, "--repo", repo_arg(&repo), "--name", "skew"]);
    assert!(o.status.success(), "{}", text(&o));
    let b = Proc::archive_ahead(url, &repo, "skew", "pitr_skew_b", "+25s");
    b.wait_log("waiting for the writer lease of skew: held by");
    // Writes for several ttls (3 s): the holder renews, so the lease is
    // never unchanged for a ttl, whatever the second one's clock says.
    let until = std::time::Instant::now() + Duration::from_secs(9);
    let mut next = 2001;
    while std::time::Instant::now() < until {
        insert(server, next..=next + 9);
        next += 10;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !b.log().contains("took over the writer lease")
            && !b.log().contains("took the writer lease"),
        "{}",
        b.log()
    );
    assert!(!a.log().contains("lost the writer lease"), "{}", a.log());
    // The holder stops cleanly: the second one takes over and goes on.
    a.signal("-TERM");
    let mut a = a;
    assert!(
        wait_child(&mut a.child, Duration::from_secs(60)).success(),
        "{}",
        a.log()
    );
    b.wait_log("streaming WAL from");
    insert(server, next..=next + 9);
    wait_archived(server, &repo, "skew");
    whole_and_exact(server, &repo, "skew", 2, &tmp.join("work-skew"));
    drop(b);
}

fn fenced_after_pause(server: &PgServer, url: &str, tmp: &Path) {
    let repo = tmp.join("frozen-repo");
    // Both use one slot: the server drops the paused holder's connection
    // (and frees the slot) after wal_sender_timeout, later than the lease
    // (3 s) expires, so the successor first finds the slot busy.
    server
        .psql("ALTER SYSTEM SET wal_sender_timeout = '6s'")
        .unwrap();
    server.psql("SELECT pg_reload_conf()").unwrap();
    let c = Proc::archive(url, &repo, "frozen", "pitr_frozen", &[]);
    c.wait_log("streaming WAL from");
    let o = pitr(&[
        "backup",
        url,
        "--repo",
        repo_arg(&repo),
        "--name",
        "frozen",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    insert(server, 31..=35);
    wait_archived(server, &repo, "frozen");
    c.signal("-STOP");
    let d = Proc::archive(url, &repo, "frozen", "pitr_frozen", &[]);
    d.wait_log("took over the writer lease of frozen (generation 2)");
    d.wait_log("streaming WAL from");
    assert!(
        d.log().contains("the replication slot is still in use"),
        "{}",
        d.log()
    );
    insert(server, 36..=40);
    wait_archived(server, &repo, "frozen");
    c.signal("-CONT");
    let mut c = c;
    let status = wait_child(&mut c.child, Duration::from_secs(60));
    assert!(!status.success(), "the paused holder went on: {}", c.log());
    assert!(
        c.log().contains("lost the writer lease of frozen to "),
        "{}",
        c.log()
    );
    // A late upload of generation 1 that slipped past its own check would
    // reach past the takeover: the same WAL as generation 2's first segment.
    let first_of_d = segments(&repo)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("_00000002.seg"))
        .unwrap();
    let late_name = first_of_d
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace("_00000002.seg", "_00000001.seg");
    fs::copy(&first_of_d, first_of_d.with_file_name(&late_name)).unwrap();
    let o = pitr(&["verify", "--repo", repo_arg(&repo)]);
    assert_eq!(o.status.code(), Some(1), "verify: {}", text(&o));
    let out = text(&o);
    assert!(
        out.contains(&late_name)
            && out.contains("fenced (written by generation 1 after generation 2 took over"),
        "{out}"
    );
    let o = pitr(&["status", "--repo", repo_arg(&repo), "--json"]);
    assert_eq!(o.status.code(), Some(1), "status: {}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        st["sources"][0]["fenced"].as_array().unwrap().len(),
        1,
        "{st}"
    );
    // The plan uses generation 2's segment, never the fenced copy (which
    // sorts first and would otherwise win), and the restore is exact.
    let o = pitr(&[
        "restore",
        "--repo",
        repo_arg(&repo),
        "--name",
        "frozen",
        "--latest",
        "--dry-run",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    let d_name = first_of_d
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        !plan.contains(&late_name) && plan.contains(&d_name),
        "{plan}"
    );
    let work = tmp.join("work-frozen");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(id("-u")), Some(id("-g"))).unwrap();
    let mut ctx = Ctx {
        repo: repo.clone(),
        work,
        bin: server.bin("postgres").parent().unwrap().to_path_buf(),
        n: 0,
        name: "frozen".into(),
    };
    assert_eq!(ctx.restore(&["--latest"]), (1..=40).collect::<Vec<i64>>());
    drop(d);
}

fn lone_backup_leaves_no_slot(server: &PgServer, url: &str, tmp: &Path) {
    let repo = tmp.join("lone-repo");
    insert(server, 41..=45);
    let o = pitr(&[
        "backup",
        url,
        "--repo",
        repo_arg(&repo),
        "--name",
        "lone",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["archived_wal_itself"], true, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("temporary replication slot"),
        "{}",
        text(&o)
    );
    assert_eq!(
        server
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pitr_lone%'")
            .unwrap(),
        "0"
    );
    let o = pitr(&["status", "--repo", repo_arg(&repo), "--json"]);
    assert!(o.status.success(), "status: {}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        st["sources"][0]["writer_lease"]["state"], "released",
        "{st}"
    );
    assert!(st["sources"][0]["window"].is_object(), "{st}");
}

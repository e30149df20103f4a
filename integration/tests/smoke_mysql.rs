//! Smoke tests of the MariaDB / MySQL harness: ROW binlogs with CRC32 checksums and GTIDs,
//! the documented users and privileges, the bundled binlog tool reads the server's binlog,
//! restart keeps the data, and a dropped handle stops its server.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use pitr_integration::{mysql, require, Flavor, MySqlServer};

fn binlog_tool(f: Flavor) -> &'static str {
    match f {
        Flavor::MariaDb => "mariadb-binlog",
        Flavor::MySql => "mysqlbinlog",
    }
}

fn client(f: Flavor) -> &'static str {
    match f {
        Flavor::MariaDb => "mariadb",
        Flavor::MySql => "mysql",
    }
}

fn server_is_ready(f: Flavor) {
    let server = MySqlServer::start(f).unwrap();
    let row = server
        .sql("SELECT @@log_bin, @@binlog_format, @@binlog_checksum, @@server_id, @@port")
        .unwrap();
    assert_eq!(
        row,
        format!("1\tROW\tCRC32\t{}\t{}", server.server_id(), server.port())
    );
    let version = server.sql("SELECT VERSION()").unwrap();
    match f {
        Flavor::MariaDb => assert!(version.contains("MariaDB"), "{version}"),
        Flavor::MySql => {
            assert!(
                !version.contains("MariaDB") && version.starts_with('9'),
                "{version}"
            );
            assert_eq!(
                server
                    .sql("SELECT @@gtid_mode, @@enforce_gtid_consistency")
                    .unwrap(),
                "ON\tON"
            );
        }
    }

    let gtid_var = match f {
        Flavor::MariaDb => "SELECT @@gtid_binlog_pos",
        Flavor::MySql => "SELECT @@gtid_executed",
    };
    let before = server.sql(gtid_var).unwrap();
    server
        .sql("CREATE DATABASE smoke; CREATE TABLE smoke.t (id INT PRIMARY KEY); INSERT INTO smoke.t VALUES (1)")
        .unwrap();
    let after = server.sql(gtid_var).unwrap();
    assert!(
        !after.is_empty() && after != before,
        "no GTID recorded after a write: {after:?}"
    );
    // Three transactions: the GTID sequence number advances by exactly 3.
    let seq = |g: &str| -> u64 {
        match f {
            // domain-server-seq
            Flavor::MariaDb => g.rsplit('-').next().unwrap().parse().unwrap(),
            // uuid:1-N
            Flavor::MySql => g.rsplit(['-', ':']).next().unwrap().parse().unwrap(),
        }
    };
    assert_eq!(seq(&after), seq(&before) + 3, "{before} -> {after}");
    if f == Flavor::MariaDb {
        assert!(
            after.starts_with(&format!("0-{}-", server.server_id())),
            "{after}"
        );
    } else {
        let uuid = server.sql("SELECT @@server_uuid").unwrap();
        assert!(after.starts_with(&format!("{uuid}:1-")), "{after}");
    }

    // Users: pitr may replicate, noreplic may not.
    let privs = server
        .sql(
            "SELECT user, Repl_slave_priv, Repl_client_priv, Grant_priv FROM mysql.user \
             WHERE user IN ('pitr', 'noreplic') ORDER BY user",
        )
        .unwrap();
    assert_eq!(privs, "noreplic\tN\tN\tN\npitr\tY\tY\tY");
    let who = Command::new(server.bin(client(f)))
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &server.port().to_string(),
        ])
        .args([
            "-u",
            "pitr",
            "-ppitrpass",
            "-N",
            "-B",
            "-e",
            "SELECT CURRENT_USER()",
        ])
        .output()
        .unwrap();
    assert!(
        who.status.success(),
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&who.stdout).trim(), "pitr@%");
    assert_eq!(
        server.url(),
        format!("mysql://pitr:pitrpass@127.0.0.1:{}", server.port())
    );

    // The binlog lives in binlog_dir() and the installation's own tool can decode it.
    let first = server.binlog_dir().join("binlog.000001");
    let bytes = std::fs::read(&first).unwrap();
    assert_eq!(&bytes[..4], b"\xfebin");
    assert!(server.binlog_dir().join("binlog.index").exists());
    let decoded = Command::new(server.bin(binlog_tool(f)))
        .arg("--no-defaults")
        .arg(&first)
        .output()
        .unwrap();
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let text = String::from_utf8_lossy(&decoded.stdout);
    assert!(
        text.contains("CREATE TABLE smoke.t"),
        "binlog tool output lacks the DDL"
    );
}

fn restart_and_drop(f: Flavor) {
    let mut server = MySqlServer::start(f).unwrap();
    server
        .sql("CREATE DATABASE smoke; CREATE TABLE smoke.t (id INT PRIMARY KEY); INSERT INTO smoke.t VALUES (7)")
        .unwrap();
    server.restart().unwrap();
    assert_eq!(server.sql("SELECT id FROM smoke.t").unwrap(), "7");
    assert!(
        server.binlog_dir().join("binlog.000002").exists(),
        "restart rotates the binlog"
    );

    let port = server.port();
    let pid_file = server.data_dir().parent().unwrap().join("mysqld.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let dir = server.data_dir().to_path_buf();
    drop(server);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "server still running after drop"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts"
    );
    assert!(!dir.exists(), "temp dir not removed after a passing test");
}

#[test]
fn mariadb_server_is_ready() {
    require!(mysql::available(Flavor::MariaDb));
    server_is_ready(Flavor::MariaDb);
}

#[test]
fn mysql_server_is_ready() {
    require!(mysql::available(Flavor::MySql));
    server_is_ready(Flavor::MySql);
}

#[test]
fn mariadb_restart_and_drop() {
    require!(mysql::available(Flavor::MariaDb));
    restart_and_drop(Flavor::MariaDb);
}

#[test]
fn mysql_restart_and_drop() {
    require!(mysql::available(Flavor::MySql));
    restart_and_drop(Flavor::MySql);
}

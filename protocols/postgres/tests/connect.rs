//! Connection and authentication against real PostgreSQL servers.

// Test code: panicking on unexpected errors is the point.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use pitr_integration::{pg, require, PgServer, PgVersion};
use pitr_postgres::{Config, Connection, ErrorKind, ReplicationClient, StartupMode};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cfg(url: &str) -> Config {
    Config::parse_with_env(url, |_| None).unwrap()
}

fn auth_methods(v: PgVersion) {
    let server = PgServer::start(v).unwrap();
    rt().block_on(async {
        // trust (postgres), SCRAM (replicator), MD5 (md5user): all reach IDENTIFY_SYSTEM.
        for (url, user) in [
            (server.url(), "postgres"),
            (server.url_as("replicator", "replpass"), "replicator"),
            (server.url_as("md5user", "md5pass"), "md5user"),
        ] {
            let mut c = ReplicationClient::connect(&cfg(&url))
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"));
            let id = c.identify_system().await.unwrap();
            assert_eq!(id.timeline.0, 1, "{user}");
            assert_eq!(c.connection().server_major_version(), Some(v.major()));
            c.close().await.unwrap();
        }

        // Normal connection with SCRAM: the server confirms who we are.
        let mut c = Connection::connect(
            &cfg(&server.url_as("replicator", "replpass")),
            StartupMode::Normal,
        )
        .await
        .unwrap();
        let rows = c
            .simple_query("SELECT current_user, 1 + 1, NULL::text")
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get("current_user"), Some("replicator"));
        assert_eq!(rows[0].text(1), Some("2"));
        assert_eq!(rows[0].text(2), None);
        // A failing statement leaves the connection usable.
        let e = c
            .simple_query("SELECT * FROM no_such_table")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("42P01"));
        assert_eq!(
            c.simple_query("SELECT 7").await.unwrap()[0].text(0),
            Some("7")
        );

        // Wrong password: definite, and the message names the user, the address and the fix.
        for user in ["replicator", "md5user"] {
            let e = ReplicationClient::connect(&cfg(&server.url_as(user, "wrong")))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
            assert_eq!(e.code(), Some("28P01"), "{e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!(
                    "password authentication failed for user \"{user}\" at 127.0.0.1:{}",
                    server.port()
                )),
                "{msg}"
            );
            assert!(msg.contains("PGPASSWORD"), "{msg}");
        }
        // No password at all for a SCRAM user.
        let e = ReplicationClient::connect(&cfg(&format!(
            "postgres://replicator@127.0.0.1:{}/?passfile=/nonexistent",
            server.port()
        )))
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Definite);
        assert!(e.to_string().contains("none is configured"), "{e}");

        // require_auth: a method the list does not allow is refused before any password goes.
        let with = |url: String, req: &str| format!("{url}?require_auth={req}");
        for (url, req, ok) in [
            (
                server.url_as("replicator", "replpass"),
                "scram-sha-256",
                true,
            ),
            (server.url_as("md5user", "md5pass"), "scram-sha-256", false),
            (server.url_as("md5user", "md5pass"), "!password", true),
            (server.url_as("md5user", "md5pass"), "!md5,!password", false),
            (server.url(), "none", true),
            (server.url(), "!none", false),
            (server.url(), "scram-sha-256", false),
        ] {
            let r = ReplicationClient::connect(&cfg(&with(url.clone(), req))).await;
            match (r, ok) {
                (Ok(c), true) => c.close().await.unwrap(),
                (Err(e), false) => {
                    assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
                    assert!(e.to_string().contains("does not allow"), "{req}: {e}");
                }
                (Ok(_), false) => panic!("{url} with require_auth={req} was let in"),
                (Err(e), true) => panic!("{url} with require_auth={req}: {e}"),
            }
        }
        let e = Config::parse_with_env(&with(server.url(), "md5,!password"), |_| None).unwrap_err();
        assert!(e.to_string().contains("cannot be mixed"), "{e}");

        // A role without REPLICATION may log in normally but not as a walsender.
        let plain = cfg(&server.url_as("plainuser", "plainpass"));
        Connection::connect(&plain, StartupMode::Normal)
            .await
            .unwrap();
        let e = ReplicationClient::connect(&plain).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
        assert!(e.to_string().contains("REPLICATION attribute"), "{e}");
    });
}

#[test]
fn auth_methods_pg15() {
    require!(pg::available(PgVersion::V15));
    auth_methods(PgVersion::V15);
}

#[test]
fn auth_methods_pg18() {
    require!(pg::available(PgVersion::V18));
    auth_methods(PgVersion::V18);
}

#[test]
fn unreachable_port_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    rt().block_on(async {
        let e = ReplicationClient::connect(&cfg(&format!(
            "postgres://u@127.0.0.1:{port}/?connect_timeout=3"
        )))
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("could not connect: "), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(msg.contains("will be retried"), "{msg}");
    });
}

/// Creates a CA and a server certificate for 127.0.0.1 in the data dir and enables TLS.
fn enable_tls(server: &PgServer) -> Option<std::path::PathBuf> {
    let dir = server.data_dir();
    let certs = pitr_integration::certs::server_certs(dir, "")?;
    // The server runs as the data dir's owner and insists on a private key file.
    pitr_integration::certs::hand_to_owner(&certs, dir);
    server.psql("ALTER SYSTEM SET ssl = on").unwrap();
    server.psql("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    Some(certs.ca)
}

#[test]
fn tls_modes_pg15() {
    require!(pg::available(PgVersion::V15));
    if !pitr_integration::certs::openssl_available() {
        pitr_integration::record_skip(module_path!(), "openssl not installed");
        return;
    }
    let server = PgServer::start(PgVersion::V15).unwrap();
    let port = server.port();
    rt().block_on(async {
        // Without TLS on the server: prefer falls back, require refuses.
        let c = ReplicationClient::connect(&cfg(&format!("{}?sslmode=prefer", server.url())))
            .await
            .unwrap();
        assert!(!c.connection().is_tls());
        let e = ReplicationClient::connect(&cfg(&format!("{}?sslmode=require", server.url())))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Definite);
        assert!(e.to_string().contains("does not support TLS"), "{e}");
    });
    let Some(ca) = enable_tls(&server) else {
        pitr_integration::record_skip(module_path!(), "openssl could not create certificates");
        return;
    };
    rt().block_on(async {
        let check = |url: String| async move {
            let mut c = Connection::connect(&cfg(&url), StartupMode::Normal)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(c.is_tls());
            let rows = c
                .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .await
                .unwrap();
            assert_eq!(
                rows[0].text(0),
                Some("t"),
                "server must see an encrypted session"
            );
        };
        check(format!(
            "{}?sslmode=require",
            server.url_as("replicator", "replpass")
        ))
        .await;
        check(format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            server.url(),
            ca.display()
        ))
        .await;
        // channel_binding=require: SCRAM-SHA-256-PLUS over TLS logs in (a wrong binding
        // hash would fail the proof); without TLS, or with a trust login, it is refused.
        check(format!(
            "{}?sslmode=require&channel_binding=require",
            server.url_as("replicator", "replpass")
        ))
        .await;
        for (url, says) in [
            (
                format!(
                    "{}?sslmode=disable&channel_binding=require",
                    server.url_as("replicator", "replpass")
                ),
                "not encrypted",
            ),
            (
                format!("{}?sslmode=require&channel_binding=require", server.url()),
                "without a channel-bound SCRAM exchange",
            ),
        ] {
            let e = Connection::connect(&cfg(&url), StartupMode::Normal)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
        let r = ReplicationClient::connect(&cfg(&format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            server.url_as("replicator", "replpass"),
            ca.display()
        )))
        .await
        .unwrap();
        assert!(r.connection().is_tls());
        // The certificate names 127.0.0.1, not localhost: verify-full refuses, verify-ca accepts.
        let e = Connection::connect(
            &cfg(&format!(
                "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
                ca.display()
            )),
            StartupMode::Normal,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
        assert!(e.to_string().contains("TLS handshake failed"), "{e}");
        Connection::connect(
            &cfg(&format!(
                "postgres://postgres@localhost:{port}/postgres?sslmode=verify-ca&sslrootcert={}",
                ca.display()
            )),
            StartupMode::Normal,
        )
        .await
        .unwrap();
        // An unreadable sslrootcert is a definite configuration error.
        let e = Connection::connect(
            &cfg(&format!(
                "{}?sslmode=verify-ca&sslrootcert=/nonexistent.crt",
                server.url()
            )),
            StartupMode::Normal,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
        // Verification without any root certificate is refused, as libpq refuses it (it
        // used to fall back to the public web PKI roots).
        let home_root =
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".postgresql/root.crt"));
        if home_root.is_none_or(|p| !p.exists()) {
            let e = Connection::connect(
                &cfg(&format!("{}?sslmode=verify-full", server.url())),
                StartupMode::Normal,
            )
            .await
            .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
            assert!(e.to_string().contains("sslrootcert=system"), "{e}");
        }
        // sslrootcert=system: the publicly trusted roots, which do not include the test's CA.
        let e = Connection::connect(
            &cfg(&format!(
                "{}?sslmode=verify-full&sslrootcert=system",
                server.url()
            )),
            StartupMode::Normal,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
        assert!(e.to_string().contains("TLS handshake failed"), "{e}");

        // A client certificate: a role that may log in only by certificate (hba `cert`).
        let (cert, key) = client_cert(&server, "certuser");
        server.psql("CREATE ROLE certuser LOGIN").unwrap();
        server
            .psql("ALTER SYSTEM SET ssl_ca_file = 'ca.crt'")
            .unwrap();
        let hba = server.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("hostssl all certuser 127.0.0.1/32 cert\n{old}"),
        )
        .unwrap();
        server.psql("SELECT pg_reload_conf()").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let base = format!(
            "postgres://certuser@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            ca.display()
        );
        let mut c = Connection::connect(
            &cfg(&format!(
                "{base}&sslcert={}&sslkey={}",
                cert.display(),
                key.display()
            )),
            StartupMode::Normal,
        )
        .await
        .unwrap();
        let rows = c.simple_query("SELECT current_user").await.unwrap();
        assert_eq!(rows[0].text(0), Some("certuser"));
        // Without it the server refuses; with a key that is not the certificate's, pitr does.
        let e = Connection::connect(&cfg(&base), StartupMode::Normal)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Definite, "{e}");
        let e = Connection::connect(
            &cfg(&format!(
                "{base}&sslcert={}&sslkey=/nonexistent.key",
                cert.display()
            )),
            StartupMode::Normal,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("sslkey"), "{e}");
    });
}

/// A client certificate for `user` signed by the CA of [`enable_tls`].
fn client_cert(server: &PgServer, user: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = server.data_dir();
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let subj = format!("/CN={user}");
    // An extension makes it X.509 v3 (rustls refuses v1 certificates).
    std::fs::write(dir.join("client.cnf"), "basicConstraints=CA:FALSE\n").unwrap();
    run(&[
        "req",
        "-new",
        "-nodes",
        "-subj",
        &subj,
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "client.cnf",
        "-out",
        "client.crt",
    ]);
    (dir.join("client.crt"), dir.join("client.key"))
}

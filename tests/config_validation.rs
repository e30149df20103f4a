//! `pitr.toml` validation: mistakes are rejected with messages that name the
//! problem, and secrets never show up in messages or debug output.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::collections::HashMap;
use std::time::Duration;

use pitr::config::Config;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

fn err(text: &str, vars: &[(&str, &str)]) -> String {
    Config::parse(text, &env(vars)).unwrap_err().to_string()
}

const GOOD: &str = r#"
repo = "/var/lib/pitr"
[metrics]
listen = "127.0.0.1:9187"
[retention]
keep_backups = 7
recovery_window = "14d"
[[source]]
name = "orders"
url = "postgres://replicator:${PGPASS}@db1:5432/postgres"
flush_interval = "500ms"
backup_interval = "24h"
slot = "pitr_orders"
"#;

#[test]
fn good_config_parses_with_interpolation() {
    let c = Config::parse(GOOD, &env(&[("PGPASS", "s3cr3t")])).unwrap();
    assert_eq!(c.repo, "/var/lib/pitr");
    assert_eq!(c.metrics_listen.unwrap().port(), 9187);
    assert_eq!(c.retention.keep_backups, Some(7));
    assert_eq!(
        c.retention.recovery_window,
        Some(Duration::from_secs(14 * 86400))
    );
    let s = &c.sources[0];
    assert_eq!(
        s.url.expose(),
        "postgres://replicator:s3cr3t@db1:5432/postgres"
    );
    assert_eq!(s.flush_interval, Duration::from_millis(500));
    assert_eq!(s.backup_interval, Some(Duration::from_secs(86400)));
    // The password never shows in Debug or Display.
    let dbg = format!("{c:?} {}", s.url);
    assert!(!dbg.contains("s3cr3t"), "{dbg}");
    assert!(dbg.contains("replicator:***@db1"), "{dbg}");
}

#[test]
fn pitr_repo_overrides_the_file() {
    let c = Config::parse(GOOD, &env(&[("PGPASS", "x"), ("PITR_REPO", "s3://b/p")])).unwrap();
    assert_eq!(c.repo, "s3://b/p");
}

#[test]
fn unknown_keys_are_rejected() {
    let e = err(&GOOD.replace("slot =", "slott ="), &[("PGPASS", "x")]);
    assert!(e.contains("unknown field `slott`"), "{e}");
    let e = err(
        &format!("{GOOD}\n[metrix]\nlisten = \"x\"\n"),
        &[("PGPASS", "x")],
    );
    assert!(e.contains("unknown field `metrix`"), "{e}");
}

#[test]
fn bad_durations_name_the_key() {
    let e = err(&GOOD.replace("\"500ms\"", "\"soon\""), &[("PGPASS", "x")]);
    assert!(
        e.contains("source \"orders\" (#1): flush_interval: \"soon\" is not a duration"),
        "{e}"
    );
    let e = err(&GOOD.replace("\"14d\"", "\"0s\""), &[("PGPASS", "x")]);
    assert!(
        e.contains("retention.recovery_window: must be more than zero"),
        "{e}"
    );
}

#[test]
fn duplicate_names_and_every_problem_listed() {
    let text = r#"
repo = "/r"
[[source]]
name = "a"
url = "postgres://u@h/db"
[[source]]
name = "a"
url = "http://h/db"
"#;
    let e = Config::parse(text, &env(&[])).unwrap_err();
    assert_eq!(e.problems.len(), 2, "{e}");
    assert!(e.to_string().contains("duplicate source name"), "{e}");
    assert!(e.to_string().contains("unsupported URL http://h/db"), "{e}");
}

#[test]
fn supported_and_unsupported_engines() {
    let t = |url: &str| format!("repo = \"/r\"\n[[source]]\nname = \"a\"\nurl = \"{url}\"\n");
    let ok = Config::parse(&t("mysql://u:pw@h:3306"), &env(&[])).unwrap();
    assert_eq!(ok.sources[0].kind, pitr::source::UrlKind::MySql);
    let ok = Config::parse(&t("mongodb://u:pw@h1,h2/?replicaSet=rs0"), &env(&[])).unwrap();
    assert_eq!(ok.sources[0].kind, pitr::source::UrlKind::MongoDb);
    let e = err(&t("redis://u:hunter2@h"), &[]);
    assert!(e.contains("unsupported URL"), "{e}");
    assert!(!e.contains("hunter2"), "secret leaked: {e}");
}

#[test]
fn missing_pieces_are_explained() {
    let e = err("[[source]]\nname = \"a\"\n", &[]);
    assert!(e.contains("repo: missing"), "{e}");
    assert!(e.contains("missing url (or url_env)"), "{e}");
    let e = err("repo = \"/r\"\n", &[]);
    assert!(e.contains("no [[source]] configured"), "{e}");
    let e = err(GOOD, &[]);
    assert!(e.contains("environment variable PGPASS is not set"), "{e}");
    let e = err(
        "repo = \"/r\"\n[[source]]\nname = \"a\"\nurl_env = \"A_URL\"\n",
        &[],
    );
    assert!(
        e.contains("url_env: environment variable A_URL is not set"),
        "{e}"
    );
    let e = err(
        "repo = \"/r\"\n[metrics]\nlisten = \"everywhere\"\n[[source]]\nname = \"a b\"\nurl = \"postgres://u@h/d\"\nslot = \"Bad-Slot\"\n",
        &[],
    );
    assert!(e.contains("metrics.listen"), "{e}");
    assert!(e.contains("invalid source name"), "{e}");
    assert!(e.contains("slot \"Bad-Slot\""), "{e}");
    let e = err("repo = 5\n", &[]);
    assert!(e.contains("repo"), "{e}");
}

#[test]
fn url_env_and_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("pw");
    std::fs::write(&pf, "p@ss word\n").unwrap();
    let text = format!(
        "repo = \"/r\"\n[[source]]\nname = \"a\"\nurl_env = \"A_URL\"\npassword_file = \"{}\"\n",
        pf.display()
    );
    let c = Config::parse(&text, &env(&[("A_URL", "postgres://rep@h:5/db")])).unwrap();
    let u = url::Url::parse(c.sources[0].url.expose()).unwrap();
    assert_eq!(u.username(), "rep");
    assert_eq!(
        percent_decode(u.password().unwrap()),
        "p@ss word",
        "the file's password (newline trimmed) is in the URL"
    );
    assert!(!format!("{c:?}").contains("word"));
    let e = err(&text, &[("A_URL", "postgres://rep:x@h:5/db")]);
    assert!(
        e.contains("both a password in the URL and a password_file"),
        "{e}"
    );
    let e = err(
        &text.replace("pw\"", "missing\""),
        &[("A_URL", "postgres://rep@h/db")],
    );
    assert!(e.contains("password_file: cannot read"), "{e}");
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn load_prefixes_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pitr.toml");
    std::fs::write(&p, "repo = \"/r\"\nbogus = 1\n").unwrap();
    let e = Config::load(&p).unwrap_err().to_string();
    assert!(e.starts_with(&p.display().to_string()), "{e}");
    assert!(e.contains("unknown field `bogus`"), "{e}");
}

#[test]
fn lease_settings_parse_and_are_checked() {
    let c = Config::parse(GOOD, &env(&[("PGPASS", "x")])).unwrap();
    assert_eq!(c.lease.ttl, Duration::from_secs(30));
    assert!(!c.lease.single_writer && c.lease.wait);
    let text = GOOD.replacen(
        "[[source]]",
        "[lease]\nttl = \"5s\"\nsingle_writer = true\n[[source]]",
        1,
    );
    let c = Config::parse(&text, &env(&[("PGPASS", "x")])).unwrap();
    assert_eq!(c.lease.ttl, Duration::from_secs(5));
    assert!(c.lease.single_writer);
    let bad = GOOD.replacen("[[source]]", "[lease]\nttl = \"500ms\"\n[[source]]", 1);
    assert!(
        err(&bad, &[("PGPASS", "x")]).contains("lease: ttl must be at least 1s"),
        "{}",
        err(&bad, &[("PGPASS", "x")])
    );
    let bad = GOOD.replacen("[[source]]", "[lease]\nttl = \"soon\"\n[[source]]", 1);
    assert!(err(&bad, &[("PGPASS", "x")]).contains("lease: ttl: \"soon\" is not a duration"));
}

/// A syntax error on a `url` line: the parser would quote the line, password and all; the
/// message names the line and column and shows no secret.
#[test]
fn a_syntax_error_never_prints_the_password() {
    for text in [
        "repo = \"/r\"\n[[source]]\nname = \"a\"\nurl = \"postgres://u:hunter2@db/x\n",
        "repo = \"/r\"\n[[source]]\nname = \"a\"\nurl = postgres://u:hunter2@db/x\n",
        "repo = \"/r\"\n[[source]]\nname = \"a\"\nurl = { x = \"mysql://u:hunter2@db\" }\n",
        "repo = \"/r\"\n[[source]]\nname = \"a\"\nurl = \"host=db password=hunter2\" ]\n",
    ] {
        let e = err(text, &[]);
        assert!(!e.contains("hunter2"), "password shown: {e}");
        assert!(e.contains("line 4"), "no line named: {e}");
    }
}

#[test]
fn kek_source_is_parsed_and_checked() {
    let with = |kek: &str| format!("kek = \"{kek}\"\n{GOOD}");
    let c = Config::parse(&with("file:/run/secrets/kek"), &env(&[("PGPASS", "x")])).unwrap();
    assert_eq!(
        c.kek.map(|k| k.to_string()).as_deref(),
        Some("file:/run/secrets/kek")
    );
    let c = Config::parse(GOOD, &env(&[("PGPASS", "x")])).unwrap();
    assert!(c.kek.is_none());
    let e = err(&with("vault:secret/pitr"), &[("PGPASS", "x")]);
    assert!(e.contains("kek:") && e.contains("file:PATH"), "{e}");
}

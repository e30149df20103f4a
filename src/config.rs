//! `pitr.toml`: the typed configuration of `pitr run`, validated once before
//! anything starts.
//!
//! ```toml
//! repo = "s3://backups/pitr"          # PITR_REPO in the environment overrides it
//! kek = "file:/run/secrets/pitr-kek"  # encrypted repository: its key-encryption key
//!                                     # (file:PATH, env:NAME or cmd:COMMAND; --kek / PITR_KEK override)
//!
//! [metrics]
//! listen = "127.0.0.1:9187"           # /metrics and /healthz; omit to disable
//!
//! [lease]                             # optional: the writer lease of every source
//! ttl = "30s"                         # a dead archiver is taken over after this
//! single_writer = false               # true only on stores ignoring conditional writes
//!
//! [retention]                         # optional: applied after each scheduled backup
//! keep_backups = 7
//! recovery_window = "14d"
//!
//! [[source]]
//! name = "orders"                     # the source name in the repository
//! url = "postgres://replicator@db1:5432/postgres"   # ${VAR} is replaced from the environment
//! # url_env = "ORDERS_URL"            # ...or take the whole URL from a variable
//! password_file = "/run/secrets/orders"   # password inserted into the URL
//! slot = "pitr_orders"                # default pitr_<name>
//! flush_interval = "1s"               # RPO while WAL flows
//! backup_interval = "24h"             # scheduled base backups; omit to disable
//! ```
//!
//! Rules: unknown keys are rejected; durations use `humantime` syntax
//! (`500ms`, `1s`, `24h`, `14d`); source names follow the repository's name
//! rule and are unique; URLs must be `postgres://`/`postgresql://` (or
//! `mysql://`/`mariadb://` for MySQL/MariaDB). `${VAR}`
//! in `repo` and `url` is replaced by the variable's value (`$$` is a literal
//! `$`). Every problem found is reported at once. Secrets never appear in
//! messages or `Debug` output: URLs are shown with the password replaced.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::archive::keys::SourceName;
pub use crate::redact::redact;
use crate::source::{url_kind, UrlKind};

/// A configuration that cannot be used; the message lists every problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(msg: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![msg.into()],
        }
    }
}

/// A database URL that may hold a password: `Debug`/`Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// One archived database.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub url: SecretUrl,
    pub kind: UrlKind,
    pub slot: Option<String>,
    pub flush_interval: Duration,
    pub backup_interval: Option<Duration>,
}

/// Retention settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_backups: Option<usize>,
    pub recovery_window: Option<Duration>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub repo: String,
    pub metrics_listen: Option<SocketAddr>,
    pub retention: Retention,
    /// Writer-lease settings of every source's archiver (`pitr run` waits
    /// for a live lease, restarting through its supervisor).
    pub lease: crate::archive::lease::LeaseOptions,
    pub sources: Vec<SourceConfig>,
    /// Key-encryption key of an encrypted repository.
    pub kek: Option<crate::crypto::kek::KekSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    repo: Option<String>,
    kek: Option<String>,
    metrics: Option<RawMetrics>,
    retention: Option<RawRetention>,
    lease: Option<RawLease>,
    #[serde(default)]
    source: Vec<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    ttl: Option<String>,
    #[serde(default)]
    single_writer: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_backups: Option<usize>,
    recovery_window: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    url: Option<String>,
    url_env: Option<String>,
    password_file: Option<String>,
    slot: Option<String>,
    flush_interval: Option<String>,
    backup_interval: Option<String>,
}

/// Replaces `${VAR}` by the variable's value; `$$` is a literal `$`.
fn interpolate(
    s: &str,
    what: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let Some(close) = r.find('}') else {
                return Err(format!(
                    "{what}: unterminated ${{ (write $$ for a literal $)"
                ));
            };
            let var = &r[..close];
            if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{what}: ${{{var}}} is not a valid variable name"));
            }
            match env(var) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("{what}: environment variable {var} is not set")),
            }
            rest = &r[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn duration(v: &Option<String>, what: &str, problems: &mut Vec<String>) -> Option<Duration> {
    let s = v.as_ref()?;
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => {
            problems.push(format!("{what}: must be more than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(format!(
                "{what}: {s:?} is not a duration ({e}); write e.g. 500ms, 1s, 5m, 24h, 14d"
            ));
            None
        }
    }
}

impl Config {
    /// Reads and validates a configuration file with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text, &|k| std::env::var(k).ok()).map_err(|mut e| {
            for p in &mut e.problems {
                *p = format!("{}: {p}", path.display());
            }
            e
        })
    }

    /// Parses and validates configuration text; `env` looks variables up.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // The parser's message quotes the offending line, which may be a `url` with its
        // password: only its position and its redacted message are shown.
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(String::new(), |s| {
                let before = &text[..s.start.min(text.len())];
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let line = before.matches('\n').count() + 1;
                let col = before.len() - line_start + 1;
                // The key of the line, when it has one (never its value).
                let key = text[line_start..]
                    .lines()
                    .next()
                    .and_then(|l| l.split_once('='))
                    .map(|(k, _)| k.trim())
                    .filter(|k| {
                        !k.is_empty()
                            && k.chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    })
                    .map_or(String::new(), |k| format!(", key {k}"));
                format!("TOML parse error at line {line}, column {col}{key}: ")
            });
            ConfigError::one(format!(
                "{at}{}",
                crate::redact::redact_text(e.message().trim_end())
            ))
        })?;
        let mut problems = Vec::new();

        let repo = match env("PITR_REPO").filter(|s| !s.is_empty()).or(raw.repo) {
            Some(r) => match interpolate(&r, "repo", env) {
                Ok(r) if r.trim().is_empty() => {
                    problems.push("repo: is empty".into());
                    String::new()
                }
                Ok(r) => r,
                Err(e) => {
                    problems.push(e);
                    String::new()
                }
            },
            None => {
                problems.push(
                    "repo: missing; set `repo = \"...\"` or the PITR_REPO environment variable"
                        .into(),
                );
                String::new()
            }
        };

        let kek = match raw
            .kek
            .as_deref()
            .map(str::parse::<crate::crypto::kek::KekSource>)
        {
            None => None,
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                problems.push(format!("kek: {e}"));
                None
            }
        };

        let metrics_listen = raw
            .metrics
            .and_then(|m| match m.listen.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!(
                        "metrics.listen: {:?} is not an address like 127.0.0.1:9187",
                        m.listen
                    ));
                    None
                }
            });

        let mut lease = crate::archive::lease::LeaseOptions::default();
        if let Some(l) = &raw.lease {
            if let Some(ttl) = duration(&l.ttl, "lease: ttl", &mut problems) {
                if ttl < Duration::from_secs(1) {
                    problems.push("lease: ttl must be at least 1s".into());
                }
                lease.ttl = ttl;
            }
            lease.single_writer = l.single_writer;
        }
        let retention = match raw.retention {
            None => Retention::default(),
            Some(r) => {
                if r.keep_backups == Some(0) {
                    problems.push("retention.keep_backups: must be at least 1".into());
                }
                Retention {
                    keep_backups: r.keep_backups,
                    recovery_window: duration(
                        &r.recovery_window,
                        "retention.recovery_window",
                        &mut problems,
                    ),
                }
            }
        };

        if raw.source.is_empty() {
            problems.push("no [[source]] configured: nothing to archive".into());
        }
        let mut seen = HashSet::new();
        let mut sources = Vec::new();
        for (i, s) in raw.source.into_iter().enumerate() {
            let what = format!("source {:?} (#{})", s.name, i + 1);
            if let Err(e) = SourceName::new(&s.name) {
                problems.push(format!("{what}: {e}"));
            }
            if !seen.insert(s.name.clone()) {
                problems.push(format!(
                    "{what}: duplicate source name; each source needs its own name"
                ));
            }
            let url = match (&s.url, &s.url_env) {
                (Some(_), Some(_)) => {
                    problems.push(format!("{what}: set either url or url_env, not both"));
                    None
                }
                (None, None) => {
                    problems.push(format!("{what}: missing url (or url_env)"));
                    None
                }
                (Some(u), None) => match interpolate(u, &format!("{what} url"), env) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        problems.push(e);
                        None
                    }
                },
                (None, Some(var)) => match env(var) {
                    Some(u) if !u.trim().is_empty() => Some(u),
                    _ => {
                        problems.push(format!(
                            "{what}: url_env: environment variable {var} is not set"
                        ));
                        None
                    }
                },
            };
            let url = match (url, &s.password_file) {
                (Some(u), Some(pf)) => match crate::secrets::read_password_file(Path::new(pf)) {
                    Ok(p) => match crate::secrets::with_password(&u, &p, "password_file") {
                        Ok(u) => Some(u),
                        Err(e) => {
                            problems.push(format!("{what}: url {e}"));
                            None
                        }
                    },
                    Err(e) => {
                        problems.push(format!("{what}: password_file: {e}"));
                        None
                    }
                },
                (u, _) => u,
            };
            let kind = match url.as_deref().map(|u| (u, url_kind(u))) {
                Some((_, Some(UrlKind::Postgres))) => Some(UrlKind::Postgres),
                Some((_, Some(UrlKind::MySql))) => Some(UrlKind::MySql),
                Some((_, Some(UrlKind::MongoDb))) => Some(UrlKind::MongoDb),
                Some((u, None)) => {
                    problems.push(format!(
                        "{what}: unsupported URL {}; use postgres://user@host:port/db",
                        redact(u)
                    ));
                    None
                }
                None => None,
            };
            let flush_interval = duration(
                &s.flush_interval,
                &format!("{what}: flush_interval"),
                &mut problems,
            )
            .unwrap_or(Duration::from_secs(1));
            let backup_interval = duration(
                &s.backup_interval,
                &format!("{what}: backup_interval"),
                &mut problems,
            );
            if let Some(slot) = &s.slot {
                let ok = (1..=63).contains(&slot.len())
                    && slot
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    problems.push(format!(
                        "{what}: slot {slot:?} must be 1 to 63 characters of a-z 0-9 _"
                    ));
                }
            }
            if let (Some(url), Some(kind)) = (url, kind) {
                sources.push(SourceConfig {
                    name: s.name,
                    url: SecretUrl(url),
                    kind,
                    slot: s.slot,
                    flush_interval,
                    backup_interval,
                });
            }
        }
        if problems.is_empty() {
            Ok(Config {
                repo,
                metrics_listen,
                retention,
                lease,
                sources,
                kek,
            })
        } else {
            Err(ConfigError { problems })
        }
    }
}

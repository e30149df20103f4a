//! Connection settings in libpq's two notations, plus libpq's defaults.
//!
//! * URL: `postgres[ql]://[user[:password]@][host][:port][/dbname][?key=value&...]`
//!   with percent-encoding; the host may be `[v6addr]` or a percent-encoded
//!   unix-socket directory (`%2Fvar%2Frun%2Fpostgresql`).
//! * key/value: `host=localhost port=5433 user=replicator password='it''s'`
//!   (values may be single-quoted, `\'` and `\\` escaped).
//!
//! Unset settings fall back to the environment (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME`,
//! `PGCONNECT_TIMEOUT`, `PGPASSFILE`) and then to libpq's defaults. A missing
//! password is looked up in the password file (`~/.pgpass`, lines of
//! `host:port:database:user:password`, `*` wildcards, `\:` escapes; for
//! replication connections the database field is `replication`). Passwords
//! never appear in `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::PgError;

/// `sslmode`: how TLS is negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Try TLS, fall back to plain text if the server refuses (libpq's default).
    Prefer,
    /// Require TLS, do not verify the certificate.
    Require,
    /// Require TLS and a certificate signed by a trusted root.
    VerifyCa,
    /// Like `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The mode as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Result<SslMode, PgError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(PgError::config(
                    format!("invalid sslmode {other:?}"),
                    "use one of disable, prefer, require, verify-ca, verify-full",
                ))
            }
        })
    }
}

/// An authentication method a server can ask for (libpq's `require_auth` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No authentication (`trust`).
    None,
    /// The password in clear text.
    Password,
    Md5,
    ScramSha256,
    /// Named so that a list may hold them; this client supports neither.
    Gss,
    Sspi,
}

impl AuthMethod {
    fn parse(s: &str) -> Option<AuthMethod> {
        Some(match s {
            "none" => AuthMethod::None,
            "password" => AuthMethod::Password,
            "md5" => AuthMethod::Md5,
            "scram-sha-256" => AuthMethod::ScramSha256,
            "gss" => AuthMethod::Gss,
            "sspi" => AuthMethod::Sspi,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
        }
    }
}

/// `channel_binding`: whether a SCRAM login is bound to the TLS connection
/// (SCRAM-SHA-256-PLUS with `tls-server-end-point`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never bind.
    Disable,
    /// Bind when the connection is TLS and the server offers it (libpq's default).
    Prefer,
    /// Refuse any login that is not a channel-bound SCRAM exchange.
    Require,
}

impl ChannelBindingMode {
    fn parse(s: &str) -> Result<ChannelBindingMode, PgError> {
        Ok(match s {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            other => {
                return Err(PgError::config(
                    format!("invalid channel_binding {other:?}"),
                    "use one of disable, prefer, require",
                ))
            }
        })
    }
}

/// `require_auth` (libpq 16): the methods the server may ask for (`scram-sha-256,md5`), or
/// with `!` the ones it may not (`!password,!md5`). A server asking for another one is refused
/// before any password is sent: a server (or someone in between) cannot downgrade a SCRAM
/// login to a cleartext password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequireAuth {
    negated: bool,
    methods: Vec<AuthMethod>,
    /// As written, for messages.
    pub text: String,
}

impl RequireAuth {
    fn parse(s: &str) -> Result<RequireAuth, PgError> {
        let bad = |why: String| {
            PgError::config(
                format!("invalid require_auth {s:?}: {why}"),
                "list methods (password, md5, scram-sha-256, none), either all plain or all negated with !",
            )
        };
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        let negated = items.first().is_some_and(|i| i.starts_with('!'));
        let mut methods = Vec::new();
        for item in &items {
            if item.starts_with('!') != negated {
                return Err(bad("negated and plain methods cannot be mixed".into()));
            }
            let name = item.trim_start_matches('!');
            let m =
                AuthMethod::parse(name).ok_or_else(|| bad(format!("unknown method {name:?}")))?;
            methods.push(m);
        }
        Ok(RequireAuth {
            negated,
            methods,
            text: s.to_string(),
        })
    }

    /// Whether the server may ask for `m`.
    pub fn allows(&self, m: AuthMethod) -> bool {
        self.methods.contains(&m) != self.negated
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// Directory holding the server's unix socket.
    Unix(PathBuf),
}

/// Parsed connection settings.
#[derive(Clone)]
pub struct Config {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM) and its private key, for servers that authenticate by
    /// certificate (`cert`, `clientcert=verify-full`); libpq's defaults
    /// `~/.postgresql/postgresql.crt` and `.key` when present.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub application_name: Option<String>,
    pub connect_timeout: Duration,
    pub passfile: Option<PathBuf>,
    /// `require_auth`: the authentication methods the server may ask for.
    pub require_auth: Option<RequireAuth>,
    pub channel_binding: ChannelBindingMode,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Raw {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<String>,
    passfile: Option<String>,
    require_auth: Option<String>,
    channel_binding: Option<String>,
}

impl Raw {
    fn set(&mut self, key: &str, value: String) -> Result<(), PgError> {
        let slot = match key {
            "host" | "hostaddr" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "application_name" | "fallback_application_name" => &mut self.application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "passfile" => &mut self.passfile,
            "require_auth" => &mut self.require_auth,
            "channel_binding" => &mut self.channel_binding,
            // Accepted and ignored: they do not change how we connect.
            "replication" | "options" | "target_session_attrs" | "keepalives" | "sslcompression" => return Ok(()),
            other => {
                return Err(PgError::config(
                    format!("unknown connection option {other:?}"),
                    "use libpq option names such as host, port, user, password, dbname, sslmode, application_name",
                ))
            }
        };
        if slot.is_none() || key != "fallback_application_name" {
            *slot = Some(value);
        }
        Ok(())
    }
}

impl Config {
    /// Parses a URL or key/value string, filling gaps from the process environment.
    pub fn parse(s: &str) -> Result<Config, PgError> {
        Config::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// Like [`Config::parse`] with an explicit environment lookup (for tests).
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, PgError> {
        let s = s.trim();
        let mut raw = Raw::default();
        if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            parse_url(rest, &mut raw)?;
        } else {
            parse_kv(s, &mut raw)?;
        }
        let pick = |v: Option<String>, var: &str| {
            v.filter(|x| !x.is_empty())
                .or_else(|| env(var).filter(|x| !x.is_empty()))
        };
        let host = match pick(raw.host, "PGHOST") {
            // Multiple hosts: we use the first one.
            Some(h) => {
                let h = h.split(',').next().unwrap_or("").to_string();
                if h.starts_with('/') {
                    Host::Unix(PathBuf::from(h))
                } else {
                    Host::Tcp(h)
                }
            }
            None => Host::Unix(PathBuf::from("/var/run/postgresql")),
        };
        let port = match pick(raw.port, "PGPORT") {
            Some(p) => p
                .split(',')
                .next()
                .unwrap_or("")
                .parse::<u16>()
                .map_err(|_| {
                    PgError::config(
                        format!("invalid port {p:?}"),
                        "the port must be a number between 1 and 65535",
                    )
                })?,
            None => 5432,
        };
        let user = pick(raw.user, "PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".to_string());
        let sslmode = match pick(raw.sslmode, "PGSSLMODE") {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let connect_timeout = match pick(raw.connect_timeout, "PGCONNECT_TIMEOUT") {
            Some(t) => {
                let secs: u64 = t.parse().map_err(|_| {
                    PgError::config(
                        format!("invalid connect_timeout {t:?}"),
                        "give connect_timeout in whole seconds",
                    )
                })?;
                Duration::from_secs(if secs == 0 { 30 } else { secs.max(2) })
            }
            None => Duration::from_secs(30),
        };
        let passfile = pick(raw.passfile, "PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")));
        Ok(Config {
            host,
            port,
            user,
            password: pick(raw.password, "PGPASSWORD"),
            dbname: pick(raw.dbname, "PGDATABASE"),
            sslmode,
            sslrootcert: pick(raw.sslrootcert, "PGSSLROOTCERT").map(PathBuf::from),
            sslcert: pick(raw.sslcert, "PGSSLCERT")
                .map(PathBuf::from)
                .or_else(|| {
                    let p = Path::new(&env("HOME")?).join(".postgresql/postgresql.crt");
                    p.exists().then_some(p)
                }),
            sslkey: pick(raw.sslkey, "PGSSLKEY").map(PathBuf::from).or_else(|| {
                let p = Path::new(&env("HOME")?).join(".postgresql/postgresql.key");
                p.exists().then_some(p)
            }),
            application_name: pick(raw.application_name, "PGAPPNAME"),
            connect_timeout,
            passfile,
            require_auth: pick(raw.require_auth, "PGREQUIREAUTH")
                .map(|r| RequireAuth::parse(&r))
                .transpose()?,
            channel_binding: match pick(raw.channel_binding, "PGCHANNELBINDING") {
                Some(c) => ChannelBindingMode::parse(&c)?,
                None => ChannelBindingMode::Prefer,
            },
        })
    }

    /// Human-readable address for messages: `host:port` or the socket path.
    pub fn address(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(dir) => self
                .socket_path()
                .unwrap_or_else(|| dir.clone())
                .display()
                .to_string(),
        }
    }

    /// Path of the unix socket for a `Host::Unix` config.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }

    /// The password: explicit, else from the password file for `database`
    /// (`"replication"` for a physical replication connection).
    pub fn resolve_password(&self, database: &str) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let file = self.passfile.as_ref()?;
        let meta = std::fs::metadata(file).ok()?;
        {
            use std::os::unix::fs::PermissionsExt;
            if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %file.display(), "password file ignored: it must be a regular file readable only by its owner (chmod 0600)");
                return None;
            }
        }
        let content = std::fs::read_to_string(file).ok()?;
        let host = match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(d) if d == Path::new("/var/run/postgresql") || d == Path::new("/tmp") => {
                "localhost".to_string()
            }
            Host::Unix(d) => d.display().to_string(),
        };
        pgpass_lookup(&content, &host, self.port, database, &self.user)
    }
}

/// Finds the password for (host, port, database, user) in `.pgpass` content.
pub fn pgpass_lookup(
    content: &str,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    for line in content.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        let ok = |pat: &str, v: &str| pat == "*" || pat == v;
        if ok(&fields[0], host)
            && ok(&fields[1], &port)
            && ok(&fields[2], database)
            && ok(&fields[3], user)
        {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), out.last_mut()) {
                    last.push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// A URL component with its `%XX` escapes decoded; like libpq, a `%` not
/// followed by two hex digits, or a result that is not UTF-8, is an error.
fn percent_decode(s: &str) -> Result<String, PgError> {
    let well_formed = s.match_indices('%').all(|(i, _)| {
        s.get(i + 1..i + 3)
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if !well_formed {
        return Err(PgError::config(
            "invalid percent-encoding in the connection URL",
            "encode special characters as %XX (e.g. @ as %40)",
        ));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|d| d.into_owned())
        .map_err(|_| {
            PgError::config(
                "the connection URL is not valid UTF-8 after decoding",
                "fix the URL",
            )
        })
}

fn parse_url(rest: &str, raw: &mut Raw) -> Result<(), PgError> {
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match main.find('/') {
        Some(i) => (&main[..i], Some(&main[i + 1..])),
        None => (main, None),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    if let Some(ui) = userinfo {
        let (u, p) = match ui.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (ui, None),
        };
        if !u.is_empty() {
            raw.user = Some(percent_decode(u)?);
        }
        if let Some(p) = p {
            raw.password = Some(percent_decode(p)?);
        }
    }
    if !hostport.is_empty() {
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| {
                PgError::config(
                    "unterminated [ in the connection URL host",
                    "write IPv6 hosts as [::1]:5432",
                )
            })?;
            let port = v6[end + 1..].strip_prefix(':');
            (&v6[..end], port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            raw.host = Some(percent_decode(host)?);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            raw.port = Some(p.to_string());
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        raw.dbname = Some(percent_decode(db)?);
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        raw.set(&percent_decode(k)?, percent_decode(v)?)?;
    }
    Ok(())
}

fn parse_kv(s: &str, raw: &mut Raw) -> Result<(), PgError> {
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(());
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(PgError::config(
                format!("missing \"=\" after {key:?} in the connection string"),
                "write options as key=value separated by spaces, or use a postgres:// URL",
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(PgError::config(
                    "unterminated quoted value in the connection string",
                    "close the single quote; escape quotes inside as \\'",
                ));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        raw.set(&key, value)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn url_forms() {
        let c = Config::parse_with_env(
            "postgres://rep%40x:p%3Ass@127.0.0.1:5433/db?sslmode=require&application_name=pitr",
            no_env,
        )
        .unwrap();
        assert_eq!(c.host, Host::Tcp("127.0.0.1".into()));
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "rep@x");
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.dbname.as_deref(), Some("db"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name.as_deref(), Some("pitr"));
        assert!(!format!("{c:?}").contains("p:ss"));

        let c = Config::parse_with_env("postgresql://[::1]:6000", no_env).unwrap();
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert_eq!(c.address(), "[::1]:6000");

        let c = Config::parse_with_env("postgres://%2Ftmp%2Fsock:5999/x", no_env).unwrap();
        assert_eq!(c.host, Host::Unix("/tmp/sock".into()));
        assert_eq!(
            c.socket_path().unwrap(),
            PathBuf::from("/tmp/sock/.s.PGSQL.5999")
        );

        let c = Config::parse_with_env("postgres:///db?host=/run/pg&port=7", no_env).unwrap();
        assert_eq!(c.host, Host::Unix("/run/pg".into()));
        assert_eq!(c.port, 7);
        assert!(Config::parse_with_env("postgres://h/?bogus=1", no_env).is_err());
        // Like libpq: a bad escape or a non-UTF-8 result is refused.
        for bad in [
            "postgres://u:p%4@h/db",
            "postgres://u:p%zz@h/db",
            "postgres://u:%ff@h/db",
        ] {
            assert!(Config::parse_with_env(bad, no_env).is_err(), "{bad}");
        }
        assert!(Config::parse_with_env("postgres://h:notaport/", no_env).is_err());
        assert!(Config::parse_with_env("postgres://h/?sslmode=maybe", no_env).is_err());
    }

    #[test]
    fn key_value_and_env() {
        let env = |k: &str| match k {
            "PGPORT" => Some("6543".to_string()),
            "PGPASSWORD" => Some("envpw".to_string()),
            "PGUSER" => Some("envuser".to_string()),
            _ => None,
        };
        let c = Config::parse_with_env(
            "host=db.example user = 'a b' password='it\\'s' sslmode=disable",
            env,
        )
        .unwrap();
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "a b");
        assert_eq!(c.password.as_deref(), Some("it's"));
        assert_eq!(c.sslmode, SslMode::Disable);
        let c = Config::parse_with_env("host=h", env).unwrap();
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.as_deref(), Some("envpw"));
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert!(Config::parse_with_env("host", env).is_err());
        assert!(Config::parse_with_env("password='open", env).is_err());
    }

    #[test]
    fn pgpass() {
        let content = "# comment\nother:*:*:*:nope\n127.0.0.1:5433:replication:rep:s3cr\\:et\n*:*:*:rep:fallback\n";
        assert_eq!(
            pgpass_lookup(content, "127.0.0.1", 5433, "replication", "rep").as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            pgpass_lookup(content, "127.0.0.1", 5434, "replication", "rep").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            pgpass_lookup(content, "127.0.0.1", 5433, "replication", "bob"),
            None
        );

        let dir = std::env::temp_dir().join(format!("pitr-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, content).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = Config::parse_with_env("postgres://rep@127.0.0.1:5433", no_env).unwrap();
        c.passfile = Some(file.clone());
        assert_eq!(
            c.resolve_password("replication").as_deref(),
            Some("s3cr:et")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            c.resolve_password("replication"),
            None,
            "world-readable file must be ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

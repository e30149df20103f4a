//! Passwords kept off command lines, where every user of the machine can read them (`ps`):
//! a password read from a file (mode 0600, a mounted secret) and put into the connection
//! string only inside this process. Used by `pitr.toml`'s `password_file` and the verbs'
//! `--password-file` / `--target-password-file`.
//!
//! The password goes into a URL's user information percent-encoded
//! (`scheme://user:p%40ss@host…`, every engine's URL, several MongoDB hosts included), or
//! into a libpq key/value string as `password='…'` (quotes and backslashes escaped).

use std::path::Path;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// What must be percent-encoded in a URL's password (RFC 3986 userinfo, minus `:`).
const USERINFO: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The password in `path`, without its trailing newline.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
    let p = text.trim_end_matches(['\r', '\n']);
    if p.is_empty() {
        return Err(format!("the password file {} is empty", path.display()));
    }
    Ok(p.to_string())
}

/// `conn` with `password` added; `what` names where the password came from in errors
/// (`password_file`, `--password-file`).
pub fn with_password(conn: &str, password: &str, what: &str) -> Result<String, String> {
    let Some((scheme, rest)) = conn.split_once("://") else {
        return with_key_value_password(conn, password, what);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((user, hosts)) = authority.rsplit_once('@') else {
        return Err(format!("needs a user name in the URL to use {what}"));
    };
    if user.contains(':') {
        return Err(format!("has both a password in the URL and a {what}"));
    }
    if user.is_empty() {
        return Err(format!("needs a user name in the URL to use {what}"));
    }
    let enc = utf8_percent_encode(password, USERINFO);
    Ok(format!("{scheme}://{user}:{enc}@{hosts}{tail}"))
}

/// A libpq `key=value` string with `password='…'` appended.
fn with_key_value_password(conn: &str, password: &str, what: &str) -> Result<String, String> {
    if !conn.contains('=') {
        return Err(format!(
            "must be a URL (scheme://user@host/...) or a key=value string to use {what}"
        ));
    }
    if conn
        .split_whitespace()
        .any(|kv| kv.to_ascii_lowercase().starts_with("password"))
    {
        return Err(format!("has both a password and a {what}"));
    }
    let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
    Ok(format!("{conn} password='{quoted}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_every_kind_of_connection_string() {
        assert_eq!(
            with_password("mysql://pitr@127.0.0.1:3306", "p@ss word", "f").unwrap(),
            "mysql://pitr:p%40ss%20word@127.0.0.1:3306"
        );
        assert_eq!(
            with_password("mongodb://u@h1:1,h2:2/?replicaSet=rs", "a:b/c", "f").unwrap(),
            "mongodb://u:a%3Ab%2Fc@h1:1,h2:2/?replicaSet=rs"
        );
        assert_eq!(
            with_password("host=h user=u", "it's", "f").unwrap(),
            "host=h user=u password='it\\'s'"
        );
        let e = with_password("postgres://u:x@h/db", "p", "--password-file").unwrap_err();
        assert_eq!(e, "has both a password in the URL and a --password-file");
        let e = with_password("postgres://h/db", "p", "f").unwrap_err();
        assert!(e.contains("needs a user name"), "{e}");
        let e = with_password("host=h password=x", "p", "f").unwrap_err();
        assert!(e.contains("both a password"), "{e}");
    }

    #[test]
    fn the_round_trip_through_a_url_parser_gives_the_password_back() {
        let p = "p@ss:w/rd?#%é";
        let u = url::Url::parse(&with_password("postgres://u@h/db", p, "f").unwrap()).unwrap();
        let got = percent_encoding::percent_decode_str(u.password().unwrap())
            .decode_utf8()
            .unwrap();
        assert_eq!(got, p);
    }
}

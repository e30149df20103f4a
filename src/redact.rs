//! The one redaction of database connection strings, used by every message and log line that
//! names a server.
//!
//! Three shapes reach it:
//! - URLs with user information, `scheme://user:password@host[,host2…][:port]/…` (PostgreSQL,
//!   MySQL/MariaDB, MongoDB with several hosts). The password is everything between the first `:`
//!   of the user information and the **last** `@` before the path, so an unencoded `@` or `:` in a
//!   password is hidden too. Parsing is by hand, not by a URL parser, because a MongoDB seed list
//!   (`h1:27017,h2:27018`) is not a valid URL host and a failed parse must never fall back to
//!   printing the string as it is.
//! - Password query parameters, `…?password=secret` (libpq accepts them in URLs).
//! - libpq key/value strings, `host=h password=secret` or `password='a b'`.
//!
//! What is hidden is replaced by `***`; everything else is kept so that the operator can still
//! tell which server a message is about.

/// The connection string with every password replaced by `***`.
pub fn redact(conn: &str) -> String {
    match conn.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => {
            format!("{scheme}://{}", redact_url_rest(rest))
        }
        _ => redact_key_values(conn),
    }
}

/// Free text (an error message, a configuration line) with every connection string in it
/// redacted: each `scheme://…` up to the next whitespace, quote or backtick, and every
/// `password=` value.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let scheme_start = rest[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[sep..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .map_or(rest.len(), |i| sep + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&redact(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    redact_key_values(&out)
}

fn is_scheme(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `rest` is what follows `scheme://`.
fn redact_url_rest(rest: &str) -> String {
    // The authority ends at the first '/', '?' or '#' after the last '@' (a password may
    // hold any of them unencoded, a host list never holds '@').
    let (authority, tail) = match rest.rfind('@') {
        Some(at) => {
            let end = rest[at..]
                .find(['/', '?', '#'])
                .map_or(rest.len(), |i| at + i);
            rest.split_at(end)
        }
        None => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            rest.split_at(end)
        }
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    format!("{authority}{}", redact_query(tail))
}

/// Hides the value of every `password=` parameter of a URL's path/query/fragment part.
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_string();
    };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}{}{fragment}", params.join("&"))
}

/// libpq `key=value` strings: hides `password=value` and `password = 'quoted value'`.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = find_password_key(rest) {
        out.push_str(&rest[..pos]);
        out.push_str("***");
        rest = &rest[pos + skip_value(&rest[pos..])..];
    }
    out.push_str(rest);
    out
}

/// Finds the next `password` key (at the start or after whitespace) followed by `=`.
fn find_password_key(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password") {
        let start = from + i;
        let at_word_start = start == 0
            || lower[..start]
                .chars()
                .next_back()
                .is_some_and(char::is_whitespace);
        let after = &s[start + "password".len()..];
        let trimmed = after.trim_start();
        if at_word_start && trimmed.starts_with('=') {
            let eq = s.len() - trimmed.len();
            let value = &s[eq + 1..];
            let value_start = eq + 1 + (value.len() - value.trim_start().len());
            return Some(value_start);
        }
        from = start + "password".len();
    }
    None
}

/// The length of a libpq value: a single-quoted string (with `\'` and `\\` escapes) or up to
/// the next whitespace.
fn skip_value(v: &str) -> usize {
    if let Some(quoted) = v.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => return i + 2,
                _ => {}
            }
        }
        v.len()
    } else {
        v.find(char::is_whitespace).unwrap_or(v.len())
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, redact_text};

    #[test]
    fn urls_of_every_engine() {
        assert_eq!(
            redact("postgres://pitr:secret@db:5432/app"),
            "postgres://pitr:***@db:5432/app"
        );
        assert_eq!(
            redact("mysql://pitr:secret@127.0.0.1:3306/db"),
            "mysql://pitr:***@127.0.0.1:3306/db"
        );
        assert_eq!(
            redact("mongodb://pitr:secret@h1:27017,h2:27018/?replicaSet=rs0"),
            "mongodb://pitr:***@h1:27017,h2:27018/?replicaSet=rs0"
        );
        assert_eq!(redact("mongodb://h/"), "mongodb://h/");
        assert_eq!(redact("mysql://pitr@h"), "mysql://pitr@h");
    }

    #[test]
    fn unencoded_separators_in_the_password_stay_hidden() {
        assert_eq!(redact("mysql://u:p@ss@h"), "mysql://u:***@h");
        assert_eq!(redact("postgres://u:a/b?c@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u:a:b@h"), "postgres://u:***@h");
    }

    #[test]
    fn password_parameters_and_key_values() {
        assert_eq!(
            redact("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact("host=h user=u password=secret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            redact("host=h password = 'a b\\' c' port=5"),
            "host=h password = *** port=5"
        );
        assert_eq!(redact("PASSWORD=x"), "PASSWORD=***");
        // A key that merely ends in "password" is not a password.
        assert_eq!(redact("oldpassword=x"), "oldpassword=x");
        assert_eq!(redact("host=h"), "host=h");
    }

    #[test]
    fn connection_strings_inside_text() {
        assert_eq!(
            redact_text("invalid type: string \"postgres://u:hunter2@h/db\", expected a table"),
            "invalid type: string \"postgres://u:***@h/db\", expected a table"
        );
        assert_eq!(
            redact_text("at line 3: url = 'mysql://u:p@ss@h:3306' and host=h password=x"),
            "at line 3: url = 'mysql://u:***@h:3306' and host=h password=***"
        );
        assert_eq!(redact_text("no secrets here"), "no secrets here");
    }

    #[test]
    fn no_secret_survives() {
        for s in [
            "postgres://u:hunter2@h",
            "mongodb://u:hunter2@a,b,c/?authSource=admin",
            "host=h password=hunter2",
            "host=h password='hunter2'",
            "postgresql://h?password=hunter2",
            "mysql://u:hun@ter2@h",
        ] {
            assert!(!redact(s).contains("hunter2"), "{s} -> {}", redact(s));
        }
    }
}

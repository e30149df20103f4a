//! Log sources: one adapter per engine, each turning a replication stream
//! into sealed segments for the uploader.

pub mod mongodb;
pub mod mongodb_majority;
pub mod mongodb_tail;
pub mod mysql;
pub mod mysql_meta;
pub mod postgres;

/// The engine a database URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    Postgres,
    MySql,
    MongoDb,
}

/// Recognises the engine of a source URL (`postgres://`, `postgresql://` or a
/// libpq `key=value` string; `mysql://`, `mariadb://`; `mongodb://`).
pub fn url_kind(url: &str) -> Option<UrlKind> {
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        Some(UrlKind::Postgres)
    } else if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
        Some(UrlKind::MySql)
    } else if lower.starts_with("mongodb://") || lower.starts_with("mongodb+srv://") {
        Some(UrlKind::MongoDb)
    } else if lower.contains('=') && !lower.contains("://") {
        Some(UrlKind::Postgres)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_kinds() {
        assert_eq!(url_kind("postgres://u@h/db"), Some(UrlKind::Postgres));
        assert_eq!(url_kind("host=h port=5 user=u"), Some(UrlKind::Postgres));
        assert_eq!(url_kind("mariadb://u:p@h:3306"), Some(UrlKind::MySql));
        assert_eq!(url_kind("mongodb://h"), Some(UrlKind::MongoDb));
        assert_eq!(url_kind("http://h"), None);
    }
}

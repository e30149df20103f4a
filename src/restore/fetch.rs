//! What the three fetch verbs share: `wal-fetch` (PostgreSQL's
//! `restore_command`), `binlog-fetch` (MySQL/MariaDB binlog files) and
//! `oplog-fetch` (MongoDB's `oplog.bson`). Each engine names its verb
//! ([`EngineOps::fetch_verb`]); the verbs open the repository, find the
//! source and answer with the same exit statuses:
//!
//! * 0: written;
//! * 1 ([`NOT_ARCHIVED`]): the repository does not hold what was asked, the
//!   end of the archive. PostgreSQL ends recovery on it;
//! * 126 ([`FAILED`]): any other error (an unreachable repository, a corrupt
//!   segment, a source that is not there or is another engine's).
//!   PostgreSQL aborts recovery on it instead of promoting early.
//!
//! "Not archived" is only answered for a source that is there and is the
//! verb's engine's ([`confirm`]): a mistyped `--name`, or a source of
//! another engine, would otherwise hold nothing and end a recovery at its
//! first file. `binlog-fetch` and `oplog-fetch` confirm before they read;
//! `wal-fetch` runs once per WAL file during recovery and confirms only
//! before it answers "not archived" (one object read less per file).

use anyhow::anyhow;
use pitr_segment::TimestampMicros;

use crate::archive::identity::{list_sources as sources, read_identity};
use crate::archive::keys::SourceName;
use crate::engine::{self, EngineOps};
use crate::storage::Repo;

/// Exit status: the repository does not hold what was asked.
pub const NOT_ARCHIVED: i32 = 1;
/// Exit status of any other failure.
pub const FAILED: i32 = 126;

/// The engine that recorded `source` (`None`: no identity stored yet).
async fn engine_of(
    repo: &Repo,
    source: &SourceName,
) -> anyhow::Result<Option<&'static dyn EngineOps>> {
    Ok(read_identity(repo, source)
        .await?
        .and_then(|id| engine::by_code(id.engine)))
}

/// The source a fetch verb of `engine` serves: `--name` when given (not
/// checked here, see [`confirm`]), else the one source of that engine the
/// repository holds.
pub async fn resolve(
    repo: &Repo,
    name: Option<&str>,
    engine: &'static dyn EngineOps,
) -> anyhow::Result<SourceName> {
    if let Some(n) = name {
        return SourceName::new(n).map_err(|e| anyhow!("invalid --name: {e}"));
    }
    let all = sources(repo).await?;
    let mut mine = Vec::new();
    let mut others = Vec::new();
    for s in all {
        match engine_of(repo, &s).await? {
            Some(e) if e.name() != engine.name() => others.push(format!("{s} ({})", e.label())),
            _ => mine.push(s),
        }
    }
    match (mine.len(), others.is_empty()) {
        (1, _) => Ok(mine.remove(0)),
        (0, true) => Err(anyhow!(
            "the repository holds no source yet; check --repo or run `pitr archive` first"
        )),
        (0, false) => Err(anyhow!(
            "the repository holds no {} source, only {}; check --repo",
            engine.label(),
            others.join(", ")
        )),
        _ => Err(anyhow!(
            "the repository holds several {} sources ({}); choose one with --name",
            engine.label(),
            mine.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Refuses a source that the repository does not hold, or that another
/// engine recorded, in one sentence that says what to do.
pub async fn confirm(
    repo: &Repo,
    source: &SourceName,
    engine: &'static dyn EngineOps,
) -> anyhow::Result<()> {
    match engine_of(repo, source).await? {
        Some(e) if e.name() == engine.name() => Ok(()),
        Some(e) => Err(anyhow!(
            "source {source} is a {} source; `pitr {}` serves {} sources: use `pitr {}`",
            e.label(),
            engine.fetch_verb(),
            engine.label(),
            e.fetch_verb()
        )),
        None => {
            let all = sources(repo).await?;
            if all.contains(source) {
                return Ok(());
            }
            let held: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
            Err(anyhow!(
                "the repository holds no source named {source}{}; check --name and --repo",
                if held.is_empty() {
                    String::new()
                } else {
                    format!(" (it holds {})", held.join(", "))
                }
            ))
        }
    }
}

/// Opens the repository (it must exist) and finds and confirms the source.
pub async fn open(
    repo_arg: &str,
    name: Option<&str>,
    engine: &'static dyn EngineOps,
    kek: Option<&crate::crypto::kek::KekSource>,
) -> anyhow::Result<(Repo, SourceName)> {
    let repo = Repo::open_existing(repo_arg).await?;
    crate::crypto::unlock(&repo, kek, crate::crypto::Access::Read).await?;
    let source = resolve(&repo, name, engine).await?;
    // A source found by its engine needs no second look.
    if name.is_some() {
        confirm(&repo, &source, engine).await?;
    }
    Ok((repo, source))
}

/// Writes `bytes` to `dest` via a temporary file in the same directory.
pub fn write_atomically(dest: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// A commit or wall time in the fetch verbs' `--list` output
/// (`2024-01-02T03:04:05.123456Z`; `-` when unknown).
pub fn list_time(t: Option<TimestampMicros>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp_micros(t.0))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::identity::{ensure_identity, SourceIdentity};
    use crate::engine::{mongodb::MongoDb, mysql::MySql, postgres::Postgres};
    use pitr_segment::Engine;

    async fn repo_with(sources: &[(&str, Engine)]) -> Repo {
        let repo = Repo::open("memory://").await.unwrap();
        for (name, engine) in sources {
            ensure_identity(&repo, &SourceIdentity::new(name, *engine, "id"))
                .await
                .unwrap();
        }
        repo
    }

    fn err(r: anyhow::Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn a_fetch_verb_finds_its_engines_source_and_refuses_the_others() {
        let repo = repo_with(&[("pg", Engine::Postgres), ("shop", Engine::MariaDb)]).await;
        // Without --name: the one source of the verb's engine.
        assert_eq!(
            resolve(&repo, None, &Postgres).await.unwrap().as_str(),
            "pg"
        );
        assert_eq!(resolve(&repo, None, &MySql).await.unwrap().as_str(), "shop");
        let e = err(resolve(&repo, None, &MongoDb).await);
        assert!(
            e.contains("no MongoDB source, only pg (PostgreSQL), shop (MySQL/MariaDB)"),
            "{e}"
        );
        // --name of another engine's source: the verb to use instead.
        let shop = SourceName::new("shop").unwrap();
        let e = err(confirm(&repo, &shop, &Postgres).await);
        assert_eq!(
            e,
            "source shop is a MySQL/MariaDB source; `pitr wal-fetch` serves PostgreSQL sources: use `pitr binlog-fetch`"
        );
        confirm(&repo, &shop, &MySql).await.unwrap();
        // A mistyped --name is no "not archived".
        let typo = SourceName::new("shopp").unwrap();
        let e = err(confirm(&repo, &typo, &MySql).await);
        assert_eq!(
            e,
            "the repository holds no source named shopp (it holds pg, shop); check --name and --repo"
        );
        // Several of one engine: --name is needed.
        let repo = repo_with(&[("a", Engine::MySql), ("b", Engine::MariaDb)]).await;
        let e = err(resolve(&repo, None, &MySql).await);
        assert!(e.contains("several MySQL/MariaDB sources (a, b)"), "{e}");
        let empty = repo_with(&[]).await;
        assert!(err(resolve(&empty, None, &MySql).await).contains("no source yet"));
    }

    #[test]
    fn list_times() {
        assert_eq!(list_time(None), "-");
        assert_eq!(
            list_time(Some(TimestampMicros(1_700_000_000_123_456))),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}

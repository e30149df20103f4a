//! `pitr verify`: re-reads the repository and checks it end to end.
//!
//! Per source:
//! * the identity record (`source.json`) parses and names the source;
//! * every segment object (chain, redundant and conflicting ones) decodes
//!   with all frame and whole-object checksums, its header matches the
//!   source identity (engine, system id) and its key (epoch, start), and its
//!   footer matches the key (end position, first/last commit time);
//! * per epoch, the chain is continuous: holes that no gap record covers and
//!   segments that overlap the chain (divergent history) are problems;
//! * every gap record parses and matches its key;
//! * no segment or gap record is *fenced* (written by an archiver after it
//!   had lost the writer lease, see `archive::fence`): such objects are never
//!   used, and each is reported with the generation that wrote it and the
//!   takeover that fences it;
//! * every base backup has a manifest whose engine and system id match the
//!   identity, and every part listed in it exists with the listed size and
//!   sha256.
//!
//! Reads run with bounded parallelism; each problem carries the object key
//! and, where one applies, the log position.

use futures::stream::{self, StreamExt};
use pitr_segment::SegmentReader;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::catalog::{Catalog, SegmentEntry};
use crate::archive::gaps::read_gap;
use crate::archive::identity::{read_identity, SourceIdentity};
use crate::archive::keys::{BackupKey, SourceName};
use crate::storage::Repo;

/// One thing wrong with the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub source: String,
    /// The object the problem is about.
    pub key: String,
    /// `<epoch>/<position>` where one applies.
    pub position: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.position {
            Some(p) => write!(f, "{} (at {p}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// What `verify` looked at and what it found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub sources: usize,
    pub segments: usize,
    pub segment_bytes: u64,
    pub gaps: usize,
    pub backups: usize,
    pub backup_parts: usize,
    pub problems: Vec<Problem>,
    /// Data key ids the checked segments are sealed with (empty when none
    /// is encrypted): the keys the repository still needs.
    pub key_ids: std::collections::BTreeSet<u32>,
    /// Objects that are not wrong but worth knowing about (e.g. incomplete
    /// backups, compaction leftovers, objects outside the key layout).
    pub notes: Vec<String>,
}

/// Verifies every source of the repository (or only `only`), reading with
/// `parallelism` objects in flight.
pub async fn verify_repo(
    repo: &Repo,
    only: Option<&str>,
    parallelism: usize,
) -> anyhow::Result<VerifyReport> {
    let mut sources = crate::monitor::status::list_sources(repo).await?;
    if let Some(name) = only {
        sources.retain(|s| s.as_str() == name);
        if sources.is_empty() {
            anyhow::bail!("the repository {repo} has no source named {name:?}");
        }
    }
    let mut report = VerifyReport::default();
    for s in &sources {
        verify_source(repo, s, parallelism.max(1), &mut report).await?;
        report.sources += 1;
    }
    Ok(report)
}

fn problem(source: &SourceName, key: &str, position: Option<String>, message: String) -> Problem {
    Problem {
        source: source.to_string(),
        key: key.to_string(),
        position,
        message,
    }
}

async fn verify_source(
    repo: &Repo,
    source: &SourceName,
    parallelism: usize,
    report: &mut VerifyReport,
) -> anyhow::Result<()> {
    let id_key = crate::archive::keys::identity_key(source);
    let identity = match read_identity(repo, source).await {
        Ok(Some(id)) => Some(id),
        Ok(None) => {
            report.problems.push(problem(
                source,
                &id_key,
                None,
                "identity record is missing".into(),
            ));
            None
        }
        Err(e) => {
            report
                .problems
                .push(problem(source, &id_key, None, e.to_string()));
            None
        }
    };
    // A full listing: verify must not trust roll-up index objects.
    let catalog = Catalog::load_listing(repo, source).await?;
    for k in catalog.unrecognized() {
        report
            .notes
            .push(format!("{k}: not part of the key layout (ignored)"));
    }
    for f in catalog.fenced() {
        report.problems.push(problem(
            source,
            &f.key(),
            Some(format!(
                "{}/{}",
                f.by.epoch.to_hex(),
                f.by.position.to_hex()
            )),
            f.describe(),
        ));
    }

    let mut segments: Vec<SegmentEntry> = Vec::new();
    for e in catalog.epochs() {
        let Some(ec) = catalog.epoch(e) else { continue };
        segments.extend(ec.segments().iter().cloned());
        segments.extend(ec.redundant().iter().cloned());
        for c in ec.conflicts() {
            report.problems.push(problem(
                source,
                &c.key.to_key(),
                Some(format!("{}/{}", e.to_hex(), c.key.start.to_hex())),
                "overlaps the segment chain with a different range (divergent history)".into(),
            ));
            segments.push(c.clone());
        }
        if !ec.redundant().is_empty() {
            report.notes.push(format!(
                "{source}: epoch {}: {} segment(s) wholly covered by others (compaction leftovers)",
                e.to_hex(),
                ec.redundant().len()
            ));
        }
        // Continuity: holes between runs that no gap record covers.
        let runs = ec.runs();
        for w in runs.windows(2) {
            let (mut from, to) = (w[0].1, w[1].0);
            for g in ec.gaps() {
                if g.start <= from && g.end > from {
                    from = g.end;
                }
            }
            if from < to {
                let next = ec
                    .segments()
                    .iter()
                    .find(|s| s.key.start == w[1].0)
                    .map(|s| s.key.to_key())
                    .unwrap_or_default();
                report.problems.push(problem(
                    source,
                    &next,
                    Some(format!("{}/{}", e.to_hex(), from.to_hex())),
                    format!(
                        "hole in the log: positions {}..{} are in no segment and no gap record",
                        from.to_hex(),
                        to.to_hex()
                    ),
                ));
            }
        }
        for g in ec.gaps() {
            report.gaps += 1;
            if let Err(err) = read_gap(repo, g).await {
                report.problems.push(problem(
                    source,
                    &g.to_key(),
                    Some(format!("{}/{}", e.to_hex(), g.start.to_hex())),
                    err.to_string(),
                ));
            }
        }
    }

    let checks = stream::iter(segments.into_iter().map(|s| {
        let identity = identity.clone();
        async move { check_segment(repo, &s, identity.as_ref()).await }
    }))
    .buffer_unordered(parallelism);
    let results: Vec<(u64, Option<u32>, Vec<Found>)> = checks.collect().await;
    for (bytes, key_id, probs) in results {
        report.segments += 1;
        report.segment_bytes += bytes;
        report.key_ids.extend(key_id.filter(|&id| id != 0));
        for (k, p, m) in probs {
            report.problems.push(problem(source, &k, p, m));
        }
    }

    for b in catalog.backups() {
        verify_backup(repo, source, b, identity.as_ref(), parallelism, report).await;
    }
    Ok(())
}

/// A problem found in one object: key, position, message.
type Found = (String, Option<String>, String);

/// Reads and checks one segment (opening it with the repository's data
/// keys); returns its size, the data key id its header names, and problems.
async fn check_segment(
    repo: &Repo,
    s: &SegmentEntry,
    identity: Option<&SourceIdentity>,
) -> (u64, Option<u32>, Vec<Found>) {
    let key = s.key.to_key();
    let at = Some(format!("{}/{}", s.key.epoch.to_hex(), s.key.start.to_hex()));
    let body = match repo.get(&key).await {
        Ok(b) => b,
        Err(e) => return (0, None, vec![(key, at, format!("cannot read: {e}"))]),
    };
    let len = body.len() as u64;
    let key_id = pitr_segment::parse_header(&body)
        .ok()
        .map(|(h, _)| h.key_id);
    let expect = s.key.clone();
    let engine_id = identity.map(|i| (i.engine, i.system_id.clone()));
    let keys = repo.keys();
    let all = keys.all.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let mut r = SegmentReader::with_keys(&body[..], &all)?;
        let header = r.header().clone();
        let meta = r.verify_to_end()?.clone();
        Ok::<_, pitr_segment::SegmentError>((header, meta))
    })
    .await;
    let (header, meta) = match checked {
        Ok(Ok(x)) => x,
        Ok(Err(pitr_segment::SegmentError::KeyNeeded { key_id })) => {
            let why = format!("cannot be checked: {}", keys.missing(key_id));
            return (len, Some(key_id), vec![(key, at, why)]);
        }
        Ok(Err(e)) => {
            return (
                len,
                key_id,
                vec![(key, at, format!("corrupt segment: {e}"))],
            )
        }
        Err(e) => return (len, key_id, vec![(key, at, format!("check failed: {e}"))]),
    };
    let mut out = Vec::new();
    let mut mismatch = |what: String| out.push((key.clone(), at.clone(), what));
    if let Some((engine, system_id)) = &engine_id {
        if header.engine != *engine {
            mismatch(format!(
                "header engine {} differs from the source's {}",
                header.engine.name(),
                engine.name()
            ));
        }
        if header.source_id != *system_id {
            mismatch(format!(
                "header source id {:?} differs from the source's system id {:?}",
                header.source_id, system_id
            ));
        }
    }
    if header.epoch != expect.epoch {
        mismatch(format!(
            "header epoch {} differs from the key's {}",
            header.epoch.to_hex(),
            expect.epoch.to_hex()
        ));
    }
    if header.start != expect.start {
        mismatch(format!(
            "header start {} differs from the key's {}",
            header.start.to_hex(),
            expect.start.to_hex()
        ));
    }
    if meta.footer.end != expect.end {
        mismatch(format!(
            "footer end {} differs from the key's {}",
            meta.footer.end.to_hex(),
            expect.end.to_hex()
        ));
    }
    if meta.footer.first_commit != expect.tmin || meta.footer.last_commit != expect.tmax {
        mismatch(format!(
            "footer commit times {:?}..{:?} differ from the key's {:?}..{:?}",
            meta.footer.first_commit.map(|t| t.0),
            meta.footer.last_commit.map(|t| t.0),
            expect.tmin.map(|t| t.0),
            expect.tmax.map(|t| t.0)
        ));
    }
    if s.size != len {
        mismatch(format!(
            "listed size {} differs from the {} bytes read",
            s.size, len
        ));
    }
    (len, Some(header.key_id), out)
}

async fn verify_backup(
    repo: &Repo,
    source: &SourceName,
    b: &BackupKey,
    identity: Option<&SourceIdentity>,
    parallelism: usize,
    report: &mut VerifyReport,
) {
    let mkey = b.to_key();
    let at = Some(b.start.to_hex());
    let summary = match crate::engine::read_backup(repo, b).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            report.notes.push(format!(
                "{}: no manifest.json, an incomplete backup (ignored by restore)",
                b.dir()
            ));
            return;
        }
        Err(e) => {
            report
                .problems
                .push(problem(source, &mkey, at, format!("{e:#}")));
            return;
        }
    };
    report.backups += 1;
    if let Some(id) = identity {
        if summary.server_engine != id.engine || summary.system_id != id.system_id {
            report.problems.push(problem(
                source,
                &mkey,
                at.clone(),
                format!(
                    "manifest is of {} system id {}, the source is {} system id {}",
                    summary.server_engine.name(),
                    summary.system_id,
                    id.engine.name(),
                    id.system_id
                ),
            ));
        }
    }
    let parts: Vec<(String, u64, String)> = summary
        .parts
        .into_iter()
        .map(|p| (p.name, p.size, p.sha256))
        .collect();
    check_parts(repo, source, b, parts, at, parallelism, report).await;
}

/// Re-reads every part `(key, size, sha256)` of backup `b`.
async fn check_parts(
    repo: &Repo,
    source: &SourceName,
    b: &BackupKey,
    parts: Vec<(String, u64, String)>,
    at: Option<String>,
    parallelism: usize,
    report: &mut VerifyReport,
) {
    struct P {
        key: String,
        size: u64,
        sha256: String,
    }
    let parts = parts
        .into_iter()
        .map(|(key, size, sha256)| P { key, size, sha256 });
    let results: Vec<Option<(String, String)>> = stream::iter(parts.map(|p| async move {
        let key = match b.part_key(&p.key) {
            Ok(k) => k,
            Err(e) => return Some((format!("{}{}", b.dir(), p.key), e.to_string())),
        };
        let body = match repo.get(&key).await {
            Ok(body) => body,
            Err(e) => return Some((key, format!("backup part cannot be read: {e}"))),
        };
        if body.len() as u64 != p.size {
            return Some((
                key,
                format!(
                    "backup part has {} bytes, the manifest lists {}",
                    body.len(),
                    p.size
                ),
            ));
        }
        let digest = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&body)))
            .await
            .unwrap_or_default();
        if !digest.eq_ignore_ascii_case(&p.sha256) {
            return Some((
                key,
                format!(
                    "backup part sha256 {digest} differs from the manifest's {}",
                    p.sha256
                ),
            ));
        }
        None
    }))
    .buffer_unordered(parallelism)
    .collect()
    .await;
    for r in results {
        report.backup_parts += 1;
        if let Some((k, m)) = r {
            report.problems.push(problem(source, &k, at.clone(), m));
        }
    }
}

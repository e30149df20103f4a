//! Rebuilds one archived MySQL/MariaDB binlog file from the repository.
//!
//! A binlog file `<base>.<NNNNNN>` is the magic `\xfebin` followed by the
//! events of sequence `N`; the archiver stores those events in segments
//! `[(N, a), (N, b))` that never cross a file (see
//! `pitr_mysql::segment`). The file is the magic plus the
//! concatenation of the verified segments of sequence `N`, which must start
//! at offset 4 and be contiguous.
//!
//! In-use flag: the server sets `LOG_EVENT_BINLOG_IN_USE_F` in the file's
//! FORMAT_DESCRIPTION while it writes the file and clears it (one byte, in
//! place) when the file is closed; the dump thread always sends it cleared.
//! Here it is cleared when the rebuilt file is complete (its last event is a
//! ROTATE or STOP), giving the bytes of the server's closed file, and SET
//! when it is not: the file may continue, and the result is then a prefix of
//! the server's still-open file, byte for byte (`mysqlbinlog` reads it with
//! a warning). The event's CRC32 is defined over the header with the flag
//! cleared, so it is recomputed after changing the flag and comes out
//! unchanged (a test checks this).

use std::path::Path;

use anyhow::{anyhow, Context as _};
use futures::stream::{self, StreamExt, TryStreamExt};
use pitr_mysql::event::{checksum_matches, compute_checksum, types, LOG_EVENT_BINLOG_IN_USE_F};
use pitr_mysql::file::{clear_in_use_flag, BINLOG_MAGIC};
use pitr_mysql::segment::{last_event_type, FIRST_EVENT_OFFSET, MYSQL_EPOCH};
use pitr_segment::{LogPos, TimestampMicros};

use crate::archive::catalog::{Catalog, SegmentEntry};
use crate::archive::keys::{SegmentKey, SourceName};
use crate::archive::segment_read::read_segment;
use crate::restore::fetch::write_atomically;
use crate::source::mysql_meta::{read_meta, MysqlMeta};
use crate::storage::Repo;

/// What `binlog-fetch` did.
#[derive(Debug, PartialEq, Eq)]
pub enum BinlogFetchOutcome {
    /// The file was written; `complete` = it ends with ROTATE/STOP.
    Written { bytes: u64, complete: bool },
    /// The repository holds no (contiguous) copy of the file.
    NotArchived(String),
}

/// One archived binlog file, for `--list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    pub name: String,
    pub seq: u64,
    /// Bytes archived (offset 4 up to here is contiguous).
    pub end: u64,
    pub first_commit: Option<TimestampMicros>,
    pub last_commit: Option<TimestampMicros>,
    /// The archived part does not start at offset 4 or has holes.
    pub partial: bool,
}

/// The catalog's chain segments of file `seq`.
fn file_segments(catalog: &Catalog, seq: u64) -> Vec<SegmentEntry> {
    catalog
        .epoch(MYSQL_EPOCH)
        .map(|ec| {
            ec.segments()
                .iter()
                // Not the empty bridge segment (seq, end) .. (seq + 1, 4).
                .filter(|s| s.key.start.hi == seq && s.key.end.hi == seq)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The contiguous run of `segs` from offset 4, or why there is none.
fn contiguous_from_start(segs: &[SegmentEntry]) -> Result<Vec<SegmentKey>, String> {
    let mut at = LogPos::new(
        segs.first().map_or(0, |s| s.key.start.hi),
        FIRST_EVENT_OFFSET,
    );
    let mut out = Vec::new();
    for s in segs {
        if s.key.start != at {
            return Err(format!(
                "the archive holds offsets {}..{} but not {}..{}",
                s.key.start.lo, s.key.end.lo, at.lo, s.key.start.lo
            ));
        }
        at = s.key.end;
        out.push(s.key.clone());
    }
    if out.is_empty() {
        return Err("no segment of it is archived".into());
    }
    Ok(out)
}

async fn load(repo: &Repo, source: &SourceName) -> anyhow::Result<(MysqlMeta, Catalog)> {
    let meta = read_meta(repo, source).await?.ok_or_else(|| {
        anyhow!("source {source} holds no MySQL/MariaDB binlog archive (no mysql.json)")
    })?;
    let catalog = Catalog::load(repo, source).await?;
    Ok((meta, catalog))
}

/// Rebuilds `file_name` of `source` into `dest` (written atomically).
pub async fn fetch_binlog_file(
    repo: &Repo,
    source: &SourceName,
    file_name: &str,
    dest: &Path,
    parallel: usize,
) -> anyhow::Result<BinlogFetchOutcome> {
    let (meta, catalog) = load(repo, source).await?;
    let Some((base, digits)) = file_name.rsplit_once('.') else {
        return Err(anyhow!(
            "{file_name:?} is not a binlog file name (BASE.NNNNNN)"
        ));
    };
    let seq: u64 = digits
        .parse()
        .ok()
        .filter(|_| digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| anyhow!("{file_name:?} is not a binlog file name (BASE.NNNNNN)"))?;
    if base != meta.binlog_basename {
        return Ok(BinlogFetchOutcome::NotArchived(format!(
            "{file_name} is not archived: the binlog files of source {source} are named {}.NNNNNN",
            meta.binlog_basename
        )));
    }
    let keys = match contiguous_from_start(&file_segments(&catalog, seq)) {
        Ok(k) => k,
        Err(why) => {
            return Ok(BinlogFetchOutcome::NotArchived(format!(
                "{file_name} is not archived: {why}"
            )))
        }
    };
    let parts: Vec<Vec<u8>> = stream::iter(keys.into_iter().map(|k| async move {
        let (_, payload) = read_segment(repo, &k).await?;
        if payload.len() as u64 != k.end.lo - k.start.lo {
            return Err(anyhow!(
                "segment {} holds {} bytes, not what its name says; the repository is damaged",
                k.to_key(),
                payload.len()
            ));
        }
        Ok::<_, anyhow::Error>(payload)
    }))
    .buffered(parallel.max(1))
    .try_collect()
    .await?;
    let mut out = BINLOG_MAGIC.to_vec();
    for p in &parts {
        out.extend_from_slice(p);
    }
    let complete = matches!(
        last_event_type(&out[BINLOG_MAGIC.len()..]),
        Some(types::ROTATE | types::STOP)
    );
    set_in_use(&mut out, !complete)?;
    write_atomically(dest, &out).with_context(|| format!("writing {}", dest.display()))?;
    Ok(BinlogFetchOutcome::Written {
        bytes: out.len() as u64,
        complete,
    })
}

/// Sets or clears the in-use flag of the FORMAT_DESCRIPTION event at offset
/// 4 (see the module docs) and keeps its CRC32 valid.
fn set_in_use(file: &mut [u8], in_use: bool) -> anyhow::Result<()> {
    let fde = file
        .get_mut(BINLOG_MAGIC.len()..)
        .ok_or_else(|| anyhow!("binlog file too short"))?;
    let size =
        pitr_mysql::event::event_size(fde).ok_or_else(|| anyhow!("binlog file too short"))?;
    if fde.get(4) != Some(&types::FORMAT_DESCRIPTION) || size > fde.len() || size < 23 {
        return Err(anyhow!(
            "the archived file does not start with a FORMAT_DESCRIPTION event; the repository is damaged"
        ));
    }
    let event = &mut fde[..size];
    // With checksums on, the stored CRC is over the header with the flag
    // cleared: recomputing it after clearing yields the same value.
    let checksummed = checksum_matches(event);
    clear_in_use_flag(event);
    if in_use {
        event[17] |= LOG_EVENT_BINLOG_IN_USE_F as u8;
    }
    if checksummed {
        let crc = compute_checksum(&event[..size - 4]);
        event[size - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    Ok(())
}

/// Every binlog file with archived segments, in log order.
pub async fn list_binlog_files(
    repo: &Repo,
    source: &SourceName,
) -> anyhow::Result<Vec<ArchivedFile>> {
    let (meta, catalog) = load(repo, source).await?;
    let Some(ec) = catalog.epoch(MYSQL_EPOCH) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<ArchivedFile> = Vec::new();
    // Skip the empty bridges from a file's end to the next file's start.
    for s in ec
        .segments()
        .iter()
        .filter(|s| s.key.start.hi == s.key.end.hi)
    {
        let seq = s.key.start.hi;
        match out.last_mut() {
            Some(f) if f.seq == seq => {
                f.partial |= s.key.start.lo != f.end;
                f.end = s.key.end.lo;
                f.first_commit = min_opt(f.first_commit, s.key.tmin);
                f.last_commit = f.last_commit.max(s.key.tmax);
            }
            _ => out.push(ArchivedFile {
                name: meta.file_name(seq),
                seq,
                end: s.key.end.lo,
                first_commit: s.key.tmin,
                last_commit: s.key.tmax,
                partial: s.key.start.lo != FIRST_EVENT_OFFSET,
            }),
        }
    }
    Ok(out)
}

fn min_opt(a: Option<TimestampMicros>, b: Option<TimestampMicros>) -> Option<TimestampMicros> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, a: u64, b: u64) -> SegmentEntry {
        SegmentEntry {
            key: SegmentKey {
                source: SourceName::new("s").unwrap(),
                epoch: MYSQL_EPOCH,
                start: LogPos::new(seq, a),
                end: LogPos::new(seq, b),
                tmin: None,
                tmax: None,
                generation: 0,
            },
            size: 1,
        }
    }

    #[test]
    fn a_file_must_be_contiguous_from_offset_4() {
        let ok = contiguous_from_start(&[entry(3, 4, 100), entry(3, 100, 250)]).unwrap();
        assert_eq!(ok.len(), 2);
        let e = contiguous_from_start(&[entry(3, 100, 250)]).unwrap_err();
        assert!(e.contains("not 4..100"), "{e}");
        assert!(contiguous_from_start(&[entry(3, 4, 100), entry(3, 120, 250)]).is_err());
        assert!(contiguous_from_start(&[]).is_err());
    }

    #[test]
    fn closing_clears_the_flag_and_keeps_the_crc_valid() {
        // A FORMAT_DESCRIPTION-shaped event: header + 40 body bytes + CRC.
        let size = 19 + 40 + 4;
        let mut ev = vec![0u8; size];
        ev[4] = types::FORMAT_DESCRIPTION;
        ev[9..13].copy_from_slice(&(size as u32).to_le_bytes());
        ev[17] = 1; // in use
        let crc = compute_checksum(&ev[..size - 4]);
        ev[size - 4..].copy_from_slice(&crc.to_le_bytes());
        let mut file = BINLOG_MAGIC.to_vec();
        file.extend_from_slice(&ev);
        set_in_use(&mut file, false).unwrap();
        assert_eq!(file[4 + 17] & 1, 0);
        assert!(checksum_matches(&file[4..]));
        assert_eq!(&file[4 + size - 4..], &crc.to_le_bytes(), "CRC unchanged");
        set_in_use(&mut file, true).unwrap();
        assert_eq!(&file[4..], &ev[..], "flag set again, same CRC");
        // Not starting with an FDE is an error.
        let mut bad = BINLOG_MAGIC.to_vec();
        bad.extend_from_slice(&ev);
        bad[4 + 4] = types::QUERY;
        assert!(set_in_use(&mut bad, false).is_err());
    }
}

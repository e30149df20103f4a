//! Object keys: the ONLY place that formats and parses repository keys.
//!
//! ```text
//! <source>/source.json                                              identity
//! <source>/<epoch>/log/<start>-<end>_<tmin>-<tmax>_<gen>.seg        segment
//! <source>/<epoch>/gaps/<start>-<end>_<gen>.json                    gap record
//! <source>/lease/writer.json                                        writer lease
//! <source>/lease/gen-<generation>_<epoch>-<position>.json          takeover record
//! <source>/<epoch>/history/<name>                                   e.g. 00000002.history
//! <source>/backups/<start>_<id>/manifest.json                       base backup manifest
//! <source>/backups/<start>_<id>/<part>                              base backup part
//! <source>/index/<epoch>/<first>-<last>_<level>-<generation>.idx.json   roll-up index
//! <source>/pins/<id>_<expires>.json                                restore pin (see `pins`)
//! ```
//!
//! * `<source>`: 1..=64 characters of `[A-Za-z0-9._-]`, not `.` or `..`
//!   (the same rule applies to history names, backup ids and part names).
//! * `<epoch>`: 16 lower-case hex digits ([`Epoch::to_hex`]).
//! * `<start>`, `<end>`, `<first>`, `<last>`: 32 lower-case hex digits
//!   ([`LogPos::to_hex`]); `start` inclusive, `end` exclusive.
//! * `<tmin>`, `<tmax>`: the first and last commit time in the segment, 16
//!   lower-case hex digits of the microseconds since the Unix epoch as an
//!   `i64` with its sign bit flipped (`(t as u64) ^ 2^63`), so the hex sorts
//!   like the signed time; or 16 `-` when the segment holds no commit.
//! * `<level>`: 2 hex digits, `<generation>`: 8 hex digits (see `index`).
//! * `<gen>`: the writer-lease generation of the archiver that wrote the
//!   object, 8 lower-case hex digits (see `lease`). Keys written before
//!   leases existed have no `_<gen>` part and parse as generation 0; since
//!   everything before it is fixed-width, old and new names still sort by
//!   `(start, end)`.
//! * takeover `<generation>`: 16 lower-case hex digits; `<epoch>` and
//!   `<position>` as above: where that generation's writer resumed.
//!
//! Every variable field is fixed-width, so within one directory the lexical
//! key order is the log order: `(epoch, start, end)`.

use std::fmt;

use pitr_segment::{Epoch, LogPos, TimestampMicros};

use crate::archive::fence::Takeover;

/// A key or name that does not follow the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("invalid {what} {name:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    InvalidName { what: &'static str, name: String },
    #[error("malformed {kind} key {key:?}: {reason}")]
    Malformed {
        kind: &'static str,
        key: String,
        reason: &'static str,
    },
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(what: &'static str, s: &str) -> Result<(), KeyError> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(KeyError::InvalidName {
            what,
            name: s.to_string(),
        })
    }
}

/// A validated source name (the `--name` of an archived database).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceName(String);

impl SourceName {
    pub fn new(name: &str) -> Result<SourceName, KeyError> {
        check_name("source name", name)?;
        Ok(SourceName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const NO_TIME: &str = "----------------";
const TIME_BIAS: u64 = 1 << 63;

/// Encodes an optional commit time as 16 sortable characters.
pub fn time_to_key(t: Option<TimestampMicros>) -> String {
    match t {
        Some(t) => format!("{:016x}", (t.0 as u64) ^ TIME_BIAS),
        None => NO_TIME.to_string(),
    }
}

/// Parses the output of [`time_to_key`].
pub fn time_from_key(s: &str) -> Option<Option<TimestampMicros>> {
    if s == NO_TIME {
        return Some(None);
    }
    if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let v = u64::from_str_radix(s, 16).ok()?;
    Some(Some(TimestampMicros((v ^ TIME_BIAS) as i64)))
}

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn pos(s: &str) -> Option<LogPos> {
    if lower_hex(s) {
        LogPos::from_hex(s)
    } else {
        None
    }
}

fn epoch(s: &str) -> Option<Epoch> {
    if lower_hex(s) {
        Epoch::from_hex(s)
    } else {
        None
    }
}

/// Splits `key` into `/` components and checks the fixed ones.
fn components<'a>(
    kind: &'static str,
    key: &'a str,
    n: usize,
) -> Result<(SourceName, Vec<&'a str>), KeyError> {
    let bad = |reason| KeyError::Malformed {
        kind,
        key: key.to_string(),
        reason,
    };
    let parts: Vec<&str> = key.split('/').collect();
    if parts.len() != n {
        return Err(bad("wrong number of path components"));
    }
    let source = SourceName::new(parts[0]).map_err(|_| bad("invalid source name"))?;
    Ok((source, parts))
}

/// `<source>/` — everything of one source.
pub fn source_prefix(source: &SourceName) -> String {
    format!("{source}/")
}

/// `<source>/<epoch>/log/`
pub fn log_prefix(source: &SourceName, e: Epoch) -> String {
    format!("{source}/{}/log/", e.to_hex())
}

/// `<source>/<epoch>/gaps/`
pub fn gaps_prefix(source: &SourceName, e: Epoch) -> String {
    format!("{source}/{}/gaps/", e.to_hex())
}

/// `<source>/<epoch>/history/`
pub fn history_prefix(source: &SourceName, e: Epoch) -> String {
    format!("{source}/{}/history/", e.to_hex())
}

/// `<source>/backups/`
pub fn backups_prefix(source: &SourceName) -> String {
    format!("{source}/backups/")
}

/// `<source>/index/`
pub fn index_prefix(source: &SourceName) -> String {
    format!("{source}/index/")
}

/// `<source>/index/<epoch>/`
pub fn index_epoch_prefix(source: &SourceName, e: Epoch) -> String {
    format!("{source}/index/{}/", e.to_hex())
}

/// `<source>/lease/`
pub fn lease_prefix(source: &SourceName) -> String {
    format!("{source}/lease/")
}

/// `<source>/lease/writer.json`: the writer lease.
pub fn writer_lease_key(source: &SourceName) -> String {
    format!("{source}/lease/writer.json")
}

/// `<source>/lease/gen-<generation>_<epoch>-<position>.json`: the takeover
/// record of a lease generation, naming where that writer resumed (in the
/// key, so the catalog learns every fence from one listing).
pub fn takeover_key(source: &SourceName, t: &Takeover) -> String {
    format!(
        "{source}/lease/gen-{:016x}_{}-{}.json",
        t.generation,
        t.epoch.to_hex(),
        t.position.to_hex()
    )
}

/// Parses a [`takeover_key`] of `source`.
pub fn parse_takeover_key(source: &SourceName, key: &str) -> Option<Takeover> {
    let name = key
        .strip_prefix(source.as_str())?
        .strip_prefix("/lease/gen-")?
        .strip_suffix(".json")?;
    if name.len() != 16 + 1 + 16 + 1 + 32
        || !name.is_ascii()
        || &name[16..17] != "_"
        || &name[33..34] != "-"
        || !lower_hex(&name[..16])
    {
        return None;
    }
    Some(Takeover {
        generation: u64::from_str_radix(&name[..16], 16).ok()?,
        epoch: epoch(&name[17..33])?,
        position: pos(&name[34..])?,
    })
}

/// `<source>/source.json`
pub fn identity_key(source: &SourceName) -> String {
    format!("{source}/source.json")
}

/// Parses a directory returned when listing `<source>/` with a delimiter:
/// `<source>/<epoch>` gives the epoch, anything else `None`.
pub fn parse_epoch_dir(source: &SourceName, dir: &str) -> Option<Epoch> {
    let rest = dir.strip_prefix(source.as_str())?.strip_prefix('/')?;
    epoch(rest.trim_end_matches('/'))
}

/// A log segment: `[start, end)` of `epoch`, commit times `tmin..=tmax`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentKey {
    pub source: SourceName,
    pub epoch: Epoch,
    pub start: LogPos,
    pub end: LogPos,
    pub tmin: Option<TimestampMicros>,
    pub tmax: Option<TimestampMicros>,
    /// Writer-lease generation of the archiver that wrote it (0: no lease).
    pub generation: u32,
}

impl SegmentKey {
    pub fn to_key(&self) -> String {
        format!(
            "{}{}-{}_{}-{}{}.seg",
            log_prefix(&self.source, self.epoch),
            self.start.to_hex(),
            self.end.to_hex(),
            time_to_key(self.tmin),
            time_to_key(self.tmax),
            gen_suffix(self.generation)
        )
    }

    /// The file-name part (after `log/`).
    pub fn file_name(&self) -> String {
        let k = self.to_key();
        k.rsplit('/').next().unwrap_or_default().to_string()
    }

    pub fn parse(key: &str) -> Result<SegmentKey, KeyError> {
        let (source, parts) = components("segment", key, 4)?;
        let bad = |reason| KeyError::Malformed {
            kind: "segment",
            key: key.to_string(),
            reason,
        };
        let e = epoch(parts[1]).ok_or_else(|| bad("bad epoch"))?;
        if parts[2] != "log" {
            return Err(bad("not under log/"));
        }
        Self::parse_file_name(source, e, parts[3]).ok_or_else(|| bad("bad file name"))
    }

    /// Parses the file-name part of a segment key of `source`/`epoch`.
    pub fn parse_file_name(source: SourceName, e: Epoch, name: &str) -> Option<SegmentKey> {
        let name = name.strip_suffix(".seg")?;
        let (name, generation) = split_gen(name, 32 + 1 + 32 + 1 + 16 + 1 + 16)?;
        if name.len() != 32 + 1 + 32 + 1 + 16 + 1 + 16 || !name.is_ascii() {
            return None;
        }
        if &name[32..33] != "-" || &name[65..66] != "_" || &name[82..83] != "-" {
            return None;
        }
        let start = pos(&name[..32])?;
        let end = pos(&name[33..65])?;
        let tmin = time_from_key(&name[66..82])?;
        let tmax = time_from_key(&name[83..])?;
        if end < start {
            return None;
        }
        Some(SegmentKey {
            source,
            epoch: e,
            start,
            end,
            tmin,
            tmax,
            generation,
        })
    }
}

/// `_<gen>` for generation > 0; nothing for 0 (the pre-lease form).
fn gen_suffix(generation: u32) -> String {
    if generation == 0 {
        String::new()
    } else {
        format!("_{generation:08x}")
    }
}

/// Splits an optional `_<gen>` (8 lower-case hex digits) off a name whose
/// fixed part is `base_len` long.
fn split_gen(name: &str, base_len: usize) -> Option<(&str, u32)> {
    if name.len() == base_len {
        return Some((name, 0));
    }
    if name.len() != base_len + 9 || !name.is_ascii() || &name[base_len..base_len + 1] != "_" {
        return None;
    }
    let g = &name[base_len + 1..];
    if !lower_hex(g) {
        return None;
    }
    let generation = u32::from_str_radix(g, 16).ok()?;
    // Generation 0 is written without the suffix: one key per object.
    (generation > 0).then_some((&name[..base_len], generation))
}

/// A segment key and the object's size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    pub key: SegmentKey,
    pub size: u64,
}

/// A gap record: `[start, end)` of `epoch` is known to be lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GapKey {
    pub source: SourceName,
    pub epoch: Epoch,
    pub start: LogPos,
    pub end: LogPos,
    /// Writer-lease generation of the archiver that wrote it (0: no lease).
    pub generation: u32,
}

impl GapKey {
    pub fn to_key(&self) -> String {
        format!(
            "{}{}-{}{}.json",
            gaps_prefix(&self.source, self.epoch),
            self.start.to_hex(),
            self.end.to_hex(),
            gen_suffix(self.generation)
        )
    }

    pub fn parse(key: &str) -> Result<GapKey, KeyError> {
        let (source, parts) = components("gap", key, 4)?;
        let bad = |reason| KeyError::Malformed {
            kind: "gap",
            key: key.to_string(),
            reason,
        };
        let e = epoch(parts[1]).ok_or_else(|| bad("bad epoch"))?;
        if parts[2] != "gaps" {
            return Err(bad("not under gaps/"));
        }
        let name = parts[3]
            .strip_suffix(".json")
            .ok_or_else(|| bad("missing .json"))?;
        let (name, generation) = split_gen(name, 65).ok_or_else(|| bad("bad file name"))?;
        if name.len() != 65 || !name.is_ascii() || &name[32..33] != "-" {
            return Err(bad("bad file name"));
        }
        let start = pos(&name[..32]).ok_or_else(|| bad("bad start"))?;
        let end = pos(&name[33..]).ok_or_else(|| bad("bad end"))?;
        Ok(GapKey {
            source,
            epoch: e,
            start,
            end,
            generation,
        })
    }
}

/// A history object of an epoch (e.g. a PostgreSQL `.history` file).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HistoryKey {
    pub source: SourceName,
    pub epoch: Epoch,
    pub name: String,
}

impl HistoryKey {
    pub fn new(source: SourceName, epoch: Epoch, name: &str) -> Result<HistoryKey, KeyError> {
        check_name("history name", name)?;
        Ok(HistoryKey {
            source,
            epoch,
            name: name.to_string(),
        })
    }

    pub fn to_key(&self) -> String {
        format!("{}{}", history_prefix(&self.source, self.epoch), self.name)
    }

    pub fn parse(key: &str) -> Result<HistoryKey, KeyError> {
        let (source, parts) = components("history", key, 4)?;
        let bad = |reason| KeyError::Malformed {
            kind: "history",
            key: key.to_string(),
            reason,
        };
        let e = epoch(parts[1]).ok_or_else(|| bad("bad epoch"))?;
        if parts[2] != "history" {
            return Err(bad("not under history/"));
        }
        HistoryKey::new(source, e, parts[3]).map_err(|_| bad("bad name"))
    }
}

/// A base backup starting at log position `start`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackupKey {
    pub source: SourceName,
    pub start: LogPos,
    pub id: String,
}

impl BackupKey {
    pub fn new(source: SourceName, start: LogPos, id: &str) -> Result<BackupKey, KeyError> {
        check_name("backup id", id)?;
        Ok(BackupKey {
            source,
            start,
            id: id.to_string(),
        })
    }

    /// `<source>/backups/<start>_<id>/`
    pub fn dir(&self) -> String {
        format!(
            "{}{}_{}/",
            backups_prefix(&self.source),
            self.start.to_hex(),
            self.id
        )
    }

    /// `<source>/backups/<start>_<id>/manifest.json`
    pub fn to_key(&self) -> String {
        format!("{}manifest.json", self.dir())
    }

    /// `<source>/backups/<start>_<id>/<part>`
    pub fn part_key(&self, part: &str) -> Result<String, KeyError> {
        check_name("backup part name", part)?;
        Ok(format!("{}{part}", self.dir()))
    }

    /// Parses a manifest key ([`BackupKey::to_key`]).
    pub fn parse(key: &str) -> Result<BackupKey, KeyError> {
        let bad = |reason| KeyError::Malformed {
            kind: "backup manifest",
            key: key.to_string(),
            reason,
        };
        let dir = key
            .strip_suffix("/manifest.json")
            .ok_or_else(|| bad("not a manifest.json"))?;
        BackupKey::parse_dir(dir).map_err(|_| bad("bad backup directory"))
    }

    /// Parses a backup directory (with or without the trailing `/`).
    pub fn parse_dir(dir: &str) -> Result<BackupKey, KeyError> {
        let dir = dir.trim_end_matches('/');
        let (source, parts) = components("backup directory", dir, 3)?;
        let bad = |reason| KeyError::Malformed {
            kind: "backup directory",
            key: dir.to_string(),
            reason,
        };
        if parts[1] != "backups" {
            return Err(bad("not under backups/"));
        }
        let name = parts[2];
        if name.len() < 34 || !name.is_char_boundary(32) || &name[32..33] != "_" {
            return Err(bad("expected <start>_<id>"));
        }
        let start = pos(&name[..32]).ok_or_else(|| bad("bad start"))?;
        BackupKey::new(source, start, &name[33..]).map_err(|_| bad("bad id"))
    }
}

/// A roll-up index object summarising the segments `[first, last)` of an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexKey {
    pub source: SourceName,
    pub epoch: Epoch,
    pub first: LogPos,
    pub last: LogPos,
    pub level: u8,
    pub generation: u32,
}

impl IndexKey {
    pub fn to_key(&self) -> String {
        format!(
            "{}{}-{}_{:02x}-{:08x}.idx.json",
            index_epoch_prefix(&self.source, self.epoch),
            self.first.to_hex(),
            self.last.to_hex(),
            self.level,
            self.generation
        )
    }

    pub fn parse(key: &str) -> Result<IndexKey, KeyError> {
        let (source, parts) = components("index", key, 4)?;
        let bad = |reason| KeyError::Malformed {
            kind: "index",
            key: key.to_string(),
            reason,
        };
        if parts[1] != "index" {
            return Err(bad("not under index/"));
        }
        let e = epoch(parts[2]).ok_or_else(|| bad("bad epoch"))?;
        let name = parts[3]
            .strip_suffix(".idx.json")
            .ok_or_else(|| bad("missing .idx.json"))?;
        if name.len() != 32 + 1 + 32 + 1 + 2 + 1 + 8
            || !name.is_ascii()
            || &name[32..33] != "-"
            || &name[65..66] != "_"
            || &name[68..69] != "-"
        {
            return Err(bad("bad file name"));
        }
        let first = pos(&name[..32]).ok_or_else(|| bad("bad first"))?;
        let last = pos(&name[33..65]).ok_or_else(|| bad("bad last"))?;
        let level = Some(&name[66..68])
            .filter(|s| lower_hex(s))
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .ok_or_else(|| bad("bad level"))?;
        let generation = Some(&name[69..])
            .filter(|s| lower_hex(s))
            .and_then(|s| u32::from_str_radix(s, 16).ok())
            .ok_or_else(|| bad("bad generation"))?;
        Ok(IndexKey {
            source,
            epoch: e,
            first,
            last,
            level,
            generation,
        })
    }
}

// --- Restore pins -----------------------------------------------------------

/// `<source>/pins/`
pub fn pins_prefix(source: &SourceName) -> String {
    format!("{source}/pins/")
}

/// One renewal of a restore pin: `<source>/pins/<id>_<expires>.json`, where
/// `<expires>` is the expiry in milliseconds since the Unix epoch as 16
/// lower-case hex digits (so a renewal is a new object and the newest
/// renewal of a pin sorts last).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PinKey {
    pub source: SourceName,
    pub id: String,
    pub expires_ms: u64,
}

impl PinKey {
    pub fn new(source: SourceName, id: &str, expires_ms: u64) -> Result<PinKey, KeyError> {
        check_name("pin id", id)?;
        Ok(PinKey {
            source,
            id: id.to_string(),
            expires_ms,
        })
    }

    pub fn to_key(&self) -> String {
        format!(
            "{}{}_{:016x}.json",
            pins_prefix(&self.source),
            self.id,
            self.expires_ms
        )
    }

    pub fn parse(key: &str) -> Result<PinKey, KeyError> {
        let (source, parts) = components("pin", key, 3)?;
        let bad = |reason| KeyError::Malformed {
            kind: "pin",
            key: key.to_string(),
            reason,
        };
        if parts[1] != "pins" {
            return Err(bad("not under pins/"));
        }
        let name = parts[2]
            .strip_suffix(".json")
            .ok_or_else(|| bad("missing .json"))?;
        let (id, exp) = name
            .rsplit_once('_')
            .ok_or_else(|| bad("expected <id>_<expires>"))?;
        if exp.len() != 16 || !lower_hex(exp) {
            return Err(bad("bad expiry"));
        }
        let expires_ms = u64::from_str_radix(exp, 16).map_err(|_| bad("bad expiry"))?;
        PinKey::new(source, id, expires_ms).map_err(|_| bad("bad id"))
    }
}

//! What the logical restore planners (MySQL/MariaDB, MongoDB) share when a plan cannot be
//! made: one error type carrying one sentence for the operator, and the sentence for a
//! stretch of log the archive does not have — a recorded gap (the server discarded the log
//! before it was archived, written down by the archiver) or a hole (nothing recorded).

use pitr_segment::LogPos;

use crate::archive::keys::GapKey;

/// Why no plan: one sentence naming what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// How an engine names its log in these sentences.
#[derive(Debug, Clone, Copy)]
pub struct LogWords {
    /// What a stretch `A..B` of the log is called (`binlog positions`, `oplog`).
    pub subject: &'static str,
    /// Its verb (`are`, `is`).
    pub verb: &'static str,
    /// How a position prints.
    pub pos: fn(LogPos) -> String,
    /// Why the server's log was lost before it was archived.
    pub gap_cause: &'static str,
    /// Whether a gap names its epoch (MongoDB: the term).
    pub epoch_word: Option<&'static str>,
}

/// The recorded gap overlapping `from..to`, or else the hole `from..to`.
pub fn hole_error(words: &LogWords, gaps: &[GapKey], from: LogPos, to: LogPos) -> PlanError {
    match gaps.iter().find(|g| g.start < to.max(from) && g.end > from) {
        Some(g) => {
            let epoch = words
                .epoch_word
                .map_or(String::new(), |w| format!(" ({w} {})", g.epoch.0));
            PlanError(format!(
                "{} {}..{}{epoch} {} a recorded gap ({}); a restore cannot cross it",
                words.subject,
                (words.pos)(g.start),
                (words.pos)(g.end),
                words.verb,
                words.gap_cause
            ))
        }
        None => PlanError(format!(
            "{} {}..{} {} not archived (a hole in the archive); a restore cannot cross it",
            words.subject,
            (words.pos)(from),
            (words.pos)(to),
            words.verb
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::keys::SourceName;
    use pitr_segment::Epoch;

    const WORDS: LogWords = LogWords {
        subject: "log",
        verb: "is",
        pos: |p| format!("{}:{}", p.hi, p.lo),
        gap_cause: "gone",
        epoch_word: Some("term"),
    };

    #[test]
    fn a_recorded_gap_is_named_before_a_hole() {
        let gap = GapKey {
            source: SourceName::new("s").unwrap(),
            epoch: Epoch(3),
            start: LogPos::new(1, 10),
            end: LogPos::new(1, 20),
            generation: 1,
        };
        let e = hole_error(&WORDS, &[gap], LogPos::new(1, 15), LogPos::new(1, 30));
        assert_eq!(
            e.0,
            "log 1:10..1:20 (term 3) is a recorded gap (gone); a restore cannot cross it"
        );
        let e = hole_error(&WORDS, &[], LogPos::new(1, 15), LogPos::new(1, 30));
        assert_eq!(
            e.0,
            "log 1:15..1:30 is not archived (a hole in the archive); a restore cannot cross it"
        );
    }
}

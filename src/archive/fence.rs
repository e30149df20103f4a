//! Fencing by lease generation: which objects a writer that had lost its
//! lease wrote too late.
//!
//! Every segment and gap record carries the writer-lease generation of the
//! archiver that wrote it (`keys`). When an archiver acquires generation
//! `h`, before it writes anything it stores an immutable *takeover record*
//! naming `h` and the position `(epoch, position)` it resumes from: the
//! repository's tail as it found it (see `lease`).
//!
//! **Rule.** An object of generation `g` is *fenced* iff some takeover
//! record of a generation `h > g` has `(epoch, position) < (object epoch,
//! object end)`, i.e. the object reaches past the point where a later writer
//! took over. Such an object was written after the takeover by a writer that
//! no longer held the lease (a paused process, a partition) — the new holder
//! did not see it when it computed the tail, and archives that stretch itself.
//! Fenced objects are excluded from the catalog's resolution (restore never
//! uses them), reported by `verify` and `status`, and are garbage for `prune`.
//!
//! An object that ends at or before the takeover position was (or could have
//! been) seen by the new holder, so it stays valid. A compacted segment takes
//! the highest generation of its inputs, so it is fenced exactly when one of
//! its inputs would be.

use pitr_segment::{Epoch, LogPos};

/// A takeover: generation `generation` resumed writing at `(epoch, position)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Takeover {
    pub generation: u64,
    pub epoch: Epoch,
    pub position: LogPos,
}

/// All takeovers of a source, answering "is this object fenced?" in
/// O(log n).
#[derive(Debug, Clone, Default)]
pub struct Fences {
    /// Sorted by generation.
    takeovers: Vec<Takeover>,
    /// `suffix_min[i]`: index of the takeover with the smallest
    /// `(epoch, position)` among `takeovers[i..]`.
    suffix_min: Vec<usize>,
}

impl Fences {
    pub fn new(mut takeovers: Vec<Takeover>) -> Fences {
        takeovers.sort();
        takeovers.dedup_by_key(|t| t.generation);
        let mut suffix_min = vec![0; takeovers.len()];
        let mut best: Option<usize> = None;
        for i in (0..takeovers.len()).rev() {
            let better = match best {
                None => true,
                Some(b) => point(&takeovers[i]) < point(&takeovers[b]),
            };
            if better {
                best = Some(i);
            }
            suffix_min[i] = best.unwrap_or(i);
        }
        Fences {
            takeovers,
            suffix_min,
        }
    }

    /// The takeovers, sorted by generation.
    pub fn takeovers(&self) -> &[Takeover] {
        &self.takeovers
    }

    pub fn is_empty(&self) -> bool {
        self.takeovers.is_empty()
    }

    /// The highest generation that took over, if any.
    pub fn latest(&self) -> Option<&Takeover> {
        self.takeovers.last()
    }

    /// The takeover fencing an object of generation `generation` ending at
    /// `(epoch, end)`, if any (the one that took over earliest in the log).
    pub fn fenced_by(&self, generation: u32, epoch: Epoch, end: LogPos) -> Option<&Takeover> {
        let i = self
            .takeovers
            .partition_point(|t| t.generation <= u64::from(generation));
        let t = &self.takeovers[*self.suffix_min.get(i)?];
        (point(t) < (epoch, end)).then_some(t)
    }
}

fn point(t: &Takeover) -> (Epoch, LogPos) {
    (t.epoch, t.position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(generation: u64, epoch: u64, pos: u64) -> Takeover {
        Takeover {
            generation,
            epoch: Epoch(epoch),
            position: LogPos::from_lsn(pos),
        }
    }

    #[test]
    fn objects_past_a_later_takeover_are_fenced() {
        let f = Fences::new(vec![t(2, 1, 100), t(3, 1, 300)]);
        let at = |g, e, end| f.fenced_by(g, Epoch(e), LogPos::from_lsn(end)).copied();
        assert_eq!(at(1, 1, 100), None);
        assert_eq!(at(1, 1, 101), Some(t(2, 1, 100)));
        assert_eq!(at(2, 1, 300), None);
        assert_eq!(at(2, 1, 301), Some(t(3, 1, 300)));
        assert_eq!(at(3, 1, 10_000), None);
        assert_eq!(at(1, 2, 1), Some(t(2, 1, 100)));
        assert_eq!(at(1, 0, 50_000), None);
    }
}

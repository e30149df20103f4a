//! Every real oplog entry of the fixtures decodes, and its bytes survive the
//! whole archive path unchanged: segmenter → pitr segment object → segment
//! reader → `oplog.bson` writer.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use pitr_mongodb::oplog_file::{self, OplogFileReader, OplogFileWriter};
use pitr_mongodb::{OpKind, OplogEntryRef, SealedOplogSegment, Segmenter};
use pitr_segment::{Codec, Epoch, WriterOptions};

#[test]
fn every_fixture_entry_decodes_and_counts_match_the_readme() {
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut entries = 0;
    for (p, b) in common::read_oplogs() {
        let mut at = 0u64;
        for e in OplogFileReader::new(&b[..]) {
            let (off, e) = e.unwrap_or_else(|err| panic!("{}: {err}", p.display()));
            assert_eq!(off, at);
            at += e.len() as u64;
            let k = match e.op() {
                OpKind::Insert => "i",
                OpKind::Update => "u",
                OpKind::Delete => "d",
                OpKind::Command => "c",
                OpKind::Noop => "n",
                OpKind::Other => panic!("{}: unexpected op {}", p.display(), e.op_str()),
            };
            assert_eq!(e.op_str(), k);
            *kinds.entry(k).or_default() += 1;
            entries += 1;
            if e.op() != OpKind::Noop {
                assert!(e.ns().is_some_and(|n| n.contains('.')), "{}", p.display());
            }
            if e.op() == OpKind::Command {
                assert!(e.command_name().is_some());
            }
            if e.is_apply_ops() {
                assert!(!e.apply_ops().unwrap().is_empty());
            }
        }
        assert_eq!(at, b.len() as u64, "{}", p.display());
    }
    // The README's numbers.
    assert_eq!(entries, 527);
    let want: BTreeMap<&str, usize> = [("i", 132), ("d", 11), ("u", 300), ("c", 56), ("n", 28)]
        .into_iter()
        .collect();
    assert_eq!(kinds, want);
}

#[test]
fn the_other_bson_files_are_collection_dumps_not_oplogs() {
    let others: Vec<_> = common::bson_files()
        .into_iter()
        .filter(|p| !common::is_oplog_file(p))
        .collect();
    assert_eq!(others.len(), 9);
    for p in others {
        let b = std::fs::read(&p).unwrap();
        // Well-framed BSON documents, but without the oplog header fields.
        for e in oplog_file::entries(&b) {
            let err = e.unwrap_err();
            assert!(err.reason.contains("ts"), "{}: {err}", p.display());
        }
    }
}

#[test]
fn fields_of_known_entries() {
    let b = std::fs::read(format!(
        "{}/mongorestore/testdata/oplogs/bson/linked_vectored_inserts.bson",
        common::FIXTURES
    ))
    .unwrap();
    let es: Vec<_> = oplog_file::entries(&b).map(|e| e.unwrap().1).collect();
    assert_eq!(es.len(), 2);
    let (a, c) = (es[0], es[1]);
    assert_eq!(a.ts().to_string(), "1719861048,2");
    assert_eq!((a.term(), a.wall_ms()), (Some(1), Some(1_719_861_048_464)));
    assert_eq!(a.ns(), Some("admin.$cmd"));
    assert_eq!(a.txn_number(), Some(1));
    assert!(a.lsid().is_some() && a.meta().is_linked_batch() && !a.meta().is_txn());
    assert!(a.prev_op_time().unwrap().is_null());
    assert_eq!(c.prev_op_time().unwrap().ts, a.ts());
    assert_eq!(a.apply_ops().unwrap().len(), 3);
    assert_eq!(c.apply_ops().unwrap().len(), 2);
    // An old entry (no term, no wall) falls back to ts seconds for its time.
    let b = std::fs::read(format!(
        "{}/mongorestore/testdata/dump_with_noop_in_oplog/oplog.bson",
        common::FIXTURES
    ))
    .unwrap();
    let e: OplogEntryRef = oplog_file::entries(&b).next().unwrap().unwrap().1;
    assert_eq!(e.term(), None);
    assert_eq!(e.meta().time_micros(), e.ts().as_micros());
}

/// Runs entries through a segmenter cutting every `cut_every` bytes, then
/// through the segment format and back; returns the segments and the bytes.
fn archive_and_read_back(
    entries: &[&[u8]],
    cut_every: usize,
) -> Result<(Vec<SealedOplogSegment>, Vec<u8>), String> {
    let now = Instant::now();
    let mut seg = Segmenter::new();
    let mut sealed = Vec::new();
    for b in entries {
        let e = OplogEntryRef::from_bytes(b).map_err(|e| e.to_string())?;
        if let Some(s) = seg.push(&e, now).map_err(|e| e.to_string())? {
            sealed.push(s);
        }
        if seg.should_cut(cut_every, std::time::Duration::from_secs(3600), now) {
            sealed.extend(seg.cut());
        }
    }
    seg.end_of_input(now);
    sealed.extend(seg.cut());
    assert_eq!(seg.buffered_bytes(), 0);
    let mut w = OplogFileWriter::new(Vec::new());
    for s in &sealed {
        let object = s
            .encode("rs0", Codec::DEFAULT, WriterOptions::default())
            .unwrap();
        let (meta, payload) = pitr_segment::decode(&object).unwrap();
        assert_eq!(meta.header.start, s.start);
        assert_eq!(meta.header.epoch, s.epoch);
        assert_eq!(meta.footer.end, s.end);
        assert_eq!(meta.footer.record_count, s.records);
        w.write_payload(&payload).unwrap();
    }
    Ok((sealed, w.finish().unwrap()))
}

#[test]
fn every_fixture_file_round_trips_byte_for_byte() {
    let mut out_of_order = Vec::new();
    for (p, b) in common::read_oplogs() {
        let entries: Vec<&[u8]> = oplog_file::entries(&b)
            .map(|e| e.unwrap().1.bytes())
            .collect();
        let ordered = entries.windows(2).all(|w| {
            OplogEntryRef::from_bytes(w[0]).unwrap().ts()
                < OplogEntryRef::from_bytes(w[1]).unwrap().ts()
        });
        match archive_and_read_back(&entries, 700) {
            Ok((segs, back)) => {
                assert!(ordered);
                assert_eq!(back, b, "{}", p.display());
                let n: u64 = segs.iter().map(|s| s.entries).sum();
                assert_eq!(n as usize, entries.len());
            }
            Err(e) => {
                // A few hand-assembled fixture files repeat a ts; an oplog
                // never does, and the segmenter refuses them.
                assert!(!ordered && e.contains("out of order"), "{}: {e}", p.display());
                out_of_order.push(p);
            }
        }
    }
    assert_eq!(out_of_order.len(), 2, "{out_of_order:?}");
}

#[test]
fn the_merged_real_stream_round_trips_and_segments_chain() {
    let stream = common::real_stream();
    let input: Vec<u8> = stream.iter().flat_map(|(_, b)| b.clone()).collect();
    let entries: Vec<&[u8]> = stream.iter().map(|(_, b)| &b[..]).collect();
    for cut in [1, 500, 4096, 1 << 30] {
        let (segs, back) = archive_and_read_back(&entries, cut).unwrap();
        assert_eq!(back, input);
        assert_eq!(segs[0].start, stream[0].0.to_log_pos());
        for w in segs.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for s in &segs {
            for e in oplog_file::entries(&s.raw) {
                let e = e.unwrap().1;
                assert!(e.ts().to_log_pos() >= s.start && e.ts().to_log_pos() < s.end);
                assert_eq!(Epoch(e.term().unwrap_or(0) as u64), s.epoch);
            }
            assert!(s.first_commit <= s.last_commit);
        }
        // Terms 505 and 1 (and entries without a term) alternate in ts order.
        assert!(segs.iter().map(|s| s.epoch).collect::<std::collections::BTreeSet<_>>().len() >= 3);
    }
}

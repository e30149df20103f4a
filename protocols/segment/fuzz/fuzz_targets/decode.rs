//! Fuzz target `decode`: every decoding entry point of the segment format
//! (in-memory decode, streaming reader, header parse, tail parse and
//! per-frame range decode) on arbitrary bytes. None may panic or
//! over-allocate, and what they accept must agree.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use pitr_segment::{decode, decode_frame, parse_header, parse_tail, SegmentReader};

fuzz_target!(|data: &[u8]| {
    let full = decode(data);
    let streamed = SegmentReader::new(data).ok().and_then(|mut r| {
        let mut out = Vec::new();
        r.read_to_end(&mut out).ok()?;
        Some((r.meta().cloned(), out))
    });
    match (&full, &streamed) {
        (Ok((meta, payload)), Some((smeta, spayload))) => {
            assert_eq!(smeta.as_ref(), Some(meta));
            assert_eq!(spayload, payload);
            assert_eq!(meta.total_len, data.len() as u64);
        }
        (Err(_), None) => {}
        _ => panic!("decode and SegmentReader disagree"),
    }
    let _ = parse_header(data);
    if let Ok(tail) = parse_tail(data, data.len() as u64) {
        for f in &tail.footer.frames {
            let r = f.range();
            if r.end <= data.len() as u64 {
                let got = decode_frame(&data[r.start as usize..r.end as usize], f);
                if let (Ok(raw), Ok((_, payload))) = (&got, &full) {
                    let rr = f.raw_range();
                    assert_eq!(raw[..], payload[rr.start as usize..rr.end as usize]);
                }
            }
        }
    }
});

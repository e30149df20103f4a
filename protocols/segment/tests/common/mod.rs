//! Helpers shared by the segment format's integration tests: deterministic
//! WAL-like payloads, sample headers, and readers that misbehave politely.
#![allow(dead_code)]

use std::io::{self, Read};

use pitr_segment::{Codec, Engine, Epoch, LogPos, SegmentHeader};

/// Small deterministic PRNG (xorshift64*), so tests and golden files do not
/// depend on a random crate's algorithm.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_u64() as u8;
        }
    }
}

/// WAL-like bytes: 8 KiB pages with a page header (magic, page address),
/// runs of repeated tuples with a changing counter, zero padding, and some
/// random bytes — compressible like real log, but not trivially.
pub fn wal_like(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8192);
    let mut page = 0u64;
    while out.len() < len {
        let start = out.len();
        out.extend_from_slice(&0xD110u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&(page * 8192).to_le_bytes());
        out.extend_from_slice(&[0u8; 12]);
        page += 1;
        while out.len() - start < 8192 - 256 {
            match rng.below(10) {
                0..=5 => {
                    // a record: header + tuple with a counter + text
                    let xid = rng.next_u64() as u32 & 0xffff;
                    out.extend_from_slice(&(64u32 + (xid & 63)).to_le_bytes());
                    out.extend_from_slice(&xid.to_le_bytes());
                    out.extend_from_slice(b"INSERT INTO accounts VALUES (");
                    out.extend_from_slice(
                        format!("{}, 'user{}', 100.00)", xid, xid % 97).as_bytes(),
                    );
                }
                6 | 7 => {
                    let n = 8 + rng.below(40) as usize;
                    let at = out.len();
                    out.resize(at + n, 0);
                    rng.fill(&mut out[at..]);
                }
                _ => {
                    let n = rng.below(64) as usize;
                    out.resize(out.len() + n, 0);
                }
            }
        }
        out.resize(start + 8192, 0);
    }
    out.truncate(len);
    out
}

pub fn header(engine: Engine, codec: Codec, source_id: &str) -> SegmentHeader {
    SegmentHeader {
        engine,
        source_id: source_id.to_owned(),
        epoch: Epoch(1),
        start: LogPos::new(3, 0x1000),
        codec,
        key_id: 0,
    }
}

/// A reader returning at most `max` bytes per call, and `Interrupted`
/// every `interrupt_every` calls (0 = never).
pub struct Trickle<'a> {
    pub data: &'a [u8],
    pub max: usize,
    pub interrupt_every: usize,
    pub calls: usize,
}

impl<'a> Trickle<'a> {
    pub fn new(data: &'a [u8], max: usize, interrupt_every: usize) -> Trickle<'a> {
        Trickle {
            data,
            max: max.max(1),
            interrupt_every,
            calls: 0,
        }
    }
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.interrupt_every != 0 && self.calls % self.interrupt_every == 0 {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let n = out.len().min(self.max).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

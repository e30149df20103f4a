//! MongoDB wire-protocol framing.
//!
//! Every message starts with a 16-byte header: `messageLength` (i32, whole message),
//! `requestID`, `responseTo`, `opCode` (all little-endian i32). Two request kinds are read:
//!
//! - `OP_MSG` (2013): `flagBits` (u32; bit 0 `checksumPresent`, bit 1 `moreToCome`,
//!   bit 16 `exhaustAllowed`), then sections until the end (less the CRC-32C checksum
//!   when bit 0 is set). Kind 0 is one BSON document, the command body; kind 1 is a
//!   document sequence: i32 size, C-string identifier, BSON documents back to back. The
//!   sequences are folded into the body as arrays named by their identifiers, which is
//!   what the server does before it runs the command.
//! - `OP_QUERY` (2004), only for the legacy `isMaster`/`hello` handshake on `*.$cmd`:
//!   i32 flags, C-string full collection name, i32 skip, i32 return, the query document
//!   (possibly wrapped as `{$query: ...}`), answered with `OP_REPLY` (1).
//!
//! `OP_COMPRESSED` is never used because no compressor is advertised.

use anyhow::{bail, Context, Result};
use bson::{Bson, Document, RawDocumentBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_MSG: i32 = 2013;
pub const OP_COMPRESSED: i32 = 2012;

const CHECKSUM_PRESENT: u32 = 1;
pub const MORE_TO_COME: u32 = 1 << 1;

/// The largest message accepted (the server's `maxMessageSizeBytes`).
pub const MAX_MESSAGE_BYTES: usize = 48_000_000;

/// A request read off the socket.
#[derive(Debug)]
pub struct Request {
    pub request_id: i32,
    pub kind: RequestKind,
    pub body: Document,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// OP_MSG; `more_to_come` set means the client expects no reply (w:0 writes).
    Msg { more_to_come: bool },
    /// OP_QUERY on `<db>.$cmd`.
    Query,
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Request>> {
    let mut header = [0u8; 16];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).context("reading a message header"),
    }
    let len = i32_at(&header, 0);
    let request_id = i32_at(&header, 4);
    let op_code = i32_at(&header, 12);
    let len = usize::try_from(len).unwrap_or(0);
    if !(16..=MAX_MESSAGE_BYTES).contains(&len) {
        bail!("message length {len} is out of range");
    }
    let mut payload = vec![0u8; len - 16];
    r.read_exact(&mut payload)
        .await
        .context("reading a message body")?;
    match op_code {
        OP_MSG => parse_msg(&header, &payload).map(|(more_to_come, body)| {
            Some(Request {
                request_id,
                kind: RequestKind::Msg { more_to_come },
                body,
            })
        }),
        OP_QUERY => parse_query(&payload).map(|body| {
            Some(Request {
                request_id,
                kind: RequestKind::Query,
                body,
            })
        }),
        OP_COMPRESSED => bail!("OP_COMPRESSED received although no compressor was advertised"),
        other => bail!("unsupported opCode {other}"),
    }
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    let mut four = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        four.copy_from_slice(s);
    }
    i32::from_le_bytes(four)
}

/// Length of the BSON document starting at `b[at..]`, checked against the buffer.
fn doc_len(b: &[u8], at: usize) -> Result<usize> {
    if at + 4 > b.len() {
        bail!("truncated BSON document");
    }
    let n = usize::try_from(i32_at(b, at)).unwrap_or(0);
    if n < 5 || at + n > b.len() {
        bail!("BSON document length {n} out of range");
    }
    Ok(n)
}

fn read_doc(b: &[u8], at: usize) -> Result<(Document, usize)> {
    let n = doc_len(b, at)?;
    let doc = Document::from_reader(&mut &b[at..at + n]).context("decoding a BSON document")?;
    Ok((doc, n))
}

fn parse_msg(header: &[u8; 16], p: &[u8]) -> Result<(bool, Document)> {
    if p.len() < 5 {
        bail!("OP_MSG too short");
    }
    let flags = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    let mut end = p.len();
    if flags & CHECKSUM_PRESENT != 0 {
        if end < 9 {
            bail!("OP_MSG too short for its checksum");
        }
        end -= 4;
        let want = u32::from_le_bytes([p[end], p[end + 1], p[end + 2], p[end + 3]]);
        let got = crc32c::crc32c_append(crc32c::crc32c(header), &p[..end]);
        if want != got {
            bail!("OP_MSG checksum mismatch");
        }
    }
    let mut body: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    let mut at = 4;
    while at < end {
        let kind = p[at];
        at += 1;
        match kind {
            0 => {
                let (doc, n) = read_doc(&p[..end], at)?;
                at += n;
                if body.replace(doc).is_some() {
                    bail!("OP_MSG with two body sections");
                }
            }
            1 => {
                let size = doc_len(&p[..end], at)?;
                let sec_end = at + size;
                let mut i = at + 4;
                let nul = p[i..sec_end]
                    .iter()
                    .position(|&c| c == 0)
                    .context("document sequence identifier is not terminated")?;
                let ident = String::from_utf8(p[i..i + nul].to_vec())
                    .context("document sequence identifier is not UTF-8")?;
                i += nul + 1;
                let mut docs = Vec::new();
                while i < sec_end {
                    let (doc, n) = read_doc(&p[..sec_end], i)?;
                    docs.push(Bson::Document(doc));
                    i += n;
                }
                sequences.push((ident, docs));
                at = sec_end;
            }
            k => bail!("unknown OP_MSG section kind {k}"),
        }
    }
    let mut body = body.context("OP_MSG without a body section")?;
    for (ident, docs) in sequences {
        body.insert(ident, Bson::Array(docs));
    }
    Ok((flags & MORE_TO_COME != 0, body))
}

fn parse_query(p: &[u8]) -> Result<Document> {
    let nul = p
        .get(4..)
        .and_then(|s| s.iter().position(|&c| c == 0))
        .context("OP_QUERY collection name is not terminated")?;
    let coll = String::from_utf8_lossy(&p[4..4 + nul]).to_string();
    let Some(db) = coll.strip_suffix(".$cmd") else {
        bail!("OP_QUERY is only served on <db>.$cmd, not on {coll}");
    };
    let at = 4 + nul + 1 + 8;
    let (mut q, _) = read_doc(p, at)?;
    if let Ok(inner) = q.get_document("$query") {
        q = inner.clone();
    }
    q.insert("$db", db.to_string());
    Ok(q)
}

/// Writes an OP_MSG reply (no flags unless `more_to_come`, one kind-0 section).
pub async fn write_msg<W: AsyncWrite + Unpin>(
    w: &mut W,
    request_id: i32,
    response_to: i32,
    more_to_come: bool,
    body: &RawDocumentBuf,
) -> Result<()> {
    let b = body.as_bytes();
    let len = 16 + 4 + 1 + b.len();
    let mut out = Vec::with_capacity(len);
    push_header(&mut out, len, request_id, response_to, OP_MSG);
    let flags: u32 = if more_to_come { MORE_TO_COME } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(b);
    w.write_all(&out).await.context("writing a reply")?;
    Ok(())
}

/// Writes an OP_REPLY carrying one document (the answer to an OP_QUERY command).
pub async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    request_id: i32,
    response_to: i32,
    body: &RawDocumentBuf,
) -> Result<()> {
    let b = body.as_bytes();
    let len = 16 + 4 + 8 + 4 + 4 + b.len();
    let mut out = Vec::with_capacity(len);
    push_header(&mut out, len, request_id, response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(b);
    w.write_all(&out).await.context("writing a reply")?;
    Ok(())
}

fn push_header(out: &mut Vec<u8>, len: usize, request_id: i32, response_to: i32, op: i32) {
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op.to_le_bytes());
}

//! A small HTTP/1.1 proxy that drops chosen request headers: a stand-in for
//! a storage server (or a gateway in front of one) that ignores a condition
//! such as `If-Match`. Each client connection carries one request
//! (`Connection: close` is forced both ways); the body and the response pass
//! through unchanged. Stopped when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A running proxy on a free loopback port.
pub struct HeaderProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl HeaderProxy {
    /// Forwards to `upstream`, dropping every request header named in
    /// `drop_headers` (case-insensitive).
    pub fn start(upstream: SocketAddr, drop_headers: &[&str]) -> Result<HeaderProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let names: Vec<String> = drop_headers
            .iter()
            .map(|h| format!("{}:", h.to_ascii_lowercase()))
            .collect();
        let (s, d) = (stop.clone(), dropped.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (names, d) = (names.clone(), d.clone());
                        std::thread::spawn(move || {
                            let _ = serve(client, upstream, &names, &d);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(HeaderProxy {
            port,
            stop,
            dropped,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many headers were dropped so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for HeaderProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request: its head rewritten, then everything else copied both ways.
fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    names: &[String],
    dropped: &AtomicUsize,
) -> Result<()> {
    client.set_nonblocking(false)?;
    let Some((head, rest)) = read_head(&mut client)? else {
        return Ok(());
    };
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(rewrite(&head, names, dropped).as_bytes())?;
    up.write_all(&rest)?;
    let (mut c2, mut u2) = (client.try_clone()?, up.try_clone()?);
    let body = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
    });
    // The response head says `Connection: close` too, so the client never
    // reuses this connection.
    if let Some((head, rest)) = read_head(&mut up)? {
        client.write_all(rewrite(&head, &[], dropped).as_bytes())?;
        client.write_all(&rest)?;
        let _ = std::io::copy(&mut up, &mut client);
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    let _ = body.join();
    Ok(())
}

/// Reads a message head (up to the blank line): the head's text and the
/// bytes read after it; `None` when the peer closed first.
fn read_head(from: &mut TcpStream) -> Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = from.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            buf.truncate(i);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
    }
}

/// `head` without its `Connection` header and the headers named in `names`
/// (`name:`, lower case), ending in `Connection: close` and the blank line.
fn rewrite(head: &str, names: &[String], dropped: &AtomicUsize) -> String {
    let mut out = String::new();
    for line in head.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if names.iter().any(|n| lower.starts_with(n.as_str())) {
            dropped.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

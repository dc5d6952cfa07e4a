//! The network side of the fuzzer: sends a generated [`Case`] as raw bytes on a kept-alive TCP
//! connection, reads the answer's status, and says whether the outcome is one a robust server
//! may give. Used by the `embed-fuzz` benchmark and by the embedder's fuzz test.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fuzz::{allowed_status, Case};

/// What happened to one case.
#[derive(Debug)]
pub enum Outcome {
    Status(u16),
    /// The server closed the connection without an answer.
    Closed,
    Timeout,
    Io(String),
}

/// Appends what the connection has to `body`; false at the end of the connection.
async fn read_more(conn: &mut TcpStream, body: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 65536];
    let n = conn.read(&mut chunk).await?;
    body.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// Reads one HTTP/1.1 response (skipping 1xx) and returns its status and whether the connection
/// may carry another request. `head_request`: the request was HEAD, so the answer has no body whatever
/// its Content-Length says (RFC 9110 §9.3.2); nor do 204 and 304 answers.
pub async fn read_response(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> std::io::Result<Option<(u16, bool)>> {
    buf.clear();
    loop {
        // Header block.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:.60}")))?;
        if (100..200).contains(&status) {
            buf.drain(..head_end);
            continue;
        }
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let keep = header("connection:").is_none_or(|v| v != "close");
        if head_request || status == 204 || status == 304 {
            return Ok(Some((status, keep)));
        }
        let mut body = buf.split_off(head_end);
        if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            while body.len() < len {
                if !read_more(conn, &mut body).await? {
                    return Ok(Some((status, false)));
                }
            }
            return Ok(Some((status, keep)));
        }
        if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            // Enough to find the end: the terminating zero-size chunk.
            while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
                if !read_more(conn, &mut body).await? {
                    return Ok(Some((status, false)));
                }
            }
            return Ok(Some((status, keep)));
        }
        // No length: the body runs to the end of the connection.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await?;
        return Ok(Some((status, false)));
    }
}

pub async fn send(
    addr: &str,
    conn: &mut Option<TcpStream>,
    c: &Case,
    buf: &mut Vec<u8>,
) -> (Outcome, bool) {
    let mut stale = false;
    for attempt in 0..2 {
        let reused = conn.is_some();
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => *conn = Some(s),
                Err(e) => return (Outcome::Io(format!("connect: {e}")), stale),
            }
        }
        let s = conn.as_mut().expect("connected above");
        let written = async {
            s.write_all(&c.bytes).await?;
            if c.close {
                s.shutdown().await?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        // Written or not: the server may answer (413, 400) and close before reading all of a
        // large body, so the answer is read either way.
        let _ = written;
        let result = read_response(s, buf, c.bytes.starts_with(b"HEAD ")).await;
        match result {
            Ok(Some((status, keep))) => {
                if !keep || c.close {
                    *conn = None;
                }
                return (Outcome::Status(status), stale);
            }
            Ok(None) | Err(_) if reused && attempt == 0 && !c.close => {
                // A kept-alive connection the server had already closed (idle timeout, or it
                // closed after the previous answer): what every HTTP client does, once, on a
                // fresh connection. Counted in the report.
                *conn = None;
                stale = true;
            }
            Ok(None) => {
                *conn = None;
                return (Outcome::Closed, stale);
            }
            Err(e) => {
                *conn = None;
                return (Outcome::Io(e.to_string()), stale);
            }
        }
    }
    (Outcome::Closed, stale)
}

/// Whether an outcome is what a robust server may do with this case.
pub fn acceptable(c: &Case, o: &Outcome) -> bool {
    match o {
        Outcome::Status(s) => allowed_status(*s),
        // Broken framing or bytes that are not HTTP may be answered by closing the connection.
        Outcome::Closed | Outcome::Io(_) => {
            c.close || c.kind.starts_with("garbage/") || c.kind.starts_with("framing/")
        }
        Outcome::Timeout => false,
    }
}

/// GET /health/live on a fresh connection within 10 s: `Err` says what came back instead of 200.
pub async fn health(addr: &str) -> Result<(), String> {
    let mut conn = None;
    let mut buf = Vec::new();
    let c = Case {
        kind: "health",
        bytes: b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            .to_vec(),
        // Not half-closed: hyper may drop a request whose client shut its write side first.
        close: false,
    };
    let sent = send(addr, &mut conn, &c, &mut buf);
    match tokio::time::timeout(std::time::Duration::from_secs(10), sent).await {
        Ok((Outcome::Status(200), _)) => Ok(()),
        Ok((other, _)) => Err(format!("{other:?}")),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

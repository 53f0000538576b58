//! The HTTP/1.1 server: a thread per connection, `httparse` for request
//! heads, keep-alive, the answer written with its length.
//!
//! Why not `tiny_http`: its connection task pool counts a thread as idle
//! until it re-takes its queue lock, so two connections accepted back to
//! back can both be handed to one idle thread; the second then waits until
//! the first (a keep-alive connection) closes. Go's client with 64
//! concurrent requests hung that way (seen in `tests/go`). Here each
//! connection has its own thread, which also serves its requests itself:
//! no hand-off between a connection thread and a worker per request.
//!
//! Bounds: at most `max_connections` at once (beyond, a `503` and close),
//! request heads of at most [`MAX_HEAD_BYTES`] with [`MAX_HEADERS`] headers,
//! request bodies (none is expected) of at most [`MAX_BODY_BYTES`], and an
//! idle connection is closed after [`IDLE_TIMEOUT`].

use super::http::{Method, Reply, RequestView};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const MAX_HEAD_BYTES: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;
pub const MAX_BODY_BYTES: u64 = 1 << 20;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bodies up to this size are written with the head in one `write`.
const COALESCE_BYTES: usize = 64 * 1024;

/// Answers one request (the router).
pub type Handler = dyn Fn(&RequestView) -> Reply + Send + Sync;

/// Accepts connections until the listener fails; each gets a thread.
pub fn serve(listener: TcpListener, handler: Arc<Handler>, max_connections: usize) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            let _ = refuse(stream);
            continue;
        }
        let (handler, open) = (handler.clone(), open.clone());
        let spawned = std::thread::Builder::new().name("sidecar-conn".into()).spawn(move || {
            if let Err(error) = serve_connection(stream, &*handler) {
                tracing::debug!(%error, "connection closed");
            }
            open.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a connection thread");
        }
    }
}

fn refuse(mut stream: TcpStream) -> std::io::Result<()> {
    let reply = Reply::text(503, "rdma-sidecar has too many connections open");
    write_reply(&mut stream, &reply, false, false)
}

/// One request head, parsed.
struct Head {
    method: Method,
    target: String,
    headers: Vec<(String, String)>,
    keep_alive: bool,
    body_bytes: u64,
}

fn serve_connection(stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    // Bounded by the client: each pass serves one request or returns.
    loop {
        let head = match read_head(&mut reader)? {
            Some(Ok(head)) => head,
            Some(Err(line)) => return write_reply(&mut writer, &Reply::text(400, line), false, false),
            None => return Ok(()),
        };
        if head.body_bytes > MAX_BODY_BYTES {
            return write_reply(&mut writer, &Reply::text(413, "request bodies are not served"), false, false);
        }
        std::io::copy(&mut (&mut reader).take(head.body_bytes), &mut std::io::sink())?;
        let request = RequestView::new(head.method, &head.target, head.headers);
        let reply = handler(&request);
        write_reply(&mut writer, &reply, head.method == Method::Head, head.keep_alive)?;
        if !head.keep_alive {
            return Ok(());
        }
    }
}

/// Reads one request head: `None` at a clean end of the connection,
/// `Some(Err(line))` for a head that is not HTTP/1.x.
fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Result<Head, &'static str>>> {
    let mut bytes = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return Ok(None),
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok(None);
        }
        // Take up to the end of the head if it is in this chunk, else all of it.
        let previous = bytes.len();
        bytes.extend_from_slice(available);
        let end = find_head_end(&bytes, previous.saturating_sub(3));
        let taken = end.map_or(available.len(), |end| end - previous);
        reader.consume(taken);
        if let Some(end) = end {
            bytes.truncate(end);
            return Ok(Some(parse_head(&bytes)));
        }
        if bytes.len() > MAX_HEAD_BYTES {
            return Ok(Some(Err("the request head is too large")));
        }
    }
}

fn find_head_end(bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..].windows(4).position(|window| window == b"\r\n\r\n").map(|index| from + index + 4)
}

fn parse_head(bytes: &[u8]) -> Result<Head, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("the request is not HTTP/1.x"),
    }
    let method = match request.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("DELETE") => Method::Delete,
        _ => Method::Other,
    };
    let target = request.path.ok_or("the request has no target")?.to_string();
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|header| (header.name.to_string(), String::from_utf8_lossy(header.value).into_owned()))
        .collect();
    let header = |name: &str| headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    if header("Transfer-Encoding").is_some() {
        return Err("chunked request bodies are not served");
    }
    let body_bytes = match header("Content-Length") {
        Some(text) => text.trim().parse::<u64>().map_err(|_| "the Content-Length is not a number")?,
        None => 0,
    };
    let connection = header("Connection").unwrap_or("").to_ascii_lowercase();
    let keep_alive = match request.version {
        Some(1) => !connection.contains("close"),
        _ => connection.contains("keep-alive"),
    };
    Ok(Head { method, target, headers, keep_alive, body_bytes })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        416 => "Requested Range Not Satisfiable",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Writes a reply as Go's server frames it: a `Content-Length` except on
/// a `304`, chunked when the reply asks for it.
fn write_reply(writer: &mut TcpStream, reply: &Reply, head_only: bool, keep_alive: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (name, value) in reply.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now())));
    let length = reply.head_length.unwrap_or(reply.body.len() as u64);
    let no_body = head_only || reply.status == 304;
    if reply.chunked && !no_body {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else if reply.status != 304 {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if no_body {
        return writer.write_all(&bytes);
    }
    if reply.chunked {
        bytes.extend_from_slice(format!("{:x}\r\n", reply.body.len()).as_bytes());
    }
    if reply.body.len() <= COALESCE_BYTES {
        bytes.extend_from_slice(&reply.body);
        writer.write_all(&bytes)?;
    } else {
        writer.write_all(&bytes)?;
        writer.write_all(&reply.body)?;
    }
    if reply.chunked {
        writer.write_all(if reply.body.is_empty() { b"\r\n" } else { b"\r\n0\r\n\r\n" })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_with_keep_alive_rules() {
        let head = parse_head(b"GET /3,01637037d6 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n").unwrap();
        assert_eq!((head.method, head.target.as_str(), head.keep_alive), (Method::Get, "/3,01637037d6", true));
        let head = parse_head(b"HEAD / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
        let head = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
        assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"nonsense\r\n\r\n").is_err());
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
    }
}

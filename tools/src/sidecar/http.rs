//! The sidecar's view of an HTTP exchange, independent of the server crate:
//! a parsed request ([`RequestView`]) and an answer ([`Reply`]) whose
//! headers behave like Go's `http.Header.Set` (one value per name, names
//! compared case-insensitively).

use percent_encoding::percent_decode_str;
use rdma_client::{Client, Completion, ReadSource};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Delete,
    Other,
}

/// A request as the handlers see it.
#[derive(Debug)]
pub struct RequestView {
    pub method: Method,
    /// The percent-decoded path (Go's `r.URL.Path`).
    pub path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

impl RequestView {
    /// From the request target (`/path?query`) and the header lines.
    pub fn new(method: Method, target: &str, headers: Vec<(String, String)>) -> RequestView {
        let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
        let path = percent_decode_str(raw_path).decode_utf8_lossy().into_owned();
        let query = form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
        RequestView { method, path, query, headers }
    }

    /// The first value of a query parameter (Go's `FormValue`), "" if absent.
    pub fn query(&self, name: &str) -> &str {
        self.query.iter().find(|(key, _)| key == name).map_or("", |(_, value)| value)
    }

    /// Whether a query parameter is present at all.
    pub fn has_query(&self, name: &str) -> bool {
        self.query.iter().any(|(key, _)| key == name)
    }

    pub fn query_pairs(&self) -> &[(String, String)] {
        &self.query
    }

    /// The first value of a header, "" if absent (Go's `Header.Get`).
    pub fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map_or("", |(_, value)| value)
    }

    /// Every value of a header, in order (Go's `Header.Values`).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str()).collect()
    }
}

/// A handler's answer and what it tells the counters.
#[derive(Debug)]
pub struct Served {
    pub reply: Reply,
    /// Which path served the needle, when one was read.
    pub source: Option<ReadSource>,
    /// Why it failed, when it did (an engine code name or a reason).
    pub error: Option<&'static str>,
}

impl Served {
    pub fn plain(reply: Reply) -> Served {
        Served { reply, source: None, error: None }
    }

    pub fn failed(reply: Reply, error: &'static str) -> Served {
        Served { reply, source: None, error: Some(error) }
    }
}

/// A body: owned bytes, or a read's bytes still in the shared buffer (the
/// completion holds the buffer, so they are sent without a copy and the
/// buffer is freed once the answer is written).
pub enum Body {
    Owned(Vec<u8>),
    Landed { client: Client, completion: Completion, range: std::ops::Range<usize> },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Owned(bytes) => write!(f, "Owned({} bytes)", bytes.len()),
            Body::Landed { range, .. } => write!(f, "Landed({} bytes)", range.len()),
        }
    }
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Owned(bytes) => bytes,
            // The range was checked against the buffer when the body was made.
            Body::Landed { client, completion, range } => {
                completion.buffer.as_ref().and_then(|buffer| client.bytes(buffer).get(range.clone())).unwrap_or(&[])
            }
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Owned(bytes)
    }
}

/// What to answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Body,
    /// `Content-Length` to announce without a body (a `HEAD` answer).
    pub head_length: Option<u64>,
    /// Send the body chunked, without `Content-Length` (Go does so for a
    /// multipart answer with `Content-Encoding`).
    pub chunked: bool,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), body: Body::Owned(Vec::new()), head_length: None, chunked: false }
    }

    /// One line of text, for the sidecar's own errors.
    pub fn text(status: u16, line: &str) -> Reply {
        let mut reply = Reply::new(status);
        reply.set("Content-Type", "text/plain; charset=utf-8");
        reply.body = format!("{}\n", line.trim_end()).into_bytes().into();
        reply
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        let mut reply = Reply::new(status);
        reply.set("Content-Type", "application/json");
        reply.body = value.to_string().into_bytes().into();
        reply
    }

    /// Sets a header, replacing any value it had (Go's `Header.Set`).
    pub fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.headers.push((name.to_string(), value.to_string()));
    }

    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
}

/// Go's `http.CanonicalHeaderKey` for ASCII names: each dash-separated word
/// capitalised, the rest lower case. A name with a space or a non-token byte
/// is returned unchanged, as Go does.
pub fn canonical_header_key(name: &str) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(token) {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            upper = c == '-';
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_decoded() {
        let headers = vec![("Range".to_string(), "bytes=0-1".to_string())];
        let request = RequestView::new(Method::Get, "/3/01637037d6/my%20file.txt?dl=true&x=1", headers);
        assert_eq!(request.path, "/3/01637037d6/my file.txt");
        assert_eq!(request.query("dl"), "true");
        assert_eq!(request.query("y"), "");
        assert_eq!(request.header("range"), "bytes=0-1");
    }

    #[test]
    fn header_keys_are_canonical() {
        assert_eq!(canonical_header_key("seaweed-foo-bar"), "Seaweed-Foo-Bar");
        assert_eq!(canonical_header_key("ETAG"), "Etag");
        assert_eq!(canonical_header_key("bad key"), "bad key");
    }
}

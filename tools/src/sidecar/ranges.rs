//! `Range` requests as the volume server answers them (RFC 7233, by way of
//! Go's `net/http/fs.go` that SeaweedFS adapted): byte ranges, suffix
//! ranges, `416` with `Content-Range: bytes */N` when none overlaps, and
//! several ranges as `multipart/byteranges`.

use rand::Rng;

/// One satisfiable range: `length` bytes from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub length: u64,
}

impl ByteRange {
    /// `bytes START-END/SIZE`.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.start + self.length - 1, size)
    }
}

/// Why a `Range` header cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// Malformed (`416`, no `Content-Range`).
    Invalid,
    /// Well-formed, but no range overlaps the content (`416` with `Content-Range: bytes */N`).
    NoOverlap,
}

impl RangeError {
    /// The one-line body Go's `http.Error` sends (with its newline).
    pub fn body(self) -> &'static str {
        match self {
            RangeError::Invalid => "invalid range\n",
            RangeError::NoOverlap => "invalid range: failed to overlap\n",
        }
    }
}

/// Go's `strconv.ParseInt(text, 10, 64)` (an optional sign, then digits).
fn parse_position(text: &str) -> Option<i64> {
    text.parse::<i64>().ok()
}

/// Parses a `Range` header against content of `size` bytes. An empty list
/// (e.g. `bytes=` alone) is not an error: the volume server then answers
/// `200` with no body, and so does the sidecar.
pub fn parse(header: &str, size: u64) -> Result<Vec<ByteRange>, RangeError> {
    let specs = header.strip_prefix("bytes=").ok_or(RangeError::Invalid)?;
    let size = size as i64;
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for spec in specs.split(',').map(str::trim).filter(|spec| !spec.is_empty()) {
        let (start, end) = spec.split_once('-').ok_or(RangeError::Invalid)?;
        let (start, end) = (start.trim(), end.trim());
        if start.is_empty() {
            // A suffix: the last `end` bytes.
            if end.is_empty() || end.starts_with('-') {
                return Err(RangeError::Invalid);
            }
            let suffix = parse_position(end).filter(|&suffix| suffix >= 0).ok_or(RangeError::Invalid)?;
            let first = size - suffix.min(size);
            if first >= size {
                no_overlap = true;
                continue;
            }
            ranges.push(ByteRange { start: first as u64, length: (size - first) as u64 });
            continue;
        }
        let first = parse_position(start).filter(|&first| first >= 0).ok_or(RangeError::Invalid)?;
        if first >= size {
            no_overlap = true;
            continue;
        }
        let last = if end.is_empty() {
            size - 1
        } else {
            let last = parse_position(end).filter(|&last| last >= first).ok_or(RangeError::Invalid)?;
            last.min(size - 1)
        };
        ranges.push(ByteRange { start: first as u64, length: (last - first + 1) as u64 });
    }
    if no_overlap && ranges.is_empty() {
        return Err(RangeError::NoOverlap);
    }
    Ok(ranges)
}

/// A boundary like Go's `multipart.Writer`: 30 random bytes in hex.
pub fn boundary() -> String {
    let bytes: [u8; 30] = rand::thread_rng().gen();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The `multipart/byteranges` body Go's `multipart.Writer` writes for
/// `ranges` of `data`: each part with its sorted `Content-Range` and
/// `Content-Type` headers (the type may be empty, as upstream sends it).
pub fn multipart_body(data: &[u8], ranges: &[ByteRange], content_type: &str, boundary: &str) -> Vec<u8> {
    let size = data.len() as u64;
    let mut body = Vec::with_capacity(ranges.iter().map(|range| range.length as usize + 160).sum());
    for (index, range) in ranges.iter().enumerate() {
        let separator = if index == 0 { "" } else { "\r\n" };
        let headers = format!(
            "{separator}--{boundary}\r\nContent-Range: {}\r\nContent-Type: {content_type}\r\n\r\n",
            range.content_range(size)
        );
        body.extend_from_slice(headers.as_bytes());
        body.extend_from_slice(&data[range.start as usize..(range.start + range.length) as usize]);
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, length: u64) -> ByteRange {
        ByteRange { start, length }
    }

    #[test]
    fn ranges_follow_go() {
        assert_eq!(parse("bytes=0-9", 100), Ok(vec![range(0, 10)]));
        assert_eq!(parse("bytes=90-200", 100), Ok(vec![range(90, 10)]));
        assert_eq!(parse("bytes=-10", 100), Ok(vec![range(90, 10)]));
        assert_eq!(parse("bytes=-200", 100), Ok(vec![range(0, 100)]));
        assert_eq!(parse("bytes=50-", 100), Ok(vec![range(50, 50)]));
        assert_eq!(parse("bytes=0-0, 5-6", 100), Ok(vec![range(0, 1), range(5, 2)]));
        assert_eq!(parse("bytes=100-", 100), Err(RangeError::NoOverlap));
        assert_eq!(parse("bytes=-0", 100), Err(RangeError::NoOverlap));
        assert_eq!(parse("bytes=0-", 0), Err(RangeError::NoOverlap));
        assert_eq!(parse("bytes=100-, 0-1", 100), Ok(vec![range(0, 2)]));
        assert_eq!(parse("bytes=5-1", 100), Err(RangeError::Invalid));
        assert_eq!(parse("items=0-1", 100), Err(RangeError::Invalid));
        assert_eq!(parse("bytes=x-1", 100), Err(RangeError::Invalid));
        assert_eq!(parse("bytes=", 100), Ok(vec![]));
    }

    #[test]
    fn multipart_matches_go_layout() {
        let body = multipart_body(b"0123456789", &[range(0, 2), range(8, 2)], "text/plain", "b");
        let expected = "--b\r\nContent-Range: bytes 0-1/10\r\nContent-Type: text/plain\r\n\r\n01\r\n--b\r\nContent-Range: bytes 8-9/10\r\nContent-Type: text/plain\r\n\r\n89\r\n--b--\r\n";
        assert_eq!(String::from_utf8(body).unwrap(), expected);
        assert_eq!(boundary().len(), 60);
    }
}

//! Conditional requests as the volume server answers them: `If-None-Match`
//! (weak comparison, lists, `*`) before `If-Modified-Since` (Go's
//! `http.TimeFormat` only) for a `304`, and `If-Range` for whether a `Range`
//! still applies. Dates are Go's `http.TimeFormat`.

use super::http::{Reply, RequestView};

/// `If-None-Match` (weak comparison) wins over `If-Modified-Since`.
pub fn not_modified(request: &RequestView, etag: &str, last_modified: u64) -> bool {
    let if_none_match = request.header_values("If-None-Match");
    if !if_none_match.is_empty() {
        return etag_list_matches(&if_none_match.join(","), etag);
    }
    let since = request.header("If-Modified-Since");
    if since.is_empty() || last_modified == 0 {
        return false;
    }
    parse_http_date(since).is_some_and(|seconds| seconds >= last_modified)
}

fn etag_list_matches(header: &str, etag: &str) -> bool {
    if header.trim() == "*" {
        return true;
    }
    let canonical = |tag: &str| tag.trim_start_matches('"').trim_end_matches('"').to_string();
    split_etag_list(header).into_iter().any(|tag| {
        let tag = tag.trim();
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        !tag.is_empty() && canonical(tag) == canonical(etag)
    })
}

/// Splits on commas outside quotes.
fn split_etag_list(header: &str) -> Vec<&str> {
    let mut tags = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (index, byte) in header.bytes().enumerate() {
        match byte {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                tags.push(&header[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    tags.push(&header[start..]);
    tags
}

/// RFC 9110 13.1.5 as upstream applies it: a strong ETag equal to ours, or
/// a date equal to `Last-Modified`.
pub fn if_range_matches(if_range: &str, reply: &Reply) -> bool {
    let if_range = if_range.trim();
    if if_range.is_empty() {
        return true;
    }
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        let etag = reply.get("ETag").unwrap_or("");
        return !etag.is_empty() && !etag.starts_with("W/") && if_range == etag;
    }
    let last_modified = reply.get("Last-Modified").and_then(|text| httpdate::parse_http_date(text).ok());
    httpdate::parse_http_date(if_range).ok().is_some_and(|date| Some(date) == last_modified)
}

/// `Mon, 02 Jan 2006 15:04:05 GMT` (Go's `http.TimeFormat`) of epoch seconds.
pub fn http_date(seconds: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// Only Go's `http.TimeFormat` is accepted (`time.Parse` with that layout).
fn parse_http_date(text: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(text).ok()?;
    let seconds = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (http_date(seconds) == text).then_some(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_weakly() {
        assert!(etag_list_matches("\"abc\"", "\"abc\""));
        assert!(etag_list_matches("W/\"abc\", \"x\"", "\"abc\""));
        assert!(etag_list_matches("*", "\"abc\""));
        assert!(!etag_list_matches("\"abd\",", "\"abc\""));
    }

    #[test]
    fn dates_are_go_time_format() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:10 GMT"), Some(10));
        assert_eq!(parse_http_date("Thursday, 01-Jan-70 00:00:10 GMT"), None);
    }
}

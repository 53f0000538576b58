//! `GET`/`HEAD /<fid>`: the volume server's read API, answered from the
//! engine. Each step follows `GetOrHeadHandler` in
//! `weed/server/volume_server_handlers_read.go` and what it calls
//! (`writeResponseContent`, `ProcessRangeRequest`, `parseURLPath`), plus
//! what Go's `net/http` adds on its own (`Content-Type` sniffing, `http.Error`).
//! Deviations are listed in `docs/sidecar.md`.

use super::conditional::{http_date, if_range_matches, not_modified};
use super::http::{canonical_header_key, Body, Method, Reply, RequestView, Served};
use super::needle::{self, Needle, NeedleMeta};
use super::ranges::{self, RangeError};
use super::{manifest, mime};
use rdma_client::reader::content::{self, ReadError};
use rdma_client::ErrorCode;
use volume_format::file_id::FileId;

/// Go's `bufferBeforeChunkingSize`: a body up to this size, written by a
/// handler that set no length, still goes out with a `Content-Length`.
const GO_BUFFER_BEFORE_CHUNKING_BYTES: usize = 2048;

/// The parts of a request path, as Go's `parseURLPath` splits them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FidPath {
    pub volume_id: String,
    pub key_cookie: String,
    /// The name in `/vid/fid/name.ext`, else "".
    pub filename: String,
    pub extension: String,
}

/// `/vid,fid[.ext]`, `/vid/fid[.ext]` or `/vid/fid/name.ext`.
pub fn parse_url_path(path: &str) -> FidPath {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.len() - 1 {
        3 => FidPath {
            volume_id: parts[1].into(),
            key_cookie: parts[2].into(),
            filename: parts[3].into(),
            extension: mime::extension(parts[3]).into(),
        },
        2 => {
            let (key_cookie, extension) = match parts[2].rfind('.') {
                Some(dot) if dot > 0 => (&parts[2][..dot], &parts[2][dot..]),
                _ => (parts[2], ""),
            };
            FidPath {
                volume_id: parts[1].into(),
                key_cookie: key_cookie.into(),
                filename: String::new(),
                extension: extension.into(),
            }
        }
        _ => {
            let last = &path[path.rfind('/').map_or(0, |index| index + 1)..];
            let Some(comma) = last.rfind(',') else {
                return FidPath { volume_id: last.into(), ..FidPath::default() };
            };
            let (key_cookie, extension) = match last.rfind('.') {
                Some(dot) if dot > comma => (&last[comma + 1..dot], &last[dot..]),
                _ => (&last[comma + 1..], ""),
            };
            FidPath {
                volume_id: last[..comma].into(),
                key_cookie: key_cookie.into(),
                filename: String::new(),
                extension: extension.into(),
            }
        }
    }
}

/// The file id of a path, or `None` where the volume server answers 400.
pub fn file_id_of(parts: &FidPath) -> Option<FileId> {
    // Go parses the volume id as 64 bits and keeps the low 32.
    if parts.volume_id.is_empty() || !parts.volume_id.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let volume_id = parts.volume_id.parse::<u64>().ok()? as u32;
    if parts.key_cookie.contains(['.', ',']) {
        return None;
    }
    FileId::parse_url_path(&format!("{volume_id},{}", parts.key_cookie)).ok()
}

/// The status and body for a failed read.
pub fn error_reply(error: &ReadError, method: Method) -> Reply {
    match error.engine_code() {
        Some(
            ErrorCode::NO_SUCH_NEEDLE | ErrorCode::DELETED | ErrorCode::COOKIE_MISMATCH | ErrorCode::NO_SUCH_VOLUME,
        ) => Reply::new(404),
        Some(ErrorCode::CRC_MISMATCH | ErrorCode::CORRUPT_NEEDLE | ErrorCode::IO_ERROR) => {
            // Go's InternalError: a JSON error for GET, nothing for HEAD.
            let mut reply = Reply::new(500);
            if method != Method::Head {
                reply = Reply::json(500, &serde_json::json!({ "error": error.to_string() }));
                reply.set("X-Content-Type-Options", "nosniff");
            }
            reply
        }
        Some(ErrorCode::DEADLINE_EXCEEDED) => Reply::text(504, &error.to_string()),
        _ => match error {
            ReadError::TimedOut => Reply::text(504, &error.to_string()),
            ReadError::Disconnected(_)
            | ReadError::NoEngine
            | ReadError::Engine(_)
            | ReadError::Attach(_)
            | ReadError::Buffer(_) => Reply::text(503, &error.to_string()),
            _ => Reply::text(502, &error.to_string()),
        },
    }
}

/// Answers `GET`/`HEAD` of a file id path.
pub fn serve(reader: &mut dyn content::SubmitRead, request: &RequestView) -> Served {
    let parts = parse_url_path(&request.path);
    let Some(file_id) = file_id_of(&parts) else { return Served::failed(Reply::new(400), "BAD_FILE_ID") };
    let needle = match needle::read_whole(reader, file_id) {
        Ok(needle) => needle,
        Err(error) => return Served::failed(error_reply(&error, request.method), error.label()),
    };
    let source = Some(needle.source);
    let reply = answer(reader, needle, parts, request);
    let error = match reply.status {
        status if status < 400 => None,
        404 => Some("TTL_EXPIRED"),
        416 => Some("RANGE_NOT_SATISFIABLE"),
        501 => Some("IMAGE_TRANSFORM"),
        _ => Some("CONTENT"),
    };
    Served { reply, source, error }
}

fn answer(reader: &mut dyn content::SubmitRead, needle: Needle, parts: FidPath, request: &RequestView) -> Reply {
    let meta = needle.meta.clone().unwrap_or_default();
    if meta.expired {
        return Reply::new(404);
    }
    let mut reply = Reply::new(200);
    if meta.last_modified != 0 {
        reply.set("Last-Modified", &http_date(meta.last_modified));
    }
    let etag = format!("\"{:08x}\"", meta.checksum);
    if needle.meta.is_some() {
        reply.set("ETag", &etag);
        if not_modified(request, &etag, meta.last_modified) {
            reply.status = 304;
            return reply;
        }
    }
    set_pairs(&mut reply, &meta);
    if meta.chunk_manifest && request.query("cm") != "false" {
        if let Some(manifest) = manifest::load(&needle.data, needle.gzipped) {
            return answer_chunked(reader, reply, &manifest, &parts, request);
        }
    }
    let (filename, content_type) = names(&parts, &meta);
    // The URL's extension, else the stored name's, decides (as upstream).
    let extension = if parts.extension.is_empty() { mime::extension(&filename) } else { parts.extension.as_str() };
    if wants_image_transform(extension, request) {
        return Reply::text(501, "rdma-sidecar does not resize or crop images; ask the volume server");
    }
    let data = match body_bytes(needle, request, &mut reply) {
        Ok(data) => data,
        Err(error) => return Reply::text(500, &error.to_string()),
    };
    write_content(reply, &filename, &content_type, data, request)
}

/// `tryHandleChunkedFile`: the chunks' content, named and typed by the manifest.
fn answer_chunked(
    reader: &mut dyn content::SubmitRead,
    mut reply: Reply,
    manifest: &manifest::Manifest,
    parts: &FidPath,
    request: &RequestView,
) -> Reply {
    let filename = if parts.filename.is_empty() { manifest.name.clone() } else { parts.filename.clone() };
    let mime = if manifest.mime.starts_with("application/octet-stream") { "" } else { manifest.mime.as_str() };
    reply.set("X-File-Store", "chunked");
    match manifest::assemble(reader, manifest) {
        Ok(content) => write_content(reply, &filename, mime, content.into(), request),
        Err(error) => Reply::text(500, &error.to_string()),
    }
}

/// The file name and the type the handler settles on before writing.
fn names(parts: &FidPath, meta: &NeedleMeta) -> (String, String) {
    let mut filename = parts.filename.clone();
    if filename.is_empty() {
        if let Some(name) = &meta.name {
            filename = name.clone();
        }
    }
    let mime = meta.mime.clone().filter(|mime| !mime.starts_with("application/octet-stream")).unwrap_or_default();
    (filename, mime)
}

/// Stored gzip bytes go out as they are to a client that accepts gzip;
/// anything else is decompressed first.
fn body_bytes(needle: Needle, request: &RequestView, reply: &mut Reply) -> Result<Body, ReadError> {
    if !needle.gzipped {
        return Ok(needle.data);
    }
    if request.header("Accept-Encoding").contains("gzip") && content::is_gzip(&needle.data) {
        reply.set("Content-Encoding", "gzip");
        return Ok(needle.data);
    }
    content::served_bytes(needle.data.to_vec(), true).map(|(data, _)| data.into())
}

fn set_pairs(reply: &mut Reply, meta: &NeedleMeta) {
    let Some(pairs) = &meta.pairs else { return };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(pairs) else { return };
    for (key, value) in map {
        if let serde_json::Value::String(value) = value {
            reply.set(&canonical_header_key(&key), &value);
        }
    }
}

/// `writeResponseContent` and `ProcessRangeRequest`.
fn write_content(mut reply: Reply, filename: &str, content_type: &str, data: Body, request: &RequestView) -> Reply {
    let mut content_type = content_type.to_string();
    if content_type.is_empty() {
        let extension = mime::extension(filename);
        if !extension.is_empty() {
            content_type = mime::type_by_extension(extension);
        }
    }
    if !content_type.is_empty() {
        reply.set("Content-Type", &content_type);
    }
    reply.set("Accept-Ranges", "bytes");
    pass_through_headers(&mut reply, request, filename);
    let total = data.len() as u64;
    if request.method == Method::Head {
        reply.head_length = Some(total);
        return reply;
    }
    let mut range_header = request.header("Range");
    if !range_header.is_empty() && !if_range_matches(request.header("If-Range"), &reply) {
        range_header = "";
    }
    if range_header.is_empty() {
        reply.body = data;
        sniff_if_untyped(&mut reply);
        return reply;
    }
    let ranges = match ranges::parse(range_header, total) {
        Ok(ranges) => ranges,
        Err(error) => return range_error(reply, error, total),
    };
    let sum: u64 = ranges.iter().map(|range| range.length).sum();
    if ranges.is_empty() || sum > total {
        // Upstream returns without writing: 200, no body.
        return reply;
    }
    reply.status = 206;
    if let [range] = ranges.as_slice() {
        reply.set("Content-Range", &range.content_range(total));
        reply.body = data[range.start as usize..(range.start + range.length) as usize].to_vec().into();
        sniff_if_untyped(&mut reply);
        return reply;
    }
    let boundary = ranges::boundary();
    reply.body = ranges::multipart_body(&data, &ranges, &content_type, &boundary).into();
    reply.set("Content-Type", &format!("multipart/byteranges; boundary={boundary}"));
    // Go announces no length here, but its server computes one for a body
    // that fits the buffer it keeps before it starts chunking.
    reply.chunked = reply.get("Content-Encoding").is_some() && reply.body.len() > GO_BUFFER_BEFORE_CHUNKING_BYTES;
    reply
}

/// Go's `http.Error(w, message, 416)` after the content headers were set.
fn range_error(mut reply: Reply, error: RangeError, total: u64) -> Reply {
    if error == RangeError::NoOverlap {
        reply.set("Content-Range", &format!("bytes */{total}"));
    }
    reply.status = 416;
    reply.set("Content-Type", "text/plain; charset=utf-8");
    reply.set("X-Content-Type-Options", "nosniff");
    reply.body = error.body().as_bytes().to_vec().into();
    reply
}

/// Go's server sniffs a body's type when the handler set none.
fn sniff_if_untyped(reply: &mut Reply) {
    if reply.get("Content-Type").is_none() && reply.get("Content-Encoding").is_none() && !reply.body.is_empty() {
        let sniffed = mime::sniff(&reply.body);
        reply.set("Content-Type", sniffed);
    }
}

/// S3-style `response-*` query overrides, then `Content-Disposition` for a named file.
fn pass_through_headers(reply: &mut Reply, request: &RequestView, filename: &str) {
    const PASS_THROUGH: &[(&str, &str)] = &[
        ("response-cache-control", "Cache-Control"),
        ("response-content-disposition", "Content-Disposition"),
        ("response-content-encoding", "Content-Encoding"),
        ("response-content-language", "Content-Language"),
        ("response-content-type", "Content-Type"),
        ("response-expires", "Expires"),
    ];
    for (key, value) in request.query_pairs() {
        if let Some((_, header)) = PASS_THROUGH.iter().find(|(name, _)| key.eq_ignore_ascii_case(name)) {
            reply.set(header, value);
        }
    }
    if reply.get("Content-Disposition").is_some() || filename.is_empty() {
        return;
    }
    let kind = if parse_go_bool(request.query("dl")) == Some(true) { "attachment" } else { "inline" };
    reply.set("Content-Disposition", &mime::format_disposition(kind, filename));
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `shouldResizeImages`/`shouldCropImages`: answers the sidecar cannot give.
fn wants_image_transform(extension: &str, request: &RequestView) -> bool {
    let extension = extension.to_ascii_lowercase();
    let number = |name: &str| request.query(name).parse::<i64>().unwrap_or(0);
    let resizable = matches!(extension.as_str(), ".png" | ".jpg" | ".jpeg" | ".gif" | ".webp");
    let croppable = matches!(extension.as_str(), ".png" | ".jpg" | ".jpeg" | ".gif");
    let resize = resizable && (number("width") > 0 || number("height") > 0);
    let (x1, y1, x2, y2) = (number("crop_x1"), number("crop_y1"), number("crop_x2"), number("crop_y2"));
    let crop = croppable && x1 >= 0 && y1 >= 0 && x2 > x1 && y2 > y1;
    resize || crop
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(volume_id: &str, key_cookie: &str, filename: &str, extension: &str) -> FidPath {
        FidPath {
            volume_id: volume_id.into(),
            key_cookie: key_cookie.into(),
            filename: filename.into(),
            extension: extension.into(),
        }
    }

    #[test]
    fn url_paths_split_like_go() {
        assert_eq!(parse_url_path("/3,01637037d6"), parts("3", "01637037d6", "", ""));
        assert_eq!(parse_url_path("/3,01637037d6.jpg"), parts("3", "01637037d6", "", ".jpg"));
        assert_eq!(parse_url_path("/3/01637037d6"), parts("3", "01637037d6", "", ""));
        assert_eq!(parse_url_path("/3/01637037d6.txt"), parts("3", "01637037d6", "", ".txt"));
        assert_eq!(parse_url_path("/3/01637037d6/a b.png"), parts("3", "01637037d6", "a b.png", ".png"));
        assert_eq!(parse_url_path("/3"), parts("3", "", "", ""));
        assert!(file_id_of(&parse_url_path("/3,01637037d6")).is_some());
        assert!(file_id_of(&parse_url_path("/abc")).is_none());
        assert!(file_id_of(&parse_url_path("/3,0163")).is_none());
        assert!(file_id_of(&parse_url_path("/x,01637037d6")).is_none());
        assert!(file_id_of(&parse_url_path("/+3,01637037d6")).is_none());
    }
}

//! The three pieces of Go's standard library that decide a volume server's
//! `Content-Type` and `Content-Disposition`, rebuilt from their documented
//! behaviour so the sidecar answers the same:
//!
//! - [`type_by_extension`]: `mime.TypeByExtension`: Go's built-in table,
//!   then the system's freedesktop `globs2` (first entry per extension
//!   wins, built-ins first), else the `mime.types` files; `text/*` types get
//!   `; charset=utf-8`. A lookup is exact first, then lower-cased.
//! - [`sniff`]: `http.DetectContentType`, which Go's server applies to the
//!   first bytes of a body whose handler set no `Content-Type`.
//! - [`format_disposition`]: `mime.FormatMediaType(kind, {"filename": name})`.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Go's built-in extension table (`mime/type.go`, Go 1.26).
const BUILTIN_TYPES: &[(&str, &str)] = &[
    (".ai", "application/postscript"),
    (".apk", "application/vnd.android.package-archive"),
    (".apng", "image/apng"),
    (".avif", "image/avif"),
    (".bin", "application/octet-stream"),
    (".bmp", "image/bmp"),
    (".com", "application/octet-stream"),
    (".css", "text/css; charset=utf-8"),
    (".csv", "text/csv; charset=utf-8"),
    (".doc", "application/msword"),
    (".docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (".ehtml", "text/html; charset=utf-8"),
    (".eml", "message/rfc822"),
    (".eps", "application/postscript"),
    (".exe", "application/octet-stream"),
    (".flac", "audio/flac"),
    (".gif", "image/gif"),
    (".gz", "application/gzip"),
    (".htm", "text/html; charset=utf-8"),
    (".html", "text/html; charset=utf-8"),
    (".ico", "image/vnd.microsoft.icon"),
    (".ics", "text/calendar; charset=utf-8"),
    (".jfif", "image/jpeg"),
    (".jpeg", "image/jpeg"),
    (".jpg", "image/jpeg"),
    (".js", "text/javascript; charset=utf-8"),
    (".json", "application/json"),
    (".m4a", "audio/mp4"),
    (".mjs", "text/javascript; charset=utf-8"),
    (".mp3", "audio/mpeg"),
    (".mp4", "video/mp4"),
    (".oga", "audio/ogg"),
    (".ogg", "audio/ogg"),
    (".ogv", "video/ogg"),
    (".opus", "audio/ogg"),
    (".pdf", "application/pdf"),
    (".pjp", "image/jpeg"),
    (".pjpeg", "image/jpeg"),
    (".png", "image/png"),
    (".ppt", "application/vnd.ms-powerpoint"),
    (".pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
    (".ps", "application/postscript"),
    (".rdf", "application/rdf+xml"),
    (".rtf", "application/rtf"),
    (".shtml", "text/html; charset=utf-8"),
    (".svg", "image/svg+xml"),
    (".text", "text/plain; charset=utf-8"),
    (".tif", "image/tiff"),
    (".tiff", "image/tiff"),
    (".txt", "text/plain; charset=utf-8"),
    (".vtt", "text/vtt; charset=utf-8"),
    (".wasm", "application/wasm"),
    (".wav", "audio/wav"),
    (".webm", "audio/webm"),
    (".webp", "image/webp"),
    (".xbl", "text/xml; charset=utf-8"),
    (".xbm", "image/x-xbitmap"),
    (".xht", "application/xhtml+xml"),
    (".xhtml", "application/xhtml+xml"),
    (".xls", "application/vnd.ms-excel"),
    (".xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    (".xml", "text/xml; charset=utf-8"),
    (".xsl", "text/xml; charset=utf-8"),
    (".zip", "application/zip"),
];

/// Where Go looks for the system's tables, in its order.
const GLOBS_FILES: &[&str] = &["/usr/local/share/mime/globs2", "/usr/share/mime/globs2"];
const TYPES_FILES: &[&str] =
    &["/etc/mime.types", "/etc/apache2/mime.types", "/etc/apache/mime.types", "/etc/httpd/conf/mime.types"];

#[derive(Debug, Default)]
struct Table {
    exact: HashMap<String, String>,
    lower: HashMap<String, String>,
}

impl Table {
    fn set(&mut self, extension: &str, mime: &str) {
        let mime = if mime.starts_with("text/") && !mime.contains("charset=") {
            format!("{}; charset=utf-8", mime.to_ascii_lowercase())
        } else {
            mime.to_string()
        };
        self.exact.insert(extension.to_string(), mime.clone());
        self.lower.insert(extension.to_lowercase(), mime);
    }

    fn load() -> Table {
        let mut table = Table::default();
        for (extension, mime) in BUILTIN_TYPES {
            table.exact.insert(extension.to_string(), mime.to_string());
            table.lower.insert(extension.to_string(), mime.to_string());
        }
        if GLOBS_FILES.iter().any(|path| table.load_globs(path)) {
            return table;
        }
        for path in TYPES_FILES {
            table.load_types(path);
        }
        table
    }

    /// A freedesktop `globs2` file (`weight:type:*.ext[:flags]`); false if unreadable.
    fn load_globs(&mut self, path: &str) -> bool {
        let Ok(text) = std::fs::read_to_string(path) else { return false };
        for line in text.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() || fields[2].len() < 3 || fields[0].starts_with('#') {
                continue;
            }
            let Some(extension) = fields[2].strip_prefix('*').filter(|rest| rest.starts_with('.')) else { continue };
            if extension.contains(['?', '*', '[']) || self.exact.contains_key(extension) {
                continue;
            }
            self.set(extension, fields[1]);
        }
        true
    }

    /// An Apache-style `mime.types` file (`type ext ext ...`).
    fn load_types(&mut self, path: &str) {
        let Ok(text) = std::fs::read_to_string(path) else { return };
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let Some(mime) = fields.next().filter(|mime| !mime.starts_with('#')) else { continue };
            for extension in fields.take_while(|extension| !extension.starts_with('#')) {
                self.set(&format!(".{extension}"), mime);
            }
        }
    }
}

/// Go's `mime.TypeByExtension(extension)` (`extension` with its dot), "" if unknown.
pub fn type_by_extension(extension: &str) -> String {
    static TABLE: OnceLock<Table> = OnceLock::new();
    let table = TABLE.get_or_init(Table::load);
    table.exact.get(extension).or_else(|| table.lower.get(&extension.to_lowercase())).cloned().unwrap_or_default()
}

/// Go's `filepath.Ext`: from the last dot of the last path element, or "".
pub fn extension(name: &str) -> &str {
    let base_start = name.rfind('/').map_or(0, |index| index + 1);
    match name[base_start..].rfind('.') {
        Some(dot) => &name[base_start + dot..],
        None => "",
    }
}

/// Bytes `sniff` looks at (Go's `sniffLen`).
pub const SNIFF_BYTES: usize = 512;

/// A signature of `http.DetectContentType`, tried in table order.
enum Signature {
    /// Case-insensitive tag after leading white space, then a space or `>`.
    Html(&'static [u8]),
    /// `data & mask == pattern`, optionally after leading white space.
    Masked {
        mask: &'static [u8],
        pattern: &'static [u8],
        skip_white_space: bool,
        mime: &'static str,
    },
    Exact(&'static [u8], &'static str),
    Mp4,
    Text,
}

const fn exact(signature: &'static [u8], mime: &'static str) -> Signature {
    Signature::Exact(signature, mime)
}

const fn masked(mask: &'static [u8], pattern: &'static [u8], mime: &'static str) -> Signature {
    Signature::Masked { mask, pattern, skip_white_space: false, mime }
}

const SIGNATURES: &[Signature] = &[
    Signature::Html(b"<!DOCTYPE HTML"),
    Signature::Html(b"<HTML"),
    Signature::Html(b"<HEAD"),
    Signature::Html(b"<SCRIPT"),
    Signature::Html(b"<IFRAME"),
    Signature::Html(b"<H1"),
    Signature::Html(b"<DIV"),
    Signature::Html(b"<FONT"),
    Signature::Html(b"<TABLE"),
    Signature::Html(b"<A"),
    Signature::Html(b"<STYLE"),
    Signature::Html(b"<TITLE"),
    Signature::Html(b"<B"),
    Signature::Html(b"<BODY"),
    Signature::Html(b"<BR"),
    Signature::Html(b"<P"),
    Signature::Html(b"<!--"),
    Signature::Masked {
        mask: b"\xFF\xFF\xFF\xFF\xFF",
        pattern: b"<?xml",
        skip_white_space: true,
        mime: "text/xml; charset=utf-8",
    },
    exact(b"%PDF-", "application/pdf"),
    exact(b"%!PS-Adobe-", "application/postscript"),
    masked(b"\xFF\xFF\x00\x00", b"\xFE\xFF\x00\x00", "text/plain; charset=utf-16be"),
    masked(b"\xFF\xFF\x00\x00", b"\xFF\xFE\x00\x00", "text/plain; charset=utf-16le"),
    masked(b"\xFF\xFF\xFF\x00", b"\xEF\xBB\xBF\x00", "text/plain; charset=utf-8"),
    exact(b"\x00\x00\x01\x00", "image/x-icon"),
    exact(b"\x00\x00\x02\x00", "image/x-icon"),
    exact(b"BM", "image/bmp"),
    exact(b"GIF87a", "image/gif"),
    exact(b"GIF89a", "image/gif"),
    masked(b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF\xFF\xFF", b"RIFF\x00\x00\x00\x00WEBPVP", "image/webp"),
    exact(b"\x89PNG\x0D\x0A\x1A\x0A", "image/png"),
    exact(b"\xFF\xD8\xFF", "image/jpeg"),
    masked(b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF", b"FORM\x00\x00\x00\x00AIFF", "audio/aiff"),
    masked(b"\xFF\xFF\xFF", b"ID3", "audio/mpeg"),
    masked(b"\xFF\xFF\xFF\xFF\xFF", b"OggS\x00", "application/ogg"),
    masked(b"\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF", b"MThd\x00\x00\x00\x06", "audio/midi"),
    masked(b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF", b"RIFF\x00\x00\x00\x00AVI ", "video/avi"),
    masked(b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF", b"RIFF\x00\x00\x00\x00WAVE", "audio/wave"),
    Signature::Mp4,
    exact(b"\x1A\x45\xDF\xA3", "video/webm"),
    masked(
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xFF\xFF",
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00LP",
        "application/vnd.ms-fontobject",
    ),
    exact(b"\x00\x01\x00\x00", "font/ttf"),
    exact(b"OTTO", "font/otf"),
    exact(b"ttcf", "font/collection"),
    exact(b"wOFF", "font/woff"),
    exact(b"wOF2", "font/woff2"),
    exact(b"\x1F\x8B\x08", "application/x-gzip"),
    exact(b"PK\x03\x04", "application/zip"),
    exact(b"Rar!\x1A\x07\x00", "application/x-rar-compressed"),
    exact(b"Rar!\x1A\x07\x01\x00", "application/x-rar-compressed"),
    exact(b"\x00\x61\x73\x6D", "application/wasm"),
    Signature::Text,
];

fn is_white_space(byte: u8) -> bool {
    matches!(byte, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

impl Signature {
    fn matches(&self, data: &[u8], first_non_white_space: usize) -> Option<&'static str> {
        match self {
            Signature::Html(tag) => {
                let data = &data[first_non_white_space..];
                let fits = data.len() > tag.len()
                    && tag.iter().zip(data).all(|(&t, &d)| if t.is_ascii_uppercase() { d & 0xDF == t } else { d == t })
                    && matches!(data[tag.len()], b' ' | b'>');
                fits.then_some("text/html; charset=utf-8")
            }
            Signature::Masked { mask, pattern, skip_white_space, mime } => {
                let data = if *skip_white_space { &data[first_non_white_space..] } else { data };
                let fits = data.len() >= pattern.len()
                    && pattern.iter().zip(mask.iter()).zip(data).all(|((&p, &m), &d)| d & m == p);
                fits.then_some(*mime)
            }
            Signature::Exact(signature, mime) => data.starts_with(signature).then_some(*mime),
            Signature::Mp4 => is_mp4(data).then_some("video/mp4"),
            Signature::Text => {
                let binary = data[first_non_white_space..]
                    .iter()
                    .any(|&b| b <= 0x08 || b == 0x0B || (0x0E..=0x1A).contains(&b) || (0x1C..=0x1F).contains(&b));
                (!binary).then_some("text/plain; charset=utf-8")
            }
        }
    }
}

fn is_mp4(data: &[u8]) -> bool {
    if data.len() < 12 {
        return false;
    }
    let box_size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    if data.len() < box_size || !box_size.is_multiple_of(4) || &data[4..8] != b"ftyp" {
        return false;
    }
    (8..box_size).step_by(4).filter(|&start| start != 12).any(|start| data.get(start..start + 3) == Some(b"mp4"))
}

/// Go's `http.DetectContentType` of the first bytes of a body.
pub fn sniff(data: &[u8]) -> &'static str {
    let data = &data[..data.len().min(SNIFF_BYTES)];
    let first_non_white_space = data.iter().position(|&b| !is_white_space(b)).unwrap_or(data.len());
    SIGNATURES
        .iter()
        .find_map(|signature| signature.matches(data, first_non_white_space))
        .unwrap_or("application/octet-stream")
}

/// RFC 2045 tspecials.
fn is_tspecial(byte: u8) -> bool {
    b"()<>@,;:\\\"/[]?=".contains(&byte)
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b > b' ' && b < 0x7f && !is_tspecial(b))
}

/// `mime.FormatMediaType(kind, {"filename": name})`: a token as is, else a
/// quoted string, else (non-ASCII or control bytes) RFC 2231 `filename*=`.
pub fn format_disposition(kind: &str, name: &str) -> String {
    let needs_encoding = name.bytes().any(|b| !(b' '..=b'~').contains(&b) && b != b'\t');
    if needs_encoding {
        let mut encoded = String::new();
        for byte in name.bytes() {
            if byte <= b' ' || byte >= 0x7f || byte == b'*' || byte == b'\'' || byte == b'%' || is_tspecial(byte) {
                encoded.push_str(&format!("%{byte:02X}"));
            } else {
                encoded.push(byte as char);
            }
        }
        return format!("{kind}; filename*=utf-8''{encoded}");
    }
    if is_token(name) {
        return format!("{kind}; filename={name}");
    }
    let escaped: String =
        name.chars().flat_map(|c| if c == '"' || c == '\\' { vec!['\\', c] } else { vec![c] }).collect();
    format!("{kind}; filename=\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_follows_go() {
        assert_eq!(sniff(b"hello world"), "text/plain; charset=utf-8");
        assert_eq!(sniff(b""), "text/plain; charset=utf-8");
        assert_eq!(sniff(b"\x89PNG\x0D\x0A\x1A\x0Arest"), "image/png");
        assert_eq!(sniff(b"  <html><body>"), "text/html; charset=utf-8");
        assert_eq!(sniff(b"<htmlx"), "text/plain; charset=utf-8");
        assert_eq!(sniff(b"\x00\x01\x02\x03binary"), "application/octet-stream");
        assert_eq!(sniff(b"\x1F\x8B\x08\x00"), "application/x-gzip");
    }

    #[test]
    fn extension_types_follow_go() {
        assert_eq!(type_by_extension(".png"), "image/png");
        assert_eq!(type_by_extension(".PNG"), "image/png");
        assert_eq!(type_by_extension(".txt"), "text/plain; charset=utf-8");
        assert_eq!(type_by_extension(".no-such-extension"), "");
        assert_eq!(extension("a/b.c/name.tar.gz"), ".gz");
        assert_eq!(extension("a.b/name"), "");
    }

    #[test]
    fn dispositions_follow_go() {
        assert_eq!(format_disposition("inline", "a.txt"), "inline; filename=a.txt");
        assert_eq!(format_disposition("inline", "my file.txt"), "inline; filename=\"my file.txt\"");
        assert_eq!(format_disposition("inline", "q\"uote"), "inline; filename=\"q\\\"uote\"");
        assert_eq!(format_disposition("attachment", "é.txt"), "attachment; filename*=utf-8''%C3%A9.txt");
    }
}

//! File ids as SeaweedFS prints and parses them: `<volume id>,<key><cookie>`,
//! e.g. `3,01637037d6` is volume 3, needle 0x01, cookie 0x637037d6.
//!
//! Formatting: the needle id's 8 big-endian bytes, leading zero bytes dropped
//! (whole bytes, so an even number of hex digits), then the cookie's 4 bytes,
//! lowercase hex. Needle id 0 therefore prints as the cookie alone, which
//! SeaweedFS (and [`FileId::from_str`]) will not parse back: ids start at 1.
//!
//! Parsing ([`FileId::from_str`], SeaweedFS's `ParseFileIdFromString`): the
//! volume id is decimal before the first comma; after it, 9 to 24 hex digits
//! (either case, leading zeros allowed) whose last 8 are the cookie.
//! [`FileId::parse_url_path`] also takes the volume server's URL forms: a
//! `.ext` suffix, and a `_N` decimal delta added to the needle id.

use std::fmt;
use std::str::FromStr;

/// Hex digits of the cookie.
const COOKIE_HEX_DIGIT_COUNT: usize = 8;
/// Hex digits of the needle id at most.
const NEEDLE_ID_MAX_HEX_DIGIT_COUNT: usize = 16;

/// What is wrong with a file id string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileIdError {
    /// No comma, or nothing before it.
    #[error("file id {input:?} has no volume id before a comma (expected like \"3,01637037d6\")")]
    MissingVolumeId {
        /// The string given.
        input: String,
    },
    /// The volume id is not a decimal number that fits 32 bits.
    #[error("file id {input:?} has volume id {volume_id:?}, which is not a decimal number below 2^32")]
    BadVolumeId {
        /// The string given.
        input: String,
        /// The part before the comma.
        volume_id: String,
    },
    /// Key and cookie need more than the 8 cookie digits.
    #[error("file id {input:?} has {digit_count} hex digits after the comma; it needs more than 8 (needle id, then an 8-digit cookie)")]
    TooShort {
        /// The string given.
        input: String,
        /// Digits found.
        digit_count: usize,
    },
    /// Key and cookie are at most 24 digits.
    #[error("file id {input:?} has {digit_count} hex digits after the comma; at most 24 fit a needle id and a cookie")]
    TooLong {
        /// The string given.
        input: String,
        /// Digits found.
        digit_count: usize,
    },
    /// A character that is not a hex digit.
    #[error("file id {input:?} has {part} {text:?}, which is not hexadecimal")]
    NotHex {
        /// The string given.
        input: String,
        /// "needle id" or "cookie".
        part: &'static str,
        /// The offending part.
        text: String,
    },
    /// The `_N` suffix of a URL path is not a decimal number or overflows the id.
    #[error("file id {input:?} has delta {delta:?}, which is not a decimal number that can be added to the needle id")]
    BadDelta {
        /// The string given.
        input: String,
        /// The part after the last `_`.
        delta: String,
    },
}

/// A SeaweedFS file id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Volume holding the needle.
    pub volume_id: u32,
    /// Needle id (SeaweedFS's "key").
    pub needle_id: u64,
    /// Random cookie stored in the needle header.
    pub cookie: u32,
}

impl FileId {
    /// Parse the path form the volume server accepts: `3,01637037d6`,
    /// `3,01637037d6.jpg` (extension ignored) or `3,01637037d6_2` (2 added to
    /// the needle id, as for chunked uploads).
    pub fn parse_url_path(path: &str) -> Result<FileId, FileIdError> {
        let (volume_text, rest) = split_volume(path)?;
        let volume_id = parse_volume_id(path, volume_text)?;
        let rest = match rest.rfind('.') {
            Some(dot_index) => &rest[..dot_index],
            None => rest,
        };
        check_length(path, rest)?;
        let (key_cookie, delta) = match rest.rfind('_') {
            Some(underscore_index) if underscore_index > 0 => {
                (&rest[..underscore_index], Some(&rest[underscore_index + 1..]))
            }
            _ => (rest, None),
        };
        let (needle_id, cookie) = parse_key_cookie(path, key_cookie)?;
        let needle_id = match delta {
            Some(delta) => add_delta(path, needle_id, delta)?,
            None => needle_id,
        };
        Ok(FileId { volume_id, needle_id, cookie })
    }

    /// The part after the comma, as SeaweedFS formats it.
    pub fn key_cookie_string(&self) -> String {
        let mut text = String::with_capacity(NEEDLE_ID_MAX_HEX_DIGIT_COUNT + COOKIE_HEX_DIGIT_COUNT);
        let id_bytes = self.needle_id.to_be_bytes();
        let first_nonzero = id_bytes.iter().position(|&byte| byte != 0).unwrap_or(id_bytes.len());
        for byte in &id_bytes[first_nonzero..] {
            text.push_str(&format!("{byte:02x}"));
        }
        text.push_str(&format!("{:08x}", self.cookie));
        text
    }
}

impl FromStr for FileId {
    type Err = FileIdError;

    /// SeaweedFS's `ParseFileIdFromString`, except that a volume id over 32
    /// bits is an error where Go silently truncates it.
    fn from_str(input: &str) -> Result<FileId, FileIdError> {
        let (volume_text, key_cookie) = split_volume(input)?;
        let volume_id = parse_volume_id(input, volume_text)?;
        let (needle_id, cookie) = parse_key_cookie(input, key_cookie)?;
        Ok(FileId { volume_id, needle_id, cookie })
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.volume_id, self.key_cookie_string())
    }
}

fn split_volume(input: &str) -> Result<(&str, &str), FileIdError> {
    match input.find(',') {
        Some(comma_index) if comma_index > 0 => Ok((&input[..comma_index], &input[comma_index + 1..])),
        _ => Err(FileIdError::MissingVolumeId { input: input.to_string() }),
    }
}

fn parse_volume_id(input: &str, text: &str) -> Result<u32, FileIdError> {
    let all_digits = !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    all_digits
        .then(|| text.parse::<u32>().ok())
        .flatten()
        .ok_or_else(|| FileIdError::BadVolumeId { input: input.to_string(), volume_id: text.to_string() })
}

/// SeaweedFS's first length rule: more than the 8 cookie digits.
fn check_length(input: &str, key_cookie: &str) -> Result<(), FileIdError> {
    let digit_count = key_cookie.len();
    if digit_count <= COOKIE_HEX_DIGIT_COUNT {
        return Err(FileIdError::TooShort { input: input.to_string(), digit_count });
    }
    Ok(())
}

fn parse_key_cookie(input: &str, key_cookie: &str) -> Result<(u64, u32), FileIdError> {
    check_length(input, key_cookie)?;
    let digit_count = key_cookie.len();
    if digit_count > NEEDLE_ID_MAX_HEX_DIGIT_COUNT + COOKIE_HEX_DIGIT_COUNT {
        return Err(FileIdError::TooLong { input: input.to_string(), digit_count });
    }
    // Split by bytes only once all are ASCII hex digits, so never mid-character.
    let not_hex =
        |part: &'static str, text: &str| FileIdError::NotHex { input: input.to_string(), part, text: text.to_string() };
    if !key_cookie.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        let split = key_cookie.char_indices().nth_back(COOKIE_HEX_DIGIT_COUNT - 1).map_or(0, |(index, _)| index);
        let (id_text, cookie_text) = key_cookie.split_at(split);
        let bad_id = !id_text.bytes().all(|byte| byte.is_ascii_hexdigit());
        return Err(if bad_id { not_hex("needle id", id_text) } else { not_hex("cookie", cookie_text) });
    }
    let (id_text, cookie_text) = key_cookie.split_at(digit_count - COOKIE_HEX_DIGIT_COUNT);
    let needle_id = u64::from_str_radix(id_text, 16).map_err(|_| not_hex("needle id", id_text))?;
    let cookie = u32::from_str_radix(cookie_text, 16).map_err(|_| not_hex("cookie", cookie_text))?;
    Ok((needle_id, cookie))
}

fn add_delta(input: &str, needle_id: u64, delta: &str) -> Result<u64, FileIdError> {
    let bad_delta = || FileIdError::BadDelta { input: input.to_string(), delta: delta.to_string() };
    if delta.is_empty() || !delta.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad_delta());
    }
    let delta = delta.parse::<u64>().map_err(|_| bad_delta())?;
    needle_id.checked_add(delta).ok_or_else(bad_delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_the_readme_example() {
        let fid: FileId = "3,01637037d6".parse().unwrap();
        assert_eq!(fid, FileId { volume_id: 3, needle_id: 1, cookie: 0x6370_37d6 });
        assert_eq!(fid.to_string(), "3,01637037d6");
    }

    #[test]
    fn seaweedfs_test_cases() {
        assert!(matches!("100,12345678".parse::<FileId>(), Err(FileIdError::TooShort { .. })));
        assert!(matches!("100, 12345678".parse::<FileId>(), Err(FileIdError::NotHex { .. })));
        assert!("100,123456789".parse::<FileId>().is_ok());
        let long: FileId = "100,123456789012345678901234".parse().unwrap();
        assert_eq!(long, FileId { volume_id: 100, needle_id: 0x1234_5678_9012_3456, cookie: 0x7890_1234 });
        let zeros: FileId = "100,abcd0000abcd".parse().unwrap();
        assert_eq!(zeros, FileId { volume_id: 100, needle_id: 0xabcd, cookie: 0xabcd });
        assert!(matches!("100,1234567890123456789012345".parse::<FileId>(), Err(FileIdError::TooLong { .. })));
        let padded: FileId = "3,012300000000".parse().unwrap();
        assert_eq!(padded.needle_id, 0x123);
        assert_eq!(padded.to_string(), "3,012300000000");
    }

    #[test]
    fn formatting_drops_whole_zero_bytes_only() {
        let fid = FileId { volume_id: 7, needle_id: 0x1234, cookie: 0 };
        assert_eq!(fid.to_string(), "7,123400000000");
        let odd = FileId { volume_id: 7, needle_id: 0x123, cookie: 1 };
        assert_eq!(odd.to_string(), "7,012300000001");
        let zero = FileId { volume_id: 7, needle_id: 0, cookie: 1 };
        assert_eq!(zero.to_string(), "7,00000001");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!("01637037d6".parse::<FileId>(), Err(FileIdError::MissingVolumeId { .. })));
        assert!(matches!(",01637037d6".parse::<FileId>(), Err(FileIdError::MissingVolumeId { .. })));
        assert!(matches!("x,01637037d6".parse::<FileId>(), Err(FileIdError::BadVolumeId { .. })));
        assert!(matches!("4294967296,01637037d6".parse::<FileId>(), Err(FileIdError::BadVolumeId { .. })));
        let cookie = "3,01637037zz".parse::<FileId>().unwrap_err();
        assert!(matches!(cookie, FileIdError::NotHex { part: "cookie", .. }), "{cookie}");
        assert!("3,01637037d6.jpg".parse::<FileId>().is_err());
        assert!("3,é1637037d6".parse::<FileId>().is_err());
    }

    #[test]
    fn url_path_forms() {
        let with_ext = FileId::parse_url_path("3,01637037d6.jpg").unwrap();
        assert_eq!(with_ext, FileId { volume_id: 3, needle_id: 1, cookie: 0x6370_37d6 });
        let with_delta = FileId::parse_url_path("3,01637037d6_2").unwrap();
        assert_eq!(with_delta.needle_id, 3);
        assert!(matches!(FileId::parse_url_path("3,01637037d6_x"), Err(FileIdError::BadDelta { .. })));
        assert!(matches!(FileId::parse_url_path("3,ffffffffffffffff637037d6_1"), Err(FileIdError::BadDelta { .. })));
    }
}

//! CRC-32C (Castagnoli) of needle data, in the two forms SeaweedFS stores.
//!
//! Volume servers before 3.09 stored a transformed value
//! (`((c >> 15 | c << 17) + 0xa282ead8) mod 2^32`, Go's deprecated
//! `CRC.Value()`); newer ones store the raw CRC. Readers accept either.

/// Added after the rotation in the legacy stored form.
const LEGACY_OFFSET: u32 = 0xa282_ead8;

/// How a checksum is (or was found to be) stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChecksumForm {
    /// The CRC-32C itself; what SeaweedFS writes today.
    #[default]
    Raw,
    /// The pre-3.09 transformed value.
    Legacy,
}

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The legacy stored form of a raw CRC-32C.
pub const fn legacy_form(raw_crc: u32) -> u32 {
    raw_crc.rotate_right(15).wrapping_add(LEGACY_OFFSET)
}

/// The value stored on disk for `raw_crc` in `form`.
pub const fn stored_form(raw_crc: u32, form: ChecksumForm) -> u32 {
    match form {
        ChecksumForm::Raw => raw_crc,
        ChecksumForm::Legacy => legacy_form(raw_crc),
    }
}

/// Which form `stored` matches for data whose CRC-32C is `computed`, if any.
pub const fn match_form(stored: u32, computed: u32) -> Option<ChecksumForm> {
    if stored == computed {
        Some(ChecksumForm::Raw)
    } else if stored == legacy_form(computed) {
        Some(ChecksumForm::Legacy)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    #[allow(clippy::manual_rotate, reason = "spelled as in Go on purpose")]
    fn legacy_form_matches_go_value() {
        // Go: uint32(c>>15|c<<17) + 0xa282ead8, with c a uint32.
        let raw = 0xe306_9283u32;
        let go = ((raw >> 15) | (raw << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(legacy_form(raw), go);
    }

    #[test]
    fn match_form_accepts_both() {
        let raw = crc32c(b"seaweed");
        assert_eq!(match_form(raw, raw), Some(ChecksumForm::Raw));
        assert_eq!(match_form(legacy_form(raw), raw), Some(ChecksumForm::Legacy));
        assert_eq!(match_form(raw ^ 1, raw), None);
    }
}

//! Helpers the fuzz targets share (the targets are in `fuzz_targets/`).

/// The little-endian number in the first (up to) 8 bytes of `bytes`, or `absent` when there
/// are none: how a target reads an optional size after its fixed-size input.
pub fn trailing_u64_le(bytes: &[u8], absent: u64) -> u64 {
    if bytes.is_empty() {
        return absent;
    }
    let mut value = [0u8; 8];
    let taken = bytes.len().min(8);
    value[..taken].copy_from_slice(&bytes[..taken]);
    u64::from_le_bytes(value)
}

//! The stream transport's challenge and response: each side sends a fresh random nonce, and
//! each proves it holds SeaweedFS's read key with an HMAC-SHA-256 over both nonces, under a
//! label that says which side it is. Nothing that crosses the wire can be replayed: a
//! recorded proof is bound to the nonces of its own connection, and the other side's nonce is
//! new every time. The exporter proves itself first (in its hello), so a reader never sends a
//! proof to an exporter that does not hold the key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::wire::{NONCE_BYTES, PROOF_BYTES};
use crate::rdma::token::ReadKey;

/// What the reader's proof is computed under.
const READER_LABEL: &[u8] = b"seaweedfs-rdma stream v1 reader";
/// What the exporter's proof is computed under.
const EXPORTER_LABEL: &[u8] = b"seaweedfs-rdma stream v1 exporter";

/// Which side a proof is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Reader,
    Exporter,
}

/// The proof `side` sends on the connection with these nonces.
pub fn proof(
    key: &ReadKey,
    side: Side,
    reader_nonce: &[u8; NONCE_BYTES],
    exporter_nonce: &[u8; NONCE_BYTES],
) -> [u8; PROOF_BYTES] {
    mac(key, side, reader_nonce, exporter_nonce).finalize().into_bytes().into()
}

/// Whether `received` is `side`'s proof on this connection (compared in constant time).
pub fn verify(
    key: &ReadKey,
    side: Side,
    reader_nonce: &[u8; NONCE_BYTES],
    exporter_nonce: &[u8; NONCE_BYTES],
    received: &[u8; PROOF_BYTES],
) -> bool {
    mac(key, side, reader_nonce, exporter_nonce).verify_slice(received).is_ok()
}

fn mac(key: &ReadKey, side: Side, reader_nonce: &[u8], exporter_nonce: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC accepts any key length");
    mac.update(match side {
        Side::Reader => READER_LABEL,
        Side::Exporter => EXPORTER_LABEL,
    });
    mac.update(reader_nonce);
    mac.update(exporter_nonce);
    mac
}

/// A fresh nonce from the kernel's random source (`getrandom`).
pub fn nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    let mut filled = 0;
    // Bounded: getrandom fills up to 256 bytes at once from an initialised pool; EINTR retries.
    for _attempt in 0..16 {
        // SAFETY: the pointer and length describe the unfilled tail of `nonce`.
        let count = unsafe { libc::getrandom(nonce[filled..].as_mut_ptr().cast(), NONCE_BYTES - filled, 0) };
        if count > 0 {
            filled += count as usize;
            if filled == NONCE_BYTES {
                return Ok(nonce);
            }
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(std::io::Error::last_os_error());
        }
    }
    Err(std::io::Error::other("getrandom did not fill a nonce"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of `docs/stream-protocol.md`, for other implementations.
    #[test]
    fn the_documented_test_vector_holds() {
        let key = ReadKey::from_bytes(b"read-secret");
        let (reader, exporter) = ([0x11u8; NONCE_BYTES], [0x22u8; NONCE_BYTES]);
        let hex = |bytes: [u8; PROOF_BYTES]| bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>();
        assert_eq!(
            hex(proof(&key, Side::Exporter, &reader, &exporter)),
            "9e234b03549b0dc0c58b28b5ac1f8baf20d11ea6de4c6888398a8d8792925fa7"
        );
        assert_eq!(
            hex(proof(&key, Side::Reader, &reader, &exporter)),
            "50210d80934a0e63973e14a38cd07f44d411aebe9b8bd5b1772e959f384a57fa"
        );
    }

    #[test]
    fn proofs_bind_the_key_the_side_and_both_nonces() {
        let key = ReadKey::from_bytes(b"read-secret");
        let (reader, exporter) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(reader, exporter);
        let reader_proof = proof(&key, Side::Reader, &reader, &exporter);
        assert!(verify(&key, Side::Reader, &reader, &exporter, &reader_proof));
        // The other side's label, another key, another connection's nonce: refused.
        assert!(!verify(&key, Side::Exporter, &reader, &exporter, &reader_proof));
        assert!(!verify(&ReadKey::from_bytes(b"other"), Side::Reader, &reader, &exporter, &reader_proof));
        assert!(!verify(&key, Side::Reader, &reader, &nonce().unwrap(), &reader_proof));
        assert!(!verify(&key, Side::Reader, &nonce().unwrap(), &exporter, &reader_proof));
    }
}

//! The export role's catalogue decode (`rdma_engine::rdma::catalogue`): the JSON an exporter
//! answers a reader with, and the request a reader sends. Both come from a peer over the
//! network and are untrusted.
//!
//! Input: one payload, decoded as a `Catalogue` (what a reader decodes), a `CatalogueRequest`
//! (what an exporter decodes), and as both lookup messages (`rdma_engine::rdma::lookup`).
//!
//! What must hold:
//! - no panic; a payload of another protocol version is refused;
//! - a lookup message decodes only from exactly its length, and encodes back to the same bytes;
//! - a decoded value round-trips: encoded and decoded again, it is the same value;
//! - validation accepts only what the reader may address gets with: needle version 1..=3,
//!   offset width 4 or 5, and for each file pieces sorted and contiguous from offset 0,
//!   none empty, covering the file's length, rkeys of 1..=`RKEY_MAX_BYTES` bytes of hex,
//!   and for every byte of the file the piece holding it is found and its address computed
//!   without overflow;
//! - a validated rkey's hex decodes to bytes that encode back to the same (lowercase) hex,
//!   or is refused by `from_hex`, never half-decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdma_engine::rdma::catalogue::{
    from_hex, to_hex, Catalogue, CatalogueRequest, FileEntry, PieceEntry, VolumeEntry, PIECES_PER_FILE_MAX,
    PROTOCOL_VERSION,
};
use rdma_engine::rdma::lookup::{LookupAnswer, LookupRequest, LOOKUP_ANSWER_BYTES, LOOKUP_REQUEST_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(catalogue) = Catalogue::decode(data) {
        assert_eq!(catalogue.protocol_version, PROTOCOL_VERSION);
        assert_eq!(Catalogue::decode(&catalogue.encode()).as_ref(), Ok(&catalogue), "catalogue round trip");
        for volume in &catalogue.volumes {
            if volume.validate().is_ok() {
                check_validated(volume);
            }
        }
    }
    if let Ok(request) = CatalogueRequest::decode(data) {
        assert_eq!(request.protocol_version, PROTOCOL_VERSION);
        assert_eq!(CatalogueRequest::decode(&request.encode()).as_ref(), Ok(&request), "request round trip");
    }
    // The lookup messages: fixed-size records, exact length or refused.
    if let Ok(request) = LookupRequest::decode(data) {
        assert_eq!(data.len(), LOOKUP_REQUEST_BYTES);
        assert_eq!(&request.encode()[..], data, "lookup request round trip");
    }
    if let Ok(answer) = LookupAnswer::decode(data) {
        assert_eq!(data.len(), LOOKUP_ANSWER_BYTES);
        assert_eq!(&answer.encode()[..], data, "lookup answer round trip");
    }
});

fn check_validated(volume: &VolumeEntry) {
    assert!((1..=3).contains(&volume.version), "{volume:?}");
    assert!((4..=5).contains(&volume.offset_size_bytes), "{volume:?}");
    check_file(&volume.dat);
    check_file(&volume.idx);
}

fn check_file(file: &FileEntry) {
    assert!(file.pieces.len() <= PIECES_PER_FILE_MAX);
    let mut covered = 0u64;
    for piece in &file.pieces {
        assert_eq!(piece.file_offset, covered, "pieces must be contiguous: {file:?}");
        assert!(piece.length_bytes > 0);
        covered = covered.checked_add(piece.length_bytes).expect("validated lengths do not overflow");
        check_rkey(piece);
    }
    assert!(covered >= file.length_bytes, "pieces must cover the file: {file:?}");
    // The reader's addressing: first, last and middle byte of the file, and each piece's edges.
    let mut offsets = vec![0, file.length_bytes / 2, file.length_bytes.saturating_sub(1)];
    offsets
        .extend(file.pieces.iter().flat_map(|piece| [piece.file_offset, piece.file_offset + piece.length_bytes - 1]));
    for offset in offsets.into_iter().filter(|&offset| offset < file.length_bytes) {
        let index = file.pieces.partition_point(|piece| piece.file_offset + piece.length_bytes <= offset);
        let piece = file.pieces.get(index).filter(|piece| piece.file_offset <= offset).expect("every byte has a piece");
        let within = offset - piece.file_offset;
        assert!(within < piece.length_bytes);
        assert!(piece.address.checked_add(within).is_some(), "address overflows: {piece:?}");
    }
}

fn check_rkey(piece: &PieceEntry) {
    let length = piece.rkey_hex.len();
    assert!(length.is_multiple_of(2) && length / 2 >= 1 && length / 2 <= ucx::RKEY_MAX_BYTES, "{piece:?}");
    if let Some(bytes) = from_hex(&piece.rkey_hex) {
        assert_eq!(bytes.len(), length / 2);
        assert_eq!(to_hex(&bytes), piece.rkey_hex.to_ascii_lowercase(), "hex round trip");
    }
}

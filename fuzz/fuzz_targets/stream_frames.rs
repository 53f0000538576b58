//! The stream transport's decoders (`rdma_engine::stream::wire`) and the reader's handling of
//! a range read's check bytes (`rdma_engine::stream::reader::place_check_bytes`). Every byte
//! comes from a network peer: an exporter decodes requests and hellos from readers, a reader
//! decodes reply headers, hellos and check bytes from exporters.
//!
//! Input: the first bytes are read as each fixed-size message (request 48, reply header 40,
//! client hello 40, server hello 72); then, as a range read of a needle (version, index
//! size, range, buffer length from the input), the rest is offered as its check bytes.
//!
//! What must hold:
//! - no panic;
//! - a decoded request, reply or hello encodes back to bytes that decode to the same value;
//! - a decoded request's lengths are within the protocol's bounds (max_bytes 1..=1 GiB, a
//!   range non-empty and without overflow); a reply's check length at most CHECK_LENGTH_MAX;
//! - check bytes are taken only when they are exactly the needle's pieces, and then the data
//!   length they announce is at most the range asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdma_engine::read::fetch::{NeedleFetch, Step, SCRATCH_BYTES};
use rdma_engine::stream::reader::place_check_bytes;
use rdma_engine::stream::wire::{ClientHello, Reply, Request, ServerHello, CHECK_LENGTH_MAX};
use shm_layout::entry::{ByteRange, NeedleRead, MAX_BUFFER_LENGTH_BYTES};
use volume_format::version::Version;
use zerocopy::IntoBytes;

fn array<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut bytes = [0u8; N];
    let length = data.len().min(N);
    bytes[..length].copy_from_slice(&data[..length]);
    bytes
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(&array::<48>(data)) {
        let again: [u8; 48] = request.encode().as_bytes().try_into().unwrap();
        assert_eq!(Request::decode(&again), Ok(request), "request round trip");
        if let Request::Read(read) = request {
            assert!(read.max_bytes >= 1 && read.max_bytes <= MAX_BUFFER_LENGTH_BYTES);
            if let Some(range) = read.range {
                assert!(range.length > 0 && range.offset.checked_add(range.length).is_some());
            }
        }
    }
    if let Ok(reply) = Reply::decode(&array::<40>(data)) {
        let again: [u8; 40] = reply.encode().as_bytes().try_into().unwrap();
        assert_eq!(Reply::decode(&again), Ok(reply), "reply round trip");
        assert!(reply.check_length <= CHECK_LENGTH_MAX);
    }
    if let Ok(hello) = ClientHello::decode(&array::<40>(data)) {
        assert_eq!(ClientHello::decode(&array::<40>(hello.as_bytes())).map(|again| again.nonce), Ok(hello.nonce));
    }
    if let Ok(hello) = ServerHello::decode(&array::<72>(data)) {
        assert_eq!(ServerHello::decode(&array::<72>(hello.as_bytes())).map(|again| again.nonce), Ok(hello.nonce));
    }
    check_bytes(data);
});

/// A range read as the reader runs it when a reply's check bytes arrive.
fn check_bytes(data: &[u8]) {
    if data.len() < 24 {
        return;
    }
    let version = Version::ALL[usize::from(data[0]) % 3];
    let index_size = u32::from_le_bytes(array::<4>(&data[1..]));
    let offset = u64::from(u32::from_le_bytes(array::<4>(&data[5..])));
    let length = u64::from(u32::from_le_bytes(array::<4>(&data[9..]))).max(1);
    let buffer_length = u32::from_le_bytes(array::<4>(&data[13..])).clamp(1, MAX_BUFFER_LENGTH_BYTES);
    let range = Some(ByteRange { offset, length });
    let read = NeedleRead { volume_id: 1, needle_id: 2, cookie: 3, buffer_offset: 0, buffer_length, range };
    let (mut fetch, step) = NeedleFetch::begin(&read, version, 0, index_size);
    let Step::Fetch(first) = step else { return };
    let mut scratch = [0u8; SCRATCH_BYTES];
    let check = &data[17..data.len().min(17 + CHECK_LENGTH_MAX as usize)];
    if let Some(data_length) = place_check_bytes(&mut fetch, first, check, &mut scratch) {
        assert!(data_length <= length, "more data than the range asked for");
    }
}

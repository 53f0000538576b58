//! Needle parse (`volume_format::needle`) and the engine's check of the bytes that landed in
//! a client's buffer (`rdma_engine::read::check`), which every transport runs before a read
//! completes. The bytes come from a volume file, or from a peer over RDMA.
//!
//! Input: one control byte, then the record. The control byte's low bits pick the version
//! (`% 3`: 1, 2, 3); with bit 7 set, 24 more bytes follow before the record: the needle id
//! (u64), cookie (u32) and index size (u32) asked for, then a range offset and length (u32
//! each), all big-endian. Without it, the ids asked for are the record's own (so the CRC and
//! meta paths are reached) and the range is the whole data.
//!
//! What must hold:
//! - no panic;
//! - a parsed needle never claims bytes past its input: its data, name, mime and pairs lie
//!   inside the record's body, and the body, checksum and timestamp inside the input;
//! - the engine's check of a landed record (parsed from its private copy) accepts exactly the
//!   records the whole parse accepts with the ids asked for, and finds the same data;
//! - decode never accepts what validation rejects: a whole-record check that passes means
//!   the header-only check of a range read passes too, finds the data at the same place,
//!   and the meta a range read fetches apart (flags, TTL, append time) is the whole parse's;
//!   an accepted range is clamped inside the data;
//! - a record the writer can store round-trips: encoded from its parse, parsed again, it
//!   holds the same fields, and encoding that gives the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdma_engine::read::check::{check_landed_record, check_meta, check_range_prefix, clamp_range, CheckCopy, Checked};
use shm_layout::entry::ErrorCode;
use volume_format::needle::record_size_bytes;
use volume_format::needle::{NeedleHeader, NeedleMeta, NeedleRecord, CHECK_HEADER_PREFIX_SIZE_BYTES};
use volume_format::ttl::Ttl;
use volume_format::version::{Version, CHECKSUM_SIZE_BYTES, NEEDLE_HEADER_SIZE_BYTES};
use volume_format::writer::{encode_needle, NeedleSpec};

/// What a read asks for.
struct Asked {
    needle_id: u64,
    cookie: u32,
    index_size: u32,
    range_offset: u64,
    range_length: u64,
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let version = Version::ALL[usize::from(control % 3)];
    let (asked, record) = if control & 0x80 != 0 {
        let Some((fields, record)) = rest.split_first_chunk::<24>() else { return };
        let be_u32 = |at: usize| u32::from_be_bytes(fields[at..at + 4].try_into().unwrap());
        let asked = Asked {
            needle_id: u64::from_be_bytes(fields[..8].try_into().unwrap()),
            cookie: be_u32(8),
            index_size: be_u32(12),
            range_offset: u64::from(be_u32(16)),
            range_length: u64::from(be_u32(20)),
        };
        (asked, record)
    } else {
        let Ok(header) = NeedleHeader::parse(rest) else { return };
        let index_size = u32::try_from(header.size).unwrap_or(0);
        (
            Asked {
                needle_id: header.needle_id,
                cookie: header.cookie,
                index_size,
                range_offset: 0,
                range_length: u64::MAX,
            },
            rest,
        )
    };

    let landed = check_whole(record, version, &asked);
    let reference = NeedleRecord::parse(record, version)
        .ok()
        .filter(|parsed| parsed.check_indexed(asked.needle_id, asked.cookie, asked.index_size).is_ok());
    match (&landed, &reference) {
        (Some(Ok(checked)), Some(parsed)) => {
            assert_eq!(checked.data_offset_in_record, parsed.data_offset_in_record as u64);
            assert_eq!(checked.data_length, parsed.data.len() as u64);
            assert_eq!(checked.gzipped, parsed.is_gzipped());
        }
        (Some(Ok(checked)), None) => panic!("the landed check accepted a record the whole parse refuses: {checked:?}"),
        (Some(Err(code)), Some(parsed)) => {
            assert_eq!((*code, check_meta(&parsed.meta())), (ErrorCode::NO_SUCH_NEEDLE, Err(ErrorCode::NO_SUCH_NEEDLE)))
        }
        _ => {}
    }
    if let Ok(parsed) = NeedleRecord::parse(record, version) {
        check_bounds(&parsed, record);
        check_round_trip(&parsed, version);
        if parsed.check_indexed(asked.needle_id, asked.cookie, asked.index_size).is_ok() {
            check_range_path(&parsed, record, version, &asked);
        }
    }
    if let Ok(span) = check_range_prefix(record, version, asked.needle_id, asked.cookie, asked.index_size) {
        let body_end = NEEDLE_HEADER_SIZE_BYTES as u64 + u64::from(asked.index_size);
        assert!(span.data_offset_in_record + span.data_len <= body_end, "data past the body: {span:?}");
        if let Ok((start, length)) = clamp_range(&span, asked.range_offset, asked.range_length) {
            assert!(start >= span.data_offset_in_record && length <= asked.range_length);
            assert!(start + length <= span.data_offset_in_record + span.data_len, "range past the data");
        }
    }
});

/// Every slice the parse hands out lies inside the record's body, the body inside the input.
fn check_bounds(parsed: &NeedleRecord<'_>, record: &[u8]) {
    assert_eq!(Ok(parsed.header), NeedleHeader::parse(record));
    let size = parsed.header.body_size_bytes().expect("a parsed record has a size") as usize;
    let body_end = NEEDLE_HEADER_SIZE_BYTES + size;
    let tail_end = body_end + CHECKSUM_SIZE_BYTES + parsed.version.timestamp_size_bytes();
    assert!(tail_end <= record.len(), "claims {tail_end} bytes of {}", record.len());
    let body = record.as_ptr_range();
    let body = (body.start as usize + NEEDLE_HEADER_SIZE_BYTES)..(body.start as usize + body_end);
    let inside = |field: &[u8]| {
        let range = field.as_ptr_range();
        field.is_empty() || (body.start <= range.start as usize && range.end as usize <= body.end)
    };
    assert!(inside(parsed.data), "data outside the body");
    assert_eq!(&record[parsed.data_range_in_record()], parsed.data);
    for field in [parsed.name, parsed.mime, parsed.pairs].into_iter().flatten() {
        assert!(inside(field), "an optional field outside the body");
    }
}

/// The engine's check of `record` as it would have landed in a buffer of the record's size by
/// the index (`None` when the input is shorter than that: the engine never checks a short
/// record, it fetches the index's size).
fn check_whole(record: &[u8], version: Version, asked: &Asked) -> Option<Result<Checked, ErrorCode>> {
    let record_size = record_size_bytes(version, asked.index_size);
    if record_size > record.len() as u64 {
        return None;
    }
    let mut buffer = record[..record_size as usize].to_vec();
    let mut copy = CheckCopy::default();
    let base = std::ptr::NonNull::new(buffer.as_mut_ptr()).unwrap_or(std::ptr::NonNull::dangling());
    // SAFETY: `buffer` holds the record's whole size and nothing else writes it meanwhile.
    Some(unsafe {
        check_landed_record(base, record_size, version, asked.needle_id, asked.cookie, asked.index_size, &mut copy)
    })
}

/// The range path's checks agree with the whole-record check that passed for this record.
fn check_range_path(parsed: &NeedleRecord<'_>, record: &[u8], version: Version, asked: &Asked) {
    let Some(whole) = check_whole(record, version, asked) else { return };
    let prefix = &record[..record.len().min(CHECK_HEADER_PREFIX_SIZE_BYTES)];
    let span = check_range_prefix(prefix, version, asked.needle_id, asked.cookie, asked.index_size);
    // check_indexed passed, so the CRC did: the range path must agree with the whole one.
    let span = span.expect("the header check refused a record the whole check accepts");
    assert_eq!(span.data_offset_in_record, parsed.data_offset_in_record as u64);
    assert_eq!(span.data_len, parsed.data.len() as u64);
    let ranges = NeedleMeta::ranges(version, asked.index_size, &span);
    let head = &record[ranges.head.start as usize..ranges.head.end as usize];
    let append_at = ranges.append_at.map(|range| &record[range.start as usize..range.end as usize]);
    let meta = NeedleMeta::parse_head(head, append_at, version, parsed.header, &span)
        .expect("the meta of an accepted record parses");
    assert_eq!(meta, parsed.meta(), "a range read's meta differs from the whole record's");
    match whole {
        Ok(checked) => {
            assert_eq!(check_meta(&meta), Ok(()));
            assert_eq!(checked.data_offset_in_record, span.data_offset_in_record);
            assert_eq!(checked.data_length, span.data_len);
            assert_eq!(checked.gzipped, meta.is_gzipped());
        }
        // Only an expired TTL refuses a record whose header and CRC passed.
        Err(code) => assert_eq!(check_meta(&meta), Err(code), "whole check refused a sound record"),
    }
}

/// The fields the writer stores when there is data (or in version 1).
type Stored<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Option<u64>, Option<Ttl>, Option<&'a [u8]>, bool);

fn stored<'a>(record: &NeedleRecord<'a>) -> Stored<'a> {
    (record.name, record.mime, record.last_modified, record.ttl, record.pairs, record.is_gzipped())
}

/// What the writer stores of `parsed`; `None` when its checksum matches neither form.
fn spec_of<'a>(parsed: &NeedleRecord<'a>) -> Option<NeedleSpec<'a>> {
    Some(NeedleSpec::from_record(parsed, parsed.checksum_form()?))
}

/// Encode what was parsed, parse it again: the fields the writer stores come back, and
/// encoding the second parse gives the same bytes.
fn check_round_trip(parsed: &NeedleRecord<'_>, version: Version) {
    let Some(spec) = spec_of(parsed) else { return };
    let encoded = encode_needle(version, &spec).expect("a parsed record's fields fit the writer");
    let again = NeedleRecord::parse(&encoded, version).expect("the writer's record parses");
    again.check(spec.needle_id, spec.cookie).expect("the writer's record passes its check");
    assert_eq!(again.data, parsed.data);
    if version == Version::V1 || !parsed.data.is_empty() {
        assert_eq!(stored(&again), stored(parsed), "fields lost in the round trip");
        assert_eq!(again.is_chunk_manifest(), parsed.is_chunk_manifest());
    }
    if !parsed.data.is_empty() {
        assert_eq!(again.stored_checksum, parsed.stored_checksum, "checksum changed in the round trip");
    }
    if version == Version::V3 {
        assert_eq!(again.append_at_ns, parsed.append_at_ns);
    }
    let spec_again = spec_of(&again).expect("the writer's checksum matches a form");
    assert_eq!(encode_needle(version, &spec_again).as_ref(), Ok(&encoded), "encoding is not a fixpoint");
}

//! Property tests: encoder/parser round trips, and no parser panics on
//! arbitrary bytes.

use proptest::prelude::*;
use volume_format::crc::ChecksumForm;
use volume_format::file_id::FileId;
use volume_format::index::{IndexEntry, NeedleIndex, OffsetWidth};
use volume_format::needle::{check_header, record_size_bytes, NeedleRecord};
use volume_format::superblock::SuperBlock;
use volume_format::ttl::Ttl;
use volume_format::version::Version;
use volume_format::writer::{encode_needle, NeedleSpec};

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

fn width() -> impl Strategy<Value = OffsetWidth> {
    prop::sample::select(vec![OffsetWidth::Four, OffsetWidth::Five])
}

#[derive(Debug, Clone)]
struct OwnedSpec {
    cookie: u32,
    needle_id: u64,
    data: Vec<u8>,
    name: Option<Vec<u8>>,
    mime: Option<Vec<u8>>,
    last_modified: Option<u64>,
    ttl: Option<(u8, u8)>,
    pairs: Option<Vec<u8>>,
    is_gzipped: bool,
    is_chunk_manifest: bool,
    append_at_ns: u64,
    legacy: bool,
}

impl OwnedSpec {
    fn spec(&self) -> NeedleSpec<'_> {
        NeedleSpec {
            cookie: self.cookie,
            needle_id: self.needle_id,
            data: &self.data,
            name: self.name.as_deref(),
            mime: self.mime.as_deref(),
            last_modified: self.last_modified,
            ttl: self.ttl.map(|(count, unit)| Ttl { count, unit }),
            pairs: self.pairs.as_deref(),
            is_gzipped: self.is_gzipped,
            is_chunk_manifest: self.is_chunk_manifest,
            append_at_ns: self.append_at_ns,
            checksum_form: if self.legacy { ChecksumForm::Legacy } else { ChecksumForm::Raw },
        }
    }
}

prop_compose! {
    fn owned_spec()(
        cookie in any::<u32>(),
        needle_id in any::<u64>(),
        data in prop::collection::vec(any::<u8>(), 0..600),
        name in prop::option::of(prop::collection::vec(any::<u8>(), 0..=255)),
        mime in prop::option::of(prop::collection::vec(any::<u8>(), 0..=255)),
        last_modified in prop::option::of(0u64..(1 << 40)),
        ttl in prop::option::of(any::<(u8, u8)>()),
        pairs in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        is_gzipped in any::<bool>(),
        is_chunk_manifest in any::<bool>(),
        append_at_ns in any::<u64>(),
        legacy in any::<bool>(),
    ) -> OwnedSpec {
        OwnedSpec { cookie, needle_id, data, name, mime, last_modified, ttl, pairs, is_gzipped, is_chunk_manifest, append_at_ns, legacy }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 16 } else { 512 }))]

    #[test]
    fn encoded_needle_reads_back(owned in owned_spec(), version in version()) {
        let spec = owned.spec();
        let record = encode_needle(version, &spec).unwrap();
        let parsed = NeedleRecord::parse(&record, version).unwrap();
        let size = u32::try_from(parsed.header.size).unwrap();
        prop_assert_eq!(record.len() as u64, record_size_bytes(version, size));
        prop_assert_eq!(parsed.header.cookie, spec.cookie);
        prop_assert_eq!(parsed.header.needle_id, spec.needle_id);
        prop_assert_eq!(parsed.data, spec.data);
        prop_assert!(parsed.check(spec.needle_id, spec.cookie).is_ok());
        prop_assert!(parsed.check_indexed(spec.needle_id, spec.cookie, size).is_ok());
        let span = check_header(&record, version, spec.needle_id, spec.cookie, size).unwrap();
        prop_assert_eq!(span.data_offset_in_record, parsed.data_offset_in_record as u64);
        prop_assert_eq!(span.data_len, parsed.data.len() as u64);
        prop_assert_eq!(parsed.append_at_ns, (version == Version::V3).then_some(spec.append_at_ns));
        let stores_fields = version != Version::V1 && !spec.data.is_empty();
        if stores_fields {
            prop_assert_eq!(parsed.flags, spec.flags());
            prop_assert_eq!(parsed.name, spec.name);
            prop_assert_eq!(parsed.mime, spec.mime);
            prop_assert_eq!(parsed.last_modified, spec.last_modified);
            prop_assert_eq!(parsed.ttl, spec.ttl);
            prop_assert_eq!(parsed.pairs, spec.pairs);
            prop_assert_eq!(parsed.is_gzipped(), spec.is_gzipped);
            prop_assert_eq!(parsed.is_chunk_manifest(), spec.is_chunk_manifest);
        } else {
            prop_assert_eq!(parsed.flags, 0);
            prop_assert_eq!((parsed.name, parsed.mime, parsed.pairs), (None, None, None));
        }
    }

    #[test]
    fn damaged_data_fails_the_crc(owned in owned_spec(), version in version(), flip in any::<prop::sample::Index>()) {
        prop_assume!(!owned.data.is_empty());
        let mut record = encode_needle(version, &owned.spec()).unwrap();
        let offset = NeedleRecord::parse(&record, version).unwrap().data_offset_in_record + flip.index(owned.data.len());
        record[offset] ^= 0x01;
        let parsed = NeedleRecord::parse(&record, version).unwrap();
        prop_assert!(parsed.check_crc().is_err());
    }

    #[test]
    fn index_entries_round_trip(needle_id in any::<u64>(), units in 0u64..(1 << 40), size in any::<i32>(), width in width()) {
        let units = if width == OffsetWidth::Four { units & 0xffff_ffff } else { units };
        let entry = IndexEntry { needle_id, offset_bytes: units * 8, size };
        let bytes = entry.encode(width).unwrap();
        prop_assert_eq!(bytes.len(), width.entry_size_bytes());
        prop_assert_eq!(IndexEntry::parse(&bytes, width).unwrap(), entry);
    }

    #[test]
    fn file_ids_round_trip(volume_id in any::<u32>(), needle_id in 1u64.., cookie in any::<u32>()) {
        let fid = FileId { volume_id, needle_id, cookie };
        prop_assert_eq!(fid.to_string().parse::<FileId>().unwrap(), fid);
        prop_assert_eq!(FileId::parse_url_path(&format!("{fid}.bin")).unwrap(), fid);
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), version in version(), width in width(), id in any::<u64>(), cookie in any::<u32>(), size in any::<u32>()) {
        let _ = SuperBlock::parse(&bytes);
        let _ = SuperBlock::extra_size_bytes(&bytes);
        if let Ok(record) = NeedleRecord::parse(&bytes, version) {
            let _ = record.check(id, cookie);
            let _ = record.checksum_form();
        }
        let _ = check_header(&bytes, version, id, cookie, size);
        let _ = IndexEntry::parse(&bytes, width);
        let mut index = NeedleIndex::new(width);
        let outcome = index.apply(&bytes);
        prop_assert_eq!(outcome.consumed_bytes + outcome.trailing_partial_bytes, bytes.len());
    }

    #[test]
    fn plausible_records_never_panic(size in 0i32..64, body in prop::collection::vec(any::<u8>(), 0..96), version in version()) {
        // Arbitrary bodies behind a header whose size fits them: the
        // length-field paths, not just the short-input ones.
        let mut bytes = volume_format::needle::NeedleHeader { cookie: 1, needle_id: 2, size }.encode().to_vec();
        bytes.extend_from_slice(&body);
        if let Ok(record) = NeedleRecord::parse(&bytes, version) {
            let _ = record.check(2, 1);
        }
    }

    #[test]
    fn file_id_parsers_never_panic(text in "\\PC{0,40}") {
        let _ = text.parse::<FileId>();
        let _ = FileId::parse_url_path(&text);
    }

    #[test]
    fn file_id_like_strings_never_panic(text in "[0-9]{0,11},[0-9a-fA-Fg_.é]{0,30}") {
        let _ = text.parse::<FileId>();
        let _ = FileId::parse_url_path(&text);
    }
}

/// Arbitrary `.dat` contents: the scan ends with records or one error, never a panic.
#[test]
fn scan_never_panics_on_arbitrary_files() {
    let dir = std::env::temp_dir().join(format!("volume-format-scan-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    let strategy = (prop::collection::vec(any::<u8>(), 0..300), version());
    runner
        .run(&strategy, |(tail, version)| {
            let mut bytes = vec![version.as_byte(), 0, 0, 0, 0, 0, 0, 0];
            bytes.extend_from_slice(&tail);
            let path = dir.join("fuzz.dat");
            std::fs::write(&path, &bytes).unwrap();
            let results: Vec<_> = volume_format::volume::scan(&path).unwrap().take(1000).collect();
            let errors = results.iter().filter(|result| result.is_err()).count();
            prop_assert!(errors <= 1);
            prop_assert!(results.last().is_none_or(|last| last.is_err()) || errors == 0);
            Ok(())
        })
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The needle map as a plain `HashMap` and `HashSet` (the index's rule, written the simple
/// way): the last entry wins; a live entry sets, any other deletes a needle that was live
/// or deleted and leaves an unknown id unknown.
#[derive(Default)]
struct ModelIndex {
    live: std::collections::HashMap<u64, (u64, u32)>,
    deleted: std::collections::HashSet<u64>,
}

impl ModelIndex {
    fn apply(&mut self, entry: &IndexEntry) {
        match u32::try_from(entry.size) {
            Ok(size) if entry.is_live() => {
                self.deleted.remove(&entry.needle_id);
                self.live.insert(entry.needle_id, (entry.offset_bytes, size));
            }
            _ => {
                if self.live.remove(&entry.needle_id).is_some() {
                    self.deleted.insert(entry.needle_id);
                }
            }
        }
    }
}

/// Entries over few ids (so they overwrite and delete each other) with offsets that fit
/// `width`, sizes that include empty files and tombstones, and offset-0 deletions.
fn index_entries(width: OffsetWidth) -> impl Strategy<Value = Vec<IndexEntry>> {
    let units = (width.max_offset_bytes() / 8).max(1);
    let entry = (
        0u64..600,
        prop_oneof![Just(0u64), 1..units, Just(units)],
        prop_oneof![Just(-1i32), Just(0i32), -5i32..100_000, Just(i32::MAX)],
    );
    prop::collection::vec(entry, 0..3000).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(id, units, size)| IndexEntry { needle_id: id * 7919, offset_bytes: units * 8, size })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The compact index and the `HashMap` model agree on any sequence of entries, of both
    /// widths, applied whole or replayed in chunks of any size (the refresh path).
    #[test]
    fn the_compact_index_agrees_with_a_hash_map((width, entries) in width().prop_flat_map(|width| (Just(width), index_entries(width))), cuts in prop::collection::vec(0usize..4000, 0..8)) {
        let bytes: Vec<u8> = entries.iter().flat_map(|entry| entry.encode(width).unwrap()).collect();
        let mut model = ModelIndex::default();
        entries.iter().for_each(|entry| model.apply(entry));
        let mut whole = NeedleIndex::new(width);
        prop_assert_eq!(whole.apply(&bytes).entry_count, entries.len());
        let mut chunked = NeedleIndex::new(width);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut * width.entry_size_bytes() / 3).filter(|&cut| cut < bytes.len()).collect();
        cuts.sort_unstable();
        let mut start = 0;
        for end in cuts.into_iter().chain([bytes.len()]) {
            if end >= start {
                let outcome = chunked.apply(&bytes[start..end]);
                start += outcome.consumed_bytes;
            }
        }
        prop_assert_eq!(chunked.applied_bytes(), bytes.len() as u64);
        for index in [&whole, &chunked] {
            for id in (0u64..600).map(|id| id * 7919).chain([1, u64::MAX]) {
                let found = index.get(id).map(|value| (value.offset_bytes, value.size));
                prop_assert_eq!(found, model.live.get(&id).copied(), "id {}", id);
                prop_assert_eq!(index.is_deleted(id), model.deleted.contains(&id), "id {} deleted", id);
            }
            prop_assert_eq!(index.live_count(), model.live.len());
            let mut listed: Vec<(u64, (u64, u32))> = index.iter().map(|(id, value)| (id, (value.offset_bytes, value.size))).collect();
            listed.sort_unstable();
            let mut expected: Vec<(u64, (u64, u32))> = model.live.iter().map(|(&id, &value)| (id, value)).collect();
            expected.sort_unstable();
            prop_assert_eq!(listed, expected);
        }
    }
}

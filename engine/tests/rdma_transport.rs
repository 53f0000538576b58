//! The UCX transport end to end: a real exporter (`rdma::export::spawn`) and a real
//! `RemoteReads`, separate UCX contexts, real volume files (SeaweedFS fixtures and generated
//! volumes) in temp dirs. Every needle read over RDMA is compared byte for byte with
//! `LocalVolume::read_checked`. Faults (exporters killed or stopped) are in `rdma_faults.rs`,
//! cancel and the floor target in `rdma_control.rs`, peer admission in `rdma_security.rs`.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use common::*;
use rdma_engine::rdma::{ucx_shared_memory_settings, REGISTRATION_PIECE_MAX_BYTES};
use shm_layout::entry::{ByteRange, ErrorCode, NeedleRead};
use volume_format::generate::SizePlan;
use volume_format::index::{IndexEntry, OffsetWidth};
use volume_format::writer::{encode_needle, NeedleSpec, VolumeWriter, VolumeWriterOptions, WRITER_VERSION};

fn every_needle_matches(ucx: Vec<(String, String)>) {
    let dir = volume_dir();
    let exporter = spawn_exporter(dir.path(), localhost_any_port(), ucx.clone());
    let mut reader = Reader::new(exporter.local_addr(), ucx);
    let start = Instant::now();
    let mut total = 0;
    for id in 1..=4 {
        assert!(reader.reads.serves(id));
        let local = open_local(dir.path(), id);
        let ok = compare_whole(&mut reader, id, &local);
        if id == 3 {
            assert!(ok < local.index().live_count(), "bitrot needles must fail");
        } else {
            assert_eq!(ok, local.index().live_count(), "volume {id}");
        }
        total += local.index().live_count();
    }
    eprintln!("{total} needles read and compared in {:?}", start.elapsed());
    assert!(!reader.reads.serves(99));

    // Range reads: clamped like HTTP, header checked, gzip flag reported.
    let local = open_local(dir.path(), 4);
    let ids = [1u64, 5, 6, 7];
    let reads: Vec<NeedleRead> = ids
        .iter()
        .enumerate()
        .map(|(slot, &id)| NeedleRead {
            volume_id: 4,
            needle_id: id,
            cookie: cookie_in(&local, id),
            buffer_offset: slot as u64 * 400_000,
            buffer_length: 400_000,
            range: Some(ByteRange { offset: 3, length: 69_000 }),
        })
        .collect();
    let results = reader.run(&reads);
    for (read, result) in reads.iter().zip(results) {
        let record = local.read_checked(read.needle_id, read.cookie).unwrap();
        let parsed = volume_format::needle::NeedleRecord::parse(&record, local.version()).unwrap();
        let data = parsed.data;
        if data.len() <= 3 {
            assert_eq!(result.unwrap_err().0, ErrorCode::RANGE_OUT_OF_BOUNDS);
            continue;
        }
        let done = result.unwrap();
        let expected = &data[3..(3 + 69_000).min(data.len())];
        assert_eq!(done.data_length, expected.len() as u64);
        assert_eq!(reader.bytes(read, 0, done.data_length), expected);
        assert_eq!(done.gzipped, parsed.is_gzipped());
    }

    // Errors: unknown needle, wrong cookie, buffer too small (with the size needed).
    let location = local.locate(7).unwrap();
    let base = NeedleRead {
        volume_id: 4,
        needle_id: 7,
        cookie: cookie_in(&local, 7),
        buffer_offset: 0,
        buffer_length: location.record_size_bytes as u32,
        range: None,
    };
    let reads = [
        NeedleRead { needle_id: 1 << 40, ..base },
        NeedleRead { cookie: base.cookie ^ 1, ..base },
        NeedleRead { buffer_length: 100, ..base },
    ];
    let results = reader.run(&reads);
    assert_eq!(results[0], Err((ErrorCode::NO_SUCH_NEEDLE, 0)));
    assert_eq!(results[1], Err((ErrorCode::COOKIE_MISMATCH, 0)));
    assert_eq!(results[2], Err((ErrorCode::BUFFER_TOO_SMALL, location.record_size_bytes)));
    drop(reader);
    exporter.join().unwrap();
}

#[test]
fn every_needle_matches_over_tcp() {
    every_needle_matches(tcp());
}

#[test]
fn every_needle_matches_over_shared_memory() {
    every_needle_matches(ucx_shared_memory_settings());
}

/// Appends needles `first..first + count` to volume `id` as a volume server would: record to
/// the .dat, then the entry to the .idx.
fn append_needles(dir: &Path, id: u32, first: u64, count: u64) {
    append_needles_with(dir, id, first, count, OffsetWidth::Four);
}

fn append_needles_with(dir: &Path, id: u32, first: u64, count: u64, width: OffsetWidth) {
    let dat_path = dir.join(format!("{id}.dat"));
    let mut dat = std::fs::OpenOptions::new().append(true).open(&dat_path).unwrap();
    let mut idx = std::fs::OpenOptions::new().append(true).open(dir.join(format!("{id}.idx"))).unwrap();
    for needle_id in first..first + count {
        let data = vec![(needle_id % 251) as u8; 1000 + needle_id as usize * 37];
        let spec = NeedleSpec { cookie: 0x1234_0000 | needle_id as u32, needle_id, data: &data, ..Default::default() };
        let record = encode_needle(WRITER_VERSION, &spec).unwrap();
        let offset_bytes = dat.metadata().unwrap().len();
        dat.write_all(&record).unwrap();
        dat.flush().unwrap();
        let size = i32::from_be_bytes(record[12..16].try_into().unwrap());
        let entry = IndexEntry { needle_id, offset_bytes, size }.encode(width).unwrap();
        idx.write_all(&entry).unwrap();
    }
}

/// A reader holds no index of a volume it reads now and then: the exporter looks each
/// needle up (one message), so the first read of a volume costs one lookup, needles appended
/// or deleted on the volume host are seen at once, and only a volume read often has its
/// index pulled (in the background, then kept within the budget).
#[test]
fn volumes_read_now_and_then_are_looked_up_by_the_exporter() {
    let dir = tempfile::tempdir().unwrap();
    for id in 1..=3 {
        generate(dir.path(), id, 300, SizePlan::Cycle(vec![10, 5000, 70_000]), u64::from(id));
    }
    let exporter = spawn_exporter(dir.path(), localhost_any_port(), tcp());
    let mut config = remote_config(exporter.local_addr(), tcp());
    config.index_pull_after_lookups = 0;
    let mut reader = Reader::with_config(config);
    // One needle of each volume: one lookup each, no index held.
    for id in 1..=3 {
        let local = open_local(dir.path(), id);
        let read = whole_reads(id, &local, |needle| cookie_in(&local, needle))[7];
        let before = reader.reads.lookups_sent();
        reader.run(&[read])[0].unwrap();
        let record = local.read_checked(read.needle_id, read.cookie).unwrap();
        assert_eq!(reader.bytes(&read, 0, record.len() as u64), &record[..], "volume {id}");
        assert_eq!(reader.reads.lookups_sent() - before, 1, "volume {id}: one lookup for its first read");
    }
    assert_eq!(reader.reads.index_bytes(), 0, "no index pulled");
    // Every needle, then needles appended after the reader's catalogue: all through lookups.
    for id in 1..=3 {
        let local = open_local(dir.path(), id);
        assert_eq!(compare_whole(&mut reader, id, &local), local.index().live_count(), "volume {id}");
    }
    append_needles(dir.path(), 2, 5000, 5);
    let grown = open_local(dir.path(), 2);
    assert_eq!(compare_whole(&mut reader, 2, &grown), grown.index().live_count(), "appended needles");
    assert_eq!(reader.reads.index_bytes(), 0, "still no index pulled");
    // A delete on the volume host answers DELETED on the next read (no catalogue to wait for).
    let deleted = whole_reads(2, &grown, |needle| cookie_in(&grown, needle))[3];
    let mut idx = std::fs::OpenOptions::new().append(true).open(dir.path().join("2.idx")).unwrap();
    let tombstone = IndexEntry { needle_id: deleted.needle_id, offset_bytes: 0, size: -1 };
    idx.write_all(&tombstone.encode(OffsetWidth::Four).unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(reader.run(&[deleted])[0], Err((ErrorCode::DELETED, 0)));
    drop(reader);

    // By default a volume read often gets its index pulled and then reads without lookups.
    let mut reader = Reader::new(exporter.local_addr(), tcp());
    let local = open_local(dir.path(), 1);
    assert_eq!(compare_whole(&mut reader, 1, &local), local.index().live_count());
    let start = Instant::now();
    while reader.reads.index_bytes() == 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "the index of a volume read often was not pulled");
        reader.reads.progress();
    }
    let before = reader.reads.lookups_sent();
    assert_eq!(compare_whole(&mut reader, 1, &local), local.index().live_count());
    assert_eq!(reader.reads.lookups_sent(), before, "reads of a cached index ask nothing");
    drop(reader);
    exporter.join().unwrap();
}

/// The cached remote indexes stay within their byte budget: three volumes whose indexes do
/// not fit together are read in turn, twice. Every read is byte-exact; the index read least
/// recently is dropped and pulled again by its next read; what stays cached never passes
/// the budget.
#[test]
fn remote_indexes_stay_within_their_budget() {
    let dir = tempfile::tempdir().unwrap();
    for id in 1..=3 {
        generate(dir.path(), id, 2000, SizePlan::Fixed(100), u64::from(id));
    }
    let one_index = open_local(dir.path(), 1).index().memory_bytes();
    let exporter = spawn_exporter(dir.path(), localhost_any_port(), tcp());
    let mut config = remote_config(exporter.local_addr(), tcp());
    // Room for two of the three.
    config.index_budget_bytes = one_index * 5 / 2;
    let budget = config.index_budget_bytes;
    let mut reader = Reader::with_config(config);
    let evictions_before = rdma_engine::metrics::METRICS.remote_index_evictions();
    let mut most = 0;
    for round in 0..2 {
        for id in 1..=3 {
            let local = open_local(dir.path(), id);
            assert_eq!(compare_whole(&mut reader, id, &local), 2000, "round {round}, volume {id}");
            most = most.max(reader.reads.index_bytes());
        }
    }
    assert!(most <= budget, "{most} bytes of cached indexes, over the budget of {budget}");
    assert!(most >= 2 * one_index * 9 / 10, "two indexes stay cached: {most} bytes for {one_index} each");
    // Round 1's third read dropped volume 1's; each read of round 2 dropped the least recent.
    let evictions = rdma_engine::metrics::METRICS.remote_index_evictions() - evictions_before;
    assert_eq!(evictions, 4, "indexes dropped over the budget");
    drop(reader);
    exporter.join().unwrap();
}

#[test]
fn growing_volume_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 5, 20, SizePlan::Fixed(5000), 1);
    let exporter = spawn_exporter(dir.path(), localhost_any_port(), tcp());
    let mut reader = Reader::new(exporter.local_addr(), tcp());
    assert_eq!(compare_whole(&mut reader, 5, &open_local(dir.path(), 5)), 20);
    // Grow past several registration pieces while the reader holds the old catalogue.
    for round in 0..3 {
        append_needles(dir.path(), 5, 1000 + round * 40, 40);
        let local = open_local(dir.path(), 5);
        assert_eq!(compare_whole(&mut reader, 5, &local), local.index().live_count(), "round {round}");
    }
    drop(reader);
    exporter.join().unwrap();
}

#[test]
fn replaced_volume_never_gives_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 6, 100, SizePlan::Cycle(vec![100, 9000, 70_000]), 1);
    let exporter = spawn_exporter(dir.path(), localhost_any_port(), tcp());
    let mut reader = Reader::new(exporter.local_addr(), tcp());
    let old = open_local(dir.path(), 6);
    assert_eq!(compare_whole(&mut reader, 6, &old), 100);
    // Replace the volume (as compaction does: new files renamed over the old ones), with other
    // data, cookies and sizes at the same needle ids.
    let staging = tempfile::tempdir().unwrap();
    generate(staging.path(), 6, 100, SizePlan::Cycle(vec![9000, 70_000, 100, 5]), 2);
    for ext in ["idx", "dat"] {
        std::fs::copy(staging.path().join(format!("6.{ext}")), dir.path().join(format!("6.{ext}.new"))).unwrap();
        std::fs::rename(dir.path().join(format!("6.{ext}.new")), dir.path().join(format!("6.{ext}"))).unwrap();
    }
    let new = open_local(dir.path(), 6);
    // Reads with the new cookies right away: the stale index fails the check, the retry
    // refreshes and reads the new bytes. Never a success with other bytes.
    assert_eq!(compare_whole(&mut reader, 6, &new), 100);
    // Old cookies: clean errors, never the old bytes.
    let reads = whole_reads(6, &new, |id| cookie_in(&old, id));
    for (read, result) in reads.iter().zip(reader.run(&reads)) {
        if cookie_in(&old, read.needle_id) != cookie_in(&new, read.needle_id) {
            assert!(result.is_err(), "needle {} succeeded with a stale cookie", read.needle_id);
        }
    }
    drop(reader);
    exporter.join().unwrap();
}

/// Where 4-byte offsets end: they count 8-byte units.
const FOUR_BYTE_OFFSETS_END_BYTES: u64 = (1 << 32) * 8;

/// A `5BytesOffset` volume (17-byte `.idx` entries), exported with offset width 5: needles the
/// writer appended, and needles past 32 GiB, where the fifth byte matters. The `.dat` is sparse
/// (a hole up to there), so it costs no disk.
#[test]
fn five_byte_offsets_read_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let options = VolumeWriterOptions { offset_width: OffsetWidth::Five, ..Default::default() };
    let mut writer = VolumeWriter::create_in(dir.path(), None, 9, options).unwrap();
    for needle_id in 1..=30u64 {
        let data: Vec<u8> = (0..needle_id * 2311).map(|byte| (byte ^ needle_id) as u8).collect();
        let spec = NeedleSpec { needle_id, cookie: 0x5500 + needle_id as u32, data: &data, ..Default::default() };
        writer.append(&spec).unwrap();
    }
    writer.finish().unwrap();
    let dat = std::fs::OpenOptions::new().write(true).open(dir.path().join("9.dat")).unwrap();
    dat.set_len(FOUR_BYTE_OFFSETS_END_BYTES + 4096).unwrap();
    drop(dat);
    append_needles_with(dir.path(), 9, 1000, 30, OffsetWidth::Five);
    let local = open_local_with(dir.path(), 9, OffsetWidth::Five);
    assert!(local.locate(1000).unwrap().offset_bytes >= FOUR_BYTE_OFFSETS_END_BYTES);

    let mut config = export_config(dir.path(), localhost_any_port(), tcp());
    config.offset_width = OffsetWidth::Five;
    // 1 GiB pieces: 64 KiB ones would make a catalogue of half a million pieces.
    config.piece_size_bytes = REGISTRATION_PIECE_MAX_BYTES;
    let exporter = spawn_exporter_with(config);
    let mut reader = Reader::new(exporter.local_addr(), tcp());
    assert_eq!(compare_whole(&mut reader, 9, &local), 60);
    drop(reader);
    exporter.join().unwrap();
}

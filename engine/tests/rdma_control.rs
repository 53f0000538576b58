//! The read role's controls against a real exporter (in-process, UCX over tcp): `cancel` in
//! each state a read can be in, and `floor_target` driving `ucx::floor::bare_get_loop`.

mod common;

use std::time::Duration;

use common::*;
use shm_layout::entry::{ErrorCode, NeedleRead};
use ucx::floor::{bare_get_loop, FloorConfig};
use ucx::MemoryRegion;
use volume_format::generate::SizePlan;

const VOLUME_ID: u32 = 5;
/// Records of 512 KiB span at least 8 registration pieces of 64 KiB: more than one round of
/// gets (at most 4 in flight per read).
const RECORD_DATA_BYTES: u32 = 512 << 10;
/// What an untouched buffer byte holds.
const SENTINEL: u8 = 0xee;

fn exporter_and_reader() -> (tempfile::TempDir, rdma_engine::rdma::export::ExportHandle, Reader) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), VOLUME_ID, 16, SizePlan::Fixed(RECORD_DATA_BYTES), 11);
    let exporter = spawn_exporter(dir.path(), localhost_any_port(), tcp());
    let mut config = remote_config(exporter.local_addr(), tcp());
    // The index is pulled once the exporter has looked up one needle.
    config.index_pull_after_lookups = 1;
    let reader = Reader::with_config(config);
    (dir, exporter, reader)
}

fn gets_in_flight(reader: &Reader) -> usize {
    reader.reads.floor_target(VOLUME_ID).expect("the volume is served").worker.in_flight()
}

/// Progresses until the volume's index is pulled (the background pull a lookup started).
fn wait_for_the_index(reader: &mut Reader) {
    let start = std::time::Instant::now();
    while reader.reads.index_bytes() == 0 {
        assert!(start.elapsed() < READ_DEADLINE, "the index was not pulled");
        reader.reads.progress();
    }
}

/// A read whose gets are in flight completes CANCELED only once they have landed (the buffer is
/// the engine's until then), and posts none of its later rounds.
#[test]
fn cancel_with_gets_in_flight_completes_once_they_landed() {
    let (dir, exporter, mut reader) = exporter_and_reader();
    let local = open_local(dir.path(), VOLUME_ID);
    // Reads of a cached index go straight to their gets.
    assert_eq!(compare_whole(&mut reader, VOLUME_ID, &local), 16);
    wait_for_the_index(&mut reader);
    let read = whole_reads(VOLUME_ID, &local, |id| cookie_in(&local, id))[3];
    let buffer = read.buffer_offset as usize..(read.buffer_offset + u64::from(read.buffer_length)) as usize;
    reader.area[buffer.clone()].fill(SENTINEL);

    reader.start(7, &read).unwrap();
    assert!(gets_in_flight(&reader) > 0, "the read has no get in flight");
    assert!(reader.reads.cancel(7));
    assert!(reader.reads.poll_completion().is_none(), "canceled before its gets landed");
    assert!(!reader.reads.release_buffer_area(AREA_ID), "area released with gets in flight");

    let (token, result) = reader.next_completion(READ_DEADLINE).expect("the canceled read never completed");
    assert_eq!((token, result), (7, Err((ErrorCode::CANCELED, 0))));
    assert_eq!(gets_in_flight(&reader), 0, "completed with gets still in flight");
    // Only the first round was fetched: the record's last piece never was.
    let tail = &reader.area[buffer.end - (64 << 10)..buffer.end];
    assert!(tail.iter().all(|&byte| byte == SENTINEL), "gets were posted after the cancel");
    assert!(!reader.reads.cancel(7), "a completed read was canceled");

    // The slot and the buffer serve the same read again.
    let result = reader.run(&[read]).remove(0);
    assert!(result.is_ok(), "{result:?}");
    let record = local.read_checked(read.needle_id, read.cookie).unwrap();
    assert_eq!(reader.bytes(&read, 0, record.len() as u64), &record[..]);
    drop(reader);
    exporter.join().unwrap();
}

/// A read waiting for metadata (the exporter's lookup for a fresh reader, or a catalogue
/// answer after an index miss) completes CANCELED at once, without progress; later reads are unaffected.
#[test]
fn cancel_while_waiting_for_metadata_completes_at_once() {
    let (dir, exporter, mut reader) = exporter_and_reader();
    let local = open_local(dir.path(), VOLUME_ID);
    let read = whole_reads(VOLUME_ID, &local, |id| cookie_in(&local, id))[0];

    // A fresh reader holds no index: the read waits for the exporter's lookup.
    reader.start(1, &read).unwrap();
    assert!(reader.reads.cancel(1));
    assert_eq!(reader.reads.poll_completion(), Some((1, Err((ErrorCode::CANCELED, 0)))));

    // Wait for the index, then miss in it: the read waits for a catalogue answer.
    assert!(reader.run(&[read])[0].is_ok());
    wait_for_the_index(&mut reader);
    let unknown = NeedleRead { needle_id: 1 << 40, ..read };
    reader.start(2, &unknown).unwrap();
    assert!(reader.reads.cancel(2));
    assert_eq!(reader.reads.poll_completion(), Some((2, Err((ErrorCode::CANCELED, 0)))));
    assert_eq!(reader.reads.in_flight(), 0);
    assert!(!reader.reads.cancel(2), "a completed read was canceled");

    // The catalogue answer and index pull the canceled reads asked for change nothing.
    assert_eq!(compare_whole(&mut reader, VOLUME_ID, &local), 16);
    assert_eq!(reader.run(&[unknown])[0], Err((ErrorCode::NO_SUCH_NEEDLE, 0)));
    drop(reader);
    exporter.join().unwrap();
}

/// The read timeout runs from when a read's gets are posted, not from the reader's last
/// `progress`: a poller idle for longer than the timeout (it calls `progress` only while reads
/// are pending) must not have its next read taken for a hung peer.
#[test]
fn a_read_after_an_idle_period_is_not_timed_out() {
    // Long enough that no read takes it on a loaded machine.
    let read_timeout = Duration::from_millis(750);
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), VOLUME_ID, 16, SizePlan::Fixed(RECORD_DATA_BYTES), 11);
    let exporter = spawn_exporter(dir.path(), localhost_any_port(), tcp());
    let mut config = remote_config(exporter.local_addr(), tcp());
    config.read_timeout = read_timeout;
    let mut reader = Reader::with_config(config);
    let local = open_local(dir.path(), VOLUME_ID);
    assert_eq!(compare_whole(&mut reader, VOLUME_ID, &local), 16);
    std::thread::sleep(read_timeout * 3 / 2);
    assert_eq!(compare_whole(&mut reader, VOLUME_ID, &local), 16, "a read after an idle period failed");
    assert!(reader.reads.peer_is_up(exporter.local_addr()));
    drop(reader);
    exporter.join().unwrap();
}

#[test]
fn cancel_of_an_unknown_token_is_false() {
    let (_dir, exporter, mut reader) = exporter_and_reader();
    assert!(!reader.reads.cancel(0));
    assert!(!reader.reads.cancel(u64::MAX));
    assert_eq!(reader.reads.in_flight(), 0);
    assert!(reader.reads.poll_completion().is_none());
    drop(reader);
    exporter.join().unwrap();
}

/// `floor_target` hands `bare_get_loop` an exported `.dat`: a short run returns samples, and
/// every slot of the local buffer holds a block of the file. Timing is never asserted.
#[test]
fn floor_target_drives_bare_get_loop() {
    let (dir, exporter, mut reader) = exporter_and_reader();
    assert!(reader.reads.floor_target(99).is_none());
    let config = FloorConfig { size_bytes: 4096, depth: 4, duration: Duration::from_millis(50) };
    let mut local = vec![0u8; config.size_bytes * config.depth];
    let report = {
        let target = reader.reads.floor_target(VOLUME_ID).expect("no floor target for a served volume");
        // SAFETY: `local` outlives the registration (dropped at the end of this block).
        let region =
            unsafe { MemoryRegion::register(reader.reads.context(), local.as_mut_ptr(), local.len()) }.unwrap();
        // SAFETY: nothing else touches `local` during the call; on Ok every get has completed.
        unsafe {
            bare_get_loop(
                target.worker,
                target.endpoint,
                target.remote_address,
                target.remote_length,
                target.rkey,
                &region,
                config,
            )
        }
        .unwrap()
    };
    eprintln!("floor: {} gets, p50 {} ns", report.gets, report.percentile_ns(0.5));
    assert!(report.gets > 0 && !report.latencies_ns.is_empty(), "no samples");
    assert_eq!(report.errors, 0);
    assert!(report.gets * report.size_bytes as u64 > 0, "no bytes");

    let dat = std::fs::read(dir.path().join(format!("{VOLUME_ID}.dat"))).unwrap();
    let blocks: Vec<&[u8]> = dat[..TEST_PIECE_BYTES as usize].chunks_exact(config.size_bytes).collect();
    for slot in local.chunks_exact(config.size_bytes) {
        assert!(blocks.contains(&slot), "a floor get landed bytes that are not the file's");
    }
    // The transport is unharmed.
    let volume = open_local(dir.path(), VOLUME_ID);
    assert_eq!(compare_whole(&mut reader, VOLUME_ID, &volume), 16);
    drop(reader);
    exporter.join().unwrap();
}

//! Test bodies shared by the per-transport test binaries.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ucx::{Error, ErrorMode, GetStarted, MemoryRegion};

use super::*;

const GET_TIMEOUT: Duration = Duration::from_secs(5);
/// A get on a dead peer must fail within this; it must never hang.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// Gets of 8 B, 4 KiB and 1 MiB at several offsets, into registered and unregistered memory.
pub fn gets_at_sizes_and_offsets(config: &'static [(&'static str, &'static str)]) {
    let exporter = spawn_exporter(config, ErrorMode::Peer);
    let reader = connect_reader(config, ErrorMode::Peer, exporter.port, 8, 0);
    assert_eq!(reader.catalogue.length, EXPORT_BYTES as u64);

    let mut local = vec![0u8; 2 << 20];
    // SAFETY: `local` outlives `region` (dropped at the end of this function, after it).
    let region = unsafe { MemoryRegion::register(&reader.context, local.as_mut_ptr(), local.len()) }.unwrap();
    let mut token = 0;
    for size in [8usize, 4096, 1 << 20] {
        for offset in [0, 1, 4093, EXPORT_BYTES - size] {
            for registered in [true, false] {
                token += 1;
                local[..size].fill(0);
                let memh = registered.then_some(&region);
                // SAFETY: local[..size] is only touched again after the completion is popped.
                let started = unsafe {
                    reader.endpoint.get_nbx(
                        local.as_mut_ptr(),
                        size,
                        reader.catalogue.address + offset as u64,
                        &reader.rkey,
                        memh,
                        token,
                    )
                }
                .unwrap();
                if started == GetStarted::InFlight {
                    let status = wait_completion(&reader.worker, token, GET_TIMEOUT);
                    assert!(status.is_ok(), "get {size}@{offset}: {status}");
                }
                assert_pattern(&local[..size], offset);
            }
        }
    }
    finish(reader, exporter);
    drop(region);
}

/// 64 gets in flight at once, all completing through the completion queue; a 65th is refused.
pub fn many_gets_in_flight(config: &'static [(&'static str, &'static str)]) {
    const DEPTH: usize = 64;
    const SIZE: usize = 4096;
    let exporter = spawn_exporter(config, ErrorMode::Peer);
    let reader = connect_reader(config, ErrorMode::Peer, exporter.port, DEPTH, 0);
    let mut local = vec![0u8; DEPTH * SIZE];
    // SAFETY: `local` outlives `region`.
    let region = unsafe { MemoryRegion::register(&reader.context, local.as_mut_ptr(), local.len()) }.unwrap();
    let remote_offset = |slot: usize| slot * 3 * SIZE + 17;

    let mut completed = [false; DEPTH];
    for (slot, done) in completed.iter_mut().enumerate() {
        // SAFETY: each slot's bytes are read only after all completions are popped.
        let started = unsafe {
            reader.endpoint.get_nbx(
                local.as_mut_ptr().add(slot * SIZE),
                SIZE,
                reader.catalogue.address + remote_offset(slot) as u64,
                &reader.rkey,
                Some(&region),
                slot as u64,
            )
        }
        .unwrap();
        *done = started == GetStarted::Completed;
    }
    let in_place = completed.iter().filter(|&&done| done).count();
    assert_eq!(reader.worker.in_flight(), DEPTH - in_place);
    if in_place == 0 {
        // SAFETY: refused before UCX sees the pointer.
        let refused = unsafe {
            reader.endpoint.get_nbx(local.as_mut_ptr(), 8, reader.catalogue.address, &reader.rkey, None, 999)
        };
        assert!(matches!(refused, Err(Error::InFlightLimit { limit: DEPTH })), "{refused:?}");
    }
    reader
        .worker
        .progress_until(GET_TIMEOUT, || {
            while let Some(completion) = reader.worker.pop_completion() {
                assert!(completion.status.is_ok(), "{completion:?}");
                assert!(!completed[completion.token as usize], "token twice");
                completed[completion.token as usize] = true;
            }
            completed.iter().all(|&done| done)
        })
        .unwrap();
    assert_eq!(reader.worker.in_flight(), 0);
    for slot in 0..DEPTH {
        assert_pattern(&local[slot * SIZE..][..SIZE], remote_offset(slot));
    }
    finish(reader, exporter);
    drop(region);
}

/// Gets stalled on a peer that stops progressing and then dies complete with an error within
/// a bound; a get after the failure is refused at once.
pub fn get_on_dead_peer_fails(config: &'static [(&'static str, &'static str)]) {
    let exporter = spawn_exporter(config, ErrorMode::Peer);
    let reader = connect_reader(config, ErrorMode::Peer, exporter.port, 8, 0);
    let mut local = vec![0u8; 4 << 10];
    freeze_exporter(&reader);
    // SAFETY: `local` lives until the end of the function, past the completion below.
    let started = unsafe {
        reader.endpoint.get_nbx(local.as_mut_ptr(), local.len(), reader.catalogue.address, &reader.rkey, None, 7)
    }
    .unwrap();
    // The exporter, frozen, now dies: its endpoint is force-closed and its worker destroyed.
    exporter.stop.store(true, Ordering::Relaxed);
    exporter.thread.join().unwrap();

    assert_eq!(started, GetStarted::InFlight, "a frozen peer cannot have served the get");
    let start = Instant::now();
    let status = wait_completion(&reader.worker, 7, DEAD_PEER_TIMEOUT);
    assert!(!status.is_ok(), "a get on a dead peer must fail");
    reader.worker.progress_until(DEAD_PEER_TIMEOUT, || reader.endpoint.is_failed()).unwrap();
    eprintln!("dead peer detected after {:?}: {:?}", start.elapsed(), reader.endpoint.failure());
    // SAFETY: refused before UCX sees the pointer.
    let refused =
        unsafe { reader.endpoint.get_nbx(local.as_mut_ptr(), 8, reader.catalogue.address, &reader.rkey, None, 8) };
    assert!(matches!(refused, Err(Error::EndpointFailed(_))), "{refused:?}");
    let Reader { rkey, endpoint, .. } = reader;
    drop(rkey);
    endpoint.close().unwrap_or_else(|error| eprintln!("close after failure: {error}"));
    local.fill(0);
}

/// A catalogue reply large enough to travel by rendezvous arrives whole.
pub fn large_active_message(config: &'static [(&'static str, &'static str)]) {
    let exporter = spawn_exporter(config, ErrorMode::Peer);
    // connect_reader checks the reply and strips the padding; 1 MiB forces rendezvous.
    let reader = connect_reader(config, ErrorMode::Peer, exporter.port, 8, 1 << 20);
    assert_eq!(reader.worker.am_messages_dropped(), 0);
    finish(reader, exporter);
}

/// The reader closes first (flush), then the exporter stops.
pub fn finish(reader: Reader, exporter: ExporterHandle) {
    let Reader { rkey, endpoint, worker, context, .. } = reader;
    drop(rkey);
    endpoint.close().unwrap();
    drop(worker);
    drop(context);
    exporter.stop.store(true, Ordering::Relaxed);
    exporter.thread.join().unwrap();
}

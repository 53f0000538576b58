//! The client library's high-level `Reader` against a real engine process: every needle read
//! from many threads at once (whole, ranges, into a caller's buffer, zero-copy) byte for byte
//! as the volume file holds it; and the same `Reader`, attached once, reading on across an
//! engine SIGKILL, SIGTERM and SIGSTOP, and started before its engine.

use integration_tests::{open_volume, Engine};
use nix::sys::signal::{kill, Signal};
use rdma_client::{ErrorCode, FileId, Reader, ReaderOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use volume_format::generate::{generate_volume, GenerateSpec, SizePlan};
use volume_format::index::OffsetWidth;
use volume_format::needle::NeedleRecord;

const VOLUME_ID: u32 = 9;
/// Bounds every wait of these tests: a readiness bound, not a measurement.
const RECOVERY_MAX: Duration = Duration::from_secs(30);

/// Generates the test volume (sizes from empty to past the reader's first 1 MiB buffer)
/// and returns each needle's file id and data.
fn volume(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let spec = GenerateSpec {
        dir: dir.to_path_buf(),
        volume_id: VOLUME_ID,
        count: 36,
        sizes: SizePlan::Cycle(vec![0, 1, 100, 4096, 65_536, 70_001, 1_200_000]),
        seed: 5,
        collection: None,
        offset_width: OffsetWidth::Four,
        overwrite: true,
    };
    let mut fids = Vec::new();
    generate_volume(&spec, &mut |fid| {
        fids.push(fid);
        Ok(())
    })
    .unwrap();
    let local = open_volume(dir, VOLUME_ID);
    fids.into_iter()
        .map(|fid: FileId| {
            let record = local.read_checked(fid.needle_id, fid.cookie).unwrap();
            let data = NeedleRecord::parse(&record, local.version()).unwrap().data.to_vec();
            (fid.to_string(), data)
        })
        .collect()
}

fn options(timeout: Duration) -> ReaderOptions {
    ReaderOptions { timeout, engine_wait: RECOVERY_MAX, ..ReaderOptions::default() }
}

/// Reads needle `index` one of four ways, by `way`; checks the bytes (panics on a wrong one).
fn read_and_check(reader: &Reader, needles: &[(String, Vec<u8>)], index: usize, way: usize) -> Result<(), String> {
    let (fid, data) = &needles[index % needles.len()];
    let got = match way % 4 {
        0 => reader.read_file_id(fid).map_err(|error| error.to_string())?,
        1 if data.len() > 10 => {
            let (offset, length) = (data.len() as u64 / 3, 7_000);
            let part = reader.read_range(fid, offset, length).map_err(|error| error.to_string())?;
            let end = (offset + length).min(data.len() as u64) as usize;
            assert_eq!(part, data[offset as usize..end], "{fid}: range");
            return Ok(());
        }
        2 => {
            let mut buffer = vec![0u8; data.len() + 3];
            let length = reader.read_into(fid, &mut buffer).map_err(|error| error.to_string())?;
            buffer.truncate(length);
            buffer
        }
        _ => reader.read_view(fid).map_err(|error| error.to_string())?.to_vec(),
    };
    assert!(got == *data, "{fid}: {} bytes, want {}", got.len(), data.len());
    Ok(())
}

#[test]
fn every_needle_reads_the_same_every_way_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let needles = Arc::new(volume(dir.path()));
    let engine = Engine::start(&["--volume-dir", dir.path().to_str().unwrap()]);
    let reader = Reader::connect(&engine.socket, options(Duration::from_secs(20))).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let (reader, needles) = (reader.clone(), needles.clone());
            std::thread::spawn(move || {
                for index in 0..needles.len() * 2 {
                    read_and_check(&reader, &needles, index + thread, index / needles.len() + thread).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // The error table as the enum says it.
    let (fid, _) = &needles[3];
    let wrong_cookie = {
        let mut parsed: FileId = fid.parse().unwrap();
        parsed.cookie ^= 1;
        parsed.to_string()
    };
    // Many at once from one thread: every needle (those past the first buffer read again
    // alone), a wrong cookie and a malformed id among them, each answered in its place.
    let mut batch: Vec<&str> = needles.iter().map(|(fid, _)| fid.as_str()).collect();
    batch.insert(5, &wrong_cookie);
    batch.insert(9, "not-a-file-id");
    let views = reader.read_many_views(&batch);
    assert_eq!(views.len(), batch.len());
    let mut expected = needles.iter().map(|(_, data)| data);
    for (index, view) in views.into_iter().enumerate() {
        match index {
            5 => assert_eq!(view.unwrap_err().engine_code(), Some(ErrorCode::COOKIE_MISMATCH)),
            9 => assert!(matches!(view, Err(rdma_client::ReadError::BadFileId(_)))),
            _ => assert!(*view.unwrap() == expected.next().unwrap()[..], "batch entry {index}"),
        }
    }
    let error = reader.read_file_id(&wrong_cookie).unwrap_err();
    assert_eq!(error.engine_code(), Some(ErrorCode::COOKIE_MISMATCH), "{error}");
    assert!(!error.is_retryable());
    let error = reader.read_range(fid, 1 << 40, 10).unwrap_err();
    assert!(error.to_string().contains("not inside it"), "{error}");
    assert!(reader.read_file_id("3,zz").is_err(), "a malformed file id");
    let mut small = [0u8; 2];
    let error = reader.read_into(&needles[6].0, &mut small).unwrap_err();
    assert!(error.to_string().contains("buffer holds 2 bytes"), "{error}");
}

/// The same Reader, attached once, goes on reading through an engine SIGKILL, SIGTERM and
/// SIGSTOP: reads meanwhile wait or fail as retryable, never with wrong bytes, and succeed
/// again once the engine is back. Each new engine takes the reader's region over (same
/// memfd), so a zero-copy view taken before the kill keeps its bytes while new reads land
/// beside it in the same memory.
#[test]
fn a_reader_attached_once_reads_on_across_engine_restarts_and_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let needles = Arc::new(volume(dir.path()));
    let mut engine = Engine::start(&["--volume-dir", dir.path().to_str().unwrap()]);
    let reader = Reader::connect(&engine.socket, options(Duration::from_secs(2))).unwrap();
    let view = reader.read_view(&needles[4].0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (succeeded, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let threads: Vec<_> = (0..6)
        .map(|thread| {
            let (reader, needles, stop) = (reader.clone(), needles.clone(), stop.clone());
            let (succeeded, failed) = (succeeded.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut index = thread;
                while !stop.load(Ordering::Relaxed) {
                    index += 1;
                    match read_and_check(&reader, &needles, index, index / 3) {
                        Ok(()) => succeeded.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let reads_succeed_again = |what: &str| {
        let start = Instant::now();
        let before = succeeded.load(Ordering::Relaxed);
        while succeeded.load(Ordering::Relaxed) < before + 50 {
            assert!(start.elapsed() < RECOVERY_MAX, "reads did not succeed again after {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{what}: reads succeed again {:?} later", start.elapsed());
    };
    reads_succeed_again("the start");
    let region = reader.region_file().expect("attached");
    engine.restart(); // SIGKILL, then a new engine on the same socket
    reads_succeed_again("an engine SIGKILL");
    assert!(engine.wait_for_log("region adopted", RECOVERY_MAX), "{}", engine.log_text());
    assert_eq!(reader.region_file(), Some(region), "the new engine took the same region over");
    assert_eq!(&*view, &needles[4].1[..], "a zero-copy view taken before the SIGKILL");
    kill(engine.pid(), Signal::SIGTERM).unwrap();
    let _ = engine.child.wait();
    engine.restart();
    reads_succeed_again("an engine SIGTERM");
    assert_eq!(reader.region_file(), Some(region), "the region survives a SIGTERM too");
    kill(engine.pid(), Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    kill(engine.pid(), Signal::SIGCONT).unwrap();
    reads_succeed_again("an engine SIGSTOP of 3 s");
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(reader.connected());
    assert_eq!(&*view, &needles[4].1[..], "a zero-copy view taken before the restarts");
    drop(view);
    // Nothing of the buffer area was lost to the restarts (reads the dead engines took
    // were given back once they had exited): all of it can be had again at once.
    let client = reader.pool().expect("attached").client().clone();
    let area = client.description().buffer_size_bytes;
    let whole = client.allocate((area - 64 * 1024) as u32);
    assert!(whole.is_ok(), "the buffer area lost space across the restarts: {whole:?}");
    eprintln!(
        "{} reads succeeded, {} failed to the application (retryable, during the faults)",
        succeeded.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}

/// A Reader started before its engine waits for it (in a pod, containers start in any order).
#[test]
fn a_reader_started_before_its_engine_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let needles = volume(dir.path());
    let engine_dir = tempfile::tempdir().unwrap();
    let socket = engine_dir.path().join("engine.sock");
    let waiting = {
        let socket = socket.clone();
        std::thread::spawn(move || Reader::connect(&socket, options(Duration::from_secs(20))))
    };
    std::thread::sleep(Duration::from_millis(500));
    let _engine = Engine::start_in(engine_dir, &["--volume-dir", dir.path().to_str().unwrap()]);
    let reader = waiting.join().unwrap().expect("the reader waited for its engine");
    assert_eq!(reader.read_file_id(&needles[2].0).unwrap(), needles[2].1);
}

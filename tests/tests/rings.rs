//! The shared region and its rings against a real engine process: NOPs,
//! hostile entries, broken indices, refusals at attach.

use integration_tests::{attach_request, raw_attach, Engine, RawAttachment};
use rdma_client::{AttachOptions, Client, ClientError, ErrorCode, Operation};
use shm_layout::entry::{opcode, Cqe, Sqe};
use shm_layout::header::{fence_reason, region_state};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn client(engine: &Engine) -> Client {
    Client::attach(&engine.socket, &AttachOptions { queue_pairs: 2, sq_entries: 64, ..AttachOptions::default() })
        .expect("attach")
}

#[test]
fn nops_complete_with_their_tags_in_batches_and_after_sleeping() {
    let engine = Engine::start(&["--idle-spin-us", "10"]);
    let client = client(&engine);
    let mut queue_pair = client.take_queue_pair(1).unwrap();
    for round in 0..50u64 {
        for index in 0..32 {
            queue_pair.prepare(Operation::Nop, round * 100 + index).unwrap();
        }
        queue_pair.submit().unwrap();
        let mut seen = Vec::new();
        while seen.len() < 32 {
            queue_pair.wait(1, Duration::from_secs(5)).unwrap();
            while let Some(completion) = queue_pair.reap_one().unwrap() {
                assert_eq!(completion.result(), Ok(0));
                seen.push(completion.tag);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..32).map(|index| round * 100 + index).collect::<Vec<_>>());
        if round % 10 == 0 {
            // Long enough for the engine to go to sleep on the futex: the
            // next submission must wake it.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let stats = client.description().queue_pair_count;
    assert_eq!(stats, 2);
}

#[test]
fn two_queue_pairs_from_two_threads() {
    let engine = Engine::start(&[]);
    let client = client(&engine);
    let threads: Vec<_> = (0..2)
        .map(|index| {
            let mut queue_pair = client.take_queue_pair(index).unwrap();
            std::thread::spawn(move || {
                for tag in 0..2000u64 {
                    queue_pair.prepare(Operation::Nop, tag).unwrap();
                    queue_pair.submit().unwrap();
                    queue_pair.wait(1, Duration::from_secs(5)).unwrap();
                    assert_eq!(queue_pair.reap_one().unwrap().unwrap().tag, tag);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(matches!(client.take_queue_pair(0), Err(ClientError::QueuePairTaken(0))));
}

/// Submits raw entries on queue pair 0 and returns their completions.
fn submit_raw(attachment: &RawAttachment, entries: &[Sqe]) -> Vec<Cqe> {
    // SAFETY: this test is the only client-side user of queue pair 0.
    let (mut sq, mut cq) = unsafe { attachment.view.client_rings(0) };
    for entry in entries {
        sq.push(*entry).unwrap();
    }
    sq.publish();
    let control = attachment.view.queue_control(0);
    if sq.consumer_needs_wakeup(&control.sq_flags, 1) {
        rdma_ipc::futex::wake(&control.sq_tail, 1);
    }
    let mut completions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while completions.len() < entries.len() && Instant::now() < deadline {
        match cq.pop().unwrap() {
            Some(cqe) => completions.push(cqe),
            None => std::thread::sleep(Duration::from_micros(100)),
        }
    }
    cq.release();
    completions
}

fn fill_buffer(attachment: &RawAttachment, byte: u8) {
    let size = attachment.description.buffer_size_bytes;
    let pointer = attachment.view.buffer_range(0, size).unwrap();
    // SAFETY: the whole buffer area of our own mapping; no read is in flight.
    unsafe { std::ptr::write_bytes(pointer.as_ptr(), byte, size as usize) };
}

fn buffer_is_all(attachment: &RawAttachment, byte: u8) -> bool {
    let size = attachment.description.buffer_size_bytes;
    let pointer = attachment.view.buffer_range(0, size).unwrap();
    // SAFETY: as in fill_buffer.
    let bytes = unsafe { std::slice::from_raw_parts(pointer.as_ptr(), size as usize) };
    bytes.iter().all(|&b| b == byte)
}

#[test]
fn bad_entries_get_documented_error_codes_and_write_nothing() {
    let volumes = tempfile::tempdir().unwrap();
    std::fs::copy(integration_tests::fixture("healthy_volume.dat"), volumes.path().join("1.dat")).unwrap();
    std::fs::copy(integration_tests::fixture("healthy_volume.idx"), volumes.path().join("1.idx")).unwrap();
    let engine = Engine::start(&["--volume-dir", volumes.path().to_str().unwrap()]);
    const BUFFER_BYTES: u32 = 8192;
    let attachment = raw_attach(&engine.socket, attach_request(1, 16, 128 * 1024)).unwrap();
    fill_buffer(&attachment, 0xA5);
    let area = attachment.description.buffer_size_bytes;
    let read = |buffer_offset: u64, buffer_length: u32| Sqe {
        opcode: opcode::READ_NEEDLE,
        volume_id: 1,
        needle_id: 4, // 4413 bytes in healthy_volume
        cookie: 0,
        buffer_offset,
        buffer_length,
        ..Sqe::default()
    };
    let cases: Vec<(Sqe, ErrorCode)> = vec![
        (Sqe { opcode: 0, ..Sqe::nop(1) }, ErrorCode::UNKNOWN_OPCODE),
        (Sqe { opcode: 200, ..Sqe::nop(2) }, ErrorCode::UNKNOWN_OPCODE),
        (Sqe { user_data: 3, ..read(area - 10, 4096) }, ErrorCode::BAD_BUFFER),
        (Sqe { user_data: 4, ..read(u64::MAX - 1, 4096) }, ErrorCode::BAD_BUFFER),
        (Sqe { user_data: 5, ..read(0, 0) }, ErrorCode::BAD_LENGTH),
        (Sqe { user_data: 6, flags: 1, ..read(0, BUFFER_BYTES) }, ErrorCode::BAD_RESERVED),
        (
            Sqe {
                user_data: 7,
                opcode: opcode::READ_RANGE,
                range_offset: u64::MAX,
                range_length: 9,
                ..read(0, BUFFER_BYTES)
            },
            ErrorCode::BAD_LENGTH,
        ),
        (Sqe { user_data: 8, volume_id: 99, ..read(0, BUFFER_BYTES) }, ErrorCode::NO_SUCH_VOLUME),
        (Sqe { user_data: 9, cookie: 0xdead_beef, ..read(0, BUFFER_BYTES) }, ErrorCode::COOKIE_MISMATCH),
        (Sqe { user_data: 10, needle_id: 0x7777, ..read(0, BUFFER_BYTES) }, ErrorCode::NO_SUCH_NEEDLE),
        (Sqe { user_data: 11, deadline_ns: 1, ..Sqe::nop(11) }, ErrorCode::DEADLINE_EXCEEDED),
        (Sqe::cancel(14, 12345), ErrorCode::NOTHING_TO_CANCEL),
        (Sqe { user_data: 12, needle_id: 0x12, ..read(0, BUFFER_BYTES) }, ErrorCode::DELETED),
        (Sqe { user_data: 13, needle_id: 0x8, ..read(0, BUFFER_BYTES) }, ErrorCode::BUFFER_TOO_SMALL),
    ];
    let entries: Vec<Sqe> = cases.iter().map(|(sqe, _)| *sqe).collect();
    let completions = submit_raw(&attachment, &entries);
    assert_eq!(completions.len(), cases.len());
    for (sqe, expected) in &cases {
        let cqe = completions.iter().find(|cqe| cqe.user_data == sqe.user_data).expect("completion");
        assert_eq!(cqe.error_code(), Some(*expected), "entry {sqe:?}");
    }
    // The cookie mismatch read the record into its buffer before failing its
    // check; every other case wrote nothing. Check everything past that buffer.
    let tail = attachment.view.buffer_range(BUFFER_BYTES as u64, area - BUFFER_BYTES as u64).unwrap();
    // SAFETY: inside our mapping; nothing is in flight.
    let tail = unsafe { std::slice::from_raw_parts(tail.as_ptr(), (area - BUFFER_BYTES as u64) as usize) };
    assert!(tail.iter().all(|&byte| byte == 0xA5), "the engine wrote outside the named buffers");
}

#[test]
fn garbage_sq_and_broken_indices_fence_only_that_client() {
    let engine = Engine::start(&[]);
    let good = client(&engine);
    let bad = raw_attach(&engine.socket, attach_request(1, 16, 4096)).unwrap();
    fill_buffer(&bad, 0x5A);
    // Garbage over the whole SQ: every entry gets an error completion.
    let garbage: Vec<Sqe> = (0..16u64)
        .map(|index| Sqe {
            opcode: (index as u8).wrapping_mul(37).wrapping_add(5),
            flags: index as u8,
            volume_id: u32::MAX,
            user_data: index,
            needle_id: !index,
            buffer_offset: u64::MAX / (index + 1),
            buffer_length: u32::MAX,
            ..Sqe::default()
        })
        .collect();
    let completions = submit_raw(&bad, &garbage);
    assert_eq!(completions.len(), 16);
    assert!(completions.iter().all(|cqe| cqe.result < 0));
    assert!(buffer_is_all(&bad, 0x5A), "garbage entries must write nothing");
    // Now move the SQ tail far past the ring: the engine fences this client.
    let control = bad.view.queue_control(0);
    let tail = control.sq_tail.load(Ordering::Relaxed);
    control.sq_tail.store(tail.wrapping_add(1000), Ordering::Release);
    rdma_ipc::futex::wake(&control.sq_tail, 1);
    let live = bad.view.live();
    let deadline = Instant::now() + Duration::from_secs(5);
    while live.region_state.load(Ordering::Acquire) != region_state::FENCED && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(live.region_state.load(Ordering::Acquire), region_state::FENCED);
    assert_eq!(live.fence_reason.load(Ordering::Relaxed), fence_reason::SQ_TAIL_INVALID);
    assert!(engine.wait_for_log("client fenced off", Duration::from_secs(2)), "log: {}", engine.log_text());
    // The other client goes on.
    let mut queue_pair = good.take_queue_pair(0).unwrap();
    queue_pair.ping(Duration::from_secs(5)).unwrap();
}

#[test]
fn cq_head_moved_backwards_fences_the_client() {
    let engine = Engine::start(&[]);
    let bad = raw_attach(&engine.socket, attach_request(1, 8, 4096)).unwrap();
    let completions = submit_raw(&bad, &[Sqe::nop(1), Sqe::nop(2)]);
    assert_eq!(completions.len(), 2);
    let control = bad.view.queue_control(0);
    control.cq_head.store(control.cq_head.load(Ordering::Relaxed).wrapping_sub(5), Ordering::Release);
    // The engine reloads the CQ head when its cached view says the CQ is
    // short of room: submit two full SQs without reaping.
    // SAFETY: this test is the only client-side user of queue pair 0.
    let (mut sq, _cq) = unsafe { bad.view.client_rings(0) };
    for round in 0..2u64 {
        for index in 0..8 {
            sq.push(Sqe::nop(round * 8 + index)).unwrap();
        }
        sq.publish();
        rdma_ipc::futex::wake(&control.sq_tail, 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while control.sq_head.load(Ordering::Acquire) != sq.local_tail() && Instant::now() < deadline {
            if bad.view.live().region_state.load(Ordering::Acquire) == region_state::FENCED {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let live = bad.view.live();
    let deadline = Instant::now() + Duration::from_secs(5);
    while live.region_state.load(Ordering::Acquire) != region_state::FENCED && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(live.fence_reason.load(Ordering::Relaxed), fence_reason::CQ_HEAD_INVALID);
}

#[test]
fn attach_refusals_say_what_and_why() {
    let engine = Engine::start(&["--max-queue-pairs", "2", "--max-buffer-mib", "4", "--max-sq-entries", "64"]);
    let cases = [
        (rdma_ipc::control::AttachRequest { layout_version: 999, ..attach_request(1, 8, 4096) }, "layout version 999"),
        (attach_request(3, 8, 4096), "--max-queue-pairs"),
        (attach_request(1, 128, 4096), "--max-sq-entries"),
        (attach_request(1, 8, 8 << 20), "--max-buffer-mib"),
        (attach_request(1, 6, 4096), "power of two"),
        (attach_request(1, 8, 4097), "buffer area size"),
    ];
    for (request, expected) in cases {
        let reason = raw_attach(&engine.socket, request.clone()).expect_err("must be refused");
        assert!(reason.contains(expected), "refusal of {request:?} was {reason:?}");
    }
    let refused = Client::attach(&engine.socket, &AttachOptions { queue_pairs: 9, ..AttachOptions::default() });
    assert!(matches!(refused, Err(ClientError::Refused(_))));
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes one rusage into the pointer it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let micros = |time: libc::timeval| time.tv_sec as u64 * 1_000_000 + time.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// `wait(n)` with fewer than `n` completions ready sleeps on the CQ (it used to spin for the
/// whole timeout).
#[test]
fn waiting_for_more_completions_than_are_ready_sleeps() {
    let engine = Engine::start(&[]);
    let client = client(&engine);
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    queue_pair.prepare(Operation::Nop, 1).unwrap();
    queue_pair.submit().unwrap();
    queue_pair.wait(1, Duration::from_secs(5)).unwrap();
    let cpu_before = thread_cpu_time();
    let waited = queue_pair.wait(2, Duration::from_secs(1));
    let cpu_used = thread_cpu_time() - cpu_before;
    assert!(matches!(waited, Err(ClientError::TimedOut { available: 1, .. })), "{waited:?}");
    assert!(cpu_used < Duration::from_millis(300), "a one-second wait used {cpu_used:?} of CPU: it spun");
    assert_eq!(queue_pair.reap_one().unwrap().map(|completion| completion.tag), Some(1));
}

/// `ping` keeps the completions of other requests for `reap_one` (it used to drop them, and
/// their buffers with them).
#[test]
fn ping_keeps_other_completions() {
    let engine = Engine::start(&[]);
    let client = client(&engine);
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    for tag in 10..13 {
        queue_pair.prepare(Operation::Nop, tag).unwrap();
    }
    queue_pair.submit().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    queue_pair.ping(Duration::from_secs(5)).unwrap();
    let mut tags: Vec<u64> = std::iter::from_fn(|| queue_pair.reap_one().unwrap().map(|c| c.tag)).collect();
    tags.sort();
    assert_eq!(tags, vec![10, 11, 12]);
}

/// A client asleep on its CQ is woken when a completion is published, not when the engine
/// only takes its request: a read that goes to a transport (here the HTTP fallback, to a
/// volume server that accepts and never answers) publishes nothing when it is taken. The
/// engine used to publish and wake at the end of every pass that took entries, so a
/// sleeping client was woken for nothing on every read that did not complete at once.
#[test]
fn a_sleeping_client_is_woken_by_its_completion_not_by_the_engine_taking_the_request() {
    let silent_server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent_server.local_addr().unwrap().to_string();
    let engine = Engine::start(&["--volume-server", &address]);
    let attachment = raw_attach(&engine.socket, attach_request(1, 16, 128 * 1024)).unwrap();
    // SAFETY: this test is the only client-side user of queue pair 0.
    let (mut sq, mut cq) = unsafe { attachment.view.client_rings(0) };
    let control = attachment.view.queue_control(0);
    let wakeups = || attachment.view.stats(0).client_wakeups.load(Ordering::Relaxed);
    // As a client about to sleep on its CQ: NEED_WAKEUP set, the CQ seen empty.
    control.cq_flags.store(shm_layout::queue_pair::cq_flags::NEED_WAKEUP, Ordering::SeqCst);
    let deadline_ns = rdma_ipc::clock::monotonic_ns() + 1_500_000_000;
    sq.push(Sqe {
        opcode: opcode::READ_NEEDLE,
        user_data: 77,
        volume_id: 4242, // not a local volume: the HTTP fallback takes it
        needle_id: 1,
        buffer_length: 4096,
        deadline_ns,
        ..Sqe::default()
    })
    .unwrap();
    sq.publish();
    rdma_ipc::futex::wake(&control.sq_tail, 1);
    let taken = Instant::now() + Duration::from_secs(5);
    while control.sq_head.load(Ordering::Acquire) != 1 {
        assert!(Instant::now() < taken, "the engine never took the request");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The stats are published with the pass that took it; give the engine a few more passes.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(cq.pop().unwrap().map(|cqe| cqe.user_data), None, "the read cannot have completed");
    assert_eq!(wakeups(), 0, "the engine woke a sleeping client although nothing was on its CQ");
    let completed = Instant::now() + Duration::from_secs(10);
    let cqe = loop {
        if let Some(cqe) = cq.pop().unwrap() {
            break cqe;
        }
        assert!(Instant::now() < completed, "no completion after the read's deadline");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(cqe.user_data, 77);
    assert_eq!(cqe.error_code(), Some(ErrorCode::DEADLINE_EXCEEDED), "{cqe:?}");
    let woken = Instant::now() + Duration::from_secs(2);
    while wakeups() != 1 {
        assert!(Instant::now() < woken, "the completion woke {} times, not once", wakeups());
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(silent_server);
}

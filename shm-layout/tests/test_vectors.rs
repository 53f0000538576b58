//! The layout as data, for clients in other languages: every offset and size
//! another process relies on, every constant, sample geometries, and sample
//! entries as bytes, in `shm-layout/test-vectors/layout.json`. Other
//! languages read that file (never a second hand-written description); this
//! test fails when the Rust layout and the committed file disagree.
//!
//! Regenerate after a deliberate layout change (and a LAYOUT_VERSION bump):
//! `UPDATE_TEST_VECTORS=1 cargo test -p shm-layout --test test_vectors`.
#![cfg(not(loom))]

use serde_json::{json, Value};
use shm_layout::entry::{cqe_flags, opcode, Cqe, ErrorCode, Sqe};
use shm_layout::geometry::Geometry;
use shm_layout::header::{
    backing, engine_state, fence_reason, region_state, HeaderLive, RegionDescription, RegionHeader,
};
use shm_layout::queue_pair::{cq_flags, sq_flags, QueueControl, QueuePairStats};
use std::mem::{offset_of, size_of};
use zerocopy::IntoBytes;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-vectors/layout.json");

macro_rules! fields {
    ($type:ty { $($field:ident : $kind:literal),* $(,)? }) => {
        json!({
            "size_bytes": size_of::<$type>(),
            "fields": [$(json!({"name": stringify!($field), "offset": offset_of!($type, $field), "type": $kind})),*],
        })
    };
}

fn structs() -> Value {
    json!({
        "RegionHeader": json!({
            "size_bytes": size_of::<RegionHeader>(),
            "fields": [
                {"name": "description", "offset": offset_of!(RegionHeader, description), "type": "RegionDescription"},
                {"name": "live", "offset": offset_of!(RegionHeader, live), "type": "HeaderLive"},
            ],
        }),
        "RegionDescription": fields!(RegionDescription {
            magic: "u64", layout_version: "u32", header_size_bytes: "u32", region_size_bytes: "u64",
            queue_pair_count: "u32", sq_entries: "u32", cq_entries: "u32", queue_pair_stride_bytes: "u32",
            queue_pairs_offset: "u64", stats_offset: "u64", stats_size_bytes: "u64", buffer_offset: "u64",
            buffer_size_bytes: "u64", engine_generation: "u64", region_id: "u64", engine_pid: "u32",
            client_pid: "u32", page_size_bytes: "u32", backing: "u32",
        }),
        "HeaderLive": fields!(HeaderLive {
            engine_state: "atomic u32", region_state: "atomic u32", fence_reason: "atomic u32",
            heartbeat_ns: "atomic u64",
        }),
        "QueueControl": fields!(QueueControl {
            sq_tail: "atomic u32", sq_head: "atomic u32", sq_flags: "atomic u32",
            cq_tail: "atomic u32", cq_head: "atomic u32", cq_flags: "atomic u32",
        }),
        "QueuePairStats": fields!(QueuePairStats {
            sqes_taken: "atomic u64", cqes_posted: "atomic u64", errors: "atomic u64",
            invalid_entries: "atomic u64", bytes_read: "atomic u64", sleeps: "atomic u64",
            client_wakeups: "atomic u64", in_flight: "atomic u64",
        }),
        "Sqe": fields!(Sqe {
            opcode: "u8", flags: "u8", _reserved: "u16", volume_id: "u32", user_data: "u64", needle_id: "u64",
            cookie: "u32", buffer_length: "u32", buffer_offset: "u64", range_offset: "u64", range_length: "u64",
            deadline_ns: "u64",
        }),
        "Cqe": fields!(Cqe { user_data: "u64", result: "i32", flags: "u32", data_offset: "u64", aux: "u64" }),
    })
}

fn constants() -> Value {
    let error_codes: Vec<Value> = ErrorCode::ALL
        .iter()
        .map(|code| json!({"name": code.name(), "value": code.result(), "meaning": code.describe()}))
        .collect();
    json!({
        "magic": shm_layout::REGION_MAGIC,
        "magic_hex": format!("{:#018x}", shm_layout::REGION_MAGIC),
        "layout_version": shm_layout::LAYOUT_VERSION,
        "page_size_bytes": shm_layout::PAGE_SIZE_BYTES,
        "huge_page_size_bytes": shm_layout::HUGE_PAGE_SIZE_BYTES,
        "opcode": {"NOP": opcode::NOP, "READ_NEEDLE": opcode::READ_NEEDLE, "READ_RANGE": opcode::READ_RANGE, "CANCEL": opcode::CANCEL},
        "cqe_flags": {
            "SOURCE_MASK": cqe_flags::SOURCE_MASK, "SOURCE_NONE": cqe_flags::SOURCE_NONE,
            "SOURCE_LOCAL": cqe_flags::SOURCE_LOCAL, "SOURCE_RDMA": cqe_flags::SOURCE_RDMA, "SOURCE_STREAM": cqe_flags::SOURCE_STREAM,
            "SOURCE_HTTP": cqe_flags::SOURCE_HTTP, "NEEDLE_GZIPPED": cqe_flags::NEEDLE_GZIPPED,
        },
        "sq_flags": {"NEED_WAKEUP": sq_flags::NEED_WAKEUP},
        "cq_flags": {"NEED_WAKEUP": cq_flags::NEED_WAKEUP},
        "backing": {"HUGETLB": backing::HUGETLB, "NORMAL_PAGES": backing::NORMAL_PAGES},
        "engine_state": {"RUNNING": engine_state::RUNNING, "DRAINING": engine_state::DRAINING, "STOPPED": engine_state::STOPPED},
        "region_state": {"ACTIVE": region_state::ACTIVE, "FENCED": region_state::FENCED},
        "fence_reason": {
            "NONE": fence_reason::NONE, "SQ_TAIL_INVALID": fence_reason::SQ_TAIL_INVALID,
            "CQ_HEAD_INVALID": fence_reason::CQ_HEAD_INVALID, "PAGES_LOST": fence_reason::PAGES_LOST,
        },
        "max_buffer_length_bytes": shm_layout::entry::MAX_BUFFER_LENGTH_BYTES,
        "error_codes": error_codes,
    })
}

fn geometries() -> Value {
    let cases = [(1, 2, 4096), (1, 128, 16 << 20), (2, 64, 1 << 20), (4, 1024, 256 << 20)];
    let rows: Vec<Value> = cases
        .iter()
        .map(|&(queue_pairs, sq_entries, buffer_size_bytes)| {
            let geometry = Geometry::new(queue_pairs, sq_entries, buffer_size_bytes).unwrap();
            let per_queue_pair: Vec<Value> = (0..queue_pairs)
                .map(|index| {
                    json!({
                        "queue_control_offset": geometry.queue_control_offset(index),
                        "sq_offset": geometry.sq_offset(index),
                        "cq_offset": geometry.cq_offset(index),
                        "stats_offset": geometry.stats_entry_offset(index),
                    })
                })
                .collect();
            json!({
                "input": {"queue_pairs": queue_pairs, "sq_entries": sq_entries, "buffer_size_bytes": buffer_size_bytes},
                "description_bytes_hex": hex(RegionDescription::new(&geometry).as_bytes()),
                "cq_entries": geometry.cq_entries(),
                "queue_pair_stride_bytes": geometry.queue_pair_stride_bytes,
                "stats_offset": geometry.stats_offset,
                "stats_size_bytes": geometry.stats_size_bytes,
                "buffer_offset": geometry.buffer_offset,
                "region_size_bytes": geometry.region_size_bytes,
                "queue_pairs": per_queue_pair,
            })
        })
        .collect();
    json!(rows)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn entries() -> Value {
    let read = Sqe {
        opcode: opcode::READ_RANGE,
        volume_id: 3,
        user_data: 0x0102_0304_0506_0708,
        needle_id: 0x01,
        cookie: 0x6370_37d6,
        buffer_length: 65536,
        buffer_offset: 4096,
        range_offset: 100,
        range_length: 200,
        deadline_ns: 1_000_000_000,
        ..Sqe::default()
    };
    let done = Cqe {
        user_data: 0x0102_0304_0506_0708,
        result: 200,
        flags: cqe_flags::SOURCE_RDMA | cqe_flags::NEEDLE_GZIPPED,
        data_offset: 4096,
        aux: 0,
    };
    let too_small = Cqe { aux: 70_000, ..Cqe::error(9, ErrorCode::BUFFER_TOO_SMALL) };
    json!([
        {"name": "nop", "sqe_hex": hex(Sqe::nop(42).as_bytes())},
        {"name": "cancel", "sqe_hex": hex(Sqe::cancel(43, 42).as_bytes())},
        {"name": "read_range_3,01637037d6", "sqe_hex": hex(read.as_bytes())},
        {"name": "completion_rdma_gzipped", "cqe_hex": hex(done.as_bytes())},
        {"name": "completion_buffer_too_small", "cqe_hex": hex(too_small.as_bytes())},
    ])
}

fn vectors() -> String {
    let document = json!({
        "about": "shm-layout test vectors: generated by shm-layout/tests/test_vectors.rs; all integers little-endian in shared memory",
        "constants": constants(),
        "structs": structs(),
        "geometries": geometries(),
        "entries": entries(),
    });
    serde_json::to_string_pretty(&document).unwrap() + "\n"
}

#[test]
fn committed_test_vectors_match_the_layout() {
    let generated = vectors();
    if std::env::var_os("UPDATE_TEST_VECTORS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(VECTORS).parent().unwrap()).unwrap();
        std::fs::write(VECTORS, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(VECTORS).unwrap_or_default();
    assert!(
        committed == generated,
        "{VECTORS} does not match the layout; after a deliberate change (with a LAYOUT_VERSION bump) regenerate it with UPDATE_TEST_VECTORS=1"
    );
}

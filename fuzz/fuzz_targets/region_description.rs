//! The region description a client copies out of the header page at attach
//! (`shm_layout::header::RegionDescription::validate`, also `ringstat`'s way in).
//!
//! Input: 128 bytes of description, then up to 8 bytes (little-endian) of mapping size; a
//! missing size is unbounded (`u64::MAX`).
//!
//! What must hold:
//! - no panic;
//! - the description round-trips through its bytes;
//! - validation accepts only a description the engine could have written: the geometry its
//!   counts imply, written back, gives the same bytes in every field the layout defines, and
//!   the region fits the mapping; every queue pair's parts and the buffer area lie inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_layout::entry::Cqe;
use shm_layout::header::RegionDescription;
use zerocopy::{FromBytes, IntoBytes};

fuzz_target!(|data: &[u8]| {
    let Some((description_bytes, rest)) = data.split_first_chunk::<128>() else { return };
    let mapping_size_bytes = rdma_fuzz::trailing_u64_le(rest, u64::MAX);
    let description = RegionDescription::read_from_bytes(description_bytes).expect("128 bytes are one description");
    assert_eq!(description.as_bytes(), description_bytes);

    let Ok(geometry) = description.validate(mapping_size_bytes) else { return };
    assert!(geometry.region_size_bytes <= mapping_size_bytes);
    let written = RegionDescription::new(&geometry);
    // Facts for tools (generation, ids, pids, backing) are free; the layout is not.
    let layout_only = RegionDescription {
        engine_generation: written.engine_generation,
        region_id: written.region_id,
        engine_pid: written.engine_pid,
        client_pid: written.client_pid,
        page_size_bytes: written.page_size_bytes,
        backing: written.backing,
        _reserved: written._reserved,
        ..description
    };
    assert_eq!(layout_only, written, "accepted a layout the engine would not write");
    for index in 0..geometry.queue_pair_count {
        let cq_end = geometry.cq_offset(index) + u64::from(geometry.cq_entries()) * size_of::<Cqe>() as u64;
        assert!(geometry.queue_control_offset(index) < geometry.sq_offset(index));
        assert!(cq_end <= geometry.queue_control_offset(index + 1), "queue pair {index} overlaps the next part");
    }
    assert!(geometry.stats_offset + geometry.stats_size_bytes <= geometry.buffer_offset);
    assert!(geometry.buffer_offset + geometry.buffer_size_bytes <= geometry.region_size_bytes);
});

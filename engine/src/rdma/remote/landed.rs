//! The second half of a read's state machine: every get of a phase has landed. Whole records
//! and range prefixes are checked (`crate::read::check`) before anything completes; a failed
//! check refreshes the catalogue and retries once.

use shm_layout::entry::{ByteRange, ErrorCode};
use volume_format::needle::{DataSpan, NeedleHeader, NeedleMeta};
use volume_format::version::{NEEDLE_HEADER_SIZE_BYTES, TIMESTAMP_SIZE_BYTES};

use super::slots::{Phase, ScratchGet, SCRATCH_APPEND_AT_OFFSET, SCRATCH_META_HEAD_OFFSET, SCRATCH_SLOT_BYTES};
use super::transfer::Transfer;
use super::{ReadDone, RemoteReads};
use crate::read::check::{check_meta, check_range_prefix, check_whole, clamp_range, error_code};

impl RemoteReads {
    /// Every get of the current phase has landed: check and move on.
    pub(super) fn transfer_done(&mut self, index: usize) {
        let slot = &self.slots[index];
        if slot.canceled {
            return self.finish(index, Err((ErrorCode::CANCELED, 0)));
        }
        if let Some(code) = slot.get_failed {
            return self.finish(index, Err((code, 0)));
        }
        match slot.phase {
            Phase::Whole { record_size_bytes } => self.whole_landed(index, record_size_bytes),
            Phase::RangePrefix => self.range_prefix_landed(index),
            Phase::RangeData { length_bytes, span } => self.range_data_landed(index, length_bytes, &span),
        }
    }

    fn whole_landed(&mut self, index: usize, record_size_bytes: u64) {
        let slot = &self.slots[index];
        let (read, version, size) = (slot.read, slot.version, slot.location.size);
        // SAFETY: the record's gets have all completed into this range of the client's
        // registered, validated buffer; nothing of ours writes it while the slice lives (the
        // client may, which can only make its own read fail the check).
        let record = unsafe { std::slice::from_raw_parts(slot.buffer, record_size_bytes as usize) };
        match check_whole(record, version, read.needle_id, read.cookie, size) {
            Ok(checked) => self.finish(
                index,
                Ok(ReadDone {
                    data_offset_in_buffer: checked.data_offset_in_record,
                    data_length: checked.data_length,
                    gzipped: checked.gzipped,
                }),
            ),
            Err(code) => self.check_failed(index, code),
        }
    }

    /// The record prefix is in the scratch: check the header, clamp the range (as HTTP does)
    /// and get the range into the buffer, with the flags byte for the gzip mark.
    fn range_prefix_landed(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let (read, version, size) = (slot.read, slot.version, slot.location.size);
        // SAFETY: the prefix gets into this slot's scratch have all completed.
        let prefix = unsafe { self.scratch.slice(index * SCRATCH_SLOT_BYTES, slot.transfer.length_bytes as usize) };
        let span = match check_range_prefix(prefix, version, read.needle_id, read.cookie, size) {
            Ok(span) => span,
            Err(code) => return self.check_failed(index, code),
        };
        let range = read.range.unwrap_or(ByteRange { offset: 0, length: 0 });
        let (offset_in_record, length_bytes) = match clamp_range(&span, range.offset, range.length) {
            Ok(clamped) => clamped,
            Err(code) => return self.finish(index, Err((code, 0))),
        };
        if length_bytes > u64::from(read.buffer_length) {
            return self.finish(index, Err((ErrorCode::BUFFER_TOO_SMALL, length_bytes)));
        }
        // The meta after the data (gzip mark, TTL) comes with the range, into the scratch.
        let record_offset = slot.location.offset_bytes;
        let ranges = NeedleMeta::ranges(version, size, &span);
        let small_get = |range: &std::ops::Range<u64>, scratch_offset| {
            (range.end > range.start).then_some(ScratchGet {
                remote_offset: record_offset + range.start,
                length_bytes: range.end - range.start,
                scratch_offset,
            })
        };
        slot.meta_gets = [
            small_get(&ranges.head, SCRATCH_META_HEAD_OFFSET),
            ranges.append_at.as_ref().and_then(|range| small_get(range, SCRATCH_APPEND_AT_OFFSET)),
        ];
        slot.phase = Phase::RangeData { length_bytes, span };
        slot.transfer = Transfer::new(record_offset + offset_in_record, length_bytes, slot.buffer);
        self.post_slot(index);
    }

    /// A range and its meta have landed: the needle is served unless its TTL has run out.
    fn range_data_landed(&mut self, index: usize, length_bytes: u64, span: &DataSpan) {
        let slot = &self.slots[index];
        let (version, size, base) = (slot.version, slot.location.size, index * SCRATCH_SLOT_BYTES);
        let ranges = NeedleMeta::ranges(version, size, span);
        let head_length = (ranges.head.end - ranges.head.start) as usize;
        // SAFETY: every get of this slot's phases into its scratch has completed.
        let (prefix, head, append_at) = unsafe {
            (
                self.scratch.slice(base, NEEDLE_HEADER_SIZE_BYTES),
                self.scratch.slice(base + SCRATCH_META_HEAD_OFFSET, head_length),
                ranges
                    .append_at
                    .as_ref()
                    .map(|_| self.scratch.slice(base + SCRATCH_APPEND_AT_OFFSET, TIMESTAMP_SIZE_BYTES)),
            )
        };
        let meta = NeedleHeader::parse(prefix)
            .and_then(|header| NeedleMeta::parse_head(head, append_at, version, header, span))
            .map_err(|error| error_code(&error));
        match meta {
            Err(code) => self.check_failed(index, code),
            Ok(meta) => {
                let result = check_meta(&meta).map(|()| ReadDone {
                    data_offset_in_buffer: 0,
                    data_length: length_bytes,
                    gzipped: meta.is_gzipped(),
                });
                self.finish(index, result.map_err(|code| (code, 0)));
            }
        }
    }

    /// A landed needle failed its check: the index or the catalogue may be stale (volume
    /// compacted or replaced). Refresh and retry once; then fail with the check's code.
    fn check_failed(&mut self, index: usize, code: ErrorCode) {
        let slot = &mut self.slots[index];
        if slot.retried {
            return self.finish(index, Err((code, 0)));
        }
        slot.retried = true;
        slot.refreshed = true;
        slot.files = None;
        self.wait_catalogue(index);
    }
}

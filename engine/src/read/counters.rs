//! What the read service counts: reads by the path that completed them, fallbacks by why.

use crate::metrics::METRICS;
use shm_layout::entry::{cqe_flags, ErrorCode};

/// Errors of a faster path after which the HTTP fallback is tried: the exporter or the file
/// could not be read, or the bytes failed their check after the retry. Answers about the
/// needle itself (missing, deleted, wrong cookie, range) are final.
pub(super) fn falls_back(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::PEER_UNAVAILABLE
            | ErrorCode::IO_ERROR
            | ErrorCode::CRC_MISMATCH
            | ErrorCode::CORRUPT_NEEDLE
            | ErrorCode::NO_SUCH_VOLUME
    )
}

/// Why a read went to the HTTP fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    /// No exporter serves the volume (none configured, none at its host, or it is down).
    NoExporter,
    /// The RDMA or local read failed with this code.
    Failed(ErrorCode),
}

/// How many reads each path completed and why reads fell back, as of now (from the engine's
/// metrics, for the log line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadCounters {
    pub local: u64,
    pub rdma: u64,
    pub stream: u64,
    pub http: u64,
    pub fallback_no_exporter: u64,
    pub fallback_peer_unavailable: u64,
    pub fallback_check_failed: u64,
    pub fallback_other: u64,
}

impl ReadCounters {
    pub fn now() -> ReadCounters {
        let metrics = &METRICS;
        ReadCounters {
            local: metrics.reads(cqe_flags::SOURCE_LOCAL),
            rdma: metrics.reads(cqe_flags::SOURCE_RDMA),
            stream: metrics.reads(cqe_flags::SOURCE_STREAM),
            http: metrics.reads(cqe_flags::SOURCE_HTTP),
            fallback_no_exporter: metrics.fallbacks("no_exporter"),
            fallback_peer_unavailable: metrics.fallbacks("peer_unavailable"),
            fallback_check_failed: metrics.fallbacks("check_failed"),
            fallback_other: metrics.fallbacks("other"),
        }
    }
}

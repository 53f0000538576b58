//! The one routing decision (local → RDMA → HTTP fallback) and starting a read where it
//! goes; see the module docs of [`super`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::counters::{falls_back, FallbackReason};
use super::locate::Known;
use super::routes::{PendingRead, Stage};
use super::{ReadResult, ReadService};
use crate::metrics::METRICS;
use crate::rdma::remote::PeerStatus;
use shm_layout::entry::{cqe_flags, ErrorCode};

/// Where a read goes next.
#[derive(Debug)]
pub(super) enum Decision {
    /// Over RDMA, from this exporter (`None`: whichever announced the volume).
    Rdma(Option<SocketAddr>),
    Wait(Stage),
    Http(Arc<str>, FallbackReason),
    Fail(ErrorCode),
}

/// What routing a read did.
pub(super) enum Routed {
    /// It is in a transport or parked.
    Going,
    /// It is finished: remove it and complete it with this source and result.
    Finished(u32, ReadResult),
}

impl ReadService {
    pub(super) fn can_fall_back(&self) -> bool {
        self.http.is_some() && (self.locator.is_some() || self.volume_server.is_some())
    }

    /// Decides where read `token` goes and starts it there.
    pub(super) fn dispatch(&mut self, token: u64, now: Instant) -> Routed {
        let Some(pending) = self.routes.get_mut(token).map(|pending| *pending) else { return Routed::Going };
        if pending.canceled {
            return Routed::Finished(0, Err((ErrorCode::CANCELED, 0)));
        }
        if now >= pending.deadline {
            return Routed::Finished(0, Err((ErrorCode::DEADLINE_EXCEEDED, 0)));
        }
        let decision = self.decide(&pending, now);
        let stage = match decision {
            Decision::Fail(code) => return Routed::Finished(0, Err((code, 0))),
            Decision::Wait(stage) => stage,
            Decision::Rdma(at) => {
                let Some(remote) = self.remote.as_mut() else {
                    return Routed::Finished(0, Err((ErrorCode::NO_SUCH_VOLUME, 0)));
                };
                if let Err(error) = remote.start_read(token, pending.route.region_id, &pending.read, pending.buffer, at)
                {
                    return self.after_rdma_failure(token, error, now);
                }
                Stage::Rdma
            }
            Decision::Http(server, reason) => {
                let Some(http) = self.http.as_mut() else {
                    return Routed::Finished(0, Err((ErrorCode::NO_SUCH_VOLUME, 0)));
                };
                let started =
                    http.start(token, pending.route.region_id, server, &pending.read, pending.buffer, pending.deadline);
                if let Err(error) = started {
                    return Routed::Finished(cqe_flags::SOURCE_HTTP, Err(error));
                }
                METRICS.count_fallback(reason);
                Stage::Http
            }
        };
        if let Some(pending) = self.routes.get_mut(token) {
            pending.stage = stage;
        }
        Routed::Going
    }

    /// The routing decision (see the module docs).
    fn decide(&mut self, pending: &PendingRead, now: Instant) -> Decision {
        let volume_id = pending.read.volume_id;
        let rdma_allowed = pending.rdma_failure.is_none();
        let reason = pending.rdma_failure.map_or(FallbackReason::NoExporter, FallbackReason::Failed);
        // An exporter that is up and announced the volume: no lookup needed. (A volume that
        // moved is found again when a read of it fails: the location is refreshed then.)
        if let (true, Some(remote)) = (rdma_allowed, self.remote.as_ref()) {
            if remote.serves_up(volume_id) {
                return Decision::Rdma(None);
            }
        }
        if let Some(locator) = self.locator.as_mut() {
            let locations = match locator.locate(volume_id, now) {
                Known::Pending => return Decision::Wait(Stage::Locating),
                Known::Failed(code) => {
                    return match (&self.volume_server, self.http.is_some()) {
                        (Some(server), true) => Decision::Http(server.clone(), reason),
                        _ => Decision::Fail(pending.rdma_failure.unwrap_or(code)),
                    }
                }
                Known::Found(locations) => locations,
            };
            if let (true, Some(remote), Some(port)) = (rdma_allowed, self.remote.as_mut(), self.export_port) {
                for ip in locations.iter().filter_map(|location| location.ip) {
                    let exporter = SocketAddr::new(ip, port);
                    match remote.peer_status(exporter) {
                        Some(PeerStatus::Up) if remote.serves_at(volume_id, exporter) => {
                            return Decision::Rdma(Some(exporter))
                        }
                        Some(PeerStatus::Connecting) => return Decision::Wait(Stage::WaitingPeer(exporter)),
                        None => match remote.add_peer(exporter) {
                            Ok(()) => return Decision::Wait(Stage::WaitingPeer(exporter)),
                            Err(error) => tracing::warn!(%error, "volume served over HTTP instead"),
                        },
                        Some(_) => {}
                    }
                }
            }
            if self.http.is_some() {
                return Decision::Http(locations[0].url.clone(), reason);
            }
            return Decision::Fail(pending.rdma_failure.unwrap_or(ErrorCode::PEER_UNAVAILABLE));
        }
        if let (true, Some(remote)) = (rdma_allowed, self.remote.as_ref()) {
            if remote.serves(volume_id) {
                return Decision::Rdma(None);
            }
        }
        match (&self.volume_server, self.http.is_some()) {
            (Some(server), true) => Decision::Http(server.clone(), reason),
            _ => Decision::Fail(pending.rdma_failure.unwrap_or(ErrorCode::NO_SUCH_VOLUME)),
        }
    }

    /// A local read of `token` ended: done, or (a failure the volume server may not share:
    /// a volume gone, a bad disk, a corrupt record) routed on to RDMA or the HTTP fallback.
    pub(super) fn after_local(&mut self, token: u64, result: ReadResult, now: Instant) -> Routed {
        let can_fall_back = self.can_fall_back();
        let Some(pending) = self.routes.get_mut(token) else { return Routed::Going };
        match result {
            Err((code, _)) if falls_back(code) && can_fall_back && !pending.canceled && !pending.expired => {
                pending.rdma_failure = Some(code);
                pending.stage = Stage::Locating;
                self.dispatch(token, now)
            }
            _ => Routed::Finished(cqe_flags::SOURCE_LOCAL, result),
        }
    }

    /// An RDMA read of `token` failed with `error`: fall back to HTTP when that may help.
    pub(super) fn after_rdma_failure(&mut self, token: u64, error: (ErrorCode, u64), now: Instant) -> Routed {
        let can_fall_back = self.can_fall_back();
        let Some(pending) = self.routes.get_mut(token) else { return Routed::Going };
        if pending.canceled || pending.expired || !falls_back(error.0) || !can_fall_back {
            let source = self.remote.as_ref().map_or(cqe_flags::SOURCE_RDMA, |remote| remote.source());
            return Routed::Finished(source, Err(error));
        }
        pending.rdma_failure = Some(error.0);
        pending.stage = Stage::Locating;
        let volume_id = pending.read.volume_id;
        if let Some(locator) = self.locator.as_mut() {
            locator.invalidate(volume_id);
        }
        self.dispatch(token, now)
    }
}

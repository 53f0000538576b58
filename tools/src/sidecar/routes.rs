//! Which handler answers which request, and the counting around it.

use super::http::{Method, Reply, RequestView, Served};
use super::pool::ReadPool;
use super::stats::{Outcome, Stats};
use super::{mount, volume_api};
use std::time::Instant;

/// What every HTTP worker shares.
#[derive(Debug)]
pub struct State {
    pub pool: ReadPool,
    pub stats: Stats,
}

/// The route's name for the counters, and the answer.
pub fn dispatch(state: &State, request: &RequestView) -> (&'static str, Served) {
    match (request.path.as_str(), request.method) {
        ("/health", Method::Get | Method::Head) => ("health", Served::plain(mount::health(&state.pool, request))),
        ("/read", Method::Get) => ("read", mount::read(&state.pool, request)),
        ("/cleanup", Method::Delete | Method::Get) => ("cleanup", Served::plain(mount::cleanup())),
        ("/stats", Method::Get) => {
            ("stats", Served::plain(Reply::json(200, &state.stats.json(state.pool.connected()))))
        }
        ("/metrics", Method::Get) => {
            let mut reply = Reply::new(200);
            reply.set("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8");
            reply.body = state.stats.prometheus_text().into_bytes().into();
            ("metrics", Served::plain(reply))
        }
        (_, Method::Get | Method::Head) => ("fid", volume_api::serve(&mut state.pool.reader(), request)),
        _ => (
            "other",
            Served::failed(Reply::text(405, "rdma-sidecar serves GET and HEAD (and DELETE /cleanup)"), "METHOD"),
        ),
    }
}

/// Answers one request and counts it.
pub fn handle(state: &State, request: &RequestView) -> Reply {
    let start = Instant::now();
    let in_flight = state.stats.start();
    let (route, Served { reply, source, error }) = dispatch(state, request);
    drop(in_flight);
    let (status, body_bytes, latency) = (reply.status, reply.body.len() as u64, start.elapsed());
    state.stats.record(&Outcome { route, status, source, body_bytes, error, latency });
    reply
}

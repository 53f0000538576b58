//! Which handler answers which request, and the counting around it.

use super::http::{Method, Reply, RequestView, Served};
use super::stats::{Outcome, Stats};
use super::{mount, volume_api};
use rdma_client::Reader;
use std::time::Instant;

/// What every HTTP worker shares.
#[derive(Debug)]
pub struct State {
    pub reader: Reader,
    pub stats: Stats,
}

/// When a request's reads must end: the reader's timeout (`--timeout-ms`) from now.
fn deadline(state: &State) -> Instant {
    Instant::now() + state.reader.timeout()
}

/// The route's name for the counters, and the answer.
pub fn dispatch(state: &State, request: &RequestView) -> (&'static str, Served) {
    // A poll of the engine's socket: asked only by the routes that report it. (A read holds
    // no pool beyond its EngineReader: a request holding the pool of a dead engine would
    // keep the buffers of that engine's unanswered reads from being freed.)
    let connected = || state.reader.connected();
    match (request.path.as_str(), request.method) {
        ("/health", Method::Get | Method::Head) => {
            let lanes = state.reader.pool().map_or(0, |pool| pool.lane_count());
            ("health", Served::plain(mount::health(connected(), lanes, request)))
        }
        // A read waits for an engine (up to its deadline) while none is attached, and is
        // submitted once more on the next engine when its engine went away under it.
        ("/read", Method::Get) => match state.reader.engine_reader(deadline(state)) {
            Ok(mut reader) => ("read", mount::read(&mut reader, request)),
            Err(error) => ("read", mount::failed(&error)),
        },
        ("/cleanup", Method::Delete | Method::Get) => ("cleanup", Served::plain(mount::cleanup())),
        ("/stats", Method::Get) => ("stats", Served::plain(Reply::json(200, &state.stats.json(connected())))),
        ("/metrics", Method::Get) => {
            let mut reply = Reply::new(200);
            reply.set("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8");
            reply.body = state.stats.prometheus_text().into_bytes().into();
            ("metrics", Served::plain(reply))
        }
        (_, Method::Get | Method::Head) => match state.reader.engine_reader(deadline(state)) {
            Ok(mut reader) => ("fid", volume_api::serve(&mut reader, request)),
            Err(error) => ("fid", Served::failed(volume_api::error_reply(&error, request.method), error.label())),
        },
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

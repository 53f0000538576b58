//! Which handler answers which request, and the translation between
//! `tiny_http` and the sidecar's own request/reply types.

use super::http::{Method, Reply, RequestView, Served};
use super::pool::ReadPool;
use super::stats::{Outcome, Stats};
use super::{mount, volume_api};
use std::io::Cursor;
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
        ("/health", Method::Get | Method::Head) => ("health", Served::plain(mount::health(&state.pool))),
        ("/read", Method::Get) => ("read", mount::read(&state.pool, request)),
        ("/cleanup", Method::Delete | Method::Get) => ("cleanup", Served::plain(mount::cleanup())),
        ("/stats", Method::Get) => {
            ("stats", Served::plain(Reply::json(200, &state.stats.json(state.pool.connected()))))
        }
        ("/metrics", Method::Get) => {
            let mut reply = Reply::new(200);
            reply.set("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8");
            reply.body = state.stats.prometheus_text().into_bytes();
            ("metrics", Served::plain(reply))
        }
        (_, Method::Get | Method::Head) => ("fid", volume_api::serve(&mut state.pool.reader(), request)),
        _ => (
            "other",
            Served::failed(Reply::text(405, "rdma-sidecar serves GET and HEAD (and DELETE /cleanup)"), "METHOD"),
        ),
    }
}

fn method_of(method: &tiny_http::Method) -> Method {
    match method {
        tiny_http::Method::Get => Method::Get,
        tiny_http::Method::Head => Method::Head,
        tiny_http::Method::Delete => Method::Delete,
        _ => Method::Other,
    }
}

fn view_of(request: &tiny_http::Request) -> RequestView {
    let headers = request
        .headers()
        .iter()
        .map(|header| (header.field.as_str().as_str().to_string(), header.value.as_str().to_string()))
        .collect();
    RequestView::new(method_of(request.method()), request.url(), headers)
}

fn response_of(reply: Reply) -> tiny_http::Response<Cursor<Vec<u8>>> {
    let length = if reply.chunked { None } else { Some(reply.head_length.unwrap_or(reply.body.len() as u64) as usize) };
    let headers = reply
        .headers()
        .iter()
        .filter_map(|(name, value)| tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok())
        .collect();
    // Never switch to chunked on size: the volume server sends a length.
    tiny_http::Response::new(reply.status.into(), headers, Cursor::new(reply.body), length, None)
        .with_chunked_threshold(usize::MAX)
}

/// Serves requests from `server` until it is closed.
pub fn worker(state: &State, server: &tiny_http::Server) {
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "HTTP worker stops");
                return;
            }
        };
        let start = Instant::now();
        let in_flight = state.stats.start();
        let view = view_of(&request);
        let (route, served) = dispatch(state, &view);
        let Served { reply, source, error } = served;
        let (status, body_bytes) = (reply.status, reply.body.len() as u64);
        // A client that went away is not the sidecar's failure.
        let _ = request.respond(response_of(reply));
        drop(in_flight);
        let latency = start.elapsed();
        state.stats.record(&Outcome { route, status, source, body_bytes, error, latency });
    }
}

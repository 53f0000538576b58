//! The protocol `weed mount -rdma.*` spoke to its sidecar (SeaweedFS until
//! 2026-08): `GET /health`, `GET /read`, `DELETE /cleanup`. `/read` answers
//! with the content bytes themselves (never JSON metadata, which a mount
//! would copy into the user's file), status 200 meaning success.

use super::http::{Method, Reply, RequestView, Served};
use super::volume_api;
use rdma_client::reader::content::{self, Content, ReadError};
use rdma_client::ErrorCode;
use volume_format::file_id::FileId;

/// `GET /health`: `200` while an engine is attached, `503` (`"connected": false`) while none
/// is: a readiness probe, and what a mount takes as "read without the sidecar for now" (the
/// sidecar attaches again by itself when the engine is back: `rdma_client::Reader`).
/// `?probe=liveness` answers `200` whenever the sidecar serves HTTP, engine or not: a
/// liveness probe must not restart a sidecar that only waits for its engine.
/// (`?require=connected`, the readiness form before `/health` itself became one, is the same
/// as `/health`.)
pub fn health(connected: bool, lanes: usize, request: &RequestView) -> Reply {
    let liveness = request.query("probe") == "liveness";
    let word = if connected { "healthy" } else { "unhealthy" };
    let status = if connected || liveness { 200 } else { 503 };
    Reply::json(
        status,
        &serde_json::json!({
            "status": word,
            "rdma": { "enabled": true, "connected": connected },
            "queue_pairs": lanes,
        }),
    )
}

/// `DELETE /cleanup?temp_file=...`: nothing to clean, `/read` never writes a file.
pub fn cleanup() -> Reply {
    Reply::text(200, "nothing to clean: rdma-sidecar sends the data in the response body, never in a file")
}

/// What `/read` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadQuery {
    pub file_id: FileId,
    pub offset: u64,
    /// 0: to the end.
    pub size: u64,
}

/// A query parameter as an unsigned decimal, "" meaning 0.
fn unsigned(request: &RequestView, name: &str) -> Result<u64, String> {
    let text = request.query(name);
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<u64>().map_err(|_| format!("{name}={text:?} is not an unsigned decimal number"))
}

/// Checks `/read`'s parameters; the error is the one line to answer with.
pub fn parse_read_query(request: &RequestView) -> Result<ReadQuery, String> {
    let fid = request.query("file_id");
    if fid.is_empty() {
        return Err("missing file_id (expected like file_id=3,01637037d6)".into());
    }
    let file_id = FileId::parse_url_path(fid).map_err(|error| error.to_string())?;
    let offset = unsigned(request, "offset")?;
    let size = unsigned(request, "size")?;
    let volume_server = request.query("volume_server");
    if !volume_server.is_empty() && !volume_server.starts_with("http://") && !volume_server.starts_with("https://") {
        return Err(format!("volume_server={volume_server:?} is not an http:// or https:// URL"));
    }
    Ok(ReadQuery { file_id, offset, size })
}

/// `GET /read`: exactly the bytes asked for, or a non-200 with one line.
pub fn read(reader: &mut dyn content::SubmitRead, request: &RequestView) -> Served {
    let query = match parse_read_query(request) {
        Ok(query) => query,
        Err(line) => return Served::failed(Reply::text(400, &line), "BAD_QUERY"),
    };
    let range = match (query.offset, query.size) {
        (0, 0) => None,
        (offset, 0) => Some((offset, None)),
        (offset, size) => Some((offset, Some(size))),
    };
    match content::read_content(reader, query.file_id, range) {
        Ok(content) => {
            let source = Some(content.source);
            Served { reply: data_reply(content), source, error: None }
        }
        Err(error) => Served::failed(error_reply(&error), error.label()),
    }
}

fn data_reply(content: Content) -> Reply {
    let mut reply = Reply::new(200);
    reply.set("Content-Type", "application/octet-stream");
    reply.set("X-RDMA-Used", "true");
    reply.set("X-Source", content.source.name());
    reply.body = content.data.into();
    reply
}

/// `/read`'s answer to a read that could not be made.
pub fn failed(error: &ReadError) -> Served {
    Served::failed(error_reply(error), error.label())
}

fn error_reply(error: &ReadError) -> Reply {
    let status = match error {
        ReadError::RangeNotSatisfiable { .. } => 416,
        _ => match error.engine_code() {
            Some(
                ErrorCode::NO_SUCH_NEEDLE | ErrorCode::DELETED | ErrorCode::COOKIE_MISMATCH | ErrorCode::NO_SUCH_VOLUME,
            ) => 404,
            _ => volume_api::error_reply(error, Method::Get).status,
        },
    };
    Reply::text(status, &error.to_string())
}

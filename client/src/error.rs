use shm_layout::entry::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Control(#[from] rdma_ipc::control::ControlError),
    #[error("the engine refused to attach: {0}")]
    Refused(String),
    #[error("the engine answered with a message that does not fit the request")]
    UnexpectedResponse,
    #[error(transparent)]
    Mapping(#[from] rdma_ipc::mapping::MappingError),
    #[error("the region the engine handed over is not usable: {0}")]
    BadRegion(String),
    #[error("queue pair {index} does not exist (the region has {count})")]
    NoSuchQueuePair { index: u32, count: u32 },
    #[error("queue pair {0} is already taken")]
    QueuePairTaken(u32),
    #[error("no room for a {length_bytes}-byte buffer in the buffer area")]
    OutOfBufferSpace { length_bytes: u32 },
    #[error("the SQ is full; submit and reap before preparing more")]
    SubmissionQueueFull,
    #[error("{0} requests are already in flight, the most this queue pair tracks")]
    TooManyInFlight(u32),
    #[error("the buffer belongs to another client")]
    ForeignBuffer,
    #[error("the engine broke the ring protocol: {0}")]
    EngineProtocol(String),
    #[error("the engine fenced this client off: {0}")]
    Fenced(&'static str),
    #[error("the engine stopped (shutdown); no more completions will come")]
    EngineStopped,
    #[error("the engine's control connection closed: the engine is gone")]
    EngineGone,
    #[error("timed out after {waited_ms} ms waiting for {wanted} completions ({available} available)")]
    TimedOut { waited_ms: u64, wanted: u32, available: u32 },
    #[error(
        "this attachment's region was handed to another engine (Client::reattach); use the client that call returned"
    )]
    Retired,
    #[error("a lock inside the client was poisoned by a panic")]
    Poisoned,
}

/// A completion that carries an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompletionError {
    /// A documented error code; `needed_bytes` is set for `BUFFER_TOO_SMALL`.
    #[error("{code}")]
    Engine { code: ErrorCode, needed_bytes: u64 },
    #[error("the engine returned result {0}, which is not a documented code")]
    Unknown(i32),
}

//! The sidecar's attachment to its engine, kept up. When the engine goes away (restarted,
//! killed, its socket closed), a keeper thread attaches again every [`RETRY_INTERVAL`] and
//! swaps the new read pool in: requests meanwhile fail at once with 503 ("the engine
//! connection is lost"), never hang, and are served again as soon as the new engine answers.
//! A sidecar started before its engine waits for it, at most [`ENGINE_WAIT`], saying so once.

use super::pool::ReadPool;
use super::SidecarError;
use rdma_client::{AttachOptions, Client};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often a lost engine is attached again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How long a sidecar started before its engine waits for it.
pub const ENGINE_WAIT: Duration = Duration::from_secs(60);

/// The read pool of the engine attached now, if any, and how to attach again.
#[derive(Debug)]
pub struct Attachment {
    pool: RwLock<Option<Arc<ReadPool>>>,
    socket: PathBuf,
    options: AttachOptions,
    timeout: Duration,
}

impl Attachment {
    /// Attaches (waiting for the engine at most [`ENGINE_WAIT`]) and starts the keeper thread.
    pub fn start(socket: PathBuf, options: AttachOptions, timeout: Duration) -> Result<Arc<Attachment>, SidecarError> {
        let attachment = Attachment { pool: RwLock::new(None), socket, options, timeout };
        let deadline = Instant::now() + ENGINE_WAIT;
        let mut said = false;
        // Bounded by the deadline.
        let pool = loop {
            match attachment.attach() {
                Ok(pool) => break pool,
                Err(error) if Instant::now() < deadline => {
                    if !said {
                        tracing::warn!(socket = %attachment.socket.display(), %error, wait_s = ENGINE_WAIT.as_secs(), "waiting for the engine");
                        said = true;
                    }
                    std::thread::sleep(RETRY_INTERVAL);
                }
                Err(error) => return Err(error),
            }
        };
        if said {
            tracing::info!(socket = %attachment.socket.display(), "attached to the engine");
        }
        attachment.replace(Some(Arc::new(pool)));
        let attachment = Arc::new(attachment);
        let keeper = attachment.clone();
        std::thread::Builder::new()
            .name("sidecar-attach".into())
            .spawn(move || keeper.keep())
            .map_err(SidecarError::Threads)?;
        Ok(attachment)
    }

    /// The engine's read pool now; `None` while no engine is attached.
    pub fn current(&self) -> Option<Arc<ReadPool>> {
        self.pool.read().ok().and_then(|pool| pool.clone())
    }

    fn attach(&self) -> Result<ReadPool, SidecarError> {
        let client = Client::attach(&self.socket, &self.options)
            .map_err(|error| SidecarError::Attach { socket: self.socket.clone(), error })?;
        ReadPool::start(client, self.timeout).map_err(SidecarError::Pool)
    }

    /// Swaps the pool; the old one is dropped here, outside the lock (its lanes end once
    /// their reads have failed or landed).
    fn replace(&self, pool: Option<Arc<ReadPool>>) {
        let old = match self.pool.write() {
            Ok(mut held) => std::mem::replace(&mut *held, pool),
            Err(_) => pool,
        };
        drop(old);
    }

    /// Watches the engine; attaches again when it is gone. Runs for the process's life.
    fn keep(&self) {
        let mut failures = 0u64;
        loop {
            std::thread::sleep(RETRY_INTERVAL);
            if self.current().is_some_and(|pool| pool.connected()) {
                continue;
            }
            if self.current().is_some() {
                tracing::warn!(socket = %self.socket.display(), "the engine is gone; attaching again every {RETRY_INTERVAL:?}");
                self.replace(None);
            }
            match self.attach() {
                Ok(pool) => {
                    tracing::info!(socket = %self.socket.display(), after_failures = failures, "attached to the engine again");
                    failures = 0;
                    self.replace(Some(Arc::new(pool)));
                }
                Err(error) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::info!(%error, failures, "no engine to attach to yet");
                    }
                }
            }
        }
    }
}

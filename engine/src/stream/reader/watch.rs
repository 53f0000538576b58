//! Waking a sleeping poller when an exporter's bytes arrive. The poller cannot sleep on
//! sockets and on its clients' SQ futexes in one wait, so a `stream-watch` thread does the
//! socket half: while the poller sleeps with stream reads in flight it waits in `epoll`
//! (level-triggered) on every connection, and rings the poller's doorbell when one is
//! readable. It waits only while armed, and the poller arms it just before it sleeps, so a
//! busy poller pays nothing for it (it receives while it spins), and an idle one is woken by
//! the first byte of a reply.
//!
//! No arrival is missed: the poller arms after it read its doorbell word and before it
//! sleeps; bytes that arrive after the arm make epoll return and the doorbell ring (the wait
//! then returns at once), and bytes that arrived before are still in the socket, which
//! level-triggered epoll reports at once.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use rdma_ipc::futex;

use crate::read::http::Waker;

/// Longest one wait of the watch thread: bounds how late it notices that it should stop.
const WAIT_SLICE: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Shared {
    /// 1 while the poller sleeps and wants to hear of readable sockets (a futex word).
    armed: AtomicU32,
    stop: AtomicBool,
    epoll: Epoll,
}

/// The watch thread and what it shares with the poller.
#[derive(Debug)]
pub(super) struct SocketWatch {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SocketWatch {
    pub fn start(wake: Waker) -> std::io::Result<SocketWatch> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        let shared = Arc::new(Shared { armed: AtomicU32::new(0), stop: AtomicBool::new(false), epoll });
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new().name("stream-watch".into()).spawn(move || watch(&thread_shared, &wake))?;
        Ok(SocketWatch { shared, thread: Some(thread) })
    }

    /// Watches a connection's socket (until it is closed: the kernel drops it from the set).
    pub fn add(&self, socket: BorrowedFd<'_>) -> std::io::Result<()> {
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        self.shared.epoll.add(socket, EpollEvent::new(flags, 0)).map_err(std::io::Error::from)
    }

    /// The poller is about to sleep with reads in flight: ring its doorbell when a socket is
    /// readable.
    pub fn arm(&self) {
        if self.shared.armed.swap(1, Ordering::SeqCst) == 0 {
            futex::wake(&self.shared.armed, 1);
        }
    }
}

impl Drop for SocketWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.armed.store(1, Ordering::SeqCst);
        futex::wake(&self.shared.armed, 1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared, wake: &Waker) {
    let mut events = [EpollEvent::empty(); 1];
    let slice = EpollTimeout::try_from(WAIT_SLICE).unwrap_or(EpollTimeout::NONE);
    // Bounded per pass by WAIT_SLICE; ends when the poller drops the watch.
    while !shared.stop.load(Ordering::Acquire) {
        if shared.armed.load(Ordering::SeqCst) == 0 {
            futex::wait(&shared.armed, 0, WAIT_SLICE);
            continue;
        }
        match shared.epoll.wait(&mut events, slice) {
            Ok(0) => {}
            Ok(_) => {
                shared.armed.store(0, Ordering::SeqCst);
                wake();
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(error) => {
                tracing::warn!(%error, "the stream transport's socket watch failed; the poller wakes at its heartbeat instead");
                shared.armed.store(0, Ordering::SeqCst);
                thread::sleep(WAIT_SLICE);
            }
        }
    }
}

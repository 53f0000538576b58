//! Shared test rig: an exporter that registers a patterned buffer and answers a catalogue
//! request over active messages, and a reader that connects and unpacks the rkey.
//! Real UCX, no mocks; the transport is chosen per context with `Context::with_config`.
#![allow(dead_code)]

pub mod scenarios;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ucx::{Context, Endpoint, ErrorMode, Features, Listener, MemoryRegion, RemoteKey, Worker, WorkerConfig};

/// Reader → exporter: "send me your catalogue". Exporter → reader: the answer.
pub const AM_CATALOGUE_REQUEST: u16 = 1;
pub const AM_CATALOGUE: u16 = 2;
/// Reader → exporter: stop progressing (simulates a hung peer), then the test kills it.
pub const AM_FREEZE: u16 = 3;
/// Exporter → reader: "frozen": from now on it does not progress, so no get can finish.
pub const AM_FROZEN: u16 = 4;

pub const EXPORT_BYTES: usize = 4 << 20;
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn pattern(index: usize) -> u8 {
    (index ^ (index >> 8) ^ (index >> 16) ^ 0x5a) as u8
}

pub fn features() -> Features {
    Features::RMA | Features::AM | Features::WAKEUP
}

/// What the exporter tells the reader: where its buffer is and the key to read it.
pub struct Catalogue {
    pub address: u64,
    pub length: u64,
    pub rkey: Vec<u8>,
}

impl Catalogue {
    fn header(address: u64, length: u64) -> Vec<u8> {
        [address.to_le_bytes(), length.to_le_bytes()].concat()
    }

    fn parse(header: &[u8], payload: &[u8]) -> Catalogue {
        assert_eq!(header.len(), 16, "catalogue header");
        Catalogue {
            address: u64::from_le_bytes(header[..8].try_into().unwrap()),
            length: u64::from_le_bytes(header[8..].try_into().unwrap()),
            rkey: payload.to_vec(),
        }
    }
}

/// How the exporter thread ends.
pub struct ExporterHandle {
    pub port: u16,
    pub stop: Arc<AtomicBool>,
    pub thread: thread::JoinHandle<()>,
}

/// Runs an exporter on a thread: listens on 127.0.0.1:0, accepts one reader, answers its
/// catalogue request with `extra_payload_bytes` of padding appended to the rkey when asked
/// (to force a rendezvous message), and keeps progressing event-driven until `stop`.
pub fn spawn_exporter(config: &'static [(&'static str, &'static str)], mode: ErrorMode) -> ExporterHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let (port_sender, port_receiver) = mpsc::channel();
    let thread_stop = Arc::clone(&stop);
    let thread =
        thread::spawn(move || run_exporter(config, mode, &thread_stop, |port| port_sender.send(port).unwrap()));
    let port = port_receiver.recv_timeout(SETUP_TIMEOUT).expect("exporter port");
    ExporterHandle { port, stop, thread }
}

/// The exporter's whole life; `announce` gets the bound port.
pub fn run_exporter(config: &[(&str, &str)], mode: ErrorMode, stop: &AtomicBool, announce: impl FnOnce(u16)) {
    let context = Context::with_config(features(), config).unwrap();
    let worker = Worker::new(&context, WorkerConfig::default()).unwrap();
    worker.set_am_handler(AM_CATALOGUE_REQUEST).unwrap();
    worker.set_am_handler(AM_FREEZE).unwrap();
    let mut exported: Vec<u8> = (0..EXPORT_BYTES).map(pattern).collect();
    // SAFETY: `exported` outlives `region` (declared before it, dropped after).
    let region = unsafe { MemoryRegion::register(&context, exported.as_mut_ptr(), exported.len()) }.unwrap();
    let rkey = region.pack_rkey().unwrap();

    let listener = Listener::bind(&worker, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    announce(listener.local_addr().unwrap().port());

    let start = Instant::now();
    let request = loop {
        worker.wait(Duration::from_millis(10)).unwrap();
        if let Some(request) = listener.next_request() {
            break request;
        }
        assert!(start.elapsed() < SETUP_TIMEOUT, "no connection request");
    };
    assert_eq!(request.remote_addr().unwrap().ip(), Ipv4Addr::LOCALHOST);
    let endpoint = Endpoint::accept(&worker, request, mode).unwrap();

    while !stop.load(Ordering::Relaxed) {
        worker.wait(Duration::from_millis(10)).unwrap();
        while let Some(message) = worker.pop_am_message() {
            assert_eq!(message.endpoint, Some(endpoint.id()), "reply endpoint maps to ours");
            match message.id {
                AM_CATALOGUE_REQUEST => {
                    let padding = u64::from_le_bytes(message.header[..8].try_into().unwrap());
                    let mut payload = rkey.clone();
                    payload.resize(rkey.len() + padding as usize, 0xee);
                    let header = Catalogue::header(region.address(), region.len() as u64);
                    endpoint.am_send(AM_CATALOGUE, &header, &payload).unwrap();
                }
                AM_FREEZE => {
                    // A peer that stops progressing: gets on it stall until it dies. Say so
                    // first (and make sure the answer left), so the reader knows any get it
                    // posts from now on cannot be served.
                    endpoint.am_send(AM_FROZEN, &[], &[]).unwrap();
                    worker.progress_until(SETUP_TIMEOUT, || worker.am_sends_in_flight() == 0).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
                other => panic!("unexpected message {other}"),
            }
        }
        if endpoint.is_failed() {
            break;
        }
    }
    // The reader closes first in the normal case; a forced close here is the "dead peer".
    let _ = endpoint.close_with(ucx::CloseMode::Force, Duration::from_secs(1));
    drop(listener);
    drop(region);
    drop(exported);
}

/// The reading side, connected and holding the exporter's rkey.
pub struct Reader {
    pub catalogue: Catalogue,
    pub rkey: RemoteKey,
    pub endpoint: Endpoint,
    pub worker: Worker,
    pub context: Context,
}

pub fn connect_reader(
    config: &[(&str, &str)],
    mode: ErrorMode,
    port: u16,
    max_in_flight: usize,
    padding_bytes: u64,
) -> Reader {
    let context = Context::with_config(features(), config).unwrap();
    let worker_config = WorkerConfig { max_in_flight, ..WorkerConfig::default() };
    let worker = Worker::new(&context, worker_config).unwrap();
    worker.set_am_handler(AM_CATALOGUE).unwrap();
    worker.set_am_handler(AM_FROZEN).unwrap();
    let endpoint = Endpoint::connect(&worker, SocketAddr::from((Ipv4Addr::LOCALHOST, port)), mode).unwrap();
    endpoint.am_send(AM_CATALOGUE_REQUEST, &padding_bytes.to_le_bytes(), &[]).unwrap();
    let mut reply = None;
    worker
        .progress_until(SETUP_TIMEOUT, || {
            reply = worker.pop_am_message();
            reply.is_some()
        })
        .expect("catalogue reply");
    let reply = reply.unwrap();
    assert_eq!(reply.endpoint, Some(endpoint.id()));
    let mut catalogue = Catalogue::parse(&reply.header, &reply.payload);
    assert!(catalogue.rkey.len() as u64 > padding_bytes);
    catalogue.rkey.truncate(catalogue.rkey.len() - padding_bytes as usize);
    let rkey = RemoteKey::unpack(&endpoint, &catalogue.rkey).unwrap();
    Reader { catalogue, rkey, endpoint, worker, context }
}

/// Waits (busy progress, bounded) for the completion of the get posted with `token`.
pub fn wait_completion(worker: &Worker, token: u64, timeout: Duration) -> ucx::Status {
    let mut found = None;
    worker
        .progress_until(timeout, || {
            if let Some(completion) = worker.pop_completion() {
                assert_eq!(completion.token, token);
                found = Some(completion.status);
            }
            found.is_some()
        })
        .expect("get completion");
    found.unwrap()
}

pub fn assert_pattern(bytes: &[u8], remote_offset: usize) {
    for (index, byte) in bytes.iter().enumerate() {
        assert_eq!(*byte, pattern(remote_offset + index), "byte {index} of a get at offset {remote_offset}");
    }
}

/// Asks the exporter to stop progressing and waits until it says it has.
pub fn freeze_exporter(reader: &Reader) {
    reader.endpoint.am_send(AM_FREEZE, &[], &[]).unwrap();
    let mut frozen = false;
    reader
        .worker
        .progress_until(SETUP_TIMEOUT, || {
            if let Some(message) = reader.worker.pop_am_message() {
                assert_eq!(message.id, AM_FROZEN);
                frozen = true;
            }
            frozen
        })
        .expect("exporter frozen");
}

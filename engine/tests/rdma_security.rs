//! Who can read what from a UCX exporter (see "Security" in `docs/ucx-bindings.md` and
//! `docs/security.md`): the `allowed_peers` check on connection requests, and the UCX 1.13
//! behaviour that makes it matter: software-emulated gets do not check rkeys, so a connected
//! peer reads any address. These are tests of the opt-in mode (`--transport ucx
//! --allow-ucx-software-rma`, UCX's software transports): an engine with default flags on a
//! host without a verbs device runs the stream transport and opens no UCX port at all
//! (`tests/tests/stream_reads.rs`, `engine/tests/stream_hostile_peers.rs`).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use rdma_engine::rdma::remote::RemoteReads;
use rdma_engine::rdma::ucx_shared_memory_settings;
use ucx::GetStarted;
use volume_format::generate::SizePlan;

const VOLUME_ID: u32 = 5;

fn volume() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), VOLUME_ID, 8, SizePlan::Fixed(5000), 1);
    dir
}

/// Progresses `reads` for `period`; whether the peer was up at any point.
fn ever_up(reads: &mut RemoteReads, peer: std::net::SocketAddr, period: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < period {
        reads.progress();
        if reads.peer_is_up(peer) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn allowed_peers_admit_only_listed_addresses() {
    let dir = volume();
    let local = open_local(dir.path(), VOLUME_ID);

    // The reader connects from 127.0.0.1, which the list does not name.
    let mut config = export_config(dir.path(), localhost_any_port(), tcp());
    config.allowed_peers = Some(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
    let exporter = spawn_exporter_with(config);
    let mut reader_config = remote_config(exporter.local_addr(), tcp());
    reader_config.connect_timeout = Duration::from_millis(300);
    let mut refused = RemoteReads::new(reader_config.clone()).unwrap();
    assert!(!ever_up(&mut refused, exporter.local_addr(), Duration::from_secs(1)), "an unlisted reader connected");
    assert!(!refused.serves(VOLUME_ID), "an unlisted reader got the catalogue");
    drop(refused);
    exporter.join().unwrap();

    // Listed (as an IPv4-mapped IPv6 address, which must match too): reads work.
    let mut config = export_config(dir.path(), localhost_any_port(), tcp());
    config.allowed_peers = Some(vec![IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())]);
    let exporter = spawn_exporter_with(config);
    let mut reader = Reader::new(exporter.local_addr(), tcp());
    assert!(reader.reads.peer_is_up(exporter.local_addr()));
    assert_eq!(compare_whole(&mut reader, VOLUME_ID, &local), 8);
    drop(reader);
    exporter.join().unwrap();

    // An empty list is a configuration error, not an exporter nobody can use.
    let mut config = export_config(dir.path(), localhost_any_port(), tcp());
    config.allowed_peers = Some(Vec::new());
    assert!(rdma_engine::rdma::export::spawn(config, Default::default()).is_err());
}

/// Documents UCX 1.13 as installed (see "Security" in `docs/ucx-bindings.md`): a get with a
/// valid rkey of one exported piece, aimed at memory nobody registered, returns that memory.
/// The exporter runs in this process, so a buffer of the test is memory of the exporter.
/// If this starts failing, UCX checks rkeys now: update the documentation.
fn unregistered_memory_is_readable(ucx: Vec<(String, String)>) {
    // Declared first, dropped last: after the reader has closed its endpoint.
    let secret: Vec<u8> = (0..4096u32).map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut landed = vec![0u8; secret.len()];
    let dir = volume();
    let exporter = spawn_exporter(dir.path(), localhost_any_port(), ucx.clone());
    let reader = Reader::new(exporter.local_addr(), ucx);
    let target = reader.reads.floor_target(VOLUME_ID).expect("the volume is served");
    assert_eq!(target.worker.in_flight(), 0);
    // SAFETY: `landed` outlives the get: its completion is waited for below, and should the
    // test fail first, the reader (declared after `landed`) closes the endpoint before
    // `landed` is freed.
    let started = unsafe {
        target.endpoint.get_nbx(landed.as_mut_ptr(), landed.len(), secret.as_ptr() as u64, target.rkey, None, 0)
    }
    .expect("the get was refused");
    if matches!(started, GetStarted::InFlight) {
        let start = Instant::now();
        let completion = loop {
            assert!(start.elapsed() < READ_DEADLINE, "the get never completed");
            target.worker.progress();
            if let Some(completion) = target.worker.pop_completion() {
                break completion;
            }
        };
        assert!(completion.status.is_ok(), "the get failed: {:?}", completion.status);
    }
    assert_eq!(landed, secret, "UCX now refuses gets outside the rkey's memory: update docs/ucx-bindings.md");
    drop(reader);
    exporter.join().unwrap();
}

#[test]
fn unregistered_memory_is_readable_over_tcp() {
    unregistered_memory_is_readable(tcp());
}

#[test]
fn unregistered_memory_is_readable_over_shared_memory() {
    unregistered_memory_is_readable(ucx_shared_memory_settings());
}

/// With a read key, an exporter answers needle lookups only on a connection whose catalogue
/// request carried a valid token: a peer that connects and asks where a needle lies is told
/// `Refused`, the same peer after showing a token is told, and a reader with the key reads
/// every needle through lookups.
#[test]
fn lookups_are_answered_only_after_a_valid_read_token() {
    use rdma_engine::rdma::catalogue::{CatalogueRequest, AM_CATALOGUE, AM_CATALOGUE_REQUEST, PROTOCOL_VERSION};
    use rdma_engine::rdma::lookup::{LookupAnswer, LookupRequest, LookupStatus, AM_LOOKUP, AM_LOOKUP_REQUEST};
    use rdma_engine::rdma::token::ReadKey;

    let dir = volume();
    let local = open_local(dir.path(), VOLUME_ID);
    let key = ReadKey::from_bytes(b"the volume servers' read key");
    let mut config = export_config(dir.path(), localhost_any_port(), tcp());
    config.read_key = Some(key.clone());
    let exporter = spawn_exporter_with(config);

    let settings = tcp();
    let overrides: Vec<(&str, &str)> = settings.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let features = ucx::Features::RMA | ucx::Features::AM | ucx::Features::WAKEUP;
    let context = ucx::Context::with_config(features, &overrides).unwrap();
    let worker_config = ucx::WorkerConfig { max_in_flight: 16, am_queue_capacity: 16, am_payload_max_bytes: 1 << 20 };
    let worker = ucx::Worker::new(&context, worker_config).unwrap();
    worker.set_am_handler(AM_LOOKUP).unwrap();
    worker.set_am_handler(AM_CATALOGUE).unwrap();
    let endpoint = ucx::Endpoint::connect(&worker, exporter.local_addr(), ucx::ErrorMode::Peer).unwrap();
    let next_message = |id: u16| {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < READ_DEADLINE, "no answer from the exporter");
            worker.progress();
            if let Some(message) = worker.pop_am_message().filter(|message| message.id == id) {
                return message.payload;
            }
        }
    };
    let location = local.locate(3).unwrap();
    let lookup = LookupRequest { token: 77, needle_id: 3, volume_id: VOLUME_ID };
    endpoint.am_send(AM_LOOKUP_REQUEST, &[], &lookup.encode()).unwrap();
    let refused = LookupAnswer::decode(&next_message(AM_LOOKUP)).unwrap();
    assert_eq!(refused, lookup.answer(LookupStatus::Refused), "a lookup answered without a token");

    let request = CatalogueRequest {
        protocol_version: PROTOCOL_VERSION,
        request_id: 1,
        volumes: None,
        token: Some(key.sign(std::time::SystemTime::now())),
    };
    endpoint.am_send(AM_CATALOGUE_REQUEST, &[], &request.encode()).unwrap();
    next_message(AM_CATALOGUE);
    endpoint.am_send(AM_LOOKUP_REQUEST, &[], &lookup.encode()).unwrap();
    let found = LookupAnswer::decode(&next_message(AM_LOOKUP)).unwrap();
    assert_eq!(found.status, LookupStatus::Found);
    assert_eq!((found.offset_bytes, found.size), (location.offset_bytes, location.size));
    let _ = endpoint.close_with(ucx::CloseMode::Force, Duration::from_millis(500));

    let mut reader_config = remote_config(exporter.local_addr(), tcp());
    reader_config.read_key = Some(key);
    reader_config.index_pull_after_lookups = 0;
    let mut reader = Reader::with_config(reader_config);
    assert_eq!(compare_whole(&mut reader, VOLUME_ID, &local), 8);
    assert!(reader.reads.lookups_sent() >= 8);
    drop(reader);
    exporter.join().unwrap();
}

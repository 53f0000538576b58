//! The bare get floor runs end to end (figures are printed, never asserted: benchmarks are
//! benchmarks). One binary per transport would be cleaner; both contexts here set their own
//! transport through `Context::with_config`, so they do not interfere.

mod common;

use std::time::Duration;

use common::scenarios::finish;
use common::*;
use ucx::floor::{bare_get_loop, FloorConfig};
use ucx::{ErrorMode, MemoryRegion};

fn run(config: &'static [(&'static str, &'static str)], name: &str) {
    let exporter = spawn_exporter(config, ErrorMode::Peer);
    let reader = connect_reader(config, ErrorMode::Peer, exporter.port, 32, 0);
    let mut local = vec![0u8; 32 << 20];
    // SAFETY: `local` outlives `region`.
    let region = unsafe { MemoryRegion::register(&reader.context, local.as_mut_ptr(), local.len()) }.unwrap();
    for (size_bytes, depth) in [(8, 1), (4096, 1), (4096, 32), (1 << 20, 1), (1 << 20, 16)] {
        let floor = FloorConfig { size_bytes, depth, duration: Duration::from_millis(150) };
        // SAFETY: nothing else touches `local` during the call; it returned Ok, so all done.
        let report = unsafe {
            bare_get_loop(
                &reader.worker,
                &reader.endpoint,
                reader.catalogue.address,
                reader.catalogue.length,
                &reader.rkey,
                &region,
                floor,
            )
        }
        .unwrap();
        assert!(report.gets > 0 && report.errors == 0, "{report:?}");
        eprintln!(
            "{name:>6} size {size_bytes:>8} depth {depth:>2}: {:>7} gets, p50 {:>8.2} us, p99 {:>8.2} us, {:>8.1} MB/s",
            report.gets,
            report.percentile_ns(0.5) as f64 / 1e3,
            report.percentile_ns(0.99) as f64 / 1e3,
            report.bytes_per_second() / 1e6
        );
    }
    finish(reader, exporter);
    drop(region);
}

#[test]
fn floor_tcp_and_sm() {
    run(&[("TLS", "tcp")], "tcp");
    run(&[("TLS", "sm,tcp"), ("MM_ERROR_HANDLING", "y")], "sm");
}

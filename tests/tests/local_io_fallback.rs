//! Where io_uring is unavailable (here: `kernel.io_uring_disabled = 2`, as an operator or a
//! container runtime sets it), the engine says so once and serves local volumes through its
//! pread threads. A test binary of its own: the setting is global while it runs.

use integration_tests::{fixture, live_needles, open_volume, skip_or_fail, Engine};
use rdma_client::{AttachOptions, Client, ReadSource};
use volume_format::needle::NeedleRecord;

const SETTING: &str = "/proc/sys/kernel/io_uring_disabled";

/// Sets the kernel's io_uring switch, and puts the old value back on drop.
struct IoUringDisabled {
    old: String,
}

impl IoUringDisabled {
    fn set() -> Option<IoUringDisabled> {
        let old = std::fs::read_to_string(SETTING).ok()?;
        std::fs::write(SETTING, "2").ok()?;
        Some(IoUringDisabled { old })
    }
}

impl Drop for IoUringDisabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SETTING, self.old.trim());
    }
}

#[test]
fn without_io_uring_local_reads_go_through_pread_threads() {
    let Some(disabled) = IoUringDisabled::set() else {
        return skip_or_fail(
            "io-uring-disabled",
            &format!("cannot write {SETTING} (needs root and Linux 6.6 or later)"),
        );
    };
    let dir = tempfile::tempdir().unwrap();
    for extension in ["dat", "idx"] {
        std::fs::copy(fixture(&format!("healthy_volume.{extension}")), dir.path().join(format!("1.{extension}")))
            .unwrap();
    }
    let engine = Engine::start(&["--volume-dir", dir.path().to_str().unwrap()]);
    let options = AttachOptions { buffer_size_bytes: 16 << 20, sq_entries: 64, ..AttachOptions::default() };
    let client = Client::attach(&engine.socket, &options).unwrap();
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    // The engine has started its backend by now: the setting can go back.
    drop(disabled);
    let volume = open_volume(dir.path(), 1);
    let mut served = 0;
    for (needle_id, cookie) in live_needles(&volume) {
        let completion = integration_tests::read_needle(&client, &mut queue_pair, (1, needle_id, cookie), 2 << 20);
        let record = volume.read_checked(needle_id, cookie).unwrap();
        let expected = NeedleRecord::parse(&record, volume.version()).unwrap().data.to_vec();
        let range = completion.data_range().expect("a successful read");
        assert_eq!(&client.bytes(completion.buffer.as_ref().unwrap())[range], &expected[..]);
        assert_eq!(completion.source(), ReadSource::Local);
        served += 1;
    }
    assert_eq!(served, 7);
    let log = engine.log_text();
    assert!(log.contains("io_uring is unavailable; local reads go through a pool of pread threads instead"), "{log}");
    assert!(log.contains("local reads ready backend=\"pread threads\""), "{log}");
}

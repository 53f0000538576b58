//! rdma-cat against a real engine serving a real volume (`--volume-dir`):
//! the bytes on stdout are exactly what the volume server would send, and
//! every failure is the documented error and exit code with empty stdout.

mod common;

use common::{run_with_timeout, start_engine, Scratch};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use volume_format::file_id::FileId;
use volume_format::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions};

const TIMEOUT: Duration = Duration::from_secs(30);
const VOLUME_ID: u32 = 9;

/// Deterministic bytes that do not compress to nothing.
fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| (index as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 32) as u8 ^ seed)
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// The volume's needles: (file id, bytes the server would serve).
struct Volume {
    plain_4k: (FileId, Vec<u8>),
    plain_1m: (FileId, Vec<u8>),
    /// Larger than the first buffer area: forces BUFFER_TOO_SMALL, a retry
    /// and a re-attach with a bigger area.
    plain_3m: (FileId, Vec<u8>),
    gzipped: (FileId, Vec<u8>),
    /// Flagged compressed but not gzip: served as stored.
    flagged_not_gzip: (FileId, Vec<u8>),
    empty: (FileId, Vec<u8>),
    deleted: FileId,
}

fn write_volume(dir: &Path) -> Volume {
    let mut writer = VolumeWriter::create_in(dir, None, VOLUME_ID, VolumeWriterOptions::default()).unwrap();
    let mut next_id = 0u64;
    let mut append = |data: &[u8], is_gzipped: bool| -> FileId {
        next_id += 1;
        writer
            .append(&NeedleSpec {
                needle_id: next_id,
                cookie: 0x1234_5678 ^ next_id as u32,
                data,
                is_gzipped,
                ..Default::default()
            })
            .unwrap()
    };
    let plain_4k = pattern(4096, 1);
    let plain_1m = pattern(1 << 20, 2);
    let plain_3m = pattern(3 << 20, 3);
    let text: Vec<u8> = b"SeaweedFS needle served through the rings. ".repeat(500);
    let flagged = pattern(300, 4);
    let volume = Volume {
        plain_4k: (append(&plain_4k, false), plain_4k),
        plain_1m: (append(&plain_1m, false), plain_1m),
        plain_3m: (append(&plain_3m, false), plain_3m),
        gzipped: (append(&gzip(&text), true), text),
        flagged_not_gzip: (append(&flagged, true), flagged),
        empty: (append(&[], false), Vec::new()),
        deleted: append(b"soon gone", false),
    };
    writer.delete(volume.deleted.needle_id, volume.deleted.cookie).unwrap();
    writer.finish().unwrap();
    volume
}

fn cat(socket: &Path, args: &[&str]) -> Output {
    run_with_timeout(Command::new(env!("CARGO_BIN_EXE_rdma-cat")).arg("--socket").arg(socket).args(args), TIMEOUT)
}

fn assert_served(output: &Output, expected: &[u8]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(output.stdout == expected, "{} bytes served, {} expected; {stderr}", output.stdout.len(), expected.len());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("source=local"), "{stderr}");
    assert!(stderr.contains("latency_us="), "{stderr}");
}

fn assert_fails(output: &Output, code: i32, text: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert!(output.stdout.is_empty(), "stdout must be empty on failure");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(text), "{stderr} lacks {text}");
}

#[test]
fn needles_and_ranges_are_served_byte_for_byte() {
    let dir = Scratch::new("cat-volume");
    let volume = write_volume(&dir.path);
    let engine = start_engine(Some(&dir.path));
    let socket = &engine.socket;
    for (file_id, data) in [&volume.plain_4k, &volume.plain_1m, &volume.plain_3m, &volume.empty] {
        assert_served(&cat(socket, &[&file_id.to_string()]), data);
    }
    let (file_id, data) = &volume.plain_4k;
    let fid = file_id.to_string();
    assert_served(&cat(socket, &[&fid, "--offset", "10", "--size", "100"]), &data[10..110]);
    // An end past the data is clipped, as an HTTP Range is.
    assert_served(&cat(socket, &[&fid, "--offset", "4000", "--size", "1000"]), &data[4000..]);
    assert_served(&cat(socket, &[&fid, "--offset", "4090"]), &data[4090..]);
    assert_served(&cat(socket, &[&fid, "--size", "7"]), &data[..7]);
    // A .ext suffix is ignored, as the volume server ignores it.
    assert_served(&cat(socket, &[&format!("{fid}.bin")]), data);
    let (file_id, data) = &volume.plain_3m;
    assert_served(
        &cat(socket, &[&file_id.to_string(), "--offset", "2097000", "--size", "300000"]),
        &data[2_097_000..2_397_000],
    );
}

#[test]
fn gzipped_needles_are_decompressed_and_ranges_apply_to_the_plain_bytes() {
    let dir = Scratch::new("cat-gzip");
    let volume = write_volume(&dir.path);
    let engine = start_engine(Some(&dir.path));
    let socket = &engine.socket;
    let (file_id, text) = &volume.gzipped;
    let fid = file_id.to_string();
    let output = cat(socket, &[&fid]);
    assert_served(&output, text);
    assert!(String::from_utf8_lossy(&output.stderr).contains("gzipped=true"));
    assert_served(&cat(socket, &[&fid, "--offset", "5", "--size", "20"]), &text[5..25]);
    // Past the compressed length but inside the plain text.
    let far = text.len() - 100;
    assert_served(&cat(socket, &[&fid, "--offset", &far.to_string()]), &text[far..]);
    assert_fails(&cat(socket, &[&fid, "--offset", &text.len().to_string()]), 4, "RANGE_OUT_OF_BOUNDS");
    let (file_id, stored) = &volume.flagged_not_gzip;
    assert_served(&cat(socket, &[&file_id.to_string()]), stored);
}

#[test]
fn failures_are_the_documented_error_and_exit_code() {
    let dir = Scratch::new("cat-errors");
    let volume = write_volume(&dir.path);
    let engine = start_engine(Some(&dir.path));
    let socket = &engine.socket;
    let (file_id, _) = volume.plain_4k;
    let missing = FileId { needle_id: 999, ..file_id };
    assert_fails(
        &cat(socket, &[&missing.to_string()]),
        4,
        "NO_SUCH_NEEDLE (-10): the volume's index has no needle with that id",
    );
    let wrong_cookie = FileId { cookie: file_id.cookie ^ 1, ..file_id };
    assert_fails(&cat(socket, &[&wrong_cookie.to_string()]), 4, "COOKIE_MISMATCH (-12)");
    let other_volume = FileId { volume_id: VOLUME_ID + 1, ..file_id };
    assert_fails(&cat(socket, &[&other_volume.to_string()]), 4, "NO_SUCH_VOLUME (-9)");
    assert_fails(&cat(socket, &[&volume.deleted.to_string()]), 4, "DELETED (-11)");
    assert_fails(
        &cat(socket, &[&file_id.to_string(), "--offset", "4096", "--size", "1"]),
        4,
        "RANGE_OUT_OF_BOUNDS (-17)",
    );
    assert_fails(&cat(socket, &["not-a-fid"]), 2, "no volume id");
    let nowhere = dir.path.join("nobody.sock");
    assert_fails(&cat(&nowhere, &[&file_id.to_string()]), 3, "cannot attach");
}

//! A client process for the multi-process tests, killed or orphaned on
//! purpose. Roles:
//! - `hold SOCKET`: attach, say "attached", then submit and reap NOPs until
//!   killed (at most 60 s).
//! - `wait SOCKET`: attach, say "attached", then wait for a completion that
//!   never comes; prints `error=<kind> elapsed_ms=<n>` when the wait ends.
//! - `read-loop SOCKET VOLUME NEEDLE COOKIE`: attach, say "attached", then keep
//!   32 reads of that needle in flight until killed (at most 60 s).
use rdma_client::{AttachOptions, Client, ClientError, Operation};
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let (role, socket) = match arguments.as_slice() {
        [_, role, socket, ..] => (role.as_str(), socket.as_str()),
        _ => {
            eprintln!("usage: test-client hold|wait SOCKET");
            std::process::exit(2);
        }
    };
    let buffer_size_bytes = if role == "read-loop" { 96 << 20 } else { AttachOptions::default().buffer_size_bytes };
    let options =
        AttachOptions { client_name: format!("test-client-{role}"), buffer_size_bytes, ..AttachOptions::default() };
    let client = Client::attach(socket.as_ref(), &options).unwrap_or_else(|error| {
        eprintln!("attach failed: {error}");
        std::process::exit(3);
    });
    let mut queue_pair = client.take_queue_pair(0).expect("queue pair 0");
    println!("attached");
    std::io::stdout().flush().expect("flush");
    match role {
        "hold" => {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                for tag in 0..8 {
                    queue_pair.prepare(Operation::Nop, tag).expect("prepare");
                }
                queue_pair.submit().expect("submit");
                queue_pair.wait(8, Duration::from_secs(5)).expect("wait");
                while queue_pair.reap_one().expect("reap").is_some() {}
            }
        }
        "wait" => {
            let start = Instant::now();
            let error = queue_pair.wait(1, Duration::from_secs(30)).expect_err("no completion can come");
            let kind = match error {
                ClientError::EngineGone => "engine-gone",
                ClientError::EngineStopped => "engine-stopped",
                ClientError::TimedOut { .. } => "timed-out",
                _ => "other",
            };
            println!("error={kind} elapsed_ms={} message={error}", start.elapsed().as_millis());
        }
        "read-loop" => {
            let number = |index: usize| -> u64 {
                let text = arguments.get(index).expect("read-loop SOCKET VOLUME NEEDLE COOKIE");
                u64::from_str_radix(text.trim_start_matches("0x"), 16).expect("hex number")
            };
            let (volume_id, needle_id, cookie) = (number(3) as u32, number(4), number(5) as u32);
            let start = Instant::now();
            let mut in_flight = 0;
            while start.elapsed() < Duration::from_secs(60) {
                while in_flight < 32 {
                    let buffer = client.allocate(2 << 20).expect("buffer");
                    let operation = Operation::ReadNeedle { volume_id, needle_id, cookie, buffer };
                    queue_pair.prepare(operation, 0).expect("prepare");
                    in_flight += 1;
                }
                queue_pair.submit().expect("submit");
                queue_pair.wait(1, Duration::from_secs(10)).expect("wait");
                while queue_pair.reap_one().expect("reap").is_some() {
                    in_flight -= 1;
                }
            }
        }
        _ => {
            eprintln!("unknown role {role}");
            std::process::exit(2);
        }
    }
}

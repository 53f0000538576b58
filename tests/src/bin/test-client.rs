//! A client process for the multi-process tests, killed or orphaned on
//! purpose. Roles:
//! - `hold SOCKET`: attach, say "attached", then submit and reap NOPs until
//!   killed (at most 60 s).
//! - `wait SOCKET`: attach, say "attached", then wait for a completion that
//!   never comes; prints `error=<kind> elapsed_ms=<n>` when the wait ends.
use rdma_client::{AttachOptions, Client, ClientError, Operation};
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let (role, socket) = match arguments.as_slice() {
        [_, role, socket] => (role.as_str(), socket.as_str()),
        _ => {
            eprintln!("usage: test-client hold|wait SOCKET");
            std::process::exit(2);
        }
    };
    let options = AttachOptions { client_name: format!("test-client-{role}"), ..AttachOptions::default() };
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
        _ => {
            eprintln!("unknown role {role}");
            std::process::exit(2);
        }
    }
}

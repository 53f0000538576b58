//! The client process (`rdma-chaos __client`): attaches to the reading engine, keeps
//! `depth` whole-needle reads of the known volume in flight, checks every byte of every
//! success against the known content, and counts into its slot of the shared counters.
//! When its attachment ends (engine gone, fenced, a hang) it attaches again; it never
//! exits on its own except when its parent (the campaign) is gone.

use super::counters::{ClientSlot, Counters};
use super::known::KnownVolume;
use super::{ChaosError, ClientApi};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdma_client::{AttachOptions, Buffer, Client, ClientError, Completion, Operation, QueuePair};
use rdma_ipc::clock::monotonic_ns;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Pause between two attach attempts while the engine is away.
const ATTACH_RETRY: Duration = Duration::from_millis(20);

/// What one client process does.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// The reading engine's control socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The directory of the known volume.
    #[arg(long)]
    pub volume_dir: PathBuf,
    /// This client's slot in the counters.
    #[arg(long)]
    pub slot: usize,
    /// The inherited counters memfd.
    #[arg(long)]
    pub counters_fd: i32,
    /// Reads kept in flight.
    #[arg(long)]
    pub depth: u32,
    /// Each read's deadline after its submission, in milliseconds.
    #[arg(long)]
    pub deadline_ms: u64,
    /// How long after its deadline a read without completion counts as a hang, in ms.
    #[arg(long)]
    pub hang_margin_ms: u64,
    /// Seed of the needle choice.
    #[arg(long)]
    pub seed: u64,
    /// Reads per attachment before detaching and attaching again (0: stay attached).
    #[arg(long, default_value_t = 0)]
    pub reads_per_attachment: u64,
    /// Check every other needle against deliberately wrong content (tests that wrong bytes
    /// are counted).
    #[arg(long, hide = true)]
    pub flip_expected: bool,
    /// Read through the rings or through the high-level Reader.
    #[arg(long, value_enum, default_value_t = ClientApi::Rings)]
    pub api: ClientApi,
}

/// How an attachment ended.
enum SessionEnd {
    /// Done on purpose (churn).
    Detached,
    /// The engine went away, fenced us, or a read hung.
    Failed(String),
}

/// A read in flight: which needle, and when its wait runs out.
struct Pending {
    needle_index: usize,
    hang_at_ns: u64,
}

pub fn client_main(args: &ClientArgs) -> Result<(), ChaosError> {
    let mut known = KnownVolume::load(&args.volume_dir)?;
    if args.flip_expected {
        // Every other needle, so right reads still happen and the run goes on.
        for needle in known.needles.iter_mut().step_by(2).filter(|needle| !needle.data.is_empty()) {
            needle.data[0] ^= 0xff;
        }
    }
    let counters = Counters::inherited(args.counters_fd)?;
    let slot = counters.slot(args.slot);
    let parent = nix::unistd::getppid();
    if args.api == ClientApi::Reader {
        return reader_main(args, &known, slot, parent);
    }
    let mut rng = SmallRng::seed_from_u64(args.seed);
    // Bounded by the parent: it kills this process at the end, and the loop ends when the
    // parent is gone.
    while nix::unistd::getppid() == parent {
        let client = match Client::attach(&args.socket, &attach_options(args, &known)) {
            Ok(client) => client,
            Err(_) => {
                ClientSlot::add(&slot.attach_failures, 1);
                std::thread::sleep(ATTACH_RETRY);
                continue;
            }
        };
        ClientSlot::add(&slot.attaches, 1);
        ClientSlot::add(&slot.regions, 1);
        slot.attached.store(1, std::sync::atomic::Ordering::Relaxed);
        let end = Session { args, known: &known, slot, client: &client }.run(&mut rng, parent);
        slot.attached.store(0, std::sync::atomic::Ordering::Relaxed);
        match end {
            SessionEnd::Detached => ClientSlot::add(&slot.detaches, 1),
            SessionEnd::Failed(reason) => {
                ClientSlot::add(&slot.session_errors, 1);
                tracing::debug!(%reason, "attachment ended");
            }
        }
    }
    Ok(())
}

fn attach_options(args: &ClientArgs, known: &KnownVolume) -> AttachOptions {
    AttachOptions {
        queue_pairs: 1,
        sq_entries: args.depth.next_power_of_two().max(8),
        buffer_size_bytes: u64::from(known.buffer_length_bytes()) * u64::from(args.depth) + (1 << 20),
        client_name: format!("rdma-chaos client {}", args.slot),
    }
}

/// One attachment.
struct Session<'a> {
    args: &'a ClientArgs,
    known: &'a KnownVolume,
    slot: &'a ClientSlot,
    client: &'a Client,
}

impl Session<'_> {
    fn run(&self, rng: &mut SmallRng, parent: nix::unistd::Pid) -> SessionEnd {
        let mut queue_pair = match self.client.take_queue_pair(0) {
            Ok(queue_pair) => queue_pair,
            Err(error) => return SessionEnd::Failed(error.to_string()),
        };
        let mut free = Vec::new();
        for _ in 0..self.args.depth {
            match self.client.allocate(self.known.buffer_length_bytes()) {
                Ok(buffer) => free.push(buffer),
                Err(error) => return SessionEnd::Failed(error.to_string()),
            }
        }
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut next_tag = 0u64;
        let mut completed = 0u64;
        loop {
            if nix::unistd::getppid() != parent {
                return SessionEnd::Detached;
            }
            let churn = self.args.reads_per_attachment;
            if churn > 0 && completed >= churn && pending.is_empty() {
                return SessionEnd::Detached;
            }
            if churn == 0 || completed + (pending.len() as u64) < churn {
                if let Err(error) = self.submit_all(&mut queue_pair, &mut free, &mut pending, &mut next_tag, rng) {
                    return SessionEnd::Failed(error.to_string());
                }
            }
            let Some(hang_at_ns) = pending.values().map(|read| read.hang_at_ns).min() else { continue };
            let wait = Duration::from_nanos(hang_at_ns.saturating_sub(monotonic_ns()));
            match queue_pair.wait(1, wait) {
                Ok(_) => {}
                Err(ClientError::TimedOut { .. }) if monotonic_ns() >= hang_at_ns => {
                    ClientSlot::add(&self.slot.hangs, 1);
                    let (tag, read) = pending.iter().min_by_key(|(_, read)| read.hang_at_ns).expect("a read pending");
                    let file_id = self.known.needles[read.needle_index].file_id;
                    // One line per hang (the attachment ends with it), for the run's log.
                    eprintln!(
                        "rdma-chaos client {}: read {tag} of {file_id} had no completion {} ms after its deadline \
                         (CLOCK_MONOTONIC {} ns, {} reads in flight, queue pair says {})",
                        self.args.slot,
                        self.args.hang_margin_ms,
                        monotonic_ns(),
                        pending.len(),
                        queue_pair.in_flight()
                    );
                    return SessionEnd::Failed(format!("a read had no completion by its bound ({wait:?} waited)"));
                }
                Err(ClientError::TimedOut { .. }) => continue,
                Err(error) => return SessionEnd::Failed(error.to_string()),
            }
            loop {
                match queue_pair.reap_one() {
                    Ok(Some(completion)) => {
                        completed += 1;
                        if let Some(read) = pending.remove(&completion.tag) {
                            self.check(&completion, read.needle_index);
                        }
                        free.extend(completion.buffer);
                    }
                    Ok(None) => break,
                    Err(error) => return SessionEnd::Failed(error.to_string()),
                }
            }
        }
    }

    /// Submits a read into every free buffer, each with its own deadline.
    fn submit_all(
        &self,
        queue_pair: &mut QueuePair,
        free: &mut Vec<Buffer>,
        pending: &mut HashMap<u64, Pending>,
        next_tag: &mut u64,
        rng: &mut SmallRng,
    ) -> Result<(), ClientError> {
        if free.is_empty() {
            return Ok(());
        }
        while let Some(buffer) = free.pop() {
            let needle_index = rng.gen_range(0..self.known.needles.len());
            let file_id = self.known.needles[needle_index].file_id;
            let now_ns = monotonic_ns();
            let deadline_ns = now_ns + self.args.deadline_ms * 1_000_000;
            let operation = Operation::ReadNeedle {
                volume_id: file_id.volume_id,
                needle_id: file_id.needle_id,
                cookie: file_id.cookie,
                buffer,
            };
            queue_pair.prepare_with_deadline(operation, *next_tag, deadline_ns)?;
            let hang_at_ns = deadline_ns + self.args.hang_margin_ms * 1_000_000;
            pending.insert(*next_tag, Pending { needle_index, hang_at_ns });
            *next_tag += 1;
        }
        queue_pair.submit()
    }

    /// Counts one completion: right bytes, wrong bytes, or an error code.
    fn check(&self, completion: &Completion, needle_index: usize) {
        if completion.result().is_err() {
            ClientSlot::add(&self.slot.read_errors, 1);
            return;
        }
        let expected = &self.known.needles[needle_index].data;
        let served = match (completion.data_range(), completion.buffer.as_ref()) {
            (Some(range), Some(buffer)) => &self.client.bytes(buffer)[range],
            _ => &[][..],
        };
        if served == expected.as_slice() && !completion.gzipped() {
            ClientSlot::add(&self.slot.reads_ok, 1);
            ClientSlot::add(&self.slot.bytes_ok, expected.len() as u64);
            self.slot.last_success_ns.store(monotonic_ns(), std::sync::atomic::Ordering::Relaxed);
        } else {
            ClientSlot::add(&self.slot.wrong_reads, 1);
        }
    }
}

/// The client on the high-level Reader: connected once, `depth` threads reading whole
/// needles zero-copy until the parent is gone. Every success is checked against the known
/// content; each thread keeps its last view and checks it again before the next read (a view
/// stays valid across engine restarts); a read that takes longer than its deadline plus the
/// hang margin counts as a hang. `regions` counts the distinct regions read through.
fn reader_main(
    args: &ClientArgs,
    known: &KnownVolume,
    slot: &ClientSlot,
    parent: nix::unistd::Pid,
) -> Result<(), ChaosError> {
    use rdma_client::{Reader, ReaderOptions};
    use std::sync::atomic::Ordering::Relaxed;
    let options = ReaderOptions {
        attach: AttachOptions {
            queue_pairs: 2,
            // Each thread holds one view and reads into a buffer of at least the Reader's first
            // size (or the needle's, when larger); twice that again for the allocator's
            // fragmentation and a lane's reply left by a read that gave up.
            buffer_size_bytes: 4
                * u64::from(args.depth)
                * u64::from(known.buffer_length_bytes().max(rdma_client::reader::content::INITIAL_BUFFER_BYTES))
                + (1 << 20),
            ..attach_options(args, known)
        },
        timeout: Duration::from_millis(args.deadline_ms),
        engine_wait: Duration::from_secs(600),
        ..ReaderOptions::default()
    };
    let reader = Reader::connect(&args.socket, options).map_err(|error| ChaosError::Setup(error.to_string()))?;
    ClientSlot::add(&slot.attaches, 1);
    slot.attached.store(1, Relaxed);
    let regions = std::sync::Mutex::new(std::collections::HashSet::new());
    let bound = Duration::from_millis(args.deadline_ms + args.hang_margin_ms);
    std::thread::scope(|scope| {
        for thread in 0..args.depth {
            let (reader, regions) = (&reader, &regions);
            scope.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(args.seed ^ u64::from(thread) << 48);
                let mut held: Option<(rdma_client::NeedleView, usize)> = None;
                // Bounded by the parent: the loop ends when it is gone.
                while nix::unistd::getppid() == parent {
                    if let Some((view, index)) = held.take() {
                        if *view != known.needles[index].data[..] {
                            ClientSlot::add(&slot.wrong_reads, 1);
                        }
                    }
                    let index = rng.gen_range(0..known.needles.len());
                    let needle = &known.needles[index];
                    let started = std::time::Instant::now();
                    let result = reader.read_view(&needle.file_id.to_string());
                    if started.elapsed() > bound {
                        ClientSlot::add(&slot.hangs, 1);
                    }
                    match result {
                        Ok(view) if *view == needle.data[..] && !view.gzipped() => {
                            ClientSlot::add(&slot.reads_ok, 1);
                            ClientSlot::add(&slot.bytes_ok, needle.data.len() as u64);
                            slot.last_success_ns.store(monotonic_ns(), Relaxed);
                            held = Some((view, index));
                        }
                        Ok(_) => ClientSlot::add(&slot.wrong_reads, 1),
                        Err(error) => {
                            // The first few, for the run's log.
                            if ClientSlot::get(&slot.read_errors) < 5 {
                                eprintln!("rdma-chaos client {}: {error}", args.slot);
                            }
                            ClientSlot::add(&slot.read_errors, 1);
                        }
                    }
                    if let (Some(region), Ok(mut seen)) = (reader.region_file(), regions.lock()) {
                        if seen.insert(region) {
                            ClientSlot::add(&slot.regions, 1);
                        }
                    }
                }
            });
        }
    });
    Ok(())
}

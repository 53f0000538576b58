//! The fault campaign: for N iterations, wait a random moment, pick a random victim (a
//! client, the reading engine or the exporter) and a random action (SIGKILL, or SIGSTOP
//! for a random short time then SIGCONT; when asked for, a truncation of the exporter's
//! volume for a random short time), restart what was killed, and measure the time until
//! reads succeed again. Then check that nothing leaked.

use super::counters::ClientSlot;
use super::procfs::{self, HugepageReservation};
use super::report::{row, ClientTotals, Recoveries};
use super::rig::{Rig, Role};
use super::{ChaosError, RunOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdma_ipc::clock::monotonic_ns;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often the campaign looks at the counters while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Most draws of a fault that fits `--victims` and `--actions`.
const DRAWS_MAX: u32 = 10_000;
/// Most bytes a truncation cuts off the volume's end (a few of its last records).
const TRUNCATE_BYTES_MAX: u64 = 1 << 20;
/// Iterations between two progress lines on stderr.
const PROGRESS_EVERY: u64 = 100;

/// The campaign's own options.
#[derive(Clone, Debug, clap::Args)]
pub struct CampaignOptions {
    #[command(flatten)]
    pub run: RunOptions,
    /// Faults to inject.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub iterations: u64,
    /// Longest pause before a fault (the pause is random in 0..this), in ms.
    #[arg(long, default_value_t = 300)]
    pub pause_ms_max: u64,
    /// Longest SIGSTOP (random in 10..this), in ms. Keep it below --hang-margin-ms.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(11..=60_000))]
    pub stop_ms_max: u64,
    /// Who may be hit (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [VictimKind::Client, VictimKind::Reader, VictimKind::Exporter])]
    pub victims: Vec<VictimKind>,
    /// What may be done to them (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ActionKind::Kill, ActionKind::Stop])]
    pub actions: Vec<ActionKind>,
    /// Longest wait for reads to succeed again after a fault, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub recovery_timeout_ms: u64,
    /// Longest wait for a killed client's region to be reclaimed, in ms (a region with
    /// RDMA gets in flight is kept until they land or time out, 5 s).
    #[arg(long, default_value_t = 20_000)]
    pub leak_timeout_ms: u64,
}

/// A kind of victim the options name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VictimKind {
    Client,
    Reader,
    Exporter,
}

impl VictimKind {
    fn name(self) -> &'static str {
        match self {
            VictimKind::Client => "client",
            VictimKind::Reader => "reader",
            VictimKind::Exporter => "exporter",
        }
    }
}

/// A kind of action the options name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionKind {
    Kill,
    Stop,
    /// Cut the end of the exporter's `.dat` away for a while, then write it back (SeaweedFS
    /// truncates a failed append): only the exporter, and only when named.
    Truncate,
}

/// Who gets the signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Client(usize),
    Engine(Role),
}

impl Victim {
    fn kind(self) -> &'static str {
        match self {
            Victim::Client(_) => "client",
            Victim::Engine(Role::Reader) => "reader",
            Victim::Engine(Role::Exporter) => "exporter",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Kill,
    Stop(Duration),
    /// Cut this many bytes off the `.dat`'s end, and write them back after the duration.
    Truncate {
        cut_bytes: u64,
        held: Duration,
    },
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Stop(_) => "stop",
            Action::Truncate { .. } => "truncate",
        }
    }
}

/// What a campaign found. The targets are all zero except the figures and recoveries.
#[derive(Debug, Default, Serialize)]
pub struct CampaignReport {
    pub command: String,
    pub seed: u64,
    pub iterations: u64,
    pub transport: &'static str,
    pub clients: usize,
    /// How the clients read (`rings`, or the `reader`, whose region each new engine takes over).
    pub client_api: super::ClientApi,
    pub depth: u32,
    pub deadline_ms: u64,
    pub hang_margin_ms: u64,
    pub duration_s: f64,
    /// Faults injected, by "victim action" (e.g. "reader kill").
    pub faults: BTreeMap<String, u64>,
    pub totals: ClientTotals,
    /// Successful reads whose bytes differed from the known content.
    pub wrong_reads: u64,
    /// Reads with no completion by deadline + margin, plus faults after which reads did
    /// not succeed again within the recovery timeout (the reader is then restarted, as a
    /// watchdog would).
    pub hangs: u64,
    pub recovery_timeouts: u64,
    /// Checks (after each fault, bounded) where the reader held more region memfds than
    /// clients were attached, and the memfds left after every client was killed.
    pub leak_checks_failed: u64,
    pub memfds_left_at_end: u64,
    /// Huge pages the campaign added to `vm.nr_hugepages`. `HugePages_Free` is machine-wide
    /// (UCX's own pools and other processes move it): before − after is for information,
    /// and only computed when the run reserved its own pages (0 otherwise); the target is
    /// `reader_hugetlb_kib_at_end`.
    pub hugepages_reserved: u64,
    pub hugepages_free_before: u64,
    pub hugepages_free_after: u64,
    pub hugepages_leaked: u64,
    /// Huge pages of regions the reader still had mapped 20 s after every client was
    /// killed, in KiB (its own `smaps`, so UCX's pools and other processes do not count).
    pub reader_hugetlb_kib_at_end: u64,
    /// Engine exits the campaign did not cause (each with its status and last log lines).
    pub engine_deaths: u64,
    /// Of those, deaths whose last fault before them was a client's (the target is 0).
    pub engine_deaths_after_client_faults: u64,
    pub engine_death_details: Vec<String>,
    /// Client processes that exited by themselves.
    pub client_deaths: u64,
    /// Time from the end of a fault (the SIGKILL, whose restart is part of the recovery, or
    /// the SIGCONT) until every affected client read right again, by "victim action".
    pub recovery: BTreeMap<String, Recoveries>,
}

impl CampaignReport {
    /// Whether every target counter is zero.
    pub fn clean(&self) -> bool {
        self.wrong_reads == 0
            && self.hangs == 0
            && self.leak_checks_failed == 0
            && self.memfds_left_at_end == 0
            && self.reader_hugetlb_kib_at_end == 0
            && self.engine_deaths == 0
            && self.client_deaths == 0
            && (self.client_api != super::ClientApi::Reader || self.totals.regions == self.clients as u64)
    }

    pub fn table(&self) -> String {
        let mut text = format!(
            "rdma-chaos campaign: {} iterations, seed {}, {} clients ({:?}) at depth {}, UCX {}, {:.0} s\n",
            self.iterations, self.seed, self.clients, self.client_api, self.depth, self.transport, self.duration_s
        );
        text += &row("reads with the right bytes", self.totals.reads_ok);
        text += &row("reads that failed with an error code", self.totals.read_errors);
        text += &row("wrong bytes served (reads)", self.wrong_reads);
        text += &row("hangs", self.hangs);
        text += &row("  of which: no recovery within the bound", self.recovery_timeouts);
        text += &row("leak checks failed (memfds > attached)", self.leak_checks_failed);
        text += &row("region memfds left after all clients died", self.memfds_left_at_end);
        text += &row(
            "HugePages_Free before / after (machine-wide, info)",
            format!("{} / {}", self.hugepages_free_before, self.hugepages_free_after),
        );
        text += &row("region huge pages the reader kept mapped (KiB)", self.reader_hugetlb_kib_at_end);
        text += &row("engine deaths not caused by the campaign", self.engine_deaths);
        text += &row("  of which: after a client fault", self.engine_deaths_after_client_faults);
        text += &row("client deaths not caused by the campaign", self.client_deaths);
        text += &row("regions the clients read through", self.totals.regions);
        text += "\nfault                 count   recovery median ms   max ms\n";
        for (fault, count) in &self.faults {
            let recovery = self.recovery.get(fault).cloned().unwrap_or_default();
            text += &format!("{fault:<20} {count:>6}   {:>18.1}   {:>6.1}\n", recovery.median_ms, recovery.max_ms);
        }
        for detail in &self.engine_death_details {
            text += &format!("\nengine death: {detail}\n");
        }
        text
    }
}

/// Runs the campaign; `Err` only when it could not be set up.
pub fn run(options: &CampaignOptions) -> Result<CampaignReport, ChaosError> {
    let run = &options.run;
    if options.stop_ms_max >= run.hang_margin_ms {
        return Err(ChaosError::Usage(format!(
            "--stop-ms-max ({}) must be below --hang-margin-ms ({}): a stopped engine cannot answer",
            options.stop_ms_max, run.hang_margin_ms
        )));
    }
    if options.victims.is_empty() || options.actions.is_empty() {
        return Err(ChaosError::Usage("--victims and --actions must each name at least one kind".into()));
    }
    if options.actions.contains(&ActionKind::Truncate) && !options.victims.contains(&VictimKind::Exporter) {
        return Err(ChaosError::Usage(
            "--actions truncate cuts the exporter's volume: --victims must name exporter".into(),
        ));
    }
    let reservation = match run.reserve_hugepages {
        0 => None,
        pages => Some(HugepageReservation::add(pages).map_err(ChaosError::Setup)?),
    };
    let started = Instant::now();
    let mut report = CampaignReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seed: run.seed,
        iterations: options.iterations,
        transport: run.transport.name(),
        clients: run.clients,
        client_api: run.client_api,
        depth: run.depth,
        deadline_ms: run.deadline_ms,
        hang_margin_ms: run.hang_margin_ms,
        hugepages_reserved: run.reserve_hugepages,
        hugepages_free_before: procfs::hugepages_free(),
        ..CampaignReport::default()
    };
    let mut rig = Rig::start(run, 0)?;
    let mut campaign = Campaign {
        options,
        rig: &mut rig,
        report: &mut report,
        rng: SmallRng::seed_from_u64(run.seed),
        last_fault: "none yet".into(),
        last_victim: None,
    };
    campaign.warm_up()?;
    for iteration in 1..=options.iterations {
        campaign.iteration(iteration)?;
        if iteration % PROGRESS_EVERY == 0 {
            tracing::info!(iteration, of = options.iterations, "campaign progress");
        }
    }
    campaign.finish();
    let slots = rig.clients.iter().map(|client| client.slot).collect::<Vec<_>>();
    report.totals = ClientTotals::of(&rig.counters, slots.into_iter());
    report.wrong_reads = report.totals.wrong_reads;
    report.hangs = report.totals.hangs + report.recovery_timeouts;
    report.duration_s = started.elapsed().as_secs_f64();
    drop(rig);
    drop(reservation);
    Ok(report)
}

struct Campaign<'a> {
    options: &'a CampaignOptions,
    rig: &'a mut Rig,
    report: &'a mut CampaignReport,
    rng: SmallRng,
    /// The last fault injected ("iteration N: victim action"), for a report of a death.
    last_fault: String,
    last_victim: Option<Victim>,
}

impl Campaign<'_> {
    /// Waits until every client has read right once.
    fn warm_up(&mut self) -> Result<(), ChaosError> {
        if self.wait_for_reads(Victim::Engine(Role::Reader), 0).is_none() {
            return Err(ChaosError::Setup(format!(
                "the clients did not read within {} ms; reader log:\n{}",
                self.options.recovery_timeout_ms,
                self.rig.reader.log_tail()
            )));
        }
        Ok(())
    }

    fn iteration(&mut self, iteration: u64) -> Result<(), ChaosError> {
        std::thread::sleep(Duration::from_millis(self.rng.gen_range(0..=self.options.pause_ms_max)));
        let (victim, action) = self.draw_fault();
        let fault = format!("{} {}", victim.kind(), action.name());
        *self.report.faults.entry(fault.clone()).or_default() += 1;
        self.last_fault = match action {
            Action::Kill => format!("iteration {iteration}: {fault}"),
            Action::Stop(duration) => format!("iteration {iteration}: {fault} for {} ms", duration.as_millis()),
            Action::Truncate { cut_bytes, held } => {
                format!("iteration {iteration}: {fault} of {cut_bytes} bytes for {} ms", held.as_millis())
            }
        };
        self.last_victim = Some(victim);
        tracing::debug!(fault = %self.last_fault, "injecting");
        let fault_end_ns = self.inject(victim, action)?;
        match self.wait_for_reads(victim, fault_end_ns) {
            Some(recovered_ns) => {
                let milliseconds = recovered_ns.saturating_sub(fault_end_ns) as f64 / 1e6;
                self.report.recovery.entry(fault).or_default().record(milliseconds);
            }
            None => {
                self.report.recovery_timeouts += 1;
                tracing::warn!(%fault, "reads did not succeed again within the recovery timeout; restarting the reader");
                // As a supervisor's watchdog would, so one stuck state is counted once and
                // the campaign goes on.
                self.rig.reader.kill();
                self.rig.reader.restart()?;
            }
        }
        self.check_leaks();
        Ok(())
    }

    /// A random victim and action among those the options allow. With every kind allowed
    /// the first draw is taken, so a seed gives the same faults whatever the filters'
    /// defaults; with a filter, draws are repeated, at most [`DRAWS_MAX`] times (each
    /// filter allows one kind, so a draw fits with a chance of at least
    /// 1 / (2 × (clients + 2))); then the first allowed kinds are taken.
    ///
    /// A truncation is drawn first, and only when `--actions` names it (a third of the
    /// faults, or all when it is the only action), so the other faults of a seed stay what
    /// they were without it.
    fn draw_fault(&mut self) -> (Victim, Action) {
        if self.options.actions.contains(&ActionKind::Truncate)
            && (self.options.actions.len() == 1 || self.rng.gen_bool(1.0 / 3.0))
        {
            return (Victim::Engine(Role::Exporter), self.draw_truncation());
        }
        for _ in 0..DRAWS_MAX {
            let victim = match self.rng.gen_range(0..self.rig.clients.len() + 2) {
                0 => Victim::Engine(Role::Reader),
                1 => Victim::Engine(Role::Exporter),
                client => Victim::Client(client - 2),
            };
            let action = if self.rng.gen_bool(0.5) {
                Action::Kill
            } else {
                Action::Stop(Duration::from_millis(self.rng.gen_range(10..self.options.stop_ms_max)))
            };
            let victim_allowed = self.options.victims.iter().any(|kind| kind.name() == victim.kind());
            let action_allowed = self.options.actions.iter().any(|kind| match kind {
                ActionKind::Kill => matches!(action, Action::Kill),
                ActionKind::Stop => matches!(action, Action::Stop(_)),
                ActionKind::Truncate => false, // drawn above
            });
            if victim_allowed && action_allowed {
                return (victim, action);
            }
        }
        let victim = match self.options.victims[0] {
            VictimKind::Client => Victim::Client(0),
            VictimKind::Reader => Victim::Engine(Role::Reader),
            VictimKind::Exporter => Victim::Engine(Role::Exporter),
        };
        let action = match self.options.actions[0] {
            ActionKind::Kill => Action::Kill,
            ActionKind::Stop => Action::Stop(Duration::from_millis(self.options.stop_ms_max / 2)),
            ActionKind::Truncate => return (Victim::Engine(Role::Exporter), self.draw_truncation()),
        };
        (victim, action)
    }

    /// Up to [`TRUNCATE_BYTES_MAX`] off the `.dat`'s end (never its super block), held for as
    /// long as a stop.
    fn draw_truncation(&mut self) -> Action {
        let cut_bytes = self.rng.gen_range(1..=TRUNCATE_BYTES_MAX);
        let held = Duration::from_millis(self.rng.gen_range(10..self.options.stop_ms_max));
        Action::Truncate { cut_bytes, held }
    }

    /// Sends the fault; returns when it ended: the SIGKILL (the restart is part of the
    /// recovery, as under systemd), the SIGCONT, or the bytes written back.
    fn inject(&mut self, victim: Victim, action: Action) -> Result<u64, ChaosError> {
        let signal_ns = monotonic_ns();
        let pid = match victim {
            Victim::Client(index) => self.rig.clients[index].pid(),
            Victim::Engine(role) => self.rig.engine(role).pid(),
        };
        match (victim, action) {
            (Victim::Client(index), Action::Kill) => self.rig.kill_and_restart_client(index)?,
            (Victim::Engine(role), Action::Kill) => {
                let engine = self.rig.engine(role);
                engine.kill();
                engine.restart()?;
            }
            (_, Action::Truncate { cut_bytes, held }) => {
                self.rig.truncate_volume(cut_bytes, held)?;
                return Ok(monotonic_ns());
            }
            (_, Action::Stop(duration)) => {
                let pid = Pid::from_raw(pid as i32);
                let _ = kill(pid, Signal::SIGSTOP);
                std::thread::sleep(duration);
                let _ = kill(pid, Signal::SIGCONT);
                return Ok(monotonic_ns());
            }
        }
        Ok(signal_ns)
    }

    /// Waits until reads succeed again after `since_ns` (the victim client's, or every
    /// client's for an engine), noting deaths meanwhile. `None` if the timeout ran out.
    fn wait_for_reads(&mut self, victim: Victim, since_ns: u64) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_millis(self.options.recovery_timeout_ms);
        while Instant::now() < deadline {
            self.note_deaths();
            let slots: Vec<usize> = match victim {
                Victim::Client(index) => vec![self.rig.clients[index].slot],
                Victim::Engine(_) => self.rig.clients.iter().map(|client| client.slot).collect(),
            };
            let last = slots
                .iter()
                .map(|&slot| ClientSlot::get(&self.rig.counters.slot(slot).last_success_ns))
                .min()
                .unwrap_or(0);
            if last > since_ns {
                return Some(last);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        None
    }

    /// Counts and restarts engines and clients that exited without being killed.
    fn note_deaths(&mut self) {
        self.note_engine_deaths();
        for index in 0..self.rig.clients.len() {
            match self.rig.restart_exited_client(index) {
                Ok(Some(status)) => {
                    tracing::error!(%status, "a client exited by itself");
                    self.report.client_deaths += 1;
                }
                Ok(None) => {}
                Err(error) => tracing::error!(%error, "cannot restart a client"),
            }
        }
    }

    fn note_engine_deaths(&mut self) {
        for role in [Role::Reader, Role::Exporter] {
            let engine = self.rig.engine(role);
            let Some(status) = engine.exited() else { continue };
            if engine.killed_on_purpose {
                continue;
            }
            let detail =
                format!("{role:?} exited ({status}) after {}; its log ends:\n{}", self.last_fault, engine.log_tail());
            tracing::error!("{detail}");
            self.report.engine_deaths += 1;
            if matches!(self.last_victim, Some(Victim::Client(_))) {
                self.report.engine_deaths_after_client_faults += 1;
            }
            self.report.engine_death_details.push(detail);
            if let Err(error) = engine.restart() {
                tracing::error!(%error, "cannot restart the engine");
            }
        }
    }

    /// The reader holds one region memfd per attached client, once reclaiming is done.
    fn check_leaks(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(self.options.leak_timeout_ms);
        loop {
            let memfds = procfs::region_memfds(self.rig.reader.pid()) as u64;
            let attached = self.rig.attached_clients();
            if memfds <= attached {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(memfds, attached, "the reader holds more regions than clients are attached");
                self.report.leak_checks_failed += 1;
                return;
            }
            std::thread::sleep(POLL_INTERVAL * 5);
        }
    }

    /// Kills every client and waits (bounded) for their regions and huge pages to come back.
    fn finish(&mut self) {
        self.note_deaths();
        self.rig.kill_clients();
        let deadline = Instant::now() + Duration::from_millis(self.options.leak_timeout_ms);
        let before = self.report.hugepages_free_before;
        let judged = self.report.hugepages_reserved > 0;
        loop {
            let memfds = procfs::region_memfds(self.rig.reader.pid()) as u64;
            let free = procfs::hugepages_free();
            let hugetlb_kib = procfs::region_hugetlb_kib(self.rig.reader.pid());
            if (memfds == 0 && hugetlb_kib == 0 && (free >= before || !judged)) || Instant::now() >= deadline {
                self.report.reader_hugetlb_kib_at_end = hugetlb_kib;
                self.report.memfds_left_at_end = memfds;
                self.report.hugepages_free_after = free;
                self.report.hugepages_leaked = if judged { before.saturating_sub(free) } else { 0 };
                break;
            }
            std::thread::sleep(POLL_INTERVAL * 5);
        }
        self.note_engine_deaths();
    }
}

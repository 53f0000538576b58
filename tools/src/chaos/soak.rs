//! The soak: clients read at full depth and detach and attach again continuously (every
//! `--reads-per-attachment` reads) for `--minutes`, while the reading engine's and the
//! exporter's RSS, open fds and mappings are sampled. Figures only: nothing here is
//! asserted on time.

use super::procfs::{self, ProcessSample};
use super::report::{row, ClientTotals};
use super::rig::{Rig, Role};
use super::{ChaosError, RunOptions};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, clap::Args)]
pub struct SoakOptions {
    #[command(flatten)]
    pub run: RunOptions,
    /// How long to soak.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=24 * 60))]
    pub minutes: u64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub sample_seconds: u64,
    /// Reads per attachment before a client detaches and attaches again.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=u64::MAX))]
    pub reads_per_attachment: u64,
}

/// Start, end and largest value of one figure over the soak.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    pub max: u64,
}

impl Span {
    fn new(value: u64) -> Span {
        Span { start: value, end: value, max: value }
    }

    fn add(&mut self, value: u64) {
        self.end = value;
        self.max = self.max.max(value);
    }
}

/// One process's figures over the soak.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcessSpans {
    pub rss_kib: Span,
    pub fd_count: Span,
    pub mapping_count: Span,
    pub region_memfd_count: Span,
}

impl ProcessSpans {
    fn new(sample: ProcessSample) -> ProcessSpans {
        ProcessSpans {
            rss_kib: Span::new(sample.rss_kib),
            fd_count: Span::new(sample.fd_count),
            mapping_count: Span::new(sample.mapping_count),
            region_memfd_count: Span::new(sample.region_memfd_count),
        }
    }

    fn add(&mut self, sample: ProcessSample) {
        self.rss_kib.add(sample.rss_kib);
        self.fd_count.add(sample.fd_count);
        self.mapping_count.add(sample.mapping_count);
        self.region_memfd_count.add(sample.region_memfd_count);
    }
}

/// One sample, for the JSON series.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TimedSample {
    pub seconds: u64,
    pub reader: ProcessSample,
    pub exporter: ProcessSample,
    pub reads_ok: u64,
    pub attaches: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct SoakReport {
    pub command: String,
    pub minutes: u64,
    pub clients: usize,
    pub depth: u32,
    pub reads_per_attachment: u64,
    pub transport: &'static str,
    pub totals: ClientTotals,
    /// Engine exits during the soak (nothing is killed on purpose).
    pub engine_deaths: u64,
    /// Over the samples taken while the clients run (the first one `sample_seconds` in).
    pub reader: ProcessSpans,
    pub exporter: ProcessSpans,
    /// After every client was killed and its region reclaimed (bounded wait).
    pub reader_after_clients: ProcessSample,
    pub exporter_after_clients: ProcessSample,
    pub samples: Vec<TimedSample>,
}

impl SoakReport {
    pub fn clean(&self) -> bool {
        self.totals.wrong_reads == 0 && self.totals.hangs == 0 && self.engine_deaths == 0
    }

    pub fn table(&self) -> String {
        let mut text = format!(
            "rdma-chaos soak: {} min, {} clients at depth {}, detaching every {} reads, UCX {}\n",
            self.minutes, self.clients, self.depth, self.reads_per_attachment, self.transport
        );
        text += &row("reads with the right bytes", self.totals.reads_ok);
        text += &row("attaches / detaches", format!("{} / {}", self.totals.attaches, self.totals.detaches));
        text += &row("wrong bytes served (reads)", self.totals.wrong_reads);
        text += &row("hangs", self.totals.hangs);
        text += &row("reads failed with an error code", self.totals.read_errors);
        text += &row("engine deaths", self.engine_deaths);
        text += "\nprocess   figure              start      end      max\n";
        for (name, spans) in [("reader", &self.reader), ("exporter", &self.exporter)] {
            for (figure, span) in [
                ("RSS KiB", spans.rss_kib),
                ("open fds", spans.fd_count),
                ("mappings", spans.mapping_count),
                ("region memfds", spans.region_memfd_count),
            ] {
                text += &format!("{name:<9} {figure:<16} {:>8} {:>8} {:>8}\n", span.start, span.end, span.max);
            }
        }
        let after = &self.reader_after_clients;
        text += &format!(
            "\nreader after every client was killed: RSS {} KiB, {} fds, {} mappings, {} region memfds\n",
            after.rss_kib, after.fd_count, after.mapping_count, after.region_memfd_count
        );
        text
    }
}

pub fn run(options: &SoakOptions) -> Result<SoakReport, ChaosError> {
    let run = &options.run;
    let mut rig = Rig::start(run, options.reads_per_attachment)?;
    let sample = |rig: &Rig| (ProcessSample::of(rig.reader.pid()), ProcessSample::of(rig.exporter.pid()));
    let mut report = SoakReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        minutes: options.minutes,
        clients: run.clients,
        depth: run.depth,
        reads_per_attachment: options.reads_per_attachment,
        transport: run.transport.name(),
        ..SoakReport::default()
    };
    let started = Instant::now();
    let end = started + Duration::from_secs(options.minutes * 60);
    let slots: Vec<usize> = rig.clients.iter().map(|client| client.slot).collect();
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_secs(options.sample_seconds).min(end.saturating_duration_since(Instant::now())),
        );
        for role in [Role::Reader, Role::Exporter] {
            let engine = rig.engine(role);
            if let Some(status) = engine.exited() {
                tracing::error!("{role:?} exited ({status}); its log ends:\n{}", engine.log_tail());
                report.engine_deaths += 1;
                engine.restart()?;
            }
        }
        let (reader, exporter) = sample(&rig);
        if report.samples.is_empty() {
            (report.reader, report.exporter) = (ProcessSpans::new(reader), ProcessSpans::new(exporter));
        }
        report.reader.add(reader);
        report.exporter.add(exporter);
        let totals = ClientTotals::of(&rig.counters, slots.iter().copied());
        report.samples.push(TimedSample {
            seconds: started.elapsed().as_secs(),
            reader,
            exporter,
            reads_ok: totals.reads_ok,
            attaches: totals.attaches,
        });
    }
    report.totals = ClientTotals::of(&rig.counters, slots.iter().copied());
    rig.kill_clients();
    // Figures for after the last client: the region memfds must go back to zero.
    let deadline = Instant::now() + Duration::from_secs(20);
    while procfs::region_memfds(rig.reader.pid()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    (report.reader_after_clients, report.exporter_after_clients) = sample(&rig);
    Ok(report)
}

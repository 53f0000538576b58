//! `rdma-bench compare`: the engine against what SeaweedFS users run today, in one run.
//!
//! It starts its own master, volume server, exporter, reading engines and sidecar in a
//! temporary directory ([`cluster`]), uploads one set of files through SeaweedFS's own API
//! (random bytes, `application/octet-stream`, so stored uncompressed), checks that every path
//! gives every file's bytes, then measures each path × size × concurrency for a fixed time
//! ([`drive`]), alternating paths inside each cell's round so that a noisy moment hurts all
//! paths alike:
//!
//! - `http`: the volume server's `GET /<fid>` with keep-alive (the floor);
//! - `local`: the engine reading the volume files on this host;
//! - `stream`: a reading engine with default flags that locates the volume through the master
//!   and reads it from the default exporter over the stream transport;
//! - `ucx_tcp`, `ucx_sm`: the same over UCX (tcp; shared memory), in the opt-in mode;
//! - `sidecar`: `rdma-sidecar`'s `GET /<fid>` on the stream reader.
//!
//! Each result carries its ratio to `http` at the same size and concurrency, and the CPU
//! seconds per GB moved that the volume host (volume server + exporter) spent meanwhile.

mod cluster;
mod drive;
mod render;

pub use render::{render_compare, write_svg};

use crate::histogram::Histogram;
use cluster::Cluster;
use drive::Measured;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use volume_format::file_id::FileId;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("setting up the run: {0}")]
    Setup(String),
    #[error("uploading through SeaweedFS: {0}")]
    Upload(String),
    #[error("path {path} does not give the uploaded bytes: {reason}")]
    Verify { path: &'static str, reason: String },
    #[error("during the measurement: {0}")]
    Load(String),
}

/// The paths, in table order.
pub const PATHS: [&str; 6] = ["http", "local", "stream", "ucx_tcp", "ucx_sm", "sidecar"];
/// File sizes measured.
pub const SIZES: [usize; 3] = [4096, 65536, 1 << 20];
/// Concurrencies measured.
pub const CONCURRENCIES: [usize; 2] = [1, 32];

#[derive(Clone, Debug)]
pub struct CompareOptions {
    pub weed: PathBuf,
    /// `rdma-engine` and `rdma-sidecar` (default: beside this binary).
    pub engine: PathBuf,
    pub sidecar: PathBuf,
    /// Measured time per path and cell, split over rounds.
    pub cell_ms: u64,
    pub rounds: u32,
    /// Files uploaded per size.
    pub files_per_size: usize,
}

/// One path at one size and concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct CompareResult {
    pub path: &'static str,
    pub size_bytes: u64,
    pub concurrency: u64,
    pub reads_per_sec: f64,
    pub bytes_per_sec: f64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub ratio_to_http: Option<f64>,
    pub volume_host_cpu_seconds_per_gb: Option<f64>,
}

/// A target of the issue and whether this run met it (reported, never asserted).
#[derive(Clone, Debug, Serialize)]
pub struct CompareTarget {
    pub what: String,
    pub value: Option<f64>,
    /// ">=" or "<=".
    pub relation: &'static str,
    pub bound: f64,
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub command: String,
    pub seaweedfs_version: String,
    pub files_per_size: usize,
    pub cell_ms: u64,
    pub rounds: u32,
    pub results: Vec<CompareResult>,
    pub targets: Vec<CompareTarget>,
    /// Paths that could not be measured, and why (a missing binary, say).
    pub not_measured: Vec<String>,
    pub wall_time_ms: u64,
}

/// Files uploaded for one size.
struct SizeSet {
    size: usize,
    fids: Vec<String>,
    file_ids: Vec<FileId>,
}

pub fn run(options: &CompareOptions) -> Result<CompareReport, CompareError> {
    let started = Instant::now();
    let mut not_measured = Vec::new();
    let mut cluster = Cluster::start_seaweedfs(&options.weed)?;
    let sets = upload(&cluster, options.files_per_size)?;
    cluster.start_engines(&options.engine)?;
    if options.sidecar.is_file() {
        cluster.start_sidecar(&options.sidecar)?;
    } else {
        not_measured.push(format!("sidecar: no binary at {}", options.sidecar.display()));
    }
    let paths: Vec<&'static str> =
        PATHS.into_iter().filter(|path| *path != "sidecar" || cluster.sidecar_address.is_some()).collect();
    for set in &sets {
        for &path in &paths {
            verify(&cluster, path, set)?;
        }
    }
    let volume_host = cluster.volume_host_pids();
    let mut results = Vec::new();
    for set in &sets {
        for concurrency in CONCURRENCIES {
            let mut cells: Vec<(Measured, u64)> = paths.iter().map(|_| (Measured::default(), 0)).collect();
            let slice = Duration::from_millis((options.cell_ms / options.rounds.max(1) as u64).max(50));
            for _ in 0..options.rounds.max(1) {
                for (index, &path) in paths.iter().enumerate() {
                    let cpu_before: u64 = volume_host.iter().map(|&pid| crate::machine::process_cpu_jiffies(pid)).sum();
                    let measured = measure(&cluster, path, set, concurrency, slice)?;
                    let cpu_after: u64 = volume_host.iter().map(|&pid| crate::machine::process_cpu_jiffies(pid)).sum();
                    cells[index].1 += cpu_after.saturating_sub(cpu_before);
                    merge(&mut cells[index].0, measured);
                }
            }
            let http_rate = cells[0].0.reads_per_sec();
            for (index, (measured, jiffies)) in cells.iter().enumerate() {
                results.push(result(paths[index], set.size, concurrency, measured, *jiffies, http_rate));
            }
        }
    }
    let targets = targets(&results);
    Ok(CompareReport {
        command: super::command_line(),
        seaweedfs_version: weed_version(&options.weed),
        files_per_size: options.files_per_size,
        cell_ms: options.cell_ms,
        rounds: options.rounds,
        results,
        targets,
        not_measured,
        wall_time_ms: started.elapsed().as_millis() as u64,
    })
}

fn merge(total: &mut Measured, slice: Measured) {
    total.reads += slice.reads;
    total.bytes += slice.bytes;
    total.elapsed += slice.elapsed;
    total.latency_ns.merge(&slice.latency_ns);
}

fn result(
    path: &'static str,
    size: usize,
    concurrency: usize,
    measured: &Measured,
    jiffies: u64,
    http_reads_per_sec: f64,
) -> CompareResult {
    let quantile = |histogram: &Histogram, q| histogram.quantile(q);
    let gigabytes = measured.bytes as f64 / 1e9;
    // SAFETY: sysconf has no memory effects; _SC_CLK_TCK is always defined.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    CompareResult {
        path,
        size_bytes: size as u64,
        concurrency: concurrency as u64,
        reads_per_sec: measured.reads_per_sec(),
        bytes_per_sec: measured.bytes_per_sec(),
        p50_ns: quantile(&measured.latency_ns, 0.5),
        p99_ns: quantile(&measured.latency_ns, 0.99),
        ratio_to_http: (http_reads_per_sec > 0.0).then(|| measured.reads_per_sec() / http_reads_per_sec),
        volume_host_cpu_seconds_per_gb: (gigabytes > 0.0).then(|| jiffies as f64 / ticks_per_second / gigabytes),
    }
}

/// Uploads `count` files of each size through the master's assign and a multipart POST.
fn upload(cluster: &Cluster, count: usize) -> Result<Vec<SizeSet>, CompareError> {
    use rand::{RngCore, SeedableRng};
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let mut random = rand::rngs::SmallRng::seed_from_u64(0x5eed);
    let mut sets = Vec::new();
    for size in SIZES {
        let mut fids = Vec::with_capacity(count);
        for index in 0..count {
            let mut bytes = vec![0u8; size];
            random.fill_bytes(&mut bytes);
            let (status, body) = cluster::http_get(&agent, &format!("http://{}/dir/assign", cluster.master_address))
                .map_err(CompareError::Upload)?;
            let assign: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|error| CompareError::Upload(format!("assign answered {status}: {error}")))?;
            let (Some(fid), Some(url)) = (assign["fid"].as_str(), assign["url"].as_str()) else {
                return Err(CompareError::Upload(format!("assign answered {status}: {assign}")));
            };
            post_file(&agent, &format!("http://{url}/{fid}"), &format!("file-{size}-{index}.bin"), &bytes)?;
            fids.push(fid.to_string());
        }
        let file_ids = fids
            .iter()
            .map(|fid| fid.parse().map_err(|error| CompareError::Upload(format!("fid {fid}: {error}"))))
            .collect::<Result<_, _>>()?;
        sets.push(SizeSet { size, fids, file_ids });
    }
    Ok(sets)
}

fn post_file(agent: &ureq::Agent, url: &str, name: &str, bytes: &[u8]) -> Result<(), CompareError> {
    let boundary = "rdmaBenchBoundary0123456789";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    agent
        .post(url)
        .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"))
        .send_bytes(&body)
        .map_err(|error| CompareError::Upload(format!("POST {url}: {error}")))?;
    Ok(())
}

/// Every file of `set` read once through `path` is the volume server's own GET of it.
fn verify(cluster: &Cluster, path: &'static str, set: &SizeSet) -> Result<(), CompareError> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let fail = |reason: String| CompareError::Verify { path, reason };
    for (fid, file_id) in set.fids.iter().zip(&set.file_ids) {
        let (status, expected) =
            cluster::http_get(&agent, &format!("http://{}/{fid}", cluster.volume_address)).map_err(&fail)?;
        if status != 200 || expected.len() != set.size {
            return Err(fail(format!("the volume server answered {status} with {} bytes for {fid}", expected.len())));
        }
        let got = match path {
            "http" => expected.clone(),
            "sidecar" => {
                let address = cluster.sidecar_address.as_deref().unwrap_or_default();
                let (status, body) = cluster::http_get(&agent, &format!("http://{address}/{fid}")).map_err(&fail)?;
                if status != 200 {
                    return Err(fail(format!("{fid}: status {status}")));
                }
                body
            }
            engine => {
                read_through_engine(cluster, engine, *file_id).map_err(|reason| fail(format!("{fid}: {reason}")))?
            }
        };
        if got != expected {
            return Err(fail(format!("{fid}: {} bytes differ from the volume server's {}", got.len(), expected.len())));
        }
    }
    Ok(())
}

fn read_through_engine(cluster: &Cluster, engine: &str, file_id: FileId) -> Result<Vec<u8>, String> {
    let request = crate::cat::CatRequest {
        socket: cluster.socket(engine),
        file_id,
        range: None,
        timeout: Duration::from_secs(20),
    };
    let output = crate::cat::run(&request).map_err(|error| error.to_string())?;
    let expected_source = match engine {
        "local" | "stream" => engine,
        _ => "rdma",
    };
    if output.source.name() != expected_source {
        return Err(format!("served by {} instead of {expected_source}", output.source.name()));
    }
    Ok(output.data)
}

fn measure(
    cluster: &Cluster,
    path: &'static str,
    set: &SizeSet,
    concurrency: usize,
    duration: Duration,
) -> Result<Measured, CompareError> {
    match path {
        "http" => drive::http_reads(&cluster.volume_address, &set.fids, set.size, concurrency, duration),
        "sidecar" => {
            let address = cluster.sidecar_address.as_deref().unwrap_or_default();
            drive::http_reads(address, &set.fids, set.size, concurrency, duration)
        }
        engine => drive::engine_reads(&cluster.socket(engine), &set.file_ids, set.size, concurrency, duration),
    }
}

fn find<'a>(results: &'a [CompareResult], path: &str, size: usize, concurrency: usize) -> Option<&'a CompareResult> {
    results.iter().find(|result| {
        result.path == path && result.size_bytes == size as u64 && result.concurrency == concurrency as u64
    })
}

/// The targets, at concurrency 1 and 32.
fn targets(results: &[CompareResult]) -> Vec<CompareTarget> {
    let mut targets = Vec::new();
    for concurrency in CONCURRENCIES {
        let goals: [(&str, usize, f64); 9] = [
            ("local", 4096, 100.0),
            ("local", 1 << 20, 4.0),
            ("stream", 4096, if concurrency == 1 { 4.0 } else { 10.0 }),
            ("stream", 1 << 20, 2.0),
            ("ucx_sm", 4096, 50.0),
            ("ucx_sm", 1 << 20, 3.0),
            ("ucx_tcp", 4096, 5.0),
            ("ucx_tcp", 1 << 20, 1.0),
            ("sidecar", 4096, 1.5),
        ];
        for (path, size, bound) in goals {
            let value = find(results, path, size, concurrency).and_then(|result| result.ratio_to_http);
            targets.push(CompareTarget {
                what: format!("{path} {} concurrency {concurrency}: × HTTP", render::size_label(size as u64)),
                value,
                relation: ">=",
                bound,
                met: value.map(|value| value >= bound),
            });
        }
        // The volume host's CPU per GB on the RDMA paths against what it spends on HTTP.
        for (path, bound) in [("stream", 0.3), ("ucx_tcp", 0.5), ("ucx_sm", 0.5)] {
            let per_gb =
                |path| find(results, path, 1 << 20, concurrency).and_then(|r| r.volume_host_cpu_seconds_per_gb);
            let value = per_gb(path).zip(per_gb("http")).map(|(rdma, http)| rdma / http.max(1e-9));
            targets.push(CompareTarget {
                what: format!("{path} 1 MiB concurrency {concurrency}: volume host CPU/GB ÷ HTTP's"),
                value,
                relation: "<=",
                bound,
                met: value.map(|value| value <= bound),
            });
        }
    }
    targets
}

fn weed_version(weed: &std::path::Path) -> String {
    std::process::Command::new(weed)
        .arg("version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default()
}

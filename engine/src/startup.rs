//! The start-up report: one log line per topic, so an operator sees at once what the host
//! gives the engine (huge pages, NUMA, RDMA devices, UCX transports, io_uring, the machine).

use std::path::Path;

use crate::config::Config;

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|text| text.trim().to_string())
}

fn read_number(path: impl AsRef<Path>) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// Logs the report (before the engine serves).
pub fn report(config: &Config) {
    machine();
    hugepages(config);
    numa_and_rdma_devices();
    io_uring();
    if config.listen.is_some() || !config.peer.is_empty() || config.export_port.is_some() {
        ucx_transports();
    }
}

fn machine() {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    tracing::info!(
        kernel = sysinfo::System::kernel_version().unwrap_or_default(),
        cpus = system.cpus().len(),
        memory_mib = system.total_memory() >> 20,
        available_mib = system.available_memory() >> 20,
        "start-up report: machine"
    );
}

fn hugepages(config: &Config) {
    let base = Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB");
    let (total, free, reserved) = (
        read_number(base.join("nr_hugepages")),
        read_number(base.join("free_hugepages")),
        read_number(base.join("resv_hugepages")),
    );
    tracing::info!(
        policy = ?config.hugepages,
        total_2mib = total,
        free_2mib = free,
        reserved_2mib = reserved,
        "start-up report: huge pages (regions are hugetlb memfds when these allow)"
    );
}

fn numa_and_rdma_devices() {
    let nodes = read_trimmed("/sys/devices/system/node/online").unwrap_or_else(|| "0".into());
    let devices: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let node = read_trimmed(entry.path().join("device/numa_node")).unwrap_or_else(|| "?".into());
                    format!("{name} (NUMA node {node})")
                })
                .collect()
        })
        .unwrap_or_default();
    tracing::info!(
        numa_nodes = %nodes,
        rdma_devices = ?devices,
        "start-up report: NUMA and RDMA devices (regions are allocated on the node of the control thread's CPU)"
    );
}

fn io_uring() {
    let disabled = read_number("/proc/sys/kernel/io_uring_disabled");
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes one io_uring_params (120 bytes) in `params`;
    // a descriptor it returns is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    let available = fd >= 0;
    let reason = if available { String::new() } else { std::io::Error::last_os_error().to_string() };
    if available {
        // SAFETY: the descriptor was just returned to us and is not used elsewhere.
        unsafe { libc::close(fd as libc::c_int) };
    }
    tracing::info!(
        available,
        io_uring_disabled = disabled,
        reason,
        "start-up report: io_uring (what local reads use; pread threads where it is unavailable)"
    );
}

fn ucx_transports() {
    match ucx::Context::new(ucx::Features::RMA | ucx::Features::AM) {
        Ok(context) => {
            let transports = context.transports();
            tracing::info!(?transports, "start-up report: UCX transports found (UCX_TLS selects among them)");
        }
        Err(error) => tracing::warn!(%error, "start-up report: UCX context cannot be created"),
    }
}

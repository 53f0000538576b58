//! Facts about the machine a benchmark ran on (from `sysinfo`), and the
//! CPU time stolen by the hypervisor while it ran (from `/proc/stat`).

use serde::Serialize;
use sysinfo::{CpuRefreshKind, RefreshKind, System};

#[derive(Clone, Debug, Serialize)]
pub struct MachineFacts {
    pub host_name: Option<String>,
    pub os: Option<String>,
    pub kernel_version: Option<String>,
    pub cpu_arch: String,
    pub cpu_brand: String,
    pub cpu_vendor: String,
    pub cpu_frequency_mhz: u64,
    pub logical_cpu_count: usize,
    pub physical_core_count: Option<usize>,
    pub total_memory_bytes: u64,
    /// Huge pages configured (`/proc/sys/vm/nr_hugepages`).
    pub nr_hugepages: Option<u64>,
    pub load_average: [f64; 3],
}

impl MachineFacts {
    pub fn collect() -> MachineFacts {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_frequency())
                .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
        );
        let first_cpu = system.cpus().first();
        let load = System::load_average();
        MachineFacts {
            host_name: System::host_name(),
            os: System::long_os_version(),
            kernel_version: System::kernel_version(),
            cpu_arch: System::cpu_arch(),
            cpu_brand: first_cpu.map(|cpu| cpu.brand().trim().to_string()).unwrap_or_default(),
            cpu_vendor: first_cpu.map(|cpu| cpu.vendor_id().to_string()).unwrap_or_default(),
            cpu_frequency_mhz: first_cpu.map(|cpu| cpu.frequency()).unwrap_or(0),
            logical_cpu_count: system.cpus().len(),
            physical_core_count: system.physical_core_count(),
            total_memory_bytes: system.total_memory(),
            nr_hugepages: std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
                .ok()
                .and_then(|text| text.trim().parse().ok()),
            load_average: [load.one, load.five, load.fifteen],
        }
    }
}

/// The all-CPU line of `/proc/stat`: total, busy and stolen jiffies.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    total: u64,
    busy: u64,
    steal: u64,
}

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = text.lines().find(|line| line.starts_with("cpu ")) else {
            return CpuTimes::default();
        };
        // user nice system idle iowait irq softirq steal (guest time is
        // already inside user and nice)
        let fields: Vec<u64> =
            line.split_whitespace().skip(1).take(8).map(|field| field.parse().unwrap_or(0)).collect();
        let field = |index: usize| fields.get(index).copied().unwrap_or(0);
        let total: u64 = fields.iter().sum();
        CpuTimes { total, busy: total - field(3) - field(4) - field(7), steal: field(7) }
    }

    /// Percent of CPU time stolen between `self` (earlier) and `later`.
    pub fn steal_percent_until(&self, later: &CpuTimes) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        later.steal.saturating_sub(self.steal) as f64 * 100.0 / total as f64
    }
}

/// User + system jiffies of a process (all its threads), 0 if unreadable.
pub fn process_cpu_jiffies(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after ")".
    let Some(rest) = text.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<u64> = rest.split_whitespace().map(|field| field.parse().unwrap_or(0)).collect();
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

/// How busy the machine was with other work while a benchmark ran: CPU
/// time used by processes other than the ones named, as a percentage of
/// all CPUs' time. A few percent is background noise; tens of percent (a
/// compiler on a 2-vCPU VM) means the figures of that run are not usable.
#[derive(Debug)]
pub struct Interference {
    start: CpuTimes,
    own_start: u64,
    pids: Vec<u32>,
}

impl Interference {
    /// Starts counting; `pids` are the benchmark's own processes (this one
    /// is always included).
    pub fn start(pids: &[u32]) -> Interference {
        let mut pids = pids.to_vec();
        pids.push(std::process::id());
        let own_start = pids.iter().map(|&pid| process_cpu_jiffies(pid)).sum();
        Interference { start: CpuTimes::now(), own_start, pids }
    }

    /// Adds a process started after `start` (its whole CPU time counts).
    pub fn add_pid(&mut self, pid: u32) {
        self.pids.push(pid);
    }

    /// (other processes' CPU %, steal %) since `start`.
    pub fn finish(&self) -> (f64, f64) {
        let end = CpuTimes::now();
        let own_end: u64 = self.pids.iter().map(|&pid| process_cpu_jiffies(pid)).sum();
        let total = end.total.saturating_sub(self.start.total);
        let busy = end.busy.saturating_sub(self.start.busy);
        let own = own_end.saturating_sub(self.own_start);
        let other = if total == 0 { 0.0 } else { busy.saturating_sub(own) as f64 * 100.0 / total as f64 };
        (other, self.start.steal_percent_until(&end))
    }
}

/// Most `/proc` entries (processes, then file descriptors of one process)
/// looked at by [`tcp_listener_pid`].
const PROC_ENTRIES_MAX: usize = 65_536;

/// The process listening on TCP `port` (any address, IPv4 or IPv6), found
/// through `/proc/net/tcp{,6}` and the socket links in `/proc/<pid>/fd`.
/// Only processes this user may inspect are seen; `None` if not found.
pub fn tcp_listener_pid(port: u16) -> Option<u32> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for fields in text.lines().skip(1).map(|line| line.split_whitespace().collect::<Vec<_>>()) {
            let local_port =
                fields.get(1).and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && fields.get(3) == Some(&LISTEN) {
                inodes.extend(fields.get(9).map(|inode| format!("socket:[{inode}]")));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let processes = std::fs::read_dir("/proc").ok()?;
    for process in processes.flatten().take(PROC_ENTRIES_MAX) {
        let Some(pid) = process.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else { continue };
        for fd in fds.flatten().take(PROC_ENTRIES_MAX) {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            if inodes.iter().any(|inode| link.as_os_str() == inode.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The `UCX_*` variables of process `pid` (from `/proc/<pid>/environ`, as it
/// was started); `None` if unreadable.
pub fn ucx_environment_of(pid: u32) -> Option<std::collections::BTreeMap<String, String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        bytes
            .split(|&byte| byte == 0)
            .filter_map(|entry| std::str::from_utf8(entry).ok()?.split_once('='))
            .filter(|(name, _)| name.starts_with("UCX_"))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
    )
}

/// Most threads of one process [`TaskTimes::of`] looks at.
const TASKS_MAX: usize = 4096;

/// What the threads of one process did so far, from `/proc/<pid>/task/*/`
/// (`schedstat`: time on a CPU and time runnable but waiting for one, in ns;
/// `status`: context switches). Threads that ended are not counted, except
/// in this process's CPU time and switches (`getrusage`: the bench's floor
/// threads end with each slice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskTimes {
    pub cpu_ns: u64,
    /// Runnable, waiting for a CPU (the run queue).
    pub waiting_for_cpu_ns: u64,
    /// Voluntary context switches: the thread slept (a futex, poll, a blocking call).
    pub sleeps: u64,
    /// Involuntary context switches: the scheduler took the CPU away.
    pub preemptions: u64,
}

impl TaskTimes {
    /// The sums over the threads of `pid`; zeros if it cannot be read.
    pub fn of(pid: u32) -> TaskTimes {
        let mut times = TaskTimes::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return times };
        for task in tasks.flatten().take(TASKS_MAX) {
            let path = task.path();
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let mut fields = schedstat.split_whitespace().map(|field| field.parse::<u64>().unwrap_or(0));
            times.cpu_ns += fields.next().unwrap_or(0);
            times.waiting_for_cpu_ns += fields.next().unwrap_or(0);
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            for line in status.lines() {
                let count = |prefix: &str| line.strip_prefix(prefix).and_then(|rest| rest.trim().parse::<u64>().ok());
                if let Some(count) = count("voluntary_ctxt_switches:") {
                    times.sleeps += count;
                } else if let Some(count) = count("nonvoluntary_ctxt_switches:") {
                    times.preemptions += count;
                }
            }
        }
        if pid == std::process::id() {
            if let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
                let ns =
                    |time: nix::sys::time::TimeVal| time.tv_sec() as u64 * 1_000_000_000 + time.tv_usec() as u64 * 1000;
                times.cpu_ns = ns(usage.user_time()) + ns(usage.system_time());
                times.sleeps = usage.voluntary_context_switches() as u64;
                times.preemptions = usage.involuntary_context_switches() as u64;
            }
        }
        times
    }

    /// What happened between `earlier` and `self` (a thread that ended in
    /// between can make a field go back: it counts as 0).
    pub fn since(&self, earlier: &TaskTimes) -> TaskTimes {
        TaskTimes {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            waiting_for_cpu_ns: self.waiting_for_cpu_ns.saturating_sub(earlier.waiting_for_cpu_ns),
            sleeps: self.sleeps.saturating_sub(earlier.sleeps),
            preemptions: self.preemptions.saturating_sub(earlier.preemptions),
        }
    }

    fn add(&mut self, other: &TaskTimes) {
        self.cpu_ns += other.cpu_ns;
        self.waiting_for_cpu_ns += other.waiting_for_cpu_ns;
        self.sleeps += other.sleeps;
        self.preemptions += other.preemptions;
    }
}

/// The processes of a benchmark whose [`TaskTimes`] are taken around each
/// measurement, by role (`bench`, `engine`, `reader`, `exporter`).
#[derive(Clone, Debug)]
pub struct Watched {
    processes: Vec<(&'static str, u32)>,
}

/// What each watched process did during some measurements, summed, with
/// the wall time they took.
#[derive(Clone, Debug, Default)]
pub struct WatchedSpan {
    pub wall_ns: u64,
    pub by_process: Vec<(&'static str, TaskTimes)>,
}

impl Watched {
    /// This process as `bench`, then `others` (role, pid).
    pub fn new(others: &[(&'static str, u32)]) -> Watched {
        let mut processes = vec![("bench", std::process::id())];
        processes.extend_from_slice(others);
        Watched { processes }
    }

    /// Runs `measure` and adds what the watched processes did during it to `span`.
    pub fn during<T>(&self, span: &mut WatchedSpan, measure: impl FnOnce() -> T) -> T {
        let before: Vec<TaskTimes> = self.processes.iter().map(|&(_, pid)| TaskTimes::of(pid)).collect();
        let start = std::time::Instant::now();
        let result = measure();
        span.wall_ns += start.elapsed().as_nanos() as u64;
        for (&(role, pid), before) in self.processes.iter().zip(&before) {
            let delta = TaskTimes::of(pid).since(before);
            match span.by_process.iter_mut().find(|(name, _)| *name == role) {
                Some((_, times)) => times.add(&delta),
                None => span.by_process.push((role, delta)),
            }
        }
        result
    }
}

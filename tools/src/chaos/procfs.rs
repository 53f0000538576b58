//! What `/proc` says about an engine and the machine: region memfds, open fds, mappings,
//! resident memory, free huge pages.

use serde::Serialize;

/// The name the engine gives its region memfds (`/proc/PID/fd/N -> /memfd:rdma-region…`).
const REGION_MEMFD_NAME: &str = "rdma-region";
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Region memfds process `pid` holds open.
pub fn region_memfds(pid: u32) -> usize {
    fd_targets(pid).iter().filter(|target| target.contains(REGION_MEMFD_NAME)).count()
}

fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .map(|target| target.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One sample of an engine process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcessSample {
    pub rss_kib: u64,
    pub fd_count: u64,
    pub mapping_count: u64,
    pub region_memfd_count: u64,
}

impl ProcessSample {
    pub fn of(pid: u32) -> ProcessSample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = field_kib(&status, "VmRSS:");
        let targets = fd_targets(pid);
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        ProcessSample {
            rss_kib,
            fd_count: targets.len() as u64,
            mapping_count: maps.lines().count() as u64,
            region_memfd_count: targets.iter().filter(|target| target.contains(REGION_MEMFD_NAME)).count() as u64,
        }
    }
}

fn field_kib(text: &str, field: &str) -> u64 {
    text.lines().find_map(|line| line.strip_prefix(field)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Huge pages of region memfds process `pid` has mapped, in KiB (`Shared_Hugetlb` +
/// `Private_Hugetlb` of its `rdma-region` mappings in `/proc/PID/smaps`): attributable to
/// regions, unlike `HugePages_Free`, which UCX's own huge page pools and other processes
/// move too.
pub fn region_hugetlb_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_region = false;
    let mut total_kib = 0;
    for line in smaps.lines() {
        // A mapping's header line starts with its address range ("7f..-7f.. rw-s ...").
        if line.split_whitespace().next().is_some_and(|first| first.contains('-') && !first.ends_with(':')) {
            in_region = line.contains(REGION_MEMFD_NAME);
        } else if in_region {
            total_kib += field_kib(line, "Shared_Hugetlb:") + field_kib(line, "Private_Hugetlb:");
        }
    }
    total_kib
}

/// `HugePages_Free` (machine-wide).
pub fn hugepages_free() -> u64 {
    field_kib(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default(), "HugePages_Free:")
}

/// Huge pages reserved for the run (root only), given back when dropped.
#[derive(Debug)]
pub struct HugepageReservation {
    previous: u64,
}

impl HugepageReservation {
    /// Adds `pages` to `vm.nr_hugepages`; `Err` says why not (not root, no memory).
    pub fn add(pages: u64) -> Result<HugepageReservation, String> {
        let read = || -> Result<u64, String> {
            let text = std::fs::read_to_string(NR_HUGEPAGES).map_err(|error| format!("{NR_HUGEPAGES}: {error}"))?;
            text.trim().parse().map_err(|_| format!("{NR_HUGEPAGES} holds {text:?}"))
        };
        let previous = read()?;
        std::fs::write(NR_HUGEPAGES, (previous + pages).to_string())
            .map_err(|error| format!("cannot reserve huge pages (root only): {error}"))?;
        let reservation = HugepageReservation { previous };
        let now = read()?;
        if now < previous + pages {
            return Err(format!("asked for {} huge pages, the kernel reserved {now}", previous + pages));
        }
        Ok(reservation)
    }
}

impl Drop for HugepageReservation {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.previous.to_string());
    }
}

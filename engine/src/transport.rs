//! Which remote transport an engine runs (`--transport`), decided once at start with one log
//! line that says which and why.
//!
//! - `stream` (our protocol over TCP) needs nothing from the host and exposes nothing but
//!   exported needles.
//! - `ucx` is for RDMA NICs, where the NIC checks rkeys. Without a verbs device UCX runs its
//!   software transports, whose get and put handlers answer any connected peer at any address
//!   (`docs/security.md`): that needs `--allow-ucx-software-rma`.
//! - `auto` (the default) takes UCX only when a verbs device is present *and* UCX can register
//!   a read-only file mapping, as the export role does; real NICs refuse that today
//!   (`docs/rdma-hardware.md`), and then the stream transport serves over the same network.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use clap::ValueEnum;
use serde::Serialize;

/// `--transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// UCX when a verbs device is present and can register the export's mappings, else stream.
    Auto,
    /// Our protocol over TCP.
    Stream,
    /// UCX one-sided gets.
    Ucx,
}

/// The transport chosen, and why (for the start-up line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub kind: TransportKind,
    pub why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    #[error("--transport ucx on a host without a verbs device runs UCX's software transports, which let any connected peer read and write this process's memory; add --allow-ucx-software-rma (on both roles) to accept that, or use --transport stream (docs/security.md)")]
    SoftwareRma,
}

/// Where verbs devices show up.
pub const INFINIBAND_CLASS: &str = "/sys/class/infiniband";

/// The verbs devices under `class` (`/sys/class/infiniband`).
pub fn verbs_devices(class: &Path) -> Vec<String> {
    let mut devices: Vec<String> = std::fs::read_dir(class)
        .map(|entries| {
            entries.filter_map(Result::ok).map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    devices.sort();
    devices
}

/// Decides the transport. `devices`: the verbs devices present; `probe`: whether UCX can
/// register a read-only file mapping here (asked only when it matters).
pub fn choose(
    asked: TransportKind,
    allow_software_rma: bool,
    devices: &[String],
    probe: impl FnOnce() -> Result<(), String>,
) -> Result<Choice, ChoiceError> {
    match (asked, devices.is_empty()) {
        (TransportKind::Stream, _) => Ok(Choice { kind: TransportKind::Stream, why: "asked for (--transport stream)".into() }),
        (TransportKind::Ucx, true) if !allow_software_rma => Err(ChoiceError::SoftwareRma),
        (TransportKind::Ucx, true) => Ok(Choice {
            kind: TransportKind::Ucx,
            why: "asked for with --allow-ucx-software-rma: no verbs device, so UCX runs its software transports and any connected peer can read and write this process's memory".into(),
        }),
        (TransportKind::Ucx, false) => {
            Ok(Choice { kind: TransportKind::Ucx, why: format!("asked for; verbs devices {}", devices.join(",")) })
        }
        (TransportKind::Auto, true) => {
            Ok(Choice { kind: TransportKind::Stream, why: "no verbs device (/sys/class/infiniband is empty)".into() })
        }
        (TransportKind::Auto, false) => match probe() {
            Ok(()) => Ok(Choice {
                kind: TransportKind::Ucx,
                why: format!("verbs devices {} register read-only file mappings", devices.join(",")),
            }),
            Err(reason) => Ok(Choice {
                kind: TransportKind::Stream,
                why: format!(
                    "verbs devices {} are present but UCX cannot register a read-only file mapping ({reason}); see docs/rdma-hardware.md",
                    devices.join(",")
                ),
            }),
        },
    }
}

/// Registers one page of a read-only shared file mapping with a UCX context of the engine's
/// features, as the export role registers a `.dat`: real NICs refuse it (UCX asks for remote
/// write access on every InfiniBand registration), UCX's software transports take it.
pub fn probe_read_only_registration() -> Result<(), String> {
    use std::io::Write;
    let mut file = tempfile_in_tmp().map_err(|error| format!("cannot make a probe file: {error}"))?;
    file.write_all(&[0u8; 4096]).map_err(|error| format!("cannot write the probe file: {error}"))?;
    let context = ucx::Context::with_config(crate::rdma::features(), &[]).map_err(|error| error.to_string())?;
    // SAFETY: a fresh read-only shared mapping of our own 4 KiB file; unmapped below after the
    // registration is dropped.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(format!("cannot map the probe file: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the mapping lives until the munmap below, after the region is dropped.
    let registered = unsafe { ucx::MemoryRegion::register(&context, address.cast(), 4096) };
    let outcome = registered.map(drop).map_err(|error| error.to_string());
    // SAFETY: our mapping, no longer registered.
    unsafe { libc::munmap(address, 4096) };
    outcome
}

fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("rdma-engine-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// The network device that holds `address` (for `UCX_NET_DEVICES`), if one does.
pub fn device_of(address: IpAddr) -> Option<String> {
    let addresses = nix::ifaddrs::getifaddrs().ok()?;
    for interface in addresses {
        let Some(storage) = interface.address else { continue };
        let ip = if let Some(v4) = storage.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = storage.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if ip == address {
            return Some(interface.interface_name);
        }
    }
    None
}

/// With UCX: sets `UCX_NET_DEVICES` to the device of the `--listen` address unless the
/// environment names devices already, so UCX listens nowhere else. Call before any thread.
/// Returns what it did, for the start-up line.
pub fn restrict_ucx_devices(listen: Option<SocketAddr>) -> String {
    if let Some(devices) = std::env::var_os("UCX_NET_DEVICES") {
        return format!("UCX_NET_DEVICES={} (from the environment)", devices.to_string_lossy());
    }
    let Some(listen) = listen else {
        return "UCX_NET_DEVICES not set: a reader's UCX listens on every device (give UCX_NET_DEVICES)".into();
    };
    if listen.ip().is_unspecified() {
        return format!("UCX_NET_DEVICES not set: --listen {listen} is every address (give UCX_NET_DEVICES)");
    }
    match device_of(listen.ip()) {
        Some(device) => {
            std::env::set_var("UCX_NET_DEVICES", &device);
            format!("UCX_NET_DEVICES={device} (the device of --listen {listen})")
        }
        None => format!("UCX_NET_DEVICES not set: no device holds {} (give UCX_NET_DEVICES)", listen.ip()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_stream_transport_without_a_verbs_device_or_a_registration() {
        let never = || -> Result<(), String> { panic!("no probe without a device") };
        assert_eq!(choose(TransportKind::Auto, false, &[], never).unwrap().kind, TransportKind::Stream);
        let devices = vec!["mlx5_0".to_string()];
        let refused = choose(TransportKind::Auto, false, &devices, || Err("Bad address".into())).unwrap();
        assert_eq!(refused.kind, TransportKind::Stream);
        assert!(refused.why.contains("Bad address") && refused.why.contains("mlx5_0"), "{}", refused.why);
        assert_eq!(choose(TransportKind::Auto, false, &devices, || Ok(())).unwrap().kind, TransportKind::Ucx);
    }

    #[test]
    fn ucx_without_a_verbs_device_needs_the_opt_in() {
        assert!(matches!(choose(TransportKind::Ucx, false, &[], || Ok(())), Err(ChoiceError::SoftwareRma)));
        assert_eq!(choose(TransportKind::Ucx, true, &[], || Ok(())).unwrap().kind, TransportKind::Ucx);
        assert_eq!(
            choose(TransportKind::Stream, false, &["mlx5_0".into()], || Ok(())).unwrap().kind,
            TransportKind::Stream
        );
    }

    #[test]
    fn the_probe_registers_a_read_only_mapping_with_the_software_transports() {
        // No NIC here: UCX's tcp and shared-memory domains take any mapping. On a NIC this is
        // where the InfiniBand domain refuses it (docs/rdma-hardware.md).
        assert_eq!(probe_read_only_registration(), Ok(()));
    }

    #[test]
    fn loopback_is_found_by_its_address() {
        assert_eq!(device_of("127.0.0.1".parse().unwrap()).as_deref(), Some("lo"));
        assert_eq!(device_of("192.0.2.77".parse().unwrap()), None);
    }
}

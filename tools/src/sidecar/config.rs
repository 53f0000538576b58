//! `rdma-sidecar`'s command line, and its settings in a TOML file (`--config FILE`).
//!
//! The file follows the engine's scheme ([`rdma_engine::config_file`], the same code): keys
//! are the flags' names, a flag on the command line replaces the file's value, an unknown key
//! or a value of the wrong kind is refused with the key's name, and `--check-config` prints
//! the effective settings and exits. `deploy/rdma-sidecar.toml` lists every key.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use rdma_engine::config::LogFormat;
use rdma_engine::config_file::{merge_config_file_for, ConfigFileArgs, ConfigFileError};
use serde::Serialize;

use super::SidecarConfig;

/// Serve needle reads of a local engine over HTTP.
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "rdma-sidecar", version)]
#[serde(rename_all = "kebab-case")]
pub struct SidecarArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub file: ConfigFileArgs,
    /// The reading engine's control socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// Address to listen on, HOST:PORT (port 0 picks one; the log says which).
    #[arg(long)]
    pub listen: String,
    /// Queue pairs to attach with (at most the engine's `max-queue-pairs`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub queue_pairs: u32,
    /// SQ entries per queue pair (a power of two; the CQ tracks twice as many reads).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(2..=4096))]
    pub sq_entries: u32,
    /// Buffer area in MiB: reads in flight at once need about 1 MiB each.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(4..=1024))]
    pub buffer_mib: u64,
    /// Most HTTP connections open at once (each has a thread).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_connections: u64,
    /// Give up on a read after this long.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("--sq-entries {0} is not a power of two")]
    SqEntries(u32),
}

impl SidecarArgs {
    /// Parses `args` with the configuration file's settings (if `--config` names one) placed
    /// before them. Errors of the command line itself are clap's (it prints them and exits).
    pub fn parse_with_file(args: Vec<OsString>) -> Result<SidecarArgs, SidecarConfigError> {
        let merged = merge_config_file_for(&SidecarArgs::command(), args)?;
        Ok(SidecarArgs::parse_from(merged))
    }

    /// Checks what clap's ranges cannot.
    pub fn validate(&self) -> Result<(), SidecarConfigError> {
        if !self.sq_entries.is_power_of_two() {
            return Err(SidecarConfigError::SqEntries(self.sq_entries));
        }
        Ok(())
    }

    /// The sidecar's settings.
    pub fn sidecar_config(&self) -> SidecarConfig {
        SidecarConfig {
            socket: self.socket.clone(),
            listen: self.listen.clone(),
            queue_pairs: self.queue_pairs,
            sq_entries: self.sq_entries,
            buffer_mib: self.buffer_mib,
            max_connections: self.max_connections as usize,
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(file: &str, flags: &[&str]) -> Result<SidecarArgs, SidecarConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, file).unwrap();
        let mut args: Vec<OsString> = vec!["rdma-sidecar".into(), "--config".into(), path.into()];
        args.extend(flags.iter().map(OsString::from));
        SidecarArgs::parse_with_file(args)
    }

    #[test]
    fn file_settings_are_read_and_flags_replace_them() {
        let file = "socket = \"/run/e.sock\"\nlisten = \"127.0.0.1:1\"\nqueue-pairs = 2\ntimeout-ms = 700\n";
        let args = parse(file, &["--queue-pairs", "3"]).unwrap();
        assert_eq!((args.queue_pairs, args.timeout_ms, args.sq_entries), (3, 700, 64));
        assert_eq!(args.socket, PathBuf::from("/run/e.sock"));
        let printed = rdma_engine::config_file::effective_toml(&args);
        assert!(printed.contains("queue-pairs = 3") && printed.contains("listen = \"127.0.0.1:1\""), "{printed}");
    }

    #[test]
    fn errors_name_the_key() {
        let error = parse("socket = \"/s\"\nlisten = \"x:1\"\nqueue-pair = 2\n", &[]).unwrap_err();
        assert!(error.to_string().contains("`queue-pair` is not a setting of rdma-sidecar"), "{error}");
        let error = parse("socket = \"/s\"\nlisten = 1.5\nbuffer-mib = [1]\n", &[]).unwrap_err();
        assert!(error.to_string().contains("`buffer-mib`"), "{error}");
        let args = parse("socket = \"/s\"\nlisten = \"x:1\"\nsq-entries = 48\n", &[]).unwrap();
        assert!(args.validate().unwrap_err().to_string().contains("--sq-entries 48"));
    }
}

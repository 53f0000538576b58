//! `--config PATH`: every setting of `rdma-engine` in one TOML file, keyed by its flag's name
//! (`volume-dir = ["/data"]`, `master = "10.0.0.2:9333"`, `no-http-fallback = true`).
//!
//! The file is turned into flags placed before the command line's own, then everything goes
//! through the one parser and [`Config::validate`](crate::config::Config::validate): a flag
//! given on the command line replaces the file's value (a list too), and every error names
//! the key (the flag) and why. `--check-config` prints the effective configuration and exits.
//!
//! Nothing here is particular to the engine: `rdma-sidecar` reads its file with the same
//! scheme through [`merge_config_file_for`] and [`effective_toml`].

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command, CommandFactory};
use serde::Serialize;

use crate::config::Config;

/// `--config FILE` and `--check-config`, for every binary that reads a file this way
/// (`#[command(flatten)]`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConfigFileArgs {
    /// Read the settings from this TOML file first, keyed by flag name (deploy/ has an
    /// example with every key and its default); flags given here replace its values.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print it as TOML, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// Keys the file may not set: they are about this run, not the configuration.
const NOT_IN_FILES: [&str; 4] = ["config", "check-config", "help", "version"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the configuration file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: key `{key}` is not a setting of {program} (see {program} --help)")]
    UnknownKey { path: String, key: String, program: String },
    #[error("{path}: key `{key}` {why}")]
    WrongType { path: String, key: String, why: &'static str },
}

/// The engine's command line with the configuration file's settings (if `--config` names
/// one) placed before its own flags.
pub fn merge_config_file(args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    merge_config_file_for(&Config::command(), args)
}

/// The command line of `command` with the configuration file's settings (if `--config`
/// names one) placed before its own flags.
pub fn merge_config_file_for(command: &Command, args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let Some(path) = config_path(&args) else { return Ok(args) };
    let text = std::fs::read_to_string(&path)
        .map_err(|source| ConfigFileError::Read { path: path.display().to_string(), source })?;
    let from_file = file_args(command, &path, &text, &given_flags(&args))?;
    let mut merged = Vec::with_capacity(args.len() + from_file.len());
    let mut args = args.into_iter();
    merged.extend(args.next());
    merged.extend(from_file);
    merged.extend(args);
    Ok(merged)
}

/// The path after `--config` (`--config PATH` or `--config=PATH`).
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// The long flags the command line itself gives.
fn given_flags(args: &[OsString]) -> HashSet<String> {
    args.iter()
        .skip(1)
        .filter_map(|arg| {
            let arg = arg.to_string_lossy();
            let name = arg.strip_prefix("--")?;
            Some(name.split_once('=').map_or(name, |(name, _)| name).to_string())
        })
        .collect()
}

/// The file's settings as flags, leaving out those the command line gives.
fn file_args(
    command: &Command,
    path: &Path,
    text: &str,
    given: &HashSet<String>,
) -> Result<Vec<OsString>, ConfigFileError> {
    let path_text = path.display().to_string();
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| ConfigFileError::Parse {
        path: path_text.clone(),
        message: error.message().to_string(),
    })?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let argument = command
            .get_arguments()
            .find(|argument| argument.get_long() == Some(key.as_str()))
            .filter(|_| !NOT_IN_FILES.contains(&key.as_str()));
        let Some(argument) = argument else {
            let program = command.get_name().to_string();
            return Err(ConfigFileError::UnknownKey { path: path_text, key: key.clone(), program });
        };
        if given.contains(key) {
            continue;
        }
        let wrong = |why| ConfigFileError::WrongType { path: path_text.clone(), key: key.clone(), why };
        match (argument.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => args.push(OsString::from(format!("--{key}"))),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, _) => return Err(wrong("is a switch: write true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    args.push(flag_with_value(key, item).ok_or_else(|| wrong("lists strings or numbers"))?);
                }
            }
            (ArgAction::Append, _) => return Err(wrong("is a list: write [\"…\", …]")),
            (_, value) => args.push(flag_with_value(key, value).ok_or_else(|| wrong("takes a string or a number"))?),
        }
    }
    Ok(args)
}

/// `--key=value` for a scalar.
fn flag_with_value(key: &str, value: &toml::Value) -> Option<OsString> {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => number.to_string(),
        _ => return None,
    };
    Some(OsString::from(format!("--{key}={text}")))
}

/// The effective configuration as TOML, keyed as a file would be (for `--check-config`).
pub fn effective_toml(config: &impl Serialize) -> String {
    toml::to_string(config).unwrap_or_else(|error| format!("# cannot print the configuration: {error}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_settings_come_first_and_flags_replace_them() {
        let given = given_flags(&args(&["rdma-engine", "--peer", "10.0.0.5:1", "--max-clients=8"]));
        let text = "socket = \"/run/e.sock\"\nmax-clients = 4\npeer = [\"10.0.0.6:1\"]\nno-http-fallback = true\nhugepages = \"off\"\n";
        let merged = file_args(&Config::command(), Path::new("e.toml"), text, &given).unwrap();
        let merged: Vec<String> = merged.iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
        // In key order; --peer and --max-clients are the command line's.
        assert_eq!(merged, ["--hugepages=off", "--no-http-fallback", "--socket=/run/e.sock"]);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let none = HashSet::new();
        let error = file_args(&Config::command(), Path::new("e.toml"), "sockett = \"x\"", &none).unwrap_err();
        assert!(error.to_string().contains("`sockett` is not a setting"), "{error}");
        let error = file_args(&Config::command(), Path::new("e.toml"), "peer = \"10.0.0.5:1\"", &none).unwrap_err();
        assert!(error.to_string().contains("`peer` is a list"), "{error}");
        let error = file_args(&Config::command(), Path::new("e.toml"), "no-http-fallback = 1", &none).unwrap_err();
        assert!(error.to_string().contains("`no-http-fallback` is a switch"), "{error}");
        let error = file_args(&Config::command(), Path::new("e.toml"), "check-config = true", &none).unwrap_err();
        assert!(error.to_string().contains("not a setting"), "{error}");
        assert!(matches!(
            file_args(&Config::command(), Path::new("e.toml"), "[x", &none),
            Err(ConfigFileError::Parse { .. })
        ));
    }
}

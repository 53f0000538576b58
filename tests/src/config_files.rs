//! Checks shared by the tests of the example configuration files in `deploy/`
//! (`rdma-engine.toml`, `rdma-sidecar.toml`): every flag of a binary's `--help` is listed, and
//! the binary loads the file with `--check-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workspace_binary;

/// Flags that are about one run, never in a file.
const NOT_IN_FILES: [&str; 4] = ["config", "check-config", "help", "version"];

/// `deploy/<name>` in this repository.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

/// The long flags `binary --help` lists, but those [`NOT_IN_FILES`].
pub fn flags_in_help(binary: &str) -> Vec<String> {
    let help = Command::new(workspace_binary(binary)).arg("--help").output().expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let flags: Vec<String> = help
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .filter(|flag| !NOT_IN_FILES.contains(flag) && !flag.is_empty())
        .map(str::to_string)
        .collect();
    assert!(!flags.is_empty(), "could not read the flags from --help:\n{help}");
    flags
}

/// Asserts that the example file `deploy/<name>` lists every flag of `binary --help` (set, or
/// commented out as `# key = …`). Returns how many flags were checked.
pub fn assert_example_lists_every_flag(binary: &str, name: &str) -> usize {
    let text = std::fs::read_to_string(example(name)).expect("read the example configuration");
    let flags = flags_in_help(binary);
    for flag in &flags {
        let listed = text.lines().any(|line| {
            let line = line.trim_start_matches('#').trim_start();
            line.starts_with(&format!("{flag} ="))
        });
        assert!(listed, "deploy/{name} does not list `{flag}`");
    }
    flags.len()
}

/// `binary --config <file> <extra> --check-config`: (exit code, stdout, stderr).
pub fn check_config(binary: &str, file: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(workspace_binary(binary))
        .arg("--config")
        .arg(file)
        .args(extra)
        .arg("--check-config")
        .output()
        .expect("run --check-config");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

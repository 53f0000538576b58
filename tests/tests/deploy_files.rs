//! The deploy files work as written: the systemd units pass `systemd-analyze verify`, the
//! Kubernetes manifests pass the Kubernetes JSON schemas (offline, `kubernetes-validate
//! --strict`), the container files pass hadolint and build only workspace binaries on a
//! UCX-only runtime image, every command line in them is one the binaries accept, the
//! probe fails when the engine is dead, and the docs stand alone.
//!
//! Each checker is also shown a broken copy and must refuse it, so a check that passes
//! cannot be one that passes everything. A missing checker fails the test unless
//! `RDMA_TESTS_ALLOW_SKIP` names it (`systemd-analyze`, `kubernetes-validate`,
//! `hadolint`); `deploy/install-deps.sh` installs all three.

use integration_tests::{skip_or_fail, workspace_binary, Engine};
use shm_layout::entry::ErrorCode;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

/// The files of `folder` (relative to the repository) whose names end with `suffix`, sorted.
fn files(folder: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repository().join(folder))
        .unwrap_or_else(|error| panic!("read {folder}: {error}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no {suffix} files in {folder}");
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// A checker on PATH or where `deploy/install-deps.sh` puts it; `None` after failing or
/// skipping (as `RDMA_TESTS_ALLOW_SKIP` says).
fn checker(name: &str) -> Option<PathBuf> {
    let deploy_tools =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/seaweedfs-rdma/deploy-tools/bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).chain(deploy_tools).map(|dir| dir.join(name)).find(|path| path.is_file());
    if found.is_none() {
        skip_or_fail(name, &format!("{name} is not installed (deploy/install-deps.sh installs it)"));
    }
    found
}

fn run(program: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|error| panic!("run {}: {error}", program.display()))
}

/// What a checker said, for a failure message.
fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

// ---- systemd -------------------------------------------------------------------------

/// `systemd-analyze verify` exits 0 on unknown keys and bad values (it only warns), so a
/// unit passes when it exits 0 *and* says nothing.
fn verify_units(systemd_analyze: &Path, units: &[PathBuf]) -> Result<(), String> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["verify".as_ref()];
    args.extend(units.iter().map(|unit| unit.as_os_str()));
    let output = run(systemd_analyze, &args);
    let text = said(&output);
    if output.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(text)
    }
}

/// Copies of the units with `/usr/local/bin/` pointing at the built binaries (verify
/// checks that `ExecStart` is an executable), in a temporary directory.
fn installable_units(dir: &Path) -> Vec<PathBuf> {
    let binaries = workspace_binary("rdma-engine").parent().expect("binary directory").to_path_buf();
    workspace_binary("rdma-sidecar");
    files("deploy/systemd", ".service")
        .iter()
        .map(|unit| {
            let copy = dir.join(unit.file_name().expect("unit name"));
            let text = read(unit).replace("/usr/local/bin/", &format!("{}/", binaries.display()));
            std::fs::write(&copy, text).expect("write unit copy");
            copy
        })
        .collect()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(systemd_analyze) = checker("systemd-analyze") else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let units = installable_units(dir.path());
    let names: Vec<_> = units.iter().map(|unit| unit.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["rdma-engine.service", "rdma-engine-export.service", "rdma-sidecar.service"] {
        assert!(names.iter().any(|name| name == expected), "deploy/systemd has no {expected}: {names:?}");
    }
    if let Err(text) = verify_units(&systemd_analyze, &units) {
        panic!("systemd-analyze verify refused deploy/systemd:\n{text}");
    }
    for unit in &units {
        let text = read(unit);
        for option in
            ["ProtectSystem=strict", "NoNewPrivileges=yes", "RestrictAddressFamilies=", "CapabilityBoundingSet="]
        {
            assert!(text.contains(option), "{} lacks {option}", unit.display());
        }
    }

    // A misspelt option is refused (systemd would ignore it and run the service unhardened).
    let broken = dir.path().join("rdma-engine.service");
    std::fs::write(&broken, read(&broken).replace("ProtectSystem=strict", "ProtectSytem=strict")).unwrap();
    let complaint = verify_units(&systemd_analyze, &[broken]).expect_err("verify accepted a misspelt option");
    assert!(complaint.contains("ProtectSytem"), "verify's complaint does not name the key: {complaint}");
}

/// `ExecStart` of a unit: the binary's name and its arguments.
fn exec_start(unit: &Path) -> (String, Vec<String>) {
    let text = read(unit);
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{} has no ExecStart", unit.display()));
    let mut words = line.split_whitespace().map(str::to_string);
    let program = words.next().expect("ExecStart names a program");
    let name = Path::new(&program).file_name().expect("program name").to_string_lossy().into_owned();
    (name, words.collect())
}

/// The binary parses `args` (every flag known, every value of its type): clap checks each
/// argument before it acts on a trailing `--help`, which then exits 0 without starting.
fn assert_arguments_parse(binary: &str, args: &[String], whose: &str) {
    let mut with_help: Vec<&std::ffi::OsStr> = args.iter().map(|arg| arg.as_ref()).collect();
    with_help.push("--help".as_ref());
    let output = run(&workspace_binary(binary), &with_help);
    assert!(output.status.success(), "{whose}: {binary} refuses {args:?}:\n{}", said(&output));
}

#[test]
fn unit_command_lines_are_ones_the_binaries_accept() {
    for unit in files("deploy/systemd", ".service") {
        let (binary, args) = exec_start(&unit);
        assert_arguments_parse(&binary, &args, &unit.display().to_string());
    }
}

// ---- Kubernetes ----------------------------------------------------------------------

fn validate_manifests(validator: &Path, manifests: &[PathBuf]) -> Result<String, String> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--strict".as_ref()];
    args.extend(manifests.iter().map(|manifest| manifest.as_os_str()));
    let output = run(validator, &args);
    let text = said(&output);
    if output.status.success() && !text.contains("WARN") && !text.contains("ERROR") {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn kubernetes_manifests_pass_the_schemas() {
    let Some(validator) = checker("kubernetes-validate") else { return };
    let manifests = files("deploy/kubernetes", ".yaml");
    let report = validate_manifests(&validator, &manifests).unwrap_or_else(|text| panic!("deploy/kubernetes:\n{text}"));
    for resource in ["daemonset/rdma-engine-reader", "statefulset/seaweedfs-volume", "networkpolicy/"] {
        assert!(report.contains(resource), "no {resource} was validated:\n{report}");
    }
    let all: String = manifests.iter().map(|manifest| read(manifest)).collect();
    for needed in ["hugepages-2Mi:", "rdma/hca:", "emptyDir:", "hostPath:", "livenessProbe:", "path: /health"] {
        assert!(all.contains(needed), "the manifests lack {needed}");
    }

    // A misspelt field deep in a pod spec is refused.
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.yaml");
    let text = read(&manifests[0]);
    assert!(text.contains("readOnlyRootFilesystem"), "the test's misspelling has nothing to replace");
    std::fs::write(&broken, text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")).unwrap();
    let complaint = validate_manifests(&validator, &[broken]).expect_err("the validator accepted a misspelt field");
    assert!(complaint.contains("readOnlyRootFileSystem"), "the complaint does not name the field: {complaint}");
}

/// Each container of the manifests that runs one of our images: the binary its image
/// runs and its `args` (with `$(POD_IP)` given a value), and every exec probe command.
struct ManifestCommands {
    containers: Vec<(String, Vec<String>)>,
    probes: Vec<Vec<String>>,
}

/// Reads the few shapes the manifests use (`image: seaweedfs-rdma/NAME:TAG`, then an
/// `args:` list of `- value` lines; `command: [JSON array]` for probes): enough to check
/// them with the binaries, and it fails loudly on a manifest it finds none in.
fn manifest_commands(text: &str) -> ManifestCommands {
    let mut commands = ManifestCommands { containers: Vec::new(), probes: Vec::new() };
    let mut image: Option<String> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("image: ") {
            image = rest.strip_prefix("seaweedfs-rdma/").map(|name| name.split(':').next().unwrap_or(name).to_string());
        } else if let Some(rest) = trimmed.strip_prefix("command: ") {
            commands
                .probes
                .push(serde_json::from_str(rest).unwrap_or_else(|error| panic!("probe command {rest}: {error}")));
        } else if trimmed == "args:" {
            let indent = line.len() - trimmed.len();
            let mut args = Vec::new();
            while let Some(next) = lines.next_if(|next| next.len() - next.trim_start().len() > indent) {
                if next.trim_start().starts_with('#') {
                    continue;
                }
                let value = next.trim_start().strip_prefix("- ").expect("args are a list of `- value` lines");
                args.push(value.replace("$(POD_IP)", "10.0.0.5"));
            }
            if let Some(binary) = image.take() {
                commands.containers.push((binary, args));
            }
        }
    }
    commands
}

#[test]
fn manifest_command_lines_are_ones_the_binaries_accept() {
    let mut containers = 0;
    for manifest in files("deploy/kubernetes", ".yaml") {
        let commands = manifest_commands(&read(&manifest));
        for (binary, args) in &commands.containers {
            assert_arguments_parse(binary, args, &manifest.display().to_string());
            containers += 1;
        }
        for probe in &commands.probes {
            assert_arguments_parse(&probe[0], &probe[1..], &format!("{}, probe", manifest.display()));
        }
    }
    assert!(containers >= 3, "found only {containers} containers of our images in deploy/kubernetes");
}

/// The engine's probe (`ringstat --socket S --json`) succeeds on a live engine and fails
/// once it is dead: it is a health check, not a formality.
#[test]
fn engine_probe_fails_when_the_engine_is_dead() {
    let reader = read(&repository().join("deploy/kubernetes/reader-daemonset.yaml"));
    let probe = manifest_commands(&reader).probes.into_iter().next().expect("the reader DaemonSet has an exec probe");
    let mut engine = Engine::start(&[]);
    let socket_index = probe.iter().position(|arg| arg == "--socket").expect("the probe names --socket") + 1;
    let mut args = probe[1..].to_vec();
    args[socket_index - 1] = engine.socket.display().to_string();
    let ringstat = workspace_binary(&probe[0]);
    let probe_status = || Command::new(&ringstat).args(&args).output().expect("run the probe").status;
    assert!(probe_status().success(), "the probe fails on a live engine");
    engine.child.kill().expect("kill the engine");
    engine.child.wait().expect("reap the engine");
    let status = probe_status();
    assert!(!status.success(), "the probe succeeds with the engine dead ({status})");
}

// ---- container files -----------------------------------------------------------------

/// What matters in a container file beyond hadolint: multi-stage; the runtime stage
/// installs only UCX's library (or nothing), copies only binaries the build stage built,
/// and runs as a non-root user. Returns the binaries it ships.
fn check_container_file(text: &str) -> Result<Vec<String>, String> {
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    let (build, runtime) = match stages.as_slice() {
        [build, runtime] => (build, runtime),
        _ => return Err(format!("{} stages, expected a build and a runtime stage", stages.len())),
    };
    let installed: Vec<&str> = runtime
        .split("apt-get install")
        .skip(1)
        .flat_map(|rest| rest.split("&&").next().unwrap_or("").split_whitespace())
        .filter(|word| !word.starts_with('-') && *word != "\\")
        .collect();
    if let Some(extra) = installed.iter().find(|package| package.split('=').next() != Some("libucx0")) {
        return Err(format!("the runtime stage installs {extra}, not only libucx0"));
    }
    let shipped: Vec<String> = runtime
        .lines()
        .filter(|line| line.contains("target/release/"))
        .flat_map(|line| line.split_whitespace())
        .filter_map(|word| word.split("target/release/").nth(1).map(str::to_string))
        .collect();
    if shipped.is_empty() {
        return Err("the runtime stage copies no binary from the build stage".into());
    }
    if let Some(missing) = shipped.iter().find(|binary| !build.contains(&format!("--bin {binary}"))) {
        return Err(format!("the runtime stage copies {missing}, which the build stage does not build"));
    }
    if !runtime.lines().any(|line| line.starts_with("USER ") && !line.contains("root") && !line.starts_with("USER 0")) {
        return Err("the runtime stage does not switch to a non-root USER".into());
    }
    Ok(shipped)
}

fn hadolint(hadolint: &Path, file: &Path) -> Result<(), String> {
    let output = run(hadolint, &[file.as_os_str()]);
    if output.status.success() {
        Ok(())
    } else {
        Err(said(&output))
    }
}

#[test]
fn container_files_pass_hadolint_and_ship_only_ucx_and_the_binaries() {
    let containerfiles = files("deploy/containers", ".Containerfile");
    let mut shipped = Vec::new();
    for file in &containerfiles {
        let binaries = check_container_file(&read(file)).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        shipped.extend(binaries);
    }
    for binary in ["rdma-engine", "ringstat", "rdma-sidecar", "rdma-cat", "rdma-bench", "volgen"] {
        assert!(shipped.iter().any(|name| name == binary), "no container file ships {binary}");
    }
    for binary in &shipped {
        let source = repository().join(format!("tools/src/bin/{binary}.rs"));
        assert!(
            binary == "rdma-engine" || source.is_file(),
            "a container file ships {binary}, which is no workspace binary"
        );
    }
    assert!(
        check_container_file(&read(&containerfiles[0]).replace("libucx0=", "curl libucx0=")).is_err(),
        "the structure check accepted a runtime stage with an extra package"
    );

    let Some(hadolint_path) = checker("hadolint") else { return };
    for file in &containerfiles {
        hadolint(&hadolint_path, file).unwrap_or_else(|text| panic!("hadolint refused {}:\n{text}", file.display()));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.Containerfile");
    std::fs::write(&broken, read(&containerfiles[0]).replace("debian:bookworm-slim", "debian:latest")).unwrap();
    let complaint = hadolint(&hadolint_path, &broken).expect_err("hadolint accepted FROM debian:latest");
    assert!(complaint.contains("DL3007"), "hadolint's complaint is not the one about :latest: {complaint}");
}

// ---- docs ----------------------------------------------------------------------------

/// docs/operations.md copies `ErrorCode`'s table (shm-layout/src/entry.rs) faithfully:
/// every code with its value and its sentence, in table order, each with an action.
#[test]
fn operations_doc_has_every_error_code_as_the_table_says() {
    let doc = read(&repository().join("docs/operations.md"));
    let rows: Vec<Vec<&str>> = doc
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| line.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let codes: Vec<Vec<&str>> = rows.into_iter().filter(|row| row.len() == 4 && row[1].starts_with('-')).collect();
    assert_eq!(
        codes.len(),
        ErrorCode::ALL.len(),
        "docs/operations.md lists {} codes, the table has {}",
        codes.len(),
        ErrorCode::ALL.len()
    );
    for (row, code) in codes.iter().zip(ErrorCode::ALL) {
        assert_eq!(row[0], format!("`{}`", code.name()), "docs/operations.md, code order");
        assert_eq!(row[1], code.result().to_string(), "docs/operations.md, value of {}", code.name());
        assert_eq!(row[2], code.describe(), "docs/operations.md, meaning of {}", code.name());
        assert!(row[3].len() > 10, "docs/operations.md says nothing an operator does about {}", code.name());
    }
}

/// The repository's docs send no reader to the team's `shared/` folder, which a reader of
/// the repository does not have.
#[test]
fn docs_send_no_reader_outside_the_repository() {
    let mut texts = vec![repository().join("README.md")];
    texts.extend(files("docs", ".md"));
    for folder in ["deploy", "deploy/systemd", "deploy/kubernetes", "deploy/containers"] {
        texts.extend(files(folder, ""));
    }
    let mut offenders = Vec::new();
    for path in texts.iter().filter(|path| path.is_file()) {
        for (number, line) in read(path).lines().enumerate() {
            if line.contains("shared/") {
                offenders.push(format!("{}:{}: {line}", path.display(), number + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "references a reader cannot follow:\n{}", offenders.join("\n"));
}

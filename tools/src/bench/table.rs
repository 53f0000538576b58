//! Tables for people: one row per figure, its floor and the ratio beside it. Laid out by
//! `comfy-table` (no borders; numbers right-aligned).

use super::nop::NopReport;
use super::read::ucx::UcxReadReport;
use super::read::{EngineVsFloor, ReadReport};
use super::Summary;
use super::Target;
use comfy_table::{presets, CellAlignment, Table};
use std::fmt::Write;

fn rate(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn nanos(value: Option<f64>) -> String {
    match value {
        Some(ns) if ns >= 100_000.0 => format!("{:.0}µs", ns / 1e3),
        Some(ns) if ns >= 10_000.0 => format!("{:.1}µs", ns / 1e3),
        Some(ns) => format!("{ns:.0}"),
        None => "-".into(),
    }
}

fn ratio(value: Option<f64>) -> String {
    value.map_or("-".into(), |r| format!("{r:.2}×"))
}

/// A table with `header`, laid out without borders.
fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header.iter().copied());
    table
}

/// Writes `table` to `out` with the columns in `numbers` right-aligned.
fn write_table(out: &mut String, mut table: Table, numbers: std::ops::Range<usize>) {
    for (index, column) in table.column_iter_mut().enumerate() {
        if numbers.contains(&index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let _ = writeln!(out, "{table}");
}

/// The columns of the NOP table a summary fills: rate and latencies.
const NOP_HEADER: [&str; 7] =
    ["configuration", "ops/s", "p50 ns", "p99 ns", "p99.9 ns", "floor (same rounds)", "ratio"];

fn row(table: &mut Table, label: &str, summary: Option<&Summary>, floor: &str, ratio_text: String) {
    let Some(summary) = summary else {
        table.add_row([label, "(not measured)"]);
        return;
    };
    table.add_row([
        label.to_string(),
        rate(summary.ops_per_sec),
        nanos(summary.p50_ns),
        nanos(summary.p99_ns),
        nanos(summary.p999_ns),
        floor.to_string(),
        ratio_text,
    ]);
}

pub fn render_nop(report: &NopReport) -> String {
    let mut out = String::new();
    let engine = |name: &str| report.engine.get(name).map(|figure| &figure.quiet);
    let floor = |name: &str| report.floors.get(name);
    let mut table = new_table(&NOP_HEADER);
    let bounce_p50 = floor("bounce").and_then(|s| s.p50_ns);
    row(
        &mut table,
        "engine 1qp depth 1",
        engine("qp1_depth1"),
        &format!("bounce p50 {}", nanos(bounce_p50)),
        format!("{} (≤ 1.5× target)", ratio(report.ratios.single_p50_vs_bounce_p50)),
    );
    for depth in [8u32, 32] {
        let key = format!("depth{depth}");
        let ring = floor(&format!("ring_{key}")).map_or(0.0, |s| s.ops_per_sec);
        let target = if depth == 32 { " (≥ 0.5× target)" } else { "" };
        row(
            &mut table,
            &format!("engine 1qp depth {depth}"),
            engine(&format!("qp1_{key}")),
            &format!("ring {} ops/s", rate(ring)),
            format!("{}{target}", ratio(report.ratios.ops_vs_ring_by_depth.get(&key).copied().flatten())),
        );
    }
    for depth in [1u32, 8, 32] {
        row(
            &mut table,
            &format!("engine 2qp depth {depth}"),
            engine(&format!("qp2_depth{depth}")),
            "(two client threads)",
            String::new(),
        );
    }
    row(
        &mut table,
        "engine wake from sleep",
        engine("wake_from_sleep"),
        &format!("futex p50 {}", nanos(floor("futex").and_then(|s| s.p50_ns))),
        format!("{} (≤ 1.5× target)", ratio(report.ratios.wake_p50_vs_futex_p50)),
    );
    write_table(&mut out, table, 1..5);
    let _ = writeln!(out, "diagnostic: the same engine driven by a client without the library (bare ring ends):");
    let mut table = new_table(&NOP_HEADER);
    for depth in [1u32, 8, 32] {
        let key = format!("depth{depth}");
        let library = report.ratios.library_vs_bare_client_by_depth.get(&key).copied().flatten();
        let engine_cost = report.ratios.bare_client_vs_ring_by_depth.get(&key).copied().flatten();
        row(
            &mut table,
            &format!("bare client depth {depth}"),
            report.bare_client.get(&key),
            &format!("library/bare {}", ratio(library)),
            format!("bare/ring {}", ratio(engine_cost)),
        );
    }
    write_table(&mut out, table, 1..5);
    let _ = writeln!(out, "floors:");
    let mut table = new_table(&NOP_HEADER);
    row(&mut table, "bounce (2 processes)", floor("bounce"), "", String::new());
    for depth in [1u32, 8, 32] {
        let name = format!("ring_depth{depth}");
        row(&mut table, &format!("ring depth {depth} (threads)"), floor(&name), "", String::new());
    }
    row(&mut table, "futex wake (2 procs)", floor("futex"), "", String::new());
    write_table(&mut out, table, 1..5);
    let _ = writeln!(
        out,
        "\nbest batched: {} ops/s ({}), bare ring at that depth {} ops/s",
        rate(report.ops_per_sec),
        report.ops_per_sec_config,
        rate(report.floor_ops_per_sec)
    );
    if report.contenders > 0 {
        let _ = writeln!(out, "beside {} busy-loop process(es), after the quiet run:", report.contenders);
        let mut table = new_table(&["configuration", "ops/s", "quiet", "p50 ns", "ratio to quiet"]);
        for (name, figure) in report.engine.iter().filter(|(_, figure)| figure.contended_ops_per_sec.is_some()) {
            table.add_row([
                name.clone(),
                rate(figure.contended_ops_per_sec.unwrap_or(0.0)),
                rate(figure.quiet.ops_per_sec),
                nanos(figure.contended_p50_ns),
                ratio(figure.contended_ratio),
            ]);
        }
        write_table(&mut out, table, 1..5);
    }
    targets(&mut out, &report.targets);
    let _ = writeln!(
        out,
        "engine sleeps during wake slices: {} for {} submissions; {}",
        report.engine_sleeps_in_wake_slices,
        report.wake_submissions,
        report.conditions.summary_line(&report.schedule)
    );
    if let Some(warning) = &report.conditions.interference_warning {
        let _ = writeln!(out, "WARNING: {warning}");
    }
    if let Some(warning) = &report.placement.warning {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}

fn targets(out: &mut String, targets: &[Target]) {
    for target in targets {
        let verdict = match target.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let value = target.value.map_or("-".into(), |v| if v > 1000.0 { rate(v) } else { format!("{v:.2}") });
        let bound = if target.bound > 1000.0 { rate(target.bound) } else { format!("{}", target.bound) };
        let _ = writeln!(out, "target {}: {value} {} {bound}: {verdict}", target.what, target.relation);
    }
}

fn gigabytes(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:.2}", v / 1e9))
}

pub fn render_read(report: &ReadReport) -> String {
    let mut out = String::new();
    let mut table = new_table(&[
        "size depth",
        "reads/s",
        "GB/s",
        "p50 ns",
        "p99 ns",
        "pread/s",
        "GB/s",
        "p50 ns",
        "ops×",
        "p50×",
        "+crc/s",
        "p50 ns",
        "ops×",
        "p50×",
    ]);
    for entry in &report.results {
        let [label, reads, bytes, p50, p99, floor_reads, floor_bytes, floor_p50, _] =
            comparison_cells(&entry.comparison);
        table.add_row([
            label,
            reads,
            bytes,
            p50,
            p99,
            floor_reads,
            floor_bytes,
            floor_p50,
            ratio(entry.comparison.reads_ratio),
            ratio(entry.comparison.p50_ratio),
            rate(entry.checked_floor_reads_per_sec),
            nanos(entry.checked_floor_p50_ns),
            ratio(entry.reads_ratio_vs_checked),
            ratio(entry.p50_ratio_vs_checked),
        ]);
    }
    write_table(&mut out, table, 1..14);
    contended(&mut out, report.contenders, report.results.iter().map(|entry| &entry.comparison));
    process_costs(&mut out, report.results.iter().map(|entry| &entry.comparison));
    let _ = writeln!(out, "{}\n{}", report.floor_method, report.conditions.summary_line(&report.schedule));
    if let Some(warning) = &report.conditions.interference_warning {
        let _ = writeln!(out, "WARNING: {warning}");
    }
    out
}

/// The columns both read tables share: size and depth, then the engine's
/// and the floor's rate, bandwidth and latencies.
fn comparison_cells(entry: &EngineVsFloor) -> [String; 9] {
    [
        format!("{} d{}", entry.size_label, entry.depth),
        rate(entry.reads_per_sec),
        gigabytes(entry.bytes_per_sec),
        nanos(entry.p50_ns),
        nanos(entry.p99_ns),
        rate(entry.floor_reads_per_sec),
        gigabytes(entry.floor_bytes_per_sec),
        nanos(entry.floor_p50_ns),
        nanos(entry.floor_p99_ns),
    ]
}

/// The contended run's rows (nothing if it did not run).
fn contended<'a>(out: &mut String, contenders: u32, entries: impl Iterator<Item = &'a EngineVsFloor>) {
    if contenders == 0 {
        return;
    }
    let _ = writeln!(out, "beside {contenders} busy-loop process(es), after the quiet run:");
    let mut table = new_table(&["size depth", "reads/s", "quiet", "p50 ns", "to quiet"]);
    for entry in entries {
        table.add_row([
            format!("{} d{}", entry.size_label, entry.depth),
            entry.contended_reads_per_sec.map_or("-".into(), rate),
            rate(entry.reads_per_sec),
            nanos(entry.contended_p50_ns),
            ratio(entry.contended_ratio),
        ]);
    }
    write_table(out, table, 1..5);
}

/// Where the time went: each watched process's CPU share, time waiting for
/// a CPU, and sleeps and CPU time per read, while the engine read and while
/// the floor ran.
fn process_costs<'a>(out: &mut String, entries: impl Iterator<Item = &'a EngineVsFloor>) {
    let mut table =
        new_table(&["size depth", "run", "process", "CPU %", "waits for CPU %", "CPU ns/read", "sleeps/read"]);
    let mut rows = 0;
    for entry in entries {
        for (run, costs) in [("engine", &entry.engine_costs), ("floor", &entry.floor_costs)] {
            for cost in costs {
                rows += 1;
                table.add_row([
                    format!("{} d{}", entry.size_label, entry.depth),
                    run.to_string(),
                    cost.process.to_string(),
                    format!("{:.0}", cost.cpu_percent),
                    format!("{:.0}", cost.waiting_for_cpu_percent),
                    format!("{:.0}", cost.cpu_ns_per_read),
                    format!("{:.2}", cost.sleeps_per_read),
                ]);
            }
        }
    }
    if rows > 0 {
        let _ = writeln!(out, "where the time went (per process, over each run's slices):");
        write_table(out, table, 3..7);
    }
}

fn signed_nanos(value: Option<f64>) -> String {
    value.map_or("-".into(), |ns| format!("{ns:+.0}"))
}

pub fn render_read_ucx(report: &UcxReadReport) -> String {
    let mut out = String::new();
    let mut table = new_table(&[
        "size depth",
        "reads/s",
        "GB/s",
        "p50 ns",
        "p99 ns",
        "gets/s",
        "GB/s",
        "p50 ns",
        "p99 ns",
        "bytes×",
        "p50×",
        "Δp50 ns",
    ]);
    for entry in &report.results {
        let [label, reads, bytes, p50, p99, floor_reads, floor_bytes, floor_p50, floor_p99] =
            comparison_cells(&entry.comparison);
        table.add_row([
            label,
            reads,
            bytes,
            p50,
            p99,
            floor_reads,
            floor_bytes,
            floor_p50,
            floor_p99,
            ratio(entry.comparison.bytes_ratio),
            ratio(entry.comparison.p50_ratio),
            signed_nanos(entry.p50_delta_ns),
        ]);
    }
    write_table(&mut out, table, 1..12);
    contended(&mut out, report.contenders, report.results.iter().map(|entry| &entry.comparison));
    process_costs(&mut out, report.results.iter().map(|entry| &entry.comparison));
    targets(&mut out, &report.targets);
    let tls = report.ucx_environment.bench.get("UCX_TLS").map_or("(UCX default)", String::as_str);
    let _ = writeln!(
        out,
        "{}\npeer {}; UCX_TLS {tls}; {}",
        report.floor_method,
        report.peer,
        report.conditions.summary_line(&report.schedule)
    );
    for warning in [&report.ucx_environment.warning, &report.conditions.interference_warning].into_iter().flatten() {
        let _ = writeln!(out, "WARNING: {warning}");
    }
    out
}

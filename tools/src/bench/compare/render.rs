//! `rdma-bench compare` for people: one table row per path, size and concurrency, with the
//! ratio to HTTP beside it, the targets, and an SVG bar chart of the ratios (plotters).

use super::{CompareReport, CompareResult, CONCURRENCIES, PATHS, SIZES};
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;

fn rate(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn micros(value: Option<u64>) -> String {
    value.map_or("-".into(), |ns| format!("{:.1}", ns as f64 / 1e3))
}

pub(super) fn size_label(size: u64) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

/// The report as a table.
pub fn render_compare(report: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rdma-bench compare — SeaweedFS {} ({} files per size)",
        report.seaweedfs_version, report.files_per_size
    );
    let _ = writeln!(
        out,
        "{:<8} {:>7} {:>4} {:>10} {:>10} {:>9} {:>9} {:>9} {:>12}",
        "path", "size", "conc", "reads/s", "GB/s", "p50 µs", "p99 µs", "× HTTP", "host CPU s/GB"
    );
    for result in &report.results {
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>4} {:>10} {:>10.3} {:>9} {:>9} {:>9} {:>12}",
            result.path,
            size_label(result.size_bytes),
            result.concurrency,
            rate(result.reads_per_sec),
            result.bytes_per_sec / 1e9,
            micros(result.p50_ns),
            micros(result.p99_ns),
            result.ratio_to_http.map_or("-".into(), |ratio| format!("{ratio:.2}×")),
            result.volume_host_cpu_seconds_per_gb.map_or("-".into(), |value| format!("{value:.3}")),
        );
    }
    let _ = writeln!(out, "\ntargets (reported, not asserted):");
    for target in &report.targets {
        let verdict = match target.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let value = target.value.map_or("-".into(), |value| format!("{value:.2}"));
        let _ = writeln!(out, "  {:<66} {:>8} {} {:<6} {verdict}", target.what, value, target.relation, target.bound);
    }
    for line in &report.not_measured {
        let _ = writeln!(out, "not measured: {line}");
    }
    let _ = writeln!(out, "wall time {:.1} s; command: {}", report.wall_time_ms as f64 / 1e3, report.command);
    out
}

fn find(results: &[CompareResult], path: &str, size: usize, concurrency: usize) -> Option<f64> {
    results
        .iter()
        .find(|r| r.path == path && r.size_bytes == size as u64 && r.concurrency == concurrency as u64)
        .and_then(|r| r.ratio_to_http)
}

/// Bar chart of each path's reads/s over HTTP's, per size and concurrency (log scale).
pub fn write_svg(report: &CompareReport, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let groups: Vec<(usize, usize)> =
        SIZES.iter().flat_map(|&size| CONCURRENCIES.iter().map(move |&concurrency| (size, concurrency))).collect();
    let paths: Vec<&str> = PATHS.iter().copied().filter(|path| *path != "http").collect();
    let largest = report.results.iter().filter_map(|r| r.ratio_to_http).fold(1.0f64, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("reads/s relative to SeaweedFS's HTTP GET (same run; 1 = HTTP)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..groups.len() as f64, (0.05f64..largest).log_scale())
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len())
        .x_label_formatter(&|x| {
            let index = x.floor() as usize;
            groups.get(index).map_or(String::new(), |(size, conc)| format!("{} c{conc}", size_label(*size as u64)))
        })
        .y_desc("× HTTP")
        .draw()
        .map_err(|error| error.to_string())?;
    let width = 0.8 / paths.len() as f64;
    for (path_index, path) in paths.iter().enumerate() {
        let color = Palette99::pick(path_index).to_rgba();
        let bars: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(group_index, (size, concurrency))| {
                let ratio = find(&report.results, path, *size, *concurrency)?;
                let left = group_index as f64 + 0.1 + path_index as f64 * width;
                Some(Rectangle::new([(left, 0.05), (left + width * 0.9, ratio.max(0.05))], color.filled()))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|error| error.to_string())?
            .label(*path)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(0.0, 1.0), (groups.len() as f64, 1.0)], BLACK)))
        .map_err(|error| error.to_string())?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|error| error.to_string())?;
    root.present().map_err(|error| error.to_string())
}

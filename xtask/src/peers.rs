//! The modes of `cargo xtask bench --peers` besides the workloads: `--syscalls`, `--memory`,
//! and `--plot` (throughput against K, and the SVG plots of docs/BENCHMARKS.md).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::plot::{self, draw_err};
use serde_json::Value;

use crate::bench::{Options, WORKLOADS};
use crate::fleet::{
    count_syscalls, measure_memory, memory_report, run_load, syscall_report, Fleet, FleetSpec, Kit,
    LoadRun, LoadTarget,
};

/// Medians of one target in one workload.
#[derive(Debug, Clone)]
pub struct SummaryRow {
    /// The target.
    pub label: String,
    /// Transfers/s.
    pub rate: Option<f64>,
    /// Server core µs per transfer.
    pub us: Option<f64>,
    /// The server processes' CPU µs per transfer.
    pub process_us: Option<f64>,
    /// p99 latency per transfer, ms.
    pub p99: Option<f64>,
}

/// Per workload (by name), the medians of every target.
pub type Summary = Vec<(String, Vec<SummaryRow>)>;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The medians over the rounds of `results` (lines labelled `rN:TARGET`), per target.
pub fn summarize(targets: &[LoadTarget], results: &str) -> Result<Vec<SummaryRow>> {
    let mut runs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in results.lines().filter(|l| !l.trim().is_empty()) {
        let d: Value = serde_json::from_str(line)?;
        if let Some((_, t)) = d["label"].as_str().and_then(|l| l.split_once(':')) {
            runs.entry(t.to_owned()).or_default().push(d.clone());
        }
    }
    Ok(targets
        .iter()
        .map(|t| {
            let mine = runs.get(&t.label).map(Vec::as_slice).unwrap_or_default();
            let get =
                |f: &dyn Fn(&Value) -> Option<f64>| median(mine.iter().filter_map(f).collect());
            SummaryRow {
                label: t.label.clone(),
                rate: get(&|d| d["transfers_per_s"].as_f64()),
                us: get(&|d| d["server_us_per_transfer"].as_f64()),
                process_us: get(&|d| d["server_process_us_per_transfer"].as_f64()),
                p99: get(&|d| d["latency_ms"]["p99"].as_f64()),
            }
        })
        .collect())
}

/// The fleet of the ranges of `WORKLOADS[workload]` with pasvd in its default mode only, the
/// floor serving `file` (and, if `confined`, the floor with pasvd's confinement calls), every
/// server on CPU 1.
fn default_fleet(
    kit: &Kit,
    out: &Path,
    workload: usize,
    name: &str,
    file: &str,
    confined: bool,
) -> Result<Fleet> {
    let w = &WORKLOADS[workload];
    Fleet::start(
        kit,
        &FleetSpec {
            ports: w.ports,
            prebound: w.prebound_range,
            per_lease: None,
            busy: None,
            baseline: None,
            floor: w.floor_range,
            floor_confined: confined.then_some(w.floor_confined_range),
            floor_file: kit.file(file)?,
            pin: true,
            run_dir: out.join(name).join("run"),
        },
    )
}

/// `--syscalls`: system calls (`strace -c -f`) and context switches (`perf stat`) per
/// transfer of every server, 1000 ports, K=8, 1 KiB RETR, a fixed number of transfers;
/// writes `target/pasv-bench/syscalls.md`.
pub fn syscalls(kit: &Kit, out: &Path, options: &Options) -> Result<()> {
    let fleet = default_fleet(kit, out, 1, "syscalls", "f1k.bin", true)?;
    let dir = out.join("syscalls");
    std::fs::create_dir_all(&dir)?;
    let run = LoadRun {
        file: "f1k.bin",
        k: 8,
        duration_s: 120.0,
        max_transfers: Some(options.transfers),
        pin: true,
        tls_ca: None,
        rate: None,
        threads: 0,
    };
    let mut rows = Vec::new();
    for t in &fleet.targets {
        let count = count_syscalls(kit, t, &run, &dir)?;
        println!(
            "{}: {} syscalls over {} transfers, {} context switches over {}",
            t.label, count.syscalls, count.transfers, count.context_switches, count.perf_transfers
        );
        rows.push((t.label.clone(), count));
    }
    drop(fleet);
    let report = syscall_report(&rows, options.transfers, run.k);
    std::fs::write(out.join("syscalls.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// `--memory`: memory of every server's processes with `--sessions` idle sessions and then
/// with a quarter of them downloading (16 MiB files, not read: the transfers stay under way);
/// writes `target/pasv-bench/memory.md`.
pub fn memory(kit: &Kit, out: &Path, options: &Options) -> Result<()> {
    let fleet = default_fleet(kit, out, 1, "memory", "f16m.bin", false)?;
    let transfers = (options.sessions / 4).max(1);
    let mut rows = Vec::new();
    for t in &fleet.targets {
        let row = measure_memory(t, options.sessions, transfers, "f16m.bin")
            .with_context(|| format!("memory of {}", t.label))?;
        println!("{}: {row:?}", t.label);
        rows.push((t.label.clone(), row));
    }
    drop(fleet);
    let report = memory_report(&rows, "16 MiB RETR, 1000-port range");
    std::fs::write(out.join("memory.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// Sessions of the throughput-against-K runs.
const KS: [u32; 4] = [1, 8, 32, 128];

/// `--plot`: throughput against K on 20 and 1000 ports (pasvd in its default mode, the
/// floor, the peers; 3 s runs, interleaved rounds), then docs/peers.svg (transfers/s and µs
/// per transfer of every server in every workload of `summary`) and docs/peers-k.svg.
pub fn k_sweep_and_plots(
    kit: &Kit,
    root: &Path,
    out: &Path,
    options: &Options,
    summary: &Summary,
) -> Result<()> {
    let rounds = if options.quick { 1 } else { options.rounds };
    // (ports, label, K, median transfers/s)
    let mut sweep: Vec<(u16, String, u32, f64)> = Vec::new();
    for (workload, name) in [(0usize, "k-sweep-20"), (1, "k-sweep-1000")] {
        let ports = WORKLOADS[workload].ports;
        let fleet = default_fleet(kit, out, workload, name, "f1k.bin", false)?;
        let mut rates: BTreeMap<(String, u32), Vec<f64>> = BTreeMap::new();
        for round in 1..=rounds {
            for k in KS {
                let run = LoadRun {
                    file: "f1k.bin",
                    k,
                    duration_s: 3.0,
                    max_transfers: None,
                    pin: true,
                    tls_ca: None,
                    rate: None,
                    threads: 0,
                };
                for t in &fleet.targets {
                    let d = run_load(kit, t, &run)?;
                    let rate = d["transfers_per_s"].as_f64().unwrap_or(0.0);
                    println!(
                        "{ports} ports, K={k}, round {round}, {}: {rate:.0}/s",
                        t.label
                    );
                    rates.entry((t.label.clone(), k)).or_default().push(rate);
                }
            }
        }
        for ((label, k), v) in rates {
            sweep.push((ports, label, k, median(v).unwrap_or(0.0)));
        }
    }
    let json: Vec<Value> = sweep
        .iter()
        .map(|(p, l, k, r)| serde_json::json!({"ports": p, "target": l, "k": k, "transfers_per_s": r}))
        .collect();
    std::fs::write(
        out.join("k-sweep.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let mut table = String::from("| ports | target |");
    for k in KS {
        table.push_str(&format!(" K={k} |"));
    }
    table.push_str(&format!("\n|---|---|{}\n", "---|".repeat(KS.len())));
    let mut labels: Vec<(u16, String)> = sweep.iter().map(|(p, l, _, _)| (*p, l.clone())).collect();
    labels.dedup();
    for (p, l) in &labels {
        table.push_str(&format!("| {p} | {l} |"));
        for k in KS {
            let r = sweep
                .iter()
                .find(|(pp, ll, kk, _)| pp == p && ll == l && *kk == k)
                .map_or(0.0, |x| x.3);
            table.push_str(&format!(" {r:.0} |"));
        }
        table.push('\n');
    }
    std::fs::write(out.join("k-sweep.md"), &table)?;
    println!("{table}");
    let medians: Vec<Value> = summary
        .iter()
        .flat_map(|(w, rows)| {
            rows.iter().map(move |r| {
                serde_json::json!({"workload": w, "target": r.label, "transfers_per_s": r.rate,
                    "server_us_per_transfer": r.us, "process_us_per_transfer": r.process_us,
                    "p99_ms": r.p99})
            })
        })
        .collect();
    std::fs::write(
        out.join("peers-summary.json"),
        serde_json::to_string_pretty(&medians)?,
    )?;
    let docs = root.join("docs");
    plot_workloads(summary, &docs.join("peers.svg"))?;
    plot_k(&sweep, &docs.join("peers-k.svg"))?;
    println!(
        "plots written to {} and {}",
        docs.join("peers.svg").display(),
        docs.join("peers-k.svg").display()
    );
    Ok(())
}

/// Bars of one metric of every target of one workload.
fn bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    rows: &[(String, f64)],
) -> Result<()> {
    let max = rows.iter().map(|r| r.1).fold(0.0f64, f64::max).max(1.0) * 1.15;
    let n = rows.len() as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((0u32..n).into_segmented(), 0.0..max)
        .map_err(draw_err)?;
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(draw_err)?;
    for (i, (label, v)) in rows.iter().enumerate() {
        let i = i as u32;
        let colour = if label.starts_with("pasvd") {
            RGBColor(31, 119, 180)
        } else if label.starts_with("floor") {
            RGBColor(120, 120, 120)
        } else {
            RGBColor(255, 127, 14)
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                colour.filled(),
            )))
            .map_err(draw_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{v:.0}"),
                (SegmentValue::CenterOf(i), *v + max * 0.02),
                ("sans-serif", 12),
            )))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// docs/peers.svg: per workload, transfers/s and the server processes' CPU µs per transfer of
/// every target (the core's busy time also counts whatever else ran on it).
fn plot_workloads(summary: &Summary, svg: &Path) -> Result<()> {
    let height = 320 * summary.len().max(1) as u32;
    let root = SVGBackend::new(svg, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let rows = root.split_evenly((summary.len().max(1), 2));
    for (i, (name, targets)) in summary.iter().enumerate() {
        let rate: Vec<(String, f64)> = targets
            .iter()
            .map(|t| (t.label.clone(), t.rate.unwrap_or(0.0)))
            .collect();
        let us: Vec<(String, f64)> = targets
            .iter()
            .map(|t| (t.label.clone(), t.process_us.unwrap_or(0.0)))
            .collect();
        bars(
            &rows[2 * i],
            &format!("{name}: transfers/s (median)"),
            &rate,
        )?;
        bars(
            &rows[2 * i + 1],
            &format!("{name}: server processes' CPU µs per transfer (lower is better)"),
            &us,
        )?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

/// docs/peers-k.svg: transfers/s against K, one panel per range size.
fn plot_k(sweep: &[(u16, String, u32, f64)], svg: &Path) -> Result<()> {
    let root = SVGBackend::new(svg, (1400, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let panels = root.split_evenly((1, 2));
    for (panel, ports) in panels.iter().zip([20u16, 1000]) {
        let mine: Vec<&(u16, String, u32, f64)> = sweep.iter().filter(|x| x.0 == ports).collect();
        let max = mine.iter().map(|x| x.3).fold(0.0f64, f64::max).max(1.0) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{ports} passive ports, 1 KiB RETR: transfers/s against K"),
                ("sans-serif", 15),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((1f64..128f64).log_scale(), 0.0..max)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("concurrent sessions K (log)")
            .y_desc("transfers/s")
            .draw()
            .map_err(draw_err)?;
        let mut labels: Vec<&String> = mine.iter().map(|x| &x.1).collect();
        labels.dedup();
        for (i, label) in labels.into_iter().enumerate() {
            let points: Vec<(f64, f64)> = mine
                .iter()
                .filter(|x| &x.1 == label)
                .map(|x| (f64::from(x.2), x.3))
                .collect();
            let colour = Palette99::pick(i).to_rgba();
            let width = if label.starts_with("pasvd") { 3 } else { 1 };
            plot::line_with_points(&mut chart, points, colour, width, label)?;
        }
        plot::legend(&mut chart)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

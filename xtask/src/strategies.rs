//! `cargo xtask bench --strategies`: the pool strategies × load table of `pasv simulate`
//! (`pasv_pool::sweep`) and its SVG plot, docs/strategies.svg.
//!
//! The case is the committed snapshot's (`crates/pasv-pool/tests/snapshots/sweep.txt`): 20
//! ports, T = TIME_WAIT = 1 s, listeners without `SO_REUSEADDR`, h ~ exp(20 ms), 300 s after
//! 5 s of warm-up, seed 7. The table has loads 0.5, 0.95 and 1.5 (the same as `pasv simulate
//! --ports 30000-30019 --time-wait 1 --bind-model no-reuseaddr`); the plot runs the same spec
//! on a finer grid of loads.

use std::path::Path;

use anyhow::{Context, Result};
use pasv_pool::capacity::erlang_b;
use pasv_pool::sweep::{self, SweepRow, SweepSpec};
use pasv_pool::PortSet;
use plotters::prelude::*;

use crate::plot::{self, draw_err};

/// Loads of the plot, multiples of rate_max.
const PLOT_LOADS: [f64; 9] = [0.25, 0.5, 0.75, 0.95, 1.1, 1.25, 1.5, 1.75, 2.0];

fn spec() -> Result<SweepSpec> {
    let mut spec = SweepSpec::new(PortSet::range(30000, 30019)?);
    spec.bind_model = sweep::BindModelKind::NoReuseaddr;
    Ok(spec)
}

/// Prints the table, writes it to `out/strategies.txt` and the plot to `svg`.
pub fn run(out: &Path, svg: &Path) -> Result<()> {
    let mut spec = spec()?;
    let rows = sweep::sweep(&spec)?;
    let table = sweep::table(&spec, &rows);
    print!("{table}");
    std::fs::write(out.join("strategies.txt"), &table)?;

    spec.loads = PLOT_LOADS.to_vec();
    let rows = sweep::sweep(&spec)?;
    plot(&spec, &rows, svg)?;
    println!("table written to {}", out.join("strategies.txt").display());
    println!("plot written to {}", svg.display());
    Ok(())
}

/// The share of arrivals not served in the range: refused, session killed, or given a port
/// outside it.
fn failed_share(row: &SweepRow) -> f64 {
    let r = &row.report;
    (r.refused + r.sessions_killed + r.outside_range) as f64 / r.offered.max(1) as f64
}

fn plot(spec: &SweepSpec, rows: &[SweepRow], svg: &Path) -> Result<()> {
    let root = SVGBackend::new(svg, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (left, right) = root.split_horizontally(600);
    let max_load = PLOT_LOADS[PLOT_LOADS.len() - 1];
    let ports = spec.ports.len() as u64;
    let colours = |i: usize| Palette99::pick(i).to_rgba();

    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!(
                "{} ports, T = {} s: not served in range (refused + killed + outside)",
                ports,
                spec.time_wait.as_secs_f64()
            ),
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..max_load, 0.0..0.7)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("offered load / rate_max")
        .y_desc("share of arrivals")
        .draw()
        .map_err(draw_err)?;
    let erlang: Vec<(f64, f64)> = (1..=80)
        .map(|i| {
            let x = max_load * i as f64 / 80.0;
            (x, erlang_b(ports, x * ports as f64))
        })
        .collect();
    chart
        .draw_series(LineSeries::new(erlang, BLACK.stroke_width(3)))
        .map_err(draw_err)?
        .label("Erlang B")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(3)));

    let mut right_chart = ChartBuilder::on(&right)
        .caption("kernel binds per served arrival (log)", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..max_load, (0.5f64..100.0).log_scale())
        .map_err(draw_err)?;
    right_chart
        .configure_mesh()
        .x_desc("offered load / rate_max")
        .y_desc("binds / success")
        .draw()
        .map_err(draw_err)?;

    for (i, s) in spec.strategies.iter().enumerate() {
        let name = s.name();
        let mine: Vec<&SweepRow> = rows.iter().filter(|r| r.report.strategy == name).collect();
        let colour = colours(i);
        let failed: Vec<(f64, f64)> = mine.iter().map(|r| (r.load, failed_share(r))).collect();
        plot::line_with_points(&mut chart, failed, colour, 1, name)?;
        let binds: Vec<(f64, f64)> = mine
            .iter()
            .map(|r| (r.load, r.report.binds_per_success.max(0.5)))
            .collect();
        right_chart
            .draw_series(LineSeries::new(binds, colour.stroke_width(2)))
            .map_err(draw_err)?;
    }
    plot::legend(&mut chart)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

/// Where the plot goes: docs/strategies.svg under the workspace root.
pub fn svg_path(root: &Path) -> Result<std::path::PathBuf> {
    let docs = root.join("docs");
    std::fs::metadata(&docs).with_context(|| format!("{}", docs.display()))?;
    Ok(docs.join("strategies.svg"))
}

//! The bench report's figure, after the paper's Figure 5: time per token against
//! sequence length for each attention kind (attention suite), and peak memory against
//! depth with reversible and ordinary residual layers (depth suite), as an SVG.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::report::{CaseRow, Status};
use crate::plot::{draw_lines, drawing_error, empty_panel, Series, SIZE};

const MIB: f64 = (1 << 20) as f64;

/// Points of the cases of `suite` that ran, grouped by case label.
fn series(cases: &[CaseRow], suite: &str, x: impl Fn(&CaseRow) -> f64, y: impl Fn(&CaseRow) -> f64) -> Series {
    let mut lines = Series::new();
    for case in cases.iter().filter(|c| c.suite == suite && c.status == Status::Ok) {
        lines.entry(case.label.clone()).or_default().push((x(case), y(case)));
    }
    for points in lines.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

fn bounds(lines: &Series) -> ((f64, f64), (f64, f64)) {
    let points = lines.values().flatten();
    let (mut x, mut y) = ((f64::MAX, f64::MIN), (f64::MAX, f64::MIN));
    for &(px, py) in points {
        x = (x.0.min(px), x.1.max(px));
        y = (y.0.min(py), y.1.max(py));
    }
    (x, y)
}

/// Writes the two panels for the cases of a bench report.
pub fn write_svg(cases: &[CaseRow], path: &Path) -> Result<()> {
    let err = drawing_error(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 2));

    let time = series(cases, "attention", |c| c.seq_len as f64, |c| c.measured.us_per_token);
    if time.is_empty() {
        empty_panel(&panels[0], "time per token: no attention cases in this report").map_err(|e| err(&e))?;
    } else {
        let ((x0, x1), (y0, y1)) = bounds(&time);
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("One attention layer, forward + backward", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), (y0 * 0.8..y1 * 1.25).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("sequence length (tokens)")
            .y_desc("µs per token")
            .x_labels(12)
            .y_labels(12)
            .x_label_formatter(&|x| format!("{:.0}", x))
            .y_label_formatter(&|y| format!("{:.0}", y))
            .draw()
            .map_err(|e| err(&e))?;
        draw_lines(&mut chart, &time).map_err(|e| err(&e))?;
    }

    let memory = series(cases, "depth", |c| c.n_layers as f64, |c| c.measured.peak_bytes as f64 / MIB);
    if memory.is_empty() {
        empty_panel(&panels[1], "memory: no depth cases in this report").map_err(|e| err(&e))?;
    } else {
        let ((_, x1), (_, y1)) = bounds(&memory);
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("Training step: peak memory against depth", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x1 * 1.1, 0.0..y1 * 1.1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("layers")
            .y_desc("peak MiB")
            .x_label_formatter(&|x| format!("{:.0}", x))
            .y_label_formatter(&|y| format!("{:.0}", y))
            .draw()
            .map_err(|e| err(&e))?;
        draw_lines(&mut chart, &memory).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

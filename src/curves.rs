//! `reformer plot` and the curve `train` draws into its run folder: the validation
//! figure of one or several runs (bits per byte for the language-model tasks, second-copy
//! accuracy for duplication) against wall-clock minutes and against steps, read from each
//! run's `metrics.jsonl`, as an SVG with one line per run; and, for runs that logged it
//! (`train.partner_reach`), each LSH layer's partner reach against steps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

use crate::plot::{draw_lines, drawing_error, Series, SIZE};
use crate::run_dir::RunDir;
use crate::score::Figure;

/// Draw the validation curves of training runs into one SVG.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Run folders (each with config.json and metrics.jsonl).
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, value_name = "FILE.svg")]
    pub out: PathBuf,
    /// Legend labels, one per run, comma-separated (default: the folders' names).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
}

/// One validation: (step, minutes of training, figure).
type Point = (f64, f64, f64);

/// A panel's x coordinate of a point, and the axis's name.
type Axis = (&'static str, fn(&Point) -> f64);

/// One run's validations.
struct Curve {
    label: String,
    figure: Figure,
    points: Vec<Point>,
    /// (step, partner reach of each LSH layer) at each validation that logged it
    /// (`train.partner_reach`).
    reach: Vec<(f64, Vec<f64>)>,
}

/// The validation records of the run at `run`.
fn read_curve(run: &Path, label: String) -> Result<Curve> {
    let (_, cfg) = RunDir::open(run)?;
    let figure = Figure::of(cfg.task);
    let metrics = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).with_context(|| format!("cannot read {}", metrics.display()))?;
    let key = format!("valid_{}", figure.stored_key());
    let records: Vec<serde_json::Value> = text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let points = records
        .iter()
        .filter_map(|record| {
            let value = figure.in_unit(record[&key].as_f64()?);
            Some((record["step"].as_f64()?, record["elapsed"].as_f64()? / 60.0, value))
        })
        .collect();
    let reach = records
        .iter()
        .filter_map(|record| {
            let layers = record["partner_reach"].as_array()?.iter().map(|v| v.as_f64()).collect::<Option<_>>()?;
            Some((record["step"].as_f64()?, layers))
        })
        .collect();
    Ok(Curve { label, figure, points, reach })
}

/// `reformer plot`: the runs' validation curves into `--out`.
pub fn run(args: PlotArgs) -> Result<()> {
    if !args.labels.is_empty() && args.labels.len() != args.runs.len() {
        bail!("--labels names {} runs, but {} were given", args.labels.len(), args.runs.len());
    }
    let curves = args
        .runs
        .iter()
        .enumerate()
        .map(|(i, run)| read_curve(run, args.labels.get(i).cloned().unwrap_or_else(|| folder_name(run))))
        .collect::<Result<Vec<_>>>()?;
    if let Some(empty) = curves.iter().find(|c| c.points.is_empty()) {
        bail!("run '{}' has no validation yet (its metrics.jsonl holds no valid_* record)", empty.label);
    }
    if curves.iter().any(|c| c.figure != curves[0].figure) {
        bail!("the runs report different figures (bits per byte and accuracy): plot them separately");
    }
    write_svg(&curves, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Draws the run at `run` into `run/curve.svg` (after each validation of `train`). Nothing
/// is drawn before the first validation.
pub fn write_run_curve(run: &Path) -> Result<()> {
    let curve = read_curve(run, folder_name(run))?;
    if curve.points.is_empty() {
        return Ok(());
    }
    write_svg(&[curve], &run.join("curve.svg"))
}

fn folder_name(run: &Path) -> String {
    run.file_name().map_or_else(|| run.display().to_string(), |name| name.to_string_lossy().into_owned())
}

/// Two panels: the figure against minutes, and against steps; a third, the partner
/// reach against steps, when a run logged it.
fn write_svg(curves: &[Curve], path: &Path) -> Result<()> {
    let err = drawing_error(path);
    let figure = curves[0].figure;
    let figure_name = format!("validation {}", figure.name());
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let with_reach = curves.iter().any(|c| !c.reach.is_empty());
    let panels = root.split_evenly((1, if with_reach { 3 } else { 2 }));
    if with_reach {
        draw_reach(&panels[2], curves).map_err(|e| err(&e))?;
    }
    let axes: [Axis; 2] = [("minutes of training", |p| p.1), ("steps", |p| p.0)];
    for (panel, (x_desc, x)) in panels.iter().zip(axes) {
        let series: Series =
            curves.iter().map(|c| (c.label.clone(), c.points.iter().map(|p| (x(p), p.2)).collect())).collect();
        let points = series.values().flatten();
        let x_max = points.clone().map(|p| p.0).fold(f64::MIN, f64::max).max(1e-3);
        let (y_min, y_max) = points.fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let mut chart = ChartBuilder::on(panel);
        chart.caption(format!("{figure_name} against {x_desc}"), ("sans-serif", 18));
        chart.margin(12).x_label_area_size(40).y_label_area_size(60);
        match figure {
            Figure::BitsPerByte => {
                let y_range = (y_min.max(1e-3) * 0.9..y_max.max(1e-3) * 1.1).log_scale();
                let mut chart = chart.build_cartesian_2d(0.0..x_max * 1.05, y_range).map_err(|e| err(&e))?;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(&figure_name)
                    .y_label_formatter(&|y| format!("{y:.2}"))
                    .draw()
                    .map_err(|e| err(&e))?;
                draw_lines(&mut chart, &series).map_err(|e| err(&e))?;
            }
            Figure::Accuracy => {
                let mut chart = chart.build_cartesian_2d(0.0..x_max * 1.05, 0.0..100.0).map_err(|e| err(&e))?;
                chart.configure_mesh().x_desc(x_desc).y_desc(&figure_name).draw().map_err(|e| err(&e))?;
                draw_lines(&mut chart, &series).map_err(|e| err(&e))?;
            }
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The partner reach of each run's LSH layers against steps, in percent: one line per
/// run and LSH layer.
fn draw_reach<DB: DrawingBackend>(
    panel: &DrawingArea<DB, plotters::coord::Shift>,
    curves: &[Curve],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut series = Series::new();
    for curve in curves {
        for (step, layers) in &curve.reach {
            for (layer, fraction) in layers.iter().enumerate() {
                let line = format!("{}: LSH layer {layer}", curve.label);
                series.entry(line).or_default().push((*step, 100.0 * fraction));
            }
        }
    }
    let x_max = series.values().flatten().map(|p| p.0).fold(1e-3, f64::max);
    let mut chart = ChartBuilder::on(panel)
        .caption("partner in a window, % of scored queries", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..100.0)?;
    chart.configure_mesh().x_desc("steps").y_desc("partner reach (%)").draw()?;
    draw_lines(&mut chart, &series)
}

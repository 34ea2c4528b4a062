//! What the SVG figures of `reformer bench` (the paper's Figure 5) and of training runs
//! (`reformer plot`, each run's `curve.svg`) share: their size, named lines with markers
//! and a legend, a panel with nothing to draw, and how a drawing error reads.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// Width and height of a figure of two panels side by side, in pixels.
pub const SIZE: (u32, u32) = (1200, 480);

/// The lines of a panel: each line's name and its (x, y) points in x order.
pub type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// The one-line error of a failed drawing into `path`.
pub fn drawing_error(path: &Path) -> impl Fn(&dyn std::fmt::Debug) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e:?}", path.display())
}

/// Each series as a line with markers, and a legend.
pub fn draw_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: &Series,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (label, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// A panel that says in `text` why it has no lines.
pub fn empty_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    text: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.draw_text(text, &("sans-serif", 16).into_text_style(area), (40, SIZE.1 as i32 / 2))
}

//! What the xtask's plots share: an error for plotters' failures, one series drawn as a line
//! with its points, and the legend box.

use plotters::coord::CoordTranslate;
use plotters::prelude::*;

/// A plotters error as an `anyhow` error.
pub fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e:?}")
}

/// `points` as a line of `width` with a filled dot at each point, named `label` in the
/// legend.
pub fn line_with_points<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    points: Vec<(f64, f64)>,
    colour: RGBAColor,
    width: u32,
    label: &str,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(points.clone(), colour.stroke_width(width)))
        .map_err(draw_err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    chart
        .draw_series(PointSeries::of_element(points, 3, colour, &|c, s, st| {
            Circle::new(c, s, st.filled())
        }))
        .map_err(draw_err)?;
    Ok(())
}

/// The legend, upper left, on a white box.
pub fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)
}

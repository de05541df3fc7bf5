//! The loss curve of a training run as a PNG: training loss per step and, when present, the
//! validation loss per eval, on one chart (plotters, pure Rust).
//!
//! Text needs a font file; plotters' pure-Rust renderer does not look for one, so the first of a
//! few common system fonts found is registered. Without any, the chart is drawn without text
//! (axes, grid and curves only) rather than not at all.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// Font files tried in order (Debian's DejaVu, then Liberation and Noto).
const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// The points of one chart.
#[derive(Clone, Debug, Default)]
pub struct LossCurve {
    /// Chart title (e.g. the run name).
    pub title: String,
    /// `(step, training loss)`.
    pub train: Vec<(f64, f64)>,
    /// `(step, validation loss)`.
    pub val: Vec<(f64, f64)>,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no finite points to plot")]
    Empty,
    #[error("drawing {path}: {message}")]
    Draw { path: String, message: String },
}

/// Registers a system font once; false when none was found.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_CANDIDATES.iter().any(|path| {
            std::fs::read(path).is_ok_and(|bytes| {
                // The font lives as long as the process: plotters keeps a 'static reference.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

/// Draws `curve` into a `width`×`height` PNG at `path`.
pub fn draw_loss_curve(
    curve: &LossCurve,
    path: &Path,
    width: u32,
    height: u32,
) -> Result<(), PlotError> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let points: Vec<(f64, f64)> = curve
        .train
        .iter()
        .chain(&curve.val)
        .filter(finite)
        .copied()
        .collect();
    if points.is_empty() {
        return Err(PlotError::Empty);
    }
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in &points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let (y_lo, y_hi) = ((y_min - pad).max(0.0), y_max + pad);

    let draw_error = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let text = font_available();
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_error(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if text {
        builder
            .caption(&curve.title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(56);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..x_max, y_lo..y_hi)
        .map_err(|e| draw_error(&e))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("step").y_desc("loss (nats/token)");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| draw_error(&e))?;

    let series = [
        (&curve.train, BLUE.mix(0.8), "train"),
        (&curve.val, RED.mix(0.9), "validation"),
    ];
    for (points, colour, label) in series {
        if points.is_empty() {
            continue;
        }
        let line = LineSeries::new(
            points.iter().filter(finite).copied(),
            colour.stroke_width(2),
        );
        let drawn = chart.draw_series(line).map_err(|e| draw_error(&e))?;
        if text {
            drawn.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| draw_error(&e))?;
    }
    root.present().map_err(|e| draw_error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_both_curves_and_refuses_an_empty_chart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let curve = LossCurve {
            title: "test run".into(),
            train: (0..100)
                .map(|s| (s as f64, 5.0 / (1.0 + s as f64 / 10.0)))
                .collect(),
            val: (0..5)
                .map(|e| (e as f64 * 25.0, 4.0 / (1.0 + e as f64)))
                .collect(),
        };
        draw_loss_curve(&curve, &path, 640, 400).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // Not a blank image: the curves add many distinct bytes to the compressed data.
        assert!(
            bytes.len() > 2_000,
            "suspiciously small PNG: {} bytes",
            bytes.len()
        );

        let empty = LossCurve::default();
        assert!(matches!(
            draw_loss_curve(&empty, &dir.path().join("empty.png"), 64, 64),
            Err(PlotError::Empty)
        ));
    }
}

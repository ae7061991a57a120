//! The PNG: latency distributions (left) and throughput scaling (right).

use crate::stats::Latencies;
use plotters::prelude::*;
use std::path::Path;

pub struct PlotData {
    pub title: String,
    /// One cumulative-distribution curve per (label, samples).
    pub latency: Vec<(String, Latencies)>,
    /// One line per (label, [(nodes, ops/s)]).
    pub scaling: Vec<(String, Vec<(usize, f64)>)>,
    /// Horizontal reference lines on the scaling panel (label, ops/s).
    pub references: Vec<(String, f64)>,
    /// Lines of text for what could not be plotted (pending figures).
    pub notes: Vec<String>,
}

/// TTF files tried for the labels, in order (Debian's fonts-dejavu-core).
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers a system TTF with plotters' pure-Rust text renderer. Returns
/// false when none is installed; the plot is then drawn without text.
fn register_font() -> bool {
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            // Fonts must live as long as the process for plotters.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Axis numbers: no useless decimals, k/M for big ones.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes the PNG; Ok(false) when it had to be drawn without text.
pub fn write_png(path: &Path, data: &PlotData) -> Result<bool, String> {
    let text = register_font();
    draw(path, data, text).map_err(|e| e.to_string())?;
    Ok(text)
}

fn draw(path: &Path, data: &PlotData, text: bool) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1600, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = if text {
        root.titled(&data.title, ("sans-serif", 26))?
    } else {
        root
    };
    let (body, foot) = root.split_vertically(800 - 60 - 26 * i32::from(text) as u32);
    let (left, right) = body.split_horizontally(800);

    // Latency CDFs on a log axis: from a few hundred ns to tens of ms.
    let curves: Vec<(&String, Vec<(f64, f64)>)> = data
        .latency
        .iter()
        .filter(|(_, l)| !l.is_empty())
        .map(|(name, l)| (name, l.cdf_points_us(400)))
        .collect();
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (_, pts) in &curves {
        for &(x, _) in pts {
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    if lo > hi {
        (lo, hi) = (1.0, 1000.0);
    }
    let (lo, hi) = ((lo * 0.8).max(0.01), hi * 1.25);
    let mut chart = ChartBuilder::on(&left);
    chart.margin(15).x_label_area_size(45).y_label_area_size(60);
    if text {
        chart.caption("Lock latency (cumulative distribution)", ("sans-serif", 20));
    }
    let mut chart = chart.build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("latency (µs, log scale)")
            .y_desc("% of operations at or below")
            .x_label_formatter(&|v| short(*v))
            .y_label_formatter(&|v| format!("{v:.0}"));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    for (i, (name, pts)) in curves.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let s = chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?;
        if text {
            s.label(name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
    }
    if text && !curves.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }

    // Throughput against cluster size, log y.
    let mut ymax = data.references.iter().map(|r| r.1).fold(1.0f64, f64::max);
    let mut ymin = data.references.iter().map(|r| r.1).fold(f64::MAX, f64::min);
    for (_, pts) in &data.scaling {
        for &(_, y) in pts {
            ymax = ymax.max(y);
            ymin = ymin.min(y);
        }
    }
    if ymin > ymax {
        ymin = 1.0;
    }
    let mut chart = ChartBuilder::on(&right);
    chart.margin(15).x_label_area_size(45).y_label_area_size(70);
    if text {
        chart.caption("Lock+unlock throughput vs nodes", ("sans-serif", 20));
    }
    let mut chart =
        chart.build_cartesian_2d(1f64..17f64, ((ymin * 0.5).max(0.1)..ymax * 2.0).log_scale())?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("nodes")
            .y_desc("operations / s (log scale)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| short(*v));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let mut k = 0;
    for (name, pts) in &data.scaling {
        if pts.is_empty() {
            continue;
        }
        let c = COLORS[k % COLORS.len()];
        k += 1;
        let line: Vec<(f64, f64)> = pts.iter().map(|&(n, y)| (n as f64, y)).collect();
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        let s = chart.draw_series(LineSeries::new(line, c.stroke_width(2)))?;
        if text {
            s.label(name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
    }
    for (name, y) in &data.references {
        let c = COLORS[k % COLORS.len()];
        k += 1;
        let s = chart.draw_series(LineSeries::new(
            vec![(1.0, *y), (17.0, *y)],
            ShapeStyle::from(c).stroke_width(1),
        ))?;
        if text {
            s.label(name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1))
            });
        }
    }
    if text && k > 0 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    if text {
        for (i, note) in data.notes.iter().take(2).enumerate() {
            foot.draw(&Text::new(
                note.clone(),
                (20, 8 + 24 * i as i32),
                ("sans-serif", 16).into_font().color(&RED),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}

//! Plots of results — loss curves, accuracy curves, loss landscapes — each written as an SVG
//! and a PNG by [`line_plot`] and [`heatmap`].
//!
//! Everything is drawn in pure Rust with plotters. The PNG's text is rasterised from DejaVu Sans,
//! embedded in the binary (`assets/fonts`, with its licence), so no system font is needed.
//! The SVG names the generic `sans-serif` family and leaves the font to the viewer.
//!
//! User data never panics: non-finite points are skipped, and what cannot be drawn at all (no
//! points, a malformed grid, a range wider than a float can span) is an error naming the problem.

use std::fs;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use image::ImageEncoder;
use plotters::chart::{ChartBuilder, SeriesLabelPosition};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::drawing::{DrawingArea, IntoDrawingArea};
use plotters::element::{Circle, EmptyElement, PathElement, Rectangle, Text};
use plotters::prelude::{BitMapBackend, DrawingBackend, SVGBackend};
use plotters::series::{DashedLineSeries, LineSeries};
use plotters::style::{
    BLACK, Color, FontStyle, IntoFont, RED, RGBColor, ShapeStyle, TRANSPARENT, WHITE,
};

/// One line of a [`LinePlot`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// The legend entry; an empty label leaves the series out of the legend.
    pub label: String,
    /// `(x, y)` points, drawn in order and joined by straight lines.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
        }
    }
}

/// Lines of `y` against `x`, one colour per series (the 9 colours repeat from the 10th series
/// on), with a legend in whichever corner of the plot holds the fewest points.
///
/// Points with a non-finite coordinate are skipped (the line joins their neighbours), and so are
/// points at or below zero on a log axis. Series with at most [`MARKER_MAX_POINTS`] points also get
/// a marker at each point, so a single point still shows. The axes span every kept point and
/// every horizontal line, with a 5% margin.
#[derive(Clone, Debug, Default)]
pub struct LinePlot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
    pub log_x: bool,
    pub log_y: bool,
    /// Horizontal reference lines (label, y), e.g. a target loss: dashed grey, labelled in the
    /// legend. Non-finite ones (and ones ≤ 0 on a log y axis) are left out.
    pub hlines: Vec<(String, f64)>,
}

/// Values on a grid, drawn as coloured cells (viridis: dark purple low, yellow high) with a colour
/// bar, the minimum marked with a red dot, and non-finite values in grey, outside the colour range.
#[derive(Clone, Debug, Default)]
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Cell centres along x, strictly increasing; each cell reaches halfway to its neighbours.
    pub xs: Vec<f64>,
    /// Cell centres along y, strictly increasing.
    pub ys: Vec<f64>,
    /// values[j * xs.len() + i] is the value at (xs[i], ys[j]).
    pub values: Vec<f64>,
    /// What the values are (the colour bar's label), e.g. "validation loss".
    pub value_label: &'a str,
}

/// Series with at most this many points get a marker at each point.
pub const MARKER_MAX_POINTS: usize = 60;

/// Writes `{stem}.svg` and `{stem}.png` (e.g. stem = out/loss_vs_time), creating the directory
/// if needed; returns both paths. The suffixes are appended to the stem's file name, so a stem
/// `out/run.v2` gives `out/run.v2.svg`.
pub fn line_plot(plot: &LinePlot, stem: &Path) -> Result<[PathBuf; 2]> {
    LineFigure::new(plot)
        .and_then(|figure| save(&figure, stem))
        .with_context(|| format!("cannot plot {}", stem.display()))
}

/// Writes `{stem}.svg` and `{stem}.png` of a heatmap, like [`line_plot`].
pub fn heatmap(map: &Heatmap, stem: &Path) -> Result<[PathBuf; 2]> {
    HeatmapFigure::new(map)
        .and_then(|figure| save(&figure, stem))
        .with_context(|| format!("cannot plot {}", stem.display()))
}

const LINE_PLOT_SIZE: (u32, u32) = (1024, 640);
const HEATMAP_SIZE: (u32, u32) = (900, 760);

/// The font family plotters asks for by default; the embedded font is registered under it.
const FONT: &str = "sans-serif";
// Nominal sizes: plotters draws text at 1/1.24 of them (font-size 24 px for a 30 px title).
const TITLE_PX: u32 = 30;
const AXIS_LABEL_PX: u32 = 22;
const TICK_PX: u32 = 19;
const LEGEND_PX: u32 = 19;

/// Series colours: matplotlib's tab10 without its grey, which marks reference lines here.
const PALETTE: [RGBColor; 9] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
const REFERENCE_LINE: RGBColor = RGBColor(0x60, 0x60, 0x60);
const GRID: RGBColor = RGBColor(0xe0, 0xe0, 0xe0);
/// Heatmap cells whose value is NaN or infinite; no viridis colour is grey.
const NON_FINITE: RGBColor = RGBColor(0xb0, 0xb0, 0xb0);

/// matplotlib's viridis at 0, 0.1, …, 1.
const VIRIDIS: [(u8, u8, u8); 11] = [
    (0x44, 0x01, 0x54),
    (0x48, 0x24, 0x75),
    (0x41, 0x44, 0x87),
    (0x35, 0x5f, 0x8d),
    (0x2a, 0x78, 0x8e),
    (0x21, 0x91, 0x8c),
    (0x22, 0xa8, 0x84),
    (0x44, 0xbf, 0x70),
    (0x7a, 0xd1, 0x51),
    (0xbd, 0xdf, 0x26),
    (0xfd, 0xe7, 0x25),
];

/// The viridis colour at `t` in [0, 1] (clamped), interpolated linearly between table entries.
fn viridis(t: f64) -> RGBColor {
    let x = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) } * 10.0;
    let i = (x.floor() as usize).min(9);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let lerp = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Registers the embedded DejaVu Sans as plotters' `sans-serif`, once per process. Plotters
/// measures text with it for the SVG too, so both renderers need it.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let font: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, font).is_ok()
    });
    ensure!(ok, "the embedded font (DejaVu Sans) could not be loaded");
    Ok(())
}

/// A plot that can draw itself on any plotters backend.
trait Figure {
    const SIZE: (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Renders a figure to SVG and PNG in memory, then writes both files atomically.
fn save<F: Figure>(figure: &F, stem: &Path) -> Result<[PathBuf; 2]> {
    let name = stem
        .file_name()
        .with_context(|| format!("{} does not name a file", stem.display()))?;
    let dir = match stem.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let with_suffix = |suffix: &str| {
        let mut file = name.to_os_string();
        file.push(suffix);
        dir.join(file)
    };
    let (svg_path, png_path) = (with_suffix(".svg"), with_suffix(".png"));
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;

    register_font()?;
    let svg = render_svg(figure)?;
    let rgb = render_rgb(figure)?;
    let png = encode_png(&rgb, F::SIZE)?;
    for (path, bytes) in [(&svg_path, svg.as_bytes()), (&png_path, &png[..])] {
        crate::atomic::write_file(path, |file| file.write_all(bytes))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok([svg_path, png_path])
}

fn render_svg<F: Figure>(figure: &F) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, F::SIZE).into_drawing_area();
        figure.draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// Renders to a packed RGB buffer, row by row from the top left.
fn render_rgb<F: Figure>(figure: &F) -> Result<Vec<u8>> {
    let (w, h) = F::SIZE;
    let mut rgb = vec![255; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, F::SIZE).into_drawing_area();
        figure.draw(&root)?;
        root.present()?;
    }
    Ok(rgb)
}

/// Encodes an RGB buffer as PNG, in memory.
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgb, w, h, image::ColorType::Rgb8)
        .context("cannot encode the PNG")?;
    Ok(png)
}

/// A linear or base-10 logarithmic axis over f64, with round tick values and compact labels.
/// Plotters' own log axis shows no ticks on a range within one decade and loops for a very
/// long time on ranges wider than a float; this one does neither.
#[derive(Clone, Debug)]
struct Axis {
    log: bool,
    /// The ends in axis space: log10 of the values on a log axis.
    lo: f64,
    hi: f64,
}

/// The decades a log axis can show (normal floats only).
const LOG_LIMITS: Range<f64> = -307.0..308.0;

impl Axis {
    /// Exactly `lo..hi` (values, not logs).
    fn new(lo: f64, hi: f64, log: bool) -> Result<Axis> {
        let (lo, hi) = if log {
            (lo.log10(), hi.log10())
        } else {
            (lo, hi)
        };
        Axis::in_space(lo, hi, log)
    }

    fn in_space(lo: f64, hi: f64, log: bool) -> Result<Axis> {
        let (lo, hi) = if log {
            (lo.max(LOG_LIMITS.start), hi.min(LOG_LIMITS.end))
        } else {
            (lo, hi)
        };
        ensure!(
            lo < hi && (hi - lo).is_finite(),
            "cannot draw an axis from {} to {}{}",
            fmt_short(Axis::value(lo, log)),
            fmt_short(Axis::value(hi, log)),
            if log {
                " on a log scale (values must lie between 1e-307 and 1e308)"
            } else {
                ": the range is wider than a float can span"
            }
        );
        Ok(Axis { log, lo, hi })
    }

    /// Spans every value given (at least one, already filtered to the axis's domain) with a
    /// 5% margin; a single value gets a range of ±5% around it (±1 around zero).
    fn fit(values: impl Iterator<Item = f64>, log: bool) -> Result<Axis> {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            let v = if log { v.log10() } else { v };
            lo = lo.min(v);
            hi = hi.max(v);
        }
        ensure!(lo <= hi, "no values to span");
        let span = hi - lo;
        let scale = lo.abs().max(hi.abs());
        let pad = if span.is_normal() && span > scale * 1e-12 {
            span * 0.05
        } else if log {
            0.05
        } else if (scale * 0.05).is_normal() {
            scale * 0.05
        } else {
            1.0
        };
        Axis::in_space(lo - pad, hi + pad, log)
    }

    fn value(t: f64, log: bool) -> f64 {
        if log { 10f64.powf(t) } else { t }
    }

    /// Where `v` lies along the axis: 0 at the low end, 1 at the high end.
    fn frac(&self, v: f64) -> f64 {
        let t = if self.log { v.log10() } else { v };
        (t - self.lo) / (self.hi - self.lo)
    }

    fn ticks(&self, max: usize) -> Vec<f64> {
        let max = max.clamp(2, 50);
        if self.log {
            log_ticks(self.lo, self.hi, max).unwrap_or_else(|| {
                linear_ticks(Axis::value(self.lo, true), Axis::value(self.hi, true), max)
            })
        } else {
            linear_ticks(self.lo, self.hi, max)
        }
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let px = f64::from(limit.0) + self.frac(*value) * f64::from(limit.1 - limit.0);
        if px.is_nan() {
            limit.0
        } else {
            // Far outside the canvas is as good as infinitely far, and keeps lines short.
            px.clamp(-1e6, 1e6).round() as i32
        }
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold grid lines (and their labels) only; no light lines between them.
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        self.ticks(hint.max_num_points())
    }

    fn range(&self) -> Range<f64> {
        Axis::value(self.lo, self.log)..Axis::value(self.hi, self.log)
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(value: &f64) -> String {
        fmt_tick(*value)
    }
}

/// Multiples of a round step (1, 2 or 5 × 10^k) in `lo..=hi`, at most about `max` of them.
fn linear_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let raw = (hi - lo) / max as f64;
    if !(raw.is_normal() && raw > 0.0) {
        return Vec::new();
    }
    let decade = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * decade)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * decade);
    let (first, last) = ((lo / step).ceil(), (hi / step).floor());
    if !(step > 0.0 && first.is_finite() && last.is_finite()) || last - first > 1000.0 {
        return Vec::new();
    }
    (first as i64..=last as i64)
        .map(|k| k as f64 * step)
        .collect()
}

/// 10^e, exactly as written in decimal (powi drifts in the last bits for large |e|).
fn pow10(e: i32) -> f64 {
    format!("1e{e}").parse().unwrap_or(0.0)
}

/// Ticks for a log axis from 10^lo to 10^hi: powers of ten (every few if there are many), or
/// 1-2-5 or 1…9 times them, whichever gives at least 3 and at most `max`; None if none does.
fn log_ticks(lo: f64, hi: f64, max: usize) -> Option<Vec<f64>> {
    let (e0, e1) = (lo.floor() as i32, hi.ceil() as i32);
    let inside = |v: f64| (lo - 1e-9..=hi + 1e-9).contains(&v.log10());
    let decades: Vec<i32> = (e0..=e1).filter(|&e| inside(pow10(e))).collect();
    if decades.len() >= 3 {
        let needed = decades.len().div_ceil(max) as i32;
        let stride = [1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000]
            .into_iter()
            .find(|&s| s >= needed)
            .unwrap_or(needed);
        return Some(
            decades
                .iter()
                .filter(|&&e| e.rem_euclid(stride) == 0)
                .map(|&e| pow10(e))
                .collect(),
        );
    }
    let all: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    [&[1.0, 2.0, 5.0][..], all]
        .into_iter()
        .find_map(|mantissas| {
            let ticks: Vec<f64> = (e0..=e1)
                .flat_map(|e| mantissas.iter().map(move |m| m * pow10(e)))
                .filter(|&v| inside(v))
                .collect();
            (3..=max).contains(&ticks.len()).then_some(ticks)
        })
}

/// `v` with the fewest significant digits (up to 15) that give it back to 1 part in 10^9:
/// 0.1 + 0.2 prints as "0.3", 2e-5 as "2e-5".
fn fmt_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    (1..=15)
        .map(|digits| fmt_significant(v, digits))
        .find(|s| {
            s.parse::<f64>()
                .is_ok_and(|back| ((back - v) / v).abs() < 1e-9)
        })
        .unwrap_or_else(|| fmt_significant(v, 15))
}

/// `v` to 5 significant digits, for annotations.
fn fmt_short(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    fmt_significant(v, 5)
}

/// Plain notation from 1e-4 to 1e6, scientific outside; no trailing zeros.
fn fmt_significant(v: f64, digits: usize) -> String {
    let exponent = v.abs().log10().floor() as i32;
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if (-4..6).contains(&exponent) {
        let decimals = (digits as i32 - 1 - exponent).max(0) as usize;
        trim(&format!("{v:.decimals$}"))
    } else {
        let s = format!("{v:.prec$e}", prec = digits - 1);
        match s.split_once('e') {
            Some((mantissa, exp)) => format!("{}e{exp}", trim(mantissa)),
            None => s,
        }
    }
}

/// A [`LinePlot`] with its points filtered and its axes fitted.
struct LineFigure<'a> {
    plot: &'a LinePlot<'a>,
    /// The points kept from each series, in the plot's order.
    points: Vec<Vec<(f64, f64)>>,
    hlines: Vec<(&'a str, f64)>,
    x: Axis,
    y: Axis,
    legend: SeriesLabelPosition,
}

impl<'a> LineFigure<'a> {
    fn new(plot: &'a LinePlot<'a>) -> Result<LineFigure<'a>> {
        ensure!(!plot.series.is_empty(), "nothing to plot: no series");
        let keep = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
        let points: Vec<Vec<(f64, f64)>> = plot
            .series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .copied()
                    .filter(|&(x, y)| keep(x, plot.log_x) && keep(y, plot.log_y))
                    .collect()
            })
            .collect();
        if points.iter().all(Vec::is_empty) {
            bail!(
                "nothing to plot: none of the {} series has a point with finite coordinates{}",
                plot.series.len(),
                if plot.log_x || plot.log_y {
                    " (and above zero on a log axis)"
                } else {
                    ""
                }
            );
        }
        let hlines: Vec<(&str, f64)> = plot
            .hlines
            .iter()
            .filter(|(_, y)| keep(*y, plot.log_y))
            .map(|(label, y)| (label.as_str(), *y))
            .collect();
        let all = || points.iter().flatten();
        let x = Axis::fit(all().map(|p| p.0), plot.log_x).context("x axis")?;
        let y = Axis::fit(
            all().map(|p| p.1).chain(hlines.iter().map(|h| h.1)),
            plot.log_y,
        )
        .context("y axis")?;

        // The legend goes in the corner with the fewest points (reference lines sampled).
        let mut marks: Vec<(f64, f64)> = all().map(|&(px, py)| (x.frac(px), y.frac(py))).collect();
        for &(_, hy) in &hlines {
            marks.extend((0..=10).map(|i| (f64::from(i) / 10.0, y.frac(hy))));
        }
        let corners = [
            (SeriesLabelPosition::UpperRight, true, true),
            (SeriesLabelPosition::UpperLeft, false, true),
            (SeriesLabelPosition::LowerRight, true, false),
            (SeriesLabelPosition::LowerLeft, false, false),
        ];
        let legend = corners
            .into_iter()
            .min_by_key(|&(_, right, upper)| {
                let near = |f: f64, high: bool| if high { f > 0.55 } else { f < 0.45 };
                marks
                    .iter()
                    .filter(|&&(fx, fy)| near(fx, right) && near(fy, upper))
                    .count()
            })
            .map_or(SeriesLabelPosition::UpperRight, |c| c.0);

        Ok(LineFigure {
            plot,
            points,
            hlines,
            x,
            y,
            legend,
        })
    }
}

impl Figure for LineFigure<'_> {
    const SIZE: (u32, u32) = LINE_PLOT_SIZE;

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let plot = self.plot;
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(root);
        builder
            .margin(20)
            .margin_right(30)
            .x_label_area_size(60)
            .y_label_area_size(95);
        if !plot.title.is_empty() {
            builder.caption(plot.title, (FONT, TITLE_PX));
        }
        let mut chart = builder.build_cartesian_2d(self.x.clone(), self.y.clone())?;
        chart
            .configure_mesh()
            .x_desc(plot.x_label)
            .y_desc(plot.y_label)
            .axis_desc_style((FONT, AXIS_LABEL_PX))
            .label_style((FONT, TICK_PX))
            .x_labels(10)
            .y_labels(8)
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .draw()?;

        let mut labelled = false;
        for (i, (series, points)) in plot.series.iter().zip(&self.points).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let style = color.stroke_width(2);
            let drawn = chart.draw_series(LineSeries::new(points.iter().copied(), style))?;
            if !series.label.is_empty() {
                labelled = true;
                drawn
                    .label(series.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            }
            if points.len() <= MARKER_MAX_POINTS {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
        }

        let style: ShapeStyle = REFERENCE_LINE.stroke_width(2);
        let (x0, x1) = (self.x.range().start, self.x.range().end);
        for &(label, y) in &self.hlines {
            let drawn =
                chart.draw_series(DashedLineSeries::new([(x0, y), (x1, y)], 8, 5, style))?;
            if !label.is_empty() {
                labelled = true;
                drawn.label(label).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (9, 0)], style)
                        + PathElement::new(vec![(15, 0), (24, 0)], style)
                });
            }
        }

        if labelled {
            chart
                .configure_series_labels()
                .position(self.legend.clone())
                .margin(12)
                .label_font((FONT, LEGEND_PX))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()?;
        }
        Ok(())
    }
}

/// A validated [`Heatmap`] with its cell edges, colour range and minimum.
struct HeatmapFigure<'a> {
    map: &'a Heatmap<'a>,
    x_edges: Vec<f64>,
    y_edges: Vec<f64>,
    x: Axis,
    y: Axis,
    /// The colour bar: exactly the finite values' range (padded if they are all equal).
    scale: Axis,
    /// The smallest finite value, at (xs[.1], ys[.2]).
    min: (f64, usize, usize),
    non_finite: usize,
}

impl<'a> HeatmapFigure<'a> {
    fn new(map: &'a Heatmap<'a>) -> Result<HeatmapFigure<'a>> {
        let (nx, ny) = (map.xs.len(), map.ys.len());
        check_increasing(&map.xs, "xs")?;
        check_increasing(&map.ys, "ys")?;
        ensure!(
            nx.checked_mul(ny) == Some(map.values.len()),
            "{} values for a grid of {nx} xs by {ny} ys, which needs {}",
            map.values.len(),
            nx.saturating_mul(ny)
        );
        let mut min: Option<(f64, usize, usize)> = None;
        let mut max = f64::NEG_INFINITY;
        let mut non_finite = 0;
        for (k, &v) in map.values.iter().enumerate() {
            if !v.is_finite() {
                non_finite += 1;
                continue;
            }
            if min.is_none_or(|m| v < m.0) {
                min = Some((v, k % nx, k / nx));
            }
            max = max.max(v);
        }
        let Some(min) = min else {
            bail!(
                "every one of the {} values is NaN or infinite",
                map.values.len()
            );
        };
        let scale = if min.0 < max {
            Axis::new(min.0, max, false)
        } else {
            Axis::fit([min.0].into_iter(), false)
        }
        .context("values")?;
        let x_edges = cell_edges(&map.xs);
        let y_edges = cell_edges(&map.ys);
        let x = Axis::new(x_edges[0], x_edges[nx], false).context("xs")?;
        let y = Axis::new(y_edges[0], y_edges[ny], false).context("ys")?;
        Ok(HeatmapFigure {
            map,
            x_edges,
            y_edges,
            x,
            y,
            scale,
            min,
            non_finite,
        })
    }

    fn color(&self, v: f64) -> RGBColor {
        if v.is_finite() {
            viridis(self.scale.frac(v))
        } else {
            NON_FINITE
        }
    }
}

fn check_increasing(c: &[f64], name: &str) -> Result<()> {
    ensure!(!c.is_empty(), "{name} is empty");
    if let Some(i) = c.iter().position(|v| !v.is_finite()) {
        bail!("{name}[{i}] is {}: cell positions must be finite", c[i]);
    }
    if let Some(i) = c.windows(2).position(|w| w[0] >= w[1]) {
        bail!(
            "{name} must increase strictly, but {name}[{i}] = {} and {name}[{}] = {}",
            c[i],
            i + 1,
            c[i + 1]
        );
    }
    Ok(())
}

/// The n + 1 edges of cells centred on n increasing positions: halfway between neighbours, and
/// as far out again at the ends. A single position gets a cell ±5% around it (±0.5 at zero).
fn cell_edges(c: &[f64]) -> Vec<f64> {
    if let [only] = c {
        let half = if (only.abs() * 0.05).is_normal() {
            only.abs() * 0.05
        } else {
            0.5
        };
        return vec![only - half, only + half];
    }
    let mids: Vec<f64> = c.windows(2).map(|w| w[0] / 2.0 + w[1] / 2.0).collect();
    let (first, last) = (c[0], c[c.len() - 1]);
    let mut edges = Vec::with_capacity(c.len() + 1);
    edges.push(first - (mids[0] - first));
    edges.extend(&mids);
    edges.push(last + (last - mids[mids.len() - 1]));
    edges
}

impl Figure for HeatmapFigure<'_> {
    const SIZE: (u32, u32) = HEATMAP_SIZE;

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let map = self.map;
        root.fill(&WHITE)?;
        let body = if map.title.is_empty() {
            root.margin(10, 0, 0, 0)
        } else {
            root.titled(map.title, (FONT, TITLE_PX))?
        };
        let (w, h) = body.dim_in_pixel();
        let (body, footer) = body.split_vertically(h.saturating_sub(70));
        let (main, bar) = body.split_horizontally(w.saturating_sub(150));

        let mut chart = ChartBuilder::on(&main)
            .margin(10)
            .margin_left(20)
            .x_label_area_size(60)
            .y_label_area_size(95)
            .build_cartesian_2d(self.x.clone(), self.y.clone())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(map.x_label)
            .y_desc(map.y_label)
            .axis_desc_style((FONT, AXIS_LABEL_PX))
            .label_style((FONT, TICK_PX))
            .x_labels(10)
            .y_labels(10)
            .draw()?;
        let (nx, ny) = (map.xs.len(), map.ys.len());
        let (xe, ye) = (&self.x_edges, &self.y_edges);
        chart.draw_series((0..ny).flat_map(|j| {
            (0..nx).map(move |i| {
                let color = self.color(map.values[j * nx + i]);
                Rectangle::new([(xe[i], ye[j]), (xe[i + 1], ye[j + 1])], color.filled())
            })
        }))?;
        let (min, i, j) = self.min;
        let at = (map.xs[i], map.ys[j]);
        chart.draw_series([
            Circle::new(at, 7, WHITE.stroke_width(2)),
            Circle::new(at, 5, RED.filled()),
        ])?;

        // The colour bar, with the same vertical margins as the map so their ends line up.
        let mut scale = ChartBuilder::on(&bar)
            .margin(10)
            .margin_left(15)
            .x_label_area_size(60)
            .right_y_label_area_size(85)
            .build_cartesian_2d(Axis::new(0.0, 1.0, false)?, self.scale.clone())?;
        scale
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc(map.value_label)
            .axis_desc_style((FONT, AXIS_LABEL_PX))
            .label_style((FONT, TICK_PX))
            .y_labels(10)
            .draw()?;
        const STEPS: usize = 256;
        let Range { start: lo, end: hi } = self.scale.range();
        scale.draw_series((0..STEPS).map(|k| {
            let (a, b) = (k as f64 / STEPS as f64, (k + 1) as f64 / STEPS as f64);
            let color = viridis((a + b) / 2.0);
            Rectangle::new(
                [(0.0, lo + (hi - lo) * a), (1.0, lo + (hi - lo) * b)],
                color.filled(),
            )
        }))?;

        let frame = [(0.0, lo), (1.0, hi)];
        scale.draw_series([Rectangle::new(frame, BLACK.stroke_width(1))])?;

        // The footer says where the minimum is and, on a second line, what grey means.
        let font = (FONT, LEGEND_PX).into_font().color(&BLACK);
        let (x, y) = (30, 16);
        footer.draw(&Circle::new((x, y), 5, RED.filled()))?;
        let name = |label: &str, default: &str| -> String {
            if label.is_empty() { default } else { label }.to_string()
        };
        let text = format!(
            "minimum {} = {} at ({} = {}, {} = {})",
            name(map.value_label, "value"),
            fmt_short(min),
            name(map.x_label, "x"),
            fmt_short(at.0),
            name(map.y_label, "y"),
            fmt_short(at.1),
        );
        footer.draw(&Text::new(text, (x + 14, y - 9), font.clone()))?;
        if self.non_finite > 0 {
            let y = y + 28;
            footer.draw(&Rectangle::new(
                [(x - 6, y - 6), (x + 6, y + 6)],
                NON_FINITE.filled(),
            ))?;
            let note = format!(
                "NaN or infinite ({} of {} cells)",
                self.non_finite,
                map.values.len()
            );
            footer.draw(&Text::new(note, (x + 14, y - 9), font))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> image::RgbImage {
        image::open(path)
            .unwrap_or_else(|e| panic!("{} is not a valid image: {e}", path.display()))
            .to_rgb8()
    }

    /// The text of every `<text>` element in an SVG.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    fn assert_texts(svg: &str, expected: &[&str]) {
        let texts = svg_texts(svg);
        for text in expected {
            assert!(
                texts.iter().any(|t| t == text),
                "no text {text:?} in {texts:?}"
            );
        }
    }

    fn non_white(img: &image::RgbImage) -> usize {
        img.pixels().filter(|p| p.0 != [255, 255, 255]).count()
    }

    fn loss_curves() -> LinePlot<'static> {
        let curve = |scale: f64, n: usize| -> Vec<(f64, f64)> {
            (0..n)
                .map(|i| {
                    let t = 1.0 + i as f64 * 10.0;
                    (t, 3.0 + scale / t.sqrt())
                })
                .collect()
        };
        LinePlot {
            title: "Validation loss vs training time",
            x_label: "training time (s)",
            y_label: "validation loss",
            series: vec![
                Series::new("muon", curve(4.0, 100)),
                Series::new("adamw", curve(6.0, 70)),
                Series::new("lion (one eval)", vec![(300.0, 3.6)]),
                Series::new(
                    "with NaN",
                    vec![(5.0, f64::NAN), (50.0, 3.9), (f64::INFINITY, 1.0)],
                ),
            ],
            log_x: false,
            log_y: false,
            hlines: vec![("target 3.28".to_string(), 3.28)],
        }
    }

    fn landscape() -> Heatmap<'static> {
        let xs: Vec<f64> = (0..21).map(|i| -1.0 + i as f64 * 0.1).collect();
        let ys: Vec<f64> = (0..15).map(|j| -0.7 + j as f64 * 0.1).collect();
        let mut values = Vec::new();
        for &y in &ys {
            for &x in &xs {
                values.push(3.3 + (x - 0.2) * (x - 0.2) + 2.0 * (y + 0.1) * (y + 0.1));
            }
        }
        values[7] = f64::NAN;
        values[8] = f64::INFINITY;
        Heatmap {
            title: "Loss landscape",
            x_label: "direction 1",
            y_label: "direction 2",
            xs,
            ys,
            values,
            value_label: "validation loss",
        }
    }

    #[test]
    fn line_plot_writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("plots/new/loss_vs_time");
        let plot = loss_curves();
        let [svg, png] = line_plot(&plot, &stem).unwrap();
        assert_eq!(svg, dir.path().join("plots/new/loss_vs_time.svg"));
        assert_eq!(png, dir.path().join("plots/new/loss_vs_time.png"));

        let text = fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(100)]);
        assert_texts(
            &text,
            &[
                plot.title,
                plot.x_label,
                plot.y_label,
                "muon",
                "adamw",
                "lion (one eval)",
                "target 3.28",
            ],
        );

        let img = decode(&png);
        assert_eq!(img.dimensions(), LINE_PLOT_SIZE);
        assert!(non_white(&img) > 10_000, "the plot is almost blank");
        // Each series' colour shows, the single point's included (as a marker).
        for color in &PALETTE[..4] {
            assert!(
                img.pixels().any(|p| p.0 == [color.0, color.1, color.2]),
                "no pixel of {color:?}"
            );
        }
        // No temporary files are left beside the plots.
        let mut names: Vec<String> = fs::read_dir(dir.path().join("plots/new"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["loss_vs_time.png", "loss_vs_time.svg"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&png).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn text_is_drawn_into_the_png() {
        let dir = tempfile::tempdir().unwrap();
        let with_title = loss_curves();
        let without_title = LinePlot {
            title: "",
            ..loss_curves()
        };
        let [_, a] = line_plot(&with_title, &dir.path().join("a")).unwrap();
        let [_, b] = line_plot(&without_title, &dir.path().join("b")).unwrap();
        let (a, b) = (decode(&a), decode(&b));
        // The title's band, top centre: text in one, (almost) white in the other.
        let band = |img: &image::RgbImage| {
            (0..50)
                .flat_map(|y| (300..724).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 != [255, 255, 255])
                .count()
        };
        assert!(
            band(&a) > band(&b) + 300,
            "no title drawn: {} vs {}",
            band(&a),
            band(&b)
        );
    }

    #[test]
    fn line_plot_with_log_axes() {
        let dir = tempfile::tempdir().unwrap();
        let steps = |f: fn(f64) -> f64| -> Vec<(f64, f64)> {
            (0..=50)
                .map(|i| {
                    let step = (10f64.powf(i as f64 / 10.0)).round();
                    (step, f(step))
                })
                .chain([(0.0, 0.5)]) // step 0: dropped on the log axis
                .collect()
        };
        let plot = LinePlot {
            title: "Grokking",
            x_label: "step",
            y_label: "accuracy",
            series: vec![
                Series::new("train", steps(|s| (s / 1000.0).min(1.0))),
                Series::new("validation", steps(|s| (s / 30000.0).min(1.0))),
            ],
            log_x: true,
            ..LinePlot::default()
        };
        let [svg, png] = line_plot(&plot, &dir.path().join("grok")).unwrap();
        let text = fs::read_to_string(svg).unwrap();
        assert_texts(&text, &["1", "10", "100", "1000", "10000", "100000"]);
        assert!(non_white(&decode(&png)) > 10_000);

        // Log y within one decade still gets ticks; time-to-target vs model size on log-log.
        let plot = LinePlot {
            title: "Time to target",
            x_label: "parameters",
            y_label: "seconds",
            series: vec![Series::new(
                "muon",
                vec![
                    (124e6, 180.0),
                    (350e6, 420.0),
                    (774e6, 900.0),
                    (1.5e9, 2000.0),
                ],
            )],
            log_x: true,
            log_y: true,
            hlines: vec![("one hour".into(), 3600.0), ("below zero".into(), -1.0)],
        };
        let [svg, _] = line_plot(&plot, &dir.path().join("ttt")).unwrap();
        let text = fs::read_to_string(svg).unwrap();
        assert_texts(
            &text,
            &[
                "2e8", "5e8", "1e9", "200", "500", "1000", "2000", "one hour",
            ],
        );
        assert!(!text.contains("below zero"));
        let ticks = Axis::new(3.2, 4.1, true).unwrap().ticks(8);
        assert!(ticks.len() >= 4, "{ticks:?}");
    }

    #[test]
    fn heatmap_writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let map = landscape();
        let [svg, png] = heatmap(&map, &dir.path().join("landscape")).unwrap();
        let text = fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"));
        assert_texts(
            &text,
            &[
                map.title,
                map.x_label,
                map.y_label,
                map.value_label,
                "minimum validation loss = 3.3 at (direction 1 = 0.2, direction 2 = -0.1)",
                "NaN or infinite (2 of 315 cells)",
            ],
        );

        let img = decode(&png);
        assert_eq!(img.dimensions(), HEATMAP_SIZE);
        let count = |c: RGBColor| img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
        assert!(
            count(NON_FINITE) > 2 * 300,
            "the two non-finite cells are not grey"
        );
        assert!(
            count(viridis(0.0)) > 100,
            "the low end of the colour map is missing"
        );
        assert!(
            count(viridis(1.0)) > 100,
            "the high end of the colour map is missing"
        );
        assert!(count(RGBColor(255, 0, 0)) > 20, "the minimum is not marked");

        // A 1×1 grid and constant values still render.
        let one = Heatmap {
            xs: vec![0.0],
            ys: vec![5.0],
            values: vec![1.0],
            ..Heatmap::default()
        };
        heatmap(&one, &dir.path().join("one")).unwrap();
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("bad");
        let line_err = |plot: LinePlot| format!("{:#}", line_plot(&plot, &stem).unwrap_err());
        assert!(line_err(LinePlot::default()).contains("no series"));
        let empty = LinePlot {
            series: vec![
                Series::new("a", vec![]),
                Series::new("b", vec![(f64::NAN, 1.0)]),
            ],
            ..LinePlot::default()
        };
        assert!(line_err(empty).contains("none of the 2 series"));
        let nonpositive = LinePlot {
            series: vec![Series::new("a", vec![(0.0, 1.0), (-1.0, 2.0)])],
            log_x: true,
            ..LinePlot::default()
        };
        assert!(line_err(nonpositive).contains("above zero on a log axis"));
        let too_wide = LinePlot {
            series: vec![Series::new("a", vec![(0.0, -1e308), (1.0, 1e308)])],
            ..LinePlot::default()
        };
        assert!(line_err(too_wide).contains("wider than a float"));

        let map_err = |map: Heatmap| format!("{:#}", heatmap(&map, &stem).unwrap_err());
        let mismatch = Heatmap {
            values: vec![1.0; 5],
            ..landscape()
        };
        assert!(
            map_err(mismatch).contains("5 values for a grid of 21 xs by 15 ys, which needs 315")
        );
        let mut unsorted = landscape();
        unsorted.xs.swap(3, 4);
        assert!(map_err(unsorted).contains("xs must increase strictly, but xs[3] = "));
        let mut repeated = landscape();
        repeated.ys[1] = repeated.ys[0];
        assert!(map_err(repeated).contains("ys must increase strictly"));
        let mut nan_x = landscape();
        nan_x.xs[0] = f64::NAN;
        assert!(map_err(nan_x).contains("xs[0] is NaN"));
        let no_cells = Heatmap {
            xs: vec![],
            ..landscape()
        };
        assert!(map_err(no_cells).contains("xs is empty"));
        let all_nan = Heatmap {
            values: vec![f64::NAN; 315],
            ..landscape()
        };
        assert!(map_err(all_nan).contains("NaN or infinite"));
        assert!(!stem.with_extension("svg").exists() && !stem.with_extension("png").exists());
    }

    #[test]
    fn extreme_values_render_or_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (false, false, vec![(0.0, 1e300), (1.0, -1e300)]),
            (false, false, vec![(1.0, 1.0), (1.0, 1.0 + 1e-15)]),
            (false, false, vec![(5e-324, 0.0), (1e-320, -5e-324)]),
            (false, false, vec![(-1e-300, 7.0)]),
            (true, true, vec![(1e-300, 1e-300), (1e300, 1e300)]),
            (true, true, vec![(1e-320, 1.0), (2.0, 1e-310)]),
            (true, false, vec![(f64::MAX, 1.0), (f64::MIN_POSITIVE, 2.0)]),
            (false, true, vec![(1.0, 3.2), (2.0, 3.3)]),
        ];
        for (k, (log_x, log_y, points)) in cases.into_iter().enumerate() {
            let plot = LinePlot {
                title: "extreme",
                series: vec![Series::new("s", points.clone())],
                log_x,
                log_y,
                hlines: vec![("inf".into(), f64::INFINITY)],
                ..LinePlot::default()
            };
            // Either renders or says why; never panics.
            if let Err(e) = line_plot(&plot, &dir.path().join(format!("case{k}"))) {
                assert!(
                    format!("{e:#}").contains("axis"),
                    "case {k} {points:?}: {e:#}"
                );
            }
        }
        let huge = Heatmap {
            xs: vec![-1e300, 1e300],
            ys: vec![1e-300, 2e-300],
            values: vec![1e300, -1e300, 0.0, f64::NEG_INFINITY],
            ..Heatmap::default()
        };
        heatmap(&huge, &dir.path().join("huge")).unwrap();
    }

    #[test]
    fn stem_suffixes_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let plot = LinePlot {
            series: vec![Series::new("", vec![(1.0, 2.0)])],
            ..LinePlot::default()
        };
        let [svg, png] = line_plot(&plot, &dir.path().join("run.v2")).unwrap();
        assert_eq!(svg.file_name().unwrap(), "run.v2.svg");
        assert_eq!(png.file_name().unwrap(), "run.v2.png");
        assert!(line_plot(&plot, Path::new("")).is_err());
        // A stem under a regular file cannot get its directory.
        let blocked = svg.join("x");
        let err = line_plot(&plot, &blocked).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot create the directory"),
            "{err:#}"
        );
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(fmt_tick(0.1 + 0.2), "0.3");
        assert_eq!(fmt_tick(3.28), "3.28");
        assert_eq!(fmt_tick(-0.0), "0");
        assert_eq!(fmt_tick(100000.0), "100000");
        assert_eq!(fmt_tick(1e6), "1e6");
        assert_eq!(fmt_tick(2e-5), "2e-5");
        assert_eq!(fmt_tick(1.5e300), "1.5e300");
        assert_eq!(fmt_tick(0.999999999999), "1");
        assert_eq!(fmt_short(std::f64::consts::PI), "3.1416");
        let ticks = linear_ticks(3.17, 3.61, 8);
        let labels: Vec<String> = ticks.iter().map(|&v| fmt_tick(v)).collect();
        assert_eq!(labels, ["3.2", "3.3", "3.4", "3.5", "3.6"]);
        // Decades, thinned when there are many.
        assert_eq!(
            log_ticks(0.0, 5.0, 10).unwrap(),
            [1.0, 10.0, 100.0, 1e3, 1e4, 1e5]
        );
        let wide = log_ticks(-300.0, 300.0, 10).unwrap();
        assert_eq!(wide, [1e-300, 1e-200, 1e-100, 1.0, 1e100, 1e200, 1e300]);
        assert_eq!(
            log_ticks(0.0, 1.7, 10).unwrap(),
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
        );
    }

    #[test]
    fn viridis_runs_from_purple_to_yellow() {
        assert_eq!(viridis(0.0), RGBColor(0x44, 0x01, 0x54));
        assert_eq!(viridis(1.0), RGBColor(0xfd, 0xe7, 0x25));
        assert_eq!(viridis(0.5), RGBColor(0x21, 0x91, 0x8c));
        assert_eq!(viridis(f64::NAN), viridis(-3.0));
        assert_eq!(viridis(7.0), viridis(1.0));
    }
}

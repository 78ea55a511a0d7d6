//! Charts for people: a training run's curves (loss and held-out perplexity by step and
//! tokens, the learning rate below) and a benchmark table's accuracies with their 95 %
//! intervals, each written as SVG and PNG.
//!
//! Drawn with `plotters`; text uses DejaVu Sans from the `dejavu` crate, registered with
//! plotters' `ab_glyph` font backend, so no system fonts are needed and the pictures are the
//! same on every machine.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: nothing to plot ({what})")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: drawing failed: {message}")]
    Draw { path: PathBuf, message: String },
}

/// One line of a run's metrics: a training step (loss, learning rate, tokens so far) and/or
/// a held-out evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunPoint {
    pub step: f64,
    /// Tokens trained on up to this step.
    pub tokens: Option<f64>,
    /// Training loss of the step (nats per token).
    pub loss: Option<f64>,
    /// Held-out loss (nats per token; perplexity is its exponential).
    pub val_loss: Option<f64>,
    pub lr: Option<f64>,
}

/// A benchmark accuracy measured during a run, with its 95 % interval.
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyPoint {
    /// The task.
    pub task: String,
    /// The optimizer step it was measured at.
    pub step: f64,
    pub acc: f64,
    /// 95 % interval.
    pub low: f64,
    pub high: f64,
}

/// One bar of an accuracy chart: `series` (a model) in `group` (a task and regime).
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyBar {
    pub group: String,
    pub series: String,
    pub acc: f64,
    /// 95 % interval.
    pub low: f64,
    pub high: f64,
}

const FONT: &str = "sans-serif";
const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
const HELD_OUT_COLOUR: RGBColor = RGBColor(214, 39, 40);
const LR_COLOUR: RGBColor = RGBColor(44, 160, 44);
const SERIES_COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Training curves of one run: the upper panel has the training loss (line) and held-out
/// loss (markers) against optimizer steps (bottom axis) and tokens (top axis), with
/// held-out perplexity on a log scale on the right (perplexity = e^loss, so both vertical
/// axes are one scale); with `accuracy`, a panel of each benchmark's accuracy (95 %
/// intervals as error bars) by tokens trained follows; the lowest panel has the learning
/// rate. Writes `<stem>.svg` and `<stem>.png` and returns their paths.
pub fn training_curves(
    points: &[RunPoint],
    accuracy: &[AccuracyPoint],
    title: &str,
    stem: &Path,
) -> Result<(PathBuf, PathBuf), PlotError> {
    let curves = Curves::of(points, accuracy, title).ok_or_else(|| PlotError::Empty {
        path: stem.to_path_buf(),
        what: "no training or held-out loss in the metrics",
    })?;
    let height = if curves.accuracy.is_empty() {
        760
    } else {
        1080
    };
    render(stem, (1000, height), &curves)
}

/// A grouped bar chart of accuracies with their 95 % intervals as error bars: one group per
/// task and regime, one bar per series (the base and the continued model, say). Writes
/// `<stem>.svg` and `<stem>.png` and returns their paths.
pub fn accuracy_chart(
    bars: &[AccuracyBar],
    title: &str,
    stem: &Path,
) -> Result<(PathBuf, PathBuf), PlotError> {
    if bars.is_empty() {
        return Err(PlotError::Empty {
            path: stem.to_path_buf(),
            what: "no accuracies",
        });
    }
    let chart = Accuracies {
        groups: first_seen(bars.iter().map(|b| b.group.as_str())),
        series: first_seen(bars.iter().map(|b| b.series.as_str())),
        bars,
        title,
    };
    let width = (260 + 130 * chart.groups.len() as u32).clamp(820, 1800);
    render(stem, (width, 580), &chart)
}

/// One training run's loss by optimizer step, for [`loss_comparison`].
#[derive(Debug, Clone, PartialEq)]
pub struct LossSeries {
    /// The legend's name (`base, LoRA`).
    pub name: String,
    /// `(step, training loss)`.
    pub points: Vec<(f64, f64)>,
    /// Series of one colour index share a colour (e.g. one fine-tuning regime)…
    pub colour: usize,
    /// …and are told apart by dashes (e.g. the continued model against the base, solid).
    pub dashed: bool,
}

/// Several runs' training loss on one chart (the paper's "faster convergence" figure: the
/// base and the continued model fine-tuned alike), written as `<stem>.svg` and `.png`.
pub fn loss_comparison(
    series: &[LossSeries],
    title: &str,
    stem: &Path,
) -> Result<(PathBuf, PathBuf), PlotError> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    if points().next().is_none() {
        return Err(PlotError::Empty {
            path: stem.to_path_buf(),
            what: "no training loss in any run",
        });
    }
    let (lo, hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let last = points().map(|p| p.0).fold(0.0, f64::max);
    let chart = Losses {
        series,
        title,
        steps: 0.0..last.max(1.0),
        losses: padded(lo, hi, 0.05),
    };
    render(stem, (1000, 620), &chart)
}

struct Losses<'a> {
    series: &'a [LossSeries],
    title: &'a str,
    steps: Range<f64>,
    losses: Range<f64>,
}

impl Chart for Losses<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let root = root
            .titled(self.title, (FONT, 24).into_font().style(FontStyle::Bold))
            .map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(self.steps.clone(), self.losses.clone())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("fine-tuning step")
            // Whole steps only: more labels than steps would print the same step twice.
            .x_labels((self.steps.end as usize + 1).min(11))
            .x_label_formatter(&|s| format!("{s:.0}"))
            .y_desc("training loss (nats per response token)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        for series in self.series {
            let colour = SERIES_COLOURS[series.colour % SERIES_COLOURS.len()];
            if !series.dashed {
                line(&mut chart, &series.points, colour, &series.name).map_err(e)?;
                continue;
            }
            let style = colour.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    series.points.iter().copied(),
                    8,
                    5,
                    style,
                ))
                .map_err(e)?
                .label(series.name.as_str())
                .legend(move |(x, y)| {
                    plotters::element::DashedPathElement::new(
                        vec![(x, y), (x + 24, y)],
                        8,
                        5,
                        style,
                    )
                });
        }
        legend(&mut chart).map_err(e)
    }
}

/// Something drawable on any plotters backend.
trait Chart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws `chart` into `<stem>.svg` and `<stem>.png`.
fn render(
    stem: &Path,
    size: (u32, u32),
    chart: &impl Chart,
) -> Result<(PathBuf, PathBuf), PlotError> {
    register_fonts();
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| PlotError::Draw { path, message }
    };
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        chart.draw(&root).map_err(failed(&svg))?;
        root.present().map_err(|e| failed(&svg)(e.to_string()))?;
    }
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        chart.draw(&root).map_err(failed(&png))?;
        root.present().map_err(|e| failed(&png)(e.to_string()))?;
    }
    Ok((svg, png))
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            // The bytes are a font shipped inside the `dejavu` crate: if they do not parse,
            // the build is broken, not the input.
            if plotters::style::register_font(FONT, style, bytes).is_err() {
                panic!("the embedded DejaVu Sans does not parse");
            }
        }
    });
}

fn first_seen<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// `lo..hi` widened by `fraction` of its span on both sides (and made non-empty).
fn padded(lo: f64, hi: f64, fraction: f64) -> Range<f64> {
    let span = (hi - lo).max(hi.abs() * 1e-3).max(1e-9);
    lo - span * fraction..hi + span * fraction
}

/// (step, accuracy, interval low, interval high).
type Measured = (f64, f64, f64, f64);

struct Curves<'a> {
    title: &'a str,
    train: Vec<(f64, f64)>,
    held_out: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    steps: Range<f64>,
    losses: Range<f64>,
    /// Tokens per optimizer step, for the top axis (None: the metrics do not say).
    tokens_per_step: Option<f64>,
    /// Per task (first seen first): its measurements, one per step.
    accuracy: Vec<(String, Vec<Measured>)>,
}

impl<'a> Curves<'a> {
    fn of(points: &[RunPoint], accuracy: &[AccuracyPoint], title: &'a str) -> Option<Self> {
        let series = |value: fn(&RunPoint) -> Option<f64>| -> Vec<(f64, f64)> {
            points
                .iter()
                .filter_map(|p| value(p).filter(|v| v.is_finite()).map(|v| (p.step, v)))
                .collect()
        };
        let train = series(|p| p.loss);
        let mut held_out = series(|p| p.val_loss);
        // The evaluation after the last step repeats the one logged with it.
        held_out.dedup_by(|a, b| a.0 == b.0);
        if train.is_empty() && held_out.is_empty() {
            return None;
        }
        let all = train.iter().chain(&held_out);
        let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
        let last_step = points.iter().map(|p| p.step).fold(1.0, f64::max);
        let tokens_per_step = points
            .iter()
            .rev()
            .find_map(|p| p.tokens.filter(|_| p.step > 0.0).map(|t| t / p.step));
        Some(Curves {
            title,
            lr: series(|p| p.lr),
            train,
            held_out,
            steps: 0.0..last_step,
            losses: padded(lo.max(0.0), hi, 0.05),
            tokens_per_step,
            accuracy: first_seen(accuracy.iter().map(|a| a.task.as_str()))
                .into_iter()
                .map(|task| {
                    let mut series: Vec<_> = accuracy
                        .iter()
                        .filter(|a| a.task == task)
                        .map(|a| (a.step, a.acc, a.low, a.high))
                        .collect();
                    // The evaluation after the last step repeats the one logged with it.
                    series.dedup_by(|a, b| a.0 == b.0);
                    (task, series)
                })
                .collect(),
        })
    }
}

impl Chart for Curves<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let root = root
            .titled(self.title, (FONT, 24).into_font().style(FontStyle::Bold))
            .map_err(e)?;
        let height = root.dim_in_pixel().1;
        let (upper, lower) = if self.accuracy.is_empty() {
            root.split_vertically(height * 7 / 10)
        } else {
            let (upper, rest) = root.split_vertically(height * 50 / 100);
            let (middle, lower) = rest.split_vertically(height * 30 / 100);
            self.draw_accuracy(&middle).map_err(e)?;
            (upper, lower)
        };

        // Perplexity = e^loss: the right axis is the loss axis labelled with e^loss, which
        // is a log-scale perplexity axis lined up with the loss exactly. (plotters' own log
        // scale labels only powers of ten, too few over one decade.)
        let tokens = self.tokens_per_step.map_or(self.steps.clone(), |t| {
            self.steps.start * t..self.steps.end * t
        });
        let mut chart = ChartBuilder::on(&upper)
            .margin(12)
            .x_label_area_size(44)
            .top_x_label_area_size(44)
            .y_label_area_size(70)
            .right_y_label_area_size(80)
            .build_cartesian_2d(self.steps.clone(), self.losses.clone())
            .map_err(e)?
            .set_secondary_coord(tokens, self.losses.clone());
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .x_label_formatter(&|s| format!("{s:.0}"))
            .y_desc("loss (nats per token)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        chart
            .configure_secondary_axes()
            .x_desc(if self.tokens_per_step.is_some() {
                "tokens trained"
            } else {
                "optimizer step"
            })
            .y_desc("held-out perplexity (log scale)")
            .y_labels(10)
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .x_label_formatter(&|t| si(*t))
            .y_label_formatter(&|loss| si(loss.exp()))
            .draw()
            .map_err(e)?;
        if !self.train.is_empty() {
            line(&mut chart, &self.train, TRAIN_COLOUR, "training loss").map_err(e)?;
        }
        if !self.held_out.is_empty() {
            chart
                .draw_series(
                    self.held_out
                        .iter()
                        .map(|&p| Circle::new(p, 5, HELD_OUT_COLOUR.filled())),
                )
                .map_err(e)?
                .label("held-out loss (right axis: its perplexity)")
                .legend(|(x, y)| Circle::new((x + 12, y), 5, HELD_OUT_COLOUR.filled()));
        }
        legend(&mut chart).map_err(e)?;

        if self.lr.is_empty() {
            return Ok(());
        }
        let top = self.lr.iter().map(|p| p.1).fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(&lower)
            .margin(12)
            // As wide as the upper panel's plot, whose right side holds the perplexity axis.
            .margin_right(12 + 80)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(self.steps.clone(), 0.0..top * 1.08)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .x_label_formatter(&|s| format!("{s:.0}"))
            .y_desc("learning rate")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .y_labels(4)
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        line(
            &mut chart,
            &self.lr,
            LR_COLOUR,
            "learning rate (warmup, then cosine)",
        )
        .map_err(e)?;
        legend(&mut chart).map_err(e)?;
        Ok(())
    }
}

impl Curves<'_> {
    /// Each benchmark's accuracy by tokens trained (by step where the metrics have no token
    /// counts), its 95 % interval as an error bar, under the loss panel.
    fn draw_accuracy<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let scale = self.tokens_per_step.unwrap_or(1.0);
        let x = self.steps.start * scale..self.steps.end * scale;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .margin_right(12 + 80)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc(if self.tokens_per_step.is_some() {
                "tokens trained"
            } else {
                "optimizer step"
            })
            .x_label_formatter(&|t| si(*t))
            .y_desc("benchmark accuracy (95 % CI)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.1}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (task, series)) in self.accuracy.iter().enumerate() {
            let colour = SERIES_COLOURS[i % SERIES_COLOURS.len()];
            let at = |p: &Measured| (p.0 * scale, p.1);
            chart.draw_series(series.iter().map(|p| {
                ErrorBar::new_vertical(p.0 * scale, p.2, p.1, p.3, colour.stroke_width(1), 8)
            }))?;
            chart.draw_series(
                series
                    .iter()
                    .map(|p| Circle::new(at(p), 4, colour.filled())),
            )?;
            line(
                &mut chart,
                &series.iter().map(at).collect::<Vec<_>>(),
                colour,
                task,
            )?;
        }
        legend(&mut chart)
    }
}

type ChartOf<'a, DB, Y> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>;

/// A named line in the legend's style of these charts.
fn line<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartOf<'a, DB, Y>,
    points: &[(f64, f64)],
    colour: RGBColor,
    name: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            colour.stroke_width(2),
        ))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2)));
    Ok(())
}

/// The legend box, top right.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
}

/// 12_300 → "12.3k", 4.1e6 → "4.1M": short tick labels.
fn si(value: f64) -> String {
    let (scaled, suffix) = match value.abs() {
        v if v >= 1e9 => (value / 1e9, "G"),
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e4 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let text = if scaled.abs() >= 100.0 || scaled.fract().abs() < 1e-9 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{suffix}")
}

struct Accuracies<'a> {
    bars: &'a [AccuracyBar],
    groups: Vec<String>,
    series: Vec<String>,
    title: &'a str,
}

impl Chart for Accuracies<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let n = self.groups.len();
        let names = self.groups.clone();
        // The labelled axis is segmented (one segment per group); the bars are drawn on a
        // continuous secondary scale over the same span, where group i is [i, i + 1) and
        // its bars share 80 % of it, centred.
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 22).into_font().style(FontStyle::Bold))
            .margin(16)
            .x_label_area_size(80)
            .y_label_area_size(70)
            // (A segmented a..b range has b - a + 1 segments.)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..1.0)
            .map_err(e)?
            .set_secondary_coord(0.0..n as f64, 0.0..1.0);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_desc("task / fine-tuning regime")
            .y_desc("accuracy (95 % interval)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            // The group names are written below, one line per ` / `-separated part: side by
            // side on one line, names like `medqa_4options / lora (50 %)` run into each other.
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&|y| format!("{y:.1}"))
            .draw()
            .map_err(e)?;
        let label_style =
            TextStyle::from((FONT, 14).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            ));
        for (i, name) in names.iter().enumerate() {
            let (x, y) = chart
                .borrow_secondary()
                .as_coord_spec()
                .translate(&(i as f64 + 0.5, 0.0));
            for (line, part) in name.split(" / ").enumerate() {
                let at = (x, y + 12 + 17 * line as i32);
                root.draw(&Text::new(part.to_string(), at, label_style.clone()))
                    .map_err(e)?;
            }
        }
        let width = 0.8 / self.series.len() as f64;
        for (s, series) in self.series.iter().enumerate() {
            let colour = SERIES_COLOURS[s % SERIES_COLOURS.len()];
            let placed: Vec<(f64, &AccuracyBar)> = self
                .bars
                .iter()
                .filter(|b| &b.series == series)
                .map(|b| {
                    let g = self.groups.iter().position(|n| n == &b.group).unwrap_or(0);
                    (g as f64 + 0.1 + width * s as f64, b)
                })
                .collect();
            chart
                .draw_secondary_series(placed.iter().map(|&(x, b)| {
                    Rectangle::new([(x, 0.0), (x + width * 0.92, b.acc)], colour.filled())
                }))
                .map_err(e)?
                .label(series.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled())
                });
            chart
                .draw_secondary_series(placed.iter().map(|&(x, b)| {
                    ErrorBar::new_vertical(
                        x + width * 0.46,
                        b.low,
                        b.acc,
                        b.high,
                        BLACK.stroke_width(2),
                        10,
                    )
                }))
                .map_err(e)?;
        }
        legend(&mut chart).map_err(e)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_points() -> Vec<RunPoint> {
        let mut points = vec![RunPoint {
            step: 0.0,
            val_loss: Some(7.6),
            ..Default::default()
        }];
        for step in 1..=200 {
            let s = step as f64;
            points.push(RunPoint {
                step: s,
                tokens: Some(s * 2048.0),
                loss: Some(7.6 * (-s / 60.0).exp() + 1.0),
                val_loss: (step % 50 == 0).then(|| 7.6 * (-s / 60.0).exp() + 1.3),
                lr: Some(3e-3 * (s / 20.0).min(1.0)),
            });
        }
        points
    }

    /// `PMC_PLOT_KEEP=DIR cargo test -p pmc-plot` keeps the test charts there, to look at.
    fn out_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path =
            std::env::var_os("PMC_PLOT_KEEP").map_or(dir.path().to_path_buf(), PathBuf::from);
        (dir, path)
    }

    #[test]
    fn curves_are_written_as_svg_and_png_with_titled_axes_and_a_named_legend() {
        let (_tmp, dir) = out_dir();
        let (svg, png) =
            training_curves(&run_points(), &[], "test run", &dir.join("curves")).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for label in [
            "optimizer step",
            "tokens trained",
            "loss (nats per token)",
            "held-out perplexity (log scale)",
            "learning rate",
            "training loss",
            "held-out loss",
            "test run",
        ] {
            assert!(text.contains(label), "the SVG lacks {label:?}");
        }
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 10_000, "a PNG of {} bytes", bytes.len());
    }

    #[test]
    fn no_losses_is_an_error_naming_the_chart() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            training_curves(&[RunPoint::default()], &[], "x", &dir.path().join("c")).unwrap_err();
        assert!(err.to_string().contains("nothing to plot"), "{err}");
    }

    #[test]
    fn accuracy_chart_names_every_group_and_series() {
        let (_tmp, dir) = out_dir();
        let bars: Vec<AccuracyBar> = ["pubmedqa / zero-shot", "medqa / lora"]
            .iter()
            .flat_map(|g| {
                ["base", "continued"].map(|s| AccuracyBar {
                    group: g.to_string(),
                    series: s.to_string(),
                    acc: if s == "base" { 0.35 } else { 0.52 },
                    low: if s == "base" { 0.28 } else { 0.44 },
                    high: if s == "base" { 0.42 } else { 0.6 },
                })
            })
            .collect();
        let (svg, _) = accuracy_chart(&bars, "accuracies", &dir.join("accuracy")).unwrap();
        let text = std::fs::read_to_string(svg).unwrap();
        // Group names are written one part a line.
        for label in [
            "\npubmedqa\n",
            "\nzero-shot\n",
            "\nmedqa\n",
            "\nlora\n",
            "base",
            "continued",
        ] {
            assert!(text.contains(label), "the SVG lacks {label:?}");
        }
    }

    #[test]
    fn si_labels_are_short() {
        assert_eq!(si(12_300.0), "12.3k");
        assert_eq!(si(4_100_000.0), "4.1M");
        assert_eq!(si(2.5), "2.5");
        assert_eq!(si(200.0), "200");
    }
}

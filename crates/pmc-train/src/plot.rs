//! A dependency-free SVG chart of a run's `metrics.jsonl`: training loss per step and
//! held-out perplexity at each evaluation, on two vertical scales.

use std::fmt::Write;
use std::path::Path;

use crate::TrainError;

const W: f64 = 720.0;
const H: f64 = 360.0;
const PAD: f64 = 56.0;

fn polyline(points: &[(f64, f64)], x_max: f64, y_min: f64, y_max: f64, colour: &str) -> String {
    let span = (y_max - y_min).max(1e-12);
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let px = PAD + x / x_max.max(1.0) * (W - 2.0 * PAD);
            let py = H - PAD - (y - y_min) / span * (H - 2.0 * PAD);
            format!("{px:.1},{py:.1}")
        })
        .collect();
    format!(
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
        coords.join(" ")
    )
}

/// Reads `run_dir/metrics.jsonl` and writes `run_dir/curves.svg`.
pub fn write_curves(run_dir: &Path) -> Result<std::path::PathBuf, TrainError> {
    let metrics = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).map_err(|e| TrainError::Io(metrics.clone(), e))?;
    let (mut loss, mut ppl) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(l) = v["loss"].as_f64() {
            loss.push((step, l));
        }
        if let Some(p) = v["val_ppl"].as_f64() {
            ppl.push((step, p.ln()));
        }
    }
    let x_max = loss.iter().chain(&ppl).map(|p| p.0).fold(1.0, f64::max);
    let range = |pts: &[(f64, f64)]| {
        pts.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            })
    };
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#444"/><text x="{cx}" y="{t}" text-anchor="middle">optimizer step (0 … {x_max})</text>"##,
        b = H - PAD,
        r = W - PAD,
        cx = W / 2.0,
        t = H - 16.0
    );
    let mut legend_y = PAD - 24.0;
    for (pts, colour, label) in [
        (&loss, "#1f77b4", "training loss"),
        (&ppl, "#d62728", "ln held-out perplexity"),
    ] {
        if pts.is_empty() {
            continue;
        }
        let (lo, hi) = range(pts);
        svg.push_str(&polyline(pts, x_max, lo, hi, colour));
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{legend_y}" fill="{colour}">{label}: {lo:.3} … {hi:.3}</text>"#,
            x = PAD
        );
        legend_y += 14.0;
    }
    svg.push_str("</svg>\n");
    let out = run_dir.join("curves.svg");
    std::fs::write(&out, svg).map_err(|e| TrainError::Io(out.clone(), e))?;
    Ok(out)
}

//! Charts of a run's `metrics.jsonl`: training loss per step and held-out perplexity at each
//! evaluation, on two vertical scales — as SVG (labelled) and PNG (for viewers and reports
//! that take images; numbers drawn with a small built-in pixel font).

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

type Series = Vec<(f64, f64)>;

/// Training loss and ln(held-out perplexity) by step, from `metrics.jsonl`.
fn read_series(run_dir: &Path) -> Result<(Series, Series), TrainError> {
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
    Ok((loss, ppl))
}

fn range(pts: &[(f64, f64)]) -> (f64, f64) {
    pts.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        })
}

/// Reads `run_dir/metrics.jsonl` and writes `run_dir/curves.svg` and `run_dir/curves.png`;
/// returns the SVG's path.
pub fn write_curves(run_dir: &Path) -> Result<std::path::PathBuf, TrainError> {
    let (loss, ppl) = read_series(run_dir)?;
    write_png(run_dir, &loss, &ppl)?;
    let x_max = loss.iter().chain(&ppl).map(|p| p.0).fold(1.0, f64::max);
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

/// 3 × 5 pixel glyphs (rows of 3 bits) for the characters of numbers.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        _ => [0, 0, 0, 0, 0],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            rgb: vec![255; w * h * 3],
        }
    }

    fn dot(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line two pixels wide (Bresenham).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.dot(x, y, c);
            self.dot(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text of digits, `.` and `-`, 3 × 5 glyphs scaled 2 ×.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.dot(x + k as i64 * 8 + col * 2 + ox, y + row as i64 * 2 + oy, c);
                        }
                    }
                }
            }
        }
    }

    /// PNG bytes: 8-bit RGB, each scanline unfiltered, zlib-compressed.
    fn png(&self) -> Vec<u8> {
        use std::io::Write as _;
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.rgb.chunks(self.w * 3) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw).expect("in-memory write");
        let idat = z.finish().expect("in-memory write");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

/// `curves.png`: the SVG's axes and curves; each curve's colour swatch is followed by its
/// value range, and the x axis ends with the last step.
fn write_png(run_dir: &Path, loss: &[(f64, f64)], ppl: &[(f64, f64)]) -> Result<(), TrainError> {
    let mut canvas = Canvas::new(W as usize, H as usize);
    let grey = [68, 68, 68];
    let (left, right, top, bottom) = (PAD as i64, (W - PAD) as i64, PAD as i64, (H - PAD) as i64);
    canvas.line((left, bottom), (right, bottom), grey);
    canvas.line((left, top), (left, bottom), grey);
    let x_max = loss.iter().chain(ppl).map(|p| p.0).fold(1.0, f64::max);
    canvas.text(left - 4, bottom + 8, "0", grey);
    let last = format!("{x_max:.0}");
    canvas.text(right - 8 * last.len() as i64, bottom + 8, &last, grey);
    let mut legend_y = 8;
    for (pts, colour) in [(loss, [31, 119, 180]), (ppl, [214, 39, 40])] {
        if pts.is_empty() {
            continue;
        }
        let (lo, hi) = range(pts);
        let span = (hi - lo).max(1e-12);
        let to_px = |(x, y): (f64, f64)| {
            let px = PAD + x / x_max * (W - 2.0 * PAD);
            let py = H - PAD - (y - lo) / span * (H - 2.0 * PAD);
            (px.round() as i64, py.round() as i64)
        };
        for pair in pts.windows(2) {
            canvas.line(to_px(pair[0]), to_px(pair[1]), colour);
        }
        if pts.len() == 1 {
            let (x, y) = to_px(pts[0]);
            canvas.line((x - 2, y), (x + 2, y), colour);
        }
        for dy in 0..10 {
            canvas.line((left, legend_y + dy), (left + 16, legend_y + dy), colour);
        }
        canvas.text(left + 24, legend_y, &format!("{lo:.3}-{hi:.3}"), colour);
        legend_y += 16;
    }
    let out = run_dir.join("curves.png");
    std::fs::write(&out, canvas.png()).map_err(|e| TrainError::Io(out, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_svg_and_a_valid_png() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..=40)
            .map(|s| {
                let mut v =
                    serde_json::json!({"step": s, "loss": 7.0 * (-(s as f64) / 15.0).exp() + 1.0});
                if s % 10 == 0 {
                    v["val_ppl"] = serde_json::json!(200.0 * (-(s as f64) / 20.0).exp() + 5.0);
                }
                v.to_string()
            })
            .collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n")).unwrap();
        let svg = super::write_curves(dir.path()).unwrap();
        assert!(std::fs::read_to_string(svg).unwrap().contains("<polyline"));
        let png = std::fs::read(dir.path().join("curves.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 720);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        if let Ok(keep) = std::env::var("PMC_KEEP_PNG") {
            std::fs::copy(dir.path().join("curves.png"), keep).unwrap();
        }
    }
}

//! A run's `metrics.jsonl` drawn as `curves.svg` and `curves.png` (pmc-plot: training and
//! held-out loss with perplexity on a log scale, by step and tokens, and the learning rate).

use std::path::{Path, PathBuf};

use pmc_plot::RunPoint;

use crate::TrainError;

/// The metrics of the run in `run_dir`, one point per line. A last line cut off without its
/// newline (the process was killed while appending it) is left out; any other line that is
/// not a metrics object is an error naming it.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<RunPoint>, TrainError> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Io(path.clone(), e))?;
    let complete = if text.ends_with('\n') {
        &text[..]
    } else {
        &text[..text.rfind('\n').map_or(0, |i| i + 1)]
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let bad = |message: String| TrainError::Data {
                path: path.clone(),
                line: Some(i + 1),
                message,
            };
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
            let step = v["step"]
                .as_f64()
                .ok_or_else(|| bad("no numeric \"step\"".into()))?;
            Ok(RunPoint {
                step,
                tokens: v["tokens"].as_f64(),
                loss: v["loss"].as_f64(),
                val_loss: v["val_loss"]
                    .as_f64()
                    .or_else(|| v["val_ppl"].as_f64().map(f64::ln)),
                lr: v["lr"].as_f64(),
            })
        })
        .collect()
}

/// The benchmark accuracies in the run's metrics (`"bench"` of the evaluation lines).
pub fn read_accuracy(run_dir: &Path) -> Result<Vec<pmc_plot::AccuracyPoint>, TrainError> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Io(path.clone(), e))?;
    let mut out = Vec::new();
    // Lines that do not parse were reported by `read_metrics`, which runs first.
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let (Some(step), Some(bench)) = (v["step"].as_f64(), v["bench"].as_object()) else {
            continue;
        };
        for (task, score) in bench {
            let interval = &score["wilson_95"];
            if let (Some(acc), Some(low), Some(high)) = (
                score["acc"].as_f64(),
                interval[0].as_f64(),
                interval[1].as_f64(),
            ) {
                out.push(pmc_plot::AccuracyPoint {
                    task: task.clone(),
                    step,
                    acc,
                    low,
                    high,
                });
            }
        }
    }
    Ok(out)
}

/// Reads `run_dir/metrics.jsonl` and writes `run_dir/curves.svg` and `run_dir/curves.png`;
/// returns their paths.
pub fn write_curves(run_dir: &Path) -> Result<(PathBuf, PathBuf), TrainError> {
    let points = read_metrics(run_dir)?;
    let accuracy = read_accuracy(run_dir)?;
    Ok(pmc_plot::training_curves(
        &points,
        &accuracy,
        &format!("Training curves of {}", run_dir.display()),
        &run_dir.join("curves"),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metrics_and_draws_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines: Vec<String> = (1..=40)
            .map(|s| {
                let mut v = serde_json::json!({"step": s, "loss": 7.0 * (-(s as f64) / 15.0).exp() + 1.0,
                    "lr": 1e-3, "tokens": s * 256});
                if s % 10 == 0 {
                    v["val_loss"] = serde_json::json!(5.0 * (-(s as f64) / 20.0).exp() + 1.5);
                    v["bench"] = serde_json::json!({"pubmedqa": {"acc": 0.3 + s as f64 / 200.0,
                        "wilson_95": [0.2, 0.6], "n": 50, "seconds": 1.0}});
                }
                v.to_string()
            })
            .collect();
        lines.insert(
            0,
            r#"{"step": 0, "val_loss": 6.5, "val_ppl": 665.1}"#.into(),
        );
        // A killed writer leaves a cut line at the end: not an error.
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            lines.join("\n") + "\n{\"step\": 41, \"lo",
        )
        .unwrap();
        let points = read_metrics(dir.path()).unwrap();
        assert_eq!(points.len(), 41);
        assert_eq!(points[0].val_loss, Some(6.5));
        assert_eq!(points[40].tokens, Some(40.0 * 256.0));
        let accuracy = read_accuracy(dir.path()).unwrap();
        assert_eq!(accuracy.len(), 4);
        assert_eq!((accuracy[3].step, accuracy[3].acc), (40.0, 0.5));
        assert_eq!((accuracy[3].low, accuracy[3].high), (0.2, 0.6));
        let (svg, png) = write_curves(dir.path()).unwrap();
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.contains("training loss"));
        assert!(svg.contains("benchmark accuracy") && svg.contains("pubmedqa"));
        assert_eq!(&std::fs::read(png).unwrap()[..4], b"\x89PNG");
    }

    #[test]
    fn a_broken_line_in_the_middle_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"step\": 1, \"loss\": 2}\nnot json\n{\"step\": 2, \"loss\": 1}\n",
        )
        .unwrap();
        let err = read_metrics(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl: line 2"), "{err}");
    }
}

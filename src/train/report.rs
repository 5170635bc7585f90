//! Evaluation results and how they are shown: accuracy, per-class accuracy, the confusion matrix
//! (as text, JSON and PNG) and learning curves (PNG).
//!
//! Plots are drawn with `plotters` into PNG bitmaps. Text needs a TrueType font; we use DejaVu
//! Sans from the system (Debian `fonts-dejavu-core`, installed by `.ci/run`). Without it the
//! plots are skipped with a warning: a missing font must not fail a training run.

use std::path::Path;

use serde::Serialize;

use super::TrainError;

/// Classification results of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub labels: Vec<String>,
    /// `confusion[truth][predicted]` counts.
    pub confusion: Vec<Vec<u32>>,
    pub accuracy: f32,
    pub per_class: Vec<ClassAccuracy>,
    pub clips: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassAccuracy {
    pub class: String,
    pub accuracy: f32,
    pub clips: u32,
}

impl Evaluation {
    /// From `(truth, predicted)` class ids.
    pub fn new(labels: &[String], pairs: &[(usize, usize)]) -> Self {
        let k = labels.len();
        let mut confusion = vec![vec![0u32; k]; k];
        for &(t, p) in pairs {
            if t < k && p < k {
                confusion[t][p] += 1;
            }
        }
        let correct: u32 = (0..k).map(|i| confusion[i][i]).sum();
        let per_class = (0..k)
            .map(|i| {
                let n: u32 = confusion[i].iter().sum();
                ClassAccuracy {
                    class: labels[i].clone(),
                    accuracy: if n > 0 {
                        confusion[i][i] as f32 / n as f32
                    } else {
                        0.0
                    },
                    clips: n,
                }
            })
            .collect();
        Self {
            labels: labels.to_vec(),
            confusion,
            accuracy: correct as f32 / pairs.len().max(1) as f32,
            per_class,
            clips: pairs.len(),
        }
    }

    /// Accuracy, per-class accuracy and the confusion matrix as a text table.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "accuracy {:.3} over {} clips", self.accuracy, self.clips);
        let _ = writeln!(s, "\n{:<18} {:>8} {:>6}", "class", "accuracy", "clips");
        for c in &self.per_class {
            let _ = writeln!(s, "{:<18} {:>8.3} {:>6}", c.class, c.accuracy, c.clips);
        }
        let short: Vec<String> = self.labels.iter().map(|l| abbreviate(l)).collect();
        let _ = write!(
            s,
            "\nconfusion (rows: truth, columns: predicted)\n{:<18}",
            ""
        );
        for l in &short {
            let _ = write!(s, " {l:>5}");
        }
        for (i, row) in self.confusion.iter().enumerate() {
            let _ = write!(s, "\n{:<18}", self.labels[i]);
            for v in row {
                let _ = write!(s, " {v:>5}");
            }
        }
        s.push('\n');
        s
    }
}

/// `air_conditioner` -> `air_c`, for table headers.
fn abbreviate(label: &str) -> String {
    label.chars().take(5).collect()
}

/// One epoch's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f32,
    pub train_accuracy: f32,
    /// Clip accuracy on the held-out fold, if one was given (reported, never used to choose).
    pub test_accuracy: Option<f32>,
}

pub(crate) fn load_font() -> bool {
    const CANDIDATES: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        for c in CANDIDATES {
            if let Ok(bytes) = std::fs::read(c) {
                // plotters keeps the font for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
                {
                    return true;
                }
            }
        }
        tracing::warn!("No DejaVu Sans font found (Debian: apt-get install fonts-dejavu-core); plots are skipped.");
        false
    })
}

pub(crate) fn plot_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Loss and accuracy per epoch. Returns false when plotting was skipped (no font).
pub fn plot_curves(path: &Path, title: &str, epochs: &[EpochStats]) -> Result<bool, TrainError> {
    use plotters::prelude::*;
    if !load_font() || epochs.is_empty() {
        return Ok(false);
    }
    let root = BitMapBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (left, right) = root.split_horizontally(450);
    let n = epochs.len() as f32;
    let max_loss = epochs.iter().map(|e| e.train_loss).fold(0.1f32, f32::max);
    let mut c = ChartBuilder::on(&left)
        .caption(format!("{title}: training loss"), ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(1f32..n.max(2.0), 0f32..max_loss * 1.05)
        .map_err(|e| plot_err(path, e))?;
    c.configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    c.draw_series(LineSeries::new(
        epochs.iter().map(|e| (e.epoch as f32, e.train_loss)),
        &RED,
    ))
    .map_err(|e| plot_err(path, e))?;
    let mut c = ChartBuilder::on(&right)
        .caption(
            "accuracy (train patches, held-out clips)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(1f32..n.max(2.0), 0f32..1f32)
        .map_err(|e| plot_err(path, e))?;
    c.configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    c.draw_series(LineSeries::new(
        epochs.iter().map(|e| (e.epoch as f32, e.train_accuracy)),
        &BLUE,
    ))
    .map_err(|e| plot_err(path, e))?
    .label("train")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    if epochs.iter().any(|e| e.test_accuracy.is_some()) {
        c.draw_series(LineSeries::new(
            epochs
                .iter()
                .filter_map(|e| e.test_accuracy.map(|a| (e.epoch as f32, a))),
            &GREEN,
        ))
        .map_err(|e| plot_err(path, e))?
        .label("held-out")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], GREEN));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(true)
}

/// The confusion matrix as a heat map with counts. Returns false when plotting was skipped.
pub fn plot_confusion(path: &Path, title: &str, ev: &Evaluation) -> Result<bool, TrainError> {
    use plotters::prelude::*;
    if !load_font() {
        return Ok(false);
    }
    let k = ev.labels.len();
    let root = BitMapBackend::new(path, (760, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    use plotters::coord::ranged1d::SegmentValue::{CenterOf, Exact};
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!("{title} (accuracy {:.3}, rows: truth)", ev.accuracy),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(130)
        .y_label_area_size(130)
        .build_cartesian_2d((0..k).into_segmented(), (0..k).into_segmented())
        .map_err(|e| plot_err(path, e))?;
    let labels = ev.labels.clone();
    let labels2 = ev.labels.clone();
    // Rows are drawn top-down in truth order: row t sits at y = k - 1 - t.
    c.configure_mesh()
        .disable_mesh()
        .x_labels(k)
        .y_labels(k)
        .x_label_formatter(&move |v| match v {
            CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&move |v| match v {
            CenterOf(i) if *i < k => labels2[k - 1 - *i].clone(),
            _ => String::new(),
        })
        .x_label_style(
            ("sans-serif", 12)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (t, row) in ev.confusion.iter().enumerate() {
        let n: u32 = row.iter().sum::<u32>().max(1);
        for (p, &v) in row.iter().enumerate() {
            let frac = v as f64 / f64::from(n);
            let y = k - 1 - t;
            let shade = (255.0 * (1.0 - frac)) as u8;
            c.draw_series(std::iter::once(Rectangle::new(
                [(Exact(p), Exact(y)), (Exact(p + 1), Exact(y + 1))],
                RGBColor(shade, shade, 255).filled(),
            )))
            .map_err(|e| plot_err(path, e))?;
            if v > 0 {
                c.draw_series(std::iter::once(Text::new(
                    v.to_string(),
                    (CenterOf(p), CenterOf(y)),
                    ("sans-serif", 13).into_font(),
                )))
                .map_err(|e| plot_err(path, e))?;
            }
        }
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(true)
}

/// A Markdown table of an evaluation (for model cards).
pub fn markdown(ev: &Evaluation) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Accuracy **{:.3}** over {} clips.\n",
        ev.accuracy, ev.clips
    );
    let _ = writeln!(s, "| class | accuracy | clips |\n|---|---:|---:|");
    for c in &ev.per_class {
        let _ = writeln!(s, "| {} | {:.3} | {} |", c.class, c.accuracy, c.clips);
    }
    let _ = write!(
        s,
        "\nConfusion matrix (rows: truth, columns: predicted):\n\n| |"
    );
    for l in &ev.labels {
        let _ = write!(s, " {} |", abbreviate(l));
    }
    let _ = write!(s, "\n|---|");
    for _ in &ev.labels {
        s.push_str("---:|");
    }
    for (i, row) in ev.confusion.iter().enumerate() {
        let _ = write!(s, "\n| {} |", ev.labels[i]);
        for v in row {
            let _ = write!(s, " {v} |");
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_counts_and_renders() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let ev = Evaluation::new(&labels, &[(0, 0), (0, 1), (1, 1), (1, 1)]);
        assert_eq!(ev.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert!((ev.accuracy - 0.75).abs() < 1e-6);
        assert!((ev.per_class[0].accuracy - 0.5).abs() < 1e-6);
        assert!(ev.to_text().contains("accuracy 0.750 over 4 clips"));
        assert!(markdown(&ev).contains("| b | 1.000 | 2 |"));
    }
}

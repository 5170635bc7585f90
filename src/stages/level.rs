//! Level meter: RMS and peak in dBFS per window. Cheap, and the stage a UI meter or a "is the mic
//! alive" check wants; also the highest-rate event source, which makes it the load generator for
//! back-pressure tests.

use serde::{Deserialize, Serialize};

use crate::{
    events::{EventKind, STREAM_RATE},
    pipeline::{Emitted, Stage, StageError, Window, WindowSpec},
};

/// Level meter settings (`[level]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LevelConfig {
    /// Run the level stage (off by default: it emits an event every `window_ms`).
    pub enabled: bool,
    /// Window and hop, milliseconds (10..=10000).
    pub window_ms: u32,
}

impl Default for LevelConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window_ms: 100,
        }
    }
}

impl LevelConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(10..=10_000).contains(&self.window_ms) {
            return Err("level.window_ms must be within 10..=10000".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct LevelStage {
    len: usize,
}

impl LevelStage {
    pub fn new(cfg: &LevelConfig) -> Self {
        Self {
            len: (STREAM_RATE * cfg.window_ms / 1000) as usize,
        }
    }
}

fn dbfs(x: f32) -> f32 {
    (20.0 * x.max(1e-10).log10()).max(-200.0)
}

impl Stage for LevelStage {
    fn name(&self) -> &'static str {
        "level"
    }

    fn window(&self) -> WindowSpec {
        WindowSpec {
            len: self.len,
            hop: self.len,
        }
    }

    fn process(&mut self, w: &Window<'_>, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        let (sum, peak) = w.samples.iter().fold((0f64, 0f32), |(s, p), &x| {
            (s + f64::from(x * x), p.max(x.abs()))
        });
        let rms = (sum / w.samples.len().max(1) as f64).sqrt() as f32;
        out.push((
            w.start + w.samples.len() as u64,
            EventKind::Level {
                rms_dbfs: dbfs(rms),
                peak_dbfs: dbfs(peak),
            },
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scale_sine_reads_minus_three_db_rms() {
        let mut st = LevelStage::new(&LevelConfig {
            enabled: true,
            window_ms: 100,
        });
        let samples: Vec<f32> = (0..1600)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin())
            .collect();
        let mut out = Vec::new();
        st.process(
            &Window {
                samples: &samples,
                start: 0,
            },
            &mut out,
        )
        .unwrap();
        let EventKind::Level {
            rms_dbfs,
            peak_dbfs,
        } = out[0].1
        else {
            panic!("not a level event")
        };
        assert!((rms_dbfs + 3.01).abs() < 0.05, "rms {rms_dbfs}");
        assert!(peak_dbfs.abs() < 0.01, "peak {peak_dbfs}");
        assert_eq!(out[0].0, 1600);
    }
}

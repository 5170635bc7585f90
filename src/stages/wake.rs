//! The always-on wake-word stage: one or more phrase models ([`crate::nn::wake`]) scored every
//! `step` (80 ms) over the last 1.5 s of audio, smoothed, thresholded, with a refractory period
//! -> `Wake{phrase, score, start, end}`.
//!
//! Cost is the point of this stage: the log-mel front end computes each 10 ms frame once (the
//! stage keeps a ring of the last `context` frames per model instead of re-analysing 1.5 s on
//! every step), and the network runs once per step. The runner hands the stage windows of one
//! step, back to back.
//!
//! The [`Detector`] is shared with `hark-train eval wake`, so a threshold measured offline means
//! the same thing live.

use std::{collections::BTreeMap, collections::VecDeque, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    events::{EventKind, STREAM_RATE},
    nn::wake::{FRAME, FrontEndScratch, HOP, WakeModel},
    pipeline::{Emitted, Stage, StageError, Window, WindowSpec},
    stages::asr::Enable,
};

/// `kind` of wake models in `hark-model.json`.
pub const WAKE_KIND: &str = "wake";

/// Wake-word settings (`[wake]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WakeConfig {
    /// `auto` (default): on when at least one model is found; `on`: every model is required;
    /// `off`.
    pub enabled: Enable,
    /// Models (directories, or names in the models root or the bundled `models/` directory);
    /// each detects one phrase, all run at once.
    pub models: Vec<String>,
    /// Per-phrase threshold overrides (`{ "hey jarvis" = 0.7 }`); default: the model's own
    /// operating point, chosen by the trainer.
    pub thresholds: BTreeMap<String, f32>,
    /// Seconds after a detection during which the same phrase does not fire again; default:
    /// the model's.
    pub refractory_s: Option<f32>,
}

impl Default for WakeConfig {
    fn default() -> Self {
        Self {
            enabled: Enable::Auto,
            models: vec!["hey-jarvis".into()],
            thresholds: BTreeMap::new(),
            refractory_s: None,
        }
    }
}

impl WakeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.models.len() > 16 {
            return Err("wake.models lists more than 16 models".into());
        }
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err("wake.models has an empty entry".into());
        }
        if let Some((p, _)) = self
            .thresholds
            .iter()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(format!("wake.thresholds.{p:?} must be within 0..=1"));
        }
        if self
            .refractory_s
            .is_some_and(|r| !(0.0..=30.0).contains(&r))
        {
            return Err("wake.refractory_s must be within 0..=30".into());
        }
        Ok(())
    }

    /// The directories of the configured models that exist (missing ones are skipped in `auto`
    /// mode and an error in `on` mode, see [`shared_models`]).
    pub fn model_dirs(&self) -> Vec<Result<PathBuf, String>> {
        self.models
            .iter()
            .map(|m| {
                let p = PathBuf::from(m);
                if p.join("config.json").is_file() {
                    return Ok(p);
                }
                crate::models::find(WAKE_KIND, m, None).map_err(|_| {
                    format!(
                        "no wake model {m:?} (a directory, or a name in the models root or the \
                         bundled models/ directory; train one with `hark-train wake --phrase ...`)"
                    )
                })
            })
            .collect()
    }
}

/// Registry rule: `auto` when at least one configured model exists.
pub fn enabled(cx: &super::StageContext<'_>) -> bool {
    match cx.config.wake.enabled {
        Enable::Off => false,
        Enable::On => true,
        Enable::Auto => cx.config.wake.model_dirs().iter().any(Result::is_ok),
    }
}

/// The configured models, loaded once and shared by every pipeline.
pub fn shared_models(
    cfg: &WakeConfig,
    resources: &super::StageResources,
) -> Result<Vec<Arc<WakeModel>>, String> {
    let mut out = Vec::new();
    for dir in cfg.model_dirs() {
        let dir = match (dir, cfg.enabled) {
            (Ok(d), _) => d,
            (Err(e), Enable::On) => return Err(e),
            (Err(e), _) => {
                tracing::warn!("{e}; that phrase is not listened for.");
                continue;
            }
        };
        out.push(resources.shared(&format!("wake:{}", dir.display()), || {
            let m = WakeModel::load(&dir).map_err(|e| e.to_string())?;
            tracing::info!(model = %dir.display(), phrase = %m.config.phrase, "Wake model loaded.");
            Ok::<_, String>(m)
        })?);
    }
    if out.is_empty() {
        return Err("no wake model could be loaded".into());
    }
    Ok(out)
}

/// Registry build function.
pub fn build(cx: &super::StageContext<'_>) -> Result<Box<dyn Stage>, String> {
    let models = shared_models(&cx.config.wake, cx.resources)?;
    Ok(Box::new(WakeStage::new(&cx.config.wake, models)?))
}

/// Smoothing, threshold and refractory period over one phrase's scores.
#[derive(Debug, Clone)]
pub struct Detector {
    threshold: f32,
    smoothing: usize,
    refractory: u64,
    recent: VecDeque<f32>,
    last_fire: Option<u64>,
}

impl Detector {
    /// `refractory` in samples.
    pub fn new(threshold: f32, smoothing: usize, refractory: u64) -> Self {
        Self {
            threshold,
            smoothing: smoothing.max(1),
            refractory,
            recent: VecDeque::with_capacity(smoothing.max(1)),
            last_fire: None,
        }
    }

    /// One score at stream sample `at`; returns the smoothed score when the phrase fires.
    pub fn push(&mut self, score: f32, at: u64) -> Option<f32> {
        if self.recent.len() == self.smoothing {
            self.recent.pop_front();
        }
        self.recent.push_back(score);
        let smoothed = self.recent.iter().sum::<f32>() / self.recent.len() as f32;
        let cooling = self
            .last_fire
            .is_some_and(|t| at.saturating_sub(t) < self.refractory);
        if smoothed >= self.threshold && !cooling {
            self.last_fire = Some(at);
            return Some(smoothed);
        }
        None
    }

    /// Forgets the history (a gap in the audio).
    pub fn reset(&mut self) {
        self.recent.clear();
        self.last_fire = None;
    }
}

/// Detections over a whole score sequence (scores every `step` samples, the first at
/// `first_at`): the sample positions where the phrase fired. What `hark-train eval wake` counts.
pub fn detections(
    scores: &[f32],
    first_at: u64,
    step: u64,
    threshold: f32,
    smoothing: usize,
    refractory: u64,
) -> Vec<u64> {
    let mut d = Detector::new(threshold, smoothing, refractory);
    scores
        .iter()
        .enumerate()
        .filter_map(|(i, &s)| {
            let at = first_at + i as u64 * step;
            d.push(s, at).map(|_| at)
        })
        .collect()
}

/// One phrase's streaming state.
#[derive(Debug)]
struct Phrase {
    model: Arc<WakeModel>,
    detector: Detector,
    /// The last `context` frames, oldest first, `[context][n_mels]`.
    ring: Vec<f32>,
    scratch: FrontEndScratch,
    row: Vec<f32>,
}

impl Phrase {
    fn reset_ring(&mut self) {
        self.ring.fill((1e-6f32).ln());
        self.detector.reset();
    }
}

/// The `wake` stage.
#[derive(Debug)]
pub struct WakeStage {
    phrases: Vec<Phrase>,
    /// Samples not yet framed (fewer than one frame plus one hop), and the stream position of
    /// the first of them.
    pending: Vec<f32>,
    pending_start: u64,
    /// Frames seen since the stream (or the last gap) started.
    frames: u64,
    step: usize,
}

impl WakeStage {
    pub fn new(cfg: &WakeConfig, models: Vec<Arc<WakeModel>>) -> Result<Self, String> {
        cfg.validate()?;
        let first = models.first().ok_or("no wake model")?;
        let step = first.config.step_frames;
        if models.iter().any(|m| m.config.step_frames != step) {
            return Err("wake models with different step_frames cannot run in one stage".into());
        }
        let phrases = models
            .into_iter()
            .map(|model| {
                let c = &model.config;
                let threshold = cfg
                    .thresholds
                    .get(&c.phrase)
                    .copied()
                    .unwrap_or(c.threshold);
                let refractory = cfg.refractory_s.unwrap_or(c.refractory_s);
                let mut p = Phrase {
                    detector: Detector::new(
                        threshold,
                        c.smoothing,
                        (refractory * STREAM_RATE as f32) as u64,
                    ),
                    ring: vec![0.0; c.context_frames * c.n_mels],
                    scratch: model.frontend().make_scratch(),
                    row: vec![0.0; c.n_mels],
                    model,
                };
                p.reset_ring();
                p
            })
            .collect();
        Ok(Self {
            phrases,
            pending: Vec::with_capacity(FRAME + step * HOP),
            pending_start: 0,
            frames: 0,
            step,
        })
    }

    fn reset(&mut self, at: u64) {
        self.pending.clear();
        self.pending_start = at;
        self.frames = 0;
        for p in &mut self.phrases {
            p.reset_ring();
        }
    }
}

impl Stage for WakeStage {
    fn name(&self) -> &'static str {
        "wake"
    }

    fn window(&self) -> WindowSpec {
        let n = self.step * HOP;
        WindowSpec { len: n, hop: n }
    }

    fn process(&mut self, w: &Window<'_>, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        if self.pending.is_empty() {
            self.pending_start = w.start;
        }
        self.pending.extend_from_slice(w.samples);
        while self.pending.len() >= FRAME {
            let frame_end = self.pending_start + FRAME as u64;
            for p in &mut self.phrases {
                let m = p.model.config.n_mels;
                p.model
                    .frontend()
                    .frame(&self.pending[..FRAME], &mut p.scratch, &mut p.row);
                p.ring.copy_within(m.., 0);
                let len = p.ring.len();
                p.ring[len - m..].copy_from_slice(&p.row);
            }
            self.frames += 1;
            self.pending.drain(..HOP);
            self.pending_start += HOP as u64;
            // Same schedule as `WakeModel::score_frames`: after frames 1, 1 + step, ...
            if !(self.frames - 1).is_multiple_of(self.step as u64) {
                continue;
            }
            for p in &mut self.phrases {
                let score = p
                    .model
                    .score_windows(&p.ring, 1)
                    .map_err(|e| StageError::Failed(e.to_string()))?[0];
                if let Some(s) = p.detector.push(score, frame_end) {
                    let len = (p.model.config.phrase_s * STREAM_RATE as f32) as u64;
                    out.push((
                        frame_end,
                        EventKind::Wake {
                            phrase: p.model.config.phrase.clone(),
                            score: s,
                            start_sample: frame_end.saturating_sub(len),
                            end_sample: frame_end,
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    fn discontinuity(&mut self, at: u64, _out: &mut Vec<Emitted>) {
        self.reset(at);
    }

    fn finish(&mut self, _end: u64, _out: &mut Vec<Emitted>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detector_smooths_thresholds_and_waits_out_the_refractory_period() {
        // Smoothing 2: a single spike of 0.9 next to 0.0 averages 0.45 and does not fire.
        let s = [0.0, 0.9, 0.0, 0.8, 0.9, 0.95, 0.9, 0.0, 0.0, 0.9, 0.9];
        let at = detections(&s, 0, 1280, 0.5, 2, 16_000);
        // Fires at index 4 (mean 0.85); index 10 (0.9) comes 7680 samples later, inside a
        // one-second refractory period and outside a 6400-sample one.
        assert_eq!(at, vec![4 * 1280]);
        let at = detections(&s, 0, 1280, 0.5, 2, 1280 * 5);
        assert_eq!(at, vec![4 * 1280, 10 * 1280]);
        let at = detections(&s, 0, 1280, 0.5, 1, 0);
        assert_eq!(at.len(), 7);
    }

    #[test]
    fn config_is_checked() {
        assert!(WakeConfig::default().validate().is_ok());
        let bad = WakeConfig {
            thresholds: [("hey jarvis".to_string(), 1.5)].into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("hey jarvis"));
    }
}

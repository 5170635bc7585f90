//! Sound events: the sound classifier ([`crate::nn::sound`]) over sliding windows, turned into
//! one event per occurrence.
//!
//! Each window is one classifier patch (0.975 s) and windows start every `hop_ms` (default
//! 960 ms: back to back, half the CPU of YAMNet's own 480 ms patch hop, and boundaries still
//! within half a second). Per class, an [`EventTracker`] applies hysteresis: a class turns
//! *on* when its probability reaches `on_threshold` and *off* after `release` consecutive
//! windows below `off_threshold`. The occurrence is sent when it ends, as
//! `Sound{class, p, start, end}` (p = the mean probability while on), if it lasted at least
//! `min_duration_ms`; `emit_started` adds a `SoundStarted` when it begins. A class that stays on
//! is one event, not a flood of per-window scores.
//!
//! Timing: windows overlap, so each window stands for its central `hop` of audio
//! (`[start + (len - hop) / 2, start + (len + hop) / 2)`); these spans tile the stream, and an
//! event runs from the first on-window's span start to the last on-window's span end.
//!
//! The same tracker serves the one-shot `Classify` RPC ([`classify_clip`]), so a file gives the
//! same events whether it is streamed or uploaded.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    events::{EventKind, STREAM_RATE, SoundEvent},
    nn::sound::{SoundClassifier, clip_scores},
    pipeline::{Emitted, Stage, StageError, Window, WindowSpec},
    stages::asr::Enable,
};

/// Sound-event settings (`[sound]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoundConfig {
    /// `auto` (default): on when the model is found; `on`: required; `off`.
    pub enabled: Enable,
    /// Model: a directory path, or the name of a model in the models root or the bundled
    /// `models/` directory.
    pub model: String,
    /// Time between window starts, milliseconds (100..=2000). Smaller finds boundaries more
    /// precisely and costs proportionally more CPU.
    pub hop_ms: u32,
    /// Probability at which a class turns on.
    pub on_threshold: f32,
    /// Probability under which an active class counts a window towards turning off.
    pub off_threshold: f32,
    /// Consecutive windows under `off_threshold` that end an occurrence.
    pub release: u32,
    /// Occurrences shorter than this are not reported, milliseconds.
    pub min_duration_ms: u32,
    /// Classes to report (empty: every class of the model except `ignore`).
    pub classes: Vec<String>,
    /// Classes never reported (the model's catch-all class for speech and ambience).
    pub ignore: Vec<String>,
    /// Per-class `on_threshold` overrides, e.g. `{ gun_shot = 0.4 }`.
    pub thresholds: BTreeMap<String, f32>,
    /// Also send `sound_started` when an occurrence begins.
    pub emit_started: bool,
    /// Windows that YAMNet's own AudioSet classifier calls speech count as no sound at all:
    /// without it, talking over a noisy line reads as "engine idling" or "street music".
    pub speech_gate: bool,
}

impl Default for SoundConfig {
    fn default() -> Self {
        Self {
            enabled: Enable::Auto,
            model: "sound-us8k".into(),
            hop_ms: 960,
            on_threshold: 0.6,
            off_threshold: 0.4,
            release: 1,
            min_duration_ms: 0,
            classes: Vec::new(),
            ignore: vec!["other".into()],
            thresholds: BTreeMap::new(),
            emit_started: false,
            speech_gate: true,
        }
    }
}

impl SoundConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=2000).contains(&self.hop_ms) {
            return Err("sound.hop_ms must be within 100..=2000".into());
        }
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        if !unit(self.on_threshold) || !unit(self.off_threshold) {
            return Err("sound thresholds must be within 0..=1".into());
        }
        if self.off_threshold > self.on_threshold {
            return Err("sound.off_threshold must not exceed sound.on_threshold".into());
        }
        if self.release == 0 {
            return Err("sound.release must be at least 1".into());
        }
        if let Some((c, _)) = self.thresholds.iter().find(|(_, v)| !unit(**v)) {
            return Err(format!("sound.thresholds.{c} must be within 0..=1"));
        }
        if self.model.trim().is_empty() {
            return Err("sound.model must not be empty".into());
        }
        Ok(())
    }

    /// Where the model is: an existing path as given, else a name in the model search path.
    pub fn model_dir(&self) -> Option<PathBuf> {
        let p = PathBuf::from(&self.model);
        if p.join("config.json").is_file() {
            return Some(p);
        }
        crate::models::find(SOUND_KIND, &self.model, None).ok()
    }

    /// Checks the configured class names against the model's labels.
    pub fn check_labels(&self, labels: &[String]) -> Result<(), String> {
        let unknown = self
            .classes
            .iter()
            .chain(self.thresholds.keys())
            .find(|c| !labels.contains(c));
        if let Some(c) = unknown {
            return Err(format!(
                "sound: unknown class {c:?}; the model's classes are {}",
                labels.join(", ")
            ));
        }
        Ok(())
    }
}

/// `kind` of sound models in `hark-model.json`.
pub const SOUND_KIND: &str = "sound";

/// Registry rule: `off` never, `on` always (a missing model is then a startup error naming
/// it), `auto` when the model is found.
pub fn enabled(cx: &super::StageContext<'_>) -> bool {
    match cx.config.sound.enabled {
        Enable::Off => false,
        Enable::On => true,
        Enable::Auto => cx.config.sound.model_dir().is_some(),
    }
}

/// The configured model, loaded once and shared by every pipeline and the Classify RPC.
pub fn shared_model(
    cfg: &SoundConfig,
    resources: &super::StageResources,
) -> Result<Arc<SoundClassifier>, String> {
    let dir = cfg.model_dir().ok_or_else(|| {
        format!(
            "no sound model {:?} (a directory, or a name in the models root or the bundled \
             models/ directory; train one with `hark-train sound`)",
            cfg.model
        )
    })?;
    resources.shared(&format!("sound:{}", dir.display()), || {
        let m = SoundClassifier::load(&dir).map_err(|e| e.to_string())?;
        cfg.check_labels(m.labels())?;
        tracing::info!(model = %dir.display(), classes = m.labels().len(), "Sound model loaded.");
        Ok(m)
    })
}

/// Registry build function.
pub fn build(cx: &super::StageContext<'_>) -> Result<Box<dyn Stage>, String> {
    let model = shared_model(&cx.config.sound, cx.resources)?;
    Ok(Box::new(SoundStage::new(&cx.config.sound, model)?))
}

#[derive(Debug, Clone, Copy)]
struct Active {
    start: u64,
    end: u64,
    p_sum: f32,
    windows: u32,
    below: u32,
}

/// Per-class hysteresis over window probabilities.
#[derive(Debug)]
pub struct EventTracker {
    labels: Vec<String>,
    /// Per class: reported at all, and its on threshold.
    report: Vec<Option<f32>>,
    off: f32,
    release: u32,
    min_samples: u64,
    emit_started: bool,
    active: Vec<Option<Active>>,
}

impl EventTracker {
    pub fn new(cfg: &SoundConfig, labels: &[String]) -> Self {
        let report = labels
            .iter()
            .map(|l| {
                let wanted =
                    (cfg.classes.is_empty() || cfg.classes.contains(l)) && !cfg.ignore.contains(l);
                wanted.then(|| cfg.thresholds.get(l).copied().unwrap_or(cfg.on_threshold))
            })
            .collect();
        Self {
            labels: labels.to_vec(),
            report,
            off: cfg.off_threshold,
            release: cfg.release,
            min_samples: u64::from(cfg.min_duration_ms) * u64::from(STREAM_RATE) / 1000,
            emit_started: cfg.emit_started,
            active: vec![None; labels.len()],
        }
    }

    /// One window's probabilities; `span` is the stretch of audio the window stands for.
    pub fn push(&mut self, span: (u64, u64), probs: &[f32], out: &mut Vec<Emitted>) {
        for (c, &p) in probs.iter().enumerate().take(self.labels.len()) {
            let Some(on) = self.report[c] else { continue };
            match &mut self.active[c] {
                None if p >= on => {
                    self.active[c] = Some(Active {
                        start: span.0,
                        end: span.1,
                        p_sum: p,
                        windows: 1,
                        below: 0,
                    });
                    if self.emit_started {
                        out.push((
                            span.0,
                            EventKind::SoundStarted {
                                class: self.labels[c].clone(),
                                p,
                            },
                        ));
                    }
                }
                None => {}
                Some(a) if p >= self.off => {
                    a.end = span.1;
                    a.p_sum += p;
                    a.windows += 1;
                    a.below = 0;
                }
                Some(a) => {
                    a.below += 1;
                    if a.below >= self.release {
                        self.close(c, out);
                    }
                }
            }
        }
    }

    fn close(&mut self, c: usize, out: &mut Vec<Emitted>) {
        if let Some(a) = self.active[c].take()
            && a.end - a.start >= self.min_samples
        {
            out.push((
                a.end,
                EventKind::Sound(SoundEvent {
                    class: self.labels[c].clone(),
                    p: a.p_sum / a.windows as f32,
                    start_sample: a.start,
                    end_sample: a.end,
                }),
            ));
        }
    }

    /// Ends every open occurrence (stream end or a gap in the audio).
    pub fn close_all(&mut self, out: &mut Vec<Emitted>) {
        for c in 0..self.active.len() {
            self.close(c, out);
        }
        out.sort_by_key(|(s, _)| *s);
    }
}

/// The `sound` stage.
#[derive(Debug)]
pub struct SoundStage {
    model: Arc<SoundClassifier>,
    tracker: EventTracker,
    speech_gate: bool,
    len: usize,
    hop: usize,
}

impl SoundStage {
    pub fn new(cfg: &SoundConfig, model: Arc<SoundClassifier>) -> Result<Self, String> {
        cfg.validate()?;
        cfg.check_labels(model.labels())?;
        let len = model.config.frontend.patch_samples();
        let hop = (STREAM_RATE * cfg.hop_ms / 1000) as usize;
        Ok(Self {
            tracker: EventTracker::new(cfg, model.labels()),
            speech_gate: cfg.speech_gate,
            model,
            len,
            hop: hop.min(len),
        })
    }
}

/// A speech window reports no class (every probability 0), so occurrences end and none start.
fn gate(mut probs: Vec<f32>, speech: bool) -> Vec<f32> {
    if speech {
        probs.fill(0.0);
    }
    probs
}

/// The audio a window at `start` stands for (see the module docs).
fn span(start: u64, len: usize, hop: usize) -> (u64, u64) {
    let s = start + ((len - hop) / 2) as u64;
    (s, s + hop as u64)
}

impl Stage for SoundStage {
    fn name(&self) -> &'static str {
        "sound"
    }

    fn window(&self) -> WindowSpec {
        WindowSpec {
            len: self.len,
            hop: self.hop,
        }
    }

    fn process(&mut self, w: &Window<'_>, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        let (probs, speech) = self
            .model
            .classify_speech(w.samples)
            .map_err(|e| StageError::Failed(e.to_string()))?;
        // One window is one patch; a longer window (never produced by the runner) is pooled.
        let probs = gate(
            clip_scores(&probs, self.model.labels().len()),
            self.speech_gate && speech.iter().any(|&s| s),
        );
        self.tracker
            .push(span(w.start, self.len, self.hop), &probs, out);
        Ok(())
    }

    fn discontinuity(&mut self, _at: u64, out: &mut Vec<Emitted>) {
        self.tracker.close_all(out);
    }

    fn finish(&mut self, _end: u64, out: &mut Vec<Emitted>) {
        self.tracker.close_all(out);
    }
}

/// Result of classifying a whole clip.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipResult {
    /// Every class with its clip-level probability (mean over patches), highest first.
    pub top: Vec<(String, f32)>,
    pub events: Vec<SoundEvent>,
    pub duration_s: f64,
}

/// Classifies 16 kHz mono `samples` as a whole: clip scores plus the events the stage would
/// report (windows every `hop_ms`, the same tracker).
pub fn classify_clip(
    model: &SoundClassifier,
    cfg: &SoundConfig,
    samples: &[f32],
) -> Result<ClipResult, String> {
    let len = model.config.frontend.patch_samples();
    let hop = ((STREAM_RATE * cfg.hop_ms / 1000) as usize).min(len);
    let k = model.labels().len();
    let mut tracker = EventTracker::new(cfg, model.labels());
    let mut out = Vec::new();
    let mut sums = vec![0f32; k];
    let mut n = 0usize;
    let mut start = 0usize;
    loop {
        let end = (start + len).min(samples.len());
        let (probs, speech) = model
            .classify_speech(&samples[start..end])
            .map_err(|e| e.to_string())?;
        let probs = clip_scores(&probs, k);
        // Clip scores are the classifier's own; only the events are gated.
        for (s, p) in sums.iter_mut().zip(&probs) {
            *s += p;
        }
        n += 1;
        let gated = gate(probs, cfg.speech_gate && speech.iter().any(|&s| s));
        tracker.push(span(start as u64, len, hop), &gated, &mut out);
        if start + len >= samples.len() {
            break;
        }
        start += hop;
    }
    tracker.close_all(&mut out);
    let mut top: Vec<(String, f32)> = model
        .labels()
        .iter()
        .cloned()
        .zip(sums.iter().map(|s| s / n.max(1) as f32))
        .filter(|(l, _)| !cfg.ignore.contains(l))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let events = out
        .into_iter()
        .filter_map(|(_, k)| match k {
            EventKind::Sound(e) => Some(e),
            _ => None,
        })
        .collect();
    Ok(ClipResult {
        top,
        events,
        duration_s: samples.len() as f64 / f64::from(STREAM_RATE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["siren", "dog_bark", "other"].map(String::from).to_vec()
    }

    fn run(cfg: &SoundConfig, seq: &[[f32; 3]]) -> Vec<Emitted> {
        let mut t = EventTracker::new(cfg, &labels());
        let mut out = Vec::new();
        for (i, p) in seq.iter().enumerate() {
            let s = i as u64 * 1000;
            t.push((s, s + 1000), p, &mut out);
        }
        t.close_all(&mut out);
        out
    }

    #[test]
    fn one_event_per_occurrence_with_hysteresis() {
        let cfg = SoundConfig::default();
        let seq = [
            [0.1, 0.1, 0.8],
            [0.7, 0.1, 0.2],
            [0.5, 0.2, 0.3], // above off (0.4): still on
            [0.9, 0.0, 0.1],
            [0.1, 0.1, 0.8], // off
            [0.1, 0.1, 0.8],
        ];
        let out = run(&cfg, &seq);
        assert_eq!(out.len(), 1, "{out:?}");
        let EventKind::Sound(e) = &out[0].1 else {
            panic!("{out:?}")
        };
        assert_eq!(e.class, "siren");
        assert_eq!((e.start_sample, e.end_sample), (1000, 4000));
        assert!((e.p - 0.7).abs() < 1e-6);
        assert_eq!(out[0].0, 4000);
    }

    #[test]
    fn ignored_and_filtered_classes_are_silent_and_short_ones_dropped() {
        let mut cfg = SoundConfig {
            min_duration_ms: 1500,
            ..Default::default()
        };
        // "other" is ignored by default; a one-window dog bark is shorter than 1.5 s at 16 kHz.
        let seq = [[0.0, 0.9, 0.1], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]];
        assert!(run(&cfg, &seq).is_empty());
        cfg.min_duration_ms = 0;
        cfg.classes = vec!["siren".into()];
        assert!(run(&cfg, &seq).is_empty());
        cfg.classes.clear();
        cfg.emit_started = true;
        let out = run(&cfg, &seq);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0].1, EventKind::SoundStarted { class, .. } if class == "dog_bark"));
    }

    #[test]
    fn open_occurrence_is_closed_at_stream_end_and_config_is_checked() {
        let out = run(&SoundConfig::default(), &[[0.9, 0.0, 0.1], [0.9, 0.0, 0.1]]);
        assert_eq!(out.len(), 1);
        let cfg = SoundConfig {
            thresholds: [("cat".to_string(), 0.5)].into(),
            ..Default::default()
        };
        let err = cfg.check_labels(&labels()).unwrap_err();
        assert!(err.contains("cat") && err.contains("siren"), "{err}");
        let bad = SoundConfig {
            off_threshold: 0.9,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}

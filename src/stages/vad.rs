//! Voice activity: webrtc-vad frame decisions smoothed into speech segments.
//!
//! webrtc-vad labels each 10/20/30 ms frame. Single frames flicker, so segments are formed with
//! two sliding windows: speech *starts* when at least `onset_ratio` of the frames in the last
//! `onset_ms` are voiced (the segment is dated from the first voiced frame of that window, so the
//! onset is not late by the window length), and *ends* once `hangover_ms` has passed with at most
//! `1 - offset_ratio` of frames voiced (dated just after the last voiced frame).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use webrtc_vad::{SampleRate, Vad, VadMode};

use crate::{
    events::{EventKind, STREAM_RATE},
    pipeline::{Emitted, Stage, StageError, Window, WindowSpec},
};

/// VAD settings (`[vad]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VadConfig {
    /// Run the VAD stage.
    pub enabled: bool,
    /// webrtc-vad aggressiveness, 0 (least) ..= 3 (most eager to call audio non-speech).
    pub aggressiveness: u8,
    /// Analysis frame: 10, 20 or 30 ms.
    pub frame_ms: u32,
    /// Onset window: speech starts when enough of this much recent audio is voiced.
    pub onset_ms: u32,
    /// Fraction of voiced frames in the onset window that starts speech.
    pub onset_ratio: f32,
    /// Hangover: speech ends after this much mostly unvoiced audio.
    pub hangover_ms: u32,
    /// Fraction of unvoiced frames in the hangover window that ends speech.
    pub offset_ratio: f32,
    /// Energy gate: a frame counts as voiced only if webrtc-vad says so *and* its energy
    /// (high-passed at ~150 Hz) is at least this many dB above the tracked noise floor. Rejects
    /// noise that webrtc-vad mistakes for speech and its built-in 60-90 ms overhang. 0 disables.
    pub noise_gate_db: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            aggressiveness: 3,
            frame_ms: 30,
            onset_ms: 150,
            onset_ratio: 0.8,
            hangover_ms: 450,
            offset_ratio: 0.9,
            noise_gate_db: 6.0,
        }
    }
}

/// Invalid VAD settings.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error("vad.{field}: {reason}")]
    Config { field: &'static str, reason: String },
}

impl VadConfig {
    pub fn validate(&self) -> Result<(), VadError> {
        let err = |field, reason: &str| {
            Err(VadError::Config {
                field,
                reason: reason.into(),
            })
        };
        if self.aggressiveness > 3 {
            return err("aggressiveness", "must be 0..=3");
        }
        if ![10, 20, 30].contains(&self.frame_ms) {
            return err("frame_ms", "must be 10, 20 or 30");
        }
        if self.onset_ms < self.frame_ms || self.onset_ms > 2000 {
            return err("onset_ms", "must be between frame_ms and 2000");
        }
        if self.hangover_ms < self.frame_ms || self.hangover_ms > 5000 {
            return err("hangover_ms", "must be between frame_ms and 5000");
        }
        for (field, r) in [
            ("onset_ratio", self.onset_ratio),
            ("offset_ratio", self.offset_ratio),
        ] {
            if !(r > 0.0 && r <= 1.0) {
                return err(field, "must be in (0, 1]");
            }
        }
        if !(0.0..=40.0).contains(&self.noise_gate_db) {
            return err("noise_gate_db", "must be within 0..=40");
        }
        Ok(())
    }
}

/// A speech boundary found by [`VadDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadTransition {
    Started { at: u64 },
    Ended { start: u64, at: u64 },
}

/// webrtc-vad's state is plain heap memory with no thread affinity; the crate only lacks `Send`
/// because it holds a raw pointer.
struct SendVad(Vad);
// SAFETY: libfvad keeps no thread-local or shared state; the handle is used by one thread at a
// time through `&mut`.
unsafe impl Send for SendVad {}

/// One analysed frame kept for the smoothing windows.
#[derive(Debug, Clone, Copy)]
struct Frame {
    start: u64,
    /// Voiced enough to start speech.
    on: bool,
    /// Voiced enough to keep speech going.
    sus: bool,
    /// Stands out of the noise floor: boundaries may be extended over it.
    edge: bool,
}

/// Tracks the noise floor (dB). Mode 0: a low percentile of frame energies (falls quickly towards
/// quieter frames, rises slowly through louder ones). Mode 1: minimum statistics, the minimum
/// frame energy of the last `blocks` blocks of `block_frames` frames.
#[derive(Debug, Clone)]
struct NoiseFloor {
    db: Option<f32>,
    pct: Option<f32>,
    rise: f32,
    fall: f32,
    mode: u8,
    block_frames: usize,
    in_block: usize,
    block_min: f32,
    mins: Vec<f32>,
    next: usize,
}

impl NoiseFloor {
    fn update(&mut self, e_db: f32) -> f32 {
        if self.mode == 2 {
            let pct = match self.pct {
                None => e_db,
                Some(f) if e_db > f => (f + self.rise).min(e_db),
                Some(f) => (f - self.fall).max(e_db),
            };
            self.pct = Some(pct);
            self.mode = 1;
            let m = self.update(e_db);
            self.mode = 2;
            return m.max(pct);
        }
        if self.mode == 1 {
            self.block_min = self.block_min.min(e_db);
            self.in_block += 1;
            if self.db.is_none() {
                self.mins.fill(e_db);
            }
            if self.in_block == self.block_frames {
                self.mins[self.next] = self.block_min;
                self.next = (self.next + 1) % self.mins.len();
                self.in_block = 0;
                self.block_min = f32::INFINITY;
            }
            let m = self.mins.iter().fold(self.block_min, |a, &b| a.min(b));
            self.db = Some(m);
            return m;
        }
        let floor = match self.db {
            None => e_db,
            Some(f) if e_db > f => (f + self.rise).min(e_db),
            Some(f) => (f - self.fall).max(e_db),
        };
        self.db = Some(floor);
        floor
    }
    fn reset(&mut self) {
        self.db = None;
        self.pct = None;
        self.in_block = 0;
        self.block_min = f32::INFINITY;
    }
}

/// Experiment knobs (temporary).
fn knob(name: &str, default: f32) -> f32 {
    std::env::var(format!("HARK_VAD_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Frame classifier plus segment smoothing; a pure function of the samples it is fed.
pub struct VadDetector {
    vad: SendVad,
    frame_len: usize,
    onset_frames: usize,
    onset_needed: usize,
    hang_frames: usize,
    hang_voiced_max: usize,
    gate_db: f32,
    off_db: f32,
    edge_db: f32,
    edge_mode: u8,
    floor: NoiseFloor,
    /// One-pole high-pass state (previous input, previous output).
    hp: (f32, f32),
    hp_a: f32,
    /// Recent frames, oldest first (at most `cap`).
    history: VecDeque<Frame>,
    cap: usize,
    in_speech: Option<u64>,
    pcm: Vec<i16>,
}

impl std::fmt::Debug for VadDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VadDetector")
            .field("frame_len", &self.frame_len)
            .field("in_speech", &self.in_speech)
            .finish_non_exhaustive()
    }
}

impl VadDetector {
    pub fn new(cfg: &VadConfig) -> Result<Self, VadError> {
        cfg.validate()?;
        let mode = match cfg.aggressiveness {
            0 => VadMode::Quality,
            1 => VadMode::LowBitrate,
            2 => VadMode::Aggressive,
            _ => VadMode::VeryAggressive,
        };
        let frame_len = (STREAM_RATE * cfg.frame_ms / 1000) as usize;
        let onset_frames = (cfg.onset_ms / cfg.frame_ms).max(1) as usize;
        let hang_frames = (cfg.hangover_ms / cfg.frame_ms).max(1) as usize;
        let lookback = (knob("LOOKBACK_MS", 300.0) as u32 / cfg.frame_ms) as usize;
        let frame_s = cfg.frame_ms as f32 / 1000.0;
        let cap = onset_frames.max(hang_frames) + lookback + 1;
        Ok(Self {
            vad: SendVad(Vad::new_with_rate_and_mode(SampleRate::Rate16kHz, mode)),
            frame_len,
            onset_frames,
            onset_needed: ((onset_frames as f32 * cfg.onset_ratio).ceil() as usize).max(1),
            hang_frames,
            hang_voiced_max: hang_frames
                - ((hang_frames as f32 * cfg.offset_ratio).ceil() as usize).min(hang_frames),
            gate_db: knob("GATE", cfg.noise_gate_db),
            edge_db: knob("EDGE_DB", knob("GATE", cfg.noise_gate_db) * 0.5),
            floor: NoiseFloor {
                db: None,
                pct: None,
                rise: knob("RISE", 3.0) * frame_s,
                fall: knob("FALL", 30.0) * frame_s,
                mode: knob("MODE", 1.0) as u8,
                block_frames: ((knob("BLOCK_MS", 250.0) / 1000.0 / frame_s) as usize).max(1),
                in_block: 0,
                block_min: f32::INFINITY,
                mins: vec![0.0; knob("BLOCKS", 6.0) as usize],
                next: 0,
            },
            off_db: knob("OFF_DB", knob("GATE", cfg.noise_gate_db)),
            edge_mode: knob("EDGE_MODE", 0.0) as u8,
            hp: (0.0, 0.0),
            hp_a: knob("HP_A", 0.94),
            history: VecDeque::with_capacity(cap),
            cap,
            in_speech: None,
            pcm: vec![0; frame_len],
        })
    }

    /// Samples per analysis frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    pub fn in_speech(&self) -> bool {
        self.in_speech.is_some()
    }

    /// Classifies one frame (exactly [`frame_len`](Self::frame_len) samples) starting at `start`.
    pub fn push_frame(&mut self, frame: &[f32], start: u64) -> Option<VadTransition> {
        let (mut px, mut py) = self.hp;
        let mut energy = 0f32;
        for (o, &s) in self.pcm.iter_mut().zip(frame) {
            *o = (s * 32768.0).clamp(-32768.0, 32767.0) as i16;
            py = self.hp_a * (py + s - px);
            px = s;
            energy += py * py;
        }
        self.hp = (px, py);
        let e_db = 10.0 * (energy / frame.len().max(1) as f32 + 1e-10).log10();
        let floor = self.floor.update(e_db);
        let snr_db = e_db - floor;
        let vad = self.vad.0.is_voice_segment(&self.pcm).unwrap_or(false);
        let edge_vad = self.edge_mode == 0 || vad;
        self.push(Frame {
            start,
            on: vad && snr_db >= self.gate_db,
            sus: vad && snr_db >= self.off_db,
            edge: edge_vad && snr_db >= self.edge_db,
        })
    }

    /// Smoothing on top of a raw frame decision (public so it can be tested without audio).
    pub fn push_decision(&mut self, voiced: bool, start: u64) -> Option<VadTransition> {
        // No energy information: boundaries are not extended past the voiced frames.
        self.push(Frame {
            start,
            on: voiced,
            sus: voiced,
            edge: false,
        })
    }

    fn push(&mut self, frame: Frame) -> Option<VadTransition> {
        if self.history.len() == self.cap {
            self.history.pop_front();
        }
        self.history.push_back(frame);
        let n = self.history.len();
        match self.in_speech {
            None => {
                let window = self.history.range(n.saturating_sub(self.onset_frames)..);
                if window.clone().filter(|f| f.on).count() < self.onset_needed {
                    return None;
                }
                // Date the onset from the first voiced frame of the window, extended back over
                // the frames just before it that still stand out of the noise floor.
                let first =
                    n - window.clone().len() + window.clone().position(|f| f.on).unwrap_or(0);
                let mut i = first;
                while i > 0 && self.history[i - 1].edge {
                    i -= 1;
                }
                let at = self.history[i].start;
                self.in_speech = Some(at);
                Some(VadTransition::Started { at })
            }
            Some(seg_start) => {
                if n < self.hang_frames {
                    return None;
                }
                let window = self.history.range(n - self.hang_frames..);
                if window.clone().filter(|f| f.sus).count() > self.hang_voiced_max {
                    return None;
                }
                // End just after the last voiced frame in the window, extended over the frames
                // after it that still stand out of the noise floor (or at the window start).
                let end = match window.clone().rposition(|f| f.sus) {
                    Some(p) => {
                        let mut i = n - self.hang_frames + p;
                        while i + 1 < n && self.history[i + 1].edge {
                            i += 1;
                        }
                        self.history[i].start + self.frame_len as u64
                    }
                    None => self.history[n - self.hang_frames].start,
                }
                .max(seg_start);
                self.in_speech = None;
                Some(VadTransition::Ended {
                    start: seg_start,
                    at: end,
                })
            }
        }
    }

    /// Closes an open segment at `at` (end of stream or discontinuity).
    pub fn close(&mut self, at: u64) -> Option<VadTransition> {
        self.history.clear();
        self.vad.0.reset();
        self.floor.reset();
        self.hp = (0.0, 0.0);
        self.in_speech
            .take()
            .map(|start| VadTransition::Ended { start, at })
    }
}

/// The VAD pipeline stage.
#[derive(Debug)]
pub struct VadStage {
    det: VadDetector,
}

impl VadStage {
    pub fn new(cfg: &VadConfig) -> Result<Self, VadError> {
        Ok(Self {
            det: VadDetector::new(cfg)?,
        })
    }
}

fn to_event(t: VadTransition) -> Emitted {
    match t {
        VadTransition::Started { at } => (at, EventKind::SpeechStarted),
        VadTransition::Ended { start, at } => (
            at,
            EventKind::SpeechEnded {
                start_sample: start,
            },
        ),
    }
}

impl Stage for VadStage {
    fn name(&self) -> &'static str {
        "vad"
    }

    fn window(&self) -> WindowSpec {
        WindowSpec {
            len: self.det.frame_len(),
            hop: self.det.frame_len(),
        }
    }

    fn process(&mut self, w: &Window<'_>, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        out.extend(self.det.push_frame(w.samples, w.start).map(to_event));
        Ok(())
    }

    fn discontinuity(&mut self, at: u64, out: &mut Vec<Emitted>) {
        out.extend(self.det.close(at).map(to_event));
    }

    fn finish(&mut self, end: u64, out: &mut Vec<Emitted>) {
        out.extend(self.det.close(end).map(to_event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> VadDetector {
        VadDetector::new(&VadConfig {
            frame_ms: 10,
            onset_ms: 50,
            onset_ratio: 0.6,
            hangover_ms: 100,
            offset_ratio: 0.9,
            ..VadConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn smoothing_ignores_blips_and_dates_boundaries() {
        let mut d = detector();
        let mut events = Vec::new();
        // 20 silent frames, a 1-frame blip, 10 silent, 30 voiced, 20 silent.
        let pattern: Vec<bool> = std::iter::repeat_n(false, 20)
            .chain([true])
            .chain(std::iter::repeat_n(false, 10))
            .chain(std::iter::repeat_n(true, 30))
            .chain(std::iter::repeat_n(false, 20))
            .collect();
        for (i, v) in pattern.into_iter().enumerate() {
            if let Some(t) = d.push_decision(v, i as u64 * 160) {
                events.push(t);
            }
        }
        assert_eq!(
            events,
            vec![
                VadTransition::Started { at: 31 * 160 },
                VadTransition::Ended {
                    start: 31 * 160,
                    at: 61 * 160
                }
            ]
        );
    }

    #[test]
    fn close_ends_an_open_segment() {
        let mut d = detector();
        for i in 0..10 {
            d.push_decision(true, i * 160);
        }
        assert!(d.in_speech());
        assert_eq!(
            d.close(5000),
            Some(VadTransition::Ended { start: 0, at: 5000 })
        );
        assert_eq!(d.close(6000), None);
    }

    #[test]
    fn bad_config_is_rejected() {
        for cfg in [
            VadConfig {
                aggressiveness: 4,
                ..VadConfig::default()
            },
            VadConfig {
                frame_ms: 25,
                ..VadConfig::default()
            },
            VadConfig {
                onset_ratio: 0.0,
                ..VadConfig::default()
            },
        ] {
            assert!(VadDetector::new(&cfg).is_err());
        }
    }
}

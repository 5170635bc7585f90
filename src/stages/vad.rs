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

/// Frame classifier plus segment smoothing; a pure function of the samples it is fed.
pub struct VadDetector {
    vad: SendVad,
    frame_len: usize,
    onset_frames: usize,
    onset_needed: usize,
    hang_frames: usize,
    hang_voiced_max: usize,
    /// Recent frames: (start sample, voiced).
    history: VecDeque<(u64, bool)>,
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
        Ok(Self {
            vad: SendVad(Vad::new_with_rate_and_mode(SampleRate::Rate16kHz, mode)),
            frame_len,
            onset_frames,
            onset_needed: ((onset_frames as f32 * cfg.onset_ratio).ceil() as usize).max(1),
            hang_frames,
            hang_voiced_max: hang_frames
                - ((hang_frames as f32 * cfg.offset_ratio).ceil() as usize).min(hang_frames),
            history: VecDeque::with_capacity(onset_frames.max(hang_frames) + 1),
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
        for (o, &s) in self.pcm.iter_mut().zip(frame) {
            *o = (s * 32768.0).clamp(-32768.0, 32767.0) as i16;
        }
        let voiced = self.vad.0.is_voice_segment(&self.pcm).unwrap_or(false);
        self.push_decision(voiced, start)
    }

    /// Smoothing on top of a raw frame decision (public so it can be tested without audio).
    pub fn push_decision(&mut self, voiced: bool, start: u64) -> Option<VadTransition> {
        let cap = self.onset_frames.max(self.hang_frames);
        if self.history.len() == cap {
            self.history.pop_front();
        }
        self.history.push_back((start, voiced));
        match self.in_speech {
            None => {
                let recent = self.history.iter().rev().take(self.onset_frames);
                let voiced_n = recent.clone().filter(|f| f.1).count();
                if voiced_n >= self.onset_needed {
                    let first = self
                        .history
                        .iter()
                        .rev()
                        .take(self.onset_frames)
                        .filter(|f| f.1)
                        .map(|f| f.0)
                        .min()
                        .unwrap_or(start);
                    self.in_speech = Some(first);
                    return Some(VadTransition::Started { at: first });
                }
                None
            }
            Some(seg_start) => {
                if self.history.len() < self.hang_frames {
                    return None;
                }
                let window = self.history.iter().rev().take(self.hang_frames);
                let voiced_n = window.clone().filter(|f| f.1).count();
                if voiced_n <= self.hang_voiced_max {
                    // End just after the last voiced frame in the window (or at its start).
                    let end = self
                        .history
                        .iter()
                        .rev()
                        .take(self.hang_frames)
                        .filter(|f| f.1)
                        .map(|f| f.0 + self.frame_len as u64)
                        .max()
                        .unwrap_or_else(|| {
                            self.history[self.history.len() - self.hang_frames].0
                        })
                        .max(seg_start);
                    self.in_speech = None;
                    return Some(VadTransition::Ended {
                        start: seg_start,
                        at: end,
                    });
                }
                None
            }
        }
    }

    /// Closes an open segment at `at` (end of stream or discontinuity).
    pub fn close(&mut self, at: u64) -> Option<VadTransition> {
        self.history.clear();
        self.vad.0.reset();
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
        VadTransition::Ended { start, at } => (at, EventKind::SpeechEnded { start_sample: start }),
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

//! Whisper behind the streaming stage's [`Recognizer`] interface, and the `[transcribe]` config.

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::transcribe::{HypWord, Hypothesis, Recognizer, StreamingConfig};
use super::vad::{VadConfig, VadDetector, VadTransition};
use crate::dsp::SAMPLE_RATE;
use crate::nn::NnError;
use crate::nn::whisper::{
    AudioFeed, DecodeOptions, Progress, Segment, Task, Transcription, WhisperModel,
};

/// When to run the transcription stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enable {
    /// Run it when the model is installed (log how to install it otherwise).
    Auto,
    /// Always: a missing model is a startup error.
    On,
    Off,
}

/// `[transcribe]`: Whisper transcription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscribeConfig {
    pub enabled: Enable,
    /// Model name under `models_dir` (`tiny.en`, `base`) or a path to a Whisper model directory.
    pub model: String,
    /// Where `harkd models fetch` installs models. Empty: `$HARK_MODELS`, else the platform
    /// default (`/var/lib/hark/models` for root, `~/.local/share/hark/models` for users).
    pub models_dir: String,
    /// Spoken language: empty or `auto` = English for `.en` models and detected (per
    /// utterance) for multilingual ones, never pinned to English there (Whisper then translates
    /// other languages instead of transcribing them); or a code such as `fr`.
    pub language: String,
    /// `transcribe` (default; never silently translated) or `translate` (to English).
    pub task: String,
    /// Beam size for the live stream (1 = greedy, fastest).
    pub beam_size: usize,
    /// Custom vocabulary: text that conditions decoding (names, product words).
    pub prompt: String,
    /// Words to bias every decode towards.
    pub hotwords: String,
    /// One-shot `Transcribe`: drop segments that overlap no speech found by the VAD (`[vad]`
    /// settings). Stops Whisper writing words over noise; the live stream is VAD-gated anyway.
    pub vad_gate: bool,
    pub streaming: StreamingConfig,
}

impl Default for TranscribeConfig {
    fn default() -> Self {
        Self {
            enabled: Enable::Auto,
            model: "tiny.en".into(),
            models_dir: String::new(),
            language: String::new(),
            task: "transcribe".into(),
            beam_size: 1,
            prompt: String::new(),
            hotwords: String::new(),
            vad_gate: true,
            streaming: StreamingConfig::default(),
        }
    }
}

impl TranscribeConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.streaming.validate()?;
        if !matches!(self.task.as_str(), "transcribe" | "translate") {
            return Err("transcribe.task must be transcribe or translate".into());
        }
        if !(1..=16).contains(&self.beam_size) {
            return Err("transcribe.beam_size must be within 1..=16".into());
        }
        Ok(())
    }

    /// The model directory this config names.
    pub fn model_dir(&self) -> PathBuf {
        let p = PathBuf::from(&self.model);
        if p.components().count() > 1 || p.is_dir() {
            return p;
        }
        let root = if self.models_dir.is_empty() {
            crate::models::default_models_dir()
        } else {
            PathBuf::from(&self.models_dir)
        };
        root.join(&self.model)
    }

    pub fn decode_options(&self) -> DecodeOptions {
        DecodeOptions {
            task: if self.task == "translate" {
                Task::Translate
            } else {
                Task::Transcribe
            },
            language: (!self.language.is_empty()).then(|| self.language.clone()),
            beam_size: self.beam_size,
            initial_prompt: (!self.prompt.is_empty()).then(|| self.prompt.clone()),
            hotwords: (!self.hotwords.is_empty()).then(|| self.hotwords.clone()),
            word_timestamps: true,
            ..DecodeOptions::default()
        }
    }
}

/// Splits segments into timed words: the model's word timings when it produced them, else the
/// segment's time spread over its words by length.
pub fn segment_words(seg: &Segment) -> Vec<HypWord> {
    if !seg.words.is_empty() {
        return seg
            .words
            .iter()
            .map(|w| HypWord {
                word: w.word.clone(),
                start: w.start,
                end: w.end,
                p: w.p,
            })
            .collect();
    }
    let parts: Vec<&str> = seg.text.split_whitespace().collect();
    let total: usize = parts.iter().map(|p| p.len() + 1).sum();
    let span = (seg.end - seg.start).max(0.0);
    let mut t = seg.start;
    parts
        .iter()
        .map(|p| {
            let d = span * (p.len() + 1) as f32 / total.max(1) as f32;
            let w = HypWord {
                word: format!(" {p}"),
                start: t,
                end: t + d,
                p: seg.avg_logprob.exp(),
            };
            t += d;
            w
        })
        .collect()
}

/// One Whisper model shared by every user in the daemon (the live stream, each `StreamAudio`
/// session, one-shot `Transcribe` requests): loaded on first use, then kept. Decoding takes
/// `&self` and keeps its state per call, so sharing costs no copies; a second tiny.en
/// instance would cost ~150 MB.
#[derive(Debug, Clone)]
pub struct SharedModel {
    dir: PathBuf,
    slot: Arc<Mutex<Option<Arc<WhisperModel>>>>,
}

impl SharedModel {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            slot: Arc::new(Mutex::new(None)),
        }
    }

    /// The model directory's name (`tiny.en`, ...).
    pub fn model_name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The model, loading it if this is the first use. A failed load is not cached: the next
    /// call tries again (e.g. after `harkd models fetch`).
    pub fn get(&self) -> Result<Arc<WhisperModel>, NnError> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = Arc::new(WhisperModel::load(&self.dir)?);
        *slot = Some(m.clone());
        Ok(m)
    }
}

/// Registry build function of the `transcribe` stage: the streaming policy around the shared
/// Whisper model (the registry enables it only when `resources.whisper` is set).
pub fn build_transcribe_stage(
    cx: &super::StageContext<'_>,
) -> Result<Box<dyn crate::pipeline::Stage>, String> {
    let shared = cx
        .resources
        .whisper
        .as_ref()
        .ok_or("no Whisper model configured")?;
    let model = shared.get().map_err(|e| e.to_string())?;
    let cfg = cx.config;
    let mut opts = cfg.transcribe.decode_options();
    opts.min_encode_s = Some(cfg.transcribe.streaming.min_encode_s);
    // One decode per re-decode: sampling at higher temperatures costs up to six decodes
    // (seconds behind live audio) and rarely agrees with the next re-decode anyway;
    // repetitive results are dropped by the recogniser instead.
    opts.temperatures = vec![0.0];
    let recognizer = WhisperRecognizer::new(model, opts);
    Ok(Box::new(super::transcribe::TranscribeStage::new(
        cfg.transcribe.streaming.clone(),
        &cfg.vad,
        Box::new(recognizer),
    )?))
}

/// Whisper as a streaming recogniser.
#[derive(Debug)]
pub struct WhisperRecognizer {
    model: Arc<WhisperModel>,
    opts: DecodeOptions,
}

impl WhisperRecognizer {
    pub fn new(model: Arc<WhisperModel>, opts: DecodeOptions) -> Self {
        Self { model, opts }
    }
}

impl Recognizer for WhisperRecognizer {
    fn recognize(&mut self, audio: &[f32], prompt: &str) -> Result<Hypothesis, String> {
        let prompt_tokens = if prompt.trim().is_empty() {
            Vec::new()
        } else {
            self.model
                .tokenize(&format!(" {}", prompt.trim()))
                .map_err(|e| e.to_string())?
        };
        let r = self
            .model
            .decode_window(audio, &self.opts, &prompt_tokens)
            .map_err(|e| e.to_string())?;
        Ok(Hypothesis {
            words: r.segments.iter().flat_map(segment_words).collect(),
            language: r.language,
        })
    }
}

/// Shortest input the VAD gate judges: below this the VAD's noise floor (1.5 s of minimum
/// statistics) is not established, so a clip that is nothing but a short word would be called
/// silent.
pub const VAD_GATE_MIN_S: f32 = 1.5;

/// A segment the VAD finds no speech in is still kept when Whisper is this sure of it
/// (average token log-probability at least this, no-speech probability at most
/// [`GATE_KEEP_NO_SPEECH`]). The VAD looks for voiced speech and misses whispering: a whispered
/// sentence of the held-out set decodes at -0.42 / 0.15 and was dropped whole; the stadium's
/// "Thank you." decodes at -1.66.
pub const GATE_KEEP_LOGPROB: f32 = -0.5;
/// See [`GATE_KEEP_LOGPROB`].
pub const GATE_KEEP_NO_SPEECH: f32 = 0.3;

/// Padding around VAD speech when deciding that a 30 s window holds none: the VAD's regions
/// start a little late and end a little early on soft onsets.
const SKIP_MARGIN_S: f32 = 1.0;

/// A one-shot input seen through the VAD: every sample read is also pushed through a
/// [`VadDetector`], so Whisper can skip windows that hold no speech at all (an hour of noise
/// was decoded window by window for 15 minutes only for the gate to drop it all) and segments
/// are gated as they are decoded.
struct GatedFeed<'a> {
    inner: &'a mut dyn AudioFeed,
    gate: Rc<RefCell<Gate>>,
}

/// What the VAD has heard so far (shared with the segment observer).
struct Gate {
    det: Option<VadDetector>,
    /// Samples read and not yet framed for the VAD.
    pending: Vec<f32>,
    /// Samples pushed through the VAD so far.
    seen: u64,
    regions: Vec<(u64, u64)>,
    open: Option<u64>,
    closed: bool,
}

impl Gate {
    fn push(&mut self, samples: &[f32], more: bool) {
        let Some(det) = &mut self.det else {
            return;
        };
        let n = det.frame_len();
        self.pending.extend_from_slice(samples);
        let mut transitions = Vec::new();
        let mut frames = self.pending.chunks_exact(n);
        for frame in frames.by_ref() {
            transitions.push(det.push_frame(frame, self.seen));
            self.seen += n as u64;
        }
        let rest = frames.remainder().len();
        self.pending.drain(..self.pending.len() - rest);
        if !more && !self.closed {
            self.closed = true;
            self.seen += rest as u64;
            transitions.push(det.close(self.seen));
        }
        for t in transitions {
            match t {
                Some(VadTransition::Started { at }) => self.open = Some(at),
                Some(VadTransition::Ended { start, at }) => {
                    self.open = None;
                    self.regions.push((start, at));
                }
                None => {}
            }
        }
    }

    /// The gate is on and has enough audio to judge (below [`VAD_GATE_MIN_S`] its noise floor
    /// is not established).
    fn judging(&self) -> bool {
        self.det.is_some() && self.seen as f32 >= VAD_GATE_MIN_S * SAMPLE_RATE as f32
    }

    fn overlaps(&self, start: f32, end: f32) -> bool {
        let rate = SAMPLE_RATE as f32;
        let open = self.open.map(|a| (a, self.seen));
        self.regions.iter().copied().chain(open).any(|(a, b)| {
            let (a, b) = (a as f32 / rate, b as f32 / rate);
            b.min(end) - a.max(start) > 0.0
        })
    }

    /// True when the gate keeps `s`: it overlaps VAD speech, or Whisper is sure of it
    /// ([`GATE_KEEP_LOGPROB`]).
    fn keeps(&self, s: &Segment) -> bool {
        !self.judging()
            || self.overlaps(s.start, s.end)
            || (s.avg_logprob >= GATE_KEEP_LOGPROB && s.no_speech_prob <= GATE_KEEP_NO_SPEECH)
    }
}

impl AudioFeed for GatedFeed<'_> {
    fn read(&mut self, out: &mut Vec<f32>) -> Result<bool, NnError> {
        let from = out.len();
        let more = self.inner.read(out)?;
        self.gate.borrow_mut().push(&out[from..], more);
        Ok(more)
    }

    fn should_stop(&self) -> bool {
        self.inner.should_stop()
    }

    fn may_hold_speech(&self, start: u64, end: u64) -> bool {
        let g = self.gate.borrow();
        // Only whole windows the VAD has fully heard are skipped.
        if !g.judging() || end > g.seen {
            return true;
        }
        let rate = SAMPLE_RATE as f32;
        g.overlaps(
            start as f32 / rate - SKIP_MARGIN_S,
            end as f32 / rate + SKIP_MARGIN_S,
        )
    }
}

/// Offline transcription as the `Transcribe` RPC does it: Whisper window by window over `feed`,
/// skipping windows with no VAD speech, with a VAD gate that drops segments that overlap no
/// speech unless Whisper is sure of them ([`GATE_KEEP_LOGPROB`]; `vad: None` turns both off).
/// Whisper alone, even with its no-speech rules, writes "Thank you." over a cheering stadium
/// where no one speaks; the VAD's energy gate sees no speech there. `observe` sees only the
/// segments the gate keeps, and the result holds exactly those.
pub fn transcribe_gated(
    model: &WhisperModel,
    feed: &mut dyn AudioFeed,
    opts: &DecodeOptions,
    vad: Option<&VadConfig>,
    observe: &mut dyn FnMut(Progress<'_>) -> ControlFlow<()>,
) -> Result<Transcription, NnError> {
    let det = vad
        .map(VadDetector::new)
        .transpose()
        .map_err(|e| NnError::InvalidInput(e.to_string()))?;
    let gate = Rc::new(RefCell::new(Gate {
        det,
        pending: Vec::new(),
        seen: 0,
        regions: Vec::new(),
        open: None,
        closed: false,
    }));
    let mut gated = GatedFeed {
        inner: feed,
        gate: gate.clone(),
    };
    let mut kept = Vec::new();
    let mut t = model.transcribe_stream(&mut gated, opts, &mut |p| {
        if let Progress::Segment(s) = &p {
            let keep = gate.borrow().keeps(s);
            kept.push(keep);
            if !keep {
                return ControlFlow::Continue(());
            }
        }
        observe(p)
    })?;
    let before = t.segments.len();
    let mut decisions = kept.into_iter();
    t.segments.retain(|_| decisions.next().unwrap_or(true));
    if t.segments.len() != before {
        tracing::debug!(
            dropped = before - t.segments.len(),
            "VAD gate dropped segments without speech."
        );
        t.text = t
            .segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<String>()
            .trim()
            .to_string();
    }
    Ok(t)
}

/// Whisper for one-shot requests (the `Transcribe` RPC). Admission (how many run at once, how
/// many wait) is the API's job; this only holds the shared model and the gate settings.
#[derive(Debug)]
pub struct OneShot {
    model: SharedModel,
    vad: Option<VadConfig>,
}

impl OneShot {
    /// `vad`: settings of the VAD gate ([`transcribe_gated`]), `None` for no gate.
    pub fn new(model: SharedModel, vad: Option<VadConfig>) -> Self {
        Self { model, vad }
    }

    pub fn model_name(&self) -> String {
        self.model.model_name()
    }

    /// Transcribes 16 kHz mono audio from `feed` ([`transcribe_gated`]).
    pub fn transcribe(
        &self,
        feed: &mut dyn AudioFeed,
        opts: &DecodeOptions,
        observe: &mut dyn FnMut(Progress<'_>) -> ControlFlow<()>,
    ) -> Result<Transcription, NnError> {
        let model = self.model.get()?;
        transcribe_gated(&model, feed, opts, self.vad.as_ref(), observe)
    }
}

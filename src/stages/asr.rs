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
        self.models_root().join(&self.model)
    }

    /// Where installed models (and adapters) are looked up by name.
    pub fn models_root(&self) -> PathBuf {
        if self.models_dir.is_empty() {
            crate::models::default_models_dir()
        } else {
            PathBuf::from(&self.models_dir)
        }
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
///
/// [`swap`](Self::swap) replaces it at run time (`ReloadModel`, SIGHUP): the new model is
/// loaded and checked first, outside the lock, so a broken one is refused while the old one
/// keeps serving; decodes already running finish on the model they started with (they hold an
/// `Arc`), and the streaming recogniser picks up the new one at its next window, so no audio
/// and no pending hypothesis is dropped.
#[derive(Debug, Clone)]
pub struct SharedModel {
    inner: Arc<Mutex<Slot>>,
    /// Serialises swaps (a load takes seconds; two at once would double the memory).
    swapping: Arc<Mutex<()>>,
}

#[derive(Debug)]
struct Slot {
    dir: PathBuf,
    model: Option<Arc<WhisperModel>>,
    reloads: u64,
    last_error: String,
}

/// What [`SharedModel::active`] reports.
#[derive(Debug, Clone, Default)]
pub struct ActiveModel {
    /// Directory name (`tiny.en`, an adapter's name).
    pub name: String,
    /// `bess (tiny.en + lora adapter)`, or the name; empty until first loaded.
    pub description: String,
    pub dir: PathBuf,
    pub loaded: bool,
    /// Successful swaps since start.
    pub reloads: u64,
    /// Why the last swap was refused (empty if it was not).
    pub last_error: String,
}

impl SharedModel {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Slot {
                dir,
                model: None,
                reloads: 0,
                last_error: String::new(),
            })),
            swapping: Arc::new(Mutex::new(())),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model directory's name (`tiny.en`, ...).
    pub fn model_name(&self) -> String {
        dir_name(&self.slot().dir)
    }

    /// The active model directory.
    pub fn dir(&self) -> PathBuf {
        self.slot().dir.clone()
    }

    /// The active model and the swap history.
    pub fn active(&self) -> ActiveModel {
        let s = self.slot();
        ActiveModel {
            name: dir_name(&s.dir),
            description: s
                .model
                .as_ref()
                .map(|m| m.description())
                .unwrap_or_default(),
            dir: s.dir.clone(),
            loaded: s.model.is_some(),
            reloads: s.reloads,
            last_error: s.last_error.clone(),
        }
    }

    /// The model, loading it if this is the first use. A failed load is not cached: the next
    /// call tries again (e.g. after `harkd models fetch`).
    pub fn get(&self) -> Result<Arc<WhisperModel>, NnError> {
        let mut slot = self.slot();
        if let Some(m) = slot.model.as_ref() {
            return Ok(m.clone());
        }
        let m = Arc::new(WhisperModel::load(&slot.dir)?);
        slot.model = Some(m.clone());
        Ok(m)
    }

    /// Loads the model in `dir` and makes it the active one; on error the active model stays.
    /// Returns the new model.
    pub fn swap(&self, dir: PathBuf) -> Result<Arc<WhisperModel>, NnError> {
        let _one = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = WhisperModel::load(&dir);
        let mut slot = self.slot();
        match loaded {
            Ok(m) => {
                let m = Arc::new(m);
                slot.dir = dir;
                slot.model = Some(m.clone());
                slot.reloads += 1;
                slot.last_error.clear();
                Ok(m)
            }
            Err(e) => {
                slot.last_error = e.to_string();
                Err(e)
            }
        }
    }
}

fn dir_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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
    // Loaded now so that a missing model is a startup error, not a silent stage.
    shared.get().map_err(|e| e.to_string())?;
    let cfg = cx.config;
    let mut opts = cfg.transcribe.decode_options();
    opts.min_encode_s = Some(cfg.transcribe.streaming.min_encode_s);
    // One decode per re-decode: sampling at higher temperatures costs up to six decodes
    // (seconds behind live audio) and rarely agrees with the next re-decode anyway;
    // repetitive results are dropped by the recogniser instead.
    opts.temperatures = vec![0.0];
    let recognizer = WhisperRecognizer::new(shared.clone(), opts);
    Ok(Box::new(super::transcribe::TranscribeStage::new(
        cfg.transcribe.streaming.clone(),
        &cfg.vad,
        Box::new(recognizer),
    )?))
}

/// Whisper as a streaming recogniser. It asks the shared model for the active network at
/// every window, so a swap ([`SharedModel::swap`]) takes effect at the next window.
#[derive(Debug)]
pub struct WhisperRecognizer {
    model: SharedModel,
    opts: DecodeOptions,
}

impl WhisperRecognizer {
    pub fn new(model: SharedModel, opts: DecodeOptions) -> Self {
        Self { model, opts }
    }
}

impl Recognizer for WhisperRecognizer {
    fn recognize(&mut self, audio: &[f32], prompt: &str) -> Result<Hypothesis, String> {
        let model = self.model.get().map_err(|e| e.to_string())?;
        // The prompt is text, tokenised by the model in use: a swap to a model with another
        // vocabulary (tiny.en -> base) keeps the committed context.
        let prompt_tokens = if prompt.trim().is_empty() {
            Vec::new()
        } else {
            model
                .tokenize(&format!(" {}", prompt.trim()))
                .map_err(|e| e.to_string())?
        };
        let r = model
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
/// many wait) is the API's job; this only holds the models and the gate settings.
///
/// A request may name another installed model (`hark transcribe --model bess`, to compare an
/// adapter with its base): those are loaded on demand from the models directory and the last
/// [`ALTERNATE_MODELS`] are kept.
#[derive(Debug)]
pub struct OneShot {
    model: SharedModel,
    vad: Option<VadConfig>,
    models_dir: PathBuf,
    alternates: Mutex<Vec<(PathBuf, Arc<WhisperModel>)>>,
}

/// Models other than the active one kept loaded for one-shot requests.
pub const ALTERNATE_MODELS: usize = 2;

impl OneShot {
    /// `vad`: settings of the VAD gate ([`transcribe_gated`]), `None` for no gate; named
    /// models are looked up in `models_dir`.
    pub fn new(model: SharedModel, vad: Option<VadConfig>, models_dir: PathBuf) -> Self {
        Self {
            model,
            vad,
            models_dir,
            alternates: Mutex::new(Vec::new()),
        }
    }

    pub fn model_name(&self) -> String {
        self.model.model_name()
    }

    /// The shared (streaming) model.
    pub fn shared(&self) -> &SharedModel {
        &self.model
    }

    /// The directory of the installed model called `name` (a plain name: no path).
    pub fn resolve(&self, name: &str) -> Result<PathBuf, NnError> {
        resolve_model(&self.models_dir, name)
    }

    /// The model to use for a request: the active one for an empty name or its own name, else
    /// the named installed model (loaded on first use).
    pub fn model_for(&self, name: &str) -> Result<Arc<WhisperModel>, NnError> {
        if name.is_empty() || name == self.model.model_name() {
            return self.model.get();
        }
        let dir = self.resolve(name)?;
        let mut alt = self.alternates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = alt.iter().position(|(d, _)| *d == dir) {
            let hit = alt.remove(i);
            let m = hit.1.clone();
            alt.push(hit);
            return Ok(m);
        }
        let m = Arc::new(WhisperModel::load(&dir)?);
        if alt.len() >= ALTERNATE_MODELS {
            alt.remove(0);
        }
        alt.push((dir, m.clone()));
        Ok(m)
    }

    /// Makes the installed model `name` the active one (empty: reload the active directory
    /// from disk, e.g. after retraining an adapter in place). The old model keeps serving if
    /// the new one fails to load. Returns the name of the model replaced.
    pub fn reload(&self, name: &str) -> Result<String, NnError> {
        let previous = self.model.model_name();
        let dir = if name.is_empty() {
            self.model.dir()
        } else {
            self.resolve(name)?
        };
        let m = self.model.swap(dir)?;
        tracing::info!(model = %m.description(), previous = %previous, "Whisper model swapped.");
        Ok(previous)
    }

    /// Transcribes 16 kHz mono audio from `feed` ([`transcribe_gated`]) with `model`.
    pub fn transcribe(
        &self,
        model: &WhisperModel,
        feed: &mut dyn AudioFeed,
        opts: &DecodeOptions,
        observe: &mut dyn FnMut(Progress<'_>) -> ControlFlow<()>,
    ) -> Result<Transcription, NnError> {
        transcribe_gated(model, feed, opts, self.vad.as_ref(), observe)
    }
}

/// The directory of the installed Whisper model (or adapter) `name` under `models_dir`. Names
/// are plain directory names: paths are refused, so a client cannot make the daemon read
/// arbitrary directories.
pub fn resolve_model(models_dir: &std::path::Path, name: &str) -> Result<PathBuf, NnError> {
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !plain {
        return Err(NnError::InvalidInput(format!(
            "model {:?}: give the name of an installed model (letters, digits, . - _)",
            name.chars().take(64).collect::<String>()
        )));
    }
    let dir = models_dir.join(name);
    if !dir.is_dir() {
        return Err(NnError::MissingFile { path: dir });
    }
    Ok(dir)
}

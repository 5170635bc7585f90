//! Whisper behind the streaming stage's [`Recognizer`] interface, and the `[transcribe]` config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::transcribe::{HypWord, Hypothesis, Recognizer, StreamingConfig};
use crate::nn::whisper::{DecodeOptions, Segment, Task, WhisperModel};

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
    /// Spoken language: empty = the model's default (English for `.en` models), `auto` =
    /// detect per utterance, or a code such as `fr`.
    pub language: String,
    /// `transcribe` (default; never silently translated) or `translate` (to English).
    pub task: String,
    /// Beam size for the live stream (1 = greedy, fastest).
    pub beam_size: usize,
    /// Custom vocabulary: text that conditions decoding (names, product words).
    pub prompt: String,
    /// Words to bias every decode towards.
    pub hotwords: String,
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

/// Whisper as a streaming recogniser.
#[derive(Debug)]
pub struct WhisperRecognizer {
    model: WhisperModel,
    opts: DecodeOptions,
}

impl WhisperRecognizer {
    pub fn new(model: WhisperModel, opts: DecodeOptions) -> Self {
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

/// Whisper for one-shot requests (the `Transcribe` RPC): loaded on first use, one request at a
/// time (a second request waits; both would compete for the same two cores anyway).
#[derive(Debug)]
pub struct OneShot {
    dir: PathBuf,
    model: std::sync::Mutex<Option<WhisperModel>>,
}

impl OneShot {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            model: std::sync::Mutex::new(None),
        }
    }

    pub fn model_name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Transcribes 16 kHz mono audio.
    pub fn transcribe(
        &self,
        audio: &[f32],
        opts: &DecodeOptions,
    ) -> Result<crate::nn::whisper::Transcription, crate::nn::NnError> {
        let mut guard = self.model.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(WhisperModel::load(&self.dir)?);
        }
        match guard.as_mut() {
            Some(m) => m.transcribe(audio, opts),
            None => unreachable!("model loaded above"),
        }
    }
}

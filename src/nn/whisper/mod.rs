//! Whisper speech recognition on candle: loading a converted model directory, long-form
//! transcription, single-window decoding for streaming callers, language detection and word
//! timestamps.
//!
//! ```no_run
//! use hark::nn::whisper::{DecodeOptions, WhisperModel};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut model = WhisperModel::load(std::path::Path::new("/var/lib/hark/models/tiny.en"))?;
//! let audio = vec![0.0f32; 16_000 * 5]; // 16 kHz mono
//! let t = model.transcribe(&audio, &DecodeOptions::default())?;
//! assert!(t.segments.is_empty()); // silence: no words
//! # Ok(()) }
//! ```
//!
//! # What decoding does (openai/whisper `transcribe.py` + `decoding.py`, faster-whisper)
//!
//! - **Prompt**: `[<|startofprev|> hotwords prompt..] <|startoftranscript|>`, then for
//!   multilingual models the language and task tokens. English-only models get no language or
//!   task token. Task and language are pinned: the task is `transcribe` unless
//!   [`Task::Translate`] is asked for, the language is the option's or `en`; only
//!   `Some("auto")` detects it. The model never translates on its own.
//! - **Timestamp mode** always: timestamp tokens (`<|0.00|>`.. = `<|notimestamps|>` + 1 ..) are
//!   constrained by openai's rules (pairs, non-decreasing, first one at most
//!   `max_initial_timestamp`, forced when their total probability beats every text token),
//!   mapped to times (20 ms steps) and never detokenised.
//! - **Long form**: the mel of the whole input is computed once (normalised over the whole
//!   input, as openai); a 30 s window is decoded at `seek`, segments are cut at consecutive
//!   timestamp pairs, and `seek` advances to the end of the last *complete* segment (or the
//!   last word when word timestamps are on), so a sentence cut by the window edge is decoded
//!   again whole in the next window.
//! - **Fallback**: temperatures 0, 0.2, .. 1.0 until the text is not repetitive (zlib
//!   compression ratio <= 2.4) and likely enough (average log-prob >= -1).
//! - **Prompt that ends the decode**: a prompted window that comes back with no words although
//!   its no-speech probability says speech is decoded again without the previous text (see
//!   [`WhisperModel::decode_conditioned`]).
//! - **No-speech gate**: a window whose `<|nocaptions|>` / `<|nospeech|>` probability at the
//!   first step exceeds `no_speech_threshold` *and* whose average log-prob is below
//!   `logprob_threshold` yields no segments; so does a window with a no-speech probability
//!   above [`SUSPECT_NO_SPEECH`] and an average log-prob below [`SUSPECT_LOGPROB`] (Whisper's
//!   confident hallucinations on noise, measured on our noise sets), and segments with no
//!   letter or digit are dropped.
//! - **Decoder**: our own forward with an incremental self-attention KV cache
//!   ([`model`]), cross-attention keys/values computed once per window, one-token steps through
//!   vectorised dot products ([`gemv`]), optional int8 output projection
//!   ([`LoadOptions::q8_output`]).
//! - **Int8 on AVX-512 VNNI** ([`qgemm`]): where the CPU has it, the encoder's linear layers
//!   ([`LoadOptions::q8_encoder`]), the decoder's on decode steps and the output projection run
//!   as u8 x i8 products with per-row scales, as faster-whisper's int8 mode does.

pub mod adapter;
pub mod align;
pub mod decode;
pub mod fastmath;
pub mod gemv;
pub mod model;
pub mod qgemm;
pub mod text;
pub mod tokenizer;
pub mod trainable;

use std::{
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use self::decode::{
    DecodeSetup, Decoders, DecodingResult, Fallback, Guide, Rng, TaughtWords, decode_with_fallback,
};
use self::model::{Config, CrossKv, Whisper, log_softmax, rows};
use self::tokenizer::{TIME_PRECISION, WhisperTokenizer};
use super::NnError;
use crate::dsp::{HOP, LogMel, SAMPLE_RATE};

/// Samples in one 30 s window.
pub const N_SAMPLES: usize = 30 * SAMPLE_RATE as usize;
/// Mel frames in one 30 s window.
pub const N_FRAMES: usize = N_SAMPLES / HOP;
/// No-speech probability above which a window is suspect (see `WhisperModel::is_silent`).
pub const SUSPECT_NO_SPEECH: f32 = 0.2;
/// Average log probability below which a suspect window is dropped.
pub const SUSPECT_LOGPROB: f32 = -0.6;
/// No-speech probability above which a window is more likely noise than speech: it is dropped
/// unless its text is confident (average log probability >= [`LIKELY_SILENT_LOGPROB`]).
pub const LIKELY_NO_SPEECH: f32 = 0.5;
/// See [`LIKELY_NO_SPEECH`].
pub const LIKELY_SILENT_LOGPROB: f32 = -0.4;
/// Padding after the audio when encoding less than 30 s (see `encoded_frames`).
pub const ENCODE_MARGIN_S: f32 = 2.0;
/// Mel frames per second.
const FRAMES_PER_SECOND: f32 = SAMPLE_RATE as f32 / HOP as f32;

/// What the model is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    /// Speech to text in the spoken language.
    #[default]
    Transcribe,
    /// Speech to English text (multilingual models only).
    Translate,
}

/// Decoding options (openai/whisper names; defaults as `whisper.transcribe`).
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    pub task: Task,
    /// `None`: the model's default (`en`); `Some("auto")`: detect; else a language code.
    pub language: Option<String>,
    /// 1 = greedy; > 1 = beam search at temperature 0 (and that many samples at higher ones).
    pub beam_size: usize,
    /// Fallback temperatures, tried in order.
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f32>,
    pub logprob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
    /// Text that conditions the first window (as if it had been said before).
    pub initial_prompt: Option<String>,
    /// Words to bias every window towards (faster-whisper's `hotwords`).
    pub hotwords: Option<String>,
    /// Condition each window on the text of the previous ones.
    pub condition_on_previous_text: bool,
    /// Forbid a blank or `<|endoftext|>` as the first token.
    pub suppress_blank: bool,
    /// Compute word times and confidences (cross-attention DTW).
    pub word_timestamps: bool,
    /// Latest allowed first timestamp in a window, seconds (0 = no limit).
    pub max_initial_timestamp: f32,
    /// Seconds of mel the encoder sees at least: the audio, zero-padded to this length
    /// (30 = Whisper's training setup; less is cheaper: the encoder's cost follows its input).
    /// On tiny.en, 10 s transcribed 8-11 s of speech as the full 30 s did, in half the time;
    /// shorter windows encoded without padding fell into repetition loops. `None`: the model's
    /// [`LoadOptions::pad_to_30s`] (30 s, or the audio alone).
    pub min_encode_s: Option<f32>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            task: Task::Transcribe,
            language: None,
            beam_size: 1,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            initial_prompt: None,
            hotwords: None,
            condition_on_previous_text: true,
            suppress_blank: true,
            word_timestamps: false,
            max_initial_timestamp: 1.0,
            min_encode_s: None,
        }
    }
}

/// A transcribed input.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcription {
    pub language: String,
    /// Detected language probabilities, most likely first (empty unless detected).
    pub language_probs: Vec<(String, f32)>,
    pub segments: Vec<Segment>,
    /// All segment texts, concatenated and trimmed.
    pub text: String,
}

/// A span of speech with its text.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Seconds (from the input start for `transcribe`, from the window start for
    /// `decode_window`).
    pub start: f32,
    pub end: f32,
    /// Detokenised text; like openai's, it usually starts with a space.
    pub text: String,
    /// Tokens as decoded, including this segment's timestamp tokens (ids >=
    /// `<|notimestamps|>` + 1); pass them back as `prompt` to condition the next window.
    pub tokens: Vec<u32>,
    pub avg_logprob: f32,
    pub no_speech_prob: f32,
    pub compression_ratio: f32,
    /// Temperature of the decode that produced it.
    pub temperature: f32,
    /// Filled when `word_timestamps` is on.
    pub words: Vec<Word>,
}

/// A word with its time span and confidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Word {
    /// As decoded, usually with a leading space and with attached punctuation.
    pub word: String,
    pub start: f32,
    pub end: f32,
    /// Mean probability of the word's tokens.
    pub p: f32,
}

/// Result of [`WhisperModel::decode_window`].
#[derive(Clone, Debug, PartialEq)]
pub struct WindowResult {
    pub segments: Vec<Segment>,
    pub language: String,
    pub no_speech_prob: f32,
    /// False when the last segment was cut by the window end (no closing timestamp): its end
    /// is the window end and its text may be incomplete.
    pub last_segment_complete: bool,
}

/// Load-time choices.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Quantise the 51864 x D output projection to int8 with per-row scales (a quarter of the
    /// bytes per decode step; see the bench for the accuracy check).
    pub q8_output: bool,
    /// Give the decoder's linear layers int8 copies (per-row scales) for decode steps, which
    /// read every weight once per token (and, with AVX-512 VNNI, for prompt prefill too).
    pub q8_layers: bool,
    /// Run the encoder's linear layers in int8 on CPUs with AVX-512 VNNI (ignored elsewhere).
    pub q8_encoder: bool,
    /// Encode every window padded to 30 s, as Whisper was trained (true), or only the mel
    /// frames holding audio (faster on short inputs, less accurate).
    pub pad_to_30s: bool,
    /// For an adapter: which tokens it decides, in place of its `decode_scope` (to compare the
    /// two on the same adapter). None: as the adapter says.
    pub decode_scope: Option<adapter::DecodeScope>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            q8_output: true,
            q8_layers: true,
            q8_encoder: true,
            pad_to_30s: true,
            decode_scope: None,
        }
    }
}

/// Extra settings read from `generation_config.json` (optional file).
#[derive(Debug, Default, serde::Deserialize)]
struct GenerationConfig {
    #[serde(default)]
    alignment_heads: Vec<(usize, usize)>,
    #[serde(default)]
    suppress_tokens: Vec<u32>,
    #[serde(default)]
    begin_suppress_tokens: Vec<u32>,
}

/// A loaded Whisper model: weights, tokenizer, mel plan and decoding state.
#[derive(Debug)]
pub struct WhisperModel {
    net: Whisper,
    tokenizer: WhisperTokenizer,
    mel: LogMel,
    name: String,
    /// Tokens never generated (config suppress list + decoder-control specials).
    suppress: Vec<u32>,
    /// Tokens not generated first when `suppress_blank` is on.
    begin_suppress: Vec<u32>,
    alignment_heads: Vec<(usize, usize)>,
    pad_to_30s: bool,
    /// Set when the directory was an adapter over a base model.
    adapter: Option<adapter::AdapterMeta>,
    /// The base decoder, when the adapter's decoding is scoped to its words.
    guide: Option<Guide>,
}

/// One encoded window: cross-attention keys/values for the model's decoder, and for the base
/// decoder when decoding is word-scoped and the adapter changed how they are projected.
struct Encoded {
    cross: CrossKv,
    base: Option<CrossKv>,
}

/// A segment cut from one window's tokens, times relative to the window.
#[derive(Debug, Clone)]
struct RawSegment {
    start: f32,
    end: f32,
    tokens: Vec<u32>,
}

/// How a window's tokens split into segments.
#[derive(Debug)]
struct Split {
    segments: Vec<RawSegment>,
    /// The tokens ended with a single timestamp: nothing was cut by the window end.
    complete: bool,
    /// Where the next window should start, in mel frames from this window's start.
    advance_frames: usize,
    /// Trailing tokens after the last complete segment (cut by the window end).
    tail: Option<RawSegment>,
}

/// openai's segment splitting at consecutive timestamp tokens.
fn split_segments(tokens: &[u32], tok: &WhisperTokenizer, segment_frames: usize) -> Split {
    let is_ts: Vec<bool> = tokens.iter().map(|&t| tok.is_timestamp(t)).collect();
    let n = tokens.len();
    let single_timestamp_ending = n >= 2 && !is_ts[n - 2] && is_ts[n - 1];
    let consecutive: Vec<usize> = (1..n).filter(|&i| is_ts[i - 1] && is_ts[i]).collect();
    let window_seconds = segment_frames as f32 / FRAMES_PER_SECOND;
    if !consecutive.is_empty() {
        let mut slices = consecutive.clone();
        if single_timestamp_ending {
            slices.push(n);
        }
        let mut segments = Vec::new();
        let mut last = 0;
        for &cut in &slices {
            let s = &tokens[last..cut];
            segments.push(RawSegment {
                start: tok.timestamp_seconds(s[0]),
                end: tok.timestamp_seconds(s[s.len() - 1]),
                tokens: s.to_vec(),
            });
            last = cut;
        }
        if single_timestamp_ending {
            Split {
                segments,
                complete: true,
                advance_frames: segment_frames,
                tail: None,
            }
        } else {
            // Seek to the last timestamp; what follows is decoded again in the next window.
            let last_ts = tokens[last - 1];
            let advance = ((last_ts - tok.timestamp_begin) as usize) * 2;
            let tail = (last < n).then(|| RawSegment {
                start: tok.timestamp_seconds(last_ts),
                end: window_seconds,
                tokens: tokens[last..].to_vec(),
            });
            Split {
                segments,
                complete: tail.is_none(),
                advance_frames: advance.max(1),
                tail,
            }
        }
    } else {
        // No pair: one segment for the whole window, ending at its last timestamp if any.
        let timestamps: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|&t| tok.is_timestamp(t))
            .collect();
        let mut end = window_seconds;
        if let Some(&last) = timestamps.last()
            && last != tok.timestamp_begin
        {
            end = tok.timestamp_seconds(last);
        }
        let complete = tokens.last().is_none_or(|&t| tok.is_timestamp(t));
        Split {
            segments: vec![RawSegment {
                start: 0.0,
                end,
                tokens: tokens.to_vec(),
            }],
            complete,
            advance_frames: segment_frames,
            tail: None,
        }
    }
}

impl WhisperModel {
    /// Loads a Hugging Face-format Whisper directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors`, optional `generation_config.json`) with [`LoadOptions::default`].
    pub fn load(dir: &Path) -> Result<Self, NnError> {
        Self::load_with(dir, &LoadOptions::default())
    }

    /// [`load`](Self::load) with explicit options.
    pub fn load_with(dir: &Path, opts: &LoadOptions) -> Result<Self, NnError> {
        Self::load_impl(dir, opts, false)
    }

    /// [`load_with`](Self::load_with) that also accepts an adapter that did not pass its
    /// regression gate (`allow_unready`): the trainer measures adapters before judging them.
    pub fn load_adapter(
        dir: &Path,
        opts: &LoadOptions,
        allow_unready: bool,
    ) -> Result<Self, NnError> {
        Self::load_impl(dir, opts, allow_unready)
    }

    fn load_impl(dir: &Path, opts: &LoadOptions, allow_unready: bool) -> Result<Self, NnError> {
        if !dir.is_dir() {
            return Err(NnError::MissingFile {
                path: dir.to_path_buf(),
            });
        }
        // An adapter directory (hark-train whisper-adapt) borrows config, tokenizer and
        // weights from its base model and adds its changes to the weights.
        let merged = if adapter::is_adapter_dir(dir) {
            Some(adapter::load_merged(dir, allow_unready)?)
        } else {
            None
        };
        let files_dir = merged
            .as_ref()
            .map(|m| m.base_dir.clone())
            .unwrap_or_else(|| dir.to_path_buf());
        let files_dir = files_dir.as_path();
        let config_path = files_dir.join("config.json");
        let config: Config =
            serde_json::from_slice(&read(&config_path)?).map_err(|e| NnError::InvalidFile {
                path: config_path.clone(),
                reason: format!("not a Whisper config: {e}"),
            })?;
        if config.d_model == 0
            || config.decoder_attention_heads == 0
            || config.encoder_attention_heads == 0
            || !config
                .d_model
                .is_multiple_of(config.decoder_attention_heads)
            || !config
                .d_model
                .is_multiple_of(config.encoder_attention_heads)
        {
            return Err(NnError::InvalidFile {
                path: config_path,
                reason: "d_model is not divisible by the number of attention heads".into(),
            });
        }
        let gen_path = files_dir.join("generation_config.json");
        let generation: GenerationConfig = match std::fs::read(&gen_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NnError::InvalidFile {
                path: gen_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GenerationConfig::default(),
            Err(e) => {
                return Err(NnError::Io {
                    path: gen_path,
                    source: e,
                });
            }
        };
        let multilingual = config.vocab_size >= 51865;
        let tok_path = files_dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(NnError::MissingFile { path: tok_path });
        }
        let tokenizer = WhisperTokenizer::load(&tok_path, config.vocab_size, multilingual)?;

        let weights_path = files_dir.join("model.safetensors");
        if !weights_path.exists() {
            return Err(NnError::MissingFile { path: weights_path });
        }
        let invalid = |e: candle_core::Error| NnError::InvalidFile {
            path: weights_path.clone(),
            reason: e.to_string(),
        };
        let tensors = match &merged {
            // The map's tensors are shared, not copied: the base decoder reuses them.
            Some(m) => m.tensors.clone(),
            None => candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(invalid)?,
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let mut net = Whisper::load(vb, config.clone()).map_err(invalid)?;
        if opts.q8_output {
            net.decoder.quantize_output(true)?;
        }
        if opts.q8_layers {
            net.decoder.quantize_layers(true)?;
        }
        if opts.q8_encoder {
            net.encoder.quantize_layers(true)?;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "whisper".into());
        let guide = match &merged {
            Some(m) => Self::guide(dir, m, &config, opts, &net.decoder)?,
            None => None,
        };
        let mut model = Self::from_parts(net, tokenizer, name, generation, opts)?;
        model.adapter = merged.map(|m| m.meta);
        model.guide = guide;
        Ok(model)
    }

    /// The base decoder of a word-scoped adapter: the merged weights with the tensors the
    /// adapter changed put back. The rest are shared with the adapted decoder `main`, and so
    /// are its output projection and cross-attention keys/values when the adapter leaves the
    /// embedding and those projections alone (LoRA does).
    fn guide(
        dir: &Path,
        m: &adapter::Merged,
        config: &Config,
        opts: &LoadOptions,
        main: &model::Decoder,
    ) -> Result<Option<Guide>, NnError> {
        let scope = opts.decode_scope.unwrap_or(m.meta.decode_scope);
        let words = TaughtWords::new(&m.meta.spellings, &m.meta.new_words);
        if scope != adapter::DecodeScope::Words || words.is_empty() {
            return Ok(None);
        }
        if let Some(name) = m
            .originals
            .keys()
            .find(|k| !k.starts_with("model.decoder."))
        {
            return Err(NnError::InvalidFile {
                path: dir.join(adapter::META_FILE),
                reason: format!(
                    "decoding is scoped to the adapter's words, which needs the base encoder, \
                     but the adapter changes {name}; set \"decode_scope\": \"all\""
                ),
            });
        }
        let mut tensors = m.tensors.clone();
        tensors.extend(m.originals.iter().map(|(k, t)| (k.clone(), t.clone())));
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let mut decoder = model::Decoder::load(vb.pp("model.decoder"), config)?;
        if m.originals
            .contains_key("model.decoder.embed_tokens.weight")
        {
            decoder.quantize_output(opts.q8_output)?;
        } else {
            decoder.share_output(main);
        }
        if opts.q8_layers {
            decoder.quantize_layers(true)?;
        }
        let own_cross = m
            .originals
            .keys()
            .any(|k| k.contains(".encoder_attn.k_proj.") || k.contains(".encoder_attn.v_proj."));
        Ok(Some(Guide {
            decoder,
            words,
            own_cross,
        }))
    }

    fn from_parts(
        net: Whisper,
        tokenizer: WhisperTokenizer,
        name: String,
        generation: GenerationConfig,
        opts: &LoadOptions,
    ) -> Result<Self, NnError> {
        let cfg = &net.config;
        let mut suppress: Vec<u32> = if cfg.suppress_tokens.is_empty() {
            generation.suppress_tokens.clone()
        } else {
            cfg.suppress_tokens.clone()
        };
        // openai's `_get_suppress_tokens`: the decoder-control specials are never generated.
        suppress.extend(
            [
                tokenizer.transcribe,
                tokenizer.translate,
                Some(tokenizer.sot),
                tokenizer.sot_prev,
                tokenizer.sot_lm,
                tokenizer.no_speech,
            ]
            .into_iter()
            .flatten(),
        );
        suppress.retain(|&t| (t as usize) < cfg.vocab_size);
        suppress.sort_unstable();
        suppress.dedup();
        let mut begin_suppress = if cfg.begin_suppress_tokens.is_empty() {
            generation.begin_suppress_tokens.clone()
        } else {
            cfg.begin_suppress_tokens.clone()
        };
        if begin_suppress.is_empty() {
            begin_suppress = tokenizer.encode(" ")?;
            begin_suppress.push(tokenizer.eot);
        }
        let n_layers = cfg.decoder_layers;
        let n_heads = cfg.decoder_attention_heads;
        let mut alignment_heads: Vec<(usize, usize)> = generation
            .alignment_heads
            .iter()
            .copied()
            .filter(|&(l, h)| l < n_layers && h < n_heads)
            .collect();
        if alignment_heads.is_empty() {
            // openai's default: every head of the second half of the decoder layers.
            alignment_heads = (n_layers / 2..n_layers)
                .flat_map(|l| (0..n_heads).map(move |h| (l, h)))
                .collect();
        }
        Ok(Self {
            mel: LogMel::new(cfg.num_mel_bins),
            net,
            tokenizer,
            name,
            suppress,
            begin_suppress,
            alignment_heads,
            pad_to_30s: opts.pad_to_30s,
            adapter: None,
            guide: None,
        })
    }

    /// The adapter this model was loaded with, if its directory held one.
    pub fn adapter(&self) -> Option<&adapter::AdapterMeta> {
        self.adapter.as_ref()
    }

    /// `NAME` for a plain model, `NAME (BASE + lora adapter)` for an adapter directory, with
    /// the words it is scoped to when it is.
    pub fn description(&self) -> String {
        match &self.adapter {
            Some(a) => format!(
                "{} ({} + {} adapter{})",
                self.name,
                a.base,
                match a.method {
                    adapter::Method::Lora => "lora",
                    adapter::Method::Full => "full",
                },
                match &self.guide {
                    Some(g) => format!(", scoped to {}", g.words.list().join(", ")),
                    None => String::new(),
                }
            ),
            None => self.name.clone(),
        }
    }

    /// The encoder input for `audio` (at most 30 s) as decoding builds it: the log-mel of the
    /// window (normalised as Whisper does over the zero-padded 30 s), cut to the frames encoded
    /// for a minimum of `min_s` seconds. Returns the row-major (n_mels, n) values and n.
    pub fn encoder_input(&self, audio: &[f32], min_s: f32) -> (Vec<f32>, usize) {
        let (mel, frames) = self.window_mel(audio);
        let n = Self::encoded_frames(frames, min_s);
        if n == N_FRAMES {
            return (mel, n);
        }
        let n_mels = self.net.config.num_mel_bins;
        let mut cut = vec![0f32; n_mels * n];
        for m in 0..n_mels {
            cut[m * n..(m + 1) * n].copy_from_slice(&mel[m * N_FRAMES..m * N_FRAMES + n]);
        }
        (cut, n)
    }

    /// `<|startoftranscript|> [language task]` for a transcription in `language`.
    pub fn transcript_prefix(&self, language: &str) -> Vec<u32> {
        self.sot_sequence(language, Task::Transcribe)
    }

    /// True for multilingual checkpoints (language and task tokens).
    pub fn is_multilingual(&self) -> bool {
        self.net.config.vocab_size >= 51865
    }

    /// The model directory's name (`tiny.en`, `base`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tokenizer and special-token ids.
    pub fn tokenizer(&self) -> &WhisperTokenizer {
        &self.tokenizer
    }

    /// The network (for benches and tests).
    pub fn network(&self) -> &Whisper {
        &self.net
    }

    /// Switches the int8 output projection on or off.
    pub fn set_q8_output(&mut self, on: bool) -> Result<(), NnError> {
        Ok(self.net.decoder.quantize_output(on)?)
    }

    /// Switches the encoder's int8 linear layers on or off (on needs AVX-512 VNNI).
    pub fn set_q8_encoder(&mut self, on: bool) -> Result<(), NnError> {
        Ok(self.net.encoder.quantize_layers(on)?)
    }

    /// Switches int8 copies of the decoder's linear layers (used by decode steps) on or off.
    pub fn set_q8_layers(&mut self, on: bool) -> Result<(), NnError> {
        Ok(self.net.decoder.quantize_layers(on)?)
    }

    /// Encode padded 30 s windows (true, the default) or only the frames holding audio.
    pub fn set_pad_to_30s(&mut self, on: bool) {
        self.pad_to_30s = on;
    }

    /// Text tokens of `text`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, NnError> {
        self.tokenizer.encode(text)
    }

    /// Language probabilities of the first 30 s of `audio`, most likely first. Errors on
    /// English-only models.
    pub fn detect_language(&self, audio: &[f32]) -> Result<Vec<(String, f32)>, NnError> {
        if !self.is_multilingual() {
            return Err(NnError::EnglishOnly {
                model: self.name.clone(),
                what: "it cannot detect languages".into(),
            });
        }
        let window = &audio[..audio.len().min(N_SAMPLES)];
        let (mel, frames) = self.window_mel(window);
        let enc = self.encode_window(&mel, frames, if self.pad_to_30s { 30.0 } else { 0.0 })?;
        self.language_probs(&enc.cross)
    }

    fn language_probs(&self, cross: &CrossKv) -> Result<Vec<(String, f32)>, NnError> {
        let tok = &self.tokenizer;
        let input = candle_core::Tensor::new(&[[tok.sot]], &Device::Cpu)?;
        let mut state = model::DecoderState::new(self.net.decoder.n_layers());
        let out = self.net.decoder.forward(&input, cross, &mut state, &[])?;
        let h = out.hidden.squeeze(0)?;
        let logits = rows(&self.net.decoder.logits(&h)?)?.remove(0);
        let lang_logits: Vec<f32> = tok
            .languages
            .iter()
            .map(|&(_, id)| logits[id as usize])
            .collect();
        let lp = log_softmax(&lang_logits);
        let mut probs: Vec<(String, f32)> = tok
            .languages
            .iter()
            .zip(lp)
            .map(|((code, _), l)| (code.clone(), l.exp()))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(probs)
    }

    /// Mel of a window (<= 30 s): (n_mels, N_FRAMES) zero-padded audio, and the number of
    /// frames holding audio.
    fn window_mel(&self, audio: &[f32]) -> (Vec<f32>, usize) {
        let mut padded = audio[..audio.len().min(N_SAMPLES)].to_vec();
        padded.resize(N_SAMPLES, 0.0);
        let mel = self.mel.compute(&padded);
        let frames = (audio.len().min(N_SAMPLES) / HOP).max(1);
        (mel, frames)
    }

    /// Encodes a (n_mels, N_FRAMES) window; only the first `content_frames` when not padding.
    /// Mel frames to encode for `content_frames` of audio and a minimum of `min_s` seconds.
    /// Below 30 s, the audio is always followed by at least [`ENCODE_MARGIN_S`] of padding:
    /// a window that ends mid-speech with no silence after it sent tiny.en into repetition
    /// loops (and the temperature fallback's six decodes).
    fn encoded_frames(content_frames: usize, min_s: f32) -> usize {
        let min = (min_s.max(0.0) * FRAMES_PER_SECOND) as usize;
        let margin = (ENCODE_MARGIN_S * FRAMES_PER_SECOND) as usize;
        let want = if min >= N_FRAMES {
            N_FRAMES
        } else {
            (content_frames + margin).max(min)
        };
        (want.div_ceil(2) * 2).clamp(2, N_FRAMES)
    }

    /// The minimum encoder input for `opts`, seconds.
    fn min_encode_s(&self, opts: &DecodeOptions) -> f32 {
        opts.min_encode_s
            .unwrap_or(if self.pad_to_30s { 30.0 } else { 0.0 })
    }

    fn encode_window(
        &self,
        mel: &[f32],
        content_frames: usize,
        min_s: f32,
    ) -> Result<Encoded, NnError> {
        let n_mels = self.net.config.num_mel_bins;
        let n = Self::encoded_frames(content_frames, min_s);
        let features = if n == N_FRAMES {
            self.net.encode(mel, N_FRAMES)?
        } else {
            let mut cut = vec![0f32; n_mels * n];
            for m in 0..n_mels {
                cut[m * n..(m + 1) * n].copy_from_slice(&mel[m * N_FRAMES..m * N_FRAMES + n]);
            }
            self.net.encode(&cut, n)?
        };
        Ok(Encoded {
            cross: self.net.decoder.cross_kv(&features)?,
            base: match &self.guide {
                Some(g) if g.own_cross => Some(g.decoder.cross_kv(&features)?),
                _ => None,
            },
        })
    }

    /// The language a decode with `opts` is pinned to, with the same errors as a decode
    /// (translate or a foreign language on an English-only model, unknown codes); empty when
    /// it is to be detected from audio.
    pub fn pinned_language(&self, opts: &DecodeOptions) -> Result<String, NnError> {
        if matches!(opts.language.as_deref(), None | Some("" | "auto")) && self.is_multilingual() {
            return Ok(String::new());
        }
        self.resolve_language(opts, None).map(|(code, _)| code)
    }

    /// Resolves the language: (code, probabilities if detected).
    fn resolve_language(
        &self,
        opts: &DecodeOptions,
        cross: Option<&CrossKv>,
    ) -> Result<(String, Vec<(String, f32)>), NnError> {
        if opts.task == Task::Translate && !self.is_multilingual() {
            return Err(NnError::EnglishOnly {
                model: self.name.clone(),
                what: "it cannot translate".into(),
            });
        }
        match opts.language.as_deref() {
            // English is the default only for English-only models. Pinning it on a
            // multilingual model makes Whisper *translate* other languages into English
            // (Italian came back as "Good morning to you all"): there the default is to detect.
            None | Some("") if !self.is_multilingual() => Ok(("en".into(), Vec::new())),
            Some("auto") if !self.is_multilingual() => Ok(("en".into(), vec![("en".into(), 1.0)])),
            None | Some("" | "auto") => {
                let cross = cross.ok_or_else(|| {
                    NnError::InvalidInput("language detection needs audio".into())
                })?;
                let probs = self.language_probs(cross)?;
                let code = probs
                    .first()
                    .map(|(c, _)| c.clone())
                    .unwrap_or_else(|| "en".into());
                Ok((code, probs))
            }
            Some(code) => {
                let code = code.to_ascii_lowercase();
                if self.is_multilingual() {
                    if self.tokenizer.language_token(&code).is_none() {
                        return Err(NnError::UnknownLanguage {
                            code,
                            model: self.name.clone(),
                        });
                    }
                } else if code != "en" {
                    return Err(NnError::EnglishOnly {
                        model: self.name.clone(),
                        what: format!("it cannot transcribe language {code:?}"),
                    });
                }
                Ok((code, Vec::new()))
            }
        }
    }

    /// `<|startoftranscript|> [language task]`.
    fn sot_sequence(&self, language: &str, task: Task) -> Vec<u32> {
        let tok = &self.tokenizer;
        let mut seq = vec![tok.sot];
        if self.is_multilingual() {
            if let Some(l) = tok.language_token(language) {
                seq.push(l);
            }
            let task_token = match task {
                Task::Transcribe => tok.transcribe,
                Task::Translate => tok.translate,
            };
            seq.extend(task_token);
        }
        seq
    }

    fn setup(
        &self,
        opts: &DecodeOptions,
        sot_sequence: &[u32],
        prompt: &[u32],
        hotwords: &[u32],
        max_timestamp_index: Option<u32>,
    ) -> DecodeSetup {
        let n_ctx = self.net.decoder.n_ctx();
        let half = n_ctx / 2;
        let mut initial = Vec::new();
        if (!prompt.is_empty() || !hotwords.is_empty())
            && let Some(prev) = self.tokenizer.sot_prev
        {
            initial.push(prev);
            initial.extend_from_slice(&hotwords[..hotwords.len().min(half - 1)]);
            let room = (half - 1).saturating_sub(initial.len() - 1);
            initial.extend_from_slice(&prompt[prompt.len().saturating_sub(room)..]);
        }
        let sot_index = initial.len();
        initial.extend_from_slice(sot_sequence);
        let beam_size = opts.beam_size.max(1);
        DecodeSetup {
            initial_tokens: initial,
            sot_index,
            without_timestamps: false,
            suppress: self.suppress.clone(),
            begin_suppress: if opts.suppress_blank {
                self.begin_suppress.clone()
            } else {
                Vec::new()
            },
            max_initial_timestamp_index: (opts.max_initial_timestamp > 0.0)
                .then(|| (opts.max_initial_timestamp / TIME_PRECISION).round() as u32),
            max_timestamp_index,
            sample_len: half,
            has_previous_text: false,
            beam_size,
            best_of: beam_size,
        }
    }

    fn fallback(opts: &DecodeOptions) -> Fallback {
        Fallback {
            temperatures: opts.temperatures.clone(),
            compression_ratio_threshold: opts.compression_ratio_threshold,
            logprob_threshold: opts.logprob_threshold,
            no_speech_threshold: opts.no_speech_threshold,
        }
    }

    /// Whether a window's decode is to be dropped as non-speech.
    ///
    /// openai's rule: the no-speech probability is above `no_speech_threshold` and the average
    /// log probability below `logprob_threshold`. That rule alone lets through the short,
    /// confident hallucinations Whisper produces on noise ("Thank you.", "you"): on our noise
    /// and UrbanSound8K clips they come with a no-speech probability of 0.3-0.95 and an average
    /// log probability of -0.65 to -1.7. Clean speech scored no-speech probabilities below 0.05
    /// and log probabilities above -0.62; speech mixed with babble, kitchen or machine noise at
    /// 0-10 dB SNR had either a no-speech probability <= 0.16 or a log probability >= -0.6
    /// (worst: 0.29 with -0.46); isolated spoken digits (0.2-0.6 s clips) stayed below 0.2. So a
    /// window is also dropped when its no-speech probability is above [`SUSPECT_NO_SPEECH`] and
    /// its average log probability below [`SUSPECT_LOGPROB`], or above [`LIKELY_NO_SPEECH`] with
    /// a log probability below [`LIKELY_SILENT_LOGPROB`] (a car horn read as "Bye bye." at 0.79 /
    /// -0.54, a dog bark as "Uh-huh" at 0.64 / -0.57). The rules are off when either threshold
    /// option is `None`. A loop that survived every temperature (stopped only by the token
    /// budget, over the compression-ratio threshold, or a word repeated five times: "I'm, I'm,
    /// I'm, ..." over a dog bark) is always dropped.
    ///
    /// The two stricter rules only judge windows decoded without a prompt (`prompted` false).
    /// Previous text before `<|startoftranscript|>` inflates the no-speech probability of real
    /// speech: mid-way through the long-form LJ reading, windows conditioned on the text before
    /// them scored 0.77 and 0.89 with log probabilities of -0.24 and -0.45.
    fn is_silent(r: &DecodingResult, opts: &DecodeOptions, prompted: bool) -> bool {
        let (Some(th), Some(lt)) = (opts.no_speech_threshold, opts.logprob_threshold) else {
            // openai: without a log-prob threshold, the no-speech probability alone decides.
            return opts
                .no_speech_threshold
                .is_some_and(|th| opts.logprob_threshold.is_none() && r.no_speech_prob > th);
        };
        let repetitive = opts
            .compression_ratio_threshold
            .is_some_and(|c| r.compression_ratio > c);
        if r.truncated || repetitive || decode::is_loop(&r.text) {
            // Every temperature looped: no speech to keep.
            return true;
        }
        let openai = r.no_speech_prob > th && r.avg_logprob <= lt;
        let suspect =
            r.no_speech_prob > SUSPECT_NO_SPEECH.min(th) && r.avg_logprob < SUSPECT_LOGPROB.max(lt);
        let likely_silent = r.no_speech_prob > LIKELY_NO_SPEECH.min(th)
            && r.avg_logprob < LIKELY_SILENT_LOGPROB.max(lt);
        openai || (!prompted && (suspect || likely_silent))
    }

    /// Decodes one encoded window with the temperature fallback, conditioned on `prompt` and the
    /// hotwords. `previous_text`: the prompt holds text decoded before (not only the user's
    /// `initial_prompt`, which is never dropped). Returns the result and whether the prompt was
    /// kept.
    ///
    /// A decode conditioned on previous text sometimes ends at once: the long-form reading
    /// behind 0.5 s of silence came back empty for its whole second window (no-speech
    /// probability 0.06, average log-prob -0.88, so neither the fallback nor the gate
    /// triggered) and 30 s of speech were lost: WER 10.0% against 3.2%. Such a window is
    /// decoded again without the previous text, and the unprompted result is judged by the
    /// unprompted (stricter) no-speech gate.
    #[allow(clippy::too_many_arguments)]
    fn decode_conditioned(
        &self,
        enc: &Encoded,
        opts: &DecodeOptions,
        sot_sequence: &[u32],
        prompt: &[u32],
        previous_text: bool,
        hotwords: &[u32],
        max_timestamp_index: Option<u32>,
        sample_len: usize,
        rng: &mut Rng,
        stop: &dyn Fn() -> bool,
    ) -> Result<(DecodingResult, bool), NnError> {
        let fallback = Self::fallback(opts);
        let run = |prompt: &[u32], rng: &mut Rng| {
            let mut setup = self.setup(opts, sot_sequence, prompt, hotwords, max_timestamp_index);
            setup.sample_len = setup.sample_len.min(sample_len);
            setup.has_previous_text = previous_text && !prompt.is_empty();
            let decoders = Decoders {
                net: &self.net,
                cross: &enc.cross,
                guide: self
                    .guide
                    .as_ref()
                    .map(|g| (g, enc.base.as_ref().unwrap_or(&enc.cross))),
            };
            decode_with_fallback(&decoders, &self.tokenizer, &setup, &fallback, rng, stop)
        };
        let r = run(prompt, rng)?;
        if !previous_text
            || prompt.is_empty()
            || !decode::empty_but_speech(&r, opts.no_speech_threshold)
        {
            return Ok((r, !prompt.is_empty()));
        }
        tracing::debug!(
            no_speech_prob = r.no_speech_prob,
            avg_logprob = r.avg_logprob,
            "A prompted decode came back empty; decoding again without the previous text."
        );
        let again = run(&[], rng)?;
        Ok((again, false))
    }

    fn hotword_tokens(&self, opts: &DecodeOptions) -> Result<Vec<u32>, NnError> {
        match opts.hotwords.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => self.tokenizer.encode(&format!(" {h}")),
            _ => Ok(Vec::new()),
        }
    }

    fn make_segment(
        &self,
        raw: &RawSegment,
        offset: f32,
        r: &DecodingResult,
    ) -> Result<Segment, NnError> {
        Ok(Segment {
            start: offset + raw.start,
            end: offset + raw.end,
            text: self.tokenizer.decode(&raw.tokens)?,
            tokens: raw.tokens.clone(),
            avg_logprob: r.avg_logprob,
            no_speech_prob: r.no_speech_prob,
            compression_ratio: r.compression_ratio,
            temperature: r.temperature,
            words: Vec::new(),
        })
    }

    /// Adds word timings to the segments of one window (times relative to `offset`).
    /// Returns false if alignment was impossible.
    #[allow(clippy::too_many_arguments)] // one call site; the arguments are the window's state
    fn add_words(
        &self,
        segments: &mut [Segment],
        cross: &CrossKv,
        sot_sequence: &[u32],
        content_frames: usize,
        language: &str,
        offset: f32,
        last_speech: &mut f32,
    ) -> Result<(), NnError> {
        let tok = &self.tokenizer;
        let per_segment: Vec<Vec<u32>> = segments
            .iter()
            .map(|s| s.tokens.iter().copied().filter(|&t| t < tok.eot).collect())
            .collect();
        let text_tokens: Vec<u32> = per_segment.iter().flatten().copied().collect();
        let mut timings = align::find_alignment(
            &self.net,
            tok,
            cross,
            sot_sequence,
            &text_tokens,
            content_frames,
            &self.alignment_heads,
            language,
        )?;
        if timings.is_empty() {
            return Ok(());
        }
        let median = align::tidy(&mut timings);
        let max_duration = median * 2.0;
        let mut idx = 0;
        for (seg, seg_tokens) in segments.iter_mut().zip(&per_segment) {
            let mut saved = 0;
            let mut words: Vec<Word> = Vec::new();
            while idx < timings.len() && saved < seg_tokens.len() {
                let t = &timings[idx];
                if !t.word.is_empty() {
                    words.push(Word {
                        word: t.word.clone(),
                        start: offset + t.start,
                        end: offset + t.end,
                        p: t.probability,
                    });
                }
                saved += t.tokens.len();
                idx += 1;
            }
            if let (Some(first), Some(_)) = (words.first().cloned(), words.last()) {
                // A first word after a pause is not longer than twice the median.
                if first.end - *last_speech > median * 4.0
                    && (first.end - first.start > max_duration
                        || (words.len() > 1 && words[1].end - first.start > max_duration * 2.0))
                {
                    if words.len() > 1 && words[1].end - words[1].start > max_duration {
                        let boundary = (words[1].end / 2.0).max(words[1].end - max_duration);
                        words[0].end = boundary;
                        words[1].start = boundary;
                    }
                    words[0].start = (words[0].end - max_duration).max(0.0);
                }
                // Prefer the segment's start timestamp if the first word is too long.
                if seg.start < words[0].end && seg.start - 0.5 > words[0].start {
                    words[0].start = (words[0].end - median).min(seg.start).max(0.0);
                } else {
                    seg.start = words[0].start;
                }
                let n = words.len() - 1;
                if seg.end > words[n].start && seg.end + 0.5 < words[n].end {
                    words[n].end = (words[n].start + median).max(seg.end);
                } else {
                    seg.end = words[n].end;
                }
                *last_speech = seg.end;
            }
            seg.words = words;
        }
        Ok(())
    }

    /// Decodes one window (at most 30 s of 16 kHz mono audio) in timestamp mode. Segment times
    /// are relative to the window start. `prompt` conditions the decode on previous text
    /// (e.g. the tokens of committed segments); when empty, `opts.initial_prompt` is used.
    pub fn decode_window(
        &self,
        audio: &[f32],
        opts: &DecodeOptions,
        prompt: &[u32],
    ) -> Result<WindowResult, NnError> {
        if audio.len() > N_SAMPLES {
            return Err(NnError::InvalidInput(format!(
                "a window holds at most {N_SAMPLES} samples (30 s), got {}",
                audio.len()
            )));
        }
        if audio.is_empty() {
            return Ok(WindowResult {
                segments: Vec::new(),
                language: self
                    .resolve_language(opts, None)
                    .map(|l| l.0)
                    .unwrap_or_default(),
                no_speech_prob: 1.0,
                last_segment_complete: true,
            });
        }
        let min_s = self.min_encode_s(opts);
        let (mel, frames) = self.window_mel(audio);
        let enc = self.encode_window(&mel, frames, min_s)?;
        let (language, _) = self.resolve_language(opts, Some(&enc.cross))?;
        let sot_sequence = self.sot_sequence(&language, opts.task);
        let mut prompt_tokens = prompt.to_vec();
        if prompt_tokens.is_empty()
            && let Some(p) = opts.initial_prompt.as_deref().map(str::trim)
            && !p.is_empty()
        {
            prompt_tokens = self.tokenizer.encode(&format!(" {p}"))?;
        }
        let hotwords = self.hotword_tokens(opts)?;
        let encoded = Self::encoded_frames(frames, min_s);
        let max_ts = (encoded < N_FRAMES).then_some(encoded as u32 / 2);
        let mut rng = Rng::new(0x5eed ^ audio.len() as u64);
        let (r, prompted) = self.decode_conditioned(
            &enc,
            opts,
            &sot_sequence,
            &prompt_tokens,
            !prompt.is_empty(),
            &hotwords,
            max_ts,
            token_budget(frames),
            &mut rng,
            &|| false,
        )?;
        tracing::trace!(
            avg_logprob = r.avg_logprob,
            no_speech_prob = r.no_speech_prob,
            truncated = r.truncated,
            text = %r.text,
            "Decoded window."
        );
        if Self::is_silent(&r, opts, prompted || !hotwords.is_empty()) {
            return Ok(WindowResult {
                segments: Vec::new(),
                language,
                no_speech_prob: r.no_speech_prob,
                last_segment_complete: true,
            });
        }
        let split = split_segments(&r.tokens, &self.tokenizer, frames);
        let mut segments = Vec::new();
        for raw in split.segments.iter().chain(split.tail.iter()) {
            let seg = self.make_segment(raw, 0.0, &r)?;
            if seg.start < seg.end && has_words(&seg.text) {
                segments.push(seg);
            }
        }
        let last_segment_complete = split.complete;
        if opts.word_timestamps && !segments.is_empty() {
            let mut last_speech = 0.0;
            self.add_words(
                &mut segments,
                &enc.cross,
                &sot_sequence,
                frames,
                &language,
                0.0,
                &mut last_speech,
            )?;
        }
        Ok(WindowResult {
            segments,
            language,
            no_speech_prob: r.no_speech_prob,
            last_segment_complete,
        })
    }

    /// Transcribes `audio` (16 kHz mono, any length) window by window; see the module docs.
    pub fn transcribe(
        &self,
        audio: &[f32],
        opts: &DecodeOptions,
    ) -> Result<Transcription, NnError> {
        let mut feed = SliceFeed(Some(audio));
        self.transcribe_stream(&mut feed, opts, &mut |_| ControlFlow::Continue(()))
    }

    /// As [`Self::transcribe`], pulling audio from `feed` as it goes and reporting each
    /// segment to `observe` as soon as it is decoded. Memory holds one 30 s window of audio and
    /// its mel, whatever the input's length (each window's log-mel is computed on its own,
    /// as the live transcriber does, instead of once over the whole input: the two differ only
    /// in the clamp at 80 dB below the loudest frame). `observe` returning `Break` stops the
    /// work before the next window ([`NnError::Cancelled`]).
    pub fn transcribe_stream(
        &self,
        feed: &mut dyn AudioFeed,
        opts: &DecodeOptions,
        observe: &mut dyn FnMut(Progress<'_>) -> ControlFlow<()>,
    ) -> Result<Transcription, NnError> {
        let min_s = self.min_encode_s(opts);
        let tok_hotwords = self.hotword_tokens(opts)?;
        let mut all_tokens: Vec<u32> = Vec::new();
        if let Some(p) = opts.initial_prompt.as_deref().map(str::trim)
            && !p.is_empty()
        {
            all_tokens = self.tokenizer.encode(&format!(" {p}"))?;
        }
        // The user's initial prompt; tokens after it are decoded text.
        let n_initial = all_tokens.len();
        let mut prompt_reset_since = 0;
        let mut language: Option<(String, Vec<(String, f32)>)> = None;
        let mut segments: Vec<Segment> = Vec::new();
        let mut last_speech = 0.0f32;
        let mut seek = 0usize;
        let mut rng = Rng::new(0x5eed);
        // Audio from sample `buf_start` on; everything before the current window is dropped.
        let mut buf: Vec<f32> = Vec::new();
        let mut buf_start = 0usize;
        let mut eof = false;
        let mut chunk = vec![0f32; N_SAMPLES];
        loop {
            let window_start = seek * HOP;
            if window_start > buf_start {
                let drop = (window_start - buf_start).min(buf.len());
                buf.drain(..drop);
                buf_start += drop;
            }
            while !eof && buf_start + buf.len() < window_start + N_SAMPLES {
                eof = !feed.read(&mut buf)?;
            }
            let content_frames = (buf_start + buf.len()) / HOP;
            if seek >= content_frames {
                if eof {
                    break;
                }
                continue;
            }
            let time_offset = seek as f32 / FRAMES_PER_SECOND;
            if observe(Progress::Window {
                start_s: time_offset,
            })
            .is_break()
            {
                return Err(NnError::Cancelled);
            }
            let segment_frames = N_FRAMES.min(content_frames - seek);
            let window_end = (seek + segment_frames) * HOP;
            if !feed.may_hold_speech(window_start as u64, window_end as u64) {
                tracing::trace!(seek, "Skipped a window without speech.");
                seek += segment_frames;
                continue;
            }
            let avail = &buf[window_start - buf_start..];
            let n = avail.len().min(N_SAMPLES);
            chunk[..n].copy_from_slice(&avail[..n]);
            chunk[n..].fill(0.0);
            let window = self.mel.compute(&chunk);
            let enc = self.encode_window(&window, segment_frames, min_s)?;
            if language.is_none() {
                let l = self.resolve_language(opts, Some(&enc.cross))?;
                let _ = observe(Progress::Language {
                    code: &l.0,
                    probs: &l.1,
                });
                language = Some(l);
            }
            let lang = language.as_ref().map(|l| l.0.clone()).unwrap_or_default();
            let sot_sequence = self.sot_sequence(&lang, opts.task);
            let encoded = Self::encoded_frames(segment_frames, min_s);
            let max_ts = (encoded < N_FRAMES).then_some(encoded as u32 / 2);
            let (r, kept_prompt) = self.decode_conditioned(
                &enc,
                opts,
                &sot_sequence,
                &all_tokens[prompt_reset_since..],
                all_tokens.len() > prompt_reset_since.max(n_initial),
                &tok_hotwords,
                max_ts,
                token_budget(segment_frames),
                &mut rng,
                &|| feed.should_stop(),
            )?;
            if !kept_prompt {
                // The previous text made this window come back empty (or there was none):
                // the next window is conditioned on this one's text only.
                prompt_reset_since = all_tokens.len();
            }
            tracing::trace!(
                seek,
                temperature = r.temperature,
                avg_logprob = r.avg_logprob,
                no_speech_prob = r.no_speech_prob,
                text = %r.text,
                "Decoded window."
            );
            if Self::is_silent(&r, opts, kept_prompt || !tok_hotwords.is_empty()) {
                seek += segment_frames;
                continue;
            }
            let split = split_segments(&r.tokens, &self.tokenizer, segment_frames);
            let mut current: Vec<Segment> = split
                .segments
                .iter()
                .map(|raw| self.make_segment(raw, time_offset, &r))
                .collect::<Result<_, _>>()?;
            // Seek by the timestamps alone, word timestamps or not (openai moves seek to the
            // last word's end when a window is cut; on the long-form LJ reading that lost words
            // at seams: 5.4% WER against 3.9%), so word times never change the text.
            let advance = split.advance_frames;
            current.retain(|s| s.start < s.end && has_words(&s.text));
            if opts.word_timestamps && !current.is_empty() {
                self.add_words(
                    &mut current,
                    &enc.cross,
                    &sot_sequence,
                    segment_frames,
                    &lang,
                    time_offset,
                    &mut last_speech,
                )?;
            }
            seek += advance.min(segment_frames).max(1);
            all_tokens.extend(current.iter().flat_map(|s| s.tokens.iter().copied()));
            if !opts.condition_on_previous_text || r.temperature > 0.5 {
                prompt_reset_since = all_tokens.len();
            }
            for s in &current {
                if observe(Progress::Segment(s)).is_break() {
                    return Err(NnError::Cancelled);
                }
            }
            segments.extend(current);
        }
        let (language, language_probs) = match language {
            Some(l) => l,
            // Nothing was decoded: the pinned language, or the default when it was to be
            // detected.
            None => (
                self.pinned_language(opts)
                    .ok()
                    .filter(|l| !l.is_empty())
                    .unwrap_or_else(|| "en".into()),
                Vec::new(),
            ),
        };
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<String>()
            .trim()
            .to_string();
        Ok(Transcription {
            language,
            language_probs,
            segments,
            text,
        })
    }
}

/// Where [`WhisperModel::transcribe_stream`] gets its audio.
pub trait AudioFeed {
    /// Appends the next samples (16 kHz mono) to `out`; false once the input is exhausted.
    fn read(&mut self, out: &mut Vec<f32>) -> Result<bool, NnError>;

    /// True when the caller wants the work stopped (checked between windows and between
    /// decoding attempts within a window).
    fn should_stop(&self) -> bool {
        false
    }

    /// False when samples `start..end` certainly hold no speech, so the window is skipped
    /// without running the model (a voice-activity pre-filter, as faster-whisper's
    /// `vad_filter`). Only asked about audio already read.
    fn may_hold_speech(&self, _start: u64, _end: u64) -> bool {
        true
    }
}

/// A feed over audio already in memory.
#[derive(Debug)]
pub struct SliceFeed<'a>(Option<&'a [f32]>);

impl<'a> SliceFeed<'a> {
    pub fn new(audio: &'a [f32]) -> Self {
        Self(Some(audio))
    }
}

impl AudioFeed for SliceFeed<'_> {
    fn read(&mut self, out: &mut Vec<f32>) -> Result<bool, NnError> {
        match self.0.take() {
            Some(a) => {
                out.extend_from_slice(a);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// What [`WhisperModel::transcribe_stream`] reports while it works.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A window starting at `start_s` is next (the place to stop a cancelled job).
    Window { start_s: f32 },
    /// The language, once known (detected or pinned).
    Language {
        code: &'a str,
        probs: &'a [(String, f32)],
    },
    /// A finished segment, times from the input start.
    Segment(&'a Segment),
}

/// Most tokens a window of `frames` mel frames can need: fast speech is ~4 words (~5-6 text
/// tokens plus timestamps) per second, so 8 per second plus 16 leaves room. openai allows 224
/// whatever the length; a repetition loop on a 3 s live buffer then ran for 3.7 s instead of
/// stopping at 40 tokens.
fn token_budget(frames: usize) -> usize {
    16 + 8 * frames.div_ceil(FRAMES_PER_SECOND as usize)
}

/// True if `text` has a letter or digit (a segment of only punctuation, e.g. " ...", is what
/// Whisper emits for noise, not speech).
fn has_words(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

fn read(path: &PathBuf) -> Result<Vec<u8>, NnError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NnError::MissingFile { path: path.clone() }
        } else {
            NnError::Io {
                path: path.clone(),
                source: e,
            }
        }
    })
}

#[cfg(test)]
mod tests;

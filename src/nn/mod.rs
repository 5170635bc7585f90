//! Neural models on candle (CPU): no threads of our own, no tokio, no tonic. Shared by `harkd`
//! (stages) and the tools.
//!
//! - [`whisper`]: Whisper speech recognition: model loading, long-form transcription with
//!   timestamps and temperature fallback, single-window decoding for streaming callers,
//!   language detection, word timestamps.
//! - [`sound`]: the sound-event classifier (YAMNet trunk + head, or a small CNN).
//! - [`wake`]: the wake-word CNN and its log-mel front end.
//! - [`g2p`]: neural grapheme-to-phoneme for out-of-vocabulary words (g2p_en's GRU seq2seq).
//! - [`vits`]: Piper VITS text-to-speech voices (phoneme ids to a waveform).
//! - [`basic_pitch`]: Spotify's Basic Pitch (polyphonic note, onset and contour posteriors).
//! - [`onset`]: the note-onset detector the monophonic note segmenter cuts at.
//!
//! # Threads
//!
//! candle parallelises CPU kernels itself, and reads its thread count once, at first use:
//! f32 matmuls (the `gemm` crate) run on rayon's global pool with
//! `candle_core::utils::get_num_threads()` workers — `RAYON_NUM_THREADS`, else the number of
//! *physical* cores; quantized matmuls use candle's own pool sized by `CANDLE_NUM_THREADS`, else
//! the same. On our 2-core machines both are 2 without any setting. To cap Whisper's share of
//! the CPU, set `RAYON_NUM_THREADS` (and `CANDLE_NUM_THREADS`) in the process environment before
//! the first model is loaded (e.g. in the systemd unit); [`num_threads`] reports the value in
//! force.

pub mod basic_pitch;
pub mod g2p;
pub mod onset;
pub mod sound;
pub mod vits;
pub mod wake;
pub mod whisper;

use std::path::PathBuf;

/// Errors of the neural models. Variants that concern a model directory name the file and the
/// fix.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("{path} is missing; install a model with `harkd models fetch tiny.en`")]
    MissingFile { path: PathBuf },
    #[error("{path} is invalid: {reason}; reinstall it with `harkd models fetch tiny.en`")]
    InvalidFile { path: PathBuf, reason: String },
    #[error(
        "{path}: cannot load the tokenizer: {reason}; reinstall it with `harkd models fetch tiny.en`"
    )]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model {model} is English-only: {what}")]
    EnglishOnly { model: String, what: String },
    #[error("unknown language {code:?} for model {model}")]
    UnknownLanguage { code: String, model: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("stopped: the caller cancelled or its deadline passed")]
    Cancelled,
    #[error("{path} is not a usable Piper voice: {reason}")]
    Voice { path: PathBuf, reason: String },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Number of threads candle's CPU kernels use (see the module docs).
pub fn num_threads() -> usize {
    candle_core::utils::get_num_threads()
}

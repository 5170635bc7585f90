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
//! candle parallelises CPU kernels itself, and sizes its pools once, at first use (it asks
//! for the count again on every f32 matmul: see [`prepare_process`]):
//! f32 matmuls (the `gemm` crate) run on rayon's global pool with
//! `candle_core::utils::get_num_threads()` workers — `RAYON_NUM_THREADS`, else the number of
//! *physical* cores; quantized matmuls use candle's own pool sized by `CANDLE_NUM_THREADS`, else
//! the same. On our 2-core machines both are 2 without any setting. To cap Whisper's share of
//! the CPU, set `RAYON_NUM_THREADS` (and `CANDLE_NUM_THREADS`) in the process environment before
//! the first model is loaded (e.g. in the systemd unit); [`num_threads`] reports the value in
//! force.

pub mod basic_pitch;
mod conv;
pub mod g2p;
pub mod onset;
pub mod sound;
pub mod swift_f0;
pub mod vits;
pub mod wake;
pub mod whisper;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor};

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

/// `NnError::InvalidFile` for `path`.
pub(crate) fn invalid_file(path: &Path, reason: impl std::fmt::Display) -> NnError {
    NnError::InvalidFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a small model directory (the bundled CNNs: sound, wake word, note onsets): its
/// `config.json`, checked by `validate`, and the tensors of `model.safetensors`, whose path
/// comes back for the caller's errors about them.
pub(crate) fn read_model_dir<C: serde::de::DeserializeOwned>(
    dir: &Path,
    validate: impl Fn(&C) -> Result<(), String>,
) -> Result<(C, HashMap<String, Tensor>, PathBuf), NnError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|_| NnError::MissingFile {
        path: cfg_path.clone(),
    })?;
    let config: C = serde_json::from_str(&text).map_err(|e| invalid_file(&cfg_path, e))?;
    validate(&config).map_err(|e| invalid_file(&cfg_path, e))?;
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(NnError::MissingFile { path: weights });
    }
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| invalid_file(&weights, e))?;
    Ok((config, tensors, weights))
}

/// The tensors as f32 (stored weights may be f16), for a `VarBuilder` on the CPU.
pub(crate) fn tensors_f32(
    tensors: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<HashMap<String, Tensor>, String> {
    tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()
        .map_err(|e| e.to_string())
}

/// Number of threads candle's CPU kernels use (see the module docs).
pub fn num_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Process-wide settings for running the models; `harkd`, `hark-train` and the model benches
/// call it first thing in `main` (the `hark` CLI runs no model).
///
/// - **Thread count.** candle asks for its thread count on every f32 matmul. With
///   `RAYON_NUM_THREADS` unset it counts the physical cores by reading `/proc/cpuinfo` each
///   time: 3% of a long-form transcription in `perf`. The count is taken once here and put
///   in the environment, where rayon and candle read it.
/// - **Allocator (glibc).** Whisper's encoder frees and reallocates buffers of 2-10 MB per
///   layer. Above glibc's default thresholds those are fresh `mmap`s, zeroed page by page on
///   first touch. Serving them from the heap up to 32 MB, and returning free heap to the
///   system only past 64 MB, took a two-minute transcription from 536,000 page faults to
///   95,000 (`perf stat`) for ~5 MB more peak resident memory. Two arenas, not up to 8 per
///   core: the pipeline, tokio and candle's pool would otherwise keep freed Whisper buffers
///   in many arenas at once, which held the daemon's peak resident memory up.
///
/// # Safety
///
/// Call before any other thread exists: it sets an environment variable.
pub unsafe fn prepare_process() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = num_threads();
        // SAFETY: the caller guarantees no other thread reads the environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

//! Offline training for hark's models (`hark-train`). Each task is one module; they share
//! `nn` (the models), `dsp` (the front ends the daemon serves with) and the helpers here.
//!
//! - [`data`]: data sets in standard layouts, real-noise augmentation, seeded randomness.
//! - [`sound`]: the sound-event classifier (YAMNet trunk + head, or a from-scratch CNN).
//! - [`notes`]: note transcription scored against reference notes (mir_eval's metrics).
//! - [`onset`]: the note-onset detector the monophonic note segmenter cuts at.
//! - [`whisper`]: Whisper adaptation to new words (LoRA / fine-tuning with replay and a
//!   regression gate), and WER / new-word recall of any model on a clip directory.
//! - [`report`]: accuracy, confusion matrices, PNG plots, model cards.
//!
//! Nothing here runs threads of its own or talks gRPC: training is a batch job on the CPU.

pub mod data;
pub mod notes;
pub mod onset;
pub mod report;
pub mod sound;
pub mod synth;
pub mod wake;
pub mod whisper;

use std::path::PathBuf;

/// Errors of the trainers; each names the file or setting concerned.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Notes(#[from] crate::notes::NotesError),
    #[error(transparent)]
    Nn(#[from] crate::nn::NnError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

pub(crate) fn write_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A progress bar on stderr in the trainers' style (hidden when stderr is not a terminal, so
/// logs of batch runs stay readable).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

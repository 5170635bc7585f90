//! DSP front end: pure functions, no threads, no I/O.
//!
//! - [`stft`]: reusable STFT plan ([`Stft`]) giving one-sided power spectra, with torch-style centred
//!   reflect padding; allocation-free per frame through a caller-owned [`StftScratch`].
//! - [`mel`]: Slaney mel filter bank exactly as `librosa.filters.mel` defaults ([`mel_filters`],
//!   sparse [`MelBank`]).
//! - [`logmel`]: Whisper's `log_mel_spectrogram` ([`LogMel`]), checked against a numpy float64
//!   re-implementation of openai-whisper on real speech (`tests/golden/make_logmel.py`).
//!
//! ```
//! use hark::dsp::{HOP, LogMel, SAMPLE_RATE};
//! let plan = LogMel::new(80); // build once
//! let audio = vec![0.0f32; SAMPLE_RATE as usize]; // 1 s of 16 kHz mono
//! let mel = plan.compute(&audio); // row-major [80][100]
//! assert_eq!(mel.len(), 80 * audio.len() / HOP);
//! ```

pub mod logmel;
pub mod mel;
pub mod patches;
pub mod stft;

pub use logmel::{HOP, LogMel, LogMelScratch, N_FFT, SAMPLE_RATE};
pub use mel::{FrameLogMel, FrameLogMelScratch, MelBank, hz_to_mel, mel_filters, mel_to_hz};
pub use stft::{Stft, StftScratch, hann_window};

//! Pipeline stages. Each is a [`Stage`](crate::pipeline::Stage) run on its own thread by the
//! runner; see `pipeline` for windowing and overflow handling.

pub mod asr;
pub mod level;
pub mod transcribe;
pub mod vad;

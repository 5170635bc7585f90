//! Text-to-speech front end (work in progress for the TTS issue): text normalisation, i.e.
//! written text -> the words a reader says ("$5.50" -> "five dollars and fifty cents",
//! "x^2 + 3x = 10" -> "x squared plus three x equals ten").
//!
//! Knows nothing of threads, gRPC or audio; the synthesiser and the RPC build on it.

pub mod normalize;
pub mod numbers;

pub use normalize::normalize;

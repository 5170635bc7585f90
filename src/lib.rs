//! hark: an always-on listening daemon.
//!
//! ```text
//!  source (mic | file | stdin | gRPC StreamAudio)
//!     │  real-time callback: copy into an SPSC ring, count overruns (no alloc, lock, log)
//!     ▼
//!  pump thread: down-mix, resample to 16 kHz, stamp the sample clock, fan out 10 ms frames
//!     │  one ring per stage, typed overflow policy (drop-newest / catch-up), drops counted
//!     ▼
//!  stage threads (VAD, level, ...): runner owns windowing, hop, timestamps
//!     │  publish (never blocks)
//!     ▼
//!  event bus ──► gRPC Subscribe / StreamAudio streams (slow client => Gap{missed})
//! ```
//!
//! Module dependencies point one way: `daemon -> {api, stages} -> {pipeline, events, dsp, ring,
//! audio}`. `dsp` and `ring` are leaves; `api` is the only module that sees tonic/protobuf types.

pub mod api;
pub mod audio;
pub mod config;
pub mod daemon;
pub mod dsp;
pub mod events;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod ring;
pub mod stages;
pub mod store;
pub mod telemetry;
pub mod train;

//! hark: an always-on listening daemon.
//!
//! ```text
//!  source (mic | file | stdin | gRPC StreamAudio)
//!     │  real-time callback: copy into an SPSC ring, count overruns (no alloc, lock, log)
//!     ▼
//!  pump thread: down-mix, resample to 16 kHz, stamp the sample clock, fan out 10 ms frames
//!     │  one ring per stage, typed overflow policy (drop-newest / catch-up), drops counted
//!     ▼
//!  stage threads (VAD, wake, transcribe, sound, ...; built from `stages::REGISTRY`): runner owns
//!     windowing, hop, timestamps, drops and CPU accounting
//!     │  publish (never blocks)
//!     ▼
//!  event bus ──► sinks (transcript store) run first, in the publishing thread, off the bus lock
//!     │
//!     ▼
//!  gRPC Subscribe / StreamAudio streams (slow client => Gap{missed}), NATS export (own task,
//!  on-disk spool while the server is away)
//! ```
//!
//! Module dependencies (the `use crate::` lines outside tests), higher layers first:
//!
//! ```text
//!  daemon    -> api, actions, export, stages, store, metrics, pipeline, audio, config, events
//!  fleet     -> api (the wire messages and the one-shot Transcriber), events   (harkd worker,
//!               hark batch: batch transcription on a NATS JetStream work queue)
//!  export    -> events, store (the state directory for its spool): events to NATS JetStream;
//!               the daemon hands it the API's encoder, so it sees no protobuf types
//!  actions   -> events (a bus consumer: wake + transcripts in, actions out)
//!  api       -> stages (one-shot Transcribe via stages::asr), store (Search), tts
//!               (Synthesize), export (its status counters), pipeline, audio, nn, events
//!  config    -> stages, store, actions, tts, export, pipeline, audio (their config sections),
//!               api (listen addresses)
//!  stages    -> pipeline, nn, models, dsp, events, config
//!  metrics   -> pipeline, events          telemetry -> config
//!  pipeline  -> audio, events, ring       audio     -> events, ring
//!  store     -> events                    nn        -> dsp
//!  tts       -> nn (VITS voice, neural G2P), store (the state directory for the lexicon)
//!  models    -> nn (the Piper converter writes what nn::vits loads)
//!  train     -> nn, dsp, models, stages (the wake detector), audio   (hark-train only)
//!  nn, tts, actions -> words (English number words)
//!  leaves:      events, dsp, ring, words
//! ```
//!
//! The one cycle is `config <-> stages`: the config aggregates each stage's section (defined
//! next to the stage) and takes overflow defaults from the stage registry, and the registry's
//! build functions read the whole config. `api` is the only module that sees tonic/protobuf
//! types, with one deliberate exception: `fleet` puts API messages on NATS (a batch result is
//! the `TranscribeResponse` the RPC returns), so it builds on `api` rather than converting
//! twice. `events` knows no other module.

pub mod actions;
pub mod api;
pub mod audio;
pub mod config;
pub mod daemon;
pub mod dsp;
pub mod events;
pub mod export;
pub mod fleet;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod notes;
pub mod pipeline;
pub mod ring;
pub mod stages;
pub mod store;
pub mod telemetry;
pub mod train;
pub mod tts;
pub mod words;

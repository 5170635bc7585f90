//! The streaming core: pump + per-stage runners.
//!
//! ```text
//! source thread ──segments──► pump thread ──Frame──► one ring per stage ──► runner thread (Stage)
//!                             (down-mix, resample,                          (window, hop, drops,
//!                              16 kHz clock, fan-out)                        timestamps, publish)
//! ```
//! The pump stamps audio with the stream clock in fixed 10 ms [`Frame`]s; runners rebuild windows
//! from frames, so a gap in frame positions is how a stage learns that audio was dropped for it.

mod pump;
mod runner;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Instant, SystemTime},
};

pub use pump::{FanOut, Framer, Pump};
pub use runner::{StageStats, run_stage};

use crate::audio::file::panic_text;
use crate::{
    audio::{Reporter, Source, SourceContext},
    events::{EventBus, EventKind},
    ring::{RingConsumer, RingStats, ring},
};

/// Samples per frame: 10 ms at 16 kHz.
pub const FRAME: usize = 160;

/// 10 ms of 16 kHz mono audio and its position on the stream clock.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub start: u64,
    pub samples: [f32; FRAME],
}

/// Window length and hop, in samples at 16 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub len: usize,
    pub hop: usize,
}

/// A window handed to a stage.
#[derive(Debug)]
pub struct Window<'a> {
    pub samples: &'a [f32],
    /// Stream position of `samples[0]`.
    pub start: u64,
}

/// Event a stage emits: stream position and what happened.
pub type Emitted = (u64, EventKind);

/// Errors a stage may report; the runner logs and counts them and keeps going.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Failed(String),
}

/// A consumer of the audio stream. The runner owns windowing, timestamps and drops, so a stage is
/// close to a pure function from a window to events.
pub trait Stage: Send + 'static {
    fn name(&self) -> &'static str;
    fn window(&self) -> WindowSpec;
    fn process(&mut self, window: &Window<'_>, out: &mut Vec<Emitted>) -> Result<(), StageError>;
    /// Audio before `at` was dropped for this stage: forget partial state (emit what must be
    /// closed, e.g. an open speech segment).
    fn discontinuity(&mut self, _at: u64, _out: &mut Vec<Emitted>) {}
    /// The stream ended at `end`: emit whatever is still open.
    fn finish(&mut self, _end: u64, _out: &mut Vec<Emitted>) {}
}

/// What a stage does when it falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum OverflowPolicy {
    /// The pump drops new audio for this stage while its ring is full.
    DropNewest,
    /// The stage skips the oldest audio when more than `max_lag_ms` is waiting, so it always works
    /// on recent audio (what a live detector wants).
    CatchUp { max_lag_ms: u32 },
}

impl OverflowPolicy {
    pub fn describe(&self) -> String {
        match self {
            OverflowPolicy::DropNewest => "drop-newest".into(),
            OverflowPolicy::CatchUp { max_lag_ms } => format!("catch-up({max_lag_ms} ms)"),
        }
    }
}

/// A stage plus how it is to be run.
pub struct StageSpec {
    pub stage: Box<dyn Stage>,
    pub policy: OverflowPolicy,
    /// Ring capacity in milliseconds of audio.
    pub ring_ms: u32,
}

impl std::fmt::Debug for StageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSpec")
            .field("stage", &self.stage.name())
            .field("policy", &self.policy)
            .field("ring_ms", &self.ring_ms)
            .finish()
    }
}

/// Live counters of a pipeline, shared with status and metrics.
#[derive(Debug)]
pub struct PipelineStats {
    pub stream: Arc<str>,
    pub source: String,
    pub device: Option<String>,
    pub started: Instant,
    pub stream_start: SystemTime,
    /// Samples produced on the 16 kHz clock.
    pub clock: Arc<AtomicU64>,
    /// Input samples lost at capture because the input ring was full.
    pub xruns: Arc<AtomicU64>,
    /// Milliseconds since `started` at the pump's last loop: a liveness signal for the watchdog.
    pub heartbeat_ms: AtomicU64,
    pub source_healthy: Arc<AtomicBool>,
    /// True while the current segment is offline (fast file, stdin, gRPC push): no stage may
    /// drop audio then, so catch-up is suspended and the pump waits for room instead.
    pub lossless: Arc<AtomicBool>,
    /// Set once the pump, every stage and the source have finished.
    pub finished: AtomicBool,
    /// Why the source ended, set by the source thread before it lets go of the pump.
    pub end_reason: std::sync::Mutex<Option<String>>,
    /// Set when a pipeline thread panicked: the pipeline is dead and the daemon must not look
    /// healthy (it exits non-zero for the main pipeline; systemd restarts it).
    pub failed: std::sync::Mutex<Option<String>>,
    /// Captured samples that were NaN or infinite (replaced by silence before conversion).
    pub nonfinite_samples: Arc<AtomicU64>,
    pub stages: Vec<Arc<StageStats>>,
}

impl PipelineStats {
    /// Records that a thread of this pipeline died (the first reason is kept).
    pub fn fail(&self, why: &str) {
        tracing::error!(stream = %self.stream, reason = why, "Pipeline failed.");
        self.source_healthy.store(false, Ordering::Relaxed);
        if let Ok(mut f) = self.failed.lock()
            && f.is_none()
        {
            *f = Some(why.to_string());
        }
    }

    /// Why the pipeline failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// True once every stage has processed at least one window.
    pub fn all_stages_flowing(&self) -> bool {
        self.stages
            .iter()
            .all(|s| s.windows.load(Ordering::Relaxed) > 0)
    }
}

/// Pipeline parameters that are not per stage.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub stream: Arc<str>,
    /// Input ring size per segment, seconds of source audio.
    pub input_ring_s: f32,
}

/// A running pipeline: source, pump and stage threads.
#[derive(Debug)]
pub struct Pipeline {
    pub stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts `source` feeding `stages`; events go to `bus`.
    pub fn start(
        source: Box<dyn Source>,
        stages: Vec<StageSpec>,
        bus: EventBus,
        opts: PipelineOptions,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stream_start = SystemTime::now();
        let clock = Arc::new(AtomicU64::new(0));
        let xruns = Arc::new(AtomicU64::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let lossless = Arc::new(AtomicBool::new(false));
        let mut fanout = Vec::new();
        let mut stage_stats = Vec::new();
        let mut consumers: Vec<(StageSpec, RingConsumer<Frame>, Arc<StageStats>)> = Vec::new();
        for spec in stages {
            let frames = (spec.ring_ms as usize / 10).max(8);
            let (p, c) = ring::<Frame>(frames);
            let stats = Arc::new(StageStats::new(
                spec.stage.name(),
                spec.policy,
                frames * FRAME,
                p.stats().clone(),
            ));
            fanout.push((p, spec.policy));
            stage_stats.push(stats.clone());
            consumers.push((spec, c, stats));
        }
        let stats = Arc::new(PipelineStats {
            stream: opts.stream.clone(),
            source: source.describe(),
            device: source.device_name(),
            started: Instant::now(),
            stream_start,
            clock: clock.clone(),
            xruns: xruns.clone(),
            heartbeat_ms: AtomicU64::new(0),
            source_healthy: healthy.clone(),
            lossless: lossless.clone(),
            finished: AtomicBool::new(false),
            end_reason: std::sync::Mutex::new(None),
            failed: std::sync::Mutex::new(None),
            nonfinite_samples: Arc::new(AtomicU64::new(0)),
            stages: stage_stats,
        });
        let reporter = Reporter {
            bus: bus.clone(),
            stream: opts.stream.clone(),
            stream_start,
            clock: clock.clone(),
            healthy,
        };
        let mut threads = Vec::new();
        let mut stage_joins = Vec::new();
        let mut stage_threads = Vec::new();
        for (spec, consumer, st) in consumers {
            let reporter = reporter.clone();
            let lossless = lossless.clone();
            let name = format!("stage-{}", spec.stage.name());
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || run_stage(spec, consumer, st, &reporter, &lossless))?;
            stage_threads.push(handle.thread().clone());
            stage_joins.push(handle);
        }
        let (seg_tx, seg_rx) = mpsc::channel();
        let ctx = SourceContext::new(
            seg_tx,
            opts.input_ring_s,
            stop.clone(),
            reporter.clone(),
            xruns,
        );
        let source_stats = stats.clone();
        threads.push(
            std::thread::Builder::new()
                .name("source".into())
                .spawn(move || {
                    // Keep a handle on the segment channel until the reason is recorded, so the
                    // pump cannot see the end of input before it can tell why.
                    let keep = ctx.clone();
                    let run =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.run(ctx)));
                    let reason = match run {
                        Ok(Ok(())) => "end of input".to_string(),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "Source failed.");
                            format!("source failed: {e}")
                        }
                        Err(p) => {
                            let why = format!("source thread panicked: {}", panic_text(p.as_ref()));
                            source_stats.fail(&why);
                            why
                        }
                    };
                    if let Ok(mut r) = source_stats.end_reason.lock() {
                        *r = Some(reason);
                    }
                    drop(keep);
                })?,
        );
        let pump = Pump::new(
            seg_rx,
            FanOut::new(fanout, stage_threads),
            stats.clone(),
            stop.clone(),
        );
        let end_reporter = reporter;
        let pump_stats = stats.clone();
        let pump_stop = stop.clone();
        // The pump thread owns the end of the stream: once it has drained the input it closes the
        // stage rings, waits for the stages to flush, and only then publishes SourceEnded, so
        // that event is the last one of the stream.
        threads.push(
            std::thread::Builder::new()
                .name("pump".into())
                .spawn(move || {
                    if let Err(p) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pump.run()))
                    {
                        // The pump (and with it the stage rings) is gone: stop the source too.
                        pump_stop.store(true, Ordering::Relaxed);
                        pump_stats
                            .fail(&format!("pump thread panicked: {}", panic_text(p.as_ref())));
                    }
                    for t in stage_joins {
                        let name = t.thread().name().unwrap_or("stage").to_string();
                        if let Err(p) = t.join() {
                            pump_stats.fail(&format!(
                                "{name} thread panicked: {}",
                                panic_text(p.as_ref())
                            ));
                        }
                    }
                    let failed = pump_stats.failure();
                    let reason = failed
                        .map(|f| format!("pipeline failed: {f}"))
                        .unwrap_or_else(|| {
                            pump_stats
                                .end_reason
                                .lock()
                                .ok()
                                .and_then(|r| r.clone())
                                .unwrap_or_else(|| "stopped".into())
                        });
                    end_reporter.report(EventKind::SourceEnded { reason });
                    pump_stats.finished.store(true, Ordering::Release);
                })?,
        );
        Ok(Self {
            stats,
            stop,
            threads,
        })
    }

    /// Asks the source to stop; the pump then drains and the stages finish.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// True once every thread has exited.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for all threads (call after [`request_stop`](Self::request_stop) or end of input).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("A pipeline thread panicked.");
            }
        }
    }
}

/// Shared counters of one stage ring (re-exported for status).
pub type RingCounters = Arc<RingStats>;

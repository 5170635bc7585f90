//! Runs one stage on its own thread: rebuilds windows from frames, applies the overflow policy,
//! stamps and publishes events, and accounts for drops and processing time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Emitted, FRAME, Frame, OverflowPolicy, StageSpec, Window};
use crate::{
    audio::Reporter,
    ring::{RingConsumer, RingStats},
};

/// Frames popped per batch.
const BATCH: usize = 32;

/// Counters of one stage.
#[derive(Debug)]
pub struct StageStats {
    pub name: &'static str,
    pub policy: OverflowPolicy,
    pub capacity_samples: usize,
    pub queue_depth_samples: AtomicUsize,
    pub windows: AtomicU64,
    pub busy_ns: AtomicU64,
    /// CPU time of the stage's thread so far. Work a stage hands to other threads (Whisper's
    /// rayon pool) is not in it.
    pub cpu_ns: AtomicU64,
    /// When the stage's thread started (the denominator of [`cpu_share`](Self::cpu_share)).
    pub started: Instant,
    pub errors: AtomicU64,
    ring: Arc<RingStats>,
}

impl StageStats {
    pub fn new(
        name: &'static str,
        policy: OverflowPolicy,
        capacity_samples: usize,
        ring: Arc<RingStats>,
    ) -> Self {
        Self {
            name,
            policy,
            capacity_samples,
            queue_depth_samples: AtomicUsize::new(0),
            windows: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            started: Instant::now(),
            errors: AtomicU64::new(0),
            ring,
        }
    }

    /// Samples this stage never saw: refused by a full ring, or skipped to catch up.
    pub fn dropped_samples(&self) -> u64 {
        (self.ring.overruns.load(Ordering::Relaxed) + self.ring.skipped.load(Ordering::Relaxed))
            * FRAME as u64
    }

    /// CPU time of the stage's thread over wall time since it started: 0.05 = 5% of one core.
    pub fn cpu_share(&self) -> f64 {
        let wall = self.started.elapsed().as_secs_f64();
        if wall <= 0.0 {
            0.0
        } else {
            self.cpu_ns.load(Ordering::Relaxed) as f64 / 1e9 / wall
        }
    }

    pub fn mean_window_us(&self) -> f64 {
        let w = self.windows.load(Ordering::Relaxed);
        if w == 0 {
            0.0
        } else {
            self.busy_ns.load(Ordering::Relaxed) as f64 / w as f64 / 1e3
        }
    }
}

/// The body of a stage thread. Returns when the pump has gone and the ring is empty.
pub fn run_stage(
    spec: StageSpec,
    mut input: RingConsumer<Frame>,
    stats: Arc<StageStats>,
    reporter: &Reporter,
    lossless: &AtomicBool,
) {
    let StageSpec {
        mut stage, policy, ..
    } = spec;
    let win = stage.window();
    let (len, hop) = (win.len.max(1), win.hop.clamp(1, win.len.max(1)));
    let max_lag_frames = match policy {
        OverflowPolicy::CatchUp { max_lag_ms } => Some((max_lag_ms as usize / 10).max(1)),
        OverflowPolicy::DropNewest => None,
    };
    let mut buf: Vec<f32> = Vec::with_capacity(len + FRAME);
    let mut buf_start = 0u64;
    let mut expected: Option<u64> = None;
    let mut batch = vec![
        Frame {
            start: 0,
            samples: [0.0; FRAME]
        };
        BATCH
    ];
    let mut out: Vec<Emitted> = Vec::with_capacity(16);
    loop {
        if let Some(max) = max_lag_frames.filter(|_| !lossless.load(Ordering::Relaxed)) {
            let waiting = input.occupied_len();
            if waiting > max {
                let skipped = input.skip_oldest(waiting - max);
                tracing::debug!(
                    stage = stats.name,
                    frames = skipped,
                    "Stage fell behind; skipped oldest audio."
                );
            }
        }
        let n = input.pop_into(&mut batch);
        stats
            .queue_depth_samples
            .store(input.occupied_len() * FRAME, Ordering::Relaxed);
        if n == 0 {
            if input.is_abandoned() && input.occupied_len() == 0 {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(50));
            continue;
        }
        for frame in &batch[..n] {
            if expected.is_some_and(|e| e != frame.start) {
                stage.discontinuity(frame.start, &mut out);
                buf.clear();
            }
            if buf.is_empty() {
                buf_start = frame.start;
            }
            buf.extend_from_slice(&frame.samples);
            expected = Some(frame.start + FRAME as u64);
            while buf.len() >= len {
                let t = Instant::now();
                let window = Window {
                    samples: &buf[..len],
                    start: buf_start,
                };
                if let Err(e) = stage.process(&window, &mut out) {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stage = stats.name, error = %e, "Stage failed on a window.");
                }
                stats
                    .busy_ns
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                stats.windows.fetch_add(1, Ordering::Relaxed);
                buf.drain(..hop);
                buf_start += hop as u64;
            }
        }
        publish(&mut out, reporter);
        // Once per batch, not per window: a thread CPU clock read is a system call.
        stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
    }
    let end = expected.unwrap_or(0);
    stage.finish(end, &mut out);
    publish(&mut out, reporter);
    stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
    tracing::debug!(stage = stats.name, "Stage finished.");
}

/// CPU time consumed by the calling thread, nanoseconds (0 if the clock is unavailable).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call has no other preconditions.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

fn publish(out: &mut Vec<Emitted>, reporter: &Reporter) {
    for (sample, kind) in out.drain(..) {
        reporter.publish_at(sample, kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_clock_counts_this_threads_work_only() {
        // Spin until the clock shows 20 ms of CPU: with a broken clock (always 0) this times out.
        // Measured by CPU, not wall time, so a loaded machine only makes it slower.
        let before = thread_cpu_ns();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while thread_cpu_ns() - before < 20_000_000 {
            x = x.wrapping_add(std::hint::black_box(1));
            assert!(Instant::now() < deadline, "CPU clock did not advance ({x})");
        }
        let before = thread_cpu_ns();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            thread_cpu_ns() - before < 10_000_000,
            "sleep is not CPU time"
        );
    }
}

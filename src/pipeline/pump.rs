//! The pump: drains source segments, converts to 16 kHz mono, stamps the stream clock and fans
//! 10 ms frames out to every stage ring. It never blocks on a stage while the source is real-time
//! (a full ring costs that stage the frame, counted); for offline sources it waits for room.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::Thread,
    time::Duration,
};

use super::{FRAME, Frame, OverflowPolicy, PipelineStats};
use crate::{
    audio::{Segment, resample::ToMono16k},
    ring::RingProducer,
};

/// How long the pump sleeps when there is nothing to do. Real-time input arrives in device
/// periods of a few milliseconds, so this bounds added latency while keeping wakeups cheap.
const IDLE: Duration = Duration::from_millis(5);

/// The per-stage outputs of the pump.
#[derive(Debug)]
pub struct FanOut {
    outs: Vec<(RingProducer<Frame>, OverflowPolicy)>,
    threads: Vec<Thread>,
}

impl FanOut {
    pub fn new(outs: Vec<(RingProducer<Frame>, OverflowPolicy)>, threads: Vec<Thread>) -> Self {
        Self { outs, threads }
    }

    /// Sends `frame` to every stage. `lossless` waits for room (until `stop`); otherwise a full
    /// ring drops the frame for that stage and counts it.
    pub fn send(&mut self, frame: &Frame, lossless: bool, stop: &AtomicBool) {
        for (i, (out, _policy)) in self.outs.iter_mut().enumerate() {
            if lossless {
                let mut f = *frame;
                loop {
                    match out.try_push(f) {
                        Ok(()) => break,
                        Err(back) => {
                            f = back;
                            if stop.load(Ordering::Relaxed) || out.is_abandoned() {
                                out.count_overrun(1);
                                break;
                            }
                            if let Some(t) = self.threads.get(i) {
                                t.unpark();
                            }
                            std::thread::sleep(Duration::from_micros(500));
                        }
                    }
                }
            } else if out.try_push(*frame).is_err() {
                out.count_overrun(1);
            }
        }
    }

    /// Wakes the stage threads after new frames were queued.
    pub fn wake(&self) {
        for t in &self.threads {
            t.unpark();
        }
    }
}

/// Assembles 16 kHz mono samples into stamped frames.
#[derive(Debug)]
pub struct Framer {
    frame: Frame,
    fill: usize,
    next: u64,
}

impl Framer {
    pub fn new() -> Self {
        Self {
            frame: Frame {
                start: 0,
                samples: [0.0; FRAME],
            },
            fill: 0,
            next: 0,
        }
    }

    /// Calls `emit` for every completed frame.
    pub fn push(&mut self, mut samples: &[f32], mut emit: impl FnMut(&Frame)) {
        while !samples.is_empty() {
            if self.fill == 0 {
                self.frame.start = self.next;
            }
            let take = (FRAME - self.fill).min(samples.len());
            self.frame.samples[self.fill..self.fill + take].copy_from_slice(&samples[..take]);
            self.fill += take;
            self.next += take as u64;
            samples = &samples[take..];
            if self.fill == FRAME {
                emit(&self.frame);
                self.fill = 0;
            }
        }
    }

    /// Emits a last, zero-padded frame if one is partly filled.
    pub fn finish(&mut self, emit: impl FnOnce(&Frame)) {
        if self.fill > 0 {
            self.frame.samples[self.fill..].fill(0.0);
            emit(&self.frame);
            self.fill = 0;
        }
    }
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

/// Converts and fans out one pipeline's audio.
#[derive(Debug)]
pub struct Pump {
    segments: mpsc::Receiver<Segment>,
    fanout: FanOut,
    stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
}

impl Pump {
    pub fn new(
        segments: mpsc::Receiver<Segment>,
        fanout: FanOut,
        stats: Arc<PipelineStats>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            segments,
            fanout,
            stats,
            stop,
        }
    }

    /// Runs until the source has closed its last segment and everything is fanned out. Dropping
    /// the pump afterwards closes the stage rings, which tells the stages to finish.
    pub fn run(mut self) {
        let mut input = vec![0f32; 8192];
        let mut mono = Vec::with_capacity(8192);
        let mut framer = Framer::new();
        let mut current: Option<(Segment, ToMono16k)> = None;
        loop {
            self.beat();
            let Some((seg, conv)) = current.as_mut() else {
                match self.segments.recv_timeout(IDLE * 10) {
                    Ok(seg) => match ToMono16k::new(seg.format) {
                        Ok(conv) => {
                            self.stats.lossless.store(!seg.realtime, Ordering::Relaxed);
                            tracing::debug!(
                                rate = seg.format.rate,
                                channels = seg.format.channels,
                                "Segment opened."
                            );
                            current = Some((seg, conv));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "Cannot convert segment; skipping it.")
                        }
                    },
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                continue;
            };
            let n = seg.consumer.pop_into(&mut input);
            mono.clear();
            let lossless = !seg.realtime;
            if n == 0 {
                // Check abandonment before emptiness: a producer may push and then drop.
                if seg.consumer.is_abandoned() && seg.consumer.occupied_len() == 0 {
                    conv.flush(&mut mono);
                    self.emit(&mut framer, &mono, lossless);
                    current = None;
                } else {
                    self.fanout.wake();
                    std::thread::sleep(IDLE);
                }
                continue;
            }
            // Capture hands us whatever the device produced: s16 data read as f32 holds NaNs.
            // The converter turns them into silence (and clips huge values); here they are
            // only counted, for status.
            let bad = input[..n].iter().filter(|v| !v.is_finite()).count() as u64;
            if bad > 0 {
                self.stats
                    .nonfinite_samples
                    .fetch_add(bad, Ordering::Relaxed);
            }
            conv.process(&input[..n], &mut mono);
            self.emit(&mut framer, &mono, lossless);
            self.fanout.wake();
        }
        let (fanout, stats, stop) = (&mut self.fanout, &self.stats, &self.stop);
        framer.finish(|f| {
            fanout.send(f, true, stop);
        });
        stats.clock.store(framer.next, Ordering::Relaxed);
        self.fanout.wake();
    }

    fn emit(&mut self, framer: &mut Framer, mono: &[f32], lossless: bool) {
        let (fanout, stop) = (&mut self.fanout, &self.stop);
        framer.push(mono, |f| fanout.send(f, lossless, stop));
        self.stats.clock.store(framer.next, Ordering::Relaxed);
    }

    fn beat(&self) {
        let ms = self.stats.started.elapsed().as_millis() as u64;
        self.stats.heartbeat_ms.store(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_stamps_contiguous_frames() {
        let mut framer = Framer::new();
        let mut starts = Vec::new();
        let data: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        for chunk in data.chunks(77) {
            framer.push(chunk, |f| {
                assert_eq!(f.samples[0], f.start as f32);
                starts.push(f.start);
            });
        }
        framer.finish(|f| starts.push(f.start));
        assert_eq!(starts, (0..7).map(|i| i * 160).collect::<Vec<u64>>());
    }
}

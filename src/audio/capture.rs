//! The write side of a segment. For real-time sources this is the code that runs inside the audio
//! callback, so after construction it must not allocate, lock, log or make syscalls: samples are
//! converted through a small stack buffer and pushed; what does not fit is counted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::ring::RingProducer;

/// Conversion chunk: small enough to live on the callback's stack.
const CHUNK: usize = 256;

/// Writes interleaved samples of one segment into its ring.
#[derive(Debug)]
pub struct CaptureWriter {
    producer: RingProducer<f32>,
    realtime: bool,
    stop: Arc<AtomicBool>,
    xruns: Arc<AtomicU64>,
}

impl CaptureWriter {
    pub(crate) fn new(
        producer: RingProducer<f32>,
        realtime: bool,
        stop: Arc<AtomicBool>,
        xruns: Arc<AtomicU64>,
    ) -> Self {
        Self {
            producer,
            realtime,
            stop,
            xruns,
        }
    }

    /// Creates a standalone real-time writer over `producer` (benches and tests).
    pub fn realtime(producer: RingProducer<f32>, xruns: Arc<AtomicU64>) -> Self {
        Self::new(producer, true, Arc::new(AtomicBool::new(false)), xruns)
    }

    /// Writes f32 samples. Returns false if the writer should stop (offline mode, stop requested).
    #[inline]
    pub fn write_f32(&mut self, data: &[f32]) -> bool {
        self.write(data)
    }

    /// Writes signed 16-bit samples, scaled to [-1, 1).
    #[inline]
    pub fn write_i16(&mut self, data: &[i16]) -> bool {
        self.write_converted(data, |s| f32::from(s) / 32768.0)
    }

    /// Writes unsigned 16-bit samples (offset binary).
    #[inline]
    pub fn write_u16(&mut self, data: &[u16]) -> bool {
        self.write_converted(data, |s| (f32::from(s) - 32768.0) / 32768.0)
    }

    /// Writes signed 32-bit samples.
    #[inline]
    pub fn write_i32(&mut self, data: &[i32]) -> bool {
        self.write_converted(data, |s| s as f32 / 2_147_483_648.0)
    }

    #[inline]
    fn write_converted<T: Copy>(&mut self, data: &[T], f: impl Fn(T) -> f32) -> bool {
        let mut buf = [0f32; CHUNK];
        for chunk in data.chunks(CHUNK) {
            for (o, &s) in buf.iter_mut().zip(chunk) {
                *o = f(s);
            }
            if !self.write(&buf[..chunk.len()]) {
                return false;
            }
        }
        true
    }

    #[inline]
    fn write(&mut self, mut data: &[f32]) -> bool {
        if self.realtime {
            let n = self.producer.push_or_count(data);
            if n < data.len() {
                self.xruns
                    .fetch_add((data.len() - n) as u64, Ordering::Relaxed);
            }
            return true;
        }
        // Offline: wait for room. This path runs on a normal thread, so sleeping is fine.
        loop {
            let n = self.producer.push_some(data);
            data = &data[n..];
            if data.is_empty() {
                return true;
            }
            if self.stop.load(Ordering::Relaxed) || self.producer.is_abandoned() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn is_realtime(&self) -> bool {
        self.realtime
    }
}

//! Playing mono audio on the default output device (for `hark say`).
//!
//! Samples go through a lock-free ring to cpal's callback, which never blocks: when the ring
//! runs dry it plays silence. The device plays at its own rate; other rates are converted by
//! linear interpolation, which is plenty for listening to speech (files keep the voice's rate).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use ringbuf::{
    HeapCons, HeapProd, HeapRb,
    traits::{Consumer, Observer, Producer, Split},
};

use super::SourceError;

/// An open output stream.
pub struct Player {
    _stream: cpal::Stream,
    prod: HeapProd<f32>,
    /// Samples the callback has played.
    played: Arc<AtomicU64>,
    pushed: u64,
    /// Input samples per device sample.
    step: f64,
    pos: f64,
    last: f32,
    device_rate: u32,
}

impl std::fmt::Debug for Player {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Player")
            .field("device_rate", &self.device_rate)
            .finish_non_exhaustive()
    }
}

impl Player {
    /// Opens the default output device for mono audio at `rate` Hz.
    pub fn open(rate: u32) -> Result<Self, SourceError> {
        let host = cpal::default_host();
        let device = host.default_output_device().ok_or_else(|| {
            SourceError::Device("there is no audio output device (write a file with -o)".into())
        })?;
        let dev_err =
            |e: String| SourceError::Device(format!("audio output: {e} (write a file with -o)"));
        // The voice's rate if the device takes it, else the device's default.
        let supported = device
            .supported_output_configs()
            .map_err(|e| dev_err(e.to_string()))?
            .filter(|c| c.sample_format() == cpal::SampleFormat::F32)
            .find(|c| c.min_sample_rate() <= rate && rate <= c.max_sample_rate())
            .map(|c| c.with_sample_rate(rate));
        let supported = match supported {
            Some(s) => s,
            None => device
                .default_output_config()
                .map_err(|e| dev_err(e.to_string()))?,
        };
        if supported.sample_format() != cpal::SampleFormat::F32 {
            return Err(dev_err(format!(
                "the device wants {:?} samples; write a file with -o instead",
                supported.sample_format()
            )));
        }
        let config = supported.config();
        let channels = usize::from(config.channels.max(1));
        let device_rate = config.sample_rate;
        // Two seconds of audio: enough to ride out a slow sentence.
        let (prod, mut cons): (HeapProd<f32>, HeapCons<f32>) =
            HeapRb::<f32>::new(device_rate as usize * 2).split();
        let played = Arc::new(AtomicU64::new(0));
        let p = played.clone();
        let stream = device
            .build_output_stream(
                config,
                move |out: &mut [f32], _: &cpal::OutputCallbackInfo| {
                    let mut n = 0u64;
                    for frame in out.chunks_mut(channels) {
                        let s = match cons.try_pop() {
                            Some(s) => {
                                n += 1;
                                s
                            }
                            None => 0.0,
                        };
                        frame.fill(s);
                    }
                    p.fetch_add(n, Ordering::Relaxed);
                },
                |e| eprintln!("hark: audio output error: {e}"),
                None,
            )
            .map_err(|e| dev_err(e.to_string()))?;
        stream.play().map_err(|e| dev_err(e.to_string()))?;
        Ok(Self {
            _stream: stream,
            prod,
            played,
            pushed: 0,
            step: f64::from(rate) / f64::from(device_rate),
            pos: 0.0,
            last: 0.0,
            device_rate,
        })
    }

    /// Queues samples (at the rate given to [`open`](Self::open)), waiting while the ring is full.
    pub fn push(&mut self, samples: &[f32]) {
        // Linear interpolation between the previous sample and each new one.
        let mut out = Vec::with_capacity((samples.len() as f64 / self.step) as usize + 2);
        let mut prev = self.last;
        for &s in samples {
            while self.pos < 1.0 {
                out.push(prev + (s - prev) * self.pos as f32);
                self.pos += self.step;
            }
            self.pos -= 1.0;
            prev = s;
        }
        self.last = prev;
        let mut rest = &out[..];
        while !rest.is_empty() {
            let n = self.prod.push_slice(rest);
            rest = &rest[n..];
            self.pushed += n as u64;
            if !rest.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits until everything queued has played.
    pub fn finish(self) {
        while !self.prod.is_empty() && self.played.load(Ordering::Relaxed) < self.pushed {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The device's own buffer.
        std::thread::sleep(Duration::from_millis(150));
    }
}

//! Ring and pump throughput (criterion).
//!
//! - `ring`: SPSC push/pop of 10 ms device periods.
//! - `pump`: the pump's work on one core: 48 kHz stereo in -> down-mix -> resample to 16 kHz ->
//!   10 ms frames -> fan-out to 4 stage rings (drained by the same thread, as stages would).
//!   The real-time factor is printed after the group: seconds of audio per second of CPU.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hark::{
    audio::{Format, resample::ToMono16k},
    pipeline::{FRAME, FanOut, Frame, Framer, OverflowPolicy},
    ring::{RingConsumer, ring},
};

fn bench_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    for period in [480usize, 4096] {
        let (mut p, mut cons) = ring::<f32>(48_000);
        let data = vec![0.5f32; period];
        let mut out = vec![0f32; period];
        g.throughput(Throughput::Elements(period as u64));
        g.bench_with_input(BenchmarkId::new("push_pop_f32", period), &period, |b, _| {
            b.iter(|| {
                p.push_or_count(std::hint::black_box(&data));
                cons.pop_into(&mut out);
            })
        });
    }
    g.finish();
}

struct PumpRig {
    conv: ToMono16k,
    framer: Framer,
    fanout: FanOut,
    consumers: Vec<RingConsumer<Frame>>,
    mono: Vec<f32>,
    stop: Arc<AtomicBool>,
    sink: Vec<Frame>,
}

impl PumpRig {
    fn new() -> Self {
        let mut outs = Vec::new();
        let mut consumers = Vec::new();
        for _ in 0..4 {
            let (p, c) = ring::<Frame>(400);
            outs.push((p, OverflowPolicy::DropNewest));
            consumers.push(c);
        }
        Self {
            conv: ToMono16k::new(Format {
                rate: 48_000,
                channels: 2,
            })
            .unwrap(),
            framer: Framer::new(),
            fanout: FanOut::new(outs, Vec::new()),
            consumers,
            mono: Vec::with_capacity(8192),
            stop: Arc::new(AtomicBool::new(false)),
            sink: vec![
                Frame {
                    start: 0,
                    samples: [0.0; FRAME]
                };
                64
            ],
        }
    }

    /// One device period through the pump, then the stages take their frames.
    fn step(&mut self, period: &[f32]) {
        self.mono.clear();
        self.conv.process(period, &mut self.mono);
        let (fanout, stop) = (&mut self.fanout, &self.stop);
        self.framer
            .push(&self.mono, |f| fanout.send(f, false, stop));
        for c in &mut self.consumers {
            while c.pop_into(&mut self.sink) > 0 {}
        }
    }
}

fn stereo_period(frames: usize, offset: usize) -> Vec<f32> {
    (0..frames)
        .flat_map(|i| {
            let t = (offset + i) as f32 / 48_000.0;
            let s = (2.0 * std::f32::consts::PI * 440.0 * t).sin() * 0.3;
            [s, -s]
        })
        .collect()
}

fn bench_pump(c: &mut Criterion) {
    let mut g = c.benchmark_group("pump");
    let period = stereo_period(1024, 0);
    let mut rig = PumpRig::new();
    g.throughput(Throughput::Elements(1024));
    g.bench_function("48k_stereo_to_16k_mono_fanout4_per_1024_frames", |b| {
        b.iter(|| rig.step(std::hint::black_box(&period)))
    });
    g.finish();

    // Real-time factor over 60 s of input, measured directly.
    let mut rig = PumpRig::new();
    let periods: Vec<Vec<f32>> = (0..8).map(|k| stereo_period(960, k * 960)).collect();
    let audio_s = 60.0;
    let n = (audio_s * 48_000.0 / 960.0) as usize;
    let t = Instant::now();
    for i in 0..n {
        rig.step(&periods[i % periods.len()]);
    }
    let cpu = t.elapsed();
    println!(
        "pump: {audio_s:.0} s of 48 kHz stereo -> 16 kHz mono, 4 stages, in {:.1} ms = {:.0}x real time (target >= 500x)",
        cpu.as_secs_f64() * 1e3,
        audio_s / cpu.as_secs_f64()
    );
}

/// One VAD frame (default 30 ms) through the detector (WebRTC VAD + high-pass + noise floor + smoothing):
/// what the transcribe stage's own copy of the VAD costs on top of the VAD stage's.
fn bench_vad(c: &mut Criterion) {
    let mut g = c.benchmark_group("vad");
    let mut det = hark::stages::vad::VadDetector::new(&hark::stages::vad::VadConfig::default())
        .expect("default VAD config");
    let n = det.frame_len();
    // A second of a 220 Hz tone in noise, so both voiced and unvoiced paths run.
    let audio: Vec<f32> = (0..16_000)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            let noise = ((i as u32).wrapping_mul(2_654_435_761) >> 16) as f32 / 65_536.0 - 0.5;
            0.3 * (2.0 * std::f32::consts::PI * 220.0 * t).sin()
                * f32::from(u8::from(i % 8000 < 4000))
                + 0.01 * noise
        })
        .collect();
    let mut pos = 0usize;
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_frame_default_30ms", |b| {
        b.iter(|| {
            let start = pos % (audio.len() - n + 1);
            let start = start - start % n;
            det.push_frame(std::hint::black_box(&audio[start..start + n]), pos as u64);
            pos += n;
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_ring, bench_pump, bench_vad
}
criterion_main!(benches);

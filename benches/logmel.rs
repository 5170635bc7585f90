//! Whisper log-mel front end throughput: 30 s of 16 kHz audio (one Whisper window).
//!
//! `cargo bench --bench logmel`. Throughput is in input samples; real-time factor =
//! (samples/s) / 16 000. A one-line real-time summary is printed before the criterion runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hark::dsp::{LogMel, SAMPLE_RATE};

const SECONDS: usize = 30;

/// Deterministic speech-level noise in [-0.3, 0.3).
fn noise(n: usize) -> Vec<f32> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
        })
        .collect()
}

fn report_real_time(label: &str, plan: &LogMel, audio: &[f32]) {
    let runs = 20;
    let start = Instant::now();
    for _ in 0..runs {
        black_box(plan.compute(black_box(audio)));
    }
    let per_run = start.elapsed() / runs;
    let audio_s = audio.len() as f64 / SAMPLE_RATE as f64;
    eprintln!(
        "{label}: {audio_s:.0} s of audio in {:.2} ms = {:.0}x real time",
        per_run.as_secs_f64() * 1e3,
        audio_s / per_run.as_secs_f64()
    );
}

fn bench_logmel(c: &mut Criterion) {
    let audio = noise(SECONDS * SAMPLE_RATE as usize);
    let mut group = c.benchmark_group("logmel_30s");
    group.throughput(Throughput::Elements(audio.len() as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for n_mels in [80, 128] {
        let plan = LogMel::new(n_mels);
        report_real_time(&format!("logmel {n_mels} mels"), &plan, &audio);
        group.bench_function(format!("compute/{n_mels}"), |b| {
            b.iter(|| plan.compute(black_box(&audio)))
        });
        let mut scratch = plan.make_scratch();
        let mut out = Vec::new();
        group.bench_function(format!("compute_into/{n_mels}"), |b| {
            b.iter(|| {
                plan.compute_into(black_box(&audio), &mut scratch, &mut out);
                black_box(out.as_ptr());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_logmel);
criterion_main!(benches);

//! VAD evaluation: real utterances in real noise, with known boundaries.
//!
//! `cargo bench --bench vad_eval` (set `HARK_DATA` to point at another copy of `shared/data`;
//! without the data the bench prints why and exits 0).
//!
//! Method (everything is deterministic: one fixed seed, our own xorshift):
//!
//! * **Speech**: every utterance listed in `speech/manifest.tsv` (the longform file is not listed
//!   there and is not used).
//! * **Noise**: every `ambient/` recording in `noise/manifest.tsv` is a *bed*. Crowd and babble
//!   recordings are kept: the manifest describes them as babble/crowd ambience and none says it
//!   holds intelligible speech (a description containing "intelligible speech" would exclude a
//!   file). They are the hardest case for a VAD and an always-on device meets them.
//!   `short_noises/` (taps, rubs) and `rir/` are not used.
//! * **Timelines**: per noise bed, [`TIMELINES_PER_BED`] timelines of [`UTTS_PER_TIMELINE`]
//!   utterances (drawn from a shuffled deck, so each utterance appears about equally often),
//!   separated and surrounded by gaps drawn uniformly from 0.7-3 s. The bed runs continuously under
//!   everything from a random offset, looped forwards/backwards so the loop points do not click.
//!   Utterances start at arbitrary sample offsets (not frame aligned).
//! * **Levels**: each timeline draws a speech *active level* uniformly from -35..-20 dBFS, so a
//!   detector cannot rely on absolute level. Active level = mean power of the 10 ms frames of the
//!   clean utterance that are labelled active (below). Noise power = mean power over the whole
//!   noise file. SNR = active speech power / noise power; the bed is scaled to reach it. "clean"
//!   has no bed at all (gaps are digital silence; the utterances keep their own room tone).
//! * **Truth**: per utterance, 10 ms frames of the clean file are *active* when their energy is
//!   within 35 dB of the utterance's loudest frame *and* at least 10 dB above the file's own floor
//!   (10th percentile frame energy; this keeps the 64 kbit/s LibriVox hiss out of the truth).
//!   Active runs shorter than 30 ms are dropped (clicks). The active runs of all utterances are
//!   then merged across pauses shorter than [`MERGE_MS`] (700 ms, the shortest inter-utterance
//!   gap): comma pauses stay inside a segment, a long pause inside an utterance (JFK has several of
//!   over 1 s) splits it, consistent with how gaps between utterances are treated.
//! * **Detection**: [`VadDetector`] over the mix in frames of `frame_len()`, closed at the end.
//! * **Metrics**: frame-level (10 ms, frame centre) precision / recall / F1 of detected segments
//!   against truth segments, pooled over all timelines. Boundary error: each truth segment
//!   overlapped by at least one detected segment is *matched*; its onset error is the start of the
//!   first overlapping detection minus the true start, its offset error is the end of the last
//!   overlapping detection minus the true end. The headline is the median of all |onset| and
//!   |offset| errors together; onsets and offsets are also shown separately, with the signed median
//!   (bias: negative = early). Missed = truth segments with no overlapping detection; false =
//!   detections overlapping no truth; merged = detections spanning two or more truth segments.
//! * **Configs**: the default, the default at each webrtc-vad aggressiveness 0-3, and the default
//!   with both energy gates off (webrtc-vad decisions only, the detector before the gates).
//! * **Cost**: wall time of `push_frame` for the default config over the 10 dB mixes.
//!
//! Knobs (environment): `VAD_EVAL_CONFIGS` evaluates extra configs, a JSON array of (partial)
//! `[vad]` tables, e.g. `'[{"aggressiveness":2,"hangover_ms":300}]'`; `VAD_EVAL_SEED=<u64>` draws
//! other timelines (check that a change generalises); `VAD_EVAL_VERBOSE=1` prints truth extents
//! and error percentiles; `VAD_EVAL_WORST=<snr dB, 1000 = clean>` lists the worst boundaries.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use hark::{
    audio::{file::decode_file, resample::ToMono16k},
    events::STREAM_RATE,
    stages::vad::{VadConfig, VadDetector, VadTransition},
};

const RATE: usize = STREAM_RATE as usize;
/// Truth / scoring frame: 10 ms.
const HOP: usize = RATE / 100;
const TIMELINES_PER_BED: usize = 2;
const UTTS_PER_TIMELINE: usize = 5;
const GAP_MIN_S: f64 = 0.7;
const GAP_MAX_S: f64 = 3.0;
/// Pauses shorter than this inside the truth are bridged.
const MERGE_MS: usize = 700;
/// Truth: frames within this many dB of the utterance's peak frame...
const TRUTH_BELOW_PEAK_DB: f64 = 35.0;
/// ... and at least this far above the file's own floor.
const TRUTH_ABOVE_FLOOR_DB: f64 = 10.0;
const LEVEL_MIN_DBFS: f64 = -35.0;
const LEVEL_MAX_DBFS: f64 = -20.0;
const SEED: u64 = 0x005E_ED0F_4A2D;
/// The SNRs evaluated; `None` is clean (no noise bed).
const SNRS: [Option<f64>; 4] = [None, Some(20.0), Some(10.0), Some(5.0)];

/// xorshift64*: tiny, deterministic, good enough for shuffling and drawing gaps.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

struct Utterance {
    name: String,
    samples: Vec<f32>,
    /// Active runs in samples, relative to the start of the file.
    active: Vec<(usize, usize)>,
    /// Mean power of the active frames.
    active_power: f64,
}

struct Noise {
    name: String,
    samples: Vec<f32>,
    power: f64,
}

struct Timeline {
    noise: usize,
    /// Clean speech track at its drawn level.
    speech: Vec<f32>,
    /// Noise bed at unit power.
    bed: Vec<f32>,
    truth: Vec<(usize, usize)>,
    /// Where each utterance starts: (sample, utterance index).
    placed: Vec<(usize, usize)>,
}

fn data_dir() -> PathBuf {
    std::env::var_os("HARK_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// Decodes any supported file to 16 kHz mono (all shared audio already is; this is defensive).
fn load(path: &Path) -> Vec<f32> {
    let d = decode_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if d.format.rate == STREAM_RATE && d.format.channels == 1 {
        return d.samples;
    }
    let mut conv = ToMono16k::new(d.format).expect("supported format");
    let mut out = Vec::new();
    conv.process(&d.samples, &mut out);
    conv.flush(&mut out);
    out
}

/// Rows of a TSV manifest (header skipped) as column vectors.
fn manifest(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn frame_db(x: &[f32]) -> f64 {
    let p = x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len().max(1) as f64;
    10.0 * (p + 1e-12).log10()
}

fn utterance(name: String, samples: Vec<f32>) -> Utterance {
    let db: Vec<f64> = samples.chunks_exact(HOP).map(frame_db).collect();
    let peak = db.iter().copied().fold(f64::MIN, f64::max);
    let mut sorted = db.clone();
    sorted.sort_by(f64::total_cmp);
    let floor = sorted[sorted.len() / 10];
    let thr = (peak - TRUTH_BELOW_PEAK_DB).max(floor + TRUTH_ABOVE_FLOOR_DB);
    let mut active = Vec::new();
    let mut run_start = None;
    for (i, &e) in db.iter().chain([f64::MIN].iter()).enumerate() {
        match (e > thr, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(s)) => {
                if i - s >= 3 {
                    active.push((s * HOP, i * HOP));
                }
                run_start = None;
            }
            _ => {}
        }
    }
    let (mut p, mut n) = (0.0, 0usize);
    for &(a, b) in &active {
        p += samples[a..b]
            .iter()
            .map(|&s| f64::from(s) * f64::from(s))
            .sum::<f64>();
        n += b - a;
    }
    assert!(n > 0, "{name}: no active speech");
    Utterance {
        name,
        samples,
        active,
        active_power: p / n as f64,
    }
}

fn merge(mut runs: Vec<(usize, usize)>, max_gap: usize) -> Vec<(usize, usize)> {
    runs.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (a, b) in runs {
        match out.last_mut() {
            Some(last) if a <= last.1 + max_gap => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn build_timelines(utts: &[Utterance], noises: &[Noise], rng: &mut Rng) -> Vec<Timeline> {
    let mut deck: Vec<usize> = Vec::new();
    let mut timelines = Vec::new();
    for (ni, noise) in noises.iter().enumerate() {
        for _ in 0..TIMELINES_PER_BED {
            let level = rng.range(LEVEL_MIN_DBFS, LEVEL_MAX_DBFS);
            let mut speech = Vec::new();
            let mut runs = Vec::new();
            let mut placed = Vec::new();
            let gap = |rng: &mut Rng| (rng.range(GAP_MIN_S, GAP_MAX_S) * RATE as f64) as usize;
            for _ in 0..UTTS_PER_TIMELINE {
                if deck.is_empty() {
                    deck = (0..utts.len()).collect();
                    for i in (1..deck.len()).rev() {
                        deck.swap(i, rng.below(i + 1));
                    }
                }
                let ui = deck.pop().expect("refilled");
                let u = &utts[ui];
                speech.resize(speech.len() + gap(rng), 0.0);
                let at = speech.len();
                placed.push((at, ui));
                let gain = (10f64.powf(level / 10.0) / u.active_power).sqrt() as f32;
                speech.extend(u.samples.iter().map(|&s| s * gain));
                runs.extend(u.active.iter().map(|&(a, b)| (at + a, at + b)));
            }
            speech.resize(speech.len() + gap(rng), 0.0);
            // Forward/backward loop of the bed from a random offset, normalised to unit power.
            let n = noise.samples.len();
            let period = 2 * n;
            let mut pos = rng.below(period);
            let scale = (1.0 / noise.power).sqrt() as f32;
            let bed = (0..speech.len())
                .map(|_| {
                    let i = if pos < n { pos } else { period - 1 - pos };
                    pos = (pos + 1) % period;
                    noise.samples[i] * scale
                })
                .collect();
            timelines.push(Timeline {
                noise: ni,
                speech,
                bed,
                truth: merge(runs, MERGE_MS * RATE / 1000),
                placed,
            });
        }
    }
    timelines
}

fn mix(t: &Timeline, snr: Option<f64>, level_dbfs: f64) -> Vec<f32> {
    let Some(snr) = snr else {
        return t.speech.clone();
    };
    let g = 10f64.powf((level_dbfs - snr) / 20.0) as f32;
    t.speech
        .iter()
        .zip(&t.bed)
        .map(|(&s, &n)| (s + g * n).clamp(-1.0, 1.0))
        .collect()
}

/// Runs the detector over `x`; returns segments in samples.
fn detect(cfg: &VadConfig, x: &[f32]) -> Vec<(usize, usize)> {
    let mut det = VadDetector::new(cfg).expect("valid config");
    let fl = det.frame_len();
    let mut segs = Vec::new();
    let mut on = |t: Option<VadTransition>| {
        if let Some(VadTransition::Ended { start, at }) = t {
            segs.push((start as usize, at as usize));
        }
    };
    let mut start = 0usize;
    for f in x.chunks_exact(fl) {
        on(det.push_frame(f, start as u64));
        start += fl;
    }
    on(det.close(start as u64));
    segs
}

#[derive(Default)]
struct Score {
    tp: u64,
    fp: u64,
    fn_: u64,
    onset: Vec<f64>,
    offset: Vec<f64>,
    n_true: usize,
    missed: usize,
    false_segs: usize,
    merged: usize,
}

fn mask(segs: &[(usize, usize)], frames: usize) -> Vec<bool> {
    let mut m = vec![false; frames];
    for &(a, b) in segs {
        // Frame i is covered when its centre (i*HOP + HOP/2) lies in [a, b).
        let lo = a.saturating_sub(HOP / 2).div_ceil(HOP);
        let hi = (b.saturating_sub(HOP / 2)).div_ceil(HOP).min(frames);
        for v in m.iter_mut().take(hi).skip(lo) {
            *v = true;
        }
    }
    m
}

impl Score {
    fn add(&mut self, truth: &[(usize, usize)], det: &[(usize, usize)], len: usize) {
        let frames = len / HOP;
        let (mt, md) = (mask(truth, frames), mask(det, frames));
        for (&t, &d) in mt.iter().zip(&md) {
            match (t, d) {
                (true, true) => self.tp += 1,
                (false, true) => self.fp += 1,
                (true, false) => self.fn_ += 1,
                _ => {}
            }
        }
        let ms = |s: isize| s as f64 * 1000.0 / RATE as f64;
        let overlaps = |a: &(usize, usize), b: &(usize, usize)| a.0 < b.1 && b.0 < a.1;
        self.n_true += truth.len();
        for t in truth {
            let hits: Vec<_> = det.iter().filter(|d| overlaps(t, d)).collect();
            let (Some(first), Some(last)) = (hits.first(), hits.last()) else {
                self.missed += 1;
                continue;
            };
            self.onset.push(ms(first.0 as isize - t.0 as isize));
            self.offset.push(ms(last.1 as isize - t.1 as isize));
        }
        for d in det {
            match truth.iter().filter(|t| overlaps(t, d)).count() {
                0 => self.false_segs += 1,
                1 => {}
                _ => self.merged += 1,
            }
        }
    }

    fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }
    fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
    fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    fn median_abs(v: &[f64]) -> f64 {
        median(v.iter().map(|x| x.abs()).collect())
    }
    fn boundary_median(&self) -> f64 {
        Self::median_abs(&[self.onset.as_slice(), self.offset.as_slice()].concat())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn snr_label(snr: Option<f64>) -> String {
    snr.map_or_else(|| "clean".to_string(), |s| format!("{s:.0} dB"))
}

fn evaluate(cfg: &VadConfig, timelines: &[Timeline], levels: &[f64], snr: Option<f64>) -> Score {
    let mut score = Score::default();
    for (t, &level) in timelines.iter().zip(levels) {
        let x = mix(t, snr, level);
        score.add(&t.truth, &detect(cfg, &x), x.len());
    }
    score
}

fn row(label: &str, snr: Option<f64>, s: &Score) -> String {
    format!(
        "| {label} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} | {:.0} | {:+.0} | {:+.0} | {}/{} | {} | {} |",
        snr_label(snr),
        s.f1(),
        s.precision(),
        s.recall(),
        s.boundary_median(),
        Score::median_abs(&s.onset),
        Score::median_abs(&s.offset),
        median(s.onset.clone()),
        median(s.offset.clone()),
        s.missed,
        s.n_true,
        s.false_segs,
        s.merged,
    )
}

const HEADER: &str = "| config | SNR | F1 | precision | recall | median \\|err\\| ms | onset \\|err\\| | offset \\|err\\| | onset bias | offset bias | missed | false | merged |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn main() {
    let dir = data_dir();
    let (speech_dir, noise_dir) = (dir.join("speech"), dir.join("noise"));
    if !speech_dir.join("manifest.tsv").exists() || !noise_dir.join("manifest.tsv").exists() {
        println!(
            "vad_eval: skipped, no labelled audio at {} (set HARK_DATA to shared/data)",
            dir.display()
        );
        return;
    }

    let utts: Vec<Utterance> = manifest(&speech_dir.join("manifest.tsv"))
        .into_iter()
        .map(|r| utterance(r[0].clone(), load(&speech_dir.join(&r[0]))))
        .collect();
    let noises: Vec<Noise> = manifest(&noise_dir.join("manifest.tsv"))
        .into_iter()
        .filter(|r| r[0].starts_with("ambient/"))
        .filter(|r| {
            let d = r.get(1).map(|d| d.to_lowercase()).unwrap_or_default();
            let excluded = d.contains("intelligible speech") && !d.contains("unintelligible");
            if excluded {
                println!("excluded (manifest says intelligible speech): {}", r[0]);
            }
            !excluded
        })
        .map(|r| {
            let samples = load(&noise_dir.join(&r[0]));
            let power = samples
                .iter()
                .map(|&s| f64::from(s) * f64::from(s))
                .sum::<f64>()
                / samples.len() as f64;
            Noise {
                name: r[0].trim_start_matches("ambient/").to_string(),
                samples,
                power,
            }
        })
        .collect();

    let seed = std::env::var("VAD_EVAL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEED);
    let mut rng = Rng(seed | 1);
    let timelines = build_timelines(&utts, &noises, &mut rng);
    let levels: Vec<f64> = (0..timelines.len())
        .map(|_| rng.range(LEVEL_MIN_DBFS, LEVEL_MAX_DBFS))
        .collect();
    let total_s: f64 = timelines.iter().map(|t| t.speech.len()).sum::<usize>() as f64 / RATE as f64;
    let speech_s: f64 = timelines
        .iter()
        .flat_map(|t| t.truth.iter().map(|(a, b)| b - a))
        .sum::<usize>() as f64
        / RATE as f64;
    println!(
        "vad_eval: {} utterances, {} noise beds, {} timelines, {:.0} s audio ({:.0}% speech), {} truth segments",
        utts.len(),
        noises.len(),
        timelines.len(),
        total_s,
        100.0 * speech_s / total_s,
        timelines.iter().map(|t| t.truth.len()).sum::<usize>()
    );
    if std::env::var_os("VAD_EVAL_VERBOSE").is_some() {
        for u in &utts {
            let (a, b) = (u.active[0].0, u.active[u.active.len() - 1].1);
            println!(
                "  {}: active {:.2}-{:.2} s of {:.2} s",
                u.name,
                a as f64 / RATE as f64,
                b as f64 / RATE as f64,
                u.samples.len() as f64 / RATE as f64
            );
        }
    }

    let default = VadConfig::default();
    let mut configs: Vec<(String, VadConfig)> = vec![("default".into(), default.clone())];
    for a in 0..=3u8 {
        configs.push((
            format!("default, aggr {a}"),
            VadConfig {
                aggressiveness: a,
                ..default.clone()
            },
        ));
    }
    configs.push((
        "gates off (webrtc only)".into(),
        VadConfig {
            noise_gate_db: 0.0,
            sustain_gate_db: 0.0,
            ..default.clone()
        },
    ));
    if let Ok(extra) = std::env::var("VAD_EVAL_CONFIGS") {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&extra).expect("VAD_EVAL_CONFIGS: a JSON array of objects");
        for v in list {
            let cfg: VadConfig = serde_json::from_value(v.clone()).expect("a [vad] table");
            configs.push((v.to_string(), cfg));
        }
    }

    let mut headline = Vec::new();
    for snr in SNRS {
        println!("\n### {}\n\n{HEADER}", snr_label(snr));
        for (label, cfg) in &configs {
            let s = evaluate(cfg, &timelines, &levels, snr);
            println!("{}", row(label, snr, &s));
            if label == "default" {
                if std::env::var_os("VAD_EVAL_VERBOSE").is_some() {
                    for (what, v) in [("onset", &s.onset), ("offset", &s.offset)] {
                        let mut v = v.clone();
                        v.sort_by(f64::total_cmp);
                        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
                        println!(
                            "  {what} error percentiles 10/25/50/75/90: {:+.0} {:+.0} {:+.0} {:+.0} {:+.0} ms",
                            q(0.1),
                            q(0.25),
                            q(0.5),
                            q(0.75),
                            q(0.9)
                        );
                    }
                }
                headline.push((snr, s));
            }
        }
    }

    if let Ok(snr) = std::env::var("VAD_EVAL_WORST") {
        let snr: f64 = snr.parse().expect("VAD_EVAL_WORST=<snr dB>");
        let snr = (snr < 100.0).then_some(snr);
        println!("\nworst boundaries, default config, {}:", snr_label(snr));
        let mut all = Vec::new();
        for (ti, (t, &level)) in timelines.iter().zip(&levels).enumerate() {
            let x = mix(t, snr, level);
            let det = detect(&default, &x);
            for tr in &t.truth {
                let ui = t
                    .placed
                    .iter()
                    .rev()
                    .find(|p| p.0 <= tr.0)
                    .map_or(0, |p| p.1);
                let mut s = Score::default();
                s.add(&[*tr], &det, x.len());
                if let (Some(on), Some(off)) = (s.onset.first(), s.offset.first()) {
                    all.push((on.abs().max(off.abs()), *on, *off, ti, ui, tr.0));
                }
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, on, off, ti, ui, at) in all.iter().take(25) {
            println!(
                "  onset {on:+6.0} offset {off:+6.0}  {} @{:.2}s in {}",
                utts[*ui].name,
                *at as f64 / RATE as f64,
                noises[timelines[*ti].noise].name
            );
        }
    }

    // Per-bed breakdown of the default config at 10 dB: where the errors come from.
    println!("\n### default config at 10 dB, per noise bed\n");
    println!("| bed | F1 | precision | recall | median \\|err\\| ms | missed | false | merged |");
    println!("|---|---|---|---|---|---|---|---|");
    for (ni, noise) in noises.iter().enumerate() {
        let mut s = Score::default();
        for (t, &level) in timelines.iter().zip(&levels).filter(|(t, _)| t.noise == ni) {
            let x = mix(t, Some(10.0), level);
            s.add(&t.truth, &detect(&default, &x), x.len());
        }
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.0} | {}/{} | {} | {} |",
            noise.name,
            s.f1(),
            s.precision(),
            s.recall(),
            s.boundary_median(),
            s.missed,
            s.n_true,
            s.false_segs,
            s.merged
        );
    }

    // Cost of the default detector: push_frame over the 10 dB mixes, best of 3.
    let mixes: Vec<Vec<f32>> = timelines
        .iter()
        .zip(&levels)
        .map(|(t, &l)| mix(t, Some(10.0), l))
        .collect();
    let frame_ms = f64::from(default.frame_ms);
    let mut best = f64::MAX;
    let mut frames = 0usize;
    for _ in 0..3 {
        frames = 0;
        let t0 = Instant::now();
        for x in &mixes {
            let mut det = VadDetector::new(&default).expect("valid");
            let fl = det.frame_len();
            for (i, f) in x.chunks_exact(fl).enumerate() {
                std::hint::black_box(det.push_frame(std::hint::black_box(f), (i * fl) as u64));
                frames += 1;
            }
        }
        best = best.min(t0.elapsed().as_nanos() as f64 / frames as f64);
    }
    println!(
        "\ncost: {best:.0} ns per {frame_ms:.0} ms frame ({frames} frames), real-time factor {:.5} ({:.3}% of one core)",
        best / (frame_ms * 1e6),
        100.0 * best / (frame_ms * 1e6)
    );

    println!();
    for (snr, s) in &headline {
        println!(
            "DEFAULT {:>5}: F1 {:.3} P {:.3} R {:.3} median|err| {:.0} ms (onset {:.0}, offset {:.0}) missed {}/{} false {} merged {}",
            snr_label(*snr),
            s.f1(),
            s.precision(),
            s.recall(),
            s.boundary_median(),
            Score::median_abs(&s.onset),
            Score::median_abs(&s.offset),
            s.missed,
            s.n_true,
            s.false_segs,
            s.merged
        );
    }
}

//! `hark-train wake`: a wake-word model from synthetic voices, and `hark-train eval wake`.
//!
//! **Data.** Nobody recorded the phrase, so every synthesiser on the machine says it
//! ([`super::synth`]); confusable phrases ("hey travis", "jarvis", the words swapped) and
//! everyday sentences are synthesised the same way as negatives. Real audio (speech, noise,
//! music, UrbanSound8K) is split by file into train / dev / eval (UrbanSound8K: fold 1 for
//! train and dev, fold 2 for eval); whole voices are held out ([`super::synth::Voice::held_out`]).
//!
//! **Examples** are 1.5 s windows drawn afresh every epoch:
//! - positive: the phrase (speed 0.9-1.1x, room impulse response, gain) ending in the last
//!   0.45 s of the window, over real background at 0-20 dB SNR (or near silence);
//! - the phrase cut short (only its first 35-75% inside the window) -> negative, so the model
//!   waits for the whole phrase;
//! - confusable phrases placed like positives, synthetic sentences, and pure real background
//!   -> negative.
//!
//! **Operating point.** The threshold is chosen on the *dev* split (train voices with fresh
//! augmentation, dev background audio): the lowest grid threshold with no false accept there,
//! and at least 0.5. The held-out eval (other voices, other noise at 10 dB SNR, eval background
//! audio) is only measured and reported: FRR and false accepts per hour at every threshold,
//! a DET curve, and the model card.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::Serialize;

use super::{
    TrainError,
    data::{Us8k, change_speed, convolve, load_16k, peak, rms, write_wav},
    progress,
    synth::{self, Engine, Installed, Synth, Voice},
    write_err,
};
use crate::{
    models::{Manifest, WeightDType},
    nn::wake::{WakeModel, WakeModelConfig, WakeNet, parameter_count},
    stages::wake::{WAKE_KIND, detections},
};

const RATE: f32 = 16_000.0;

/// The `hark-train wake` flags.
#[derive(Debug, Clone)]
pub struct WakeTrainOptions {
    pub phrase: String,
    pub out: PathBuf,
    /// Real audio: directories of noise (augmentation and negatives), speech and music
    /// (negatives), and an UrbanSound8K root (fold 1 train, fold 2 eval).
    pub noise: Vec<PathBuf>,
    pub speech: Vec<PathBuf>,
    pub music: Vec<PathBuf>,
    pub us8k: Option<PathBuf>,
    /// Room impulse responses (files).
    pub rirs: Vec<PathBuf>,
    pub engines: Vec<Engine>,
    pub piper_model: Option<PathBuf>,
    /// Seeded speed/pitch settings per voice.
    pub renditions: usize,
    /// Use at most this many voices per engine (quick runs and tests).
    pub max_voices: Option<usize>,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    pub channels: Vec<usize>,
    /// Synthesis cache.
    pub cache: PathBuf,
    /// Write the held-out evaluation audio here (positives/ and negatives/ as WAV), for
    /// `hark-train eval wake` and the peer bench.
    pub eval_dir: Option<PathBuf>,
    /// Model name in `hark-model.json`.
    pub name: String,
    /// Seconds of each real background file used at most (long files are cut).
    pub max_file_s: f32,
}

impl WakeTrainOptions {
    pub fn new(phrase: &str, out: PathBuf) -> Self {
        Self {
            phrase: phrase.into(),
            out,
            noise: Vec::new(),
            speech: Vec::new(),
            music: Vec::new(),
            us8k: None,
            rirs: Vec::new(),
            engines: Engine::ALL.to_vec(),
            piper_model: None,
            renditions: 2,
            max_voices: None,
            epochs: 30,
            batch: 64,
            lr: 2e-3,
            seed: 1,
            channels: vec![48, 48, 64, 64],
            cache: std::env::temp_dir().join("hark-synth"),
            eval_dir: None,
            name: "wake".into(),
            max_file_s: 600.0,
        }
    }
}

/// FRR and false accepts at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub threshold: f32,
    /// Positives missed / positives.
    pub frr: f32,
    /// False accepts per hour of negative audio.
    pub fa_per_hour: f32,
    pub false_accepts: usize,
}

/// A measurement over positives and negatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WakeEvaluation {
    pub positives: usize,
    pub negative_hours: f32,
    pub threshold: f32,
    pub at_threshold: Point,
    /// Median samples from the phrase's end to the detection, at the threshold (positives with
    /// a known end only).
    pub median_latency_ms: Option<f32>,
    pub curve: Vec<Point>,
    /// Negative files with false accepts at the threshold, and how many (`eval wake` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub false_accept_files: Vec<(String, usize)>,
}

/// What a run produced.
#[derive(Debug)]
pub struct WakeOutcome {
    pub out: PathBuf,
    pub parameters: usize,
    pub bytes: u64,
    pub threshold: f32,
    pub eval: WakeEvaluation,
    /// Confusable clips (held-out voices) on which the phrase fired, of all.
    pub confusable_accepts: (usize, usize),
    pub losses: Vec<f32>,
    pub seconds: f32,
}

/// Real audio split three ways by file.
#[derive(Debug, Default)]
struct Real {
    train: Vec<Vec<f32>>,
    dev: Vec<Vec<f32>>,
    eval: Vec<(PathBuf, Vec<f32>)>,
}

fn split_of(path: &Path) -> u8 {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let h = crate::models::sha256_bytes(name.as_bytes());
    u8::from_str_radix(&h[..2], 16).unwrap_or(0) % 6
}

fn audio_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "rir") {
                continue;
            }
            audio_files(&p, out);
        } else if crate::audio::file::is_audio_path(&p) {
            out.push(p);
        }
    }
}

impl Real {
    /// Files of `dirs`: 2 of 6 to eval, 1 of 6 to dev, the rest to train (by file name).
    fn load(&mut self, dirs: &[PathBuf], max_s: f32, what: &str) -> Result<(), TrainError> {
        let mut files = Vec::new();
        for d in dirs {
            if !d.is_dir() {
                return Err(TrainError::Data {
                    path: d.clone(),
                    reason: "not a directory".into(),
                });
            }
            audio_files(d, &mut files);
        }
        files.sort();
        let pb = progress(files.len() as u64, what);
        for f in files {
            let mut x = load_16k(&f)?;
            x.truncate((max_s * RATE) as usize);
            pb.inc(1);
            if x.len() < 8000 || rms(&x) < 1e-5 {
                continue;
            }
            match split_of(&f) {
                0 | 1 => self.eval.push((f, x)),
                2 => self.dev.push(x),
                _ => self.train.push(x),
            }
        }
        pb.finish_and_clear();
        Ok(())
    }

    fn hours(v: &[Vec<f32>]) -> f32 {
        v.iter().map(Vec::len).sum::<usize>() as f32 / RATE / 3600.0
    }
}

/// Adds `b * g` into `a` starting at `at` (may be negative or run past the end).
fn add_at(a: &mut [f32], b: &[f32], at: isize, g: f32) {
    for (i, &v) in b.iter().enumerate() {
        let j = at + i as isize;
        if j >= 0 && (j as usize) < a.len() {
            a[j as usize] += v * g;
        }
    }
}

/// A `len`-sample stretch of a random clip of `pool` (tiled when short).
fn segment(pool: &[Vec<f32>], len: usize, rng: &mut StdRng) -> Vec<f32> {
    let c = &pool[rng.random_range(0..pool.len())];
    let off = rng.random_range(0..c.len().saturating_sub(len).max(1));
    (0..len).map(|i| c[(off + i) % c.len()]).collect()
}

/// Everything examples are drawn from.
struct Pools {
    pos: Vec<Vec<f32>>,
    /// `pos` convolved with each room impulse response.
    pos_reverb: Vec<Vec<f32>>,
    confusable: Vec<Vec<f32>>,
    sentences: Vec<Vec<f32>>,
    background: Vec<Vec<f32>>,
    noise: Vec<Vec<f32>>,
    /// Real speech (also in `background`): drawn on its own for a share of the negatives, as
    /// talk is what a wake word is most often confused with.
    speech: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Positive,
    Partial,
    Confusable,
    Sentence,
    Background,
}

/// One training window of `len` samples and its label.
fn example(kind: Kind, p: &Pools, len: usize, rng: &mut StdRng) -> (Vec<f32>, f32) {
    // Background: real audio, or near silence (a quiet room), at a random level.
    let real_speech = kind == Kind::Background && !p.speech.is_empty() && rng.random::<f32>() < 0.4;
    let mut w = if real_speech {
        segment(&p.speech, len, rng)
    } else if rng.random::<f32>() < 0.15 || p.background.is_empty() {
        let level = 10f32.powf(rng.random_range(-80.0f32..-50.0) / 20.0);
        (0..len).map(|_| rng.random_range(-level..level)).collect()
    } else {
        let pool = if rng.random::<f32>() < 0.5 && !p.noise.is_empty() {
            &p.noise
        } else {
            &p.background
        };
        segment(pool, len, rng)
    };
    let speech = |rng: &mut StdRng, pool: &[Vec<f32>]| -> Vec<f32> {
        let c = &pool[rng.random_range(0..pool.len())];
        if rng.random::<f32>() < 0.5 {
            change_speed(c, rng.random_range(0.9..1.1))
        } else {
            c.clone()
        }
    };
    let label = if kind == Kind::Positive { 1.0 } else { 0.0 };
    let voiced: Option<(Vec<f32>, isize)> = match kind {
        Kind::Positive | Kind::Confusable | Kind::Partial => {
            let use_reverb =
                kind != Kind::Confusable && !p.pos_reverb.is_empty() && rng.random::<f32>() < 0.3;
            let pool = match kind {
                Kind::Confusable if !p.confusable.is_empty() => &p.confusable,
                Kind::Confusable => &p.sentences,
                _ if use_reverb => &p.pos_reverb,
                _ => &p.pos,
            };
            let c = speech(rng, pool);
            let end = if kind == Kind::Partial {
                // Only the first 35-75% of the phrase is inside the window.
                let cut = (c.len() as f32 * rng.random_range(0.35..0.75)) as isize;
                len as isize + (c.len() as isize - cut)
            } else {
                len as isize - (rng.random_range(0.0..0.45) * RATE) as isize
            };
            Some((c, end))
        }
        Kind::Sentence => {
            let c = speech(rng, &p.sentences);
            let end = rng.random_range(0..len + c.len()) as isize;
            Some((c, end))
        }
        Kind::Background => None,
    };
    if let Some((c, end)) = voiced {
        let snr = rng.random_range(0.0f32..20.0);
        let (pc, pw) = (rms(&c), rms(&w));
        let g = if pc > 0.0 && pw > 1e-4 {
            pw / pc * 10f32.powf(snr / 20.0)
        } else {
            0.1 / pc.max(1e-6)
        };
        add_at(&mut w, &c, end - c.len() as isize, g);
    }
    // Overall level: peak between -35 and -1 dBFS.
    let pk = peak(&w);
    if pk > 0.0 {
        let target = 10f32.powf(rng.random_range(-35.0f32..-1.0) / 20.0);
        for v in &mut w {
            *v *= target / pk;
        }
    }
    (w, label)
}

/// Positive test clips: `lead` of noise, the phrase, `tail` of noise, at `snr` dB; returns the
/// clip and the sample where the phrase ends.
fn test_clip(phrase: &[f32], noise: &[Vec<f32>], snr: f32, rng: &mut StdRng) -> (Vec<f32>, usize) {
    let (lead, tail) = ((1.2 * RATE) as usize, (1.0 * RATE) as usize);
    let len = lead + phrase.len() + tail;
    let mut w = if noise.is_empty() {
        vec![0.0; len]
    } else {
        segment(noise, len, rng)
    };
    let (pc, pw) = (rms(phrase), rms(&w[lead..lead + phrase.len()]));
    let g = if pw > 1e-5 {
        pw / pc.max(1e-6) * 10f32.powf(snr / 20.0)
    } else {
        0.3 / peak(phrase).max(1e-6)
    };
    add_at(&mut w, phrase, lead as isize, g);
    let pk = peak(&w);
    let target = 10f32.powf(rng.random_range(-30.0f32..-3.0) / 20.0);
    for v in &mut w {
        *v *= target / pk.max(1e-9);
    }
    (w, lead + phrase.len())
}

/// The thresholds every curve is measured at.
pub fn threshold_grid() -> Vec<f32> {
    let mut g: Vec<f32> = (1..20).map(|i| i as f32 * 0.05).collect();
    g.extend([0.96, 0.97, 0.98, 0.99, 0.995, 0.999]);
    g
}

/// Score sequences of clips (one per clip, on the stage's schedule).
pub fn score_all(
    model: &WakeModel,
    clips: &[&[f32]],
    what: &str,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let pb = progress(clips.len() as u64, what);
    let mut out = Vec::with_capacity(clips.len());
    for c in clips {
        let frames = model.frontend().frames(c);
        out.push(model.score_frames(&frames, 128)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// How a score sequence maps to stream positions and detections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Sample at which the first score is taken.
    pub first_at: u64,
    /// Samples between scores.
    pub step: u64,
    pub smoothing: usize,
    /// Samples.
    pub refractory: u64,
}

impl Schedule {
    /// The live stage's schedule for `c` (the first score when frame 0 is complete).
    pub fn of(c: &WakeModelConfig) -> Self {
        Self {
            first_at: crate::nn::wake::FRAME as u64,
            step: c.step_samples() as u64,
            smoothing: c.smoothing,
            refractory: (c.refractory_s * RATE) as u64,
        }
    }

    fn fires(&self, scores: &[f32], threshold: f32) -> Vec<u64> {
        detections(
            scores,
            self.first_at,
            self.step,
            threshold,
            self.smoothing,
            self.refractory,
        )
    }
}

/// A detection counts for a positive when it comes after the phrase can have started (1.5 s
/// before its end at most) and within a second of its end.
fn hit(at: u64, end: usize) -> bool {
    at as usize + 24_000 >= end && at as usize <= end + 16_000
}

/// FRR / FA per hour from score sequences: positives (with the sample where each phrase ends,
/// if known; otherwise any detection counts), negatives totalling `negative_s` seconds; at every
/// grid threshold, and at `threshold`.
pub fn summarise(
    sched: Schedule,
    positives: &[(Vec<f32>, Option<usize>)],
    negatives: &[Vec<f32>],
    negative_s: f32,
    threshold: f32,
) -> WakeEvaluation {
    let hours = negative_s / 3600.0;
    let point = |t: f32| {
        let missed = positives
            .iter()
            .filter(|(s, end)| {
                let f = sched.fires(s, t);
                match end {
                    Some(e) => !f.iter().any(|&at| hit(at, *e)),
                    None => f.is_empty(),
                }
            })
            .count();
        let fa: usize = negatives.iter().map(|s| sched.fires(s, t).len()).sum();
        Point {
            threshold: t,
            frr: missed as f32 / positives.len().max(1) as f32,
            fa_per_hour: fa as f32 / hours.max(1e-9),
            false_accepts: fa,
        }
    };
    let curve: Vec<Point> = threshold_grid().into_iter().map(point).collect();
    let mut lat: Vec<f32> = positives
        .iter()
        .filter_map(|(s, end)| {
            let e = (*end)?;
            sched
                .fires(s, threshold)
                .into_iter()
                .find(|&at| hit(at, e))
                .map(|at| (at as f32 - e as f32) / RATE * 1000.0)
        })
        .collect();
    lat.sort_by(f32::total_cmp);
    WakeEvaluation {
        positives: positives.len(),
        negative_hours: hours,
        threshold,
        at_threshold: point(threshold),
        median_latency_ms: lat.get(lat.len() / 2).copied(),
        curve,
        false_accept_files: Vec::new(),
    }
}

/// [`summarise`] of `model`'s scores over the clips.
pub fn measure(
    model: &WakeModel,
    positives: &[(&[f32], Option<usize>)],
    negatives: &[&[f32]],
    threshold: f32,
) -> Result<WakeEvaluation, TrainError> {
    let ps: Vec<&[f32]> = positives.iter().map(|(c, _)| *c).collect();
    let pos_scores = score_all(model, &ps, "score +")?;
    let neg_scores = score_all(model, negatives, "score -")?;
    let seconds = negatives.iter().map(|c| c.len()).sum::<usize>() as f32 / RATE;
    let pos: Vec<(Vec<f32>, Option<usize>)> = pos_scores
        .into_iter()
        .zip(positives.iter().map(|(_, e)| *e))
        .collect();
    Ok(summarise(
        Schedule::of(&model.config),
        &pos,
        &neg_scores,
        seconds,
        threshold,
    ))
}

/// Binary cross-entropy on logits, in the stable form `max(x, 0) - x * y + ln(1 + e^-|x|)`.
/// candle's `binary_cross_entropy_with_logit` takes the log of the sigmoid, which is `ln 0` once
/// a logit is confident enough: the loss turned NaN after ~40 epochs.
pub fn bce_with_logits(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((x.relu()? - (x * y)?)? + soft)?.mean_all()
}

/// The variables' tensors by name (shared by the trainers).
pub(crate) fn var_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .map(|d| {
            d.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one training job and writes the model directory.
pub fn train(opts: &WakeTrainOptions) -> Result<WakeOutcome, TrainError> {
    let started = Instant::now();
    let mut config = WakeModelConfig::new(&opts.phrase);
    config.channels = opts.channels.clone();
    config.validate().map_err(TrainError::Setting)?;
    if opts.epochs == 0 || opts.batch == 0 {
        return Err(TrainError::Setting(
            "epochs and batch must be positive".into(),
        ));
    }
    let phrase = config.phrase.clone();
    let mut rng = StdRng::seed_from_u64(opts.seed);

    // Voices and synthesis.
    let installed = Installed::probe(&opts.engines, opts.piper_model.clone());
    if installed.engines.is_empty() {
        return Err(TrainError::Setting(
            "no speech synthesiser found (espeak-ng, flite, festival, piper); install one".into(),
        ));
    }
    let mut voices = synth::catalogue(&installed, opts.renditions, opts.seed);
    if let Some(max) = opts.max_voices {
        let mut kept = Vec::new();
        for e in Engine::ALL {
            let (held, train): (Vec<Voice>, Vec<Voice>) = voices
                .iter()
                .filter(|v| v.engine == e)
                .cloned()
                .partition(Voice::held_out);
            kept.extend(train.into_iter().take(max));
            kept.extend(held.into_iter().take(max.div_ceil(2)));
        }
        voices = kept;
    }
    let (eval_voices, train_voices): (Vec<Voice>, Vec<Voice>) =
        voices.into_iter().partition(Voice::held_out);
    if train_voices.is_empty() || eval_voices.is_empty() {
        return Err(TrainError::Setting(
            "need both training and held-out voices (install more synthesisers)".into(),
        ));
    }
    tracing::info!(
        engines = ?installed.engines.iter().map(|e| e.name()).collect::<Vec<_>>(),
        train_voices = train_voices.len(),
        held_out_voices = eval_voices.len(),
        "Synthesising."
    );
    let synth = Synth::new(installed.clone(), opts.cache.clone())?;
    let variants = [
        phrase.clone(),
        format!("{phrase}!"),
        format!("{phrase}?"),
        phrase.replacen(' ', ", ", 1),
    ];
    let pos_jobs = |vs: &[Voice], salt: u64| -> Vec<(Voice, String)> {
        vs.iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    v.clone(),
                    variants[(i + salt as usize) % variants.len()].clone(),
                )
            })
            .collect()
    };
    let conf_texts = synth::confusables(&phrase);
    let sent_texts: Vec<String> = synth::SENTENCES
        .iter()
        .map(|s| s.to_string())
        .filter(|s| !s.contains(&phrase))
        .collect();
    let pos_train = synth.run(&pos_jobs(&train_voices, 0), "phrase")?;
    let pos_eval = synth.run(&pos_jobs(&eval_voices, 1), "phrase (held out)")?;
    let conf_train = synth.run(
        &synth::pick_jobs(
            &train_voices,
            &conf_texts,
            train_voices.len() * 2,
            opts.seed ^ 1,
        ),
        "confusable",
    )?;
    let conf_eval = synth.run(
        &synth::pick_jobs(
            &eval_voices,
            &conf_texts,
            eval_voices.len() * 2,
            opts.seed ^ 2,
        ),
        "confusable (held out)",
    )?;
    let sent_train = synth.run(
        &synth::pick_jobs(
            &train_voices,
            &sent_texts,
            train_voices.len(),
            opts.seed ^ 3,
        ),
        "sentences",
    )?;
    let sent_eval = synth.run(
        &synth::pick_jobs(
            &eval_voices,
            &sent_texts,
            eval_voices.len() * 2,
            opts.seed ^ 4,
        ),
        "sentences (held out)",
    )?;
    if pos_train.is_empty() || pos_eval.is_empty() {
        return Err(TrainError::Setting(
            "synthesis produced no phrase audio".into(),
        ));
    }
    let mut durs: Vec<f32> = pos_train
        .iter()
        .map(|u| u.audio.len() as f32 / RATE)
        .collect();
    durs.sort_by(f32::total_cmp);
    config.phrase_s = durs[durs.len() / 2];

    // Real audio.
    let mut noise = Real::default();
    noise.load(&opts.noise, opts.max_file_s, "noise")?;
    let mut speech = Real::default();
    speech.load(&opts.speech, opts.max_file_s, "speech")?;
    let mut other = Real::default();
    other.load(&opts.music, opts.max_file_s, "music")?;
    let speech_train = speech.train.clone();
    other.train.extend(speech.train);
    other.dev.extend(speech.dev);
    other.eval.extend(speech.eval);
    if let Some(root) = &opts.us8k {
        let ds = Us8k::load(root)?;
        let folds: Vec<u32> = {
            let mut f: Vec<u32> = ds.clips.iter().map(|c| c.fold).collect();
            f.sort_unstable();
            f.dedup();
            f
        };
        let eval_fold = folds.iter().copied().max();
        let pb = progress(ds.clips.len() as u64, "urbansound8k");
        for c in &ds.clips {
            let x = load_16k(&c.path)?;
            pb.inc(1);
            if x.len() < 8000 {
                continue;
            }
            if Some(c.fold) == eval_fold && folds.len() > 1 {
                other.eval.push((c.path.clone(), x));
            } else if split_of(&c.path) == 2 {
                other.dev.push(x);
            } else {
                noise.train.push(x);
            }
        }
        pb.finish_and_clear();
    }
    let rirs: Vec<Vec<f32>> = opts
        .rirs
        .iter()
        .map(|p| load_16k(p))
        .collect::<Result<_, _>>()?;
    tracing::info!(
        train_hours = Real::hours(&noise.train) + Real::hours(&other.train),
        dev_hours = Real::hours(&noise.dev) + Real::hours(&other.dev),
        eval_files = noise.eval.len() + other.eval.len(),
        "Real audio loaded."
    );

    let pos: Vec<Vec<f32>> = pos_train.iter().map(|u| u.audio.clone()).collect();
    let pos_reverb = rirs
        .iter()
        .flat_map(|h| pos.iter().map(move |x| convolve(x, h)))
        .collect();
    let mut background = other.train.clone();
    background.extend(noise.train.iter().cloned());
    let pools = Pools {
        pos,
        pos_reverb,
        confusable: conf_train.iter().map(|u| u.audio.clone()).collect(),
        sentences: sent_train.iter().map(|u| u.audio.clone()).collect(),
        background,
        noise: noise.train.clone(),
        speech: speech_train,
    };

    // Model.
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let net = WakeNet::new(vb, &config, opts.seed)?;
    super::sound::seeded_init(&varmap, opts.seed)?;
    let fe = crate::nn::wake::WakeFrontEnd::new(config.n_mels);
    let len = config.context_samples();
    let (cf, m) = (config.context_frames, config.n_mels);
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    // Every training rendition three times per epoch (fresh placement, noise and level each).
    let n_pos = pools.pos.len().max(128) * 3;
    let plan: Vec<(Kind, usize)> = vec![
        (Kind::Positive, n_pos),
        (Kind::Partial, n_pos / 3),
        (Kind::Confusable, n_pos),
        (Kind::Sentence, n_pos / 2),
        (Kind::Background, n_pos * 3 / 2),
    ];
    let mut losses = Vec::new();
    for epoch in 0..opts.epochs {
        // Step decay: the last third at a tenth of the rate.
        if epoch == opts.epochs * 2 / 3 {
            opt.set_learning_rate(opts.lr * 0.1);
        }
        let mut kinds: Vec<Kind> = plan
            .iter()
            .flat_map(|(k, n)| std::iter::repeat_n(*k, *n))
            .collect();
        kinds.shuffle(&mut rng);
        let pb = progress(
            kinds.len() as u64,
            &format!("epoch {}/{}", epoch + 1, opts.epochs),
        );
        let (mut sum, mut count) = (0f32, 0usize);
        for chunk in kinds.chunks(opts.batch) {
            let mut feats = Vec::with_capacity(chunk.len() * cf * m);
            let mut labels = Vec::with_capacity(chunk.len());
            for &k in chunk {
                let (w, l) = example(k, &pools, len, &mut rng);
                feats.extend(fe.frames(&w));
                labels.push(l);
            }
            let x = Tensor::from_vec(feats, (chunk.len(), cf, m), &dev)?;
            let y = Tensor::from_vec(labels, chunk.len(), &dev)?;
            let logits = net.forward_t(&x, true)?;
            let loss = bce_with_logits(&logits, &y)?;
            opt.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()? * chunk.len() as f32;
            count += chunk.len();
            pb.inc(chunk.len() as u64);
            pb.set_message(format!("loss {:.4}", sum / count as f32));
        }
        pb.finish_and_clear();
        let l = sum / count.max(1) as f32;
        if !l.is_finite() {
            return Err(TrainError::Setting(format!(
                "the loss diverged at epoch {} (try a lower --lr)",
                epoch + 1
            )));
        }
        tracing::info!(epoch = epoch + 1, loss = l, "Epoch done.");
        losses.push(l);
    }

    // Write, then reload exactly what was written to measure it.
    std::fs::create_dir_all(&opts.out).map_err(write_err(&opts.out))?;
    let mut tensors = var_tensors(&varmap);
    tensors.extend(net.running_stats());
    let parameters = parameter_count(&tensors);
    let weights = opts.out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    let write_config = |c: &WakeModelConfig| -> Result<(), TrainError> {
        let p = opts.out.join("config.json");
        let text =
            serde_json::to_string_pretty(c).map_err(|e| TrainError::Setting(e.to_string()))?;
        std::fs::write(&p, text + "\n").map_err(write_err(&p))
    };
    write_config(&config)?;
    let mut model = WakeModel::load(&opts.out)?;

    // Operating point on dev: train voices with fresh noise, dev background audio.
    let mut dev_rng = StdRng::seed_from_u64(opts.seed ^ 0xde5);
    let dev_noise: Vec<Vec<f32>> = if noise.dev.is_empty() {
        noise.train.clone()
    } else {
        noise.dev.clone()
    };
    let dev_pos: Vec<(Vec<f32>, usize)> = pools
        .pos
        .iter()
        .step_by(3)
        .map(|p| test_clip(p, &dev_noise, dev_rng.random_range(5.0..15.0), &mut dev_rng))
        .collect();
    let mut dev_neg: Vec<&[f32]> = other
        .dev
        .iter()
        .chain(&noise.dev)
        .map(Vec::as_slice)
        .collect();
    if dev_neg.is_empty() {
        dev_neg = pools
            .background
            .iter()
            .take(20)
            .map(Vec::as_slice)
            .collect();
    }
    let dev_eval = measure(
        &model,
        &dev_pos
            .iter()
            .map(|(c, e)| (c.as_slice(), Some(*e)))
            .collect::<Vec<_>>(),
        &dev_neg,
        0.5,
    )?;
    let threshold = dev_eval
        .curve
        .iter()
        .find(|p| p.threshold >= 0.5 && p.false_accepts == 0)
        .map_or(0.99, |p| p.threshold);
    config.threshold = threshold;
    write_config(&config)?;
    model.config.threshold = threshold;
    tracing::info!(threshold, dev_frr = ?dev_eval.curve.iter().find(|p| p.threshold == threshold).map(|p| p.frr), "Operating point chosen on dev.");

    // Held-out evaluation: other voices, other noise at 10 dB SNR, eval background audio.
    let mut ev_rng = StdRng::seed_from_u64(opts.seed ^ 0xe7a1);
    let eval_noise: Vec<Vec<f32>> = noise.eval.iter().map(|(_, x)| x.clone()).collect();
    let eval_pos: Vec<(Vec<f32>, usize)> = pos_eval
        .iter()
        .map(|u| test_clip(&u.audio, &eval_noise, 10.0, &mut ev_rng))
        .collect();
    let mut eval_neg: Vec<Vec<f32>> = other
        .eval
        .iter()
        .chain(&noise.eval)
        .map(|(_, x)| x.clone())
        .collect();
    // Held-out voices reading sentences, back to back with pauses.
    let mut reading = Vec::new();
    for u in &sent_eval {
        reading.extend_from_slice(&u.audio);
        reading.extend(std::iter::repeat_n(0.0, 8000));
    }
    if !reading.is_empty() {
        eval_neg.push(reading);
    }
    let eval = measure(
        &model,
        &eval_pos
            .iter()
            .map(|(c, e)| (c.as_slice(), Some(*e)))
            .collect::<Vec<_>>(),
        &eval_neg.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        threshold,
    )?;
    let conf_scores = score_all(
        &model,
        &conf_eval
            .iter()
            .map(|u| u.audio.as_slice())
            .collect::<Vec<_>>(),
        "confusables",
    )?;
    let conf_hits = conf_scores
        .iter()
        .filter(|s| !Schedule::of(&model.config).fires(s, threshold).is_empty())
        .count();

    if let Some(dir) = &opts.eval_dir {
        write_eval_set(dir, &eval_pos, &eval_neg)?;
    }
    let bytes = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
    let outcome = WakeOutcome {
        out: opts.out.clone(),
        parameters,
        bytes,
        threshold,
        eval,
        confusable_accepts: (conf_hits, conf_eval.len()),
        losses,
        seconds: started.elapsed().as_secs_f32(),
    };
    plot_det(&opts.out.join("det_curve.png"), &phrase, &outcome.eval)?;
    let p = opts.out.join("evaluation.json");
    std::fs::write(
        &p,
        serde_json::to_string_pretty(&outcome.eval)
            .map_err(|e| TrainError::Setting(e.to_string()))?,
    )
    .map_err(write_err(&p))?;
    let card = model_card(
        opts,
        &config,
        &outcome,
        &installed,
        train_voices.len(),
        eval_voices.len(),
    );
    let p = opts.out.join("MODEL_CARD.md");
    std::fs::write(&p, card).map_err(write_err(&p))?;
    let manifest = Manifest::for_dir(
        &opts.out,
        WAKE_KIND,
        &opts.name,
        "wake-tcnn",
        WeightDType::F32,
    )?;
    manifest.write(&opts.out)?;
    Ok(outcome)
}

/// `dir/positives/NNNN.wav` (with `NNNN.end` holding the phrase's end sample) and
/// `dir/negatives/NNNN.wav`.
fn write_eval_set(
    dir: &Path,
    pos: &[(Vec<f32>, usize)],
    neg: &[Vec<f32>],
) -> Result<(), TrainError> {
    for sub in ["positives", "negatives"] {
        let d = dir.join(sub);
        if d.is_dir() {
            std::fs::remove_dir_all(&d).map_err(write_err(&d))?;
        }
        std::fs::create_dir_all(&d).map_err(write_err(&d))?;
    }
    for (i, (x, end)) in pos.iter().enumerate() {
        write_wav(&dir.join(format!("positives/{i:04}.wav")), x)?;
        let p = dir.join(format!("positives/{i:04}.end"));
        std::fs::write(&p, format!("{end}\n")).map_err(write_err(&p))?;
    }
    for (i, x) in neg.iter().enumerate() {
        write_wav(&dir.join(format!("negatives/{i:04}.wav")), x)?;
    }
    Ok(())
}

/// Evaluation audio: files that each hold the phrase once (with the sample where it ends, from
/// a `NAME.end` file beside it, if any) and files without it.
#[derive(Debug, Default)]
pub struct EvalSet {
    pub positives: Vec<(PathBuf, Vec<f32>, Option<usize>)>,
    pub negatives: Vec<(PathBuf, Vec<f32>)>,
}

impl EvalSet {
    /// Every audio file under `positives` and under each of `negatives`, 16 kHz mono. Positives
    /// without a known end get a second of silence after them, so a phrase at the very end can
    /// still be detected.
    pub fn load(positives: &Path, negatives: &[PathBuf]) -> Result<Self, TrainError> {
        let mut pos_files = Vec::new();
        audio_files(positives, &mut pos_files);
        pos_files.sort();
        let mut neg_files = Vec::new();
        for d in negatives {
            audio_files(d, &mut neg_files);
        }
        neg_files.sort();
        if pos_files.is_empty() || neg_files.is_empty() {
            return Err(TrainError::Setting(
                "need audio files under both --positives and --negatives".into(),
            ));
        }
        let mut set = Self::default();
        for f in pos_files {
            let end = std::fs::read_to_string(f.with_extension("end"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let mut x = load_16k(&f)?;
            if end.is_none() {
                x.extend(std::iter::repeat_n(0.0, 16_000));
            }
            set.positives.push((f, x, end));
        }
        for f in neg_files {
            let x = load_16k(&f)?;
            set.negatives.push((f, x));
        }
        Ok(set)
    }

    /// Seconds of negative audio.
    pub fn negative_s(&self) -> f32 {
        self.negatives.iter().map(|(_, x)| x.len()).sum::<usize>() as f32 / RATE
    }
}

/// `hark-train eval wake`: FRR over the positives and false accepts per hour over the
/// negatives ([`EvalSet::load`]), at the model's threshold (or `threshold`) and across the grid.
pub fn evaluate(
    model_dir: &Path,
    positives: &Path,
    negatives: &[PathBuf],
    threshold: Option<f32>,
) -> Result<WakeEvaluation, TrainError> {
    let model = WakeModel::load(model_dir)?;
    let set = EvalSet::load(positives, negatives)?;
    let t = threshold.unwrap_or(model.config.threshold);
    let pos_scores = score_all(
        &model,
        &set.positives
            .iter()
            .map(|(_, c, _)| c.as_slice())
            .collect::<Vec<_>>(),
        "score +",
    )?;
    let neg_scores = score_all(
        &model,
        &set.negatives
            .iter()
            .map(|(_, c)| c.as_slice())
            .collect::<Vec<_>>(),
        "score -",
    )?;
    let sched = Schedule::of(&model.config);
    let pos: Vec<(Vec<f32>, Option<usize>)> = pos_scores
        .into_iter()
        .zip(set.positives.iter().map(|(_, _, e)| *e))
        .collect();
    let mut ev = summarise(sched, &pos, &neg_scores, set.negative_s(), t);
    ev.false_accept_files = set
        .negatives
        .iter()
        .zip(&neg_scores)
        .filter_map(|((p, _), s)| {
            let n = sched.fires(s, t).len();
            (n > 0).then(|| (p.display().to_string(), n))
        })
        .collect();
    Ok(ev)
}

/// The evaluation as a text table.
pub fn to_text(ev: &WakeEvaluation) -> String {
    let mut s = format!(
        "{} positives, {:.2} h of negative audio\nthreshold {:.3}: FRR {:.1}%, {:.2} false accepts per hour ({}){}\n\nthreshold    FRR   FA/h\n",
        ev.positives,
        ev.negative_hours,
        ev.threshold,
        ev.at_threshold.frr * 100.0,
        ev.at_threshold.fa_per_hour,
        ev.at_threshold.false_accepts,
        ev.median_latency_ms
            .map(|l| format!(", median latency {l:.0} ms after the phrase ends"))
            .unwrap_or_default()
    );
    for (f, n) in &ev.false_accept_files {
        s.push_str(&format!("false accepts: {n} in {f}\n"));
    }
    if !ev.false_accept_files.is_empty() {
        s.push('\n');
    }
    for p in &ev.curve {
        s.push_str(&format!(
            "{:>9.3} {:>5.1}% {:>6.2}\n",
            p.threshold,
            p.frr * 100.0,
            p.fa_per_hour
        ));
    }
    s
}

/// DET curve: FRR against false accepts per hour, one point per threshold.
fn plot_det(path: &Path, phrase: &str, ev: &WakeEvaluation) -> Result<bool, TrainError> {
    use plotters::prelude::*;
    if !super::report::load_font() {
        return Ok(false);
    }
    let err = |e: &dyn std::fmt::Display| super::report::plot_err(path, e);
    let root = BitMapBackend::new(path, (640, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let max_fa = ev
        .curve
        .iter()
        .map(|p| p.fa_per_hour)
        .fold(1.0f32, f32::max);
    let max_frr = ev
        .curve
        .iter()
        .map(|p| p.frr * 100.0)
        .fold(5.0f32, f32::max);
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!(
                "\"{phrase}\": held-out DET ({:.2} h negatives)",
                ev.negative_hours
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f32..max_fa * 1.05, 0f32..max_frr * 1.05)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("false accepts per hour")
        .y_desc("false rejects (%)")
        .draw()
        .map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(
        ev.curve.iter().map(|p| (p.fa_per_hour, p.frr * 100.0)),
        &BLUE,
    ))
    .map_err(|e| err(&e))?;
    c.draw_series(
        ev.curve
            .iter()
            .map(|p| Circle::new((p.fa_per_hour, p.frr * 100.0), 3, BLUE.filled())),
    )
    .map_err(|e| err(&e))?;
    let op = ev.at_threshold;
    c.draw_series([Circle::new(
        (op.fa_per_hour, op.frr * 100.0),
        6,
        RED.filled(),
    )])
    .map_err(|e| err(&e))?
    .label(format!("operating point {:.3}", op.threshold))
    .legend(|(x, y)| Circle::new((x, y), 5, RED.filled()));
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

fn model_card(
    opts: &WakeTrainOptions,
    config: &WakeModelConfig,
    o: &WakeOutcome,
    installed: &Installed,
    n_train: usize,
    n_eval: usize,
) -> String {
    let ev = &o.eval;
    format!(
        "# Wake word \"{phrase}\"\n\n\
         Trained by `hark-train wake` in {secs:.0} s (seed {seed}).\n\n\
         - Network: 1-D CNN over {mels} log-mel bands, channels {ch:?}, kernel {k}, {params} parameters, {bytes} bytes.\n\
         - Scores every {step} ms over {ctx:.2} s of context; smoothing {sm} scores; refractory {re} s; threshold {thr:.3} (chosen on the dev split: the lowest threshold >= 0.5 with no false accept there).\n\
         - Voices: {n_train} synthetic renditions for training, {n_eval} from held-out speakers for evaluation; engines: {engines}.\n\
         - Real audio: noise {noise:?}, speech {speech:?}, music {music:?}, UrbanSound8K {us8k:?}; split by file (2/6 eval, 1/6 dev); UrbanSound8K's last fold is eval.\n\
         - Training: {epochs} epochs, batch {batch}, AdamW lr {lr}; each epoch draws fresh windows: positives (speed 0.9-1.1x, room impulse responses, 0-20 dB SNR over real background, levels -35..-1 dBFS), the phrase cut short, confusables ({conf}...), synthetic sentences and real background as negatives.\n\n\
         ## Held-out evaluation\n\n\
         Held-out voices, each phrase with 1.2 s of held-out noise before and 1.0 s after, at 10 dB SNR; negatives: the eval split of the real audio plus held-out voices reading sentences.\n\n\
         | | value |\n|---|---|\n\
         | positives | {npos} |\n| negative audio | {hours:.2} h |\n\
         | FRR at the threshold | {frr:.1}% |\n| false accepts per hour | {fa:.2} ({fan}) |\n\
         | median latency after the phrase ends | {lat} |\n\
         | confusable clips accepted (held-out voices) | {ch_hit} of {ch_n} |\n\n\
         ![DET curve](det_curve.png)\n\n\
         | threshold | FRR | FA/h |\n|---|---|---|\n{rows}\n\
         Synthetic voices are not people: expect a higher FRR on real speakers, accents and far-field microphones than this table shows.\n",
        phrase = config.phrase,
        secs = o.seconds,
        seed = opts.seed,
        mels = config.n_mels,
        ch = config.channels,
        k = config.kernel,
        params = o.parameters,
        bytes = o.bytes,
        step = config.step_frames * 10,
        ctx = config.context_samples() as f32 / RATE,
        sm = config.smoothing,
        re = config.refractory_s,
        thr = o.threshold,
        engines = installed
            .engines
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>()
            .join(", "),
        noise = opts.noise,
        speech = opts.speech,
        music = opts.music,
        us8k = opts.us8k,
        epochs = opts.epochs,
        batch = opts.batch,
        lr = opts.lr,
        conf = synth::confusables(&config.phrase)
            .iter()
            .take(4)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        npos = ev.positives,
        hours = ev.negative_hours,
        frr = ev.at_threshold.frr * 100.0,
        fa = ev.at_threshold.fa_per_hour,
        fan = ev.at_threshold.false_accepts,
        lat = ev
            .median_latency_ms
            .map_or("-".into(), |l| format!("{l:.0} ms")),
        ch_hit = o.confusable_accepts.0,
        ch_n = o.confusable_accepts.1,
        rows = ev
            .curve
            .iter()
            .map(|p| format!(
                "| {:.3} | {:.1}% | {:.2} |",
                p.threshold,
                p.frr * 100.0,
                p.fa_per_hour
            ))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_have_the_window_length_and_positives_end_inside() {
        let tone: Vec<f32> = (0..12_000).map(|i| (i as f32 * 0.2).sin() * 0.5).collect();
        let pools = Pools {
            pos: vec![tone.clone()],
            pos_reverb: Vec::new(),
            confusable: vec![tone.clone()],
            sentences: vec![tone.clone()],
            background: vec![vec![0.01; 40_000]],
            noise: Vec::new(),
            speech: vec![vec![0.02; 30_000]],
        };
        let mut rng = StdRng::seed_from_u64(3);
        for k in [
            Kind::Positive,
            Kind::Partial,
            Kind::Confusable,
            Kind::Sentence,
            Kind::Background,
        ] {
            let (w, l) = example(k, &pools, 24_240, &mut rng);
            assert_eq!(w.len(), 24_240);
            assert_eq!(l, f32::from(k == Kind::Positive));
            assert!(w.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
        }
    }

    #[test]
    fn the_seeded_network_learns() {
        let cfg = WakeModelConfig::new("x");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = WakeNet::new(vb, &cfg, 1).unwrap();
        super::super::sound::seeded_init(&varmap, 1).unwrap();
        let loss = crate::nn::wake::tests::toy_fit(&net, &varmap, &cfg, 80);
        assert!(loss < 0.2, "loss {loss}");
    }

    #[test]
    fn the_loss_is_finite_for_confident_logits() {
        let x = Tensor::new(&[200f32, -200.0, 0.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0f32, 1.0, 1.0], &Device::Cpu).unwrap();
        let l = bce_with_logits(&x, &y).unwrap().to_scalar::<f32>().unwrap();
        // (200 + 200 + ln 2) / 3.
        assert!((l - (400.0 + 2f32.ln()) / 3.0).abs() < 1e-3, "{l}");
    }
}

//! `hark-train notes-onset`: trains the note-onset detector ([`crate::nn::onset`]) that the
//! monophonic note segmenter cuts at.
//!
//! Data: audio files with reference note files of the same stem (`x.flac` + `x.tsv`, as
//! `hark-train eval notes` pairs them); `benches/notes_renders.py` renders such melodies from
//! the music21 corpus with fluidsynth. Each file is used clean and in `copies - 1` augmented
//! copies (real background noise at 5-35 dB SNR, level -24..+6 dB, and with `--room-p` a
//! synthetic room's reverberation first): the detector must fire on notes, not on the noise a
//! phone records with them, and on a note under the tail of the one before it in a room.
//!
//! Targets: every reference onset marks its frame 1, the frames next to it 0.6 and the ones
//! after those 0.2 (mir_eval accepts an onset within 50 ms, so a peak two frames off is still
//! right, and the soft edges keep the network from being punished for it). The loss is binary
//! cross-entropy with onset frames weighted up (they are ~3% of frames).
//!
//! After every epoch the development set (`--dev`: other tunes, other instruments) is
//! transcribed at thresholds 0.2..0.8; the epoch and threshold with the best note F1 (onset and
//! pitch, mir_eval conventions) from the whole transcriber are kept: what the user gets, not a
//! frame score. The report lists development F1 with and without the detector.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{
    TrainError,
    data::{Augment, AugmentConfig, NoiseBank},
    report::{self, EpochStats},
    write_err,
};
use crate::{
    models::{Manifest, WeightDType},
    nn::onset::{OnsetModel, OnsetModelConfig, OnsetNet, n_frames},
    notes::{
        Note,
        eval::{self, Aggregate},
        io,
        pitch::PitchFrame,
        track::{MonoParams, Segmenter},
    },
};

/// What `hark-train notes-onset` was asked to do.
#[derive(Debug, Clone)]
pub struct OnsetTrainOptions {
    /// Training audio, and reference notes by stem (default: the audio directory's `notes/`).
    pub audio: PathBuf,
    pub notes: Option<PathBuf>,
    /// Development set (audio, notes) that chooses the threshold and is reported each epoch.
    pub dev: Option<(PathBuf, PathBuf)>,
    /// Background noise for augmentation.
    pub noise: Vec<PathBuf>,
    pub out: PathBuf,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub batch: usize,
    /// Frames per training crop.
    pub crop: usize,
    pub lr: f64,
    /// Versions of each training file (the first clean, the rest augmented).
    pub copies: usize,
    /// Share of the augmented versions played in a synthetic room first.
    pub room_p: f32,
    pub seed: u64,
    pub config: OnsetModelConfig,
}

impl OnsetTrainOptions {
    pub fn new(audio: PathBuf, out: PathBuf) -> Self {
        Self {
            audio,
            notes: None,
            dev: None,
            noise: Vec::new(),
            out,
            epochs: 12,
            steps_per_epoch: 300,
            batch: 24,
            crop: 256,
            lr: 2e-3,
            copies: 2,
            room_p: 0.0,
            seed: 7,
            config: OnsetModelConfig::default(),
        }
    }
}

/// One training or development file, analysed.
struct Item {
    /// `[frames][n_mels]` log-mel.
    mel: Vec<f32>,
    /// Soft onset targets per frame.
    target: Vec<f32>,
    /// Only for evaluation: pitch frames and the reference notes.
    pitch: Vec<PitchFrame>,
    notes: Vec<Note>,
}

/// What a training run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OnsetOutcome {
    pub parameters: usize,
    pub threshold: f32,
    pub epochs: Vec<EpochStats>,
    /// Development note F1 (macro over files, no offset) without and with the detector.
    pub dev_f1_rules: Option<f32>,
    pub dev_f1_model: Option<f32>,
    /// The epoch whose weights were kept (0-based).
    pub best_epoch: usize,
    pub train_files: usize,
    pub dev_files: usize,
}

fn data_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Audio files of `audio` with a note file of the same stem in `notes`.
fn pairs(audio: &Path, notes: &Path) -> Result<Vec<(String, PathBuf, PathBuf)>, TrainError> {
    let a = super::notes::files_by_stem(audio, crate::audio::file::EXTENSIONS)?;
    let n = super::notes::files_by_stem(notes, io::NOTE_EXTENSIONS)?;
    let out: Vec<_> = a
        .into_iter()
        .filter_map(|(s, p)| n.get(&s).map(|r| (s, p, r.clone())))
        .collect();
    if out.is_empty() {
        return Err(data_err(
            audio,
            format!(
                "no audio file has a note file of the same stem in {}",
                notes.display()
            ),
        ));
    }
    Ok(out)
}

/// Soft onset targets for `frames` frames of 10 ms.
pub fn targets(notes: &[Note], frames: usize) -> Vec<f32> {
    let mut y = vec![0f32; frames];
    for n in notes {
        let k = (n.start / 0.01).round() as i64;
        for (d, v) in [(0i64, 1.0f32), (1, 0.6), (2, 0.2)] {
            for i in [k - d, k + d] {
                if i >= 0 && (i as usize) < frames {
                    y[i as usize] = y[i as usize].max(v);
                }
            }
        }
    }
    y
}

fn analyse(x: &[f32], notes: Vec<Note>, cfg: &OnsetModelConfig, with_pitch: bool) -> Item {
    let fe = crate::nn::onset::OnsetFrontEnd::new(cfg);
    let mel = fe.frames(x);
    let t = n_frames(x.len());
    let pitch = if with_pitch {
        crate::notes::pitch::track(x, MonoParams::default().pitch)
    } else {
        Vec::new()
    };
    Item {
        target: targets(&notes, t),
        mel,
        pitch,
        notes,
    }
}

/// How many versions of each file a set holds (the first clean), and the share of the
/// augmented ones played in a synthetic room.
#[derive(Debug, Clone, Copy)]
struct Versions {
    copies: usize,
    room_p: f32,
}

/// Loads, augments and analyses a set, two files at a time.
fn load_set(
    list: &[(String, PathBuf, PathBuf)],
    Versions { copies, room_p }: Versions,
    noise: &NoiseBank,
    cfg: &OnsetModelConfig,
    seed: u64,
    with_pitch: bool,
    what: &str,
) -> Result<Vec<Item>, TrainError> {
    let pb = super::progress(list.len() as u64, what);
    let results: Vec<Result<Vec<Item>, TrainError>> = std::thread::scope(|s| {
        let halves: Vec<_> = list
            .chunks(list.len().div_ceil(2).max(1))
            .enumerate()
            .map(|(h, part)| {
                let pb = pb.clone();
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (i, (_, audio, notes)) in part.iter().enumerate() {
                        let x = super::data::load_16k(audio)?;
                        let reference = io::read_notes(notes)?;
                        if !reference.timed {
                            return Err(data_err(notes, "notes have no onset times"));
                        }
                        let mut aug = Augment::new(
                            AugmentConfig {
                                max_shift_s: 0.0,
                                gain_db: (-24.0, 6.0),
                                noise_p: 0.8,
                                snr_db: (5.0, 35.0),
                                speed_p: 0.0,
                                speed: (1.0, 1.0),
                                room_p,
                            },
                            noise,
                            seed ^ ((h as u64) << 32) ^ i as u64,
                        );
                        for c in 0..copies.max(1) {
                            let y = if c == 0 { x.clone() } else { aug.apply(&x) };
                            out.push(analyse(
                                &y,
                                reference.notes.clone(),
                                cfg,
                                with_pitch && c == 0,
                            ));
                        }
                        pb.inc(1);
                    }
                    Ok(out)
                })
            })
            .collect();
        halves
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(TrainError::Setting("a loader thread panicked".into())))
            })
            .collect()
    });
    pb.finish_and_clear();
    let mut items = Vec::new();
    for r in results {
        items.extend(r?);
    }
    Ok(items)
}

/// Per-band mean and spread of the training frames.
fn band_stats(items: &[Item], m: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut sum, mut sq, mut n) = (vec![0f64; m], vec![0f64; m], 0usize);
    for it in items {
        for row in it.mel.chunks_exact(m) {
            for (j, v) in row.iter().enumerate() {
                sum[j] += f64::from(*v);
                sq[j] += f64::from(*v) * f64::from(*v);
            }
            n += 1;
        }
    }
    let n = n.max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, mu)| ((q / n - f64::from(*mu).powi(2)).max(1e-4)).sqrt() as f32)
        .collect();
    (mean, std)
}

/// Weighted binary cross-entropy on logits (stable form); onset frames count `pos_weight` x.
fn weighted_bce(x: &Tensor, y: &Tensor, pos_weight: f64) -> candle_core::Result<Tensor> {
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let l = ((x.relu()? - (x * y)?)? + soft)?;
    let w = ((y * (pos_weight - 1.0))? + 1.0)?;
    (l * &w)?.sum_all()? / w.sum_all()?
}

/// Onset probabilities of whole items from the training network.
fn probabilities(net: &OnsetNet, it: &Item, m: usize) -> Result<Vec<f32>, TrainError> {
    let t = it.mel.len() / m;
    let x = Tensor::from_slice(&it.mel, (1, t, m), &Device::Cpu)?;
    let p = candle_nn::ops::sigmoid(&net.forward(&x)?)?;
    Ok(p.squeeze(0)?.to_vec1()?)
}

/// The transcriber's notes from already-tracked pitch frames and (optionally) onset
/// probabilities.
pub fn segment(frames: &[PitchFrame], probs: Option<(&[f32], f32)>) -> Vec<Note> {
    let p = MonoParams::default();
    let frame_s = p.pitch.hop as f64 / f64::from(p.pitch.sample_rate);
    let mut seg = match probs {
        Some((probs, t)) => {
            let mut s = Segmenter::with_onsets(p.segment, frame_s, t);
            s.push_onsets(probs);
            s
        }
        None => Segmenter::new(p.segment, frame_s),
    };
    let mut notes = seg.push(frames);
    notes.extend(seg.finish());
    notes
}

/// Macro note F1 (onset + pitch) of `items` at threshold `t` (None: the rules).
fn note_f1(items: &[Item], probs: &[Vec<f32>], t: Option<f32>) -> f32 {
    note_f1_refs(&items.iter().collect::<Vec<_>>(), probs, t)
}

fn note_f1_refs(items: &[&Item], probs: &[Vec<f32>], t: Option<f32>) -> f32 {
    let scores: Vec<_> = items
        .iter()
        .zip(probs)
        .map(|(it, p)| {
            let est = segment(&it.pitch, t.map(|t| (p.as_slice(), t)));
            eval::evaluate(&it.notes, &est, false)
        })
        .collect();
    Aggregate::of(scores.iter()).macro_f1 as f32
}

/// The threshold (0.2..0.8) with the best macro note F1, and that F1.
fn best_threshold(items: &[Item], probs: &[Vec<f32>]) -> (f32, f32) {
    let mut best = (f32::MIN, 0.5);
    for i in 0..13 {
        let t = 0.2 + 0.05 * i as f32;
        let f = note_f1(items, probs, Some(t));
        if f > best.0 {
            best = (f, t);
        }
    }
    best
}

/// Copies of the variables' current values (the optimiser keeps updating the variables).
fn snapshot(varmap: &VarMap) -> Result<HashMap<String, Tensor>, TrainError> {
    super::wake::var_tensors(varmap)
        .into_iter()
        .map(|(k, t)| Ok((k, t.copy()?)))
        .collect()
}

/// Runs one training job and writes the model directory (`config.json`, `model.safetensors`,
/// `MODEL_CARD.md`, `curves.png`).
pub fn train(opts: &OnsetTrainOptions) -> Result<OnsetOutcome, TrainError> {
    let cfg = opts.config.clone();
    cfg.validate().map_err(TrainError::Setting)?;
    if opts.batch == 0 || opts.crop < 32 || opts.epochs == 0 || opts.steps_per_epoch == 0 {
        return Err(TrainError::Setting(
            "batch, epochs and steps must be positive and crops at least 32 frames".into(),
        ));
    }
    let notes_dir = opts
        .notes
        .clone()
        .unwrap_or_else(|| opts.audio.join("notes"));
    let train_list = pairs(&opts.audio, &notes_dir)?;
    let dev_list = match &opts.dev {
        Some((a, n)) => pairs(a, n)?,
        None => Vec::new(),
    };
    let noise = NoiseBank::load(&opts.noise)?;
    let m = cfg.n_mels;
    let train = load_set(
        &train_list,
        Versions {
            copies: opts.copies,
            room_p: opts.room_p,
        },
        &noise,
        &cfg,
        opts.seed,
        true,
        "train data",
    )?;
    // Clean training files with pitch frames: the training-side note F1 of each epoch.
    let train_eval: Vec<&Item> = train
        .iter()
        .filter(|it| !it.pitch.is_empty())
        .take(30)
        .collect();
    let dev = load_set(
        &dev_list,
        Versions {
            copies: 1,
            room_p: 0.0,
        },
        &noise,
        &cfg,
        opts.seed,
        true,
        "dev data",
    )?;
    // Crops need whole windows: files shorter than a crop are padded by the sampler.
    let (mean, std) = band_stats(&train, m);

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = OnsetNet::new(vb, &cfg)?;
    super::sound::seeded_init(&varmap, opts.seed)?;
    let vars: Vec<Var> = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Setting("variable map poisoned".into()))?;
        data["norm.mean"].set(&Tensor::from_slice(&mean, m, &Device::Cpu)?)?;
        data["norm.std"].set(&Tensor::from_slice(&std, m, &Device::Cpu)?)?;
        let mut names: Vec<&String> = data.keys().filter(|k| !k.starts_with("norm.")).collect();
        names.sort();
        names.into_iter().map(|k| data[k].clone()).collect()
    };
    let parameters: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut epochs = Vec::new();
    // (development F1, threshold, epoch, weights) of the best epoch so far.
    let mut best: Option<(f32, f32, usize, HashMap<String, Tensor>)> = None;
    let total = opts.epochs * opts.steps_per_epoch;
    let pb = super::progress(total as u64, "training");
    let crop = opts.crop;
    for epoch in 0..opts.epochs {
        // Cosine decay to a tenth of the rate.
        let frac = epoch as f64 / opts.epochs.max(1) as f64;
        opt.set_learning_rate(
            opts.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())),
        );
        let mut loss_sum = 0f32;
        for _ in 0..opts.steps_per_epoch {
            let mut xs = Vec::with_capacity(opts.batch * crop * m);
            let mut ys = Vec::with_capacity(opts.batch * crop);
            for _ in 0..opts.batch {
                let it = &train[rng.random_range(0..train.len())];
                let t = it.target.len();
                let start = if t > crop {
                    rng.random_range(0..=t - crop)
                } else {
                    0
                };
                for k in start..start + crop {
                    if k < t {
                        xs.extend_from_slice(&it.mel[k * m..(k + 1) * m]);
                        ys.push(it.target[k]);
                    } else {
                        // Past the end of a short file: silence (the front end's zeros).
                        xs.extend(std::iter::repeat_n((1e-6f32).ln(), m));
                        ys.push(0.0);
                    }
                }
            }
            let x = Tensor::from_vec(xs, (opts.batch, crop, m), &Device::Cpu)?;
            let y = Tensor::from_vec(ys, (opts.batch, crop), &Device::Cpu)?;
            let loss = weighted_bce(&net.forward(&x)?, &y, 8.0)?;
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()?;
            pb.inc(1);
        }
        let train_probs = train_eval
            .iter()
            .map(|it| probabilities(&net, it, m))
            .collect::<Result<Vec<_>, _>>()?;
        let train_f1 = note_f1_refs(&train_eval, &train_probs, Some(cfg.threshold));
        // Development F1 at its best threshold; the best epoch's weights are the model
        // (the detector can learn the training instruments' timbres past the point where it
        // helps on other instruments).
        let dev_f1 = if dev.is_empty() {
            None
        } else {
            let probs = dev
                .iter()
                .map(|it| probabilities(&net, it, m))
                .collect::<Result<Vec<_>, _>>()?;
            let (f1, t) = best_threshold(&dev, &probs);
            if best.as_ref().is_none_or(|b| f1 > b.0) {
                best = Some((f1, t, epoch, snapshot(&varmap)?));
            }
            Some(f1)
        };
        let train_loss = loss_sum / opts.steps_per_epoch as f32;
        pb.set_message(format!(
            "loss {train_loss:.4} dev F1 {}",
            dev_f1.map_or("-".into(), |f| format!("{f:.3}"))
        ));
        tracing::info!(epoch, train_loss, ?dev_f1, "Epoch done.");
        epochs.push(EpochStats {
            epoch,
            train_loss,
            train_accuracy: train_f1,
            test_accuracy: dev_f1,
        });
    }
    pb.finish_and_clear();

    // The best epoch's weights and threshold (without a development set: the last epoch at the
    // configured threshold).
    let mut config = cfg.clone();
    let (mut dev_f1_rules, mut dev_f1_model, mut best_epoch) = (None, None, opts.epochs - 1);
    let tensors = match best {
        Some((f1, t, epoch, tensors)) => {
            config.threshold = t;
            dev_f1_model = Some(f1);
            best_epoch = epoch;
            dev_f1_rules = Some(note_f1(&dev, &vec![Vec::new(); dev.len()], None));
            tensors
        }
        None => super::wake::var_tensors(&varmap),
    };
    std::fs::create_dir_all(&opts.out).map_err(write_err(&opts.out))?;
    // The saved model must load and agree with what was trained.
    OnsetModel::from_tensors(config.clone(), tensors.clone()).map_err(TrainError::Setting)?;
    let weights = opts.out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    let cfg_path = opts.out.join("config.json");
    let json =
        serde_json::to_string_pretty(&config).map_err(|e| TrainError::Setting(e.to_string()))?;
    std::fs::write(&cfg_path, json + "\n").map_err(write_err(&cfg_path))?;
    let outcome = OnsetOutcome {
        parameters,
        threshold: config.threshold,
        epochs,
        dev_f1_rules,
        dev_f1_model,
        best_epoch,
        train_files: train_list.len(),
        dev_files: dev_list.len(),
    };
    report::plot_curves(
        &opts.out.join("curves.png"),
        "note-onset detector: training loss, development note F1",
        &outcome.epochs,
    )?;
    let md = report_markdown(opts, &outcome);
    let md_path = opts.out.join("MODEL_CARD.md");
    std::fs::write(&md_path, md).map_err(write_err(&md_path))?;
    let name = opts
        .out
        .file_name()
        .map_or(crate::notes::ONSET_MODEL.into(), |n| {
            n.to_string_lossy().into_owned()
        });
    Manifest::for_dir(&opts.out, "notes", &name, "onset-cnn", WeightDType::F32)?
        .write(&opts.out)?;
    Ok(outcome)
}

fn report_markdown(opts: &OnsetTrainOptions, o: &OnsetOutcome) -> String {
    let f = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut s = format!(
        "# Note-onset detector\n\n\
         - Training data: {} files from `{}` ({} copies each, the first clean; noise from {:?}; \
         {:.0} % of the augmented copies in a synthetic room)\n\
         - Development data: {} files{}\n\
         - {} parameters; {} epochs x {} steps, batch {} x {} frames, AdamW lr {} (cosine)\n\
         - Weights of epoch {} and threshold **{:.2}**, both chosen by development note F1\n\n\
         | development note F1 (macro, onset + pitch) | value |\n|---|---|\n\
         | flux and level rules (no detector) | {} |\n| with the detector | **{}** |\n\n\
         | epoch | training loss | training F1 (30 clean files, threshold 0.5) | development F1 (best threshold) |\n|---|---|---|---|\n",
        o.train_files,
        opts.audio.display(),
        opts.copies,
        opts.noise,
        100.0 * opts.room_p,
        o.dev_files,
        opts.dev
            .as_ref()
            .map_or(String::new(), |(a, _)| format!(" from `{}`", a.display())),
        o.parameters,
        opts.epochs,
        opts.steps_per_epoch,
        opts.batch,
        opts.crop,
        opts.lr,
        o.best_epoch + 1,
        o.threshold,
        f(o.dev_f1_rules),
        f(o.dev_f1_model),
    );
    for e in &o.epochs {
        s += &format!(
            "| {} | {:.4} | {:.3} | {} |\n",
            e.epoch + 1,
            e.train_loss,
            e.train_accuracy,
            f(e.test_accuracy)
        );
    }
    // Each line ends in `\` so that the next line's indentation is not part of the text (an
    // indented paragraph is a code block in Markdown).
    s += "\n![training curves](curves.png)\n\n\
          The development set chose the epoch and the threshold, so its F1 is optimistic: judge \
          the model on other audio with `hark-train eval notes --audio DIR --notes DIR \
          --onset-model DIR` (real singing above all; a detector trained on rendered \
          instruments cuts it alongside the flux and level rules, not instead of them).\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_soft_around_onsets() {
        let n = |s: f64| Note {
            midi: 60,
            cents: 0.0,
            start: s,
            end: s + 0.2,
            velocity: 80,
            confidence: 1.0,
        };
        let y = targets(&[n(0.0), n(0.1)], 20);
        assert_eq!(y[0], 1.0);
        assert_eq!(y[1], 0.6);
        assert_eq!(y[2], 0.2);
        assert_eq!(y[5], 0.0);
        assert_eq!(y[10], 1.0);
        assert_eq!(y[8], 0.2);
        assert_eq!(y[12], 0.2);
    }
}

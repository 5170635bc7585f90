//! The wake-word classifier: a tiny 1-D CNN over the last ~1.5 s of log-mel frames that says
//! whether one phrase ("hey jarvis") has just been spoken.
//!
//! **Front end** ([`WakeFrontEnd`]): 16 kHz audio, 25 ms Hann frames every 10 ms (400-point
//! FFT), 40 Slaney mel bands over 60-7600 Hz, `ln(mel + 1e-6)`. Every frame depends only on its
//! own 400 samples (no centring, no per-call normalisation, unlike Whisper's front end), so a
//! stream computed 80 ms at a time gives exactly the frames of the whole file: the trainer, the
//! evaluator and the live stage see the same numbers.
//!
//! **Network** ([`WakeNet`]): mel bands are the input channels of a stack of 1-D convolutions
//! over time (TC-ResNet's idea: cheap, and time is what matters for a phrase): an input batch
//! norm (per-band mean and scale, so the raw log energies need no fixed offset), then per block
//! conv(k, stride 2) -> batch norm -> ReLU, then mean and max over time, dropout, and one logit.
//! With the default channels `[48, 48, 64, 64]` on 150 frames it has ~60 k parameters and costs
//! ~1.7 M multiply-adds per score; scored every 80 ms that is ~21 M multiply-adds a second.

use std::{collections::HashMap, path::Path};

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{NnError, sound::SeededDropout};
use crate::dsp::mel::{FrameLogMel, FrameLogMelScratch};

/// Samples per second the model expects.
pub const SAMPLE_RATE: u32 = 16_000;
/// Frame length (25 ms) and FFT size.
pub const FRAME: usize = 400;
/// Frame advance (10 ms).
pub const HOP: usize = 160;

/// What a wake model directory's `config.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeModelConfig {
    /// The phrase, lower case ("hey jarvis"); events carry it.
    pub phrase: String,
    pub n_mels: usize,
    /// Frames of context per score (150 = 1.5 s).
    pub context_frames: usize,
    /// Frames between scores (8 = 80 ms).
    pub step_frames: usize,
    /// Output channels of the conv blocks (each halves the time axis).
    pub channels: Vec<usize>,
    pub kernel: usize,
    /// The operating point chosen by the trainer (smoothed score at which the phrase fires).
    pub threshold: f32,
    /// Scores averaged before thresholding (posterior smoothing).
    pub smoothing: usize,
    /// Seconds after a detection during which the phrase cannot fire again.
    pub refractory_s: f32,
    /// Median duration of the phrase in the training voices, seconds: events report
    /// `start = end - phrase_s`.
    pub phrase_s: f32,
}

impl WakeModelConfig {
    pub fn new(phrase: &str) -> Self {
        Self {
            phrase: normalise_phrase(phrase),
            n_mels: 40,
            context_frames: 150,
            step_frames: 8,
            channels: vec![48, 48, 64, 64],
            kernel: 5,
            threshold: 0.5,
            smoothing: 2,
            refractory_s: 2.0,
            phrase_s: 0.8,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.phrase.trim().is_empty() {
            return Err("the phrase is empty".into());
        }
        if !(8..=128).contains(&self.n_mels) {
            return Err(format!("n_mels {} is outside 8..=128", self.n_mels));
        }
        if !(20..=400).contains(&self.context_frames) {
            return Err(format!(
                "context_frames {} is outside 20..=400",
                self.context_frames
            ));
        }
        if !(1..=50).contains(&self.step_frames) {
            return Err(format!(
                "step_frames {} is outside 1..=50",
                self.step_frames
            ));
        }
        if self.channels.is_empty() || self.channels.len() > 8 {
            return Err("channels must list 1 to 8 blocks".into());
        }
        if self.channels.iter().any(|&c| c == 0 || c > 512) {
            return Err("every channel count must be within 1..=512".into());
        }
        if !(1..=15).contains(&self.kernel) || self.kernel.is_multiple_of(2) {
            return Err("kernel must be odd, 1..=15".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err("threshold must be within 0..=1".into());
        }
        if !(1..=10).contains(&self.smoothing) {
            return Err("smoothing must be within 1..=10".into());
        }
        if !(0.0..=30.0).contains(&self.refractory_s) || !(0.0..=10.0).contains(&self.phrase_s) {
            return Err("refractory_s or phrase_s out of range".into());
        }
        Ok(())
    }

    /// Samples the context covers.
    pub fn context_samples(&self) -> usize {
        (self.context_frames - 1) * HOP + FRAME
    }

    /// Samples between scores.
    pub fn step_samples(&self) -> usize {
        self.step_frames * HOP
    }
}

/// Lower case, letters, digits and apostrophes, single spaces: how phrases are compared.
pub fn normalise_phrase(s: &str) -> String {
    s.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The log-mel front end (see the module docs). `Send + Sync`; scratch is per caller.
#[derive(Debug, Clone)]
pub struct WakeFrontEnd {
    mel: FrameLogMel,
}

/// Scratch buffers for [`WakeFrontEnd::frame`].
pub type FrontEndScratch = FrameLogMelScratch;

impl WakeFrontEnd {
    pub fn new(n_mels: usize) -> Self {
        Self {
            mel: FrameLogMel::new(SAMPLE_RATE, FRAME, HOP, n_mels, 60.0, 7600.0),
        }
    }

    pub fn n_mels(&self) -> usize {
        self.mel.n_mels()
    }

    pub fn make_scratch(&self) -> FrontEndScratch {
        self.mel.make_scratch()
    }

    /// One frame (`FRAME` samples) -> `n_mels` log energies in `out`.
    pub fn frame(&self, samples: &[f32], scratch: &mut FrontEndScratch, out: &mut [f32]) {
        self.mel.frame(samples, scratch, out);
    }

    /// Frames of a whole clip, row-major `[frames][n_mels]`; frame `t` covers samples
    /// `t * HOP .. t * HOP + FRAME`.
    pub fn frames(&self, samples: &[f32]) -> Vec<f32> {
        let n = n_frames(samples.len());
        let mut out = vec![0f32; n * self.n_mels()];
        let mut scratch = self.make_scratch();
        for (t, row) in out.chunks_exact_mut(self.n_mels()).enumerate() {
            self.frame(&samples[t * HOP..t * HOP + FRAME], &mut scratch, row);
        }
        out
    }
}

/// Frames in `n` samples.
pub fn n_frames(n: usize) -> usize {
    if n < FRAME { 0 } else { (n - FRAME) / HOP + 1 }
}

/// A 1-D convolution without bias as one matrix product over gathered taps (im2col).
///
/// Written here because candle 0.11's CPU `conv1d` computes wrong kernel gradients (its
/// backward pass hands transposed, non-contiguous views to the forward kernel; a finite-
/// difference check is off by more than 100%): a model built on it did not learn. Gathering
/// taps with `narrow`/`reshape` and one `matmul` uses only ops whose gradients are right
/// (`grad_probe` below checks), for the same multiply-adds.
#[derive(Debug, Clone)]
pub struct TapConv1d {
    /// `[out, in, k]`.
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl TapConv1d {
    pub fn new(
        vb: VarBuilder<'_>,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let bound = 1.0 / ((c_in * k) as f64).sqrt();
        let weight = vb.get_with_hints(
            (c_out, c_in, k),
            "weight",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            weight,
            stride,
            padding: k / 2,
        })
    }
}

impl TapConv1d {
    /// Training: the tap gather (right gradients). Inference: candle's own `conv1d` on a
    /// contiguous input (same numbers, checked in `grad_probe`, and ~2x faster per step).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train {
            self.forward(x)
        } else {
            x.contiguous()?
                .conv1d(&self.weight, self.padding, self.stride, 1, 1)
        }
    }
}

impl Module for TapConv1d {
    /// `[n, in, t]` -> `[n, out, (t + 2 * pad - k) / stride + 1]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, t) = x.dims3()?;
        let (out, _, k) = self.weight.dims3()?;
        let s = self.stride;
        let x = x.pad_with_zeros(2, self.padding, self.padding)?;
        let t_out = (t + 2 * self.padding - k) / s + 1;
        let mut taps = Vec::with_capacity(k);
        for j in 0..k {
            // Samples j, j + s, ..., j + s * (t_out - 1).
            let v = x.narrow(2, j, s * (t_out - 1) + 1)?;
            let v = if s > 1 {
                v.pad_with_zeros(2, 0, s - 1)?
                    .reshape((n, c, t_out, s))?
                    .narrow(3, 0, 1)?
                    .squeeze(3)?
            } else {
                v
            };
            taps.push(v);
        }
        // [n, k * c, t_out], tap-major, against the weight as [out, k * c].
        let cols = Tensor::cat(&taps, 1)?;
        let w = self.weight.transpose(1, 2)?.reshape((out, k * c))?;
        w.broadcast_matmul(&cols)
    }
}

/// The network (see the module docs).
#[derive(Debug)]
pub struct WakeNet {
    input_bn: BatchNorm,
    blocks: Vec<(TapConv1d, BatchNorm)>,
    out: Linear,
    dropout: SeededDropout,
}

impl WakeNet {
    /// `seed` drives the training-time dropout masks.
    pub fn new(vb: VarBuilder<'_>, cfg: &WakeModelConfig, seed: u64) -> candle_core::Result<Self> {
        let mut blocks = Vec::new();
        let mut c_in = cfg.n_mels;
        for (i, &c) in cfg.channels.iter().enumerate() {
            let conv = TapConv1d::new(vb.pp(format!("conv{i}")), c_in, c, cfg.kernel, 2)?;
            let bn = candle_nn::batch_norm(c, 1e-5, vb.pp(format!("bn{i}")))?;
            blocks.push((conv, bn));
            c_in = c;
        }
        Ok(Self {
            input_bn: candle_nn::batch_norm(cfg.n_mels, 1e-5, vb.pp("bn_in"))?,
            blocks,
            out: candle_nn::linear(2 * c_in, 1, vb.pp("out"))?,
            dropout: SeededDropout::new(0.2, seed),
        })
    }
}

impl WakeNet {
    /// The batch norms' running statistics by tensor name. candle's `BatchNorm` updates copies
    /// of these, not the variables a `VarMap` holds, so a trainer must save these instead.
    pub fn running_stats(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut add = |name: String, bn: &BatchNorm| {
            out.push((format!("{name}.running_mean"), bn.running_mean().clone()));
            out.push((format!("{name}.running_var"), bn.running_var().clone()));
        };
        add("bn_in".into(), &self.input_bn);
        for (i, (_, bn)) in self.blocks.iter().enumerate() {
            add(format!("bn{i}"), bn);
        }
        out
    }
}

impl ModuleT for WakeNet {
    /// `x`: `[n, frames, n_mels]` -> logits `[n]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut x = self
            .input_bn
            .forward_t(&x.transpose(1, 2)?.contiguous()?, train)?
            .contiguous()?;
        for (conv, bn) in &self.blocks {
            x = bn
                .forward_t(&conv.forward_t(&x, train)?, train)?
                .relu()?
                .contiguous()?;
        }
        let mut x = Tensor::cat(&[x.mean(2)?, x.max(2)?], 1)?;
        if train {
            x = self.dropout.apply(&x)?;
        }
        self.out.forward(&x)?.squeeze(1)
    }
}

/// Number of trainable values in `vars`.
pub fn parameter_count(tensors: &HashMap<String, Tensor>) -> usize {
    tensors
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(_, t)| t.elem_count())
        .sum()
}

/// A loaded wake model: inference only, `Send + Sync`.
#[derive(Debug)]
pub struct WakeModel {
    pub config: WakeModelConfig,
    frontend: WakeFrontEnd,
    net: WakeNet,
}

impl WakeModel {
    /// Loads a model directory (`config.json` + `model.safetensors`).
    pub fn load(dir: &Path) -> Result<Self, NnError> {
        let (config, tensors, weights) = super::read_model_dir(dir, WakeModelConfig::validate)?;
        Self::from_tensors(config, tensors).map_err(|e| super::invalid_file(&weights, e))
    }

    /// Builds a model from named tensors (what `load` reads, or a trainer's variables).
    pub fn from_tensors(
        config: WakeModelConfig,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self, String> {
        config.validate()?;
        let f32s = super::tensors_f32(tensors)?;
        let vb = VarBuilder::from_tensors(f32s, DType::F32, &Device::Cpu);
        let net = WakeNet::new(vb, &config, 0).map_err(|e| e.to_string())?;
        Ok(Self {
            frontend: WakeFrontEnd::new(config.n_mels),
            config,
            net,
        })
    }

    pub fn frontend(&self) -> &WakeFrontEnd {
        &self.frontend
    }

    /// Scores of `n` windows given as `[n][context_frames][n_mels]`, each in 0..1.
    pub fn score_windows(&self, windows: &[f32], n: usize) -> Result<Vec<f32>, NnError> {
        let per = self.config.context_frames * self.config.n_mels;
        if n == 0 || windows.len() != n * per {
            return Err(NnError::InvalidInput(format!(
                "{} values for {n} windows of {per}",
                windows.len()
            )));
        }
        let x = Tensor::from_slice(
            windows,
            (n, self.config.context_frames, self.config.n_mels),
            &Device::Cpu,
        )?;
        let p = candle_nn::ops::sigmoid(&self.net.forward_t(&x, false)?)?;
        Ok(p.to_vec1::<f32>()?)
    }

    /// Scores of every window of a clip's frames (`[frames][n_mels]`, from
    /// [`WakeFrontEnd::frames`]), on the live stage's schedule: `context - 1` frames of silence
    /// go in front (see [`pad_front`]), and windows end after clip frames 1, 1 + step, ...; so
    /// score `i` is taken when frame `i * step` is complete. Scored in batches of `batch`.
    pub fn score_frames(&self, frames: &[f32], batch: usize) -> Result<Vec<f32>, NnError> {
        let (c, m) = (self.config.context_frames, self.config.n_mels);
        let padded = pad_front(frames, m, c);
        let total = padded.len() / m;
        let ends = score_ends(total, c, self.config.step_frames);
        let mut out = Vec::with_capacity(ends.len());
        for chunk in ends.chunks(batch.max(1)) {
            let mut buf = Vec::with_capacity(chunk.len() * c * m);
            for &e in chunk {
                buf.extend_from_slice(&padded[(e - c) * m..e * m]);
            }
            out.extend(self.score_windows(&buf, chunk.len())?);
        }
        Ok(out)
    }
}

/// Exclusive end frames of the windows scored over `total` frames: every `step` frames from
/// the first full context.
pub fn score_ends(total: usize, context: usize, step: usize) -> Vec<usize> {
    if total < context {
        return Vec::new();
    }
    (context..=total).step_by(step.max(1)).collect()
}

/// `frames` (`[t][m]`) after `context - 1` rows of silence (the log energy digital silence
/// gives): the live stage starts from that state, so a phrase at the very start of a stream is
/// scored like any other.
pub fn pad_front(frames: &[f32], m: usize, context: usize) -> Vec<f32> {
    let silence = (1e-6f32).ln();
    let mut v = vec![silence; (context - 1) * m];
    v.extend_from_slice(frames);
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn streamed_frames_equal_whole_clip_frames() {
        let fe = WakeFrontEnd::new(40);
        let x: Vec<f32> = (0..16_000)
            .map(|i| (i as f32 * 0.031).sin() * 0.3 + ((i * 7919) % 97) as f32 / 970.0)
            .collect();
        let whole = fe.frames(&x);
        assert_eq!(whole.len(), n_frames(x.len()) * 40);
        let mut scratch = fe.make_scratch();
        let mut row = vec![0f32; 40];
        for t in [0, 17, n_frames(x.len()) - 1] {
            fe.frame(&x[t * HOP..t * HOP + FRAME], &mut scratch, &mut row);
            assert_eq!(&whole[t * 40..(t + 1) * 40], &row[..]);
        }
        assert!(whole.iter().all(|v| v.is_finite()));
    }

    /// Trains `net` for `steps` Adam steps on a toy task (a loud band late in the window
    /// against none) and returns the last loss.
    pub(crate) fn toy_fit(
        net: &WakeNet,
        varmap: &VarMap,
        cfg: &WakeModelConfig,
        steps: usize,
    ) -> f32 {
        use candle_nn::{Optimizer, ParamsAdamW};
        let (n, t, m) = (32, cfg.context_frames, cfg.n_mels);
        let mut x = vec![0f32; n * t * m];
        let mut y = vec![0f32; n];
        for i in 0..n {
            for j in 0..t * m {
                x[i * t * m + j] = (((i * 31 + j * 17) % 101) as f32 / 101.0) - 0.5;
            }
            if i % 2 == 0 {
                y[i] = 1.0;
                for f in 110..140 {
                    x[i * t * m + f * m + 10] += 3.0;
                }
            }
        }
        let x = Tensor::from_vec(x, (n, t, m), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(y, n, &Device::Cpu).unwrap();
        let mut opt = candle_nn::AdamW::new(
            varmap.all_vars(),
            ParamsAdamW {
                lr: 3e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let mut loss = 1.0;
        for _ in 0..steps {
            let l =
                crate::train::wake::bce_with_logits(&net.forward_t(&x, true).unwrap(), &y).unwrap();
            opt.backward_step(&l).unwrap();
            loss = l.to_scalar::<f32>().unwrap();
        }
        loss
    }

    /// The network can learn a late pattern in a few dozen steps (catches broken gradients,
    /// e.g. candle's strided conv1d on a non-contiguous input).
    #[test]
    fn the_network_learns_a_late_pattern() {
        let cfg = WakeModelConfig::new("x");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = WakeNet::new(vb, &cfg, 1).unwrap();
        let loss = toy_fit(&net, &varmap, &cfg, 80);
        assert!(loss < 0.2, "loss {loss}");
        // Training moved the running statistics away from their initial 0 / 1.
        let stats = net.running_stats();
        assert_eq!(stats.len(), 2 * (1 + cfg.channels.len()));
        let var = stats[1].1.to_vec1::<f32>().unwrap();
        assert!(var.iter().any(|v| (v - 1.0).abs() > 1e-3), "{var:?}");
    }

    #[test]
    fn random_model_is_small_scores_in_unit_range_and_round_trips() {
        let cfg = WakeModelConfig::new("Hey, Jarvis!");
        assert_eq!(cfg.phrase, "hey jarvis");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let _net = WakeNet::new(vb, &cfg, 1).unwrap();
        let tensors: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let params = parameter_count(&tensors);
        assert!(params < 250_000, "{params}");
        let m = WakeModel::from_tensors(cfg.clone(), tensors).unwrap();
        let frames = m.frontend().frames(&vec![0.01f32; 32_000]);
        let scores = m.score_frames(&frames, 16).unwrap();
        let total = n_frames(32_000) + cfg.context_frames - 1;
        assert_eq!(scores.len(), score_ends(total, 150, 8).len());
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
        let mut bad = cfg;
        bad.kernel = 4;
        assert!(bad.validate().is_err());
    }
}

#[cfg(test)]
mod grad_probe {
    use super::*;
    use candle_core::Var;

    /// Our convolution's kernel gradients against central differences (exact for this
    /// quadratic loss).
    fn worst_error(stride: usize) -> f32 {
        let dev = Device::Cpu;
        let xv: Vec<f32> = (0..2 * 3 * 20)
            .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let wv: Vec<f32> = (0..4 * 3 * 5)
            .map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.5)
            .collect();
        let x = Tensor::from_vec(xv, (2, 3, 20), &dev).unwrap();
        let f = |w: &Tensor| -> Tensor {
            let conv = TapConv1d {
                weight: w.clone(),
                stride,
                padding: 2,
            };
            let y = conv.forward(&x).unwrap();
            (y.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap()
        };
        let w = Var::from_tensor(&Tensor::from_vec(wv.clone(), (4, 3, 5), &dev).unwrap()).unwrap();
        let g = f(w.as_tensor()).backward().unwrap();
        let gw = g
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut worst = 0f32;
        for k in [0usize, 7, 23, 41, 59] {
            let at = |d: f32| {
                let mut p = wv.clone();
                p[k] += d;
                f(&Tensor::from_vec(p, (4, 3, 5), &dev).unwrap())
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let num = (at(1e-2) - at(-1e-2)) / 2e-2;
            worst = worst.max((num - gw[k]).abs() / num.abs().max(1.0));
        }
        worst
    }

    #[test]
    fn tap_conv_gradients_are_right_and_its_forward_equals_candles() {
        let (a, b) = (worst_error(1), worst_error(2));
        assert!(a < 1e-2 && b < 1e-2, "stride 1: {a}, stride 2: {b}");
        let dev = Device::Cpu;
        let x = Tensor::from_vec(
            (0..2 * 3 * 21)
                .map(|i| ((i * 7) % 13) as f32 / 13.0)
                .collect::<Vec<_>>(),
            (2, 3, 21),
            &dev,
        )
        .unwrap();
        let w = Tensor::from_vec(
            (0..4 * 3 * 5)
                .map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.5)
                .collect::<Vec<_>>(),
            (4, 3, 5),
            &dev,
        )
        .unwrap();
        let ours = TapConv1d {
            weight: w.clone(),
            stride: 2,
            padding: 2,
        }
        .forward(&x)
        .unwrap();
        // candle's forward is right on contiguous input.
        let theirs = x.conv1d(&w, 2, 2, 1, 1).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let d = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    }
}

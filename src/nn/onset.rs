//! The note-onset detector: a small dilated 1-D CNN over log-mel frames that says, for every
//! 10 ms pitch frame, how likely a note starts there. The monophonic note segmenter
//! ([`crate::notes::track`]) cuts notes at its peaks as well as at its hand-set spectral-flux
//! and level rules, which miss slow attacks (choirs, synth voices, bowed strings) and legato
//! repeats of one pitch.
//!
//! **Front end** ([`OnsetFrontEnd`]): 16 kHz audio, 32 ms Hann frames *centred* on the pitch
//! tracker's frame times (`k * 10 ms`; zeros before the start and after the end), Slaney mel
//! bands, `ln(mel + 1e-6)`. Many narrow bands (80 by default over 30-8000 Hz) so that the upper
//! harmonics of a one-semitone step land in different bands: a legato pitch change is an onset
//! the network must see.
//!
//! **Network**: per-band normalisation (training-set mean and spread, stored with the weights),
//! then convolutions over time with growing dilation (`k=5 d=1`, `k=3 d=2`, `k=3 d=4`, ReLU),
//! then a 1x1 convolution to one logit per frame. The receptive field is ±8 frames, so a
//! probability for frame `k` needs frames up to `k + 8`: 80 ms, less than the 100 ms the pitch
//! tracker's HMM waits anyway, so the detector adds no latency. With the default 32 channels it
//! has ~19 k parameters and costs ~19 k multiply-adds per frame (~2 M a second).
//!
//! Training ([`OnsetNet`], candle) and inference ([`OnsetDetector`], plain loops, streaming with
//! per-layer history) compute the same function; `streaming_matches_the_training_network`
//! checks it.

use std::{collections::HashMap, collections::VecDeque, path::Path};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::NnError;
use crate::dsp::mel::{FrameLogMel, FrameLogMelScratch};

/// Samples per second the model expects.
pub const SAMPLE_RATE: u32 = 16_000;
/// Analysis window (32 ms) and FFT size.
pub const FRAME: usize = 512;
/// Frame advance (10 ms): the pitch tracker's hop.
pub const HOP: usize = 160;

/// What an onset model directory's `config.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnsetModelConfig {
    pub n_mels: usize,
    pub fmin: f32,
    pub fmax: f32,
    /// Output channels of the hidden convolutions.
    pub channels: Vec<usize>,
    /// Their kernel sizes (odd) ...
    pub kernels: Vec<usize>,
    /// ... and dilations.
    pub dilations: Vec<usize>,
    /// Probability at which a peak is an onset (chosen by the trainer on development data).
    pub threshold: f32,
}

impl Default for OnsetModelConfig {
    fn default() -> Self {
        Self {
            n_mels: 80,
            fmin: 30.0,
            fmax: 8000.0,
            channels: vec![32, 32, 32],
            kernels: vec![5, 3, 3],
            dilations: vec![1, 2, 4],
            threshold: 0.5,
        }
    }
}

impl OnsetModelConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.n_mels == 0 || self.n_mels > 256 {
            return Err(format!("n_mels {} is not in 1..=256", self.n_mels));
        }
        if !(self.fmin >= 0.0 && self.fmin < self.fmax && self.fmax <= SAMPLE_RATE as f32 / 2.0) {
            return Err(format!(
                "mel range {}..{} Hz is not within 0..8000 Hz",
                self.fmin, self.fmax
            ));
        }
        let n = self.channels.len();
        if n == 0 || self.kernels.len() != n || self.dilations.len() != n {
            return Err("channels, kernels and dilations need the same, non-zero length".into());
        }
        if self.channels.iter().any(|&c| c == 0 || c > 1024) {
            return Err("channels must be in 1..=1024".into());
        }
        if self.kernels.iter().any(|&k| k % 2 == 0 || k > 31) {
            return Err("kernels must be odd and at most 31".into());
        }
        if self.dilations.iter().any(|&d| d == 0 || d > 64) {
            return Err("dilations must be in 1..=64".into());
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!("threshold {} is not in (0, 1)", self.threshold));
        }
        Ok(())
    }

    /// Frames after frame `k` that its probability depends on.
    pub fn lookahead(&self) -> usize {
        self.kernels
            .iter()
            .zip(&self.dilations)
            .map(|(k, d)| (k - 1) / 2 * d)
            .sum()
    }
}

/// The log-mel front end (see the module docs). `Send + Sync`; scratch is per caller.
#[derive(Debug, Clone)]
pub struct OnsetFrontEnd {
    mel: FrameLogMel,
}

/// Scratch buffers for [`OnsetFrontEnd::frame`].
pub type FrontEndScratch = FrameLogMelScratch;

impl OnsetFrontEnd {
    pub fn new(cfg: &OnsetModelConfig) -> Self {
        Self {
            mel: FrameLogMel::new(SAMPLE_RATE, FRAME, HOP, cfg.n_mels, cfg.fmin, cfg.fmax),
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

    /// Frames of a whole clip, row-major `[frames][n_mels]`: frame `k` is centred on sample
    /// `k * HOP`, for every `k * HOP < samples.len()`.
    pub fn frames(&self, samples: &[f32]) -> Vec<f32> {
        let n = n_frames(samples.len());
        let mut out = vec![0f32; n * self.n_mels()];
        let mut scratch = self.make_scratch();
        let mut window = vec![0f32; FRAME];
        for (k, row) in out.chunks_exact_mut(self.n_mels()).enumerate() {
            fill_window(samples, 0, k, &mut window);
            self.frame(&window, &mut scratch, row);
        }
        out
    }
}

/// Frames of a clip of `n` samples (one per hop whose centre is inside it).
pub fn n_frames(n: usize) -> usize {
    n.div_ceil(HOP)
}

/// The samples of frame `k` (centred on `k * HOP`) from `buf`, whose first sample is sample
/// `buf_start` of the stream; samples outside `buf` are zero.
fn fill_window(buf: &[f32], buf_start: usize, k: usize, out: &mut [f32]) {
    let first = (k * HOP) as i64 - (FRAME / 2) as i64;
    for (i, o) in out.iter_mut().enumerate() {
        let s = first + i as i64 - buf_start as i64;
        *o = if s >= 0 && (s as usize) < buf.len() {
            buf[s as usize]
        } else {
            0.0
        };
    }
}

/// A dilated 1-D convolution with bias and "same" zero padding, as one matrix product over
/// gathered taps: candle 0.11's CPU `conv1d` has wrong kernel gradients (see
/// [`super::wake::TapConv1d`]).
#[derive(Debug, Clone)]
struct DilatedConv {
    /// `[out, in, k]`.
    weight: Tensor,
    bias: Tensor,
    dilation: usize,
}

impl DilatedConv {
    fn new(
        vb: VarBuilder<'_>,
        c_in: usize,
        c_out: usize,
        k: usize,
        dilation: usize,
    ) -> candle_core::Result<Self> {
        let bound = 1.0 / ((c_in * k) as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Self {
            weight: vb.get_with_hints((c_out, c_in, k), "weight", init)?,
            bias: vb.get_with_hints(c_out, "bias", init)?,
            dilation,
        })
    }

    /// `[n, in, t]` -> `[n, out, t]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, t) = x.dims3()?;
        let (out, _, k) = self.weight.dims3()?;
        let pad = (k - 1) / 2 * self.dilation;
        let x = x.pad_with_zeros(2, pad, pad)?;
        let taps = (0..k)
            .map(|j| x.narrow(2, j * self.dilation, t))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // [n, k * c, t], tap-major, against the weight as [out, k * c].
        let cols = Tensor::cat(&taps, 1)?;
        let w = self.weight.transpose(1, 2)?.reshape((out, k * c))?;
        w.broadcast_matmul(&cols)?
            .broadcast_add(&self.bias.reshape((1, out, 1))?)?
            .reshape((n, out, t))
    }
}

/// The trainable network (see the module docs).
#[derive(Debug)]
pub struct OnsetNet {
    mean: Tensor,
    std: Tensor,
    hidden: Vec<DilatedConv>,
    out: DilatedConv,
}

impl OnsetNet {
    /// `norm.mean` and `norm.std` (`[n_mels]`) must be in `vb` (a trainer puts the training
    /// set's statistics there as constants).
    pub fn new(vb: VarBuilder<'_>, cfg: &OnsetModelConfig) -> candle_core::Result<Self> {
        let mean = vb.get(cfg.n_mels, "norm.mean")?;
        let std = vb.get(cfg.n_mels, "norm.std")?;
        let mut hidden = Vec::new();
        let mut c_in = cfg.n_mels;
        for (i, ((&c, &k), &d)) in cfg
            .channels
            .iter()
            .zip(&cfg.kernels)
            .zip(&cfg.dilations)
            .enumerate()
        {
            hidden.push(DilatedConv::new(vb.pp(format!("conv{i}")), c_in, c, k, d)?);
            c_in = c;
        }
        Ok(Self {
            mean,
            std,
            hidden,
            out: DilatedConv::new(vb.pp("out"), c_in, 1, 1, 1)?,
        })
    }

    /// `x`: `[n, frames, n_mels]` log-mel -> onset logits `[n, frames]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, t, m) = x.dims3()?;
        let x = x
            .broadcast_sub(&self.mean.reshape((1, 1, m))?)?
            .broadcast_div(&self.std.reshape((1, 1, m))?)?;
        let mut x = x.transpose(1, 2)?.contiguous()?;
        for conv in &self.hidden {
            x = conv.forward(&x)?.relu()?;
        }
        self.out.forward(&x)?.reshape((n, t))
    }
}

/// One convolution of the inference network, weights as `[out][k][in]`.
#[derive(Debug, Clone)]
struct Layer {
    w: Vec<f32>,
    b: Vec<f32>,
    c_in: usize,
    c_out: usize,
    k: usize,
    d: usize,
    relu: bool,
}

impl Layer {
    fn from(conv: &DilatedConv, relu: bool) -> candle_core::Result<Self> {
        let (c_out, c_in, k) = conv.weight.dims3()?;
        Ok(Self {
            // [out, in, k] -> [out, k, in]: each tap's weights are contiguous against a frame.
            w: conv
                .weight
                .transpose(1, 2)?
                .contiguous()?
                .flatten_all()?
                .to_vec1()?,
            b: conv.bias.to_vec1()?,
            c_in,
            c_out,
            k,
            d: conv.dilation,
            relu,
        })
    }

    fn half(&self) -> usize {
        (self.k - 1) / 2 * self.d
    }
}

/// A loaded onset model: `Send + Sync`; streaming state lives in [`OnsetDetector`].
#[derive(Debug)]
pub struct OnsetModel {
    pub config: OnsetModelConfig,
    frontend: OnsetFrontEnd,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    layers: Vec<Layer>,
}

impl OnsetModel {
    /// Loads a model directory (`config.json` + `model.safetensors`).
    pub fn load(dir: &Path) -> Result<Self, NnError> {
        let (config, tensors, weights) = super::read_model_dir(dir, OnsetModelConfig::validate)?;
        Self::from_tensors(config, tensors).map_err(|e| super::invalid_file(&weights, e))
    }

    /// Builds a model from named tensors (what `load` reads, or a trainer's variables).
    pub fn from_tensors(
        config: OnsetModelConfig,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self, String> {
        config.validate()?;
        let f32s = super::tensors_f32(tensors)?;
        let vb = VarBuilder::from_tensors(f32s, DType::F32, &Device::Cpu);
        let net = OnsetNet::new(vb, &config).map_err(|e| e.to_string())?;
        let build = || -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<Layer>)> {
            let mean = net.mean.to_vec1::<f32>()?;
            let std = net.std.to_vec1::<f32>()?;
            let mut layers = net
                .hidden
                .iter()
                .map(|c| Layer::from(c, true))
                .collect::<candle_core::Result<Vec<_>>>()?;
            layers.push(Layer::from(&net.out, false)?);
            Ok((mean, std, layers))
        };
        let (mean, std, layers) = build().map_err(|e| e.to_string())?;
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || mean.iter().any(|m| !m.is_finite()) {
            return Err("norm.mean/norm.std are not finite and positive".into());
        }
        Ok(Self {
            frontend: OnsetFrontEnd::new(&config),
            inv_std: std.iter().map(|s| 1.0 / s).collect(),
            mean,
            layers,
            config,
        })
    }

    pub fn frontend(&self) -> &OnsetFrontEnd {
        &self.frontend
    }

    /// Onset probabilities of every frame of a whole clip (see [`OnsetFrontEnd::frames`]).
    pub fn probabilities(&self, samples: &[f32]) -> Vec<f32> {
        let mut d = OnsetDetector::new(self);
        let mut p = d.push(self, samples);
        p.extend(d.finish(self));
        p
    }
}

/// One layer's streaming state: the inputs it still needs, by absolute frame index.
#[derive(Debug, Clone, Default)]
struct LayerState {
    inputs: VecDeque<Vec<f32>>,
    /// Frame index of `inputs[0]`.
    first: usize,
    /// Next output frame to compute.
    next: usize,
}

/// Streaming onset probabilities: feed samples, get the probability of each frame (in order,
/// from frame 0) once the frames it depends on have arrived. Exactly the whole-clip numbers.
#[derive(Debug)]
pub struct OnsetDetector {
    /// Samples not yet framed; `buf[0]` is stream sample `buf_start`.
    buf: Vec<f32>,
    buf_start: usize,
    received: usize,
    next_frame: usize,
    window: Vec<f32>,
    mel: Vec<f32>,
    scratch: FrontEndScratch,
    states: Vec<LayerState>,
}

impl OnsetDetector {
    pub fn new(model: &OnsetModel) -> Self {
        Self {
            buf: Vec::new(),
            buf_start: 0,
            received: 0,
            next_frame: 0,
            window: vec![0.0; FRAME],
            mel: vec![0.0; model.frontend.n_mels()],
            scratch: model.frontend.make_scratch(),
            states: vec![LayerState::default(); model.layers.len()],
        }
    }

    /// Feeds samples; returns the probabilities that became known.
    pub fn push(&mut self, model: &OnsetModel, samples: &[f32]) -> Vec<f32> {
        self.buf.extend_from_slice(samples);
        self.received += samples.len();
        let mut out = Vec::new();
        // Frame k is complete once sample k * HOP + FRAME / 2 - 1 has arrived.
        while self.next_frame * HOP + FRAME / 2 <= self.received {
            self.frame_in(model, &mut out);
        }
        out
    }

    /// Ends the stream: the remaining frames, with zeros after the end.
    pub fn finish(&mut self, model: &OnsetModel) -> Vec<f32> {
        let mut out = Vec::new();
        while self.next_frame < n_frames(self.received) {
            self.frame_in(model, &mut out);
        }
        // Flush every layer: inputs past the end are zero.
        self.flush(model, 0, &mut out);
        out
    }

    fn frame_in(&mut self, model: &OnsetModel, out: &mut Vec<f32>) {
        let k = self.next_frame;
        fill_window(&self.buf, self.buf_start, k, &mut self.window);
        model
            .frontend
            .frame(&self.window, &mut self.scratch, &mut self.mel);
        let mel: Vec<f32> = self
            .mel
            .iter()
            .zip(&model.mean)
            .zip(&model.inv_std)
            .map(|((v, mu), is)| (v - mu) * is)
            .collect();
        self.next_frame += 1;
        // Samples before the next frame's window are no longer needed.
        let keep_from = (self.next_frame * HOP).saturating_sub(FRAME / 2);
        if keep_from > self.buf_start {
            let drop = (keep_from - self.buf_start).min(self.buf.len());
            self.buf.drain(..drop);
            self.buf_start += drop;
        }
        self.feed(model, 0, mel, out);
    }

    /// Gives layer `l` its next input frame and passes on what it can compute.
    fn feed(&mut self, model: &OnsetModel, l: usize, x: Vec<f32>, out: &mut Vec<f32>) {
        self.states[l].inputs.push_back(x);
        let layer = &model.layers[l];
        loop {
            let st = &self.states[l];
            let have = st.first + st.inputs.len();
            if st.next + layer.half() >= have {
                break;
            }
            let y = self.compute(model, l);
            self.emit(model, l, y, out);
        }
    }

    /// Ends layer `l`'s input (zeros after it) and everything after it.
    fn flush(&mut self, model: &OnsetModel, l: usize, out: &mut Vec<f32>) {
        if l == model.layers.len() {
            return;
        }
        loop {
            let st = &self.states[l];
            if st.next >= st.first + st.inputs.len() {
                break;
            }
            let y = self.compute(model, l);
            self.emit(model, l, y, out);
        }
        self.flush(model, l + 1, out);
    }

    fn emit(&mut self, model: &OnsetModel, l: usize, y: Vec<f32>, out: &mut Vec<f32>) {
        if l + 1 == model.layers.len() {
            out.push(sigmoid(y[0]));
        } else {
            self.feed(model, l + 1, y, out);
        }
    }

    /// Output frame `next` of layer `l` (inputs outside what was received are zero), then
    /// forgets inputs no later output needs.
    fn compute(&mut self, model: &OnsetModel, l: usize) -> Vec<f32> {
        let layer = &model.layers[l];
        let st = &mut self.states[l];
        let t = st.next as i64;
        let mut y = layer.b.clone();
        for j in 0..layer.k {
            let src = t + (j as i64 - ((layer.k - 1) / 2) as i64) * layer.d as i64;
            if src < st.first as i64 || src >= (st.first + st.inputs.len()) as i64 {
                continue;
            }
            let x = &st.inputs[src as usize - st.first];
            for (o, yo) in y.iter_mut().enumerate() {
                let w = &layer.w[(o * layer.k + j) * layer.c_in..][..layer.c_in];
                *yo += w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        if layer.relu {
            for v in &mut y {
                *v = v.max(0.0);
            }
        }
        debug_assert_eq!(y.len(), layer.c_out);
        st.next += 1;
        let need_from = st.next.saturating_sub(layer.half());
        while st.first < need_from && !st.inputs.is_empty() {
            st.inputs.pop_front();
            st.first += 1;
        }
        y
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Number of trainable values in `tensors` (the stored normalisation is not trained).
pub fn parameter_count(tensors: &HashMap<String, Tensor>) -> usize {
    tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("norm."))
        .map(|(_, t)| t.elem_count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn random_model(cfg: &OnsetModelConfig) -> (OnsetModel, OnsetNet) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        // Normalisation constants like a trainer's: roughly the log-mel of quiet audio.
        vb.get_with_hints(cfg.n_mels, "norm.mean", candle_nn::Init::Const(-8.0))
            .unwrap();
        vb.get_with_hints(cfg.n_mels, "norm.std", candle_nn::Init::Const(3.0))
            .unwrap();
        let net = OnsetNet::new(vb, cfg).unwrap();
        let tensors: HashMap<String, Tensor> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        (OnsetModel::from_tensors(cfg.clone(), tensors).unwrap(), net)
    }

    fn chirp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                0.3 * (2.0 * std::f32::consts::PI * (200.0 + 300.0 * t) * t).sin()
                    * if (t * 3.0).fract() < 0.7 { 1.0 } else { 0.05 }
            })
            .collect()
    }

    #[test]
    fn streaming_matches_the_training_network() {
        let cfg = OnsetModelConfig::default();
        let (model, net) = random_model(&cfg);
        let x = chirp(16_000 + 77);
        let frames = model.frontend().frames(&x);
        let t = frames.len() / cfg.n_mels;
        assert_eq!(t, n_frames(x.len()));
        let logits = net
            .forward(&Tensor::from_vec(frames, (1, t, cfg.n_mels), &Device::Cpu).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let whole: Vec<f32> = logits.iter().map(|&v| sigmoid(v)).collect();
        for chunk in [1usize, 160, 777, 100_000] {
            let mut d = OnsetDetector::new(&model);
            let mut got = Vec::new();
            for c in x.chunks(chunk) {
                got.extend(d.push(&model, c));
            }
            got.extend(d.finish(&model));
            assert_eq!(got.len(), whole.len(), "chunk {chunk}");
            for (i, (a, b)) in got.iter().zip(&whole).enumerate() {
                assert!((a - b).abs() < 1e-4, "chunk {chunk} frame {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn probabilities_arrive_within_the_lookahead() {
        let cfg = OnsetModelConfig::default();
        let (model, _) = random_model(&cfg);
        let mut d = OnsetDetector::new(&model);
        // After 1 s, every frame up to 1 s minus the window half and the lookahead is known.
        let got = d.push(&model, &chirp(16_000)).len();
        let expect = (16_000 - FRAME / 2) / HOP + 1 - cfg.lookahead();
        assert_eq!(got, expect);
    }

    #[test]
    fn configs_are_validated() {
        let mut c = OnsetModelConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.lookahead(), 8);
        c.kernels[0] = 4;
        assert!(c.validate().is_err());
        let c = OnsetModelConfig {
            threshold: 1.0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let mut c = OnsetModelConfig::default();
        c.dilations.pop();
        assert!(c.validate().is_err());
    }
}

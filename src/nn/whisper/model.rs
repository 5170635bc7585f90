//! The Whisper network: encoder, and a decoder with an incremental self-attention KV cache.
//!
//! Tensor names are those of Hugging Face `WhisperForConditionalGeneration` (what
//! `hark::models` writes); upstream openai/whisper names are in comments. Unlike
//! candle-transformers' decoder, which recomputes self-attention over the whole token sequence
//! at every step, [`Decoder::forward`] appends the new keys/values to a per-layer cache
//! ([`DecoderState`]) and attends from the new positions only, so a decode step costs O(T)
//! instead of O(T^2). Cross-attention keys/values are computed once per audio window
//! ([`Decoder::cross_kv`]) and shared by every beam.
//!
//! The output projection is tied to the token embedding (`proj_out` = `embed_tokens`) and is the
//! largest single read of a decode step (51864 x 384 f32 = 80 MB); [`Decoder::quantize_output`]
//! swaps it for an int8 copy (20 MB). Linear layers run on few rows (decode steps) go through
//! [`super::gemv`] instead of candle's matmul.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::{
    fastmath,
    gemv::{I8Rows, matmul_f32, matmul_i8},
    qgemm::{self, PackedI8},
};

/// Rows (B*T) up to which a linear layer runs as dot products ([`super::gemv`]) rather than
/// candle's matmul.
const GEMV_MAX_ROWS: usize = 16;

/// Runs `f` on the contiguous f32 data of a CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("tensor is not contiguous");
    };
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(&cpu.as_slice::<f32>()?[start..end])),
        _ => candle_core::bail!("tensor is not on the CPU"),
    }
}

/// Runs `f` on the rows of `x` (..., K) when there are few of them (decode steps) and
/// reshapes its (rows, n) result to (..., n); `None` when `x` should go through candle.
fn few_rows(
    x: &Tensor,
    n: usize,
    f: impl FnOnce(&[f32], usize) -> Result<Vec<f32>>,
) -> Result<Option<Tensor>> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / k.max(1);
    if rows == 0 || rows > GEMV_MAX_ROWS || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let out = with_f32(&x, |xs| f(xs, k))??;
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, x.device()).map(Some)
}

/// `l.forward(x)`, through [`matmul_f32`] when `x` has few rows (decode steps).
fn lin(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let (n, _) = l.weight().dims2()?;
    let out = few_rows(x, n, |xs, k| {
        with_f32(l.weight(), |w| match l.bias() {
            Some(b) => with_f32(b, |bs| matmul_f32(xs, k, w, n, Some(bs))),
            None => Ok(matmul_f32(xs, k, w, n, None)),
        })?
    })?;
    match out {
        Some(t) => Ok(t),
        None => l.forward(x),
    }
}

/// A linear layer that can also hold an int8 copy of its weight. A decoder step reads every
/// weight once for one row (per beam), so it is bound by memory traffic, and int8 reads a
/// quarter of the bytes; the encoder's 1500-row products are bound by arithmetic, which
/// [`qgemm`]'s VNNI kernel does four times as wide as f32.
#[derive(Debug, Clone)]
struct Dense {
    f32: Linear,
    /// Per-row int8 weights with f32 activations, for decode steps on CPUs without VNNI.
    i8: Option<I8Rows>,
    /// VNNI-packed int8 weights, used for every call (activations quantised per row on each
    /// call): on VNNI CPUs int8 pays for many rows (encoder, prefill) as well as few.
    packed: Option<PackedI8>,
    /// Bias of `packed` when it differs from the f32 layer's: a preceding layer norm's gain
    /// and shift folded in ([`Self::quantize_folded`]); the input is then the bare
    /// normalised activation.
    packed_bias: Option<Vec<f32>>,
}

impl Dense {
    fn new(f32: Linear) -> Self {
        Self {
            f32,
            i8: None,
            packed: None,
            packed_bias: None,
        }
    }

    /// True when `packed` expects the layer norm's input normalised without its gain and
    /// shift.
    fn folded(&self) -> bool {
        self.packed_bias.is_some()
    }

    /// Int8 weights for every call, with the preceding layer norm's gain and shift folded in:
    /// W (g x + b) + c = (W diag g) x + (W b + c). Whisper's layer norms have a few channels
    /// with gains and shifts 5-20x the median, which set the per-row int8 scale of their
    /// output and crush the other channels; the normalised activation has no such offsets.
    /// The product is the same in exact arithmetic. Falls back to [`Self::quantize`] when
    /// the weights do not pack.
    fn quantize_folded(&mut self, ln: &LayerNorm) -> Result<()> {
        self.quantize(false)?;
        if !qgemm::available() {
            return Ok(());
        }
        let (n, k) = self.f32.weight().dims2()?;
        let w = self.f32.weight().contiguous()?;
        let gain = ln.weight().contiguous()?;
        let shift = match ln.bias() {
            Some(b) => b.contiguous()?,
            None => Tensor::zeros(k, DType::F32, gain.device())?,
        };
        let bias = match self.f32.bias() {
            Some(b) => b.contiguous()?,
            None => Tensor::zeros(n, DType::F32, gain.device())?,
        };
        let folded = with_f32(&w, |w| {
            with_f32(&gain, |g| {
                with_f32(&shift, |sh| {
                    with_f32(&bias, |c| {
                        let mut wg = vec![0f32; n * k];
                        let mut b = c.to_vec();
                        for ((row, out), bj) in
                            w.chunks_exact(k).zip(wg.chunks_exact_mut(k)).zip(&mut b)
                        {
                            for ((o, &wv), (&gv, &sv)) in
                                out.iter_mut().zip(row).zip(g.iter().zip(sh))
                            {
                                *o = wv * gv;
                                *bj += wv * sv;
                            }
                        }
                        PackedI8::quantize(&wg, n, k).map(|p| (p, b))
                    })
                })
            })
        })????;
        if let Some((p, b)) = folded {
            self.packed = Some(p);
            self.packed_bias = Some(b);
        }
        Ok(())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(q) = &self.packed {
            let rows = x.elem_count() / q.k.max(1);
            if rows > 0 && x.dtype() == DType::F32 {
                let x = x.contiguous()?;
                let out = with_f32(&x, |xs| match (&self.packed_bias, self.f32.bias()) {
                    (Some(b), _) => Ok(qgemm::matmul(xs, q, Some(b))),
                    (None, Some(b)) => with_f32(b, |bs| qgemm::matmul(xs, q, Some(bs))),
                    (None, None) => Ok(qgemm::matmul(xs, q, None)),
                })??;
                let mut shape = x.dims().to_vec();
                if let Some(last) = shape.last_mut() {
                    *last = q.n;
                }
                return Tensor::from_vec(out, shape, x.device());
            }
        }
        let Some(q) = &self.i8 else {
            return lin(&self.f32, x);
        };
        let out = few_rows(x, q.rows, |xs, _| {
            let mut out = matmul_i8(xs, q);
            if let Some(b) = self.f32.bias() {
                with_f32(b, |bs| {
                    for row in out.chunks_exact_mut(q.rows) {
                        for (o, &bb) in row.iter_mut().zip(bs) {
                            *o += bb;
                        }
                    }
                })?;
            }
            Ok(out)
        })?;
        match out {
            Some(t) => Ok(t),
            None => lin(&self.f32, x),
        }
    }

    /// Int8 weights (or back to f32): VNNI-packed for every call where the CPU has it, else
    /// per-row int8 for decode steps only (without VNNI, int8 pays only where memory
    /// traffic is the bound).
    fn quantize(&mut self, int8: bool) -> Result<()> {
        self.i8 = None;
        self.packed = None;
        self.packed_bias = None;
        if !int8 {
            return Ok(());
        }
        let (n, k) = self.f32.weight().dims2()?;
        let w = self.f32.weight().contiguous()?;
        if qgemm::available()
            && let Some(p) = with_f32(&w, |w| PackedI8::quantize(w, n, k))?
        {
            self.packed = Some(p);
            return Ok(());
        }
        self.i8 = Some(with_f32(&w, |w| I8Rows::quantize(w, n, k))?);
        Ok(())
    }
}

/// The subset of a Hugging Face Whisper `config.json` the network needs (upstream names in
/// comments). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Config {
    pub num_mel_bins: usize,            // n_mels
    pub max_source_positions: usize,    // n_audio_ctx
    pub d_model: usize,                 // n_audio_state = n_text_state
    pub encoder_attention_heads: usize, // n_audio_head
    pub encoder_layers: usize,          // n_audio_layer
    pub vocab_size: usize,              // n_vocab
    pub max_target_positions: usize,    // n_text_ctx
    pub decoder_attention_heads: usize, // n_text_head
    pub decoder_layers: usize,          // n_text_layer
    #[serde(default)]
    pub suppress_tokens: Vec<u32>,
    #[serde(default)]
    pub begin_suppress_tokens: Vec<u32>,
}

fn linear(vb: &VarBuilder<'_>, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
    let w = vb.get((d_out, d_in), "weight")?;
    let b = if bias {
        Some(vb.get(d_out, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

fn layer_norm(vb: &VarBuilder<'_>, d: usize) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get(d, "weight")?,
        vb.get(d, "bias")?,
        1e-5,
    ))
}

/// Whisper's `MultiHeadAttention` (`query`, `key` (no bias), `value`, `out`), with the three
/// input projections fused into one (3D, D) matrix: self-attention does one matmul instead of
/// three; cross-attention uses row slices of it (views, no copies).
#[derive(Debug, Clone)]
struct Attention {
    /// Rows [0, D) query, [D, 2D) key (zero bias), [2D, 3D) value.
    qkv: Dense,
    q: Dense,
    k: Linear,
    v: Linear,
    out: Dense,
    n_head: usize,
    d: usize,
    /// 1/sqrt(head dim), applied to the queries (openai applies dh^-0.25 to both q and k).
    scale: f64,
}

impl Attention {
    fn load(vb: VarBuilder<'_>, d: usize, n_head: usize) -> Result<Self> {
        let q = linear(&vb.pp("q_proj"), d, d, true)?;
        let k = linear(&vb.pp("k_proj"), d, d, false)?;
        let v = linear(&vb.pp("v_proj"), d, d, true)?;
        let w = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
        let zeros = Tensor::zeros(d, w.dtype(), w.device())?;
        let b = match (q.bias(), v.bias()) {
            (Some(qb), Some(vb)) => Tensor::cat(&[qb, &zeros, vb], 0)?,
            _ => candle_core::bail!("attention projections without bias"),
        };
        let slice = |i: usize| -> Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, i * d, d)?,
                Some(b.narrow(0, i * d, d)?),
            ))
        };
        Ok(Self {
            q: Dense::new(slice(0)?),
            k: Linear::new(w.narrow(0, d, d)?, None),
            v: slice(2)?,
            qkv: Dense::new(Linear::new(w, Some(b))),
            out: Dense::new(linear(&vb.pp("out_proj"), d, d, true)?),
            n_head,
            d,
            scale: ((d / n_head) as f64).powf(-0.5),
        })
    }

    /// (B, T, D) -> (B, H, T, Dh), contiguous.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, self.n_head, d / self.n_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// (B, H, T, Dh) -> (B, T, D).
    fn merge(x: &Tensor) -> Result<Tensor> {
        let (b, h, t, dh) = x.dims4()?;
        x.transpose(1, 2)?.reshape((b, t, h * dh))
    }

    /// Queries (scaled), keys and values of `x` in head layout.
    fn project_qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let y = self.qkv.forward(x)?;
        let d = self.d;
        Ok((
            (self.heads(&y.narrow(2, 0, d)?)? * self.scale)?,
            self.heads(&y.narrow(2, d, d)?)?,
            self.heads(&y.narrow(2, 2 * d, d)?)?,
        ))
    }

    /// Self-attention over `x` (B, T, D) plus the cached positions; appends this call's keys and
    /// values to `cache`. `mask` is (T, S_total) additive, or `None` when T == 1.
    fn forward_self(
        &self,
        x: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (q, k_new, v_new) = self.project_qkv(x)?;
        let (k, v) = match cache.take() {
            Some((k0, v0)) => (
                Tensor::cat(&[&k0, &k_new], 2)?,
                Tensor::cat(&[&v0, &v_new], 2)?,
            ),
            None => (k_new, v_new),
        };
        let mut att = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let w = candle_nn::ops::softmax_last_dim(&att)?;
        let o = Self::merge(&w.matmul(&v)?)?;
        *cache = Some((k, v));
        self.out.forward(&o)
    }

    /// [`Self::forward_full`] with both products of each head in int8 ([`qgemm`]): scores
    /// from queries (per row) and keys (per key), outputs from probabilities (per row) and
    /// values (per channel). Used when the layer's projections are int8 (the encoder on a
    /// VNNI CPU); `None` when a head's shape does not pack (positions not a multiple of 4).
    fn forward_full_int8(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (q, k, v) = self.project_qkv(x)?;
        let (b, h, t, dh) = q.dims4()?;
        let d = h * dh;
        if b != 1 || t % 4 != 0 || dh % 4 != 0 {
            return Ok(None);
        }
        let mut merged = vec![0f32; t * d];
        // One scores buffer and one set of quantisation buffers for all heads.
        let mut w = vec![0f32; t * t];
        let mut o = vec![0f32; t * dh];
        let mut vt = vec![0f32; t * dh];
        let mut scratch = qgemm::Scratch::default();
        let ok = with_f32(&q, |q| {
            with_f32(&k, |k| {
                with_f32(&v, |v| {
                    for i in 0..h {
                        let head = i * t * dh..(i + 1) * t * dh;
                        let Some(keys) = PackedI8::quantize(&k[head.clone()], t, dh) else {
                            return false;
                        };
                        let signed = qgemm::Activations::Signed;
                        qgemm::matmul_into(&q[head.clone()], &keys, signed, &mut scratch, &mut w);
                        drop(keys);
                        fastmath::softmax_rows(&mut w, t);
                        for (p, row) in v[head].chunks_exact(dh).enumerate() {
                            for (c, &x) in row.iter().enumerate() {
                                vt[c * t + p] = x;
                            }
                        }
                        let Some(values) = PackedI8::quantize(&vt, dh, t) else {
                            return false;
                        };
                        let probs = qgemm::Activations::NonNegative;
                        qgemm::matmul_into(&w, &values, probs, &mut scratch, &mut o);
                        for (dst, src) in merged.chunks_exact_mut(d).zip(o.chunks_exact(dh)) {
                            dst[i * dh..(i + 1) * dh].copy_from_slice(src);
                        }
                    }
                    true
                })
            })
        })???;
        if !ok {
            return Ok(None);
        }
        let o = Tensor::from_vec(merged, (b, t, d), x.device())?;
        self.out.forward(&o).map(Some)
    }

    /// Self-attention without cache or mask (the encoder), one head at a time: a 30 s window
    /// has 1500 x 1500 scores per head (9 MB), all heads at once would be 54 MB, twice over
    /// with the softmax output.
    fn forward_full(&self, x: &Tensor) -> Result<Tensor> {
        if self.qkv.packed.is_some()
            && let Some(out) = self.forward_full_int8(x)?
        {
            return Ok(out);
        }
        let (q, k, v) = self.project_qkv(x)?;
        let (b, h, t, _) = q.dims4()?;
        let mut heads = Vec::with_capacity(h);
        for i in 0..h {
            let scores = q.narrow(1, i, 1)?.matmul(&k.narrow(1, i, 1)?.t()?)?;
            let mut w = with_f32(&scores, <[f32]>::to_vec)?;
            drop(scores);
            fastmath::softmax_rows(&mut w, t);
            let w = Tensor::from_vec(w, (b, 1, t, t), x.device())?;
            heads.push(w.matmul(&v.narrow(1, i, 1)?)?);
        }
        self.out.forward(&Self::merge(&Tensor::cat(&heads, 1)?)?)
    }

    /// Cross-attention keys ((1, H, S, Dh)) and transposed values ((1, H, Dh, S)) of the
    /// encoder output `xa` (1, S, D): both contiguous along S's partner axis, so that a decode
    /// step's scores and outputs are dot products over contiguous rows (see
    /// [`Self::forward_cross`]); candle's matmul takes them as transposed views.
    fn cross_kv(&self, xa: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.heads(&self.k.forward(xa)?)?,
            self.heads(&self.v.forward(xa)?)?.t()?.contiguous()?,
        ))
    }

    /// Cross-attention of `x` (B, T, D) over one audio window's keys/values.
    /// Rows are independent (no mask), so the B*T queries are folded into one batch row and
    /// every beam shares the same keys. Returns the output and, when asked, the pre-softmax
    /// scores (1, H, B*T, S) for word alignment.
    fn forward_cross(
        &self,
        x: &Tensor,
        kv: &(Tensor, Tensor),
        want_scores: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, d) = x.dims3()?;
        let q = self.q.forward(x)?.reshape((1, b * t, d))?;
        if b * t <= GEMV_MAX_ROWS {
            return self.forward_cross_rows(&q, kv, want_scores, (b, t));
        }
        let q = (self.heads(&q)? * self.scale)?;
        let att = q.matmul(&kv.0.t()?)?;
        let w = candle_nn::ops::softmax_last_dim(&att)?;
        let o = Self::merge(&w.matmul(&kv.1.t()?)?)?.reshape((b, t, d))?;
        Ok((self.out.forward(&o)?, want_scores.then_some(att)))
    }

    /// [`Self::forward_cross`] for a decode step's few query rows `q` (1, M, D), head by head
    /// in parallel, as dot products ([`matmul_f32`]). candle's general matmul packs the
    /// 1500 x 64 keys and values of every head on every call, which cost more than the
    /// products themselves.
    fn forward_cross_rows(
        &self,
        q: &Tensor,
        kv: &(Tensor, Tensor),
        want_scores: bool,
        (b, t): (usize, usize),
    ) -> Result<(Tensor, Option<Tensor>)> {
        use rayon::prelude::*;
        let (_, m, d) = q.dims3()?;
        let (h, dh) = (self.n_head, d / self.n_head);
        let s = kv.0.dim(2)?;
        let scale = self.scale as f32;
        let q = q.contiguous()?;
        let per_head: Vec<(Vec<f32>, Vec<f32>)> = with_f32(&q, |q| {
            with_f32(&kv.0, |k| {
                with_f32(&kv.1, |vt| {
                    (0..h)
                        .into_par_iter()
                        .map(|i| {
                            let qh: Vec<f32> = (0..m)
                                .flat_map(|r| {
                                    q[r * d + i * dh..r * d + (i + 1) * dh]
                                        .iter()
                                        .map(|x| x * scale)
                                })
                                .collect();
                            let mut w =
                                matmul_f32(&qh, dh, &k[i * s * dh..(i + 1) * s * dh], s, None);
                            // Pre-softmax scores are copied only when alignment asks for them.
                            let scores = if want_scores { w.clone() } else { Vec::new() };
                            fastmath::softmax_rows(&mut w, s);
                            let o = matmul_f32(&w, s, &vt[i * dh * s..(i + 1) * dh * s], dh, None);
                            (o, scores)
                        })
                        .collect()
                })
            })
        })???;
        let mut o = vec![0f32; m * d];
        for (i, (oh, _)) in per_head.iter().enumerate() {
            for r in 0..m {
                o[r * d + i * dh..r * d + (i + 1) * dh].copy_from_slice(&oh[r * dh..(r + 1) * dh]);
            }
        }
        let o = Tensor::from_vec(o, (b, t, d), q.device())?;
        let scores = if want_scores {
            let all: Vec<f32> = per_head.into_iter().flat_map(|(_, sc)| sc).collect();
            Some(Tensor::from_vec(all, (1, h, m, s), q.device())?)
        } else {
            None
        };
        Ok((self.out.forward(&o)?, scores))
    }
}

/// Whisper's `ResidualAttentionBlock` without the cross-attention half (encoder layers).
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Dense,
    fc2: Dense,
    ln: LayerNorm,
    /// `ln` without gain and shift, for a `fc1` they are folded into.
    plain: LayerNorm,
}

/// A layer norm with unit gain and no shift: the normalisation alone.
fn plain_norm(d: usize, dev: &Device) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        Tensor::ones(d, DType::F32, dev)?,
        Tensor::zeros(d, DType::F32, dev)?,
        1e-5,
    ))
}

impl Mlp {
    fn load(vb: &VarBuilder<'_>, d: usize) -> Result<Self> {
        Ok(Self {
            fc1: Dense::new(linear(&vb.pp("fc1"), d, 4 * d, true)?),
            fc2: Dense::new(linear(&vb.pp("fc2"), 4 * d, d, true)?),
            ln: layer_norm(&vb.pp("final_layer_norm"), d)?,
            plain: plain_norm(d, vb.device())?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // nn.GELU() in openai/whisper is the exact (erf) form.
        let ln = if self.fc1.folded() {
            &self.plain
        } else {
            &self.ln
        };
        let h = self.fc1.forward(&ln.forward(x)?)?;
        let mut g = with_f32(&h, <[f32]>::to_vec)?;
        fastmath::gelu(&mut g);
        let h = Tensor::from_vec(g, h.shape(), h.device())?;
        x + self.fc2.forward(&h)?
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attn: Attention,
    attn_ln: LayerNorm,
    /// `attn_ln` without gain and shift, for a `qkv` they are folded into.
    plain: LayerNorm,
    mlp: Mlp,
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Attention,
    cross_ln: LayerNorm,
    mlp: Mlp,
}

/// Whisper's `AudioEncoder`.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv1_w: Tensor,
    conv1_b: Tensor,
    conv2_w: Tensor,
    conv2_b: Tensor,
    /// Fixed sinusoids (n_audio_ctx, D), computed rather than read (same to 2.4e-4).
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    ln_post: LayerNorm,
    n_mels: usize,
}

/// Whisper's `sinusoids(length, channels)`.
pub(super) fn sinusoids(length: usize, channels: usize, dev: &Device) -> Result<Tensor> {
    let half = channels / 2;
    let inc = (10000f64).ln() / (half.max(2) - 1) as f64;
    let mut data = vec![0f32; length * channels];
    for t in 0..length {
        for i in 0..half {
            let x = t as f64 * (-(i as f64) * inc).exp();
            data[t * channels + i] = x.sin() as f32;
            data[t * channels + half + i] = x.cos() as f32;
        }
    }
    Tensor::from_vec(data, (length, channels), dev)
}

impl Encoder {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<Self> {
        let d = cfg.d_model;
        let layers = (0..cfg.encoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(EncoderLayer {
                    attn: Attention::load(vb.pp("self_attn"), d, cfg.encoder_attention_heads)?,
                    attn_ln: layer_norm(&vb.pp("self_attn_layer_norm"), d)?,
                    plain: plain_norm(d, vb.device())?,
                    mlp: Mlp::load(&vb, d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1_w: vb.get((d, cfg.num_mel_bins, 3), "conv1.weight")?,
            conv1_b: vb.get(d, "conv1.bias")?,
            conv2_w: vb.get((d, d, 3), "conv2.weight")?,
            conv2_b: vb.get(d, "conv2.bias")?,
            positions: sinusoids(cfg.max_source_positions, d, vb.device())?,
            layers,
            ln_post: layer_norm(&vb.pp("layer_norm"), d)?,
            n_mels: cfg.num_mel_bins,
        })
    }

    /// Switches the linear layers to VNNI int8 (weights per output, activations per row) or
    /// back to f32. A no-op on CPUs without AVX-512 VNNI, where int8 would be slower.
    pub fn quantize_layers(&mut self, int8: bool) -> Result<()> {
        let on = int8 && qgemm::available();
        for l in &mut self.layers {
            if on {
                l.attn.qkv.quantize_folded(&l.attn_ln)?;
                l.mlp.fc1.quantize_folded(&l.mlp.ln)?;
            } else {
                l.attn.qkv.quantize(false)?;
                l.mlp.fc1.quantize(false)?;
            }
            l.attn.out.quantize(on)?;
            l.mlp.fc2.quantize(on)?;
        }
        Ok(())
    }

    /// True when the linear layers run in int8.
    pub fn layers_are_int8(&self) -> bool {
        self.layers.iter().any(|l| l.mlp.fc1.packed.is_some())
    }

    /// Encodes a log-mel window (1, n_mels, n_frames), n_frames even and at most
    /// 2 * n_audio_ctx, into (1, n_frames / 2, D).
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let (_, n_mels, n_frames) = mel.dims3()?;
        if n_mels != self.n_mels || n_frames > 2 * self.positions.dim(0)? {
            candle_core::bail!(
                "encoder input is {n_mels} x {n_frames}; expected {} mels and at most {} frames",
                self.n_mels,
                2 * self.positions.dim(0)?
            );
        }
        let x = mel
            .conv1d(&self.conv1_w, 1, 1, 1, 1)?
            .broadcast_add(&self.conv1_b.reshape((1, (), 1))?)?
            .gelu_erf()?;
        let x = x
            .conv1d(&self.conv2_w, 1, 2, 1, 1)?
            .broadcast_add(&self.conv2_b.reshape((1, (), 1))?)?
            .gelu_erf()?;
        let x = x.transpose(1, 2)?;
        let n = x.dim(1)?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, n)?)?;
        for layer in &self.layers {
            let ln = if layer.attn.qkv.folded() {
                &layer.plain
            } else {
                &layer.attn_ln
            };
            x = (&x + layer.attn.forward_full(&ln.forward(&x)?)?)?;
            x = layer.mlp.forward(&x)?;
        }
        self.ln_post.forward(&x)
    }
}

/// Per-sequence decoder state: the self-attention KV cache of every layer, batch-major.
#[derive(Debug, Clone, Default)]
pub struct DecoderState {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Number of positions already in the cache.
    pub len: usize,
}

impl DecoderState {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
        }
    }

    /// Keeps (and duplicates) batch rows: row i of the result is row `rows[i]` of `self`
    /// (beam search reordering; also expands one prompt pass to several beams).
    pub fn select(&mut self, rows: &[u32]) -> Result<()> {
        for kv in self.layers.iter_mut().flatten() {
            let idx = Tensor::new(rows, kv.0.device())?;
            *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
        }
        Ok(())
    }
}

/// Cross-attention keys/values of one audio window for every decoder layer.
#[derive(Debug, Clone)]
pub struct CrossKv {
    layers: Vec<(Tensor, Tensor)>,
    /// Number of audio positions (encoder frames).
    pub n_audio: usize,
}

/// The output projection: the tied embedding in f32, or an int8 copy.
#[derive(Debug)]
enum OutputProjection {
    F32,
    I8(I8Rows),
    /// VNNI-packed (int8 activations too).
    Packed(PackedI8),
}

/// Whisper's `TextDecoder`.
#[derive(Debug)]
pub struct Decoder {
    pub(crate) embed_tokens: Tensor,
    positions: Tensor,
    layers: Vec<DecoderLayer>,
    ln: LayerNorm,
    /// Shared with the base decoder of a word-scoped adapter, which reads the same embedding.
    output: std::sync::Arc<OutputProjection>,
    n_ctx: usize,
}

/// Output of one decoder pass.
#[derive(Debug)]
pub struct DecoderOutput {
    /// Final hidden states after the last layer norm, (B, T, D).
    pub hidden: Tensor,
    /// Pre-softmax cross-attention scores of the requested (layer, head) pairs, each
    /// (B, T, S), in the order requested.
    pub cross_scores: Vec<Tensor>,
}

impl Decoder {
    pub(crate) fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<Self> {
        let d = cfg.d_model;
        let h = cfg.decoder_attention_heads;
        let layers = (0..cfg.decoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(DecoderLayer {
                    attn: Attention::load(vb.pp("self_attn"), d, h)?,
                    attn_ln: layer_norm(&vb.pp("self_attn_layer_norm"), d)?,
                    cross: Attention::load(vb.pp("encoder_attn"), d, h)?,
                    cross_ln: layer_norm(&vb.pp("encoder_attn_layer_norm"), d)?,
                    mlp: Mlp::load(&vb, d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = vb.get((cfg.vocab_size, d), "embed_tokens.weight")?;
        Ok(Self {
            output: std::sync::Arc::new(OutputProjection::F32),
            embed_tokens,
            positions: vb.get((cfg.max_target_positions, d), "embed_positions.weight")?,
            layers,
            ln: layer_norm(&vb.pp("layer_norm"), d)?,
            n_ctx: cfg.max_target_positions,
        })
    }

    /// Number of decoder layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Maximum number of token positions (n_text_ctx).
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Replaces the f32 output projection with an int8 copy (per-row scales; or back).
    pub fn quantize_output(&mut self, int8: bool) -> Result<()> {
        self.output = std::sync::Arc::new(if int8 {
            let (v, d) = self.embed_tokens.dims2()?;
            let packed = if qgemm::available() {
                with_f32(&self.embed_tokens, |w| PackedI8::quantize(w, v, d))?
            } else {
                None
            };
            match packed {
                Some(p) => OutputProjection::Packed(p),
                None => OutputProjection::I8(with_f32(&self.embed_tokens, |w| {
                    I8Rows::quantize(w, v, d)
                })?),
            }
        } else {
            OutputProjection::F32
        });
        Ok(())
    }

    /// Uses `other`'s output projection (int8 or not) in place of this decoder's: for two
    /// decoders with the same token embedding, one copy of the largest matrix.
    pub(crate) fn share_output(&mut self, other: &Decoder) {
        self.output = std::sync::Arc::clone(&other.output);
    }

    /// Gives every decoder linear layer an int8 copy for decode steps (or drops them).
    pub fn quantize_layers(&mut self, int8: bool) -> Result<()> {
        // With VNNI, prompt prefill (up to 224 rows per window) runs in int8 too: held-out
        // WER is unchanged (9.6 %) and long-form is ~10 % faster. Without it, int8 pays only
        // on decode steps, where memory traffic is the bound. (The cross-attention key and
        // value projections stay f32: in int8 held-out WER rose to 11.3 %, the encoder's
        // final layer norm has the outlier channels folding removes elsewhere.)
        for l in &mut self.layers {
            for a in [&mut l.attn, &mut l.cross] {
                a.qkv.quantize(int8)?;
                a.q.quantize(int8)?;
                a.out.quantize(int8)?;
            }
            l.mlp.fc1.quantize(int8)?;
            l.mlp.fc2.quantize(int8)?;
        }
        Ok(())
    }

    /// True when the output projection is int8.
    pub fn output_is_int8(&self) -> bool {
        !matches!(*self.output, OutputProjection::F32)
    }

    /// Cross-attention keys/values of the encoder output `xa` (1, S, D).
    pub fn cross_kv(&self, xa: &Tensor) -> Result<CrossKv> {
        Ok(CrossKv {
            layers: self
                .layers
                .iter()
                .map(|l| l.cross.cross_kv(xa))
                .collect::<Result<_>>()?,
            n_audio: xa.dim(1)?,
        })
    }

    /// Runs `tokens` (B, T) u32 at positions `state.len ..` through the decoder, appending to
    /// the KV cache. `alignment_heads` selects (layer, head) pairs whose cross-attention scores
    /// are returned.
    pub fn forward(
        &self,
        tokens: &Tensor,
        cross: &CrossKv,
        state: &mut DecoderState,
        alignment_heads: &[(usize, usize)],
    ) -> Result<DecoderOutput> {
        let (b, t) = tokens.dims2()?;
        let offset = state.len;
        if offset + t > self.n_ctx {
            candle_core::bail!(
                "decoder context overflow: {} positions, at most {}",
                offset + t,
                self.n_ctx
            );
        }
        if state.layers.len() != self.layers.len() {
            *state = DecoderState::new(self.layers.len());
        }
        let emb = self
            .embed_tokens
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, t, ()))?;
        let mut x = emb.broadcast_add(&self.positions.narrow(0, offset, t)?)?;
        let mask = if t > 1 {
            Some(causal_mask(t, offset, x.device())?)
        } else {
            None
        };
        let mut cross_scores: Vec<Option<Tensor>> = vec![None; alignment_heads.len()];
        for (i, layer) in self.layers.iter().enumerate() {
            let a = layer.attn.forward_self(
                &layer.attn_ln.forward(&x)?,
                &mut state.layers[i],
                mask.as_ref(),
            )?;
            x = (x + a)?;
            let want = alignment_heads.iter().any(|&(l, _)| l == i);
            let (c, scores) =
                layer
                    .cross
                    .forward_cross(&layer.cross_ln.forward(&x)?, &cross.layers[i], want)?;
            x = (x + c)?;
            if let Some(scores) = scores {
                // (1, H, B*T, S) -> per head (B, T, S)
                for (k, &(l, h)) in alignment_heads.iter().enumerate() {
                    if l == i {
                        cross_scores[k] = Some(scores.i((0, h))?.reshape((b, t, ()))?);
                    }
                }
            }
            x = layer.mlp.forward(&x)?;
        }
        state.len += t;
        Ok(DecoderOutput {
            hidden: self.ln.forward(&x)?,
            cross_scores: cross_scores.into_iter().flatten().collect(),
        })
    }

    /// Logits (N, V) of hidden states (N, D).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (n, d) = hidden.dims2()?;
        let (v, _) = self.embed_tokens.dims2()?;
        let h = hidden.to_dtype(DType::F32)?.contiguous()?;
        let out = with_f32(&h, |x| match &*self.output {
            OutputProjection::F32 => with_f32(&self.embed_tokens, |w| matmul_f32(x, d, w, v, None)),
            OutputProjection::I8(q) => Ok(matmul_i8(x, q)),
            OutputProjection::Packed(q) => Ok(qgemm::matmul(x, q, None)),
        })??;
        Tensor::from_vec(out, (n, v), hidden.device())
    }
}

/// Additive causal mask for `t` new positions after `offset` cached ones: (t, offset + t).
fn causal_mask(t: usize, offset: usize, dev: &Device) -> Result<Tensor> {
    let s = offset + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (t, s), dev)
}

/// Whisper: encoder + decoder.
#[derive(Debug)]
pub struct Whisper {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub config: Config,
}

impl Whisper {
    /// Loads from a Hugging Face layout (`model.encoder.*`, `model.decoder.*`).
    pub fn load(vb: VarBuilder<'_>, config: Config) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::load(vb.pp("model.encoder"), &config)?,
            decoder: Decoder::load(vb.pp("model.decoder"), &config)?,
            config,
        })
    }

    /// Encodes a mel window given as row-major (n_mels, n_frames) floats.
    pub fn encode(&self, mel: &[f32], n_frames: usize) -> Result<Tensor> {
        let n_mels = self.config.num_mel_bins;
        let t = Tensor::from_slice(mel, (1, n_mels, n_frames), &Device::Cpu)?;
        self.encoder.forward(&t)
    }
}

/// Log-softmax of one row of logits, in place of a tensor op (rows are small).
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    row.iter().map(|&x| x - lse).collect()
}

/// `(B, V)` logits tensor to rows.
pub fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    logits.to_dtype(DType::F32)?.to_vec2::<f32>()
}

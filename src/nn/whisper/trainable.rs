//! Whisper for training: a differentiable teacher-forced forward pass over the same tensors as
//! [`super::model`], with LoRA adapters or full updates on the parts that are not frozen.
//!
//! The inference network ([`super::model`]) leaves candle's graph for speed (dot products on
//! raw slices, int8 copies, a KV cache), so gradients cannot flow through it. This module
//! re-states the forward pass in plain candle ops, which all have backward rules: linear layers
//! as matmuls, layer norm and softmax composed from elementwise ops, `gelu_erf`, `conv1d`. It
//! agrees with the inference network to float rounding (tested below), so what is trained is
//! what is served.
//!
//! Every trained quantity is a *change* to a base tensor ([`super::adapter`] stores exactly
//! these): a LoRA pair `(A, B)` with `W' = W + alpha/r * B A` (B starts at zero, so training
//! starts from the base model), or a dense `delta` with `W' = W + delta` for full fine-tuning.
//! Base tensors never receive gradients.

use std::collections::{BTreeMap, HashMap};

use candle_core::{D, DType, Device, Result, Tensor, Var};

use super::adapter::Method;
use super::model::{Config, sinusoids};

/// Which part of the network stays fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// Train the decoder only (the encoder output can be computed once per clip).
    Encoder,
    /// Train the encoder only.
    Decoder,
    /// Train both.
    None,
}

impl Freeze {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encoder => "encoder",
            Self::Decoder => "decoder",
            Self::None => "none",
        }
    }

    pub fn trains_encoder(self) -> bool {
        self != Self::Encoder
    }

    pub fn trains_decoder(self) -> bool {
        self != Self::Decoder
    }
}

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    pub freeze: Freeze,
    pub method: Method,
    /// The decoder matrices LoRA adapts (ignored for full fine-tuning).
    pub scope: LoraScope,
    /// LoRA rank (ignored for full fine-tuning).
    pub rank: usize,
    /// LoRA scale numerator (alpha / rank multiplies B A).
    pub alpha: f32,
    pub seed: u64,
}

/// What the decoder's cross-attention reads.
#[derive(Debug)]
pub enum Cross<'a> {
    /// Encoder output (B, S, D).
    Audio(&'a Tensor),
    /// Per-layer keys and values (B, H, S, Dh), from [`TrainableWhisper::cross_kv`].
    Kv(&'a [(Tensor, Tensor)]),
}

/// A Whisper network whose trainable part is a set of changes to frozen base tensors.
#[derive(Debug)]
pub struct TrainableWhisper {
    pub config: Config,
    base: HashMap<String, Tensor>,
    /// Trained tensors by adapter name (`X.lora_a`, `X.lora_b`, `X.delta`).
    params: BTreeMap<String, Var>,
    scale: f64,
    enc_positions: Tensor,
}

/// Keys/values of an attention block: projected from an input, or given in head layout.
enum KvSource<'a> {
    Input(&'a Tensor),
    Heads(&'a Tensor, &'a Tensor),
}

/// Which matrices of a decoder layer LoRA adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraScope {
    /// Every projection of self-attention, the MLP, and the query and output of
    /// cross-attention.
    #[default]
    All,
    /// The query and output of cross-attention only: how the text reads the audio, leaving the
    /// decoder's language model (self-attention and MLP) as it was.
    CrossAttention,
}

impl LoraScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::CrossAttention => "cross-attention",
        }
    }
}

/// Names of the matrices LoRA adapts in one layer (`cross`: a decoder layer). Cross-attention
/// keys and values are left alone: they only re-describe the audio, which is the encoder's job
/// (adapt the encoder for audio problems), and keeping them fixed lets training compute them
/// once per clip instead of at every step, the largest cost of a decoder step on a 30 s window
/// (1500 positions). Encoder layers are adapted whole whatever the scope.
fn lora_targets(prefix: &str, cross: bool, scope: LoraScope) -> Vec<String> {
    let mut v = Vec::new();
    let whole = !cross || scope == LoraScope::All;
    if whole {
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            v.push(format!("{prefix}.self_attn.{proj}.weight"));
        }
    }
    if cross {
        for proj in ["q_proj", "out_proj"] {
            v.push(format!("{prefix}.encoder_attn.{proj}.weight"));
        }
    }
    if whole {
        v.push(format!("{prefix}.fc1.weight"));
        v.push(format!("{prefix}.fc2.weight"));
    }
    v
}

/// Deterministic uniform(-b, b) values (xorshift), so a seed fixes the LoRA initialisation.
fn uniform(n: usize, bound: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            ((u * 2.0 - 1.0) * bound as f64) as f32
        })
        .collect()
}

impl TrainableWhisper {
    /// Builds the trainable network over `base` (tensors by Hugging Face name, any float
    /// dtype; kept as f32).
    pub fn new(config: Config, base: HashMap<String, Tensor>, spec: &TrainSpec) -> Result<Self> {
        let mut base32 = HashMap::with_capacity(base.len());
        for (k, t) in base {
            base32.insert(k, t.to_dtype(DType::F32)?);
        }
        let dev = Device::Cpu;
        let mut params = BTreeMap::new();
        let mut parts: Vec<&str> = Vec::new();
        if spec.freeze.trains_encoder() {
            parts.push("model.encoder.");
        }
        if spec.freeze.trains_decoder() {
            parts.push("model.decoder.");
        }
        match spec.method {
            Method::Lora => {
                if spec.rank == 0 {
                    candle_core::bail!("LoRA needs a rank of at least 1");
                }
                let mut names = Vec::new();
                if spec.freeze.trains_encoder() {
                    for i in 0..config.encoder_layers {
                        names.extend(lora_targets(
                            &format!("model.encoder.layers.{i}"),
                            false,
                            spec.scope,
                        ));
                    }
                }
                if spec.freeze.trains_decoder() {
                    for i in 0..config.decoder_layers {
                        names.extend(lora_targets(
                            &format!("model.decoder.layers.{i}"),
                            true,
                            spec.scope,
                        ));
                    }
                }
                for (i, name) in names.iter().enumerate() {
                    let w = base32
                        .get(name)
                        .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
                    let (out, inp) = w.dims2()?;
                    // As the LoRA paper (and peft): A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.
                    let bound = 1.0 / (inp as f32).sqrt();
                    let a = Tensor::from_vec(
                        uniform(spec.rank * inp, bound, spec.seed ^ i as u64),
                        (spec.rank, inp),
                        &dev,
                    )?;
                    params.insert(format!("{name}.lora_a"), Var::from_tensor(&a)?);
                    params.insert(
                        format!("{name}.lora_b"),
                        Var::zeros((out, spec.rank), DType::F32, &dev)?,
                    );
                }
            }
            Method::Full => {
                for (name, t) in &base32 {
                    if parts.iter().any(|p| name.starts_with(p))
                        && name != "model.encoder.embed_positions.weight"
                    {
                        params.insert(
                            format!("{name}.delta"),
                            Var::zeros(t.shape(), DType::F32, &dev)?,
                        );
                    }
                }
            }
        }
        let enc_positions = sinusoids(config.max_source_positions, config.d_model, &dev)?;
        Ok(Self {
            config,
            base: base32,
            params,
            scale: if spec.method == Method::Lora {
                spec.alpha as f64 / spec.rank as f64
            } else {
                1.0
            },
            enc_positions,
        })
    }

    /// The trained variables (for the optimiser).
    pub fn vars(&self) -> Vec<Var> {
        self.params.values().cloned().collect()
    }

    /// Number of trained values.
    pub fn trained_values(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// The adapter tensors as they are now (names as in [`super::adapter`]).
    pub fn adapter_tensors(&self) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// The base tensor `name` as the forward pass sees it (base + change).
    pub fn weight(&self, name: &str) -> Result<Tensor> {
        let w = self
            .base
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
        if let Some(d) = self.params.get(&format!("{name}.delta")) {
            return w.broadcast_add(d.as_tensor());
        }
        if let (Some(a), Some(b)) = (
            self.params.get(&format!("{name}.lora_a")),
            self.params.get(&format!("{name}.lora_b")),
        ) {
            return w + (b.as_tensor().matmul(a.as_tensor())? * self.scale)?;
        }
        Ok(w.clone())
    }

    /// Names of the base tensors the adapter changes, sorted.
    pub fn changed_tensors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .params
            .keys()
            .filter_map(|k| {
                k.strip_suffix(".delta")
                    .or_else(|| k.strip_suffix(".lora_a"))
                    .map(str::to_string)
            })
            .collect();
        v.sort();
        v
    }

    /// True when training changes the cross-attention keys or values (then they cannot be
    /// precomputed with [`cross_kv`](Self::cross_kv)).
    pub fn trains_cross_kv(&self) -> bool {
        self.params
            .keys()
            .any(|k| k.contains("encoder_attn.k_proj") || k.contains("encoder_attn.v_proj"))
    }

    /// Cross-attention keys and values of every decoder layer for encoder output `xa`
    /// (B, S, D), in head layout (B, H, S, Dh).
    pub fn cross_kv(&self, xa: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        let (b, s, d) = xa.dims3()?;
        let h = self.config.decoder_attention_heads;
        let heads = |y: Tensor| -> Result<Tensor> {
            y.reshape((b, s, h, d / h))?.transpose(1, 2)?.contiguous()
        };
        (0..self.config.decoder_layers)
            .map(|i| {
                let p = format!("model.decoder.layers.{i}.encoder_attn");
                Ok((
                    heads(self.linear(xa, &format!("{p}.k_proj"), false)?)?,
                    heads(self.linear(xa, &format!("{p}.v_proj"), true)?)?,
                ))
            })
            .collect()
    }

    /// The frozen base tensor `name`.
    pub fn base_weight(&self, name: &str) -> Option<&Tensor> {
        self.base.get(name)
    }

    fn linear(&self, x: &Tensor, prefix: &str, bias: bool) -> Result<Tensor> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let y = x.broadcast_matmul(&w.t()?)?;
        if bias {
            y.broadcast_add(&self.weight(&format!("{prefix}.bias"))?)
        } else {
            Ok(y)
        }
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
        xn.broadcast_mul(&self.weight(&format!("{prefix}.weight"))?)?
            .broadcast_add(&self.weight(&format!("{prefix}.bias"))?)
    }

    fn attention(
        &self,
        prefix: &str,
        x: &Tensor,
        kv: KvSource<'_>,
        mask: Option<&Tensor>,
        n_head: usize,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let dh = d / n_head;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            y.reshape((b, n, n_head, dh))?.transpose(1, 2)?.contiguous()
        };
        let q = (self.linear(x, &format!("{prefix}.q_proj"), true)? * (dh as f64).powf(-0.5))?;
        let q = heads(q, t)?;
        let (k, v) = match kv {
            KvSource::Input(kv) => {
                let s = kv.dim(1)?;
                let k = self.linear(kv, &format!("{prefix}.k_proj"), false)?;
                let v = self.linear(kv, &format!("{prefix}.v_proj"), true)?;
                (heads(k, s)?, heads(v, s)?)
            }
            KvSource::Heads(k, v) => (k.clone(), v.clone()),
        };
        let mut att = q.matmul(&k.t()?.contiguous()?)?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let w = candle_nn::ops::softmax(&att, D::Minus1)?;
        let o = w.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.linear(&o, &format!("{prefix}.out_proj"), true)
    }

    fn mlp(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let h = self.layer_norm(x, &format!("{prefix}.final_layer_norm"))?;
        let h = self
            .linear(&h, &format!("{prefix}.fc1"), true)?
            .gelu_erf()?;
        x + self.linear(&h, &format!("{prefix}.fc2"), true)?
    }

    /// Encoder output (B, n_frames / 2, D) of log-mel windows (B, n_mels, n_frames).
    pub fn encode(&self, mel: &Tensor) -> Result<Tensor> {
        let p = "model.encoder";
        let conv = |x: &Tensor, name: &str, stride: usize| -> Result<Tensor> {
            x.conv1d(
                &self.weight(&format!("{p}.{name}.weight"))?,
                1,
                stride,
                1,
                1,
            )?
            .broadcast_add(
                &self
                    .weight(&format!("{p}.{name}.bias"))?
                    .reshape((1, (), 1))?,
            )?
            .gelu_erf()
        };
        let x = conv(mel, "conv1", 1)?;
        let x = conv(&x, "conv2", 2)?.transpose(1, 2)?;
        let n = x.dim(1)?;
        let mut x = x.broadcast_add(&self.enc_positions.narrow(0, 0, n)?)?;
        let h = self.config.encoder_attention_heads;
        for i in 0..self.config.encoder_layers {
            let l = format!("{p}.layers.{i}");
            let y = self.layer_norm(&x, &format!("{l}.self_attn_layer_norm"))?;
            x = (&x
                + self.attention(&format!("{l}.self_attn"), &y, KvSource::Input(&y), None, h)?)?;
            x = self.mlp(&x, &l)?;
        }
        self.layer_norm(&x, &format!("{p}.layer_norm"))
    }

    /// Logits (B, T, V) of token sequences `tokens` (B, T) given encoder output `xa` (B, S, D),
    /// every position attending to itself and the positions before it.
    pub fn decode(&self, tokens: &Tensor, xa: &Tensor) -> Result<Tensor> {
        self.decode_with(tokens, Cross::Audio(xa))
    }

    /// [`decode`](Self::decode) reading cross-attention from `cross`.
    pub fn decode_with(&self, tokens: &Tensor, cross: Cross<'_>) -> Result<Tensor> {
        let p = "model.decoder";
        let (b, t) = tokens.dims2()?;
        if t > self.config.max_target_positions {
            candle_core::bail!(
                "{t} tokens; the decoder holds at most {}",
                self.config.max_target_positions
            );
        }
        let embed = self.weight(&format!("{p}.embed_tokens.weight"))?;
        let pos = self.weight(&format!("{p}.embed_positions.weight"))?;
        let mut x = embed
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, t, ()))?
            .broadcast_add(&pos.narrow(0, 0, t)?)?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), tokens.device())?;
        let h = self.config.decoder_attention_heads;
        for i in 0..self.config.decoder_layers {
            let l = format!("{p}.layers.{i}");
            let y = self.layer_norm(&x, &format!("{l}.self_attn_layer_norm"))?;
            x = (&x
                + self.attention(
                    &format!("{l}.self_attn"),
                    &y,
                    KvSource::Input(&y),
                    Some(&mask),
                    h,
                )?)?;
            let y = self.layer_norm(&x, &format!("{l}.encoder_attn_layer_norm"))?;
            let kv = match &cross {
                Cross::Audio(xa) => KvSource::Input(xa),
                Cross::Kv(kv) => {
                    let (k, v) = kv.get(i).ok_or_else(|| {
                        candle_core::Error::Msg("cross keys/values for too few layers".into())
                    })?;
                    KvSource::Heads(k, v)
                }
            };
            x = (&x + self.attention(&format!("{l}.encoder_attn"), &y, kv, None, h)?)?;
            x = self.mlp(&x, &l)?;
        }
        let x = self.layer_norm(&x, &format!("{p}.layer_norm"))?;
        x.broadcast_matmul(&embed.t()?)
    }

    /// Mean cross-entropy of `targets` (B, T) u32 under `logits` (B, T, V) over the positions
    /// where `mask` (B, T) f32 is 1.
    pub fn loss(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let n = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
        Self::loss_sum(logits, targets, mask)? / n as f64
    }

    /// Summed cross-entropy over the masked positions (see [`loss`](Self::loss)).
    pub fn loss_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        let logp = candle_nn::ops::log_softmax(&logits.reshape((b * t, v))?, D::Minus1)?;
        let picked = logp
            .gather(&targets.reshape((b * t, 1))?, 1)?
            .reshape((b, t))?;
        (picked * mask)?.sum_all()?.neg()
    }

    /// Summed KL divergence from the teacher's distribution to the model's, over the masked
    /// positions: `sum_i mask_i sum_v p_t(v) (ln p_t(v) - ln p(v))`. `teacher_logp` (B, T, V)
    /// holds log-probabilities (rows where the mask is 0 may hold anything finite).
    /// Distilling replay from the base model keeps its whole distribution at each position,
    /// where cross-entropy on its transcript keeps only the top token.
    pub fn kl_sum(logits: &Tensor, teacher_logp: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        if teacher_logp.dims3()? != (b, t, v) {
            candle_core::bail!(
                "teacher {:?} does not match logits {:?}",
                teacher_logp.dims(),
                logits.dims()
            );
        }
        let logp = candle_nn::ops::log_softmax(&logits.reshape((b * t, v))?, D::Minus1)?;
        let tl = teacher_logp.reshape((b * t, v))?;
        let kl = (tl.exp()? * (tl - logp)?)?
            .sum(D::Minus1)?
            .reshape((b, t))?;
        (kl * mask)?.sum_all()
    }

    /// Summed `-ln(1 - p)` over the batch, where `p` is the probability of `token` (the
    /// `<|nocaptions|>` / `<|nospeech|>` token) at position `position` of `logits` (B, T, V):
    /// the binary cross-entropy of "this is speech" at the start-of-transcript position, the
    /// probability Whisper's no-speech gate reads. Teacher forcing never trains that position
    /// (its target, the first timestamp or `<|notimestamps|>`, is given), so without this term
    /// nothing tells the adapter that a voice it finds odd is still speech. Near zero when `p`
    /// is already small (`-ln(1 - p) ~ p`), so it only pulls on clips the gate might drop.
    pub fn no_speech_loss_sum(logits: &Tensor, position: usize, token: u32) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        if position >= t || token as usize >= v {
            candle_core::bail!("no-speech position {position} / token {token} outside {t}x{v}");
        }
        let row = logits.narrow(1, position, 1)?.reshape((b, v))?;
        let logp = candle_nn::ops::log_softmax(&row, D::Minus1)?;
        let idx = Tensor::full(token, (b, 1), logits.device())?;
        let p = logp.gather(&idx, 1)?.exp()?;
        // 1 - p floored so a certain "no speech" (p -> 1) gives a large but finite loss.
        let keep = p.neg()?.affine(1.0, 1.0)?.clamp(1e-6f32, 1f32)?;
        keep.log()?.sum_all()?.neg()
    }

    /// Summed KL divergence, over the batch, from `Bernoulli(p0)` to `Bernoulli(p)`, where `p`
    /// is the probability of `token` at `position` of `logits` (B, T, V) and `p0` (B) the
    /// base model's: zero while the network says "no speech" on a clip exactly as the base
    /// did. The anchor of [`no_speech_loss_sum`](Self::no_speech_loss_sum) on non-speech
    /// clips, as replay is the anchor of the transcript loss: pushed on speech alone, the
    /// probability falls everywhere and the gate lets hallucinations on noise through.
    pub fn no_speech_kl_sum(
        logits: &Tensor,
        position: usize,
        token: u32,
        p0: &Tensor,
    ) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        if position >= t || token as usize >= v {
            candle_core::bail!("no-speech position {position} / token {token} outside {t}x{v}");
        }
        let row = logits.narrow(1, position, 1)?.reshape((b, v))?;
        let logp = candle_nn::ops::log_softmax(&row, D::Minus1)?;
        let idx = Tensor::full(token, (b, 1), logits.device())?;
        let ln_p = logp.gather(&idx, 1)?.reshape(b)?;
        let ln_q = ln_p
            .exp()?
            .neg()?
            .affine(1.0, 1.0)?
            .clamp(1e-6f32, 1f32)?
            .log()?;
        let p0 = p0.to_dtype(DType::F32)?.clamp(1e-6f32, 1.0 - 1e-6)?;
        let q0 = p0.neg()?.affine(1.0, 1.0)?;
        let kl = ((&p0 * (p0.log()? - ln_p)?)? + (&q0 * (q0.log()? - ln_q)?)?)?;
        kl.sum_all()
    }

    /// Probability of `token` at `position` for each sequence of `logits` (B, T, V).
    pub fn token_prob(logits: &Tensor, position: usize, token: u32) -> Result<Vec<f32>> {
        let (b, _, v) = logits.dims3()?;
        let row = logits.narrow(1, position, 1)?.reshape((b, v))?;
        let p = candle_nn::ops::softmax(&row, D::Minus1)?;
        let idx = Tensor::full(token, (b, 1), logits.device())?;
        p.gather(&idx, 1)?.flatten_all()?.to_vec1()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{Optimizer, VarBuilder};

    #[test]
    fn kl_is_zero_for_the_teacher_itself_and_positive_elsewhere_on_masked_rows_only() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]]], &dev).unwrap();
        let own = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let mask = Tensor::new(&[[1.0f32, 1.0]], &dev).unwrap();
        let kl = |t: &Tensor, m: &Tensor| {
            TrainableWhisper::kl_sum(&logits, t, m)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(kl(&own, &mask).abs() < 1e-6);
        let other = candle_nn::ops::log_softmax(
            &Tensor::new(&[[[0.0f32, 0.0, 0.0], [3.0, 0.0, 0.0]]], &dev).unwrap(),
            D::Minus1,
        )
        .unwrap();
        assert!(kl(&other, &mask) > 0.1);
        // A masked row contributes nothing, whatever the teacher holds there.
        let first_only = Tensor::new(&[[1.0f32, 0.0]], &dev).unwrap();
        let mixed = Tensor::cat(
            &[own.narrow(1, 0, 1).unwrap(), other.narrow(1, 1, 1).unwrap()],
            1,
        )
        .unwrap();
        assert!(kl(&mixed, &first_only).abs() < 1e-6);
    }

    /// A random 2-layer Whisper small enough to train in a unit test.
    pub(crate) fn tiny_random() -> (Config, HashMap<String, Tensor>) {
        let cfg = Config {
            num_mel_bins: 8,
            max_source_positions: 16,
            d_model: 16,
            encoder_attention_heads: 2,
            encoder_layers: 1,
            vocab_size: 40,
            max_target_positions: 12,
            decoder_attention_heads: 2,
            decoder_layers: 2,
            suppress_tokens: vec![],
            begin_suppress_tokens: vec![],
        };
        let mc = crate::models::WhisperConfig {
            num_mel_bins: cfg.num_mel_bins,
            max_source_positions: cfg.max_source_positions,
            d_model: cfg.d_model,
            encoder_attention_heads: cfg.encoder_attention_heads,
            encoder_layers: cfg.encoder_layers,
            vocab_size: cfg.vocab_size,
            max_target_positions: cfg.max_target_positions,
            decoder_attention_heads: cfg.decoder_attention_heads,
            decoder_layers: cfg.decoder_layers,
            suppress_tokens: vec![],
        };
        let mut m = HashMap::new();
        for (i, (name, shape, _)) in crate::models::whisper_tensor_shapes(&mc)
            .into_iter()
            .enumerate()
        {
            let n: usize = shape.iter().product();
            let bound = if name.ends_with("layer_norm.weight") {
                0.0
            } else {
                0.3
            };
            let mut v = uniform(n, bound, 17 + i as u64);
            if name.contains("layer_norm.weight") {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            m.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
        }
        (cfg, m)
    }

    fn spec(freeze: Freeze, method: Method) -> TrainSpec {
        TrainSpec {
            freeze,
            method,
            scope: LoraScope::All,
            rank: 2,
            alpha: 4.0,
            seed: 1,
        }
    }

    #[test]
    fn forward_matches_the_inference_network() {
        let (cfg, base) = tiny_random();
        let vb = VarBuilder::from_tensors(base.clone(), DType::F32, &Device::Cpu);
        let net = super::super::model::Whisper::load(vb, cfg.clone()).unwrap();
        let tw =
            TrainableWhisper::new(cfg.clone(), base, &spec(Freeze::Encoder, Method::Lora)).unwrap();
        let mel: Vec<f32> = uniform(8 * 32, 1.0, 5);
        let mel_t = Tensor::from_vec(mel.clone(), (1, 8, 32), &Device::Cpu).unwrap();
        let a = net.encode(&mel, 32).unwrap();
        let b = tw.encode(&mel_t).unwrap();
        let diff = (a.clone() - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);

        let tokens = Tensor::new(&[[3u32, 7, 1, 9, 20]], &Device::Cpu).unwrap();
        let logits = tw.decode(&tokens, &a).unwrap();
        let cross = net.decoder.cross_kv(&a).unwrap();
        let mut state = super::super::model::DecoderState::new(cfg.decoder_layers);
        // The inference decoder runs the prefix at once, then one token (the KV-cache path).
        let out = net
            .decoder
            .forward(&tokens.narrow(1, 0, 4).unwrap(), &cross, &mut state, &[])
            .unwrap();
        let h = out.hidden.reshape((4, 16)).unwrap();
        let want = net.decoder.logits(&h).unwrap();
        let got = logits.narrow(1, 0, 4).unwrap().reshape((4, 40)).unwrap();
        let d = (want - got).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-3);
        let out = net
            .decoder
            .forward(&tokens.narrow(1, 4, 1).unwrap(), &cross, &mut state, &[])
            .unwrap();
        let want = net
            .decoder
            .logits(&out.hidden.reshape((1, 16)).unwrap())
            .unwrap();
        let got = logits.narrow(1, 4, 1).unwrap().reshape((1, 40)).unwrap();
        let d = (want - got).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-3);
    }

    fn train_steps(freeze: Freeze, method: Method, steps: usize) -> (f32, f32, TrainableWhisper) {
        train_spec_steps(&spec(freeze, method), steps)
    }

    fn train_spec_steps(spec: &TrainSpec, steps: usize) -> (f32, f32, TrainableWhisper) {
        let (cfg, base) = tiny_random();
        let tw = TrainableWhisper::new(cfg, base, spec).unwrap();
        let mel = Tensor::from_vec(uniform(2 * 8 * 32, 1.0, 9), (2, 8, 32), &Device::Cpu).unwrap();
        let tokens = Tensor::new(&[[1u32, 5, 6, 7], [1, 8, 9, 2]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[5u32, 6, 7, 2], [8, 9, 2, 2]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1.], [1., 1., 1., 0.]], &Device::Cpu).unwrap();
        let mut opt = candle_nn::AdamW::new(
            tw.vars(),
            candle_nn::ParamsAdamW {
                lr: 0.02,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let mut first = 0.0;
        let mut last = 0.0;
        for s in 0..steps {
            let xa = tw.encode(&mel).unwrap();
            let logits = tw.decode(&tokens, &xa).unwrap();
            let loss = TrainableWhisper::loss(&logits, &targets, &mask).unwrap();
            let l = loss.to_scalar::<f32>().unwrap();
            if s == 0 {
                first = l;
            }
            last = l;
            opt.backward_step(&loss).unwrap();
        }
        (first, last, tw)
    }

    #[test]
    fn every_mode_learns_and_leaves_frozen_parts_alone() {
        for (freeze, method) in [
            (Freeze::Encoder, Method::Lora),
            (Freeze::Decoder, Method::Lora),
            (Freeze::None, Method::Lora),
            (Freeze::Encoder, Method::Full),
            (Freeze::Decoder, Method::Full),
        ] {
            let (first, last, tw) = train_steps(freeze, method, 25);
            assert!(
                last < first * 0.8,
                "{freeze:?} {method:?}: loss {first} -> {last}"
            );
            let changed = tw.changed_tensors();
            assert!(!changed.is_empty());
            assert_eq!(
                changed.iter().any(|n| n.starts_with("model.encoder.")),
                freeze.trains_encoder(),
                "{freeze:?} {method:?}"
            );
            assert_eq!(
                changed.iter().any(|n| n.starts_with("model.decoder.")),
                freeze.trains_decoder(),
                "{freeze:?} {method:?}"
            );
        }
    }

    #[test]
    fn cross_attention_scope_learns_through_the_cross_attention_alone() {
        let mut sp = spec(Freeze::Encoder, Method::Lora);
        sp.scope = LoraScope::CrossAttention;
        let (first, last, tw) = train_spec_steps(&sp, 25);
        assert!(last < first * 0.9, "loss {first} -> {last}");
        let changed = tw.changed_tensors();
        assert!(!changed.is_empty());
        for n in &changed {
            assert!(
                n.starts_with("model.decoder.layers.")
                    && (n.ends_with("encoder_attn.q_proj.weight")
                        || n.ends_with("encoder_attn.out_proj.weight")),
                "{n} changed"
            );
        }
        let (cfg, base) = tiny_random();
        let all = TrainableWhisper::new(cfg, base, &spec(Freeze::Encoder, Method::Lora)).unwrap();
        assert!(tw.trained_values() < all.trained_values() / 2);
    }

    #[test]
    fn the_no_speech_term_is_minus_log_one_minus_p() {
        // Two sequences, three positions, four tokens; token 2 at position 1.
        let logits = Tensor::new(
            &[
                [[0f32, 0., 0., 0.], [0., 0., 0., 0.], [1., 2., 3., 4.]],
                [[5f32, 0., 0., 0.], [0., 0., 4., 0.], [0., 0., 0., 0.]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let p = TrainableWhisper::token_prob(&logits, 1, 2).unwrap();
        let e4 = 4f32.exp();
        assert!((p[0] - 0.25).abs() < 1e-6);
        assert!((p[1] - e4 / (e4 + 3.0)).abs() < 1e-6);
        let want = -(1.0 - p[0]).ln() - (1.0 - p[1]).ln();
        let got = TrainableWhisper::no_speech_loss_sum(&logits, 1, 2)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        assert!(TrainableWhisper::no_speech_loss_sum(&logits, 3, 2).is_err());
        assert!(TrainableWhisper::no_speech_loss_sum(&logits, 0, 4).is_err());
        // The anchor is zero where the network agrees with the base, positive elsewhere.
        let same = Tensor::new(&[p[0], p[1]], &Device::Cpu).unwrap();
        let kl = |p0: &Tensor| {
            TrainableWhisper::no_speech_kl_sum(&logits, 1, 2, p0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(kl(&same).abs() < 1e-5, "{}", kl(&same));
        assert!(kl(&Tensor::new(&[0.9f32, 0.9], &Device::Cpu).unwrap()) > 0.1);
    }

    /// The regression test for the adapter that learnt a name but left voices it found odd to
    /// the no-speech gate: training on the term lowers the no-speech token's probability at
    /// the start-of-transcript position, through the decoder's LoRA alone (the encoder and the
    /// audio it reads stay as they were), and next to the transcript loss it still learns.
    #[test]
    fn the_no_speech_term_lowers_the_no_speech_probability() {
        let (cfg, base) = tiny_random();
        let dev = Device::Cpu;
        let tw = TrainableWhisper::new(cfg, base, &spec(Freeze::Encoder, Method::Lora)).unwrap();
        let mel = Tensor::from_vec(uniform(2 * 8 * 32, 1.0, 9), (2, 8, 32), &dev).unwrap();
        let xa = tw.encode(&mel).unwrap();
        let tokens = Tensor::new(&[[1u32, 5, 6, 7], [1, 8, 9, 2]], &dev).unwrap();
        let targets = Tensor::new(&[[5u32, 6, 7, 2], [8, 9, 2, 2]], &dev).unwrap();
        // The first prediction (after the start token) is given, as in `hark-train`.
        let mask = Tensor::new(&[[0f32, 1., 1., 1.], [0., 1., 1., 0.]], &dev).unwrap();
        // The token the random model finds most likely after the start token, so there is
        // something to lower.
        let logits = tw.decode(&tokens, &xa).unwrap();
        let first: Vec<f32> = logits
            .narrow(1, 0, 1)
            .unwrap()
            .narrow(0, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ns = (0..first.len())
            .filter(|&i| ![5, 8].contains(&i))
            .max_by(|&a, &b| first[a].total_cmp(&first[b]))
            .unwrap() as u32;
        let before = TrainableWhisper::token_prob(&logits, 0, ns).unwrap();
        let mut opt = candle_nn::AdamW::new(
            tw.vars(),
            candle_nn::ParamsAdamW {
                lr: 0.02,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let (mut ce_first, mut ce_last) = (0.0, 0.0);
        for s in 0..25 {
            let logits = tw.decode(&tokens, &xa).unwrap();
            let ce = TrainableWhisper::loss(&logits, &targets, &mask).unwrap();
            let nsl =
                (TrainableWhisper::no_speech_loss_sum(&logits, 0, ns).unwrap() / 2.0).unwrap();
            let v = ce.to_scalar::<f32>().unwrap();
            if s == 0 {
                ce_first = v;
            }
            ce_last = v;
            opt.backward_step(&(ce + nsl).unwrap()).unwrap();
        }
        let after = TrainableWhisper::token_prob(&tw.decode(&tokens, &xa).unwrap(), 0, ns).unwrap();
        for (b, a) in before.iter().zip(&after) {
            assert!(*a < b * 0.5, "no-speech probability {b} -> {a}");
        }
        assert!(ce_last < ce_first * 0.8, "loss {ce_first} -> {ce_last}");
    }

    #[test]
    fn precomputed_cross_keys_give_the_same_logits() {
        let (cfg, base) = tiny_random();
        let tw = TrainableWhisper::new(cfg, base, &spec(Freeze::Encoder, Method::Lora)).unwrap();
        assert!(!tw.trains_cross_kv());
        let xa = Tensor::from_vec(uniform(2 * 6 * 16, 1.0, 3), (2, 6, 16), &Device::Cpu).unwrap();
        let tokens = Tensor::new(&[[1u32, 5, 6], [1, 8, 9]], &Device::Cpu).unwrap();
        let a = tw.decode(&tokens, &xa).unwrap();
        let kv = tw.cross_kv(&xa).unwrap();
        let b = tw.decode_with(&tokens, Cross::Kv(&kv)).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn an_untrained_lora_adapter_is_the_base_model() {
        let (cfg, base) = tiny_random();
        let tw =
            TrainableWhisper::new(cfg, base.clone(), &spec(Freeze::None, Method::Lora)).unwrap();
        for name in tw.changed_tensors() {
            let d = (tw.weight(&name).unwrap() - &base[&name])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{name}");
        }
        let _ = candle_nn::AdamW::new(tw.vars(), Default::default()).unwrap();
    }
}

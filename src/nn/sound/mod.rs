//! Sound-event classification (UrbanSound8K-style classes) on log-mel patches.
//!
//! Two architectures share one front end ([`crate::dsp::patches`], YAMNet's) and one model
//! directory format:
//!
//! - [`Arch::Yamnet`]: YAMNet's pretrained MobileNet trunk ([`backbone`], frozen, imported from
//!   the ONNX in a registry package by `hark-train`) and a small trained head on its 1024-d
//!   embedding. Transfer from AudioSet is what makes ~1 000 training clips enough.
//! - [`Arch::Cnn`]: a from-scratch log-mel CNN ([`cnn`], ~0.1 M parameters), the baseline.
//!
//! ```text
//! <model dir>/
//!   model.safetensors   backbone.{i}.weight|bias (f16, YAMNet only), head.* or cnn.* (f32)
//!   config.json         SoundModelConfig: arch, labels, front end, backbone layer specs
//!   hark-model.json     manifest (kind "sound"), MODEL_CARD.md, plots
//! ```
//!
//! A patch covers 0.975 s of audio; the classifier scores each patch independently (softmax over
//! the labels), and callers pool patches over a clip ([`clip_scores`]) or track them over time
//! (the `sound` stage).

pub mod backbone;
pub mod cnn;

use std::{collections::HashMap, path::Path};

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

pub use backbone::{Backbone, ConvSpec, ConvWeights};
pub use cnn::Cnn;

use super::NnError;
use crate::dsp::patches::{PatchFrontEnd, PatchParams};

/// Which network a sound model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Yamnet,
    Cnn,
}

/// `config.json` of a sound model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoundModelConfig {
    pub arch: Arch,
    /// Class names, in output order.
    pub labels: Vec<String>,
    pub frontend: PatchParams,
    /// YAMNet trunk layers, in order (empty for the CNN).
    #[serde(default)]
    pub backbone: Vec<ConvSpec>,
    /// Hidden units of the head on the embedding (0 = a linear head).
    #[serde(default)]
    pub head_hidden: usize,
    /// Channels of the CNN's conv blocks.
    #[serde(default)]
    pub cnn_channels: Vec<usize>,
}

impl SoundModelConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.frontend.validate()?;
        if self.labels.len() < 2 {
            return Err("a sound model needs at least two labels".into());
        }
        match self.arch {
            Arch::Yamnet if self.backbone.is_empty() => {
                Err("arch yamnet without backbone layers".into())
            }
            Arch::Cnn if self.cnn_channels.is_empty() => Err("arch cnn without channels".into()),
            _ => Ok(()),
        }
    }
}

/// Dropout whose masks come from a seeded generator: candle's `ops::dropout` draws from an
/// unseeded one, and `hark-train --seed` must give the same model twice.
#[derive(Debug)]
pub struct SeededDropout {
    p: f32,
    rng: std::sync::Mutex<rand::rngs::StdRng>,
}

impl SeededDropout {
    pub fn new(p: f32, seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            p,
            rng: std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        }
    }

    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        use rand::Rng;
        let keep = 1.0 - self.p;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f32>() < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?
    }
}

/// The trainable head on a backbone embedding: `[dim] -> hidden -> ReLU -> classes` (or linear).
#[derive(Debug)]
pub struct Head {
    hidden: Option<Linear>,
    out: Linear,
    dropout: SeededDropout,
}

impl Head {
    /// `seed` drives the training-time dropout masks.
    pub fn new(
        vb: VarBuilder<'_>,
        dim: usize,
        hidden: usize,
        classes: usize,
        seed: u64,
    ) -> candle_core::Result<Self> {
        let (hidden, d) = if hidden > 0 {
            (
                Some(candle_nn::linear(dim, hidden, vb.pp("hidden"))?),
                hidden,
            )
        } else {
            (None, dim)
        };
        Ok(Self {
            hidden,
            out: candle_nn::linear(d, classes, vb.pp("out"))?,
            dropout: SeededDropout::new(0.3, seed),
        })
    }
}

impl ModuleT for Head {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        if let Some(h) = &self.hidden {
            x = h.forward(&x)?.relu()?;
            if train {
                x = self.dropout.apply(&x)?;
            }
        }
        self.out.forward(&x)
    }
}

/// Tensor names of YAMNet's AudioSet classifier in a model directory (optional).
pub const AUDIOSET_WEIGHT: &str = "audioset.weight";
pub const AUDIOSET_BIAS: &str = "audioset.bias";

/// AudioSet classes that mean "someone is talking": Speech (0), Conversation (2) and
/// Narration (3). Child speech (1) is left out: it is what `children_playing` sounds like.
const SPEECH_CLASSES: [usize; 3] = [0, 2, 3];

#[derive(Debug)]
enum Net {
    Yamnet {
        backbone: Backbone,
        head: Head,
        /// `[521, dim]` and `[521]`: YAMNet's own AudioSet logits, for the speech gate.
        audioset: Option<(Tensor, Tensor)>,
    },
    Cnn(Cnn),
}

/// A loaded sound classifier. Inference only; `Send + Sync`, so one copy can serve the stage and
/// the one-shot RPC.
#[derive(Debug)]
pub struct SoundClassifier {
    pub config: SoundModelConfig,
    frontend: PatchFrontEnd,
    net: Net,
}

/// Reads backbone layer `i`'s tensors into [`ConvWeights`].
pub fn conv_from_tensors(
    tensors: &HashMap<String, Tensor>,
    i: usize,
    spec: &ConvSpec,
) -> Result<ConvWeights, String> {
    let get = |n: &str| {
        tensors
            .get(&format!("backbone.{i}.{n}"))
            .ok_or_else(|| format!("backbone.{i}.{n} is missing"))
            .and_then(|t| {
                let dims = t.dims().to_vec();
                t.to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map(|v| (dims, v))
                    .map_err(|e| e.to_string())
            })
    };
    let (wd, weight) = get("weight")?;
    let (_, bias) = get("bias")?;
    let [c_out, c_in_per, k, _] = wd[..] else {
        return Err(format!("backbone.{i}.weight has shape {wd:?}"));
    };
    Ok(ConvWeights {
        spec: spec.clone(),
        c_out,
        c_in: c_in_per * spec.group,
        k,
        weight,
        bias,
    })
}

impl SoundClassifier {
    /// Loads a model directory (`config.json` + `model.safetensors`).
    pub fn load(dir: &Path) -> Result<Self, NnError> {
        let (config, tensors, weights) = super::read_model_dir(dir, SoundModelConfig::validate)?;
        Self::from_tensors(config, tensors).map_err(|e| super::invalid_file(&weights, e))
    }

    /// Builds a classifier from named tensors (what `load` reads, or a trainer's variables).
    pub fn from_tensors(
        config: SoundModelConfig,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self, String> {
        config.validate()?;
        let f32s: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("backbone."))
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::F32)?)))
            .collect::<candle_core::Result<_>>()
            .map_err(|e| e.to_string())?;
        let vb = VarBuilder::from_tensors(f32s, DType::F32, &Device::Cpu);
        let classes = config.labels.len();
        let net = match config.arch {
            Arch::Yamnet => {
                let convs = config
                    .backbone
                    .iter()
                    .enumerate()
                    .map(|(i, s)| conv_from_tensors(&tensors, i, s))
                    .collect::<Result<Vec<_>, _>>()?;
                let backbone = Backbone::new(convs).map_err(|e| e.to_string())?;
                let head = Head::new(
                    vb.pp("head"),
                    backbone.dim(),
                    config.head_hidden,
                    classes,
                    0,
                )
                .map_err(|e| e.to_string())?;
                let audioset = match (tensors.get(AUDIOSET_WEIGHT), tensors.get(AUDIOSET_BIAS)) {
                    (Some(w), Some(b)) => Some((
                        w.to_dtype(DType::F32).map_err(|e| e.to_string())?,
                        b.to_dtype(DType::F32)
                            .and_then(|b| b.unsqueeze(0))
                            .map_err(|e| e.to_string())?,
                    )),
                    _ => None,
                };
                Net::Yamnet {
                    backbone,
                    head,
                    audioset,
                }
            }
            Arch::Cnn => Net::Cnn(
                Cnn::new(vb.pp("cnn"), &config.cnn_channels, classes, 0)
                    .map_err(|e| e.to_string())?,
            ),
        };
        Ok(Self {
            frontend: PatchFrontEnd::new(config.frontend.clone()),
            config,
            net,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.config.labels
    }

    pub fn frontend(&self) -> &PatchFrontEnd {
        &self.frontend
    }

    /// Class probabilities `[n][classes]` of `n` log-mel patches.
    pub fn patch_probs(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, NnError> {
        Ok(self.patch_probs_speech(patches, n)?.0)
    }

    /// As [`patch_probs`](Self::patch_probs), plus for each patch whether YAMNet's own AudioSet
    /// classifier ranks a speech class first (always false for models without it).
    pub fn patch_probs_speech(
        &self,
        patches: &[f32],
        n: usize,
    ) -> Result<(Vec<f32>, Vec<bool>), NnError> {
        let p = &self.config.frontend;
        let (h, w) = (p.patch_frames, p.n_mels);
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut speech = vec![false; n];
        let logits = match &self.net {
            Net::Yamnet {
                backbone,
                head,
                audioset,
            } => {
                let emb = backbone.embed(patches, n, h, w)?;
                let x = Tensor::from_vec(emb, (n, backbone.dim()), &Device::Cpu)?;
                if let Some((aw, ab)) = audioset {
                    let top = audioset_logits(&x, aw, ab)?
                        .argmax(candle_core::D::Minus1)?
                        .to_vec1::<u32>()?;
                    for (s, t) in speech.iter_mut().zip(top) {
                        *s = SPEECH_CLASSES.contains(&(t as usize));
                    }
                }
                head.forward_t(&x, false)?
            }
            Net::Cnn(cnn) => {
                let x = Tensor::from_slice(patches, (n, 1, h, w), &Device::Cpu)?;
                cnn.forward_t(&x, false)?
            }
        };
        let probs = candle_nn::ops::softmax_last_dim(&logits)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((probs, speech))
    }

    /// YAMNet's own AudioSet probabilities `[n][521]` (independent sigmoids, as AudioSet is
    /// multi-label) of `n` log-mel patches; None for models without that classifier.
    pub fn audioset_probs(&self, patches: &[f32], n: usize) -> Result<Option<Vec<f32>>, NnError> {
        let Net::Yamnet {
            backbone,
            audioset: Some((aw, ab)),
            ..
        } = &self.net
        else {
            return Ok(None);
        };
        if n == 0 {
            return Ok(Some(Vec::new()));
        }
        let p = &self.config.frontend;
        let emb = backbone.embed(patches, n, p.patch_frames, p.n_mels)?;
        let x = Tensor::from_vec(emb, (n, backbone.dim()), &Device::Cpu)?;
        let probs = candle_nn::ops::sigmoid(&audioset_logits(&x, aw, ab)?)?;
        Ok(Some(probs.flatten_all()?.to_vec1::<f32>()?))
    }

    /// Per-patch probabilities and speech flags of 16 kHz mono `samples`.
    pub fn classify_speech(&self, samples: &[f32]) -> Result<(Vec<f32>, Vec<bool>), NnError> {
        let (patches, starts) = self.frontend.patches(samples);
        self.patch_probs_speech(&patches, starts.len())
    }

    /// Backbone embeddings `[n][dim]` of `n` patches (None for architectures without one).
    pub fn embed(&self, patches: &[f32], n: usize) -> Option<Result<Vec<f32>, NnError>> {
        let p = &self.config.frontend;
        match &self.net {
            Net::Yamnet { backbone, .. } => {
                Some(backbone.embed(patches, n, p.patch_frames, p.n_mels))
            }
            Net::Cnn(_) => None,
        }
    }

    /// Per-patch probabilities of 16 kHz mono `samples`, with each patch's start sample.
    pub fn classify(&self, samples: &[f32]) -> Result<(Vec<f32>, Vec<usize>), NnError> {
        let (patches, starts) = self.frontend.patches(samples);
        let probs = self.patch_probs(&patches, starts.len())?;
        Ok((probs, starts))
    }
}

/// YAMNet's AudioSet logits `[n][521]` of embeddings `x` `[n][dim]`.
fn audioset_logits(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&weight.t()?)?.broadcast_add(bias)
}

/// Clip-level scores: the mean of the patches' probabilities.
pub fn clip_scores(probs: &[f32], classes: usize) -> Vec<f32> {
    let n = probs.len() / classes.max(1);
    let mut out = vec![0f32; classes];
    for row in probs.chunks(classes) {
        for (o, p) in out.iter_mut().zip(row) {
            *o += p / n.max(1) as f32;
        }
    }
    out
}

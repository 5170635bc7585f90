//! Whisper adapters: what `hark-train whisper-adapt` writes, and how a model directory holding
//! one is loaded as "base + adapter".
//!
//! An adapter directory holds `adapter.json` ([`AdapterMeta`]) and `adapter.safetensors`; the
//! base model is not copied (tiny.en is 75 MB, a rank-8 decoder adapter 0.5 MB). Tensors are
//! named after the base tensor they change:
//!
//! - `NAME.lora_a` (r, in) and `NAME.lora_b` (out, r): a LoRA pair, `W' = W + alpha/r * B A`
//!   (f16 or f32);
//! - `NAME.delta` (the shape of `NAME`, f16): a full fine-tune, `W' = W + delta`. The change is
//!   stored rather than the new weight because a step of a few 1e-5 on a weight of ~0.05 is
//!   below f16's resolution at that magnitude: `f16(W')` would round most of it away.
//!
//! The adapter records the sha256 of the base weights it was trained on and is refused on any
//! other base: a LoRA product added to different weights is noise.
//!
//! `decode_scope` says which tokens the adapted decoder decides: all of them, or only those
//! that spell its new words, the base decoder deciding the rest ([`DecodeScope::Words`]; then
//! [`Merged::originals`] rebuild the base decoder beside the adapted one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::super::NnError;

/// The adapter's description file.
pub const META_FILE: &str = "adapter.json";
/// The adapter's tensors.
pub const WEIGHTS_FILE: &str = "adapter.safetensors";

/// How the adapter changes the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Low-rank updates of the attention and MLP matrices.
    Lora,
    /// Every tensor of the trained part(s).
    Full,
}

/// Which tokens the adapter may decide when the model decodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeScope {
    /// The adapted decoder decides every token (adapters written before the scope existed).
    #[default]
    All,
    /// The base decoder decides every token except those that spell one of `new_words`, which
    /// the adapted decoder decides. Training moves words the examples never mention (a
    /// placebo adapter that teaches nothing flipped "ill-disposed" to "old-sposed"); scoped
    /// decoding keeps every other word as the base model would have written it. Needs the
    /// encoder unchanged: both decoders read the same audio encoding.
    Words,
}

impl DecodeScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Words => "words",
        }
    }
}

/// `adapter.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    /// Format version (1).
    pub schema: u32,
    /// Name of the base model directory (a sibling in the models directory, or any models
    /// search directory).
    pub base: String,
    /// sha256 of the base's `model.safetensors`.
    pub base_sha256: String,
    pub method: Method,
    /// LoRA rank (0 for full fine-tuning).
    #[serde(default)]
    pub rank: usize,
    /// LoRA scale numerator: updates are scaled by alpha / rank.
    #[serde(default)]
    pub alpha: f32,
    /// The part that was kept fixed: `encoder`, `decoder` or `none`.
    pub freeze: String,
    /// Passed the regression gate (or was forced): the daemon refuses adapters that are not.
    pub ready: bool,
    /// Why it is or is not ready (one line).
    pub gate: String,
    /// Words the adapter was trained to recognise (from the examples, absent from replay).
    #[serde(default)]
    pub new_words: Vec<String>,
    /// Which tokens the adapted decoder decides (absent: all of them).
    #[serde(default)]
    pub decode_scope: DecodeScope,
    /// `new_words` as the examples write them ("Bess"): word-scoped decoding matches a
    /// spelling with a capital in its case, a lower-case one in any case. Absent: `new_words`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spellings: Vec<String>,
    /// UTC, RFC 3339.
    pub trained_at: String,
    /// Where the base was when the adapter was trained: tried when no models directory holds
    /// a model named `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_path: Option<String>,
}

impl AdapterMeta {
    /// Reads `dir/adapter.json`.
    pub fn load(dir: &Path) -> Result<Self, NnError> {
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).map_err(|e| NnError::Io {
            path: path.clone(),
            source: e,
        })?;
        let meta: Self = serde_json::from_slice(&bytes).map_err(|e| NnError::InvalidFile {
            path: path.clone(),
            reason: format!("not a Whisper adapter description: {e}"),
        })?;
        if meta.schema != 1 {
            return Err(NnError::InvalidFile {
                path,
                reason: format!("adapter schema {} is not supported (1 is)", meta.schema),
            });
        }
        Ok(meta)
    }

    /// Writes `dir/adapter.json`.
    pub fn write(&self, dir: &Path) -> Result<(), NnError> {
        let path = dir.join(META_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| NnError::InvalidFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text + "\n").map_err(|e| NnError::Io { path, source: e })
    }

    /// Scale of a LoRA product.
    pub fn scale(&self) -> f64 {
        if self.rank == 0 {
            1.0
        } else {
            self.alpha as f64 / self.rank as f64
        }
    }
}

/// True when `dir` holds an adapter rather than full weights.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(META_FILE).is_file()
}

/// The base model directory of an adapter in `dir`: a sibling named `meta.base`, else the
/// first models search directory holding it.
pub fn base_dir(dir: &Path, meta: &AdapterMeta) -> Result<PathBuf, NnError> {
    if meta.base.is_empty() || meta.base.contains(['/', '\\']) || meta.base.starts_with('.') {
        return Err(NnError::InvalidFile {
            path: dir.join(META_FILE),
            reason: format!("base {:?} is not a model name", meta.base),
        });
    }
    if let Some(parent) = dir.parent() {
        let sibling = parent.join(&meta.base);
        if sibling.join("model.safetensors").is_file() {
            return Ok(sibling);
        }
    }
    if let Ok(found) = crate::models::find(crate::models::WHISPER_KIND, &meta.base, None) {
        return Ok(found);
    }
    if let Some(p) = meta.base_path.as_deref().map(PathBuf::from)
        && p.join("model.safetensors").is_file()
    {
        return Ok(p);
    }
    Err(NnError::MissingFile {
        path: dir
            .parent()
            .unwrap_or(Path::new("."))
            .join(&meta.base)
            .join("model.safetensors"),
    })
}

/// Adds the adapter's changes to `base` (f32 tensors by name) in place and returns the
/// tensors it replaced, as they were. Every adapter tensor must name a base tensor of the
/// right shape and hold finite values; nothing is changed unless all of them do.
pub fn apply(
    base: &mut HashMap<String, Tensor>,
    adapter: &HashMap<String, Tensor>,
    meta: &AdapterMeta,
    path: &Path,
) -> Result<HashMap<String, Tensor>, NnError> {
    let invalid = |reason: String| NnError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut updates: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in adapter {
        let (target, kind) = match name.rsplit_once('.') {
            Some((target, kind @ ("lora_a" | "lora_b" | "delta"))) => (target, kind),
            _ => return Err(invalid(format!("unexpected tensor {name:?}"))),
        };
        let w = base
            .get(target)
            .ok_or_else(|| invalid(format!("{name:?} changes {target:?}, which the base lacks")))?;
        let t = t.to_dtype(DType::F32)?;
        let finite = t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(invalid(format!("{name:?} holds NaN or infinite values")));
        }
        let delta = match kind {
            "delta" => t,
            "lora_a" => {
                let b_name = format!("{target}.lora_b");
                let b = adapter
                    .get(&b_name)
                    .ok_or_else(|| invalid(format!("{name:?} has no {b_name:?}")))?
                    .to_dtype(DType::F32)?;
                let (r_a, _) = t.dims2()?;
                let (_, r_b) = b.dims2()?;
                if r_a != r_b || (meta.rank != 0 && r_a != meta.rank) {
                    return Err(invalid(format!(
                        "{target}: LoRA ranks {r_a} and {r_b} do not match rank {}",
                        meta.rank
                    )));
                }
                (b.matmul(&t)? * meta.scale())?
            }
            _ => {
                // lora_b is used with its lora_a.
                if !adapter.contains_key(&format!("{target}.lora_a")) {
                    return Err(invalid(format!("{name:?} has no {target}.lora_a")));
                }
                continue;
            }
        };
        if delta.dims() != w.dims() {
            return Err(invalid(format!(
                "{name:?} has shape {:?}; {target:?} is {:?}",
                delta.dims(),
                w.dims()
            )));
        }
        updates.push((target.to_string(), delta));
    }
    let mut originals = HashMap::new();
    for (target, delta) in updates {
        let w = base.get(&target).expect("checked above");
        let w = (w.to_dtype(DType::F32)? + delta)?;
        if let Some(old) = base.insert(target.clone(), w) {
            originals.insert(target, old);
        }
    }
    Ok(originals)
}

/// An adapter directory loaded for decoding.
#[derive(Debug)]
pub struct Merged {
    pub meta: AdapterMeta,
    /// The base model's directory (config, tokenizer, weights).
    pub base_dir: PathBuf,
    /// The base weights with the adapter applied (f32).
    pub tensors: HashMap<String, Tensor>,
    /// The base weights the adapter changed, as they were (f32).
    pub originals: HashMap<String, Tensor>,
}

/// Loads an adapter directory: its description, base directory and the base weights with the
/// adapter applied (f32). Refuses an adapter that is not ready unless `allow_unready`.
pub fn load_merged(dir: &Path, allow_unready: bool) -> Result<Merged, NnError> {
    let meta = AdapterMeta::load(dir)?;
    if !meta.ready && !allow_unready {
        return Err(NnError::InvalidFile {
            path: dir.join(META_FILE),
            reason: format!(
                "this adapter did not pass its regression gate ({}); retrain it, or pass \
                 --force to hark-train whisper-adapt to install it anyway",
                meta.gate
            ),
        });
    }
    let base = base_dir(dir, &meta)?;
    let base_weights = base.join("model.safetensors");
    let (sha, _) = crate::models::sha256_file(&base_weights).map_err(|e| NnError::InvalidFile {
        path: base_weights.clone(),
        reason: e.to_string(),
    })?;
    if sha != meta.base_sha256 {
        return Err(NnError::InvalidFile {
            path: dir.join(META_FILE),
            reason: format!(
                "trained on base {} with weights sha256 {}, but {} has {sha}",
                meta.base,
                meta.base_sha256,
                base_weights.display()
            ),
        });
    }
    let mut tensors = candle_core::safetensors::load(&base_weights, &Device::Cpu).map_err(|e| {
        NnError::InvalidFile {
            path: base_weights.clone(),
            reason: e.to_string(),
        }
    })?;
    for t in tensors.values_mut() {
        *t = t.to_dtype(DType::F32)?;
    }
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(NnError::MissingFile { path });
    }
    let adapter =
        candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| NnError::InvalidFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if adapter.is_empty() {
        return Err(NnError::InvalidFile {
            path,
            reason: "the adapter holds no tensors".into(),
        });
    }
    let originals = apply(&mut tensors, &adapter, &meta, &path)?;
    Ok(Merged {
        meta,
        base_dir: base,
        tensors,
        originals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(rank: usize) -> AdapterMeta {
        AdapterMeta {
            schema: 1,
            base: "tiny".into(),
            base_sha256: String::new(),
            method: if rank > 0 { Method::Lora } else { Method::Full },
            rank,
            alpha: 2.0 * rank as f32,
            freeze: "encoder".into(),
            ready: true,
            gate: "test".into(),
            new_words: vec![],
            decode_scope: DecodeScope::All,
            spellings: vec![],
            trained_at: String::new(),
            base_path: None,
        }
    }

    #[test]
    fn lora_and_delta_are_added_to_the_named_weights() {
        let dev = Device::Cpu;
        let mut base = HashMap::new();
        base.insert(
            "w".to_string(),
            Tensor::ones((3, 2), DType::F32, &dev).unwrap(),
        );
        base.insert("b".to_string(), Tensor::zeros(3, DType::F32, &dev).unwrap());
        let mut ad = HashMap::new();
        // B (3,1) A (1,2): B A = [[1,2],[2,4],[3,6]]; scale alpha/r = 2.
        ad.insert(
            "w.lora_a".to_string(),
            Tensor::new(&[[1f32, 2.]], &dev).unwrap(),
        );
        ad.insert(
            "w.lora_b".to_string(),
            Tensor::new(&[[1f32], [2.], [3.]], &dev).unwrap(),
        );
        ad.insert(
            "b.delta".to_string(),
            Tensor::new(&[0.5f32, -1., 0.], &dev)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap(),
        );
        let originals = apply(&mut base, &ad, &meta(1), Path::new("x")).unwrap();
        assert_eq!(originals.len(), 2);
        assert_eq!(
            originals["w"].to_vec2::<f32>().unwrap(),
            vec![vec![1., 1.]; 3]
        );
        let w = base["w"].to_vec2::<f32>().unwrap();
        assert_eq!(w, vec![vec![3., 5.], vec![5., 9.], vec![7., 13.]]);
        assert_eq!(base["b"].to_vec1::<f32>().unwrap(), vec![0.5, -1., 0.]);
    }

    #[test]
    fn broken_adapters_are_refused_and_change_nothing() {
        let dev = Device::Cpu;
        let mut base = HashMap::new();
        base.insert(
            "w".to_string(),
            Tensor::ones((2, 2), DType::F32, &dev).unwrap(),
        );
        let cases: Vec<(&str, Tensor)> = vec![
            ("v.delta", Tensor::ones((2, 2), DType::F32, &dev).unwrap()),
            ("w.delta", Tensor::ones((3, 2), DType::F32, &dev).unwrap()),
            ("w.weird", Tensor::ones((2, 2), DType::F32, &dev).unwrap()),
            (
                "w.delta",
                Tensor::new(&[[f32::NAN, 0.], [0., 0.]], &dev).unwrap(),
            ),
            ("w.lora_a", Tensor::ones((1, 2), DType::F32, &dev).unwrap()),
        ];
        for (name, t) in cases {
            let mut ad = HashMap::new();
            ad.insert(name.to_string(), t);
            let err = apply(&mut base, &ad, &meta(1), Path::new("x")).unwrap_err();
            assert!(matches!(err, NnError::InvalidFile { .. }), "{name}: {err}");
            assert_eq!(base["w"].to_vec2::<f32>().unwrap(), vec![vec![1., 1.]; 2]);
        }
    }
}

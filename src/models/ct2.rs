//! CTranslate2 `model.bin` reader and the Whisper converter to Hugging Face tensor names.
//!
//! Format (binary version 6, little-endian; `str` = u16 length that counts a trailing NUL, the
//! bytes, the NUL):
//!
//! ```text
//! u32 binary_version (6)   str spec_name   u32 spec_revision   u32 num_variables
//! per variable: str name; u8 rank; u32 dims[rank]; u8 dtype; u32 num_bytes; data[num_bytes]
//! u32 num_aliases; per alias: str alias; str target
//! ```
//!
//! dtype codes: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. The file is consumed exactly.
//!
//! The reader never trusts a declared size: every length is checked against the bytes that
//! remain before anything is sliced, and nothing is preallocated from a count in the file, so a
//! truncated or corrupt file yields a [`Ct2Error`] naming the offset and variable.
//!
//! The converter ([`convert_whisper`]) maps CT2's `WhisperSpec` to the names of Hugging Face's
//! `WhisperForConditionalGeneration` (which candle's `whisper::model::Whisper::load` reads):
//! fused `[3D, D]` self-attention and `[2D, D]` cross-attention K/V projections are split by rows,
//! the all-zero key biases are dropped (Whisper's `k_proj` has no bias), the tied output
//! projection (`decoder/projection/weight`, an alias of the token embeddings) is not written
//! because candle multiplies by `model.decoder.embed_tokens.weight`, and the encoder sinusoids
//! are recomputed in full precision.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use half::{bf16, f16};
use serde::Deserialize;

use super::{WeightDType, WhisperConfig};

/// The only `model.bin` layout version this reader accepts.
pub const BINARY_VERSION: u32 = 6;

/// Element type of a CT2 variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    /// Decodes the on-disk code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::BF16,
            _ => return None,
        })
    }

    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::I8 => 1,
            Self::I16 => 2,
            Self::I32 => 3,
            Self::F16 => 4,
            Self::BF16 => 5,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }
}

impl fmt::Display for Ct2DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::I8 => "i8",
            Self::I16 => "i16",
            Self::I32 => "i32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        })
    }
}

/// Errors reading a `model.bin` or converting it. Offsets are byte offsets into the file.
#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error(
        "truncated at offset {offset}: {what} needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        offset: usize,
        what: String,
        needed: usize,
        available: usize,
    },
    #[error(
        "unsupported CTranslate2 binary version {0} (only version {BINARY_VERSION} is supported)"
    )]
    UnsupportedVersion(u32),
    #[error("bad string at offset {offset} ({what}): {reason}")]
    BadString {
        offset: usize,
        what: String,
        reason: &'static str,
    },
    #[error("variable {name:?} at offset {offset}: unknown dtype code {code}")]
    UnknownDType {
        name: String,
        offset: usize,
        code: u8,
    },
    #[error("variable {name:?} at offset {offset}: shape {dims:?} is too large")]
    ShapeOverflow {
        name: String,
        offset: usize,
        dims: Vec<usize>,
    },
    #[error(
        "variable {name:?} at offset {offset}: declares {declared} bytes but shape {dims:?} of \
         {dtype} needs {expected}"
    )]
    SizeMismatch {
        name: String,
        offset: usize,
        dims: Vec<usize>,
        dtype: Ct2DType,
        declared: usize,
        expected: usize,
    },
    #[error("variable {name:?} at offset {offset} is defined twice")]
    DuplicateVariable { name: String, offset: usize },
    #[error("alias {alias:?} points to {target:?}, which is not a variable")]
    DanglingAlias { alias: String, target: String },
    #[error("{count} unexpected trailing bytes at offset {offset} after the alias table")]
    TrailingBytes { offset: usize, count: usize },

    #[error("spec {0:?} is not a Whisper model (expected WhisperSpec)")]
    NotWhisper(String),
    #[error("variable {0:?} is missing")]
    MissingVariable(String),
    #[error("variable {name:?} has shape {found:?}, expected {expected}")]
    UnexpectedShape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error(
        "variable {name:?} is {dtype}; only f32/f16/bf16 weights can be converted (quantised \
         models are not supported)"
    )]
    UnsupportedDType { name: String, dtype: Ct2DType },
    #[error("scalar {name:?} is {found}, but only {expected} is supported ({meaning})")]
    UnsupportedSetting {
        name: String,
        found: i64,
        expected: i64,
        meaning: &'static str,
    },
    #[error(
        "{name:?}: the key slice of the fused bias is not zero (max |b| = {max}); Whisper's k_proj has no bias"
    )]
    NonZeroKeyBias { name: String, max: f32 },
    #[error(
        "decoder/projection/weight is not tied to decoder/embeddings/weight; candle's Whisper \
         needs a tied output projection"
    )]
    UntiedProjection,
    #[error("layer numbering of {prefix} is not contiguous (found layers {found:?})")]
    LayerGap { prefix: String, found: Vec<usize> },
    #[error("variable {0:?} is not part of the Whisper spec this converter knows")]
    UnexpectedVariable(String),
}

/// One variable: name, shape, dtype, and where its bytes are in the file buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    /// Empty for scalars.
    pub dims: Vec<usize>,
    pub dtype: Ct2DType,
    /// Byte offset of the variable's header in the file (for error messages).
    pub offset: usize,
    data: Range<usize>,
}

impl Variable {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A parsed `model.bin`, owning the file's bytes; variable data is borrowed from it.
#[derive(Debug)]
pub struct Ct2Model {
    bytes: Vec<u8>,
    pub binary_version: u32,
    pub spec_name: String,
    pub spec_revision: u32,
    variables: Vec<Variable>,
    index: BTreeMap<String, usize>,
    aliases: BTreeMap<String, String>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], Ct2Error> {
        let available = self.buf.len() - self.pos;
        if n > available {
            return Err(Ct2Error::Truncated {
                offset: self.pos,
                what: what(),
                needed: n,
                available,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], Ct2Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, Ct2Error> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Ct2Error> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, Ct2Error> {
        let offset = self.pos;
        let len = u16::from_le_bytes(self.array(what)?) as usize;
        let bytes = self.take(len, what)?;
        let bad = |reason| Ct2Error::BadString {
            offset,
            what: what(),
            reason,
        };
        match bytes.split_last() {
            Some((0, body)) => std::str::from_utf8(body)
                .map(str::to_owned)
                .map_err(|_| bad("not UTF-8")),
            _ => Err(bad("missing trailing NUL")),
        }
    }
}

impl Ct2Model {
    /// Reads and parses a `model.bin` file.
    pub fn read(path: &Path) -> Result<Self, super::ModelError> {
        let bytes = std::fs::read(path).map_err(super::io_err(path))?;
        Self::from_bytes(bytes).map_err(|source| super::ModelError::Ct2 {
            source_name: path.display().to_string(),
            source,
        })
    }

    /// Parses a whole `model.bin` held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, Ct2Error> {
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
        };
        let binary_version = r.u32(&|| "binary version".into())?;
        if binary_version != BINARY_VERSION {
            return Err(Ct2Error::UnsupportedVersion(binary_version));
        }
        let spec_name = r.string(&|| "spec name".into())?;
        let spec_revision = r.u32(&|| "spec revision".into())?;
        let num_variables = r.u32(&|| "variable count".into())?;

        let mut variables = Vec::new();
        let mut index = BTreeMap::new();
        for i in 0..num_variables {
            let offset = r.pos;
            let name = r.string(&|| format!("name of variable #{i}"))?;
            let what = |field: &str| {
                let name = name.clone();
                let field = field.to_owned();
                move || format!("{field} of variable {name:?}")
            };
            let rank = r.u8(&what("rank"))?;
            let dims_what = what("dims");
            let mut dims = Vec::with_capacity(usize::from(rank));
            for _ in 0..rank {
                dims.push(r.u32(&dims_what)? as usize);
            }
            let code = r.u8(&what("dtype"))?;
            let dtype = Ct2DType::from_code(code).ok_or_else(|| Ct2Error::UnknownDType {
                name: name.clone(),
                offset,
                code,
            })?;
            let declared = r.u32(&what("byte count"))? as usize;
            let expected = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .and_then(|n| n.checked_mul(dtype.size()))
                .ok_or_else(|| Ct2Error::ShapeOverflow {
                    name: name.clone(),
                    offset,
                    dims: dims.clone(),
                })?;
            if declared != expected {
                return Err(Ct2Error::SizeMismatch {
                    name,
                    offset,
                    dims,
                    dtype,
                    declared,
                    expected,
                });
            }
            let start = r.pos;
            r.take(declared, &what("data"))?;
            if index.contains_key(&name) {
                return Err(Ct2Error::DuplicateVariable { name, offset });
            }
            index.insert(name.clone(), variables.len());
            variables.push(Variable {
                name,
                dims,
                dtype,
                offset,
                data: start..start + declared,
            });
        }

        let num_aliases = r.u32(&|| "alias count".into())?;
        let mut aliases = BTreeMap::new();
        for i in 0..num_aliases {
            let alias = r.string(&|| format!("name of alias #{i}"))?;
            let target = r.string(&|| format!("target of alias {alias:?}"))?;
            aliases.insert(alias, target);
        }
        if r.pos != bytes.len() {
            return Err(Ct2Error::TrailingBytes {
                offset: r.pos,
                count: bytes.len() - r.pos,
            });
        }
        let model = Self {
            binary_version,
            spec_name,
            spec_revision,
            variables,
            index,
            aliases,
            bytes: Vec::new(),
        };
        for (alias, target) in &model.aliases {
            if model.resolve(alias).is_none() {
                return Err(Ct2Error::DanglingAlias {
                    alias: alias.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok(Self { bytes, ..model })
    }

    /// All variables in file order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// Alias -> target.
    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    /// The variable named `name`, following aliases (at most 16 hops, so cycles end).
    pub fn resolve(&self, name: &str) -> Option<&Variable> {
        let mut name = name;
        for _ in 0..16 {
            if let Some(&i) = self.index.get(name) {
                return Some(&self.variables[i]);
            }
            name = self.aliases.get(name)?;
        }
        None
    }

    /// Raw little-endian bytes of a variable of this model.
    pub fn data(&self, v: &Variable) -> &[u8] {
        &self.bytes[v.data.clone()]
    }

    /// Values of a float variable as f32.
    pub fn values_f32(&self, v: &Variable) -> Result<Vec<f32>, Ct2Error> {
        decode_f32(v.dtype, self.data(v)).ok_or_else(|| Ct2Error::UnsupportedDType {
            name: v.name.clone(),
            dtype: v.dtype,
        })
    }

    /// Value of an integer scalar (rank 0) variable.
    pub fn scalar(&self, name: &str) -> Option<i64> {
        let v = self.resolve(name)?;
        if !v.dims.is_empty() {
            return None;
        }
        let b = self.data(v);
        Some(match v.dtype {
            Ct2DType::I8 => i64::from(b[0] as i8),
            Ct2DType::I16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
            Ct2DType::I32 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => return None,
        })
    }
}

fn decode_f32(dtype: Ct2DType, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Ct2DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Ct2DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Ct2DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

fn encode(values: &[f32], dtype: WeightDType) -> Vec<u8> {
    match dtype {
        WeightDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        WeightDType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// Extra fields of a CT2 Whisper `config.json` (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Ct2WhisperConfig {
    /// Tokens never generated (Hugging Face `suppress_tokens`).
    #[serde(default)]
    pub suppress_ids: Vec<u32>,
    /// Tokens not allowed as the first generated token (`begin_suppress_tokens`).
    #[serde(default)]
    pub suppress_ids_begin: Vec<u32>,
    /// Language token ids (multilingual models).
    #[serde(default)]
    pub lang_ids: Vec<u32>,
    /// `[layer, head]` pairs of the cross-attention heads used for word timestamps.
    #[serde(default)]
    pub alignment_heads: Vec<(u32, u32)>,
}

/// A converted tensor in the output dtype (little-endian bytes, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    pub shape: Vec<usize>,
    pub dtype: WeightDType,
    pub data: Vec<u8>,
}

impl OutTensor {
    /// Values as f32 (for tests and inspection).
    pub fn to_f32(&self) -> Vec<f32> {
        let dtype = match self.dtype {
            WeightDType::F16 => Ct2DType::F16,
            WeightDType::F32 => Ct2DType::F32,
        };
        decode_f32(dtype, &self.data).unwrap_or_default()
    }
}

impl safetensors::View for &OutTensor {
    fn dtype(&self) -> safetensors::Dtype {
        match self.dtype {
            WeightDType::F16 => safetensors::Dtype::F16,
            WeightDType::F32 => safetensors::Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Result of [`convert_whisper`]: Hugging Face tensors plus the inferred config.
#[derive(Debug, Clone)]
pub struct ConvertedWhisper {
    pub config: WhisperConfig,
    pub dtype: WeightDType,
    /// Hugging Face name -> tensor, sorted by name.
    pub tensors: BTreeMap<String, OutTensor>,
}

impl ConvertedWhisper {
    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }
}

/// Whisper's fixed encoder positional encoding (`sinusoids` in openai/whisper), computed in f64.
pub fn whisper_sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let increment = (10_000f64).ln() / (half.saturating_sub(1).max(1)) as f64;
    let mut out = Vec::with_capacity(length * channels);
    for t in 0..length {
        let (sin, cos): (Vec<f32>, Vec<f32>) = (0..half)
            .map(|i| {
                let x = t as f64 * (-increment * i as f64).exp();
                (x.sin() as f32, x.cos() as f32)
            })
            .unzip();
        out.extend(sin);
        out.extend(cos);
    }
    out
}

struct Converter<'m> {
    model: &'m Ct2Model,
    dtype: WeightDType,
    used: BTreeSet<String>,
    out: BTreeMap<String, OutTensor>,
}

impl<'m> Converter<'m> {
    /// Looks a variable up (following aliases), checks its shape and dtype, marks it used.
    fn var(&mut self, name: &str, shape: &[usize]) -> Result<&'m Variable, Ct2Error> {
        let v = self
            .model
            .resolve(name)
            .ok_or_else(|| Ct2Error::MissingVariable(name.into()))?;
        if v.dims != shape {
            return Err(Ct2Error::UnexpectedShape {
                name: name.into(),
                expected: format!("{shape:?}"),
                found: v.dims.clone(),
            });
        }
        if !v.dtype.is_float() {
            return Err(Ct2Error::UnsupportedDType {
                name: name.into(),
                dtype: v.dtype,
            });
        }
        self.used.insert(v.name.clone());
        Ok(v)
    }

    /// Writes rows `rows` of `v` (viewed as `[dims[0], rest]`) as `dst` with shape `shape`.
    fn put(&mut self, dst: String, v: &Variable, rows: Range<usize>, shape: Vec<usize>) {
        let row_elems = v.dims.iter().skip(1).product::<usize>();
        let esize = v.dtype.size();
        let bytes =
            &self.model.data(v)[rows.start * row_elems * esize..rows.end * row_elems * esize];
        let same = matches!(
            (v.dtype, self.dtype),
            (Ct2DType::F16, WeightDType::F16) | (Ct2DType::F32, WeightDType::F32)
        );
        let data = if same {
            bytes.to_vec()
        } else {
            // `var` only lets float dtypes through, so decoding cannot fail.
            encode(&decode_f32(v.dtype, bytes).unwrap_or_default(), self.dtype)
        };
        self.out.insert(
            dst,
            OutTensor {
                shape,
                dtype: self.dtype,
                data,
            },
        );
    }

    fn copy(&mut self, src: &str, dst: &str, shape: &[usize]) -> Result<(), Ct2Error> {
        let v = self.var(src, shape)?;
        let rows = shape.first().copied().unwrap_or(1);
        self.put(dst.into(), v, 0..rows, shape.to_vec());
        Ok(())
    }

    /// A linear layer: `src/{weight,bias}` -> `dst.{weight,bias}`.
    fn linear(&mut self, src: &str, dst: &str, out: usize, inp: usize) -> Result<(), Ct2Error> {
        self.copy(
            &format!("{src}/weight"),
            &format!("{dst}.weight"),
            &[out, inp],
        )?;
        self.copy(&format!("{src}/bias"), &format!("{dst}.bias"), &[out])
    }

    fn layer_norm(&mut self, src: &str, dst: &str, d: usize) -> Result<(), Ct2Error> {
        self.copy(&format!("{src}/gamma"), &format!("{dst}.weight"), &[d])?;
        self.copy(&format!("{src}/beta"), &format!("{dst}.bias"), &[d])
    }

    /// A fused projection `[n*D, D]` split by rows into `dsts` (`k_proj` gets no bias, and its
    /// bias slice must be zero).
    fn fused(&mut self, src: &str, dst: &str, projs: &[&str], d: usize) -> Result<(), Ct2Error> {
        let n = projs.len();
        let w = self.var(&format!("{src}/weight"), &[n * d, d])?;
        let bias_name = format!("{src}/bias");
        let b = self.var(&bias_name, &[n * d])?;
        for (i, proj) in projs.iter().enumerate() {
            let rows = i * d..(i + 1) * d;
            self.put(format!("{dst}.{proj}.weight"), w, rows.clone(), vec![d, d]);
            if *proj == "k_proj" {
                let esize = b.dtype.size();
                let slice = &self.model.data(b)[rows.start * esize..rows.end * esize];
                let max = decode_f32(b.dtype, slice)
                    .unwrap_or_default()
                    .iter()
                    .fold(0f32, |m, x| m.max(x.abs()));
                if max != 0.0 {
                    return Err(Ct2Error::NonZeroKeyBias {
                        name: bias_name,
                        max,
                    });
                }
            } else {
                self.put(format!("{dst}.{proj}.bias"), b, rows, vec![d]);
            }
        }
        Ok(())
    }
}

fn count_layers(model: &Ct2Model, prefix: &str) -> Result<usize, Ct2Error> {
    let found: BTreeSet<usize> = model
        .variables()
        .iter()
        .filter_map(|v| v.name.strip_prefix(prefix)?.split('/').next()?.parse().ok())
        .collect();
    let n = found.len();
    if found.iter().copied().ne(0..n) {
        return Err(Ct2Error::LayerGap {
            prefix: prefix.into(),
            found: found.into_iter().collect(),
        });
    }
    Ok(n)
}

fn dims_of(model: &Ct2Model, name: &str, rank: usize) -> Result<Vec<usize>, Ct2Error> {
    let v = model
        .resolve(name)
        .ok_or_else(|| Ct2Error::MissingVariable(name.into()))?;
    if v.dims.len() != rank || v.dims.contains(&0) {
        return Err(Ct2Error::UnexpectedShape {
            name: name.into(),
            expected: format!("a non-empty rank-{rank} tensor"),
            found: v.dims.clone(),
        });
    }
    Ok(v.dims.clone())
}

/// Converts a CT2 `WhisperSpec` model to Hugging Face `WhisperForConditionalGeneration` tensors.
///
/// The config is inferred from tensor shapes (mel bins, width, vocabulary, context lengths, layer
/// counts) and the `num_heads` scalars; `suppress_tokens` comes from the CT2 `config.json`.
/// Unknown non-scalar variables, quantised weights, an untied output projection, non-zero key
/// biases and settings other than Whisper's (GELU, pre-norm, no embedding scaling, no ALiBi) are
/// errors rather than silently producing a model that computes something else.
pub fn convert_whisper(
    model: &Ct2Model,
    ct2_config: &Ct2WhisperConfig,
    dtype: WeightDType,
) -> Result<ConvertedWhisper, Ct2Error> {
    if model.spec_name != "WhisperSpec" {
        return Err(Ct2Error::NotWhisper(model.spec_name.clone()));
    }
    for (name, expected, meaning) in [
        ("decoder/activation", 3, "activation must be GELU"),
        ("decoder/pre_norm", 1, "layer norm before each block"),
        ("decoder/scale_embeddings", 0, "no embedding scaling"),
        ("decoder/alibi", 0, "no ALiBi"),
        (
            "decoder/start_from_zero_embedding",
            0,
            "positions start at 0",
        ),
    ] {
        if let Some(found) = model.scalar(name)
            && found != expected
        {
            return Err(Ct2Error::UnsupportedSetting {
                name: name.into(),
                found,
                expected,
                meaning,
            });
        }
    }

    let conv1 = dims_of(model, "encoder/conv1/weight", 3)?;
    let (d, n_mels) = (conv1[0], conv1[1]);
    let vocab = dims_of(model, "decoder/embeddings/weight", 2)?[0];
    let n_audio_ctx = dims_of(model, "encoder/position_encodings/encodings", 2)?[0];
    let n_text_ctx = dims_of(model, "decoder/position_encodings/encodings", 2)?[0];
    let heads = |name: &str| -> Result<usize, Ct2Error> {
        match model.scalar(name) {
            Some(h) if h > 0 && d % h as usize == 0 => Ok(h as usize),
            Some(h) => Err(Ct2Error::UnsupportedSetting {
                name: name.into(),
                found: h,
                expected: (d / 64).max(1) as i64,
                meaning: "heads must divide d_model",
            }),
            // Older spec revisions have no num_heads; every Whisper size uses 64-wide heads.
            None => {
                tracing::warn!(scalar = name, "Missing; assuming 64-wide attention heads.");
                Ok((d / 64).max(1))
            }
        }
    };
    let config = WhisperConfig {
        num_mel_bins: n_mels,
        max_source_positions: n_audio_ctx,
        d_model: d,
        encoder_attention_heads: heads("encoder/num_heads")?,
        encoder_layers: count_layers(model, "encoder/layer_")?,
        vocab_size: vocab,
        max_target_positions: n_text_ctx,
        decoder_attention_heads: heads("decoder/num_heads")?,
        decoder_layers: count_layers(model, "decoder/layer_")?,
        suppress_tokens: ct2_config.suppress_ids.clone(),
    };

    let mut c = Converter {
        model,
        dtype,
        used: BTreeSet::new(),
        out: BTreeMap::new(),
    };
    c.copy(
        "encoder/conv1/weight",
        "model.encoder.conv1.weight",
        &[d, n_mels, 3],
    )?;
    c.copy("encoder/conv1/bias", "model.encoder.conv1.bias", &[d])?;
    c.copy(
        "encoder/conv2/weight",
        "model.encoder.conv2.weight",
        &[d, d, 3],
    )?;
    c.copy("encoder/conv2/bias", "model.encoder.conv2.bias", &[d])?;

    // The stored sinusoids are f16; recompute them (exactly what openai/whisper and candle use)
    // unless the file holds something else, in which case the file wins.
    let pos = c.var("encoder/position_encodings/encodings", &[n_audio_ctx, d])?;
    let stored = model.values_f32(pos)?;
    let computed = whisper_sinusoids(n_audio_ctx, d);
    let max_diff = stored
        .iter()
        .zip(&computed)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let positions = if max_diff <= 2e-3 {
        computed
    } else {
        tracing::warn!(
            max_diff,
            "Encoder position encodings are not Whisper's sinusoids; copying them as stored."
        );
        stored
    };
    c.out.insert(
        "model.encoder.embed_positions.weight".into(),
        OutTensor {
            shape: vec![n_audio_ctx, d],
            dtype,
            data: encode(&positions, dtype),
        },
    );

    for side in ["encoder", "decoder"] {
        let layers = if side == "encoder" {
            config.encoder_layers
        } else {
            config.decoder_layers
        };
        for i in 0..layers {
            let src = format!("{side}/layer_{i}");
            let dst = format!("model.{side}.layers.{i}");
            c.fused(
                &format!("{src}/self_attention/linear_0"),
                &format!("{dst}.self_attn"),
                &["q_proj", "k_proj", "v_proj"],
                d,
            )?;
            c.linear(
                &format!("{src}/self_attention/linear_1"),
                &format!("{dst}.self_attn.out_proj"),
                d,
                d,
            )?;
            c.layer_norm(
                &format!("{src}/self_attention/layer_norm"),
                &format!("{dst}.self_attn_layer_norm"),
                d,
            )?;
            if side == "decoder" {
                c.linear(
                    &format!("{src}/attention/linear_0"),
                    &format!("{dst}.encoder_attn.q_proj"),
                    d,
                    d,
                )?;
                c.fused(
                    &format!("{src}/attention/linear_1"),
                    &format!("{dst}.encoder_attn"),
                    &["k_proj", "v_proj"],
                    d,
                )?;
                c.linear(
                    &format!("{src}/attention/linear_2"),
                    &format!("{dst}.encoder_attn.out_proj"),
                    d,
                    d,
                )?;
                c.layer_norm(
                    &format!("{src}/attention/layer_norm"),
                    &format!("{dst}.encoder_attn_layer_norm"),
                    d,
                )?;
            }
            c.linear(
                &format!("{src}/ffn/linear_0"),
                &format!("{dst}.fc1"),
                4 * d,
                d,
            )?;
            c.linear(
                &format!("{src}/ffn/linear_1"),
                &format!("{dst}.fc2"),
                d,
                4 * d,
            )?;
            c.layer_norm(
                &format!("{src}/ffn/layer_norm"),
                &format!("{dst}.final_layer_norm"),
                d,
            )?;
        }
        c.layer_norm(
            &format!("{side}/layer_norm"),
            &format!("model.{side}.layer_norm"),
            d,
        )?;
    }
    c.copy(
        "decoder/embeddings/weight",
        "model.decoder.embed_tokens.weight",
        &[vocab, d],
    )?;
    c.copy(
        "decoder/position_encodings/encodings",
        "model.decoder.embed_positions.weight",
        &[n_text_ctx, d],
    )?;

    // The output projection must be the token embeddings (candle multiplies by embed_tokens);
    // CT2 stores it as an alias, or possibly as an identical copy.
    let embeddings = model.resolve("decoder/embeddings/weight");
    match model.resolve("decoder/projection/weight") {
        None => {}
        Some(p) if Some(p) == embeddings => {}
        Some(p) if embeddings.is_some_and(|e| model.data(e) == model.data(p)) => {
            c.used.insert(p.name.clone());
        }
        Some(_) => return Err(Ct2Error::UntiedProjection),
    }

    if let Some(v) = model
        .variables()
        .iter()
        .find(|v| !v.dims.is_empty() && !c.used.contains(&v.name))
    {
        return Err(Ct2Error::UnexpectedVariable(v.name.clone()));
    }

    Ok(ConvertedWhisper {
        config,
        dtype,
        tensors: c.out,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes CT2 `model.bin` bytes (used by tests here and in `fetch`).
    #[derive(Default)]
    pub(crate) struct Ct2Writer {
        pub spec: String,
        pub vars: Vec<(String, Vec<u32>, Ct2DType, Vec<u8>)>,
        pub aliases: Vec<(String, String)>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend(((s.len() + 1) as u16).to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
    }

    impl Ct2Writer {
        pub(crate) fn f32(&mut self, name: &str, dims: &[u32], values: &[f32]) {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.vars
                .push((name.into(), dims.to_vec(), Ct2DType::F32, data));
        }

        pub(crate) fn f16(&mut self, name: &str, dims: &[u32], values: &[f32]) {
            let data = values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect();
            self.vars
                .push((name.into(), dims.to_vec(), Ct2DType::F16, data));
        }

        pub(crate) fn scalar_i8(&mut self, name: &str, v: i8) {
            self.vars
                .push((name.into(), vec![], Ct2DType::I8, vec![v as u8]));
        }

        pub(crate) fn scalar_i16(&mut self, name: &str, v: i16) {
            self.vars
                .push((name.into(), vec![], Ct2DType::I16, v.to_le_bytes().to_vec()));
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            let mut vars = self.vars.clone();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Vec::new();
            out.extend(BINARY_VERSION.to_le_bytes());
            put_str(&mut out, &self.spec);
            out.extend(3u32.to_le_bytes());
            out.extend((vars.len() as u32).to_le_bytes());
            for (name, dims, dtype, data) in &vars {
                put_str(&mut out, name);
                out.push(dims.len() as u8);
                for d in dims {
                    out.extend(d.to_le_bytes());
                }
                out.push(dtype.code());
                out.extend((data.len() as u32).to_le_bytes());
                out.extend(data);
            }
            out.extend((self.aliases.len() as u32).to_le_bytes());
            for (a, t) in &self.aliases {
                put_str(&mut out, a);
                put_str(&mut out, t);
            }
            out
        }
    }

    /// Distinct, exactly representable (in f16 too) values for a variable.
    fn seq(seed: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((seed * 131 + i * 7) % 512) as f32 / 64.0 - 4.0)
            .collect()
    }

    pub(crate) const D: usize = 8;
    pub(crate) const HEADS: i16 = 2;
    pub(crate) const MELS: usize = 3;
    pub(crate) const VOCAB: usize = 5;
    pub(crate) const AUDIO_CTX: usize = 6;
    pub(crate) const TEXT_CTX: usize = 4;

    /// A complete, tiny Whisper in CT2 form: 1 encoder layer, 2 decoder layers, f32 weights,
    /// a tied projection alias and zero key biases.
    pub(crate) fn tiny_whisper() -> Ct2Writer {
        let d = D as u32;
        let mut w = Ct2Writer {
            spec: "WhisperSpec".into(),
            ..Default::default()
        };
        let mut seed = 0;
        let mut var = |w: &mut Ct2Writer, name: &str, dims: &[u32]| {
            seed += 1;
            let n = dims.iter().product::<u32>() as usize;
            w.f32(name, dims, &seq(seed, n));
        };
        var(&mut w, "encoder/conv1/weight", &[d, MELS as u32, 3]);
        var(&mut w, "encoder/conv1/bias", &[d]);
        var(&mut w, "encoder/conv2/weight", &[d, d, 3]);
        var(&mut w, "encoder/conv2/bias", &[d]);
        w.f32(
            "encoder/position_encodings/encodings",
            &[AUDIO_CTX as u32, d],
            &whisper_sinusoids(AUDIO_CTX, D),
        );
        let fused_bias = |n: usize, seed: usize, k_at: usize| {
            let mut b = seq(seed, n * D);
            b[k_at * D..(k_at + 1) * D].fill(0.0);
            b
        };
        let layer = |w: &mut Ct2Writer,
                     var: &mut dyn FnMut(&mut Ct2Writer, &str, &[u32]),
                     p: String,
                     dec: bool| {
            var(
                w,
                &format!("{p}/self_attention/linear_0/weight"),
                &[3 * d, d],
            );
            w.f32(
                &format!("{p}/self_attention/linear_0/bias"),
                &[3 * d],
                &fused_bias(3, p.len() + 100, 1),
            );
            var(w, &format!("{p}/self_attention/linear_1/weight"), &[d, d]);
            var(w, &format!("{p}/self_attention/linear_1/bias"), &[d]);
            var(w, &format!("{p}/self_attention/layer_norm/gamma"), &[d]);
            var(w, &format!("{p}/self_attention/layer_norm/beta"), &[d]);
            if dec {
                var(w, &format!("{p}/attention/linear_0/weight"), &[d, d]);
                var(w, &format!("{p}/attention/linear_0/bias"), &[d]);
                var(w, &format!("{p}/attention/linear_1/weight"), &[2 * d, d]);
                w.f32(
                    &format!("{p}/attention/linear_1/bias"),
                    &[2 * d],
                    &fused_bias(2, p.len() + 200, 0),
                );
                var(w, &format!("{p}/attention/linear_2/weight"), &[d, d]);
                var(w, &format!("{p}/attention/linear_2/bias"), &[d]);
                var(w, &format!("{p}/attention/layer_norm/gamma"), &[d]);
                var(w, &format!("{p}/attention/layer_norm/beta"), &[d]);
            }
            var(w, &format!("{p}/ffn/linear_0/weight"), &[4 * d, d]);
            var(w, &format!("{p}/ffn/linear_0/bias"), &[4 * d]);
            var(w, &format!("{p}/ffn/linear_1/weight"), &[d, 4 * d]);
            var(w, &format!("{p}/ffn/linear_1/bias"), &[d]);
            var(w, &format!("{p}/ffn/layer_norm/gamma"), &[d]);
            var(w, &format!("{p}/ffn/layer_norm/beta"), &[d]);
        };
        layer(&mut w, &mut var, "encoder/layer_0".into(), false);
        var(&mut w, "encoder/layer_norm/gamma", &[d]);
        var(&mut w, "encoder/layer_norm/beta", &[d]);
        w.scalar_i16("encoder/num_heads", HEADS);
        for i in 0..2 {
            layer(&mut w, &mut var, format!("decoder/layer_{i}"), true);
        }
        var(&mut w, "decoder/layer_norm/gamma", &[d]);
        var(&mut w, "decoder/layer_norm/beta", &[d]);
        var(&mut w, "decoder/embeddings/weight", &[VOCAB as u32, d]);
        var(
            &mut w,
            "decoder/position_encodings/encodings",
            &[TEXT_CTX as u32, d],
        );
        w.scalar_i16("decoder/num_heads", HEADS);
        w.scalar_i8("decoder/activation", 3);
        w.scalar_i8("decoder/pre_norm", 1);
        w.scalar_i8("decoder/scale_embeddings", 0);
        w.aliases.push((
            "decoder/projection/weight".into(),
            "decoder/embeddings/weight".into(),
        ));
        w
    }

    fn find(w: &Ct2Writer, name: &str) -> Vec<f32> {
        let v = w.vars.iter().find(|v| v.0 == name).unwrap();
        decode_f32(v.2, &v.3).unwrap()
    }

    #[test]
    fn reader_round_trips_variables_and_aliases() {
        let w = tiny_whisper();
        let bytes = w.bytes();
        let m = Ct2Model::from_bytes(bytes).unwrap();
        assert_eq!(m.spec_name, "WhisperSpec");
        assert_eq!(m.spec_revision, 3);
        assert_eq!(m.variables().len(), w.vars.len());
        for (name, dims, dtype, data) in &w.vars {
            let v = m.resolve(name).unwrap();
            assert_eq!(
                &v.dims,
                &dims.iter().map(|&d| d as usize).collect::<Vec<_>>()
            );
            assert_eq!(v.dtype, *dtype);
            assert_eq!(m.data(v), &data[..], "{name}");
        }
        let proj = m.resolve("decoder/projection/weight").unwrap();
        assert_eq!(proj.name, "decoder/embeddings/weight");
        assert_eq!(m.scalar("decoder/num_heads"), Some(2));
        assert_eq!(m.scalar("decoder/activation"), Some(3));
        assert_eq!(m.scalar("decoder/embeddings/weight"), None);
    }

    #[test]
    fn converter_maps_names_and_values_exactly() {
        let w = tiny_whisper();
        let m = Ct2Model::from_bytes(w.bytes()).unwrap();
        let cfg = Ct2WhisperConfig {
            suppress_ids: vec![1, 2],
            ..Default::default()
        };
        let c = convert_whisper(&m, &cfg, WeightDType::F32).unwrap();
        assert_eq!(
            c.config,
            WhisperConfig {
                num_mel_bins: MELS,
                max_source_positions: AUDIO_CTX,
                d_model: D,
                encoder_attention_heads: 2,
                encoder_layers: 1,
                vocab_size: VOCAB,
                max_target_positions: TEXT_CTX,
                decoder_attention_heads: 2,
                decoder_layers: 2,
                suppress_tokens: vec![1, 2],
            }
        );
        let expected: Vec<(String, Vec<usize>)> = super::super::whisper_tensor_shapes(&c.config)
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect();
        let got: Vec<(String, Vec<usize>)> = c
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape.clone()))
            .collect();
        assert_eq!(got, expected);

        let t = |n: &str| c.tensors[n].to_f32();
        // Fused self-attention: rows [0:D] q, [D:2D] k, [2D:3D] v.
        let qkv = find(&w, "decoder/layer_1/self_attention/linear_0/weight");
        assert_eq!(
            t("model.decoder.layers.1.self_attn.q_proj.weight"),
            qkv[..D * D]
        );
        assert_eq!(
            t("model.decoder.layers.1.self_attn.k_proj.weight"),
            qkv[D * D..2 * D * D]
        );
        assert_eq!(
            t("model.decoder.layers.1.self_attn.v_proj.weight"),
            qkv[2 * D * D..]
        );
        let qkv_b = find(&w, "decoder/layer_1/self_attention/linear_0/bias");
        assert_eq!(
            t("model.decoder.layers.1.self_attn.q_proj.bias"),
            qkv_b[..D]
        );
        assert_eq!(
            t("model.decoder.layers.1.self_attn.v_proj.bias"),
            qkv_b[2 * D..]
        );
        // Cross-attention K/V: rows [0:D] k, [D:2D] v.
        let kv = find(&w, "decoder/layer_0/attention/linear_1/weight");
        assert_eq!(
            t("model.decoder.layers.0.encoder_attn.k_proj.weight"),
            kv[..D * D]
        );
        assert_eq!(
            t("model.decoder.layers.0.encoder_attn.v_proj.weight"),
            kv[D * D..]
        );
        let kv_b = find(&w, "decoder/layer_0/attention/linear_1/bias");
        assert_eq!(
            t("model.decoder.layers.0.encoder_attn.v_proj.bias"),
            kv_b[D..]
        );
        assert_eq!(
            t("model.decoder.layers.0.encoder_attn.q_proj.weight"),
            find(&w, "decoder/layer_0/attention/linear_0/weight")
        );
        assert_eq!(
            t("model.encoder.layers.0.self_attn_layer_norm.weight"),
            find(&w, "encoder/layer_0/self_attention/layer_norm/gamma")
        );
        assert_eq!(
            t("model.encoder.layers.0.fc2.weight"),
            find(&w, "encoder/layer_0/ffn/linear_1/weight")
        );
        assert_eq!(
            t("model.encoder.conv1.weight"),
            find(&w, "encoder/conv1/weight")
        );
        assert_eq!(
            t("model.decoder.embed_tokens.weight"),
            find(&w, "decoder/embeddings/weight")
        );
        assert_eq!(
            t("model.encoder.embed_positions.weight"),
            whisper_sinusoids(AUDIO_CTX, D)
        );
        assert!(!c.tensors.contains_key("proj_out.weight"));

        // f16 output: the same values (all exactly representable) in half precision.
        let h = convert_whisper(&m, &cfg, WeightDType::F16).unwrap();
        let hq = &h.tensors["model.decoder.layers.1.self_attn.q_proj.weight"];
        assert_eq!(hq.dtype, WeightDType::F16);
        assert_eq!(hq.data.len(), D * D * 2);
        assert_eq!(hq.to_f32(), qkv[..D * D]);
    }

    #[test]
    fn f16_source_is_copied_bit_exactly() {
        let mut w = tiny_whisper();
        for v in &mut w.vars {
            if v.2 == Ct2DType::F32 {
                let vals = decode_f32(v.2, &v.3).unwrap();
                v.3 = vals
                    .iter()
                    .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                    .collect();
                v.2 = Ct2DType::F16;
            }
        }
        let m = Ct2Model::from_bytes(w.bytes()).unwrap();
        let c = convert_whisper(&m, &Default::default(), WeightDType::F16).unwrap();
        let src = w
            .vars
            .iter()
            .find(|v| v.0 == "decoder/embeddings/weight")
            .unwrap();
        assert_eq!(c.tensors["model.decoder.embed_tokens.weight"].data, src.3);
    }

    #[test]
    fn converter_rejects_what_it_cannot_represent() {
        let convert = |w: &Ct2Writer| {
            let m = Ct2Model::from_bytes(w.bytes()).unwrap();
            convert_whisper(&m, &Default::default(), WeightDType::F32).unwrap_err()
        };
        // Non-zero key bias.
        let mut w = tiny_whisper();
        let b = w
            .vars
            .iter_mut()
            .find(|v| v.0 == "encoder/layer_0/self_attention/linear_0/bias")
            .unwrap();
        b.3[D * 4..D * 4 + 4].copy_from_slice(&1.0f32.to_le_bytes());
        assert!(matches!(convert(&w), Ct2Error::NonZeroKeyBias { .. }));
        // Untied projection.
        let mut w = tiny_whisper();
        w.aliases.clear();
        w.f32(
            "decoder/projection/weight",
            &[VOCAB as u32, D as u32],
            &seq(999, VOCAB * D),
        );
        assert!(matches!(convert(&w), Ct2Error::UntiedProjection));
        // Unknown variable.
        let mut w = tiny_whisper();
        w.f32("decoder/extra/weight", &[2], &[0.0, 1.0]);
        assert!(
            matches!(convert(&w), Ct2Error::UnexpectedVariable(n) if n == "decoder/extra/weight")
        );
        // Missing variable, wrong shape, wrong activation, wrong spec.
        let mut w = tiny_whisper();
        w.vars
            .retain(|v| v.0 != "decoder/layer_1/ffn/linear_1/bias");
        assert!(matches!(convert(&w), Ct2Error::MissingVariable(_)));
        let mut w = tiny_whisper();
        w.vars
            .retain(|v| v.0 != "encoder/layer_0/ffn/linear_0/bias");
        w.f32("encoder/layer_0/ffn/linear_0/bias", &[3], &[0.0; 3]);
        assert!(matches!(convert(&w), Ct2Error::UnexpectedShape { .. }));
        let mut w = tiny_whisper();
        w.vars.retain(|v| v.0 != "decoder/activation");
        w.scalar_i8("decoder/activation", 0);
        assert!(matches!(convert(&w), Ct2Error::UnsupportedSetting { .. }));
        let mut w = tiny_whisper();
        w.spec = "TransformerSpec".into();
        assert!(matches!(convert(&w), Ct2Error::NotWhisper(_)));
        // Quantised weights.
        let mut w = tiny_whisper();
        let v = w
            .vars
            .iter_mut()
            .find(|v| v.0 == "encoder/conv1/bias")
            .unwrap();
        v.2 = Ct2DType::I8;
        v.3.truncate(D);
        assert!(matches!(convert(&w), Ct2Error::UnsupportedDType { .. }));
    }

    fn small() -> Vec<u8> {
        let mut w = Ct2Writer {
            spec: "WhisperSpec".into(),
            ..Default::default()
        };
        w.f32("a/weight", &[2, 3], &seq(1, 6));
        w.f16("b/bias", &[3], &seq(2, 3));
        w.scalar_i16("a/num_heads", 6);
        w.aliases.push(("c/weight".into(), "a/weight".into()));
        w.bytes()
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = small();
        assert!(Ct2Model::from_bytes(bytes.clone()).is_ok());
        for cut in 0..bytes.len() {
            let err = Ct2Model::from_bytes(bytes[..cut].to_vec()).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    Ct2Error::Truncated { .. } | Ct2Error::UnsupportedVersion(_)
                ),
                "cut {cut}: {msg}"
            );
        }
        // The whole tiny Whisper too (bigger, with many variables).
        let big = tiny_whisper().bytes();
        for cut in (0..big.len()).step_by(7) {
            assert!(
                Ct2Model::from_bytes(big[..cut].to_vec()).is_err(),
                "cut {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(
            Ct2Model::from_bytes(extra),
            Err(Ct2Error::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let bytes = small();
        for i in 0..bytes.len() {
            for v in [0x00, 0xff, bytes[i] ^ 0x01, bytes[i].wrapping_add(0x80)] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = Ct2Model::from_bytes(b);
            }
        }
    }

    #[test]
    fn errors_name_the_variable_and_offset() {
        let bytes = small();
        let m = Ct2Model::from_bytes(bytes.clone()).unwrap();
        let a = m.resolve("a/weight").unwrap();
        // Declared byte count of "a/weight" sits right before its data: make it huge.
        let count_at = a.data.start - 4;
        let mut b = bytes.clone();
        b[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = Ct2Model::from_bytes(b).unwrap_err().to_string();
        assert!(err.contains("a/weight") && err.contains("offset"), "{err}");

        // A huge shape whose byte count matches is caught by the remaining length, not
        // allocated; a shape whose size overflows is caught before any arithmetic wraps.
        let one_var = |dims: &[u32], declared: u32| {
            let mut b = Vec::new();
            b.extend(BINARY_VERSION.to_le_bytes());
            put_str(&mut b, "X");
            b.extend(3u32.to_le_bytes());
            b.extend(1u32.to_le_bytes());
            put_str(&mut b, "huge");
            b.push(dims.len() as u8);
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.push(Ct2DType::I8.code());
            b.extend(declared.to_le_bytes());
            b
        };
        let err = Ct2Model::from_bytes(one_var(&[0x4000, 0x4000], 0x1000_0000)).unwrap_err();
        assert!(
            matches!(&err, Ct2Error::Truncated { what, needed: 0x1000_0000, .. } if what.contains("huge")),
            "{err}"
        );
        let err = Ct2Model::from_bytes(one_var(&[u32::MAX; 3], 8)).unwrap_err();
        assert!(matches!(err, Ct2Error::ShapeOverflow { .. }), "{err}");
        let err = Ct2Model::from_bytes(one_var(&[4], 8)).unwrap_err();
        assert!(
            matches!(
                err,
                Ct2Error::SizeMismatch {
                    declared: 8,
                    expected: 4,
                    ..
                }
            ),
            "{err}"
        );

        let mut bad_dtype = small();
        let dt_at = a.data.start - 5;
        bad_dtype[dt_at] = 9;
        let err = Ct2Model::from_bytes(bad_dtype).unwrap_err().to_string();
        assert!(
            err.contains("unknown dtype code 9") && err.contains("a/weight"),
            "{err}"
        );

        let mut dangling = Ct2Writer {
            spec: "X".into(),
            ..Default::default()
        };
        dangling.aliases.push(("x".into(), "y".into()));
        assert!(matches!(
            Ct2Model::from_bytes(dangling.bytes()),
            Err(Ct2Error::DanglingAlias { .. })
        ));
        let mut v5 = small();
        v5[0] = 5;
        assert!(matches!(
            Ct2Model::from_bytes(v5),
            Err(Ct2Error::UnsupportedVersion(5))
        ));
    }

    #[test]
    fn sinusoids_match_whisper_formula() {
        let s = whisper_sinusoids(3, 4);
        // channels 4: increment ln(10000)/1; t=1: [sin 1, sin 1e-4, cos 1, cos 1e-4].
        assert_eq!(s[..4], [0.0, 0.0, 1.0, 1.0]);
        assert!((s[4] - 1f32.sin()).abs() < 1e-7);
        assert!((s[5] - 1e-4f32.sin()).abs() < 1e-9);
        assert!((s[6] - 1f32.cos()).abs() < 1e-7);
    }
}

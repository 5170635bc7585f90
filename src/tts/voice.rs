//! Voices: the neural Piper VITS voice run in candle ([`crate::nn::vits`]), and espeak-ng's
//! formant synthesiser as the fallback when no neural voice is installed.
//!
//! A Piper voice directory (`harkd models fetch joe`) holds `voice.safetensors` (weights
//! converted from the voice's ONNX), `voice.onnx.json` (Piper's config: sample rate, scales,
//! `phoneme_id_map`), and the dictionaries the front end needs: `cmudict.dict` and `g2p.npz`.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::nn::vits::{VitsScales, VitsVoice};

use super::TtsError;

/// Files of a Piper voice directory.
pub const VOICE_WEIGHTS: &str = "voice.safetensors";
pub const VOICE_CONFIG: &str = "voice.onnx.json";
pub const CMUDICT: &str = "cmudict.dict";
pub const G2P_NPZ: &str = "g2p.npz";

/// Piper's special symbols.
const PAD: &str = "_";
const BOS: &str = "^";
const EOS: &str = "$";

/// A neural voice and its phoneme alphabet.
#[derive(Debug)]
pub struct PiperVoice {
    net: VitsVoice,
    ids: HashMap<char, Vec<i64>>,
    pad: Vec<i64>,
    bos: Vec<i64>,
    eos: Vec<i64>,
    language: String,
}

#[derive(serde::Deserialize)]
struct PiperJson {
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    espeak: Option<EspeakJson>,
}

#[derive(serde::Deserialize)]
struct EspeakJson {
    voice: String,
}

impl PiperVoice {
    pub fn load(dir: &Path) -> Result<Self, TtsError> {
        let config = dir.join(VOICE_CONFIG);
        let bad = |reason: String| TtsError::Voice(format!("{}: {reason}", config.display()));
        let text = std::fs::read(&config).map_err(|e| bad(e.to_string()))?;
        let json: PiperJson = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let mut ids = HashMap::new();
        for (k, v) in &json.phoneme_id_map {
            let mut chars = k.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                ids.insert(c, v.clone());
            }
        }
        let special = |s: &str| {
            json.phoneme_id_map
                .get(s)
                .cloned()
                .ok_or_else(|| bad(format!("phoneme_id_map has no {s:?}")))
        };
        let net = VitsVoice::load(&dir.join(VOICE_WEIGHTS), &config)
            .map_err(|e| TtsError::Voice(e.to_string()))?;
        Ok(Self {
            net,
            pad: special(PAD)?,
            bos: special(BOS)?,
            eos: special(EOS)?,
            ids,
            language: json.espeak.map_or_else(|| "en-us".into(), |e| e.voice),
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.net.sample_rate()
    }

    pub fn language(&self) -> &str {
        &self.language
    }

    /// Phonemes -> Piper's ids (`^ _ p _ p _ ... $`); symbols the voice does not know are
    /// skipped and returned, so the caller can say which.
    pub fn ids(&self, ipa: &str) -> (Vec<i64>, Vec<char>) {
        let mut out = self.bos.clone();
        out.extend(&self.pad);
        let mut unknown = Vec::new();
        for c in ipa.chars() {
            match self.ids.get(&c) {
                Some(id) => {
                    out.extend(id);
                    out.extend(&self.pad);
                }
                None => unknown.push(c),
            }
        }
        out.extend(&self.eos);
        (out, unknown)
    }

    /// Whether every symbol of `ipa` is in the voice's alphabet; the first that is not.
    pub fn check(&self, ipa: &str) -> Result<(), char> {
        match ipa.chars().find(|c| !self.ids.contains_key(c)) {
            Some(c) => Err(c),
            None => Ok(()),
        }
    }

    /// Speaks one sentence of phonemes at `rate` (1 normal).
    pub fn speak(&self, ipa: &str, rate: f32, seed: u64) -> Result<Vec<f32>, TtsError> {
        let mut out = Vec::new();
        self.speak_chunked(ipa, rate, seed, &mut |a| {
            out.extend_from_slice(a);
            true
        })?;
        Ok(out)
    }

    /// [`speak`](Self::speak), handing the audio over in pieces as it is decoded: the first
    /// piece (about 0.28 s of sound) is ready after the encoder and a small part of the decoder.
    pub fn speak_chunked(
        &self,
        ipa: &str,
        rate: f32,
        seed: u64,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), TtsError> {
        let (ids, unknown) = self.ids(ipa);
        if !unknown.is_empty() {
            tracing::debug!(?unknown, "Phonemes the voice does not know were skipped.");
        }
        let mut scales: VitsScales = self.net.default_scales();
        scales.length_scale /= rate.clamp(0.25, 4.0);
        // 24 latent frames first (0.28 s at a hop of 256), then 72, 216, 512 at most.
        self.net
            .synthesize_chunked(&ids, scales, seed, 24, 512, on_audio)
            .map_err(|e| TtsError::Voice(e.to_string()))
    }
}

/// espeak-ng run as a program (no library to link): text in on stdin, WAV out on stdout.
#[derive(Debug, Clone)]
pub struct EspeakVoice {
    program: PathBuf,
    voice: String,
}

/// espeak-ng's output rate.
const ESPEAK_RATE: u32 = 22_050;

impl EspeakVoice {
    /// Finds `espeak-ng` on `PATH`.
    pub fn find(voice: &str) -> Option<Self> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("espeak-ng"))
            .find(|p| p.is_file())
            .map(|program| Self {
                program,
                voice: voice.into(),
            })
    }

    pub fn sample_rate(&self) -> u32 {
        ESPEAK_RATE
    }

    pub fn language(&self) -> &str {
        &self.voice
    }

    /// Speaks plain words. espeak's normal rate is 175 words per minute.
    pub fn speak(&self, text: &str, rate: f32) -> Result<Vec<f32>, TtsError> {
        let wpm = (175.0 * rate.clamp(0.25, 4.0)).round().clamp(80.0, 450.0) as u32;
        let err = |e: String| TtsError::Voice(format!("espeak-ng: {e}"));
        let mut child = Command::new(&self.program)
            .args([
                "-v",
                &self.voice,
                "-s",
                &wpm.to_string(),
                "--stdout",
                "--stdin",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(e.to_string()))?;
        // Text goes in on stdin, so that text starting with "-" is not read as an option.
        let mut stdin = child.stdin.take().expect("piped");
        let body = text.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
        let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
        let _ = writer.join();
        if !out.status.success() {
            return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        let reader = hound::WavReader::new(std::io::Cursor::new(out.stdout))
            .map_err(|e| err(format!("unreadable output: {e}")))?;
        let scale = 1.0 / f32::from(i16::MAX);
        Ok(reader
            .into_samples::<i16>()
            .filter_map(Result::ok)
            .map(|s| f32::from(s) * scale)
            .collect())
    }
}

/// A voice the synthesiser can use.
#[derive(Debug)]
pub enum Voice {
    Piper {
        name: String,
        voice: Box<PiperVoice>,
    },
    Espeak {
        name: String,
        voice: EspeakVoice,
    },
}

impl Voice {
    pub fn name(&self) -> &str {
        match self {
            Voice::Piper { name, .. } | Voice::Espeak { name, .. } => name,
        }
    }

    pub fn sample_rate(&self) -> u32 {
        match self {
            Voice::Piper { voice, .. } => voice.sample_rate(),
            Voice::Espeak { voice, .. } => voice.sample_rate(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Voice::Piper { .. } => "neural (Piper VITS in candle)",
            Voice::Espeak { .. } => "formant (espeak-ng)",
        }
    }

    pub fn language(&self) -> &str {
        match self {
            Voice::Piper { voice, .. } => voice.language(),
            Voice::Espeak { voice, .. } => voice.language(),
        }
    }
}

//! Text-to-speech: text -> spoken words -> phonemes -> waveform.
//!
//! - [`normalize`]: written text -> the words a reader says ("$5.50" -> "five dollars and fifty
//!   cents", "x^2 + 3x = 10" -> "x squared plus three x equals ten").
//! - [`ssml`]: the SSML subset (breaks, say-as, phonemes, substitutions, rate).
//! - [`g2p`]: words -> IPA: the user's [`lexicon`], [`homographs`] decided from context,
//!   CMUdict, and a neural model for unknown words; [`phonemes`] converts notations.
//! - [`voice`]: the Piper VITS voice in candle, espeak-ng as the fallback.
//!
//! [`Tts::plan`] turns a request into sentence-sized [`Unit`]s and [`Tts::render`] speaks one, so
//! a caller streams audio sentence by sentence: the first sentence plays while the rest is
//! synthesised. Knows nothing of threads or gRPC.

pub mod g2p;
pub mod homographs;
pub mod lexicon;
pub mod normalize;
pub mod numbers;
pub mod phonemes;
pub mod ssml;
pub mod voice;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};

pub use normalize::normalize;

use g2p::{Phonemizer, Source, Token, to_ipa_string};
use lexicon::{Cmudict, UserLexicon};
use ssml::{Span, SpanKind};
use voice::{EspeakVoice, PiperVoice, Voice};

/// Errors of the synthesiser.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error(transparent)]
    Ssml(#[from] ssml::SsmlError),
    #[error(transparent)]
    Lexicon(#[from] lexicon::LexiconError),
    #[error("unknown voice {name:?}; installed: {known}")]
    UnknownVoice { name: String, known: String },
    #[error(
        "no voice is installed: fetch the neural voice with `harkd models fetch joe`, or \
         install espeak-ng"
    )]
    NoVoice,
    #[error("voice: {0}")]
    Voice(String),
    #[error("{0}")]
    Invalid(String),
}

/// `[tts]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsConfig {
    /// Default voice: a neural voice in the models directory (`harkd models fetch joe`), or
    /// `espeak` (espeak-ng, when installed).
    pub voice: String,
    /// Offer espeak-ng as a voice (and fall back to it when the neural voice is missing).
    pub espeak: bool,
    /// The user's pronunciation lexicon (TOML). Empty: `lexicon.toml` in the state directory,
    /// beside the transcript store.
    pub lexicon: String,
    /// Longest text (or SSML document) one request may hold, in characters.
    pub max_chars: usize,
    /// Syntheses running at once; more wait (their callers see no error, only delay).
    pub max_concurrent: usize,
    /// Entries the user lexicon may hold.
    pub max_lexicon_words: usize,
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            voice: "joe".into(),
            espeak: true,
            lexicon: String::new(),
            max_chars: 5000,
            max_concurrent: 2,
            max_lexicon_words: 10_000,
        }
    }
}

impl TtsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.voice.trim().is_empty() {
            return Err("tts.voice must name a voice".into());
        }
        for (name, v, hi) in [
            ("tts.max_chars", self.max_chars, 1_000_000),
            ("tts.max_concurrent", self.max_concurrent, 64),
            ("tts.max_lexicon_words", self.max_lexicon_words, 1_000_000),
        ] {
            if v == 0 || v > hi {
                return Err(format!("{name} must be within 1..={hi}"));
            }
        }
        Ok(())
    }

    pub fn resolved_lexicon(&self) -> PathBuf {
        if self.lexicon.is_empty() {
            crate::store::state_dir().join("lexicon.toml")
        } else {
            PathBuf::from(&self.lexicon)
        }
    }
}

/// What to say: plain text or an SSML document.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Text(&'a str),
    Ssml(&'a str),
}

/// One piece of a plan: a sentence to speak, or a pause.
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    Speech {
        /// The spoken words (for espeak, logs and clients).
        text: String,
        /// What the neural voice reads.
        ipa: String,
        /// 1 normal, 2 twice as fast.
        rate: f32,
        /// Word by word: spelling, phonemes and where they came from.
        tokens: Vec<Token>,
    },
    Pause {
        ms: u32,
    },
}

/// A sentence longer than this many phoneme characters is split at a comma or a word: the
/// voice's cost grows with length and a sentence is the unit of streaming.
const MAX_UNIT_PHONEMES: usize = 400;

/// The synthesiser: a phonemiser and the installed voices.
#[derive(Debug)]
pub struct Tts {
    phonemizer: Phonemizer,
    voices: Vec<Arc<Voice>>,
    default_voice: String,
}

/// A neural voice directory: one with the voice's weights and config.
pub fn is_voice_dir(dir: &Path) -> bool {
    dir.join(voice::VOICE_WEIGHTS).is_file() && dir.join(voice::VOICE_CONFIG).is_file()
}

impl Tts {
    /// Loads the neural voices found in `models_dirs` (the first directory with a name wins),
    /// espeak-ng if allowed and installed, the dictionaries (from the first neural voice; none
    /// without one), and the user lexicon.
    pub fn load(cfg: &TtsConfig, models_dirs: &[PathBuf]) -> Result<Self, TtsError> {
        let mut voices: Vec<Arc<Voice>> = Vec::new();
        let mut dict_dir = None;
        let mut found: Vec<PathBuf> = Vec::new();
        for root in models_dirs {
            let mut names: Vec<PathBuf> = std::fs::read_dir(root)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            names.sort();
            for d in names {
                if is_voice_dir(&d) && !found.iter().any(|f| f.file_name() == d.file_name()) {
                    found.push(d);
                }
            }
        }
        for dir in found {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let voice = PiperVoice::load(&dir)
                .map_err(|e| TtsError::Voice(format!("{}: {e}", dir.display())))?;
            dict_dir.get_or_insert(dir.clone());
            voices.push(Arc::new(Voice::Piper {
                name,
                voice: Box::new(voice),
            }));
        }
        if cfg.espeak
            && let Some(v) = EspeakVoice::find("en-us")
        {
            voices.push(Arc::new(Voice::Espeak {
                name: "espeak".into(),
                voice: v,
            }));
        }
        if voices.is_empty() {
            return Err(TtsError::NoVoice);
        }
        let lexicon = UserLexicon::open(&cfg.resolved_lexicon(), cfg.max_lexicon_words)?;
        let (cmudict, neural) = match &dict_dir {
            Some(d) => {
                let cmu = Cmudict::load(&d.join(voice::CMUDICT))?;
                let npz = d.join(voice::G2P_NPZ);
                let neural = if npz.is_file() {
                    Some(Arc::new(crate::nn::g2p::NeuralG2p::load(&npz).map_err(
                        |e| TtsError::Voice(format!("{}: {e}", npz.display())),
                    )?))
                } else {
                    None
                };
                (cmu, neural)
            }
            None => (Cmudict::default(), None),
        };
        let default_voice = if voices.iter().any(|v| v.name() == cfg.voice) {
            cfg.voice.clone()
        } else {
            let first = voices[0].name().to_string();
            tracing::warn!(
                configured = %cfg.voice,
                using = %first,
                "The configured voice is not installed; using another (fetch it with `harkd models fetch joe`)."
            );
            first
        };
        Ok(Self::from_parts(
            Phonemizer::new(Arc::new(cmudict), neural, Arc::new(RwLock::new(lexicon))),
            voices,
            default_voice,
        ))
    }

    pub fn from_parts(phonemizer: Phonemizer, voices: Vec<Arc<Voice>>, default: String) -> Self {
        Self {
            phonemizer,
            voices,
            default_voice: default,
        }
    }

    pub fn voices(&self) -> &[Arc<Voice>] {
        &self.voices
    }

    pub fn default_voice(&self) -> &str {
        &self.default_voice
    }

    pub fn phonemizer(&self) -> &Phonemizer {
        &self.phonemizer
    }

    /// The voice called `name` (empty: the default).
    pub fn voice(&self, name: &str) -> Result<Arc<Voice>, TtsError> {
        let name = if name.is_empty() {
            &self.default_voice
        } else {
            name
        };
        self.voices
            .iter()
            .find(|v| v.name() == name)
            .cloned()
            .ok_or_else(|| TtsError::UnknownVoice {
                name: name.into(),
                known: self
                    .voices
                    .iter()
                    .map(|v| v.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Text or SSML -> sentences and pauses. `rate` multiplies every rate the document sets.
    pub fn plan(&self, input: Input<'_>, rate: f32) -> Result<Vec<Unit>, TtsError> {
        if !(rate.is_finite() && (0.25..=4.0).contains(&rate)) {
            return Err(TtsError::Invalid(format!(
                "rate {rate} is outside 0.25..=4 (1 is normal speed)"
            )));
        }
        let spans = match input {
            Input::Text(t) => vec![Span {
                kind: SpanKind::Text(t.to_string()),
                rate: 1.0,
            }],
            Input::Ssml(doc) => ssml::parse(doc)?,
        };
        let mut plan = Planner {
            units: Vec::new(),
            tokens: Vec::new(),
            rate,
        };
        for span in spans {
            let r = (span.rate * rate).clamp(0.25, 4.0);
            if r != plan.rate {
                plan.flush();
                plan.rate = r;
            }
            match span.kind {
                SpanKind::Text(t) => plan.push(self.phonemizer.phonemize(&normalize(&t))),
                SpanKind::Words(w) => plan.push(self.phonemizer.phonemize(&w)),
                SpanKind::Ipa { ipa, text } => plan.push(vec![Token::Word {
                    text,
                    ipa,
                    source: Source::Markup,
                }]),
                SpanKind::Arpabet { phones, text } => {
                    let p = phonemes::parse_arpabet(&phones).map_err(|e| {
                        TtsError::Invalid(format!("<phoneme ph=\"{phones}\">: {e}"))
                    })?;
                    plan.push(vec![Token::Word {
                        text,
                        ipa: phonemes::arpabet_to_ipa(&p, true),
                        source: Source::Markup,
                    }]);
                }
                SpanKind::Break(ms) => {
                    plan.flush();
                    if ms > 0 {
                        plan.units.push(Unit::Pause { ms });
                    }
                }
                SpanKind::SentenceEnd => plan.flush(),
            }
        }
        plan.flush();
        Ok(plan.units)
    }

    /// Speaks one unit, handing the audio to `on_audio` in pieces as it is made (the neural
    /// voice decodes in chunks; the others deliver the unit at once). `on_audio` returning false
    /// stops early.
    pub fn render_chunked(
        &self,
        voice: &Voice,
        unit: &Unit,
        seed: u64,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), TtsError> {
        if let (Voice::Piper { voice, .. }, Unit::Speech { ipa, rate, .. }) = (voice, unit) {
            return voice.speak_chunked(ipa, *rate, seed, on_audio);
        }
        let audio = self.render(voice, unit, seed)?;
        on_audio(&audio);
        Ok(())
    }

    /// Speaks one unit with `voice`: mono samples at the voice's rate.
    pub fn render(&self, voice: &Voice, unit: &Unit, seed: u64) -> Result<Vec<f32>, TtsError> {
        match unit {
            Unit::Pause { ms } => {
                let n = (u64::from(*ms) * u64::from(voice.sample_rate()) / 1000) as usize;
                Ok(vec![0.0; n])
            }
            Unit::Speech {
                text, ipa, rate, ..
            } => match voice {
                Voice::Piper { voice, .. } => voice.speak(ipa, *rate, seed),
                Voice::Espeak { voice, .. } => voice.speak(text, *rate),
            },
        }
    }
}

/// Collects tokens into sentence units.
struct Planner {
    units: Vec<Unit>,
    tokens: Vec<Token>,
    rate: f32,
}

impl Planner {
    fn push(&mut self, tokens: Vec<Token>) {
        for t in tokens {
            let end = matches!(t, Token::Punct(c) if g2p::ends_sentence(c));
            let comma = matches!(t, Token::Punct(_));
            self.tokens.push(t);
            let len: usize = self
                .tokens
                .iter()
                .map(|t| match t {
                    Token::Word { ipa, .. } => ipa.chars().count() + 1,
                    Token::Punct(_) => 2,
                })
                .sum();
            if end || (len > MAX_UNIT_PHONEMES && comma) || len > MAX_UNIT_PHONEMES * 3 / 2 {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let tokens = std::mem::take(&mut self.tokens);
        let words: Vec<&str> = tokens
            .iter()
            .filter_map(|t| match t {
                Token::Word { text, .. } if !text.is_empty() => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let has_phonemes = tokens
            .iter()
            .any(|t| matches!(t, Token::Word { ipa, .. } if !ipa.is_empty()));
        if !has_phonemes {
            return;
        }
        let mut text = words.join(" ");
        if let Some(Token::Punct(c)) = tokens.last() {
            text.push(*c);
        }
        self.units.push(Unit::Speech {
            text,
            ipa: to_ipa_string(&tokens),
            rate: self.rate,
            tokens,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tts() -> Tts {
        let p = Phonemizer::new(
            Arc::new(g2p::tests::small_dict()),
            None,
            Arc::new(RwLock::new(UserLexicon::in_memory(10))),
        );
        Tts::from_parts(p, Vec::new(), "none".into())
    }

    #[test]
    fn plan_splits_sentences_and_keeps_pauses() {
        let t = tts();
        let units = t
            .plan(Input::Text("Hello world. This is a test! I read it"), 1.0)
            .unwrap();
        assert_eq!(units.len(), 3, "{units:?}");
        assert!(matches!(&units[0], Unit::Speech { ipa, .. } if ipa == "həlˈoʊ wˈɜːld."));
        let units = t
            .plan(
                Input::Ssml("<speak>Hello <break time=\"250ms\"/> world</speak>"),
                2.0,
            )
            .unwrap();
        assert_eq!(units.len(), 3, "{units:?}");
        assert_eq!(units[1], Unit::Pause { ms: 250 });
        assert!(matches!(&units[2], Unit::Speech { rate, .. } if *rate == 2.0));
    }

    #[test]
    fn ssml_phonemes_and_rate_limits() {
        let t = tts();
        let units = t
            .plan(
                Input::Ssml(
                    "<speak>Say <phoneme alphabet=\"ipa\" ph=\"zˈɔːɹblæks\">Zorblax</phoneme>.</speak>",
                ),
                1.0,
            )
            .unwrap();
        assert!(
            matches!(&units[0], Unit::Speech { ipa, .. } if ipa.contains("zˈɔːɹblæks")),
            "{units:?}"
        );
        assert!(t.plan(Input::Text("x"), 0.0).is_err());
        assert!(t.plan(Input::Text("x"), f32::NAN).is_err());
        assert!(matches!(
            t.plan(Input::Ssml("<speak>"), 1.0),
            Err(TtsError::Ssml(_))
        ));
    }

    #[test]
    fn a_long_sentence_is_cut_into_units() {
        let t = tts();
        let text = "hello world, ".repeat(60);
        let units = t.plan(Input::Text(&text), 1.0).unwrap();
        assert!(units.len() > 1, "{}", units.len());
        for u in &units {
            if let Unit::Speech { ipa, .. } = u {
                assert!(ipa.chars().count() <= MAX_UNIT_PHONEMES * 3 / 2 + 20);
            }
        }
    }
}

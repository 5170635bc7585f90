//! Whisper's tokenizer: the Hugging Face `tokenizer.json` plus the special-token ids that
//! decoding needs, and the timestamp tokens the file does not contain.
//!
//! The converted `tokenizer.json` ends at `<|notimestamps|>` (50362 for English-only models,
//! 50363 for multilingual ones); the model's vocabulary continues with 1501 timestamp tokens
//! `<|0.00|>` .. `<|30.00|>` (0.02 s apart) that only exist as ids. [`WhisperTokenizer::decode`]
//! drops every id at or above `<|endoftext|>` (specials and timestamps) before detokenising.

use std::path::Path;

use super::super::NnError;

/// Seconds per timestamp step.
pub const TIME_PRECISION: f32 = 0.02;

/// Whisper language codes in the model's token order (openai/whisper `tokenizer.LANGUAGES`).
pub const LANGUAGES: &[&str] = &[
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su", "yue",
];

/// Languages written without spaces between words (word timestamps split on characters).
const NO_SPACE_LANGUAGES: &[&str] = &["zh", "ja", "th", "lo", "my", "yue"];

/// The tokenizer and Whisper's special ids.
#[derive(Debug)]
pub struct WhisperTokenizer {
    inner: tokenizers::Tokenizer,
    pub eot: u32,
    pub sot: u32,
    pub sot_prev: Option<u32>,
    pub sot_lm: Option<u32>,
    pub no_timestamps: u32,
    pub no_speech: Option<u32>,
    pub transcribe: Option<u32>,
    pub translate: Option<u32>,
    /// First timestamp token (`<|0.00|>`) = `<|notimestamps|>` + 1.
    pub timestamp_begin: u32,
    /// Language code -> token id (empty for English-only models).
    pub languages: Vec<(String, u32)>,
}

impl WhisperTokenizer {
    /// Loads `tokenizer.json`; `vocab_size` is the model's (to check the timestamp range) and
    /// `multilingual` whether language tokens are expected.
    pub fn load(path: &Path, vocab_size: usize, multilingual: bool) -> Result<Self, NnError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| NnError::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_tokenizer(inner, vocab_size, multilingual).map_err(|reason| NnError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Builds from an already-parsed tokenizer (tests).
    pub fn from_tokenizer(
        mut inner: tokenizers::Tokenizer,
        vocab_size: usize,
        multilingual: bool,
    ) -> Result<Self, String> {
        // Text we encode comes from users (prompts, hotwords): `<|endoftext|>` typed in a prompt
        // is seven characters of text, never the control token (with matching on, 50 copies in
        // a prompt turned the JFK transcript into "And, and!").
        inner.set_encode_special_tokens(true);
        let id = |t: &str| inner.token_to_id(t);
        let need = |t: &str| id(t).ok_or_else(|| format!("special token {t} is missing"));
        let eot = need("<|endoftext|>")?;
        let sot = need("<|startoftranscript|>")?;
        let no_timestamps = need("<|notimestamps|>")?;
        let timestamp_begin = no_timestamps + 1;
        let n_timestamps = vocab_size.saturating_sub(timestamp_begin as usize);
        if n_timestamps != 1501 {
            return Err(format!(
                "<|notimestamps|> is id {no_timestamps}, leaving {n_timestamps} timestamp ids \
                 below the model's vocabulary size {vocab_size} (expected 1501): the tokenizer \
                 does not belong to this model"
            ));
        }
        let languages: Vec<(String, u32)> = if multilingual {
            LANGUAGES
                .iter()
                .filter_map(|code| Some((code.to_string(), id(&format!("<|{code}|>"))?)))
                .collect()
        } else {
            Vec::new()
        };
        if multilingual && languages.is_empty() {
            return Err("multilingual model but no language tokens".into());
        }
        Ok(Self {
            eot,
            sot,
            sot_prev: id("<|startofprev|>"),
            sot_lm: id("<|startoflm|>"),
            no_timestamps,
            no_speech: id("<|nospeech|>").or_else(|| id("<|nocaptions|>")),
            transcribe: id("<|transcribe|>"),
            translate: id("<|translate|>"),
            timestamp_begin,
            languages,
            inner,
        })
    }

    /// Token id of a language code.
    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|&(_, id)| id)
    }

    /// True for timestamp tokens.
    pub fn is_timestamp(&self, t: u32) -> bool {
        t >= self.timestamp_begin
    }

    /// Seconds of a timestamp token (relative to its window).
    pub fn timestamp_seconds(&self, t: u32) -> f32 {
        (t - self.timestamp_begin) as f32 * TIME_PRECISION
    }

    /// Text tokens of `text`: plain text, so special-token spellings in it are encoded as the
    /// characters they are, and no id at or above `<|endoftext|>` is ever returned.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, NnError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| NnError::Tokenize(e.to_string()))?;
        let ids = enc.get_ids();
        if let Some(&bad) = ids.iter().find(|&&t| t >= self.eot) {
            // Unreachable with special matching off; kept as the invariant decoding relies on.
            return Err(NnError::Tokenize(format!(
                "text encoded to control token {bad}"
            )));
        }
        Ok(ids.to_vec())
    }

    /// Text of the text tokens in `tokens` (specials and timestamps are dropped).
    pub fn decode(&self, tokens: &[u32]) -> Result<String, NnError> {
        let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < self.eot).collect();
        self.inner
            .decode(&text, false)
            .map_err(|e| NnError::Tokenize(e.to_string()))
    }

    /// Splits text tokens into words, as openai/whisper's `split_to_word_tokens`: on spaces and
    /// punctuation for most languages, on Unicode characters for languages without spaces.
    /// Returns (word, tokens) pairs; the tokens concatenate back to the input.
    pub fn split_to_word_tokens(
        &self,
        tokens: &[u32],
        language: &str,
    ) -> Result<Vec<(String, Vec<u32>)>, NnError> {
        let pieces = self.split_on_unicode(tokens)?;
        if NO_SPACE_LANGUAGES.contains(&language) {
            return Ok(pieces);
        }
        let mut words: Vec<(String, Vec<u32>)> = Vec::new();
        for (piece, toks) in pieces {
            let special = toks.first().is_some_and(|&t| t >= self.eot);
            let with_space = piece.starts_with(' ');
            let trimmed = piece.trim();
            // Python's `subword.strip() in string.punctuation` (true for "" too).
            let punctuation = trimmed.chars().all(|c| c.is_ascii_punctuation());
            if special || with_space || punctuation || words.is_empty() {
                words.push((piece, toks));
            } else if let Some(last) = words.last_mut() {
                last.0.push_str(&piece);
                last.1.extend(toks);
            }
        }
        Ok(words)
    }

    /// Groups tokens so that each group decodes to whole Unicode characters.
    fn split_on_unicode(&self, tokens: &[u32]) -> Result<Vec<(String, Vec<u32>)>, NnError> {
        let mut out = Vec::new();
        let mut current: Vec<u32> = Vec::new();
        for &t in tokens {
            current.push(t);
            let text = if t >= self.eot {
                // Specials and timestamps are kept as their own (empty) word.
                String::new()
            } else {
                self.decode(&current)?
            };
            if !text.contains('\u{FFFD}') || current.len() >= 8 {
                out.push((text, std::mem::take(&mut current)));
            }
        }
        if !current.is_empty() {
            let text = self.decode(&current)?;
            out.push((text, current));
        }
        Ok(out)
    }
}

//! Pronunciation dictionaries: CMUdict (read-only, 135k words) and the user's lexicon, a TOML file
//! the user (or the `SetLexiconEntry` RPC) edits, which wins over everything else.
//!
//! User lexicon file (`tts.lexicon`, default `$STATE/lexicon.toml`):
//!
//! ```toml
//! [words]
//! zorblax = { ipa = "zˈɔːɹblæks" }
//! hark = { arpabet = "HH AA1 R K" }
//! ```
//!
//! Words are matched lowercased. Entries are stored as given and also converted to IPA once, so a
//! lookup costs a hash probe.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::phonemes::{self, PhonemeError};

/// Errors of the dictionaries.
#[derive(Debug, thiserror::Error)]
pub enum LexiconError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a lexicon file: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("word {word:?}: {reason}")]
    BadWord { word: String, reason: String },
    #[error("word {word:?}: {source}")]
    BadPhonemes {
        word: String,
        #[source]
        source: PhonemeError,
    },
    #[error("the lexicon holds {max} words already (tts.max_lexicon_words)")]
    Full { max: usize },
}

/// CMUdict: word -> its pronunciations in ARPAbet, in the dictionary's order (the first is the
/// most common).
#[derive(Debug, Default)]
pub struct Cmudict {
    words: HashMap<String, Vec<Vec<String>>>,
}

impl Cmudict {
    /// Reads `cmudict.dict` (`word PH ON ES`, variants as `word(2)`, `#` comments).
    pub fn load(path: &Path) -> Result<Self, LexiconError> {
        let text = std::fs::read_to_string(path).map_err(|source| LexiconError::Io {
            path: path.into(),
            source,
        })?;
        let d = Self::parse(&text);
        if d.words.len() < 1000 {
            return Err(LexiconError::Parse {
                path: path.into(),
                reason: format!("only {} words", d.words.len()),
            });
        }
        Ok(d)
    }

    pub fn parse(text: &str) -> Self {
        let mut words: HashMap<String, Vec<Vec<String>>> = HashMap::with_capacity(140_000);
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut it = line.split_whitespace();
            let Some(head) = it.next() else { continue };
            let word = head.split('(').next().unwrap_or(head).to_lowercase();
            let phones: Vec<String> = it.map(str::to_string).collect();
            if phones.is_empty() {
                continue;
            }
            words.entry(word).or_default().push(phones);
        }
        Self { words }
    }

    /// Every pronunciation of `word` (lowercase), most common first.
    pub fn get(&self, word: &str) -> Option<&[Vec<String>]> {
        self.words.get(word).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// A user entry as written in the file / the RPC: IPA or ARPAbet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipa: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arpabet: Option<String>,
}

impl Entry {
    /// The entry as IPA, checked.
    pub fn to_ipa(&self, word: &str) -> Result<String, LexiconError> {
        let bad = |source| LexiconError::BadPhonemes {
            word: word.into(),
            source,
        };
        match (&self.ipa, &self.arpabet) {
            (Some(ipa), None) => {
                let ipa = ipa.trim();
                // Slashes and brackets are how people quote IPA; they are not phonemes.
                let ipa = ipa.trim_matches(|c| matches!(c, '/' | '[' | ']'));
                if !ipa.chars().any(phonemes::is_phone_char) {
                    return Err(bad(PhonemeError::Empty));
                }
                Ok(ipa.to_string())
            }
            (None, Some(a)) => {
                let phones = phonemes::parse_arpabet(a).map_err(bad)?;
                Ok(phonemes::arpabet_to_ipa(&phones, true))
            }
            _ => Err(LexiconError::BadWord {
                word: word.into(),
                reason: "give exactly one of ipa or arpabet".into(),
            }),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LexiconFile {
    #[serde(default)]
    words: BTreeMap<String, Entry>,
}

/// The user's lexicon, backed by a TOML file (or in memory when it has no path).
#[derive(Debug, Default)]
pub struct UserLexicon {
    path: Option<PathBuf>,
    entries: BTreeMap<String, (Entry, String)>,
    max_words: usize,
}

/// Longest word accepted, in characters.
const MAX_WORD_CHARS: usize = 64;
/// Longest pronunciation accepted, in characters.
const MAX_PHONEME_CHARS: usize = 256;
/// A lexicon file larger than this is refused rather than read.
const MAX_FILE_BYTES: u64 = 16 << 20;

impl UserLexicon {
    /// An empty in-memory lexicon.
    pub fn in_memory(max_words: usize) -> Self {
        Self {
            path: None,
            entries: BTreeMap::new(),
            max_words,
        }
    }

    /// Opens the lexicon at `path`; a missing file is an empty lexicon (created on first set).
    pub fn open(path: &Path, max_words: usize) -> Result<Self, LexiconError> {
        let io = |source| LexiconError::Io {
            path: path.into(),
            source,
        };
        let mut lex = Self {
            path: Some(path.into()),
            entries: BTreeMap::new(),
            max_words,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(lex),
            Err(e) => return Err(io(e)),
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(LexiconError::Parse {
                path: path.into(),
                reason: format!("{} bytes (at most {MAX_FILE_BYTES})", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let file: LexiconFile = toml::from_str(&text).map_err(|e| LexiconError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
        for (word, entry) in file.words {
            let word = check_word(&word)?;
            let ipa = entry.to_ipa(&word)?;
            lex.entries.insert(word, (entry, ipa));
        }
        Ok(lex)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The IPA for `word` (lowercase), if the user gave one.
    pub fn ipa(&self, word: &str) -> Option<&str> {
        self.entries.get(word).map(|(_, ipa)| ipa.as_str())
    }

    /// The entry as written and its IPA.
    pub fn get(&self, word: &str) -> Option<(&Entry, &str)> {
        self.entries
            .get(&word.to_lowercase())
            .map(|(e, ipa)| (e, ipa.as_str()))
    }

    /// Every entry, sorted by word.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry, &str)> {
        self.entries
            .iter()
            .map(|(w, (e, ipa))| (w.as_str(), e, ipa.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds or replaces an entry and saves the file (atomically: temp file + rename). Returns
    /// the entry's IPA.
    pub fn set(&mut self, word: &str, entry: Entry) -> Result<String, LexiconError> {
        let word = check_word(word)?;
        for p in [&entry.ipa, &entry.arpabet].into_iter().flatten() {
            if p.chars().count() > MAX_PHONEME_CHARS {
                return Err(LexiconError::BadWord {
                    word,
                    reason: format!("pronunciation longer than {MAX_PHONEME_CHARS} characters"),
                });
            }
        }
        let ipa = entry.to_ipa(&word)?;
        if !self.entries.contains_key(&word) && self.entries.len() >= self.max_words {
            return Err(LexiconError::Full {
                max: self.max_words,
            });
        }
        let old = self.entries.insert(word.clone(), (entry, ipa.clone()));
        if let Err(e) = self.save() {
            // Keep memory and file in agreement.
            match old {
                Some(o) => self.entries.insert(word, o),
                None => self.entries.remove(&word),
            };
            return Err(e);
        }
        Ok(ipa)
    }

    /// Removes an entry; returns whether it existed.
    pub fn delete(&mut self, word: &str) -> Result<bool, LexiconError> {
        let word = word.trim().to_lowercase();
        let Some(old) = self.entries.remove(&word) else {
            return Ok(false);
        };
        if let Err(e) = self.save() {
            self.entries.insert(word, old);
            return Err(e);
        }
        Ok(true)
    }

    fn save(&self) -> Result<(), LexiconError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| LexiconError::Io {
            path: path.clone(),
            source,
        };
        let file = LexiconFile {
            words: self
                .entries
                .iter()
                .map(|(w, (e, _))| (w.clone(), e.clone()))
                .collect(),
        };
        let text = toml::to_string(&file).map_err(|e| LexiconError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// A lexicon headword: one word of letters, apostrophes or hyphens, lowercased.
fn check_word(word: &str) -> Result<String, LexiconError> {
    let w = word.trim().to_lowercase();
    let bad = |reason: &str| LexiconError::BadWord {
        word: word.into(),
        reason: reason.into(),
    };
    if w.is_empty() {
        return Err(bad("empty"));
    }
    if w.chars().count() > MAX_WORD_CHARS {
        return Err(bad("longer than 64 characters"));
    }
    if !w
        .chars()
        .all(|c| c.is_alphanumeric() || c == '\'' || c == '-')
    {
        return Err(bad("one word of letters (apostrophes and hyphens allowed)"));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmudict_keeps_variants_in_order_and_skips_comments() {
        let d = Cmudict::parse("read R EH1 D\nread(2) R IY1 D\naalborg AO1 L B AO0 R G # place\n");
        assert_eq!(d.get("read").unwrap().len(), 2);
        assert_eq!(d.get("read").unwrap()[1], ["R", "IY1", "D"]);
        assert_eq!(d.get("aalborg").unwrap()[0].len(), 6);
        assert!(d.get("nope").is_none());
    }

    #[test]
    fn user_lexicon_persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lexicon.toml");
        let mut lex = UserLexicon::open(&path, 10).unwrap();
        assert!(lex.is_empty());
        let ipa = lex
            .set(
                "Zorblax",
                Entry {
                    ipa: Some("/zˈɔːɹblæks/".into()),
                    arpabet: None,
                },
            )
            .unwrap();
        assert_eq!(ipa, "zˈɔːɹblæks");
        lex.set(
            "hark",
            Entry {
                ipa: None,
                arpabet: Some("hh aa1 r k".into()),
            },
        )
        .unwrap();
        let again = UserLexicon::open(&path, 10).unwrap();
        assert_eq!(again.ipa("zorblax"), Some("zˈɔːɹblæks"));
        assert_eq!(again.ipa("hark"), Some("hˈɑːɹk"));
        let mut again = again;
        assert!(again.delete("HARK").unwrap());
        assert!(!again.delete("hark").unwrap());
        assert_eq!(UserLexicon::open(&path, 10).unwrap().len(), 1);
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        let mut lex = UserLexicon::in_memory(1);
        let e = |ipa: Option<&str>, arpa: Option<&str>| Entry {
            ipa: ipa.map(Into::into),
            arpabet: arpa.map(Into::into),
        };
        let err = lex.set("two words", e(Some("tuː"), None)).unwrap_err();
        assert!(err.to_string().contains("one word"), "{err}");
        let err = lex.set("x", e(None, Some("QQ1"))).unwrap_err();
        assert!(err.to_string().contains("QQ1"), "{err}");
        let err = lex.set("x", e(Some("a"), Some("AA1"))).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        lex.set("x", e(Some("ɛks"), None)).unwrap();
        let err = lex.set("y", e(Some("waɪ"), None)).unwrap_err();
        assert!(matches!(err, LexiconError::Full { max: 1 }), "{err}");
        // Replacing an existing word is allowed at the limit.
        lex.set("x", e(Some("ɛks"), None)).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lexicon.toml");
        std::fs::write(&path, "[words]\nfoo = 3\n").unwrap();
        let err = UserLexicon::open(&path, 10).unwrap_err();
        assert!(err.to_string().contains("lexicon.toml"), "{err}");
    }
}

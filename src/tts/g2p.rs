//! Spoken words -> phonemes (espeak-style IPA, what the voice was trained on).
//!
//! Each word is looked up in order: the user's lexicon, the homograph rules (context decides
//! "read" /riːd/ or /rɛd/), CMUdict, then the neural model for words no dictionary has
//! ([`crate::nn::g2p`]); an upper-case word no dictionary has is spelled ("NTSB"). Function words
//! lose their stress mark, as espeak reads them ("ðɪs ɪz ɐ tˈɛst").

use std::sync::{Arc, RwLock};

use super::{
    homographs::{self, Context},
    lexicon::{Cmudict, UserLexicon},
    numbers::cardinal,
    phonemes::arpabet_to_ipa,
};
use crate::nn::g2p::NeuralG2p;

/// Where a word's phonemes came from (shown by `hark say --phonemes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    User,
    Homograph,
    Dictionary,
    Neural,
    Spelled,
    /// Given in SSML (`<phoneme>`).
    Markup,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "lexicon",
            Source::Homograph => "homograph",
            Source::Dictionary => "cmudict",
            Source::Neural => "neural",
            Source::Spelled => "spelled",
            Source::Markup => "ssml",
        }
    }
}

/// One token of phonemised text.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Word {
        text: String,
        ipa: String,
        source: Source,
    },
    /// Punctuation the voice hears as a pause: , . ; : ! ?
    Punct(char),
}

/// Words espeak reads without stress.
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "nor", "of", "to", "in", "on", "at", "for", "with",
    "from", "by", "as", "is", "are", "was", "were", "be", "been", "am", "it", "its", "it's",
    "this", "that", "these", "those", "i", "you", "he", "she", "we", "they", "me", "him", "her",
    "us", "them", "my", "your", "his", "our", "their", "do", "does", "did", "has", "have", "had",
    "will", "would", "can", "could", "shall", "should", "may", "might", "must", "so", "if", "than",
    "then", "there", "some", "i'm", "into", "onto", "upon",
];

/// Punctuation kept for the voice.
fn is_kept_punct(c: char) -> bool {
    matches!(c, ',' | '.' | ';' | ':' | '!' | '?')
}

/// Sentence-final punctuation.
pub fn ends_sentence(c: char) -> bool {
    matches!(c, '.' | '!' | '?')
}

/// A word with its case as written.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Word(String),
    Punct(char),
}

/// Splits spoken text into words (letters, digits, inner apostrophes; hyphens split words) and
/// kept punctuation; everything else separates words.
fn tokenize(text: &str) -> Vec<Raw> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    let flush = |cur: &mut String, out: &mut Vec<Raw>| {
        let w = cur.trim_matches('\'').to_string();
        if !w.is_empty() {
            out.push(Raw::Word(w));
        }
        cur.clear();
    };
    for (i, &c) in chars.iter().enumerate() {
        let apostrophe = matches!(c, '\'' | '’');
        if c.is_alphanumeric() || (apostrophe && !cur.is_empty()) {
            cur.push(if apostrophe { '\'' } else { c });
            continue;
        }
        flush(&mut cur, &mut out);
        // A dot inside a number or a word ("3.5" was normalised away; "node.js" is not) is a
        // separator, not a sentence end.
        let inner = c == '.'
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())
            && i > 0
            && chars[i - 1].is_alphanumeric();
        if is_kept_punct(c) && !inner {
            // Runs ("?!", "...") count once.
            if !matches!(out.last(), Some(Raw::Punct(_))) {
                out.push(Raw::Punct(c));
            }
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// The phonemiser. Cheap to share: the dictionaries sit behind `Arc`s, the user lexicon behind
/// a lock that writers (the lexicon RPCs) hold only to swap an entry.
#[derive(Debug, Clone)]
pub struct Phonemizer {
    cmudict: Arc<Cmudict>,
    neural: Option<Arc<NeuralG2p>>,
    user: Arc<RwLock<UserLexicon>>,
}

impl Phonemizer {
    pub fn new(
        cmudict: Arc<Cmudict>,
        neural: Option<Arc<NeuralG2p>>,
        user: Arc<RwLock<UserLexicon>>,
    ) -> Self {
        Self {
            cmudict,
            neural,
            user,
        }
    }

    pub fn user_lexicon(&self) -> &Arc<RwLock<UserLexicon>> {
        &self.user
    }

    /// Phonemises spoken text (the normaliser's output).
    pub fn phonemize(&self, text: &str) -> Vec<Token> {
        let raw = tokenize(text);
        let lower: Vec<String> = raw
            .iter()
            .map(|r| match r {
                Raw::Word(w) => w.to_lowercase(),
                Raw::Punct(c) => c.to_string(),
            })
            .collect();
        let user = self.user.read().unwrap_or_else(|p| p.into_inner());
        raw.iter()
            .enumerate()
            .map(|(i, r)| match r {
                Raw::Punct(c) => Token::Punct(*c),
                Raw::Word(w) => {
                    let ctx = Context {
                        words: &lower,
                        at: i,
                        original: w,
                    };
                    let (ipa, source) = self.word(&user, &ctx);
                    Token::Word {
                        text: w.clone(),
                        ipa,
                        source,
                    }
                }
            })
            .collect()
    }

    fn word(&self, user: &UserLexicon, ctx: &Context<'_>) -> (String, Source) {
        let w = ctx.words[ctx.at].as_str();
        let original = ctx.original;
        if let Some(ipa) = user.ipa(w) {
            return (ipa.to_string(), Source::User);
        }
        let stress = !FUNCTION_WORDS.contains(&w);
        if let Some(arpa) = homographs::choose(ctx) {
            let phones: Vec<&str> = arpa.split_whitespace().collect();
            return (arpabet_to_ipa(&phones, stress), Source::Homograph);
        }
        // Digits the normaliser left (inside a word such as "mp3"): read as a number.
        if w.chars().all(|c| c.is_ascii_digit()) {
            let n: u64 = w.parse().unwrap_or(0);
            if w.len() > 15 {
                return (spell_ipa(w), Source::Spelled);
            }
            return (self.words_ipa(user, &cardinal(n)), Source::Spelled);
        }
        let acronym = original.chars().count() >= 2
            && original
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if let Some(p) = self.cmudict.get(w) {
            return (arpabet_to_ipa(&p[0], stress), Source::Dictionary);
        }
        // Possessives and contractions of known words: "zorblax's", "bess's".
        if let Some(base) = w.strip_suffix("'s") {
            let (ipa, source) = self.word(
                user,
                &Context {
                    words: &[base.to_string()],
                    at: 0,
                    original: base,
                },
            );
            let last = ipa.chars().last().unwrap_or(' ');
            let suffix = match last {
                's' | 'z' | 'ʃ' | 'ʒ' => "ᵻz",
                'p' | 't' | 'k' | 'f' | 'θ' => "s",
                _ => "z",
            };
            return (format!("{ipa}{suffix}"), source);
        }
        if acronym || w.chars().any(|c| c.is_ascii_digit()) {
            return (spell_ipa(original), Source::Spelled);
        }
        if let Some(net) = &self.neural
            && let Ok(phones) = net.predict(w)
            && !phones.is_empty()
        {
            return (arpabet_to_ipa(&phones, true), Source::Neural);
        }
        (spell_ipa(original), Source::Spelled)
    }

    /// Several plain words -> one IPA string (numbers read out).
    fn words_ipa(&self, user: &UserLexicon, spoken: &str) -> String {
        spoken
            .split(|c: char| c.is_whitespace() || c == '-' || c == ',')
            .filter(|w| !w.is_empty())
            .map(|w| {
                let w = w.to_lowercase();
                match user.ipa(&w) {
                    Some(ipa) => ipa.to_string(),
                    None => match self.cmudict.get(&w) {
                        Some(p) => arpabet_to_ipa(&p[0], true),
                        None => spell_ipa(&w),
                    },
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Letter names in espeak's IPA, so that spelling needs no dictionary (and cannot recurse).
const LETTER_IPA: [&str; 26] = [
    "ˈeɪ",
    "bˈiː",
    "sˈiː",
    "dˈiː",
    "ˈiː",
    "ˈɛf",
    "dʒˈiː",
    "ˈeɪtʃ",
    "ˈaɪ",
    "dʒˈeɪ",
    "kˈeɪ",
    "ˈɛl",
    "ˈɛm",
    "ˈɛn",
    "ˈoʊ",
    "pˈiː",
    "kjˈuː",
    "ˈɑːɹ",
    "ˈɛs",
    "tˈiː",
    "jˈuː",
    "vˈiː",
    "dˈʌbəljuː",
    "ˈɛks",
    "wˈaɪ",
    "zˈiː",
];
const DIGIT_IPA: [&str; 10] = [
    "zˈiəɹoʊ",
    "wˈʌn",
    "tˈuː",
    "θɹˈiː",
    "fˈoːɹ",
    "fˈaɪv",
    "sˈɪks",
    "sˈɛvən",
    "ˈeɪt",
    "nˈaɪn",
];

/// Spells a word letter by letter (ASCII letters and digits; anything else is skipped).
pub fn spell_ipa(word: &str) -> String {
    word.chars()
        .filter_map(|c| {
            let l = c.to_ascii_lowercase();
            if l.is_ascii_lowercase() {
                Some(LETTER_IPA[(l as u8 - b'a') as usize])
            } else {
                c.to_digit(10).map(|d| DIGIT_IPA[d as usize])
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tokens -> the string the voice reads: words separated by spaces, punctuation attached to the
/// word before it ("həlˈoʊ wˈɜːld, ...").
pub fn to_ipa_string(tokens: &[Token]) -> String {
    let mut s = String::new();
    for t in tokens {
        match t {
            Token::Word { ipa, .. } => {
                if !s.is_empty() && !s.ends_with(' ') {
                    s.push(' ');
                }
                s.push_str(ipa);
            }
            Token::Punct(c) => {
                s.push(*c);
                s.push(' ');
            }
        }
    }
    s.trim_end().to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn small_dict() -> Cmudict {
        Cmudict::parse(
            "hello HH AH0 L OW1\nworld W ER1 L D\nthis DH IH1 S\nis IH1 Z\na AH0\ntest T EH1 S T\n\
             i AY1\nread R EH1 D\nread(2) R IY1 D\nwill W IH1 L\nit IH1 T\nyesterday Y EH1 S T ER0 D EY2\n\
             ay EY1\nbee B IY1\nsee S IY1\nell EH1 L\nel EH1 L\nen EH1 N\ness EH1 S\ntee T IY1\n\
             one W AH1 N\ntwo T UW1\nthree TH R IY1\nbess B EH1 S\n",
        )
    }

    fn phonemizer() -> Phonemizer {
        Phonemizer::new(
            Arc::new(small_dict()),
            None,
            Arc::new(RwLock::new(UserLexicon::in_memory(10))),
        )
    }

    #[test]
    fn sentence_reads_like_espeak() {
        let p = phonemizer();
        let t = p.phonemize("Hello world, this is a test.");
        assert_eq!(to_ipa_string(&t), "həlˈoʊ wˈɜːld, ðɪs ɪz ə tˈɛst.");
    }

    #[test]
    fn homographs_follow_context() {
        let p = phonemizer();
        assert_eq!(
            to_ipa_string(&p.phonemize("I will read it")),
            "aɪ wɪl ɹˈiːd ɪt"
        );
        assert_eq!(
            to_ipa_string(&p.phonemize("I read it yesterday")),
            "aɪ ɹˈɛd ɪt jˈɛstɚdˌeɪ"
        );
    }

    #[test]
    fn user_lexicon_wins_and_changes_at_once() {
        let p = phonemizer();
        let before = to_ipa_string(&p.phonemize("Bess"));
        assert_eq!(before, "bˈɛs");
        p.user_lexicon()
            .write()
            .unwrap()
            .set(
                "bess",
                super::super::lexicon::Entry {
                    ipa: Some("bˈɛsi".into()),
                    arpabet: None,
                },
            )
            .unwrap();
        let t = p.phonemize("Bess's");
        assert_eq!(to_ipa_string(&t), "bˈɛsiz");
        assert!(matches!(
            t[0],
            Token::Word {
                source: Source::User,
                ..
            }
        ));
    }

    #[test]
    fn unknown_capitals_are_spelled_and_punctuation_runs_collapse() {
        let p = phonemizer();
        let t = p.phonemize("NTSB?!");
        assert!(matches!(
            t[0],
            Token::Word {
                source: Source::Spelled,
                ..
            }
        ));
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[1], Token::Punct('?'));
    }

    #[test]
    fn tokenizer_keeps_inner_apostrophes_and_splits_hyphens() {
        assert_eq!(
            tokenize("don't 'quote' well-known node.js"),
            [
                Raw::Word("don't".into()),
                Raw::Word("quote".into()),
                Raw::Word("well".into()),
                Raw::Word("known".into()),
                Raw::Word("node".into()),
                Raw::Word("js".into()),
            ]
        );
    }
}

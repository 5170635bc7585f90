//! Sentence templates and fuzzy matching of transcripts against them.
//!
//! A template is words and slots: `set a timer for {minutes} minutes`,
//! `turn {state:on|off} the {room} lights`. A slot is free (`{room}`: one to
//! [`MAX_SLOT_WORDS`] words), a choice (`{state:on|off}`: exactly one of the alternatives), or
//! a number (`{n:number}`: digits or number words). A transcript is normalised (lower case,
//! punctuation dropped, number words of free and number slots turned into digits) and aligned
//! with the template by word-level edit distance, where a slot consumes its words for free:
//! score = 1 - edits / template words. Slots never take part in edits: a slot with no words
//! does not match.

use std::collections::BTreeMap;

use crate::words::{ONES, TENS};

/// Most words a free slot takes.
pub const MAX_SLOT_WORDS: usize = 4;

#[derive(Debug, Clone, PartialEq)]
enum SlotKind {
    Free,
    Number,
    Choice(Vec<Vec<String>>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Slot { name: String, kind: SlotKind },
}

/// A parsed sentence template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub text: String,
    tokens: Vec<Token>,
}

/// Lower case words without punctuation (apostrophes kept, `10:30` -> `10 30`).
pub fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

impl Template {
    /// Parses `text`; errors name the problem (unclosed brace, empty slot name, ...).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            tokens.extend(words(&rest[..open]).into_iter().map(Token::Word));
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{text:?}: unclosed '{{'"))?
                + open;
            let inner = rest[open + 1..close].trim();
            let (name, kind) = match inner.split_once(':') {
                None => (inner, SlotKind::Free),
                Some((n, "number")) => (n.trim(), SlotKind::Number),
                Some((n, alts)) => {
                    let alts: Vec<Vec<String>> = alts.split('|').map(words).collect();
                    if alts.iter().any(Vec::is_empty) {
                        return Err(format!("{text:?}: slot {n:?} has an empty choice"));
                    }
                    (n.trim(), SlotKind::Choice(alts))
                }
            };
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(format!(
                    "{text:?}: slot names are letters, digits and '_' (got {name:?})"
                ));
            }
            if tokens
                .iter()
                .any(|t| matches!(t, Token::Slot { name: n, .. } if n == name))
            {
                return Err(format!("{text:?}: slot {name:?} appears twice"));
            }
            tokens.push(Token::Slot {
                name: name.to_string(),
                kind,
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?}: '}}' without '{{'"));
        }
        tokens.extend(words(rest).into_iter().map(Token::Word));
        if tokens.is_empty() {
            return Err(format!("{text:?}: the sentence has no words"));
        }
        Ok(Self {
            text: text.to_string(),
            tokens,
        })
    }

    /// Names of the template's slots.
    pub fn slots(&self) -> Vec<&str> {
        self.tokens
            .iter()
            .filter_map(|t| match t {
                Token::Slot { name, .. } => Some(name.as_str()),
                Token::Word(_) => None,
            })
            .collect()
    }

    /// Matches `said` (already split by [`words`]): the score and the slot values, or `None`
    /// when a slot could not be filled.
    pub fn score(&self, said: &[String]) -> Option<(f32, BTreeMap<String, String>)> {
        let (t, h) = (&self.tokens, said);
        let (nt, nh) = (t.len(), h.len());
        // cost[i][j]: best alignment of tokens[..i] with words[..j]; back[i][j]: how. An edit
        // costs EDIT; each word a slot takes costs 1, so of equally good alignments the one
        // with the shortest slots wins ("the {room} lights" + "living room lights please":
        // room = "living room", "please" extra, not room = "living room lights").
        const INF: u32 = u32::MAX / 2;
        const EDIT: u32 = 1000;
        let mut cost = vec![vec![INF; nh + 1]; nt + 1];
        let mut back = vec![vec![Step::Start; nh + 1]; nt + 1];
        cost[0][0] = 0;
        for i in 0..=nt {
            for j in 0..=nh {
                let c = cost[i][j];
                if c >= INF {
                    continue;
                }
                // Extra spoken word.
                if j < nh && c + EDIT < cost[i][j + 1] {
                    cost[i][j + 1] = c + EDIT;
                    back[i][j + 1] = Step::Insert;
                }
                if i == nt {
                    continue;
                }
                match &t[i] {
                    Token::Word(w) => {
                        // Missing template word.
                        if c + EDIT < cost[i + 1][j] {
                            cost[i + 1][j] = c + EDIT;
                            back[i + 1][j] = Step::Delete;
                        }
                        if j < nh {
                            let d = c + EDIT * u32::from(&h[j] != w);
                            if d < cost[i + 1][j + 1] {
                                cost[i + 1][j + 1] = d;
                                back[i + 1][j + 1] = Step::Word;
                            }
                        }
                    }
                    Token::Slot { kind, .. } => {
                        for k in 1..=MAX_SLOT_WORDS.min(nh - j) {
                            let d = c + k as u32;
                            if slot_value(kind, &h[j..j + k]).is_some() && d < cost[i + 1][j + k] {
                                cost[i + 1][j + k] = d;
                                back[i + 1][j + k] = Step::Slot(k);
                            }
                        }
                    }
                }
            }
        }
        let total = cost[nt][nh];
        if total >= INF {
            return None;
        }
        let mut slots = BTreeMap::new();
        let (mut i, mut j) = (nt, nh);
        while i > 0 || j > 0 {
            match back[i][j] {
                Step::Insert => j -= 1,
                Step::Delete => i -= 1,
                Step::Word => {
                    i -= 1;
                    j -= 1;
                }
                Step::Slot(k) => {
                    if let Token::Slot { name, kind } = &t[i - 1] {
                        slots.insert(name.clone(), slot_value(kind, &h[j - k..j])?);
                    }
                    i -= 1;
                    j -= k;
                }
                Step::Start => return None,
            }
        }
        let score = 1.0 - (total / EDIT) as f32 / nt as f32;
        Some((score.max(0.0), slots))
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Start,
    Insert,
    Delete,
    Word,
    Slot(usize),
}

/// The value a slot takes from `w`, if it can take these words.
fn slot_value(kind: &SlotKind, w: &[String]) -> Option<String> {
    match kind {
        SlotKind::Choice(alts) => alts.iter().find(|a| a[..] == *w).map(|a| a.join(" ")),
        SlotKind::Number => parse_number(w).map(|n| n.to_string()),
        SlotKind::Free => Some(parse_number(w).map_or_else(|| w.join(" "), |n| n.to_string())),
    }
}

fn small(w: &str) -> Option<u64> {
    if let Some(i) = ONES.iter().position(|&o| o == w) {
        return Some(i as u64);
    }
    TENS.iter()
        .skip(2)
        .position(|&t| t == w)
        .map(|i| (i as u64 + 2) * 10)
}

/// Digits (`10`) or English number words up to the millions (`twenty five`, `a hundred and
/// five`, `one thousand two hundred`) -> the number; `None` for anything else.
pub fn parse_number(w: &[String]) -> Option<u64> {
    if w.is_empty() {
        return None;
    }
    if w.len() == 1 && w[0].chars().all(|c| c.is_ascii_digit()) {
        return w[0].parse().ok();
    }
    let (mut total, mut current, mut any) = (0u64, 0u64, false);
    for (i, word) in w.iter().enumerate() {
        // Compound forms Whisper writes: "twenty-five" is split by `words` already.
        match word.as_str() {
            "a" if i == 0 && w.len() > 1 => current = current.max(1),
            "and" if any => {}
            "hundred" if any || current > 0 => {
                current = current.max(1) * 100;
                any = true;
            }
            "thousand" | "million" if any || current > 0 => {
                let m = if word == "thousand" { 1_000 } else { 1_000_000 };
                total += current.max(1) * m;
                current = 0;
            }
            other => {
                let v = small(other)?;
                // "twenty five": tens then ones; "five five" is not a number.
                if any && current % 100 != 0 && (current % 10 != 0 || v >= 10) {
                    return None;
                }
                current += v;
                any = true;
            }
        }
    }
    any.then_some(total + current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, said: &str) -> Option<(f32, BTreeMap<String, String>)> {
        Template::parse(t).unwrap().score(&words(said))
    }

    #[test]
    fn numbers_in_words_and_digits() {
        let n = |s: &str| parse_number(&words(s));
        assert_eq!(n("10"), Some(10));
        assert_eq!(n("ten"), Some(10));
        assert_eq!(n("twenty five"), Some(25));
        assert_eq!(n("twenty-five"), Some(25));
        assert_eq!(n("a hundred and five"), Some(105));
        assert_eq!(n("one thousand two hundred"), Some(1200));
        assert_eq!(n("five five"), None);
        assert_eq!(n("kitchen"), None);
        assert_eq!(n("a"), None);
    }

    #[test]
    fn slots_are_filled_and_numbers_normalised() {
        let (s, slots) = m(
            "set a timer for {minutes} minutes",
            "Set a timer for ten minutes.",
        )
        .unwrap();
        assert_eq!(s, 1.0);
        assert_eq!(slots["minutes"], "10");
        let (_, slots) = m(
            "set a timer for {minutes:number} minutes",
            "set a timer for 25 minutes",
        )
        .unwrap();
        assert_eq!(slots["minutes"], "25");
        let (s, slots) = m(
            "turn {state:on|off} the {room} lights",
            "Turn off the living room lights, please.",
        )
        .unwrap();
        assert_eq!(slots["state"], "off");
        assert_eq!(slots["room"], "living room");
        // "please" is one extra word against five template tokens.
        assert!((s - 0.8).abs() < 1e-6, "{s}");
    }

    #[test]
    fn near_misses_score_lower_and_impossible_slots_do_not_match() {
        let (s, _) = m("what time is it", "what time is it now").unwrap();
        assert!((s - 0.75).abs() < 1e-6);
        let (s, _) = m("what time is it", "what's the time").unwrap();
        assert!(s < 0.5, "{s}");
        assert!(m("turn {state:on|off} the lights", "turn up the lights").is_none());
        assert!(
            m(
                "set a timer for {n:number} minutes",
                "set a timer for some minutes"
            )
            .is_none()
        );
    }

    #[test]
    fn template_errors_are_clear() {
        for (t, want) in [
            ("set {x", "unclosed"),
            ("set x}", "without"),
            ("{a} and {a}", "twice"),
            ("turn {s:on|} it", "empty choice"),
            ("{bad name}", "slot names"),
            ("  ", "no words"),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
        }
        assert_eq!(
            Template::parse("turn {state:on|off} the {room} lights")
                .unwrap()
                .slots(),
            vec!["state", "room"]
        );
    }
}

//! Text measures: Whisper's compression ratio (repetition test), and the transcript normaliser
//! and word error rate used by tests and the bench.

use std::io::Write;

use crate::words::{ONES, TENS};

/// `len(utf8) / len(zlib.compress(utf8))`, as openai/whisper's `compression_ratio` (zlib level
/// 6). Repetitive (looping) output compresses well and scores above ~2.4.
pub fn compression_ratio(text: &str) -> f32 {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    // Writing into a Vec cannot fail.
    let compressed = enc
        .write_all(bytes)
        .and_then(|_| enc.finish())
        .map(|v| v.len())
        .unwrap_or(bytes.len());
    bytes.len() as f32 / compressed.max(1) as f32
}

fn number_words(n: u64, out: &mut Vec<String>) {
    if n < 20 {
        out.push(ONES[n as usize].into());
    } else if n < 100 {
        out.push(TENS[(n / 10) as usize].into());
        if !n.is_multiple_of(10) {
            out.push(ONES[(n % 10) as usize].into());
        }
    } else if n < 1000 {
        out.push(ONES[(n / 100) as usize].into());
        out.push("hundred".into());
        if !n.is_multiple_of(100) {
            number_words(n % 100, out);
        }
    } else if n < 1_000_000 {
        number_words(n / 1000, out);
        out.push("thousand".into());
        if !n.is_multiple_of(1000) {
            number_words(n % 1000, out);
        }
    } else {
        out.push(n.to_string());
    }
}

/// Ordinal form of the last word of a cardinal ("five" -> "fifth").
fn ordinal(word: &str) -> String {
    match word {
        "one" => "first".into(),
        "two" => "second".into(),
        "three" => "third".into(),
        "five" => "fifth".into(),
        "eight" => "eighth".into(),
        "nine" => "ninth".into(),
        "twelve" => "twelfth".into(),
        w if w.ends_with('y') => format!("{}ieth", &w[..w.len() - 1]),
        w => format!("{w}th"),
    }
}

/// Normalises a transcript for WER: lower case, punctuation removed (apostrophes dropped,
/// hyphens split words), digits spelled out ("15th" -> "fifteenth", "1961" -> "one thousand
/// nine hundred sixty one"; years are not read as "nineteen sixty one"), whitespace collapsed.
pub fn normalize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let cleaned: String = lower
        .chars()
        .map(|c| match c {
            '\'' | '\u{2019}' => '\0',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        })
        .filter(|&c| c != '\0')
        .collect();
    let mut out = Vec::new();
    for word in cleaned.split_whitespace() {
        let digits: String = word.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            out.push(word.to_string());
            continue;
        }
        let rest = &word[digits.len()..];
        let Ok(n) = digits.parse::<u64>() else {
            out.push(word.to_string());
            continue;
        };
        let mut words = Vec::new();
        number_words(n, &mut words);
        if matches!(rest, "st" | "nd" | "rd" | "th") {
            if let Some(last) = words.last_mut() {
                *last = ordinal(last);
            }
        } else if !rest.is_empty() {
            words.push(rest.to_string());
        }
        out.extend(words);
    }
    out
}

/// Word-level edit distance between two word sequences (substitutions + deletions +
/// insertions).
pub fn edit_distance(reference: &[String], hypothesis: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut cur = vec![0; hypothesis.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        cur[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[hypothesis.len()]
}

/// Word error rate of `hypothesis` against `reference` after [`normalize`]: (errors, reference
/// words).
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalize(reference);
    let h = normalize(hypothesis);
    (edit_distance(&r, &h), r.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normaliser_handles_case_punctuation_numbers() {
        assert_eq!(
            normalize("And so, my fellow Americans: don't!"),
            ["and", "so", "my", "fellow", "americans", "dont"]
        );
        assert_eq!(
            normalize("the 15th century"),
            ["the", "fifteenth", "century"]
        );
        assert_eq!(
            normalize("21 well-known"),
            ["twenty", "one", "well", "known"]
        );
        assert_eq!(normalize("the 20th"), ["the", "twentieth"]);
    }

    #[test]
    fn wer_counts_edits() {
        assert_eq!(word_errors("a b c d", "a x c"), (2, 4));
        assert_eq!(word_errors("Hello, world.", "hello world"), (0, 2));
        assert_eq!(word_errors("", "noise words"), (2, 0));
    }

    #[test]
    fn compression_ratio_flags_repetition() {
        let normal = "And so my fellow Americans, ask not what your country can do for you.";
        let looping = "Thank you. ".repeat(30);
        assert!(
            compression_ratio(normal) < 1.5,
            "{}",
            compression_ratio(normal)
        );
        assert!(compression_ratio(&looping) > 2.4);
        assert_eq!(compression_ratio(""), 0.0);
    }
}

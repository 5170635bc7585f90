//! Phoneme notations: CMUdict's ARPAbet and the IPA that espeak-ng writes for American English,
//! which is what Piper voices were trained on (`espeak-ng -q --ipa -v en-us`).
//!
//! The mapping follows espeak-ng's conventions rather than textbook IPA, because the voice only
//! knows espeak's symbols: long vowels carry `ː` (`ɑː`, `iː`, `uː`, `ɔː`, `ɜː`), r-coloured schwa
//! is `ɚ`, the stress mark sits right before the stressed vowel (`həlˈoʊ`), and a /t/ or /d/
//! between a vowel and an unstressed vowel is the flap `ɾ` (`bˈʌɾɚ`).

/// Primary and secondary stress marks.
pub const PRIMARY: char = 'ˈ';
pub const SECONDARY: char = 'ˌ';

/// Why a phoneme string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhonemeError {
    #[error("unknown ARPAbet phone {0:?} (expected e.g. \"HH AH0 L OW1\")")]
    UnknownArpabet(String),
    #[error("empty pronunciation")]
    Empty,
    #[error("{0:?} is not an IPA symbol the voice knows")]
    UnknownIpa(char),
}

/// One ARPAbet phone without its stress digit -> IPA.
fn arpabet_base(p: &str, stress: Option<u8>) -> Option<&'static str> {
    let stressed = matches!(stress, Some(1) | Some(2));
    Some(match p {
        "AA" => "ɑː",
        "AE" => "æ",
        "AH" if stressed => "ʌ",
        "AH" => "ə",
        "AO" => "ɔː",
        "AW" => "aʊ",
        "AY" => "aɪ",
        "EH" => "ɛ",
        "ER" if stressed => "ɜː",
        "ER" => "ɚ",
        "EY" => "eɪ",
        "IH" => "ɪ",
        "IY" if stressed => "iː",
        "IY" => "i",
        "OW" => "oʊ",
        "OY" => "ɔɪ",
        "UH" => "ʊ",
        "UW" => "uː",
        "B" => "b",
        "CH" => "tʃ",
        "D" => "d",
        "DH" => "ð",
        "F" => "f",
        "G" => "ɡ",
        "HH" => "h",
        "JH" => "dʒ",
        "K" => "k",
        "L" => "l",
        "M" => "m",
        "N" => "n",
        "NG" => "ŋ",
        "P" => "p",
        "R" => "ɹ",
        "S" => "s",
        "SH" => "ʃ",
        "T" => "t",
        "TH" => "θ",
        "V" => "v",
        "W" => "w",
        "Y" => "j",
        "Z" => "z",
        "ZH" => "ʒ",
        _ => return None,
    })
}

/// An ARPAbet phone split into its base and stress digit ("AH0" -> ("AH", Some(0))).
fn split_stress(p: &str) -> (&str, Option<u8>) {
    match p.as_bytes().last() {
        Some(d @ b'0'..=b'2') => (&p[..p.len() - 1], Some(d - b'0')),
        _ => (p, None),
    }
}

/// Parses "HH AH0 L OW1" (case-insensitive) into phones, checking each.
pub fn parse_arpabet(s: &str) -> Result<Vec<String>, PhonemeError> {
    let phones: Vec<String> = s.split_whitespace().map(str::to_ascii_uppercase).collect();
    if phones.is_empty() {
        return Err(PhonemeError::Empty);
    }
    for p in &phones {
        let (base, stress) = split_stress(p);
        if arpabet_base(base, stress).is_none() {
            return Err(PhonemeError::UnknownArpabet(p.clone()));
        }
    }
    Ok(phones)
}

/// ARPAbet phones -> espeak-style IPA. `stress` false drops the stress marks (function words,
/// which espeak leaves unstressed: "ðɪs ɪz ɐ tˈɛst").
pub fn arpabet_to_ipa(phones: &[impl AsRef<str>], stress: bool) -> String {
    let split: Vec<(&str, Option<u8>)> = phones.iter().map(|p| split_stress(p.as_ref())).collect();
    let is_vowel = |i: usize| split.get(i).is_some_and(|(_, s)| s.is_some());
    let mut out = String::new();
    for (i, &(base, s)) in split.iter().enumerate() {
        if stress {
            match s {
                Some(1) => out.push(PRIMARY),
                Some(2) => out.push(SECONDARY),
                _ => {}
            }
        }
        // American flap: t/d after a vowel (or r) and before an unstressed vowel.
        let after_vowel = i > 0 && (is_vowel(i - 1) || split[i - 1].0 == "R");
        if (base == "T" || base == "D")
            && after_vowel
            && split.get(i + 1).is_some_and(|(_, s)| *s == Some(0))
            && !(i >= 2 && split[i - 1].0 == "R" && !is_vowel(i - 2))
        {
            out.push('ɾ');
            continue;
        }
        match arpabet_base(base, s) {
            Some(ipa) => out.push_str(ipa),
            None => out.push_str(&base.to_ascii_lowercase()),
        }
    }
    out
}

/// Whether `c` is an IPA letter (not a stress mark, length mark or space): used to tell a
/// phoneme string from one made only of marks.
pub fn is_phone_char(c: char) -> bool {
    !(c.is_whitespace() || c == PRIMARY || c == SECONDARY || c == 'ː')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipa(s: &str) -> String {
        arpabet_to_ipa(&parse_arpabet(s).unwrap(), true)
    }

    #[test]
    fn matches_espeak_for_common_words() {
        // Reference strings from `espeak-ng -q --ipa -v en-us`.
        assert_eq!(ipa("HH AH0 L OW1"), "həlˈoʊ");
        assert_eq!(ipa("W ER1 L D"), "wˈɜːld");
        assert_eq!(ipa("B AH1 T ER0"), "bˈʌɾɚ");
        assert_eq!(ipa("S IH1 T IY0"), "sˈɪɾi");
        assert_eq!(ipa("N EY1 SH AH0 N"), "nˈeɪʃən");
        assert_eq!(ipa("CH ER1 CH"), "tʃˈɜːtʃ");
        assert_eq!(ipa("JH AH1 JH"), "dʒˈʌdʒ");
        assert_eq!(ipa("B UW1 T"), "bˈuːt");
        assert_eq!(ipa("F AA1 DH ER0"), "fˈɑːðɚ");
        assert_eq!(ipa("K AH0 M P Y UW1 T ER0"), "kəmpjˈuːɾɚ");
        assert_eq!(ipa("T W EH1 N T IY0"), "twˈɛnti");
    }

    #[test]
    fn flap_needs_a_vowel_before_and_an_unstressed_vowel_after() {
        assert_eq!(ipa("AH0 T AE1 K"), "ətˈæk"); // stressed after: no flap
        assert_eq!(ipa("P AA1 R T IY0"), "pˈɑːɹɾi"); // after r: flap, as espeak does
        assert_eq!(ipa("S T AA1 P"), "stˈɑːp");
    }

    #[test]
    fn unstressed_reading_drops_marks() {
        let p = parse_arpabet("DH IH1 S").unwrap();
        assert_eq!(arpabet_to_ipa(&p, false), "ðɪs");
    }

    #[test]
    fn bad_arpabet_is_named() {
        assert_eq!(
            parse_arpabet("HH XX1"),
            Err(PhonemeError::UnknownArpabet("XX1".into()))
        );
        assert_eq!(parse_arpabet("  "), Err(PhonemeError::Empty));
        assert!(parse_arpabet("hh ah0 l ow1").is_ok());
    }
}

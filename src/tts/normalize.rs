//! Written text -> spoken words, as a careful reader (or a maths teacher) says them.
//!
//! The text is first split into tokens (words, numbers, symbols, spaces); a pass over the tokens
//! with look-ahead then recognises, in order: e-mail addresses and URLs, currency, times, ISO
//! dates and "Month D, YYYY", phone numbers, ordinals ("21st"), percentages and units, fractions
//! and dates with slashes, decimals, years, Roman numerals after a name or "chapter", the
//! abbreviations of [`ABBREVIATIONS`], Greek letters, and mathematics (`x^2 + 3x = 10` -> "x
//! squared plus three x equals ten", `f(x) = sin(x)/x`, `sqrt(2)`, `√2`, `π r²`, `∑`, `≤ ≥ ≠ ≈`,
//! `e^{iπ}`, subscripts). What no rule claims is kept as written.

use super::numbers::{cardinal, decimal, digits, fraction, ordinal, year};

/// Abbreviations read in full (matched case-sensitively with their dot).
pub const ABBREVIATIONS: [(&str, &str); 16] = [
    ("Dr.", "doctor"),
    ("Mr.", "mister"),
    ("Mrs.", "missus"),
    ("Ms.", "miz"),
    ("Prof.", "professor"),
    ("St.", "saint"),
    ("Jr.", "junior"),
    ("Sr.", "senior"),
    ("vs.", "versus"),
    ("etc.", "et cetera"),
    ("e.g.", "for example"),
    ("i.e.", "that is"),
    ("approx.", "approximately"),
    ("Mt.", "mount"),
    ("Ave.", "avenue"),
    ("Inc.", "incorporated"),
];

const UNITS: [(&str, &str, &str); 30] = [
    ("km", "kilometer", "kilometers"),
    ("m", "meter", "meters"),
    ("cm", "centimeter", "centimeters"),
    ("mm", "millimeter", "millimeters"),
    ("kg", "kilogram", "kilograms"),
    ("g", "gram", "grams"),
    ("mg", "milligram", "milligrams"),
    ("lb", "pound", "pounds"),
    ("lbs", "pound", "pounds"),
    ("oz", "ounce", "ounces"),
    ("mi", "mile", "miles"),
    ("ft", "foot", "feet"),
    ("h", "hour", "hours"),
    ("hr", "hour", "hours"),
    ("min", "minute", "minutes"),
    ("s", "second", "seconds"),
    ("ms", "millisecond", "milliseconds"),
    ("mph", "mile per hour", "miles per hour"),
    ("l", "liter", "liters"),
    ("ml", "milliliter", "milliliters"),
    ("KB", "kilobyte", "kilobytes"),
    ("MB", "megabyte", "megabytes"),
    ("GB", "gigabyte", "gigabytes"),
    ("TB", "terabyte", "terabytes"),
    ("Hz", "hertz", "hertz"),
    ("kHz", "kilohertz", "kilohertz"),
    ("MHz", "megahertz", "megahertz"),
    ("GHz", "gigahertz", "gigahertz"),
    ("W", "watt", "watts"),
    ("kW", "kilowatt", "kilowatts"),
];

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const GREEK: [(char, &str); 24] = [
    ('α', "alpha"),
    ('β', "beta"),
    ('γ', "gamma"),
    ('δ', "delta"),
    ('ε', "epsilon"),
    ('ζ', "zeta"),
    ('η', "eta"),
    ('θ', "theta"),
    ('ι', "iota"),
    ('κ', "kappa"),
    ('λ', "lambda"),
    ('μ', "mu"),
    ('ν', "nu"),
    ('ξ', "xi"),
    ('π', "pi"),
    ('ρ', "rho"),
    ('σ', "sigma"),
    ('τ', "tau"),
    ('φ', "phi"),
    ('χ', "chi"),
    ('ψ', "psi"),
    ('ω', "omega"),
    ('Δ', "delta"),
    ('Σ', "sigma"),
];

/// Symbols read as words wherever they appear.
const SYMBOLS: [(char, &str); 20] = [
    ('≤', "is less than or equal to"),
    ('≥', "is greater than or equal to"),
    ('≠', "is not equal to"),
    ('≈', "is approximately equal to"),
    ('±', "plus or minus"),
    ('×', "times"),
    ('·', "times"),
    ('÷', "divided by"),
    ('∑', "the sum of"),
    ('∏', "the product of"),
    ('∫', "the integral of"),
    ('∞', "infinity"),
    ('∈', "is in"),
    ('→', "goes to"),
    ('∂', "partial"),
    ('∇', "nabla"),
    ('&', "and"),
    ('+', "plus"),
    ('=', "equals"),
    ('*', "times"),
];

/// Functions read "f of x".
const FUNCTIONS: [(&str, &str); 10] = [
    ("sin", "sine"),
    ("cos", "cosine"),
    ("tan", "tangent"),
    ("log", "log"),
    ("ln", "natural log"),
    ("exp", "exponential"),
    ("f", "f"),
    ("g", "g"),
    ("h", "h"),
    ("sqrt", "the square root"),
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Num(String),
    Sym(char),
    Space,
}

fn superscript(c: char) -> Option<char> {
    Some(match c {
        '⁰' => '0',
        '¹' => '1',
        '²' => '2',
        '³' => '3',
        '⁴' => '4',
        '⁵' => '5',
        '⁶' => '6',
        '⁷' => '7',
        '⁸' => '8',
        '⁹' => '9',
        _ => return None,
    })
}

fn subscript(c: char) -> Option<char> {
    let d = "₀₁₂₃₄₅₆₇₈₉".chars().position(|s| s == c)?;
    char::from_digit(d as u32, 10)
}

fn tokenize(text: &str) -> Vec<Tok> {
    // Superscripts and subscripts become ^N and _N first.
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if let Some(d) = superscript(c) {
            s.push('^');
            s.push(d);
        } else if let Some(d) = subscript(c) {
            s.push('_');
            s.push(d);
        } else {
            s.push(c);
        }
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            out.push(Tok::Space);
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || ((chars[i] == ',' || chars[i] == '.')
                        && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_alphabetic() && !GREEK.iter().any(|(g, _)| *g == c) {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphabetic() || chars[i] == '\'')
                && !GREEK.iter().any(|(g, _)| *g == chars[i])
            {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            out.push(Tok::Sym(c));
            i += 1;
        }
    }
    out
}

fn is_num(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Num(n)) => Some(n),
        _ => None,
    }
}

fn is_word(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Word(w)) => Some(w),
        _ => None,
    }
}

fn int(n: &str) -> Option<u64> {
    n.replace(',', "").parse().ok()
}

/// A number as words: decimals, thousands separators, long digit strings read digit by digit.
fn number(n: &str) -> String {
    if let Some(d) = decimal(&n.replace(',', "")) {
        return d;
    }
    match int(n) {
        Some(v) if n.replace(',', "").len() <= 15 => cardinal(v),
        _ => digits(n),
    }
}

fn roman(w: &str) -> Option<u64> {
    if w.len() < 2 && w != "V" && w != "X" {
        return None;
    }
    let val = |c| match c {
        'I' => Some(1),
        'V' => Some(5),
        'X' => Some(10),
        'L' => Some(50),
        'C' => Some(100),
        'D' => Some(500),
        'M' => Some(1000),
        _ => None,
    };
    let v: Vec<u64> = w.chars().map(val).collect::<Option<_>>()?;
    let mut total = 0i64;
    for (i, &x) in v.iter().enumerate() {
        if v.get(i + 1).is_some_and(|&n| n > x) {
            total -= x as i64;
        } else {
            total += x as i64;
        }
    }
    (total > 0).then_some(total as u64)
}

/// Words before a Roman numeral that make it a cardinal ("chapter IV" -> "chapter four").
const ROMAN_CARDINAL: [&str; 8] = [
    "chapter", "part", "volume", "book", "act", "scene", "war", "phase",
];

/// Reads `text` aloud as words (see the module docs).
pub fn normalize(text: &str) -> String {
    let t = tokenize(text);
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    // Whether the previous meaningful token was an operand (number, word, closing bracket),
    // which makes a following '-' a minus between operands rather than a sign.
    let mut prev_operand = false;
    while i < t.len() {
        let next = |k: usize| t.get(i + k);
        match &t[i] {
            Tok::Space => {
                i += 1;
                continue;
            }
            Tok::Word(w) => {
                // E-mail: word(.word)*@word(.word)+
                if let Some(span) = email_or_url(&t, i) {
                    out.push(span.0);
                    i = span.1;
                    prev_operand = true;
                    continue;
                }
                // Abbreviations with their dots ("e.g.", "Dr.").
                if let Some((len, words)) = abbreviation(&t, i) {
                    out.push(words.to_string());
                    i += len;
                    prev_operand = true;
                    continue;
                }
                // Month D, YYYY.
                if let Some(m) = MONTHS.iter().position(|m| m == w)
                    && let (Some(Tok::Space), Some(d)) = (next(1), is_num(next(2)))
                    && let Some(d) = int(d).filter(|d| (1..=31).contains(d))
                {
                    let mut s = format!("{} {}", MONTHS[m], ordinal(d));
                    let mut j = i + 3;
                    if next(3) == Some(&Tok::Sym(','))
                        && next(4) == Some(&Tok::Space)
                        && let Some(y) = is_num(next(5)).and_then(int)
                    {
                        s.push_str(&format!(", {}", year(y)));
                        j = i + 6;
                    }
                    out.push(s);
                    i = j;
                    prev_operand = true;
                    continue;
                }
                // Roman numerals after a name-like word or "chapter".
                if let Some(v) = roman(w)
                    && let Some(prev) = out.last()
                {
                    let p = prev.to_lowercase();
                    if ROMAN_CARDINAL.contains(&p.as_str()) {
                        out.push(cardinal(v));
                        i += 1;
                        continue;
                    }
                    if prev.chars().next().is_some_and(char::is_uppercase) && w.len() <= 5 {
                        out.push(format!("the {}", ordinal(v)));
                        i += 1;
                        continue;
                    }
                }
                // Functions: "sin(x)" -> "sine of x".
                if let Some((_, name)) = FUNCTIONS.iter().find(|(f, _)| f == w)
                    && next(1) == Some(&Tok::Sym('('))
                {
                    out.push(format!("{name} of"));
                    i += 2;
                    prev_operand = false;
                    continue;
                }
                // "a.m." / "pm".
                let lw = w.to_lowercase();
                if (lw == "am" || lw == "pm") && prev_operand {
                    out.push(format!("{} m", &lw[..1]));
                    i += 1;
                    continue;
                }
                if (lw == "a" || lw == "p")
                    && prev_operand
                    && next(1) == Some(&Tok::Sym('.'))
                    && is_word(next(2)).is_some_and(|m| m.eq_ignore_ascii_case("m"))
                {
                    out.push(format!("{lw} m"));
                    i += if next(3) == Some(&Tok::Sym('.')) {
                        4
                    } else {
                        3
                    };
                    continue;
                }
                out.push(w.clone());
                i += 1;
                prev_operand = true;
            }
            Tok::Num(n) => {
                let (s, used) = read_number(&t, i, n);
                out.push(s);
                i += used;
                prev_operand = true;
            }
            Tok::Sym(c) => {
                let c = *c;
                let (s, used, operand) = read_symbol(&t, i, c, prev_operand, out.last());
                if !s.is_empty() {
                    out.push(s);
                }
                i += used;
                prev_operand = operand;
            }
        }
    }
    out.join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" ,", ",")
        .replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ;", ";")
        .replace(" :", ":")
}

fn abbreviation(t: &[Tok], i: usize) -> Option<(usize, &'static str)> {
    // Join word and dot tokens without spaces: "e", ".", "g", "." -> "e.g.".
    let mut s = String::new();
    let mut best = None;
    for (k, tok) in t[i..].iter().enumerate().take(6) {
        match tok {
            Tok::Word(w) => s.push_str(w),
            Tok::Sym('.') => {
                s.push('.');
                if let Some((_, words)) = ABBREVIATIONS.iter().find(|(a, _)| *a == s) {
                    best = Some((k + 1, *words));
                }
            }
            _ => break,
        }
    }
    best
}

/// `user@host.tld` or `http(s)://...` / `www....`, read with "at", "dot", "slash".
fn email_or_url(t: &[Tok], i: usize) -> Option<(String, usize)> {
    let mut j = i;
    let mut raw = String::new();
    while j < t.len() {
        match &t[j] {
            Tok::Word(w) => raw.push_str(w),
            Tok::Num(n) => raw.push_str(n),
            Tok::Sym(c) if matches!(c, '@' | '.' | ':' | '/' | '-' | '_') => {
                // A trailing dot ends a sentence.
                if *c == '.' && !matches!(t.get(j + 1), Some(Tok::Word(_) | Tok::Num(_))) {
                    break;
                }
                raw.push(*c);
            }
            _ => break,
        }
        j += 1;
    }
    let is_email = raw.contains('@') && raw.split('@').nth(1).is_some_and(|d| d.contains('.'));
    let is_url = raw.contains("://") || (raw.starts_with("www.") && raw.len() > 4);
    if !(is_email || is_url) {
        return None;
    }
    let body = raw
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let mut words = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, words: &mut Vec<String>| {
        if !cur.is_empty() {
            words.push(std::mem::take(cur));
        }
    };
    for c in body.chars() {
        let w = match c {
            '@' => "at",
            '.' => "dot",
            '/' => "slash",
            '-' => "dash",
            '_' => "underscore",
            ':' => "colon",
            _ => {
                cur.push(c);
                continue;
            }
        };
        flush(&mut cur, &mut words);
        words.push(w.to_string());
    }
    flush(&mut cur, &mut words);
    Some((words.join(" "), j))
}

/// A number token and what follows it; returns the words and the tokens used.
fn read_number(t: &[Tok], i: usize, n: &str) -> (String, usize) {
    let at = |k: usize| t.get(i + k);
    let sym = |k: usize, c: char| at(k) == Some(&Tok::Sym(c));
    // Time: H:MM [am|pm].
    if sym(1, ':')
        && let Some(m) = is_num(at(2)).filter(|m| m.len() == 2)
        && let (Some(h), Some(mv)) = (int(n), int(m))
        && h <= 24
        && mv < 60
    {
        let words = match mv {
            0 => format!("{} o'clock", cardinal(h)),
            1..=9 => format!("{} oh {}", cardinal(h), cardinal(mv)),
            _ => format!("{} {}", cardinal(h), cardinal(mv)),
        };
        return (words, 3);
    }
    // ISO date YYYY-MM-DD.
    if n.len() == 4
        && sym(1, '-')
        && sym(3, '-')
        && let (Some(y), Some(m), Some(d)) = (
            int(n),
            is_num(at(2)).and_then(int),
            is_num(at(4)).and_then(int),
        )
        && (1..=12).contains(&m)
        && (1..=31).contains(&d)
    {
        return (
            format!("{} {}, {}", MONTHS[m as usize - 1], ordinal(d), year(y)),
            5,
        );
    }
    // Phone numbers: 3-3-4 digit groups (and a leading (555) handled as digits).
    if n.len() == 3
        && sym(1, '-')
        && is_num(at(2)).is_some_and(|g| g.len() == 3)
        && sym(3, '-')
        && is_num(at(4)).is_some_and(|g| g.len() == 4)
    {
        let groups = [n, is_num(at(2)).unwrap_or(""), is_num(at(4)).unwrap_or("")];
        return (
            groups
                .iter()
                .map(|g| digits(g))
                .collect::<Vec<_>>()
                .join(", "),
            5,
        );
    }
    // Ordinals: 21st, 2nd, 3rd, 4th.
    if let Some(suf) = is_word(at(1))
        && matches!(suf, "st" | "nd" | "rd" | "th")
        && let Some(v) = int(n)
    {
        return (ordinal(v), 2);
    }
    // Percent.
    if sym(1, '%') {
        return (format!("{} percent", number(n)), 2);
    }
    // Degrees ("10°C", "10 °C").
    let deg_at = if sym(1, '°') {
        1
    } else if at(1) == Some(&Tok::Space) && sym(2, '°') {
        2
    } else {
        0
    };
    if deg_at > 0 {
        let (unit, used) = match is_word(at(deg_at + 1)) {
            Some("C") => (" Celsius", deg_at + 2),
            Some("F") => (" Fahrenheit", deg_at + 2),
            _ => ("", deg_at + 1),
        };
        let deg = if n == "1" { "degree" } else { "degrees" };
        return (format!("{} {deg}{unit}", number(n)), used);
    }
    // Units, with or without a space.
    let (unit_at, gap) = match (at(1), at(2)) {
        (Some(Tok::Word(_)), _) => (1, 0),
        (Some(Tok::Space), Some(Tok::Word(_))) => (2, 1),
        _ => (0, 0),
    };
    if unit_at > 0
        && let Some(u) = is_word(at(unit_at))
        && let Some((_, one, many)) = UNITS.iter().find(|(a, _, _)| *a == u)
        // "5 m" only with a space is ambiguous with "5 million": UNITS has no "m"-word clash
        // except single letters, which need no space ("5m", "3s") or a number before a dot.
        && (gap == 0 || u.len() > 1 || u == "W")
    {
        let unit = if n == "1" { one } else { many };
        // "km/h".
        if u == "km"
            && at(unit_at + 1) == Some(&Tok::Sym('/'))
            && is_word(at(unit_at + 2)) == Some("h")
        {
            let k = if n == "1" { "kilometer" } else { "kilometers" };
            return (format!("{} {k} per hour", number(n)), unit_at + 3);
        }
        return (format!("{} {unit}", number(n)), unit_at + 1);
    }
    // Fractions a/b and dates m/d/yyyy.
    if sym(1, '/')
        && let Some(d) = is_num(at(2))
        && let (Some(a), Some(b)) = (int(n), int(d))
    {
        if sym(3, '/')
            && let Some(y) = is_num(at(4)).and_then(int)
            && (1..=12).contains(&a)
            && (1..=31).contains(&b)
        {
            return (
                format!("{} {}, {}", MONTHS[a as usize - 1], ordinal(b), year(y)),
                5,
            );
        }
        if b > 1 && b <= 16 && a < 100 && !n.contains('.') {
            return (fraction(a, b), 3);
        }
    }
    // Years: four digits 1000-2099 without separators, unless a unit or sign follows.
    if n.len() == 4
        && !n.contains([',', '.'])
        && let Some(v) = int(n)
        && (1000..2100).contains(&v)
    {
        return (year(v), 1);
    }
    (number(n), 1)
}

/// A symbol in context; returns the words, the tokens used, and whether it ends an operand.
fn read_symbol(
    t: &[Tok],
    i: usize,
    c: char,
    prev_operand: bool,
    prev: Option<&String>,
) -> (String, usize, bool) {
    let at = |k: usize| t.get(i + k);
    let spaced_before = i > 0 && t[i - 1] == Tok::Space;
    if let Some((_, name)) = GREEK.iter().find(|(g, _)| *g == c) {
        return (name.to_string(), 1, true);
    }
    match c {
        // Currency: $5.50, €3, £2 million.
        '$' | '€' | '£' if is_num(at(1)).is_some() => {
            let n = is_num(at(1)).unwrap_or("0").replace(',', "");
            let (one, many, sub_one, sub_many) = match c {
                '$' => ("dollar", "dollars", "cent", "cents"),
                '€' => ("euro", "euros", "cent", "cents"),
                _ => ("pound", "pounds", "penny", "pence"),
            };
            let scale = match (at(2), is_word(at(3))) {
                (Some(Tok::Space), Some(s @ ("million" | "billion" | "thousand" | "trillion"))) => {
                    Some(s)
                }
                _ => None,
            };
            if let Some(s) = scale {
                return (format!("{} {s} {many}", number(&n)), 4, true);
            }
            let (whole, cents) = match n.split_once('.') {
                Some((w, f)) if f.len() == 2 => (w.to_string(), f.parse::<u64>().ok()),
                Some(_) => return (format!("{} {many}", number(&n)), 2, true),
                None => (n.clone(), None),
            };
            let w = int(&whole).unwrap_or(0);
            let mut s = format!("{} {}", cardinal(w), if w == 1 { one } else { many });
            if let Some(ct) = cents.filter(|&c| c > 0) {
                s = if w == 0 {
                    format!(
                        "{} {}",
                        cardinal(ct),
                        if ct == 1 { sub_one } else { sub_many }
                    )
                } else {
                    format!(
                        "{s} and {} {}",
                        cardinal(ct),
                        if ct == 1 { sub_one } else { sub_many }
                    )
                };
            }
            (s, 2, true)
        }
        '^' => {
            // Exponents: ^2 squared, ^3 cubed, ^N / ^{...} "to the power of".
            if let Some(n) = is_num(at(1)) {
                let s = match n {
                    "2" => "squared".to_string(),
                    "3" => "cubed".to_string(),
                    _ => format!("to the power of {}", number(n)),
                };
                return (s, 2, true);
            }
            if at(1) == Some(&Tok::Sym('{')) {
                let inner_end = (i + 2..t.len()).find(|&k| t[k] == Tok::Sym('}'));
                if let Some(e) = inner_end {
                    let inner: String = t[i + 2..e]
                        .iter()
                        .map(|x| match x {
                            Tok::Word(w) => format!("{w} "),
                            Tok::Num(n) => format!("{n} "),
                            Tok::Sym(c) => format!("{c} "),
                            Tok::Space => " ".into(),
                        })
                        .collect();
                    return (format!("to the {}", normalize(&inner)), e - i + 1, true);
                }
            }
            ("to the power of".into(), 1, false)
        }
        '_' => {
            if let Some(n) = is_num(at(1)) {
                return (format!("sub {}", number(n)), 2, true);
            }
            ("sub".into(), 1, false)
        }
        '√' => ("the square root of".into(), 1, false),
        '-' => {
            // Hyphenated words and ranges: "well-known", "10-20".
            let tight_after = !matches!(at(1), Some(Tok::Space) | None);
            if !spaced_before && prev_operand && tight_after {
                if is_num(at(1)).is_some() && i > 0 && matches!(t[i - 1], Tok::Num(_)) {
                    return ("to".into(), 1, false);
                }
                if matches!(at(1), Some(Tok::Word(_))) && i > 0 && matches!(t[i - 1], Tok::Word(_))
                {
                    return (String::new(), 1, false);
                }
            }
            // Between operands, or a sign before one; a lone dash is a pause.
            if prev_operand || tight_after {
                ("minus".into(), 1, false)
            } else {
                (String::new(), 1, false)
            }
        }
        '/' => {
            // a/b of single letters, numbers or brackets: "over"; between words: "or".
            let letter = |s: Option<&str>| s.is_some_and(|w| w.chars().count() == 1);
            let left_small = prev
                .is_some_and(|p| p.split_whitespace().count() == 1 && p.len() <= 2)
                || i > 0 && matches!(t[i - 1], Tok::Num(_) | Tok::Sym(')'));
            if left_small || letter(is_word(at(1))) || is_num(at(1)).is_some() {
                ("over".into(), 1, false)
            } else {
                ("or".into(), 1, false)
            }
        }
        '<' => ("is less than".into(), 1, false),
        '>' => ("is greater than".into(), 1, false),
        '(' | ')' | '{' | '}' | '[' | ']' | '"' | '“' | '”' => {
            (String::new(), 1, matches!(c, ')' | '}' | ']'))
        }
        '%' => ("percent".into(), 1, true),
        '@' => ("at".into(), 1, false),
        '#' if is_num(at(1)).is_some() => ("number".into(), 1, false),
        ',' | '.' | '?' | '!' | ';' | ':' => (c.to_string(), 1, false),
        other => {
            if let Some((_, w)) = SYMBOLS.iter().find(|(s, _)| *s == other) {
                return (w.to_string(), 1, false);
            }
            (String::new(), 1, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cases: &[(&str, &str)]) {
        let mut bad = Vec::new();
        for (input, want) in cases {
            let got = normalize(input);
            if got != *want {
                bad.push(format!("{input:?}\n   got  {got:?}\n   want {want:?}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {} wrong:\n{}",
            bad.len(),
            cases.len(),
            bad.join("\n")
        );
    }

    #[test]
    fn numbers_in_text() {
        check(&[
            ("I have 3 apples.", "I have three apples."),
            (
                "It costs 1,250 points",
                "It costs one thousand two hundred fifty points",
            ),
            ("pi is 3.14159", "pi is three point one four one five nine"),
            ("-7 degrees", "minus seven degrees"),
            ("the 21st century", "the twenty-first century"),
            ("my 2nd try", "my second try"),
            ("the 3rd time", "the third time"),
            ("4th of July", "fourth of July"),
            ("100th anniversary", "one hundredth anniversary"),
            ("add 1/2 cup", "add one half cup"),
            ("3/4 of them", "three quarters of them"),
            ("about 2/3", "about two thirds"),
            ("ages 10-20", "ages ten to twenty"),
            ("a well-known fact", "a well known fact"),
            ("0.5 liters", "zero point five liters"),
            ("1000000 people", "one million people"),
            (
                "card 4111111111111111111",
                "card four one one one one one one one one one one one one one one one one one one",
            ),
            ("room 101", "room one hundred one"),
            ("#1 hit", "number one hit"),
            ("0 errors", "zero errors"),
        ]);
    }

    #[test]
    fn years_dates_and_times() {
        check(&[
            ("in 1999", "in nineteen ninety-nine"),
            ("since 2005", "since two thousand five"),
            ("by 2024", "by twenty twenty-four"),
            ("in 1066", "in ten sixty-six"),
            ("2024-03-05", "March fifth, twenty twenty-four"),
            (
                "on 1999-12-31",
                "on December thirty-first, nineteen ninety-nine",
            ),
            ("March 5, 2024", "March fifth, twenty twenty-four"),
            ("July 4, 1776", "July fourth, seventeen seventy-six"),
            (
                "on 12/25/2023",
                "on December twenty-fifth, twenty twenty-three",
            ),
            ("May 1", "May first"),
            ("at 10:30", "at ten thirty"),
            ("at 7:05 pm", "at seven oh five p m"),
            ("at 9:00", "at nine o'clock"),
            ("6:45 a.m.", "six forty-five a m"),
            ("12:15 AM", "twelve fifteen a m"),
            (
                "between 9:00 and 17:30",
                "between nine o'clock and seventeen thirty",
            ),
        ]);
    }

    #[test]
    fn money_percent_units() {
        check(&[
            ("$5", "five dollars"),
            ("$1", "one dollar"),
            ("$5.50", "five dollars and fifty cents"),
            ("$0.99", "ninety-nine cents"),
            ("$1.01", "one dollar and one cent"),
            ("€3", "three euros"),
            ("£2", "two pounds"),
            ("£4.20", "four pounds and twenty pence"),
            ("$2 million", "two million dollars"),
            ("$1,200", "one thousand two hundred dollars"),
            ("50%", "fifty percent"),
            ("12.5% off", "twelve point five percent off"),
            ("5 km", "five kilometers"),
            ("1 km", "one kilometer"),
            ("3kg", "three kilograms"),
            ("100 mph", "one hundred miles per hour"),
            ("60 km/h", "sixty kilometers per hour"),
            ("20 min", "twenty minutes"),
            ("250 ml", "two hundred fifty milliliters"),
            ("16 GB", "sixteen gigabytes"),
            ("440 Hz", "four hundred forty hertz"),
            ("2.4 GHz", "two point four gigahertz"),
            ("10 °C", "ten degrees Celsius"),
            ("10°C", "ten degrees Celsius"),
            ("98.6°F", "ninety-eight point six degrees Fahrenheit"),
            ("90°", "ninety degrees"),
            ("6 ft", "six feet"),
            ("1 ft", "one foot"),
            ("5 lbs", "five pounds"),
            ("100 W", "one hundred watts"),
        ]);
    }

    #[test]
    fn phones_abbreviations_roman_addresses() {
        check(&[
            (
                "call 555-123-4567",
                "call five five five, one two three, four five six seven",
            ),
            ("Dr. Smith", "doctor Smith"),
            ("Mr. Jones and Mrs. Jones", "mister Jones and missus Jones"),
            ("St. Louis", "saint Louis"),
            ("apples, pears, etc.", "apples, pears, et cetera"),
            ("fruit, e.g. apples", "fruit, for example apples"),
            ("that, i.e. this", "that, that is this"),
            ("Prof. Xavier", "professor Xavier"),
            ("Martin Luther King Jr.", "Martin Luther King junior"),
            ("cats vs. dogs", "cats versus dogs"),
            ("Henry VIII", "Henry the eighth"),
            ("Louis XIV", "Louis the fourteenth"),
            ("Elizabeth II", "Elizabeth the second"),
            ("Chapter IV", "Chapter four"),
            ("World War II", "World War two"),
            ("Part III", "Part three"),
            ("mail john@example.com", "mail john at example dot com"),
            ("jane.doe@mail.co.uk", "jane dot doe at mail dot co dot uk"),
            (
                "see https://example.com/docs",
                "see example dot com slash docs",
            ),
            (
                "visit www.rust-lang.org.",
                "visit www dot rust dash lang dot org.",
            ),
            ("Tom & Jerry", "Tom and Jerry"),
            ("and/or", "and or or"),
        ]);
    }

    #[test]
    fn mathematics_as_a_teacher_reads_it() {
        check(&[
            ("x^2 + 3x = 10", "x squared plus three x equals ten"),
            ("a/b", "a over b"),
            ("f(x) = sin(x)/x", "f of x equals sine of x over x"),
            ("sqrt(2)", "the square root of two"),
            ("√2", "the square root of two"),
            ("π r²", "pi r squared"),
            ("πr²", "pi r squared"),
            ("2^10", "two to the power of ten"),
            ("e^{iπ}", "e to the i pi"),
            ("x ≤ 5", "x is less than or equal to five"),
            ("y ≥ 0", "y is greater than or equal to zero"),
            ("a ≠ b", "a is not equal to b"),
            (
                "π ≈ 3.14",
                "pi is approximately equal to three point one four",
            ),
            ("x < y", "x is less than y"),
            ("x > 2", "x is greater than two"),
            ("∑ x_i", "the sum of x sub i"),
            ("x₁ + x₂", "x sub one plus x sub two"),
            ("a_1", "a sub one"),
            ("α + β = γ", "alpha plus beta equals gamma"),
            ("θ = 90°", "theta equals ninety degrees"),
            ("5 - 3 = 2", "five minus three equals two"),
            ("x - y", "x minus y"),
            ("-x", "minus x"),
            ("3 × 4 = 12", "three times four equals twelve"),
            ("8 ÷ 2", "eight divided by two"),
            ("2 * 3", "two times three"),
            ("x³", "x cubed"),
            ("E = mc²", "E equals mc squared"),
            ("cos(θ)", "cosine of theta"),
            ("ln(x)", "natural log of x"),
            ("log(100) = 2", "log of one hundred equals two"),
            ("(a + b)^2", "a plus b squared"),
            ("1 ± 0.1", "one plus or minus zero point one"),
            ("n → ∞", "n goes to infinity"),
            ("x ∈ A", "x is in A"),
            ("∫ f(x)", "the integral of f of x"),
            ("10^-3", "ten to the power of minus three"),
            ("Δx", "delta x"),
        ]);
    }

    #[test]
    fn plain_text_is_kept() {
        check(&[
            ("Hello, world!", "Hello, world!"),
            ("I read the book.", "I read the book."),
            ("Is it live?", "Is it live?"),
            ("don't stop", "don't stop"),
            ("A  lot   of    spaces", "A lot of spaces"),
        ]);
    }
}

//! Numbers as English words: cardinals, ordinals, years, digit strings, decimals, fractions.

use crate::words::{ONES, TENS};

const SCALES: [(u64, &str); 4] = [
    (1_000_000_000_000, "trillion"),
    (1_000_000_000, "billion"),
    (1_000_000, "million"),
    (1_000, "thousand"),
];

fn below_100(n: u64) -> String {
    if n < 20 {
        ONES[n as usize].to_string()
    } else if n.is_multiple_of(10) {
        TENS[(n / 10) as usize].to_string()
    } else {
        format!("{}-{}", TENS[(n / 10) as usize], ONES[(n % 10) as usize])
    }
}

fn below_1000(n: u64) -> String {
    match (n / 100, n % 100) {
        (0, r) => below_100(r),
        (h, 0) => format!("{} hundred", ONES[h as usize]),
        (h, r) => format!("{} hundred {}", ONES[h as usize], below_100(r)),
    }
}

/// `1234` -> "one thousand two hundred thirty-four" (up to 999 trillion).
pub fn cardinal(n: u64) -> String {
    if n < 1000 {
        return below_1000(n);
    }
    let mut parts = Vec::new();
    let mut rest = n;
    for (scale, name) in SCALES {
        if rest >= scale {
            parts.push(format!("{} {name}", cardinal(rest / scale)));
            rest %= scale;
        }
    }
    if rest > 0 {
        parts.push(below_1000(rest));
    }
    parts.join(" ")
}

/// `-3` -> "minus three".
pub fn signed(n: i64) -> String {
    if n < 0 {
        format!("minus {}", cardinal(n.unsigned_abs()))
    } else {
        cardinal(n as u64)
    }
}

/// The ordinal of a cardinal phrase's last word: "twenty-one" -> "twenty-first".
fn ordinal_words(words: &str) -> String {
    let (head, last) = match words.rfind([' ', '-']) {
        Some(i) => (&words[..=i], &words[i + 1..]),
        None => ("", words),
    };
    let last = match last {
        "one" => "first".to_string(),
        "two" => "second".into(),
        "three" => "third".into(),
        "five" => "fifth".into(),
        "eight" => "eighth".into(),
        "nine" => "ninth".into(),
        "twelve" => "twelfth".into(),
        w if w.ends_with('y') => format!("{}ieth", &w[..w.len() - 1]),
        w => format!("{w}th"),
    };
    format!("{head}{last}")
}

/// `21` -> "twenty-first".
pub fn ordinal(n: u64) -> String {
    ordinal_words(&cardinal(n))
}

/// A year as read: 1999 -> "nineteen ninety-nine", 2005 -> "two thousand five", 2010 ->
/// "twenty ten", 1900 -> "nineteen hundred", 1805 -> "eighteen oh five".
pub fn year(n: u64) -> String {
    if !(1000..10_000).contains(&n) {
        return cardinal(n);
    }
    let (hi, lo) = (n / 100, n % 100);
    if (2000..2010).contains(&n) || n.is_multiple_of(1000) {
        return cardinal(n);
    }
    match lo {
        0 => format!("{} hundred", below_100(hi)),
        1..=9 => format!("{} oh {}", below_100(hi), ONES[lo as usize]),
        _ => format!("{} {}", below_100(hi), below_100(lo)),
    }
}

/// Each digit as a word: "042" -> "zero four two".
pub fn digits(s: &str) -> String {
    s.chars()
        .filter_map(|c| c.to_digit(10))
        .map(|d| ONES[d as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// "3.14" -> "three point one four"; "-0.5" -> "minus zero point five".
pub fn decimal(s: &str) -> Option<String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.')?;
    if frac.is_empty() || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.replace(',', "").parse().ok()?
    };
    let words = format!("{} point {}", cardinal(int), digits(frac));
    Some(if neg { format!("minus {words}") } else { words })
}

/// "3/4" -> "three quarters", "1/2" -> "one half", "5/8" -> "five eighths".
pub fn fraction(num: u64, den: u64) -> String {
    let n = cardinal(num);
    let plural = num != 1;
    let d = match den {
        2 if plural => "halves".to_string(),
        2 => "half".into(),
        4 if plural => "quarters".into(),
        4 => "quarter".into(),
        d => {
            let o = ordinal(d);
            if plural { format!("{o}s") } else { o }
        }
    };
    format!("{n} {d}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cardinals() {
        for (n, w) in [
            (0, "zero"),
            (7, "seven"),
            (13, "thirteen"),
            (20, "twenty"),
            (42, "forty-two"),
            (100, "one hundred"),
            (101, "one hundred one"),
            (999, "nine hundred ninety-nine"),
            (1000, "one thousand"),
            (1234, "one thousand two hundred thirty-four"),
            (1_000_000, "one million"),
            (2_500_000, "two million five hundred thousand"),
            (1_000_000_001, "one billion one"),
        ] {
            assert_eq!(cardinal(n), w, "{n}");
        }
        assert_eq!(signed(-15), "minus fifteen");
    }

    #[test]
    fn ordinals_years_digits() {
        for (n, w) in [
            (1, "first"),
            (2, "second"),
            (3, "third"),
            (4, "fourth"),
            (5, "fifth"),
            (8, "eighth"),
            (9, "ninth"),
            (12, "twelfth"),
            (20, "twentieth"),
            (21, "twenty-first"),
            (100, "one hundredth"),
            (103, "one hundred third"),
        ] {
            assert_eq!(ordinal(n), w, "{n}");
        }
        for (n, w) in [
            (1999, "nineteen ninety-nine"),
            (2005, "two thousand five"),
            (2000, "two thousand"),
            (2010, "twenty ten"),
            (2024, "twenty twenty-four"),
            (1900, "nineteen hundred"),
            (1805, "eighteen oh five"),
            (1066, "ten sixty-six"),
        ] {
            assert_eq!(year(n), w, "{n}");
        }
        assert_eq!(digits("042"), "zero four two");
    }

    #[test]
    fn decimals_and_fractions() {
        assert_eq!(decimal("3.14").unwrap(), "three point one four");
        assert_eq!(decimal("-0.5").unwrap(), "minus zero point five");
        assert_eq!(decimal(".25").unwrap(), "zero point two five");
        assert!(decimal("3.").is_none());
        assert_eq!(fraction(1, 2), "one half");
        assert_eq!(fraction(3, 4), "three quarters");
        assert_eq!(fraction(5, 8), "five eighths");
        assert_eq!(fraction(1, 3), "one third");
        assert_eq!(fraction(2, 3), "two thirds");
    }
}

//! English number words, shared by the three places that read or write numbers as words: the
//! WER normaliser (`nn::whisper::text`), the text-to-speech reader (`tts::numbers`) and the
//! sentence-action matcher (`actions::matcher`).

/// "zero" to "nineteen", indexed by value.
pub const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];

/// The tens by their digit ("twenty" at 2); 0 and 1 have none.
pub const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

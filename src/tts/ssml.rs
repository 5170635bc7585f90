//! The SSML subset hark speaks: `<speak>`, `<p>`, `<s>`, `<break>`, `<say-as>`
//! (characters, spell-out, cardinal, ordinal, digits, date, telephone), `<phoneme>` (IPA or
//! ARPAbet), `<sub>` and `<prosody rate>`. Anything else is an error that names the element and
//! its position, so a typo does not silently change what is said.
//!
//! The result is a flat list of [`Span`]s for the synthesiser: text still to be normalised,
//! words to say as they are, phonemes, and pauses, each with its speaking rate.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};

use super::numbers::{cardinal, ordinal};

/// Why a document was refused; `line` and `column` count from 1.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("SSML error at line {line}, column {column}: {message}")]
pub struct SsmlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// What to say.
#[derive(Debug, Clone, PartialEq)]
pub enum SpanKind {
    /// Written text: normalised, then phonemised.
    Text(String),
    /// Words already in spoken form (from `say-as`): phonemised only.
    Words(String),
    /// Phonemes for `text` (the written words, kept for timing and logs).
    Ipa { ipa: String, text: String },
    /// ARPAbet phonemes.
    Arpabet { phones: String, text: String },
    /// A pause, in milliseconds.
    Break(u32),
    /// A sentence or paragraph ends here (`</s>`, `</p>`).
    SentenceEnd,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub kind: SpanKind,
    /// Speaking rate: 1 normal, 2 twice as fast.
    pub rate: f32,
}

/// Longest pause a `<break>` may ask for.
pub const MAX_BREAK_MS: u32 = 10_000;

/// Parses an SSML document (the root must be `<speak>`).
pub fn parse(doc: &str) -> Result<Vec<Span>, SsmlError> {
    let mut reader = quick_xml::Reader::from_str(doc);
    reader.config_mut().trim_text(false);
    let at = |pos: u64, message: String| {
        let pos = (pos as usize).min(doc.len());
        let before = &doc[..floor_char(doc, pos)];
        SsmlError {
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().unwrap_or("").chars().count() + 1,
            message,
        }
    };
    let mut out: Vec<Span> = Vec::new();
    // Open elements: name and what they do to their content.
    let mut stack: Vec<Open> = Vec::new();
    let mut seen_root = false;
    loop {
        let start = reader.buffer_position();
        let ev = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => return Err(at(reader.error_position(), format!("malformed XML: {e}"))),
        };
        let rate = stack.last().map_or(1.0, |o| o.rate);
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) if !seen_root => {
                let name = name_of(e);
                if name != "speak" {
                    return Err(at(
                        start,
                        format!("the root element must be <speak>, not <{name}>"),
                    ));
                }
                seen_root = true;
                // `<speak/>` says nothing and closes itself.
                if matches!(ev, Event::Start(_)) {
                    stack.push(Open {
                        name,
                        rate,
                        content: Content::Normal,
                    });
                }
            }
            Event::Start(e) => {
                let open = open_element(&e, rate).map_err(|m| at(start, m))?;
                if open.name == "break" {
                    // <break>...</break> is legal XML; treat it as <break/>.
                    out.push(Span {
                        kind: SpanKind::Break(break_ms(&e).map_err(|m| at(start, m))?),
                        rate,
                    });
                }
                if let Content::Sub(alias) = &open.content {
                    out.push(Span {
                        kind: SpanKind::Text(alias.clone()),
                        rate: open.rate,
                    });
                }
                stack.push(open);
            }
            Event::Empty(e) => {
                let open = open_element(&e, rate).map_err(|m| at(start, m))?;
                match (open.name.as_str(), &open.content) {
                    ("break", _) => out.push(Span {
                        kind: SpanKind::Break(break_ms(&e).map_err(|m| at(start, m))?),
                        rate,
                    }),
                    (_, Content::Sub(alias)) => out.push(Span {
                        kind: SpanKind::Text(alias.clone()),
                        rate,
                    }),
                    ("phoneme", Content::Phoneme { .. }) => {
                        push_text(&mut out, &stack_with(&stack, &open), "");
                    }
                    _ => {}
                }
            }
            Event::End(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let Some(open) = stack.pop() else {
                    return Err(at(start, format!("</{name}> closes nothing")));
                };
                if open.name != name {
                    return Err(at(start, format!("</{name}> closes <{}>", open.name)));
                }
                if matches!(name.as_str(), "s" | "p") {
                    out.push(Span {
                        kind: SpanKind::SentenceEnd,
                        rate,
                    });
                }
                // A <phoneme> with no text still says its phonemes.
                if let Content::Phoneme { said, .. } = &open.content
                    && !said.get()
                {
                    push_text(&mut out, std::slice::from_ref(&open), "");
                }
            }
            Event::Text(t) => {
                let text = t.xml_content().map_err(|e| at(start, e.to_string()))?;
                if stack.is_empty() {
                    if !text.trim().is_empty() {
                        return Err(at(start, "text outside <speak>".into()));
                    }
                    continue;
                }
                push_text(&mut out, &stack, &text);
            }
            Event::CData(t) => {
                let text = String::from_utf8_lossy(&t).into_owned();
                if stack.is_empty() {
                    return Err(at(start, "text outside <speak>".into()));
                }
                push_text(&mut out, &stack, &text);
            }
            Event::GeneralRef(r) => {
                let text: Cow<'_, str> = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string().into(),
                    Ok(None) => {
                        let name = String::from_utf8_lossy(&r).into_owned();
                        match name.as_str() {
                            "amp" => "&".into(),
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "quot" => "\"".into(),
                            "apos" => "'".into(),
                            _ => return Err(at(start, format!("unknown entity &{name};"))),
                        }
                    }
                    Err(e) => return Err(at(start, format!("bad character reference: {e}"))),
                };
                if stack.is_empty() {
                    return Err(at(start, "text outside <speak>".into()));
                }
                push_text(&mut out, &stack, &text);
            }
            Event::Eof => break,
            // Declarations, comments, processing instructions and DOCTYPE say nothing.
            _ => {}
        }
    }
    if !seen_root {
        return Err(at(0, "no <speak> element".into()));
    }
    if let Some(open) = stack.last() {
        return Err(at(
            doc.len() as u64,
            format!("<{}> is never closed", open.name),
        ));
    }
    Ok(merge_text(out))
}

/// Whether a text looks like SSML (starts with `<speak`), for callers that guess.
pub fn looks_like_ssml(text: &str) -> bool {
    let t = text.trim_start();
    let t = t
        .strip_prefix("<?xml")
        .and_then(|r| r.split_once("?>").map(|(_, rest)| rest.trim_start()))
        .unwrap_or(t);
    t.starts_with("<speak")
}

#[derive(Debug, Clone)]
enum Content {
    Normal,
    SayAs(String),
    Phoneme {
        ipa: bool,
        ph: String,
        /// Set once the phonemes were emitted: text split by entities arrives in pieces, and
        /// the phonemes stand for all of them.
        said: std::rc::Rc<std::cell::Cell<bool>>,
    },
    Sub(String),
}

#[derive(Debug, Clone)]
struct Open {
    name: String,
    rate: f32,
    content: Content,
}

fn stack_with(stack: &[Open], open: &Open) -> Vec<Open> {
    let mut s = stack.to_vec();
    s.push(open.clone());
    s
}

fn name_of(e: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(e.local_name().as_ref()).into_owned()
}

fn attr(e: &BytesStart<'_>, key: &str) -> Result<Option<String>, String> {
    for a in e.attributes() {
        let a = a.map_err(|err| format!("bad attribute: {err}"))?;
        if a.key.local_name().as_ref() == key.as_bytes() {
            return a
                .unescape_value()
                .map(|v| Some(v.into_owned()))
                .map_err(|err| format!("bad attribute value: {err}"));
        }
    }
    Ok(None)
}

fn open_element(e: &BytesStart<'_>, rate: f32) -> Result<Open, String> {
    let name = name_of(e);
    let content = match name.as_str() {
        "speak" => return Err("<speak> inside <speak>".into()),
        "p" | "s" | "break" => Content::Normal,
        "say-as" => {
            let how = attr(e, "interpret-as")?.ok_or(
                "<say-as> needs interpret-as=\"characters|cardinal|ordinal|date|telephone\"",
            )?;
            let how = how.to_ascii_lowercase();
            if !matches!(
                how.as_str(),
                "characters"
                    | "spell-out"
                    | "cardinal"
                    | "number"
                    | "ordinal"
                    | "digits"
                    | "date"
                    | "telephone"
            ) {
                return Err(format!(
                    "<say-as interpret-as=\"{how}\"> is not supported (characters, spell-out, \
                     cardinal, ordinal, digits, date, telephone)"
                ));
            }
            Content::SayAs(how)
        }
        "phoneme" => {
            let alphabet = attr(e, "alphabet")?.unwrap_or_else(|| "ipa".into());
            let ipa = match alphabet.to_ascii_lowercase().as_str() {
                "ipa" => true,
                "x-arpabet" | "arpabet" | "x-cmu" => false,
                other => {
                    return Err(format!(
                        "<phoneme alphabet=\"{other}\"> is not supported (ipa, x-arpabet)"
                    ));
                }
            };
            let ph = attr(e, "ph")?.ok_or("<phoneme> needs ph=\"...\"")?;
            if ph.trim().is_empty() {
                return Err("<phoneme ph=\"\"> is empty".into());
            }
            Content::Phoneme {
                ipa,
                ph,
                said: Default::default(),
            }
        }
        "sub" => Content::Sub(attr(e, "alias")?.ok_or("<sub> needs alias=\"...\"")?),
        "prosody" => {
            let r = match attr(e, "rate")? {
                Some(v) => parse_rate(&v)?,
                None => 1.0,
            };
            return Ok(Open {
                name,
                rate: (rate * r).clamp(0.25, 4.0),
                content: Content::Normal,
            });
        }
        other => {
            return Err(format!(
                "<{other}> is not supported (speak, p, s, break, say-as, phoneme, sub, prosody)"
            ));
        }
    };
    Ok(Open {
        name,
        rate,
        content,
    })
}

/// `rate`: x-slow .. x-fast, a percentage ("150%", "+20%") or a factor ("1.5").
fn parse_rate(v: &str) -> Result<f32, String> {
    let v = v.trim();
    let named = match v {
        "x-slow" => Some(0.5),
        "slow" => Some(0.75),
        "medium" | "default" => Some(1.0),
        "fast" => Some(1.25),
        "x-fast" => Some(1.6),
        _ => None,
    };
    if let Some(r) = named {
        return Ok(r);
    }
    let bad = || format!("rate=\"{v}\" is not x-slow..x-fast, a percentage or a factor");
    let r = if let Some(p) = v.strip_suffix('%') {
        let p: f32 = p.trim().parse().map_err(|_| bad())?;
        if v.starts_with('+') || v.starts_with('-') {
            1.0 + p / 100.0
        } else {
            p / 100.0
        }
    } else {
        v.parse().map_err(|_| bad())?
    };
    if !(r.is_finite() && r > 0.0) {
        return Err(bad());
    }
    Ok(r)
}

/// `<break time="500ms"|"2s" strength="...">` in milliseconds.
fn break_ms(e: &BytesStart<'_>) -> Result<u32, String> {
    if let Some(t) = attr(e, "time")? {
        let t = t.trim();
        let ms = if let Some(v) = t.strip_suffix("ms") {
            v.trim().parse::<f64>().ok()
        } else if let Some(v) = t.strip_suffix('s') {
            v.trim().parse::<f64>().ok().map(|s| s * 1000.0)
        } else {
            None
        };
        let ms = ms
            .filter(|m| m.is_finite() && *m >= 0.0)
            .ok_or_else(|| format!("<break time=\"{t}\">: give e.g. 500ms or 1.5s"))?;
        if ms > f64::from(MAX_BREAK_MS) {
            return Err(format!(
                "<break time=\"{t}\"> is longer than {MAX_BREAK_MS} ms"
            ));
        }
        return Ok(ms as u32);
    }
    Ok(match attr(e, "strength")?.as_deref() {
        Some("none") => 0,
        Some("x-weak") => 100,
        Some("weak") => 200,
        None | Some("medium") => 400,
        Some("strong") => 700,
        Some("x-strong") => 1000,
        Some(s) => return Err(format!("<break strength=\"{s}\"> is not none..x-strong")),
    })
}

/// Adds `text` under the innermost element that changes how text is read.
fn push_text(out: &mut Vec<Span>, stack: &[Open], text: &str) {
    let rate = stack.last().map_or(1.0, |o| o.rate);
    let owner = stack
        .iter()
        .rev()
        .find(|o| !matches!(o.content, Content::Normal));
    let kind = match owner.map(|o| &o.content) {
        None | Some(Content::Normal) => SpanKind::Text(text.to_string()),
        // The alias was said when the element opened; its content is not read.
        Some(Content::Sub(_)) => return,
        Some(Content::Phoneme { ipa, ph, said }) => {
            if said.replace(true) {
                return;
            }
            if *ipa {
                SpanKind::Ipa {
                    ipa: ph.clone(),
                    text: text.trim().to_string(),
                }
            } else {
                SpanKind::Arpabet {
                    phones: ph.clone(),
                    text: text.trim().to_string(),
                }
            }
        }
        Some(Content::SayAs(how)) => SpanKind::Words(say_as(how, text)),
    };
    out.push(Span { kind, rate });
}

/// Letter and digit names, for spelling.
pub fn spell(text: &str) -> String {
    const LETTERS: [&str; 26] = [
        "ay",
        "bee",
        "see",
        "dee",
        "ee",
        "eff",
        "gee",
        "aitch",
        "eye",
        "jay",
        "kay",
        "el",
        "em",
        "en",
        "oh",
        "pee",
        "cue",
        "are",
        "ess",
        "tee",
        "you",
        "vee",
        "double you",
        "ex",
        "why",
        "zee",
    ];
    let mut words = Vec::new();
    for c in text.chars() {
        let lc = c.to_ascii_lowercase();
        if lc.is_ascii_lowercase() {
            words.push(LETTERS[(lc as u8 - b'a') as usize].to_string());
        } else if let Some(d) = c.to_digit(10) {
            words.push(cardinal(u64::from(d)));
        } else if c.is_alphabetic() {
            words.push(c.to_string());
        }
    }
    words.join(" ")
}

fn say_as(how: &str, text: &str) -> String {
    let t = text.trim();
    let int = || t.replace([',', '_', ' '], "").parse::<u64>().ok();
    match how {
        "characters" | "spell-out" => spell(t),
        "digits" => spell(&t.chars().filter(char::is_ascii_digit).collect::<String>()),
        "cardinal" | "number" => int().map(cardinal).unwrap_or_else(|| super::normalize(t)),
        "ordinal" => int().map(ordinal).unwrap_or_else(|| super::normalize(t)),
        // Each group of digits read digit by digit, groups separated by a short pause.
        "telephone" => t
            .split(|c: char| !c.is_ascii_digit() && c != '+')
            .filter(|g| !g.is_empty())
            .map(|g| {
                let plus = if g.starts_with('+') { "plus " } else { "" };
                format!("{plus}{}", spell(g.trim_start_matches('+')))
            })
            .collect::<Vec<_>>()
            .join(", "),
        // Dates in the forms the normaliser knows (2024-03-05, 3/5/2024, March 5, 2024).
        _ => super::normalize(t),
    }
}

/// Joins neighbouring text spans of the same rate (XML splits text at entities).
fn merge_text(spans: Vec<Span>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        if let (Some(last), SpanKind::Text(t)) = (out.last_mut(), &s.kind)
            && let SpanKind::Text(prev) = &mut last.kind
            && last.rate == s.rate
        {
            prev.push_str(t);
            continue;
        }
        out.push(s);
    }
    out
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(doc: &str) -> Vec<SpanKind> {
        parse(doc).unwrap().into_iter().map(|s| s.kind).collect()
    }

    #[test]
    fn plain_speak_is_text() {
        assert_eq!(
            kinds("<speak>Hello &amp; welcome.</speak>"),
            [SpanKind::Text("Hello & welcome.".into())]
        );
        assert!(looks_like_ssml(
            "  <?xml version=\"1.0\"?>\n<speak>x</speak>"
        ));
        assert!(!looks_like_ssml("speak <b>"));
    }

    #[test]
    fn every_supported_element() {
        let doc = r#"<speak>Call <say-as interpret-as="telephone">555-0123</say-as>
            <break time="300ms"/>now.<break strength="strong"/>
            <say-as interpret-as="characters">NASA</say-as>
            <say-as interpret-as="ordinal">3</say-as>
            <say-as interpret-as="cardinal">1,024</say-as>
            <phoneme alphabet="ipa" ph="zˈɔːɹblæks">Zorblax</phoneme>
            <phoneme alphabet="x-arpabet" ph="HH AA1 R K">hark</phoneme>
            <sub alias="World Wide Web Consortium">W3C</sub>
            <prosody rate="150%"><s>Fast.</s></prosody></speak>"#;
        let spans = parse(doc).unwrap();
        let k: Vec<&SpanKind> = spans.iter().map(|s| &s.kind).collect();
        assert!(k.contains(&&SpanKind::Words(
            "five five five, zero one two three".into()
        )));
        assert!(k.contains(&&SpanKind::Break(300)));
        assert!(k.contains(&&SpanKind::Break(700)));
        assert!(k.contains(&&SpanKind::Words("en ay ess ay".into())));
        assert!(k.contains(&&SpanKind::Words("third".into())));
        assert!(
            k.contains(&&SpanKind::Words("one thousand twenty-four".into()))
                || k.contains(&&SpanKind::Words("one thousand and twenty-four".into()))
        );
        assert!(k.contains(&&SpanKind::Ipa {
            ipa: "zˈɔːɹblæks".into(),
            text: "Zorblax".into()
        }));
        assert!(k.contains(&&SpanKind::Arpabet {
            phones: "HH AA1 R K".into(),
            text: "hark".into()
        }));
        let text: String = k
            .iter()
            .filter_map(|k| match k {
                SpanKind::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            text.contains("World Wide Web Consortium") && !text.contains("W3C"),
            "{text}"
        );
        let fast = spans
            .iter()
            .find(|s| s.kind == SpanKind::Text("Fast.".into()))
            .unwrap();
        assert!((fast.rate - 1.5).abs() < 1e-6);
        assert_eq!(spans.last().unwrap().kind, SpanKind::SentenceEnd);
    }

    #[test]
    fn errors_name_the_position() {
        let e = parse("<speak>\n  hello <foo>x</foo></speak>").unwrap_err();
        assert_eq!((e.line, e.column), (2, 9), "{e}");
        assert!(e.message.contains("<foo>"), "{e}");
        let e = parse("<speak>hello <break time=\"soon\"/></speak>").unwrap_err();
        assert!(e.message.contains("soon"), "{e}");
        let e = parse("<speak>hello").unwrap_err();
        assert!(e.message.contains("never closed"), "{e}");
        let e = parse("<speak><s>x</p></speak>").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse("<voice>x</voice>").unwrap_err();
        assert!(e.message.contains("root"), "{e}");
        let e = parse("<speak>a &nbsp; b</speak>").unwrap_err();
        assert!(e.message.contains("nbsp"), "{e}");
        let e = parse("<speak><break time=\"99s\"/></speak>").unwrap_err();
        assert!(e.message.contains("longer"), "{e}");
        assert!(parse("").is_err());
        assert!(parse("<speak><prosody rate=\"-5\">x</prosody></speak>").is_err());
    }

    #[test]
    fn rates_nest_and_clamp() {
        let spans = parse(
            "<speak><prosody rate=\"x-fast\"><prosody rate=\"400%\">a</prosody></prosody></speak>",
        )
        .unwrap();
        assert_eq!(spans[0].rate, 4.0);
        let spans = parse("<speak><prosody rate=\"+20%\">a</prosody></speak>").unwrap();
        assert!((spans[0].rate - 1.2).abs() < 1e-6);
    }
}

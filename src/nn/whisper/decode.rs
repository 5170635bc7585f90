//! One decode of one audio window: prompt, logit filters, greedy / sampling / beam search, and
//! the temperature fallback around it. Follows openai/whisper `decoding.py` (`DecodingTask`,
//! `SuppressBlank`, `SuppressTokens`, `ApplyTimestampRules`, `GreedyDecoder`,
//! `BeamSearchDecoder`, `MaximumLikelihoodRanker`) and `transcribe.py` (`decode_with_fallback`,
//! with faster-whisper's choice of the best attempt when every temperature fails). A
//! word-scoped adapter decodes with the base decoder beside the adapted one ([`Guide`],
//! [`choose_row`]).

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::model::{CrossKv, Decoder, DecoderState, Whisper, log_softmax, rows};
use super::text::compression_ratio;
use super::tokenizer::WhisperTokenizer;
use crate::nn::NnError;

/// The base model's decoder beside an adapted one, for word-scoped decoding
/// ([`DecodeScope::Words`](super::adapter::DecodeScope)): the adapted decoder decides the
/// tokens of its taught words (see [`choose_row`]); every other token is the base's.
#[derive(Debug)]
pub(crate) struct Guide {
    pub decoder: Decoder,
    pub words: TaughtWords,
    /// The adapter changed the cross-attention key or value projections, so the base decoder
    /// needs its own keys and values of the audio (otherwise it reads the adapted decoder's).
    pub own_cross: bool,
}

/// The words an adapter was taught, as word-scoped decoding matches them: a spelling with a
/// capital ("Bess", as the examples write it) is matched with its case, so that the common word
/// "be" is not taken for the start of "Bess"; a lower-case one (a normalised word, all that is
/// known of a word the examples never write) in any case.
#[derive(Debug, Clone)]
pub(crate) struct TaughtWords {
    spellings: Vec<String>,
}

impl TaughtWords {
    /// `spellings` as the examples write the words; with none, the normalised `words`.
    pub fn new(spellings: &[String], words: &[String]) -> Self {
        let spellings = if spellings.is_empty() {
            words.iter().map(|w| w.to_lowercase()).collect()
        } else {
            spellings.to_vec()
        };
        Self { spellings }
    }

    pub fn is_empty(&self) -> bool {
        self.spellings.is_empty()
    }

    /// The words, for messages.
    pub fn list(&self) -> &[String] {
        &self.spellings
    }

    /// Whether `word` (leading punctuation aside) relates to a taught spelling by `test`,
    /// compared in the spelling's case rule.
    fn any(&self, word: &str, test: impl Fn(&str, &str) -> bool) -> bool {
        let word = word.trim_start_matches(|c: char| !c.is_alphanumeric());
        let lower = word.to_lowercase();
        !word.is_empty()
            && self.spellings.iter().any(|w| {
                if w.chars().any(char::is_uppercase) {
                    test(w, word)
                } else {
                    test(w, &lower)
                }
            })
    }

    /// `word` is a non-empty prefix of a taught word.
    fn starts(&self, word: &str) -> bool {
        self.any(word, |w, x| w.starts_with(x))
    }

    /// `word` is a taught word.
    fn is_word(&self, word: &str) -> bool {
        self.any(word, |w, x| w == x)
    }
}

/// The decoder(s) one decode runs, with the audio each reads.
pub(crate) struct Decoders<'a> {
    pub net: &'a Whisper,
    pub cross: &'a CrossKv,
    /// The base decoder and its cross-attention keys/values, when decoding is word-scoped.
    pub guide: Option<(&'a Guide, &'a CrossKv)>,
}

/// Self-attention caches of the decoder(s), kept in step.
struct States {
    main: DecoderState,
    guide: Option<DecoderState>,
}

impl States {
    fn new(d: &Decoders<'_>) -> Self {
        Self {
            main: DecoderState::new(d.net.decoder.n_layers()),
            guide: d
                .guide
                .map(|(g, _)| DecoderState::new(g.decoder.n_layers())),
        }
    }

    fn select(&mut self, rows: &[u32]) -> Result<(), NnError> {
        self.main.select(rows)?;
        if let Some(g) = &mut self.guide {
            g.select(rows)?;
        }
        Ok(())
    }
}

/// One sequence's next-token logits: the model's, and the base decoder's when guided.
pub(crate) type RowPair = (Vec<f32>, Option<Vec<f32>>);

/// Everything a decode of one window needs besides the audio.
#[derive(Debug, Clone)]
pub(crate) struct DecodeSetup {
    /// `[<|startofprev|> prompt..] <|startoftranscript|> [lang task] [<|notimestamps|>]`.
    pub initial_tokens: Vec<u32>,
    /// Index of `<|startoftranscript|>` in `initial_tokens` (no-speech probability position).
    pub sot_index: usize,
    pub without_timestamps: bool,
    /// Never generated.
    pub suppress: Vec<u32>,
    /// Not generated first (`suppress_blank`); empty when the option is off.
    pub begin_suppress: Vec<u32>,
    /// Largest timestamp index allowed as the first token (None: no limit).
    pub max_initial_timestamp_index: Option<u32>,
    /// Largest timestamp index at all (the window's content length), None: no limit.
    pub max_timestamp_index: Option<u32>,
    /// Maximum number of sampled tokens (n_text_ctx / 2).
    pub sample_len: usize,
    /// Conditioned on previous text: an empty decode that hears speech ends the fallback early,
    /// and the caller decodes again without that text.
    pub has_previous_text: bool,
    pub beam_size: usize,
    /// Number of samples drawn at temperature > 0 (the best is kept).
    pub best_of: usize,
}

/// Result of one decode (one temperature).
#[derive(Debug, Clone)]
pub(crate) struct DecodingResult {
    /// Sampled tokens without `<|endoftext|>` (text and timestamp tokens).
    pub tokens: Vec<u32>,
    pub text: String,
    pub avg_logprob: f32,
    pub no_speech_prob: f32,
    pub temperature: f32,
    pub compression_ratio: f32,
    /// Stopped by the token budget, not by `<|endoftext|>`: a repetition loop.
    pub truncated: bool,
}

/// Fallback thresholds (from `DecodeOptions`).
#[derive(Debug, Clone)]
pub(crate) struct Fallback {
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f32>,
    pub logprob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
}

/// Small deterministic PRNG (xorshift64*) for temperature sampling.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Applies `SuppressBlank`, `SuppressTokens` and `ApplyTimestampRules` to one row of logits.
/// `sampled` are the tokens generated so far for this row.
pub(crate) fn apply_filters(
    logits: &mut [f32],
    sampled: &[u32],
    setup: &DecodeSetup,
    tok: &WhisperTokenizer,
) {
    let ninf = f32::NEG_INFINITY;
    let n = logits.len();
    let kill = |t: u32, l: &mut [f32]| {
        if let Some(x) = l.get_mut(t as usize) {
            *x = ninf;
        }
    };
    if sampled.is_empty() {
        for &t in &setup.begin_suppress {
            kill(t, logits);
        }
    }
    for &t in &setup.suppress {
        kill(t, logits);
    }
    if setup.without_timestamps {
        return;
    }
    let ts_begin = tok.timestamp_begin as usize;
    if ts_begin >= n {
        return;
    }
    kill(tok.no_timestamps, logits);

    // Timestamps come in pairs, except directly before <|endoftext|>.
    let is_ts = |t: u32| t as usize >= ts_begin;
    let last_was_ts = sampled.last().is_some_and(|&t| is_ts(t));
    let penultimate_was_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
    if last_was_ts {
        if penultimate_was_ts {
            // Has to be a text token (or <|endoftext|>).
            logits[ts_begin..].fill(ninf);
        } else {
            // Cannot be a text token.
            logits[..tok.eot as usize].fill(ninf);
        }
    }
    // Timestamps never decrease, and a segment has a non-zero length.
    if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
        let limit = if last_was_ts && !penultimate_was_ts {
            last_ts as usize
        } else {
            last_ts as usize + 1
        };
        logits[ts_begin..limit.min(n)].fill(ninf);
    }
    if sampled.is_empty() {
        // The first token is a timestamp, at most max_initial_timestamp.
        logits[..ts_begin].fill(ninf);
        if let Some(max) = setup.max_initial_timestamp_index {
            let last_allowed = ts_begin + max as usize;
            if last_allowed + 1 < n {
                logits[last_allowed + 1..].fill(ninf);
            }
        }
    }
    if let Some(max) = setup.max_timestamp_index {
        let last_allowed = ts_begin + max as usize;
        if last_allowed + 1 < n {
            logits[last_allowed + 1..].fill(ninf);
        }
    }
    // If the timestamp tokens together are more likely than any text token, force a timestamp.
    let lp = log_softmax(logits);
    let ts_lse = {
        let m = lp[ts_begin..]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if m == f32::NEG_INFINITY {
            m
        } else {
            m + lp[ts_begin..]
                .iter()
                .map(|&x| ((x - m) as f64).exp())
                .sum::<f64>()
                .ln() as f32
        }
    };
    let max_text = lp[..ts_begin]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    if ts_lse > max_text {
        logits[..ts_begin].fill(ninf);
    }
}

pub(crate) fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest entries (value, index), largest first.
fn top_k(row: &[f32], k: usize) -> Vec<(f32, u32)> {
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (i, &x) in row.iter().enumerate() {
        if x == f32::NEG_INFINITY || (top.len() == k && x <= top[k - 1].0) {
            continue;
        }
        let pos = top.partition_point(|&(v, _)| v >= x);
        top.insert(pos, (x, i as u32));
        top.truncate(k);
    }
    top
}

fn sample(row: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = row
        .iter()
        .map(|&x| (((x - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    for (i, &w) in weights.iter().enumerate() {
        if u < w {
            return i as u32;
        }
        u -= w;
    }
    argmax(row)
}

/// Per-row logits of the last position, and optionally row 0's (model) logits at another
/// position.
type StepLogits = (Vec<RowPair>, Option<Vec<f32>>);

/// Decoder pass over `tokens` (one row per sequence, same length) returning the logits of the
/// last position; with `extra_position`, also the logits of that position in row 0.
fn step(
    d: &Decoders<'_>,
    states: &mut States,
    tokens: &[Vec<u32>],
    extra_position: Option<usize>,
) -> Result<StepLogits, NnError> {
    let b = tokens.len();
    let t = tokens[0].len();
    let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
    let input = Tensor::from_vec(flat, (b, t), &Device::Cpu)?;
    let last_rows = |decoder: &Decoder, hidden: &Tensor| -> Result<Vec<Vec<f32>>, NnError> {
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
        Ok(rows(&decoder.logits(&last)?)?)
    };
    let out = d
        .net
        .decoder
        .forward(&input, d.cross, &mut states.main, &[])?;
    let main = last_rows(&d.net.decoder, &out.hidden)?;
    let extra = match extra_position {
        Some(p) if p < t => {
            let h = out.hidden.narrow(0, 0, 1)?.narrow(1, p, 1)?.squeeze(1)?;
            rows(&d.net.decoder.logits(&h)?)?.into_iter().next()
        }
        _ => None,
    };
    let guided = match (d.guide, &mut states.guide) {
        (Some((g, cross)), Some(state)) => {
            let out = g.decoder.forward(&input, cross, state, &[])?;
            Some(last_rows(&g.decoder, &out.hidden)?)
        }
        _ => None,
    };
    let pairs = match guided {
        Some(base) => main.into_iter().zip(base.into_iter().map(Some)).collect(),
        None => main.into_iter().map(|r| (r, None)).collect(),
    };
    Ok((pairs, extra))
}

/// How far down the adapter's ranking a token that spells a taught word is looked for.
const WORD_RANK: usize = 3;

/// The filtered logits the next token of `seq` is chosen from: the model's alone, or for a
/// guided decode the base decoder's unless the adapter has a say. The adapter decides the
/// token when the two differ and
/// 1. its choice spells a taught word (starts it or goes on with it);
/// 2. the text so far ends in a taught word: the adapter decides where its word ends ("Tell
///    Bess that" came out "Tell Bessnacht" when the base went on after "Bess");
/// 3. it ranks a token that spells a taught word (within its top [`WORD_RANK`]) above the
///    base's choice: the adapter wanted a comma and then "Bess", the base wanted "best"
///    there. The row then has the adapter's higher-ranked tokens removed, so that the word
///    is what is chosen.
///
/// Returns the chosen row and, when guided, the other one (see [`token_logprob`]).
pub(crate) fn choose_row(
    (mut row, base): RowPair,
    seq: &[u32],
    setup: &DecodeSetup,
    tok: &WhisperTokenizer,
    guide: Option<&Guide>,
) -> RowPair {
    apply_filters(&mut row, seq, setup, tok);
    let (Some(mut base), Some(guide)) = (base, guide) else {
        return (row, None);
    };
    apply_filters(&mut base, seq, setup, tok);
    let wanted = argmax(&row);
    let said = argmax(&base);
    if wanted == said {
        return (base, Some(row));
    }
    let words = &guide.words;
    let tail = tail_word(tok, seq);
    if spells_after(tok, &tail, wanted, words) || words.is_word(&tail) {
        return (row, Some(base));
    }
    let ranked = top_k(&row, WORD_RANK);
    let word = ranked
        .iter()
        .take_while(|&&(v, _)| v > row[said as usize])
        .find(|&&(_, t)| spells_after(tok, &tail, t, words));
    match word {
        Some(&(v, _)) => {
            for &(above, t) in &ranked {
                if above > v {
                    row[t as usize] = f32::NEG_INFINITY;
                }
            }
            (row, Some(base))
        }
        None => (base, Some(row)),
    }
}

/// Log probability of `token` as a decode scores it: under the chosen row, or for a guided
/// decode under whichever of the two decoders is surer of it. Each decoder is unsure of the
/// other's tokens: scored by the chosen rows alone, a mixed transcript of an accent both find
/// odd fell under the no-speech gate's log-probability limit, and was dropped, where the
/// adapter's own transcript of the same clip was kept.
fn token_logprob((row, other): &RowPair, token: u32) -> f32 {
    let lp = log_softmax(row)[token as usize];
    match other {
        Some(o) => lp.max(log_softmax(o)[token as usize]),
        None => lp,
    }
}

/// The word the text of `seq` ends in (empty after a space): decoded once per choice, since
/// every rule of [`choose_row`] reads it.
fn tail_word(tok: &WhisperTokenizer, seq: &[u32]) -> String {
    let text = tok.decode(seq).unwrap_or_default();
    text.rsplit(char::is_whitespace)
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether appending `next` to `seq` starts or continues a taught word.
#[cfg(test)]
pub(crate) fn spells_word(
    tok: &WhisperTokenizer,
    seq: &[u32],
    next: u32,
    words: &TaughtWords,
) -> bool {
    spells_after(tok, &tail_word(tok, seq), next, words)
}

/// Whether `next`, after text ending in the word `tail`, starts or continues a taught word:
/// the word that `next` ends is a prefix of one.
fn spells_after(tok: &WhisperTokenizer, tail: &str, next: u32, words: &TaughtWords) -> bool {
    if next >= tok.eot {
        return false;
    }
    let Ok(piece) = tok.decode(&[next]) else {
        return false;
    };
    if piece.starts_with(char::is_whitespace) {
        words.starts(piece.trim_start())
    } else {
        words.starts(&format!("{tail}{piece}"))
    }
}

/// One decode at one temperature (greedy, sampling, or beam search at temperature 0 with
/// `beam_size > 1`).
pub(crate) fn decode_once(
    d: &Decoders<'_>,
    tok: &WhisperTokenizer,
    setup: &DecodeSetup,
    temperature: f32,
    rng: &mut Rng,
) -> Result<DecodingResult, NnError> {
    let n_ctx = d.net.decoder.n_ctx();
    if setup.initial_tokens.len() >= n_ctx {
        return Err(NnError::InvalidInput(format!(
            "prompt of {} tokens does not fit the decoder context ({n_ctx})",
            setup.initial_tokens.len()
        )));
    }
    let mut states = States::new(d);
    // The prompt pass runs once; its cache is duplicated for the beams / samples.
    let (mut first, at_sot) = step(
        d,
        &mut states,
        std::slice::from_ref(&setup.initial_tokens),
        Some(setup.sot_index),
    )?;
    let no_speech_prob = match (tok.no_speech, at_sot) {
        (Some(ns), Some(row)) => log_softmax(&row)[ns as usize].exp(),
        _ => 0.0,
    };
    let first_row = first.remove(0);

    let beam = temperature == 0.0 && setup.beam_size > 1;
    let n_group = if beam {
        setup.beam_size
    } else if temperature > 0.0 {
        setup.best_of.max(1)
    } else {
        1
    };
    let max_steps = setup.sample_len.min(n_ctx - setup.initial_tokens.len());

    let (tokens, sum_logprob) = if beam {
        beam_search(d, tok, setup, &mut states, first_row, n_group, max_steps)?
    } else {
        sample_group(
            d,
            tok,
            setup,
            &mut states,
            first_row,
            n_group,
            max_steps,
            temperature,
            rng,
        )?
    };
    let text = tok.decode(&tokens)?;
    let text = text.trim().to_string();
    let truncated = tokens.len() >= max_steps;
    Ok(DecodingResult {
        truncated,
        avg_logprob: sum_logprob / (tokens.len() + 1) as f32,
        compression_ratio: compression_ratio(&text),
        tokens,
        text,
        no_speech_prob,
        temperature,
    })
}

/// Greedy (temperature 0) or sampled decoding of `n_group` sequences; returns the best by
/// length-normalised log probability.
#[allow(clippy::too_many_arguments)]
fn sample_group(
    d: &Decoders<'_>,
    tok: &WhisperTokenizer,
    setup: &DecodeSetup,
    states: &mut States,
    first_row: RowPair,
    n_group: usize,
    max_steps: usize,
    temperature: f32,
    rng: &mut Rng,
) -> Result<(Vec<u32>, f32), NnError> {
    let eot = tok.eot;
    if n_group > 1 {
        states.select(&vec![0u32; n_group])?;
    }
    let guide = d.guide.map(|(g, _)| g);
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); n_group];
    let mut sums = vec![0f32; n_group];
    let mut done = vec![false; n_group];
    let mut logits = vec![first_row; n_group];
    for _ in 0..max_steps {
        for k in 0..n_group {
            if done[k] {
                continue;
            }
            let rows = choose_row(std::mem::take(&mut logits[k]), &seqs[k], setup, tok, guide);
            let next = if temperature == 0.0 {
                argmax(&rows.0)
            } else {
                sample(&rows.0, temperature, rng)
            };
            // The log probability of <|endoftext|> counts too (avg_logprob divides by
            // len + 1).
            sums[k] += token_logprob(&rows, next);
            if next == eot {
                done[k] = true;
            } else {
                seqs[k].push(next);
            }
        }
        if done.iter().all(|&d| d) || states.main.len >= d.net.decoder.n_ctx() {
            break;
        }
        let last: Vec<Vec<u32>> = (0..n_group)
            .map(|k| vec![seqs[k].last().copied().filter(|_| !done[k]).unwrap_or(eot)])
            .collect();
        logits = step(d, states, &last, None)?.0;
    }
    let best = (0..n_group)
        .max_by(|&a, &b| {
            let sa = sums[a] / seqs[a].len().max(1) as f32;
            let sb = sums[b] / seqs[b].len().max(1) as f32;
            sa.total_cmp(&sb)
        })
        .unwrap_or(0);
    Ok((std::mem::take(&mut seqs[best]), sums[best]))
}

/// openai/whisper's `BeamSearchDecoder` (patience 1) with the `MaximumLikelihoodRanker`
/// (score = sum log p / length).
#[allow(clippy::too_many_arguments)]
fn beam_search(
    d: &Decoders<'_>,
    tok: &WhisperTokenizer,
    setup: &DecodeSetup,
    states: &mut States,
    first_row: RowPair,
    beam_size: usize,
    max_steps: usize,
) -> Result<(Vec<u32>, f32), NnError> {
    let eot = tok.eot;
    // Start with a single live beam: the beams would all be identical.
    let mut beams: Vec<(Vec<u32>, f32)> = vec![(Vec::new(), 0.0)];
    let mut logits = vec![first_row];
    let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
    let guide = d.guide.map(|(g, _)| g);
    for _ in 0..max_steps {
        let mut candidates: HashMap<Vec<u32>, (f32, usize)> = HashMap::new();
        for (j, (seq, sum)) in beams.iter().enumerate() {
            // Beams are ranked by the chosen row alone.
            let (row, _) = choose_row(std::mem::take(&mut logits[j]), seq, setup, tok, guide);
            let lp = log_softmax(&row);
            for (l, t) in top_k(&lp, beam_size + 1) {
                let mut s = seq.clone();
                s.push(t);
                let score = sum + l;
                let e = candidates.entry(s).or_insert((score, j));
                if score > e.0 {
                    *e = (score, j);
                }
            }
        }
        let mut ranked: Vec<(Vec<u32>, f32, usize)> = candidates
            .into_iter()
            .map(|(s, (v, j))| (s, v, j))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut next: Vec<(Vec<u32>, f32)> = Vec::new();
        let mut sources: Vec<u32> = Vec::new();
        let mut newly_finished: Vec<(Vec<u32>, f32)> = Vec::new();
        for (s, v, j) in ranked {
            if s.last() == Some(&eot) {
                newly_finished.push((s, v));
            } else {
                next.push((s, v));
                sources.push(j as u32);
                if next.len() == beam_size {
                    break;
                }
            }
        }
        for f in newly_finished {
            if finished.len() >= beam_size {
                break;
            }
            finished.push(f);
        }
        if finished.len() >= beam_size
            || next.is_empty()
            || states.main.len >= d.net.decoder.n_ctx()
        {
            beams = next;
            break;
        }
        states.select(&sources)?;
        let last: Vec<Vec<u32>> = next
            .iter()
            .map(|(s, _)| vec![*s.last().unwrap_or(&eot)])
            .collect();
        logits = step(d, states, &last, None)?.0;
        beams = next;
    }
    // Not enough finished: add the live beams by score.
    if finished.len() < beam_size {
        for (s, v) in beams {
            if finished.len() >= beam_size {
                break;
            }
            finished.push((s, v));
        }
    }
    let best = finished
        .into_iter()
        .map(|(mut s, v)| {
            if s.last() == Some(&eot) {
                s.pop();
            }
            let score = v / s.len().max(1) as f32;
            (s, v, score)
        })
        .max_by(|a, b| a.2.total_cmp(&b.2));
    Ok(best.map(|(s, v, _)| (s, v)).unwrap_or_default())
}

/// Whether `text` is a repetition loop: it ends in one word or one pair of words said
/// [`LOOP_RUN`] times in a row. The compression-ratio test misses short loops: "And I'm, I'm,
/// I'm, I'm, I'm, I'm, I'm, I'm." (Whisper on a dog bark) compresses only 2.26:1.
pub(crate) fn is_loop(text: &str) -> bool {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .flat_map(char::to_lowercase)
                .collect()
        })
        .filter(|w: &String| !w.is_empty())
        .collect();
    // A stuck decoder repeats until the token budget or end-of-text stops it, so the run is
    // counted back from the end. A speaker who says a word five times goes on ("... some more
    // words words words words words and that should be all"): a 27 s window of that was
    // dropped whole when any run counted.
    (1..=2).any(|n| {
        let end = words.len();
        let last = |k: usize| &words[end - (k + 1) * n..end - k * n];
        let mut run = 1;
        while end >= (run + 1) * n && last(run) == last(0) {
            run += 1;
        }
        run >= LOOP_RUN
    })
}

/// Repeats of the same word (or pair) that make a loop; speech rarely says a word five times
/// running, decoders stuck on noise do it for as long as they are let.
const LOOP_RUN: usize = 5;

/// A decode with no words although its no-speech probability (at most `no_speech_threshold`)
/// says the window holds speech.
pub(crate) fn empty_but_speech(r: &DecodingResult, no_speech_threshold: Option<f32>) -> bool {
    no_speech_threshold.is_none_or(|th| r.no_speech_prob <= th) && !super::has_words(&r.text)
}

/// `decode_with_fallback`: decodes at increasing temperatures until the result is neither too
/// repetitive (compression ratio) nor too unlikely (average log probability), unless the
/// window is judged silent. When every temperature fails, keeps the attempt with the best
/// average log probability among those under the compression threshold (faster-whisper).
pub(crate) fn decode_with_fallback(
    d: &Decoders<'_>,
    tok: &WhisperTokenizer,
    setup: &DecodeSetup,
    fallback: &Fallback,
    rng: &mut Rng,
    stop: &dyn Fn() -> bool,
) -> Result<DecodingResult, NnError> {
    let temperatures = if fallback.temperatures.is_empty() {
        vec![0.0]
    } else {
        fallback.temperatures.clone()
    };
    let mut attempts: Vec<DecodingResult> = Vec::new();
    for &t in &temperatures {
        // A window can take six decodes; a cancelled caller should not wait for all of them.
        if stop() {
            return Err(NnError::Cancelled);
        }
        let r = decode_once(d, tok, setup, t, rng)?;
        // A short loop ("I'm, I'm, I'm, ...") cut by the token budget compresses too little to
        // trip the ratio test; not finishing within the budget is the better sign.
        let too_repetitive = r.truncated
            || is_loop(&r.text)
            || fallback
                .compression_ratio_threshold
                .is_some_and(|th| r.compression_ratio > th);
        let too_unlikely = fallback
            .logprob_threshold
            .is_some_and(|th| r.avg_logprob < th);
        let silent = fallback
            .no_speech_threshold
            .is_some_and(|th| r.no_speech_prob > th)
            && too_unlikely;
        tracing::trace!(
            temperature = t,
            avg_logprob = r.avg_logprob,
            compression_ratio = r.compression_ratio,
            no_speech_prob = r.no_speech_prob,
            "Decoded window."
        );
        if silent || !(too_repetitive || too_unlikely) {
            return Ok(r);
        }
        // A prompted decode that ends at once while the model hears speech: the previous text
        // is what stops it, and sampling hotter under the same prompt only picks worse words
        // (the long-form window that came back empty got "an invention ..." at 0.8). The
        // caller decodes it again without the prompt.
        if setup.has_previous_text && empty_but_speech(&r, fallback.no_speech_threshold) {
            return Ok(r);
        }
        attempts.push(r);
    }
    let under: Vec<&DecodingResult> = attempts
        .iter()
        .filter(|r| {
            !r.truncated
                && !is_loop(&r.text)
                && fallback
                    .compression_ratio_threshold
                    .is_none_or(|th| r.compression_ratio <= th)
        })
        .collect();
    let pool: Vec<&DecodingResult> = if under.is_empty() {
        attempts.iter().collect()
    } else {
        under
    };
    pool.into_iter()
        .max_by(|a, b| a.avg_logprob.total_cmp(&b.avg_logprob))
        .cloned()
        .ok_or_else(|| NnError::InvalidInput("no temperature to decode with".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_skips_neg_inf() {
        let row = [0.1, f32::NEG_INFINITY, 3.0, 2.0, -1.0];
        assert_eq!(top_k(&row, 3), vec![(3.0, 2), (2.0, 3), (0.1, 0)]);
        assert_eq!(top_k(&row, 10).len(), 4);
    }

    #[test]
    fn loops_are_told_from_speech() {
        assert!(is_loop("And I'm, I'm, I'm, I'm, I'm, I'm, I'm, I'm."));
        assert!(is_loop("thank you thank you thank you thank you thank you"));
        assert!(!is_loop("1, 2, 3, 4, 5, 6"));
        assert!(!is_loop("no, no, no. Not that one"));
        // Cut by the token budget in the middle of a pair: still a loop.
        assert!(is_loop(
            "thank you thank you thank you thank you thank you thank"
        ));
        // A repeat the speaker made, with speech after it.
        assert!(!is_loop(
            "here are some more words words words words words and that should be all thanks"
        ));
        assert!(!is_loop(
            "And so my fellow Americans ask not what your country can do for you"
        ));
    }

    #[test]
    fn rng_is_uniformish() {
        let mut r = Rng::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| r.next_f64()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}

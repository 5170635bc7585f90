//! Word-level timestamps by dynamic time warping over cross-attention, as openai/whisper
//! `timing.py` (`find_alignment`, `merge_punctuations`, `add_word_timestamps`).
//!
//! The decoder is run once more over `sot.. <|notimestamps|> text.. <|endoftext|>` and the
//! pre-softmax cross-attention scores of the model's alignment heads (listed in
//! `generation_config.json`, taken from the CTranslate2 config) are softmaxed over the window's
//! audio frames, standardised per frame, median-filtered (width 7) and averaged over heads.
//! DTW through the negated matrix maps every token to an audio frame (20 ms); words get the
//! times of their first and last tokens and the mean probability of their tokens.

use candle_core::{Device, Tensor};

use super::model::{CrossKv, DecoderState, Whisper, log_softmax, rows};
use super::tokenizer::WhisperTokenizer;
use crate::nn::NnError;

/// Audio frames (encoder positions) per second.
const TOKENS_PER_SECOND: f32 = 50.0;
const MEDIAN_FILTER_WIDTH: usize = 7;
const PREPEND_PUNCTUATIONS: &str = "\"'\u{201c}\u{bf}([{-";
const APPEND_PUNCTUATIONS: &str =
    "\"'.\u{3002},\u{ff0c}!\u{ff01}?\u{ff1f}:\u{ff1a}\u{201d})]}\u{3001}";

/// One word's alignment (times relative to the window).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WordTiming {
    pub word: String,
    pub tokens: Vec<u32>,
    pub start: f32,
    pub end: f32,
    pub probability: f32,
}

/// Median filter of width `w` along rows, with reflect padding (scipy/torch `reflect`).
fn median_filter(row: &[f32], w: usize) -> Vec<f32> {
    let pad = w / 2;
    let n = row.len();
    if n <= pad {
        return row.to_vec();
    }
    let at = |i: isize| -> f32 {
        let j = if i < 0 {
            -i
        } else if i >= n as isize {
            2 * (n as isize - 1) - i
        } else {
            i
        };
        row[j.clamp(0, n as isize - 1) as usize]
    };
    let mut window = vec![0f32; w];
    (0..n)
        .map(|c| {
            for (k, slot) in window.iter_mut().enumerate() {
                *slot = at(c as isize + k as isize - pad as isize);
            }
            window.sort_by(f32::total_cmp);
            window[pad]
        })
        .collect()
}

/// DTW through a cost matrix (n rows x m columns); returns the path as (row, column) pairs from
/// (0, 0) to (n-1, m-1). Ties prefer the diagonal, then vertical, then horizontal moves, as
/// openai's `dtw_cpu` (which takes the horizontal move on exact ties).
pub(crate) fn dtw(cost: &[f32], n: usize, m: usize) -> Vec<(usize, usize)> {
    let w = m + 1;
    let mut acc = vec![f32::INFINITY; (n + 1) * w];
    let mut trace = vec![u8::MAX; (n + 1) * w];
    acc[0] = 0.0;
    for j in 1..=m {
        for i in 1..=n {
            let c0 = acc[(i - 1) * w + j - 1];
            let c1 = acc[(i - 1) * w + j];
            let c2 = acc[i * w + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            acc[i * w + j] = cost[(i - 1) * m + j - 1] + c;
            trace[i * w + j] = t;
        }
    }
    trace[..=m].fill(2);
    for i in 0..=n {
        trace[i * w] = 1;
    }
    let (mut i, mut j) = (n, m);
    let mut path = Vec::with_capacity(n + m);
    while i > 0 || j > 0 {
        path.push((i.wrapping_sub(1), j.wrapping_sub(1)));
        match trace[i * w + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    // The first entry can be (usize::MAX, ..) only for empty inputs; drop such entries.
    path.retain(|&(a, b)| a < n && b < m);
    path
}

/// Aligns `text_tokens` (no timestamps) of one window to its audio: `sot_sequence` is the
/// decoder prompt without `<|notimestamps|>`, `n_frames` the number of mel frames of real audio
/// in the window.
#[allow(clippy::too_many_arguments)]
pub(crate) fn find_alignment(
    net: &Whisper,
    tok: &WhisperTokenizer,
    cross: &CrossKv,
    sot_sequence: &[u32],
    text_tokens: &[u32],
    n_frames: usize,
    heads: &[(usize, usize)],
    language: &str,
) -> Result<Vec<WordTiming>, NnError> {
    if text_tokens.is_empty() || heads.is_empty() {
        return Ok(Vec::new());
    }
    let mut tokens: Vec<u32> = sot_sequence.to_vec();
    tokens.push(tok.no_timestamps);
    tokens.extend_from_slice(text_tokens);
    tokens.push(tok.eot);
    let t = tokens.len();
    let l = sot_sequence.len();
    if t > net.decoder.n_ctx() {
        return Ok(Vec::new());
    }
    let input = Tensor::from_vec(tokens.clone(), (1, t), &Device::Cpu)?;
    let mut state = DecoderState::new(net.decoder.n_layers());
    let out = net.decoder.forward(&input, cross, &mut state, heads)?;

    // Probability of each text token under the model (text vocabulary only).
    let h = out.hidden.squeeze(0)?.narrow(0, l, text_tokens.len())?;
    let logits = rows(&net.decoder.logits(&h)?)?;
    let probs: Vec<f32> = logits
        .iter()
        .zip(text_tokens)
        .map(|(row, &tk)| log_softmax(&row[..tok.eot as usize])[tk as usize].exp())
        .collect();

    // Attention matrix (rows: tokens l..t-1, columns: audio frames).
    let n_audio = (n_frames / 2).clamp(1, cross.n_audio);
    let n_rows = t - 1 - l;
    let mut matrix = vec![0f32; n_rows * n_audio];
    for scores in &out.cross_scores {
        let s = scores.squeeze(0)?.narrow(1, 0, n_audio)?.contiguous()?;
        let s = candle_nn::ops::softmax_last_dim(&s)?.to_vec2::<f32>()?;
        // Standardise each frame (column) over all tokens, as openai (over the full sequence).
        let mut filtered = vec![0f32; t * n_audio];
        for c in 0..n_audio {
            let mean = s.iter().map(|r| r[c]).sum::<f32>() / t as f32;
            let var = s.iter().map(|r| (r[c] - mean).powi(2)).sum::<f32>() / t as f32;
            let std = var.sqrt().max(1e-10);
            for (r, row) in s.iter().enumerate() {
                filtered[r * n_audio + c] = (row[c] - mean) / std;
            }
        }
        for r in l..t - 1 {
            let smooth = median_filter(
                &filtered[r * n_audio..(r + 1) * n_audio],
                MEDIAN_FILTER_WIDTH,
            );
            for (c, v) in smooth.into_iter().enumerate() {
                matrix[(r - l) * n_audio + c] += v / heads.len() as f32;
            }
        }
    }
    let neg: Vec<f32> = matrix.iter().map(|&v| -v).collect();
    let path = dtw(&neg, n_rows, n_audio);

    // Time of the first frame of each row (jumps in the token index).
    let mut jump_times = vec![0f32; n_rows];
    let mut prev: Option<usize> = None;
    for &(r, c) in &path {
        if prev != Some(r) {
            jump_times[r] = c as f32 / TOKENS_PER_SECOND;
            prev = Some(r);
        }
    }

    let mut with_eot = text_tokens.to_vec();
    with_eot.push(tok.eot);
    let words = tok.split_to_word_tokens(&with_eot, language)?;
    let mut out = Vec::new();
    let mut start_tok = 0usize;
    for (word, wt) in words.into_iter() {
        if wt.first().is_some_and(|&x| x >= tok.eot) {
            break;
        }
        let end_tok = start_tok + wt.len();
        let p = probs[start_tok..end_tok.min(probs.len())]
            .iter()
            .sum::<f32>()
            / wt.len().max(1) as f32;
        out.push(WordTiming {
            word,
            tokens: wt,
            start: jump_times[start_tok.min(n_rows - 1)],
            end: jump_times[end_tok.min(n_rows - 1)],
            probability: p,
        });
        start_tok = end_tok;
    }
    Ok(out)
}

/// Moves leading punctuation onto the next word and trailing punctuation onto the previous one.
pub(crate) fn merge_punctuations(words: &mut [WordTiming]) {
    if words.len() < 2 {
        return;
    }
    let mut i = words.len() as isize - 2;
    let mut j = words.len() - 1;
    while i >= 0 {
        let iu = i as usize;
        let prev = &words[iu];
        if prev.word.starts_with(' ') && PREPEND_PUNCTUATIONS.contains(prev.word.trim()) {
            let (word, tokens) = (
                std::mem::take(&mut words[iu].word),
                std::mem::take(&mut words[iu].tokens),
            );
            let following = &mut words[j];
            following.word = word + &following.word;
            let mut t = tokens;
            t.append(&mut following.tokens);
            following.tokens = t;
        } else {
            j = iu;
        }
        i -= 1;
    }
    let (mut i, mut j) = (0usize, 1usize);
    while j < words.len() {
        let follows = words[j].word.clone();
        if !words[i].word.ends_with(' ')
            && !follows.is_empty()
            && APPEND_PUNCTUATIONS.contains(follows.as_str())
        {
            let tokens = std::mem::take(&mut words[j].tokens);
            words[j].word.clear();
            words[i].word.push_str(&follows);
            words[i].tokens.extend(tokens);
        } else {
            i = j;
        }
        j += 1;
    }
}

/// openai's clean-up of raw word timings: long words at sentence boundaries are truncated to
/// twice the median word duration, punctuation merged. Returns the median duration.
pub(crate) fn tidy(words: &mut [WordTiming]) -> f32 {
    let mut durations: Vec<f32> = words
        .iter()
        .map(|w| w.end - w.start)
        .filter(|&d| d > 0.0)
        .collect();
    durations.sort_by(f32::total_cmp);
    let median = if durations.is_empty() {
        0.0
    } else if durations.len() % 2 == 1 {
        durations[durations.len() / 2]
    } else {
        (durations[durations.len() / 2 - 1] + durations[durations.len() / 2]) / 2.0
    };
    let median = median.min(0.7);
    let max_duration = median * 2.0;
    if !durations.is_empty() {
        const SENTENCE_END: &str = ".\u{3002}!\u{ff01}?\u{ff1f}";
        for i in 1..words.len() {
            if words[i].end - words[i].start > max_duration {
                if SENTENCE_END.contains(words[i].word.as_str()) && !words[i].word.is_empty() {
                    words[i].end = words[i].start + max_duration;
                } else if SENTENCE_END.contains(words[i - 1].word.as_str())
                    && !words[i - 1].word.is_empty()
                {
                    words[i].start = words[i].end - max_duration;
                }
            }
        }
    }
    merge_punctuations(words);
    median
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // 3 tokens x 6 frames; cheap cells along a staircase.
        let n = 3;
        let m = 6;
        let mut cost = vec![1.0f32; n * m];
        for (r, cols) in [(0, 0..2), (1, 2..4), (2, 4..6)] {
            for c in cols {
                cost[r * m + c] = 0.0;
            }
        }
        let path = dtw(&cost, n, m);
        assert_eq!(path.first(), Some(&(0, 0)));
        assert_eq!(path.last(), Some(&(2, 5)));
        let first_col = |row: usize| path.iter().find(|p| p.0 == row).map(|p| p.1);
        assert_eq!(first_col(1), Some(2));
        assert_eq!(first_col(2), Some(4));
    }

    #[test]
    fn median_filter_reflects_at_edges() {
        let x = [5.0, 1.0, 1.0, 1.0, 9.0];
        assert_eq!(median_filter(&x, 3), vec![1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(median_filter(&[1.0], 7), vec![1.0]);
    }

    fn w(word: &str) -> WordTiming {
        WordTiming {
            word: word.into(),
            tokens: vec![1],
            start: 0.0,
            end: 0.1,
            probability: 1.0,
        }
    }

    #[test]
    fn punctuation_is_merged() {
        let mut words = vec![w(" \""), w("Hello"), w(","), w(" world"), w(".")];
        merge_punctuations(&mut words);
        let texts: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(texts, vec!["", " \"Hello,", "", " world.", ""]);
        assert_eq!(words[1].tokens.len(), 3);
    }
}

//! Streaming transcription policy: VAD-gated, re-decoding a growing window (<= 30 s) and
//! committing words with LocalAgreement-2.
//!
//! While speech is active the stage re-decodes the buffered audio every `interim_ms`. A word is
//! *final* once two consecutive decodes agree on it (and on everything before it); the rest of the
//! newest hypothesis is sent as an *interim* result with a stability score. At the end of speech
//! everything left is finalised at once. Once the window is long, committed audio is trimmed from
//! its front at a pause after a committed word (preferably one the decoder punctuated), keeping
//! the committed text as the decoder prompt, so the window slides without duplicating or losing
//! words at its seams. No recogniser work happens outside speech.
//!
//! The recogniser is behind [`Recognizer`], so the policy is tested without a model; the daemon
//! plugs Whisper in.
//!
//! **Why this stage runs its own VAD** instead of reading the VAD stage's decisions: the two
//! stages run on their own threads at different times and with different overflow policies. The
//! VAD stage works on live audio and skips the oldest audio when it falls behind (catch-up);
//! this stage may be seconds behind while it decodes, and drops only when its ring is full. A
//! shared decision stream would need buffering keyed by sample position and would have holes
//! exactly where the VAD stage skipped audio this stage still has. It also uses a longer
//! hangover (`end_silence_ms`, to hand Whisper whole sentences). The copy is cheap: one VAD
//! frame (30 ms by default) costs 5.8 us (`cargo bench --bench pipeline -- vad`, dev profile,
//! this 2-core machine), i.e. about 2 us per 10 ms of audio, 0.02% of one core.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::vad::{VadConfig, VadDetector, VadTransition};
use crate::{
    events::{EventKind, STREAM_RATE, Transcript, Utterance, UtteranceEnd, Word, ends_sentence},
    pipeline::{Emitted, Stage, StageError, Window, WindowSpec},
};

/// A recognised word, times in seconds from the start of the audio given to the recogniser.
#[derive(Debug, Clone, PartialEq)]
pub struct HypWord {
    pub word: String,
    pub start: f32,
    pub end: f32,
    pub p: f32,
}

/// What one decode returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hypothesis {
    pub words: Vec<HypWord>,
    pub language: String,
}

/// Speech recogniser used by the stage (Whisper in the daemon, a fake in tests).
pub trait Recognizer: Send + 'static {
    /// Recognises `audio` (16 kHz mono, at most 30 s), conditioned on `prompt` (committed text).
    fn recognize(&mut self, audio: &[f32], prompt: &str) -> Result<Hypothesis, String>;
}

/// `[transcribe]` streaming settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Re-decode the active speech every this many milliseconds of audio (interim results),
    /// or less often when a decode takes longer (at most 80% of real time goes to decoding).
    pub interim_ms: u32,
    /// Audio kept before the detected speech onset, milliseconds.
    pub preroll_ms: u32,
    /// Longest window handed to the recogniser, seconds (Whisper's limit is 30).
    pub max_window_s: f32,
    /// Trim committed audio from the window once it is longer than this, seconds. Longer keeps
    /// more heard audio in front of the words being decided: at 6 s the long-form bench lost
    /// two words to short-context decodes ("may be" -> "maybe") in every run (streaming WER
    /// 1.18-1.27x offline); at 9 s it matched offline in 3 of 3 runs, for ~0.5 s more latency
    /// to the final on short utterances (`cargo bench --bench streaming`).
    pub trim_after_s: f32,
    /// Characters of committed text passed as the prompt of the next decode.
    pub prompt_chars: usize,
    /// Silence that ends an utterance for transcription, milliseconds. Longer than the VAD
    /// stage's hangover: Whisper is more accurate on whole sentences than on fragments, and
    /// words are committed during speech anyway.
    pub end_silence_ms: u32,
    /// Seconds of audio the encoder sees at least on each re-decode (the buffer zero-padded to
    /// this; 30 = Whisper's training setup). Shorter is cheaper: the encoder dominates a
    /// re-decode and its cost follows its input.
    pub min_encode_s: f32,
    /// Longest utterance, seconds: one that neither pauses nor ends a sentence is closed at
    /// the first commit after this long (so a store row and an `utterance` event stay readable).
    pub max_utterance_s: f32,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            interim_ms: 600,
            preroll_ms: 300,
            max_window_s: 30.0,
            trim_after_s: 9.0,
            prompt_chars: 200,
            end_silence_ms: 900,
            min_encode_s: 10.0,
            max_utterance_s: 30.0,
        }
    }
}

impl StreamingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(200..=10_000).contains(&self.interim_ms) {
            return Err("transcribe.interim_ms must be within 200..=10000".into());
        }
        if self.preroll_ms > 2000 {
            return Err("transcribe.preroll_ms must be <= 2000".into());
        }
        if !(2.0..=30.0).contains(&self.max_window_s) {
            return Err("transcribe.max_window_s must be within 2..=30".into());
        }
        if !(1.0..=30.0).contains(&self.min_encode_s) {
            return Err("transcribe.min_encode_s must be within 1..=30".into());
        }
        if !(100..=5000).contains(&self.end_silence_ms) {
            return Err("transcribe.end_silence_ms must be within 100..=5000".into());
        }
        if !(2.0..=600.0).contains(&self.max_utterance_s) {
            return Err("transcribe.max_utterance_s must be within 2..=600".into());
        }
        if !(1.0..self.max_window_s).contains(&self.trim_after_s) {
            return Err("transcribe.trim_after_s must be >= 1 and below max_window_s".into());
        }
        Ok(())
    }
}

/// A word placed on the stream clock.
#[derive(Debug, Clone, PartialEq)]
struct AbsWord {
    word: String,
    start: u64,
    end: u64,
    p: f32,
}

fn norm(w: &str) -> String {
    w.chars()
        .filter(|c| c.is_alphanumeric() || *c == '\'')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The streaming stage.
pub struct TranscribeStage {
    cfg: StreamingConfig,
    recognizer: Box<dyn Recognizer>,
    vad: VadDetector,
    /// Audio of the current utterance from `buf_start`.
    buf: Vec<f32>,
    buf_start: u64,
    preroll: VecDeque<f32>,
    in_speech: bool,
    since_decode: usize,
    /// Committed words whose audio is still in the window (they come back in every decode and
    /// are matched away by text), and where committed audio ends.
    committed: Vec<AbsWord>,
    committed_end: u64,
    /// Uncommitted tail of the previous hypothesis.
    pending: Vec<AbsWord>,
    /// Committed text before the window: the decoder prompt.
    context: String,
    language: String,
    /// VAD gating (always on in the daemon; unit tests of the commit policy turn it off).
    gated: bool,
    /// Wall time of the last decode, in samples of audio: the next interim decode waits at
    /// least this long (x [`DUTY`]) so decoding never falls behind the live audio.
    decode_cost: usize,
    /// Id of the utterance being committed (1, 2, ... on this stream), and its committed words.
    utterance_id: u64,
    utterance: Vec<AbsWord>,
}

/// Committed audio kept in the window before the commit point when it is trimmed. With
/// only the start of a new sentence left and the previous ones in the prompt, Whisper skips
/// words: after "...can do for you." the window "Ask what you can do for your country"
/// decoded as "your country." (in 1 of 4 runs). The committed words kept are matched away
/// by text. 1.5 s: jfk right in 4 of 4 runs, long-form streaming WER 3.9%; 3 s: 4.7%.
const CONTEXT_MS: u64 = 1500;

/// Shortest silence between two words that counts as a pause where a long utterance may end.
/// Readers pause 150-300 ms at commas; stop consonants close for up to about 80 ms.
const PAUSE_MS: u64 = 120;

/// Inverse of the largest share of real time the stage spends decoding; the rest is head
/// room for the other stages and for decodes that take longer than the last one.
const DUTY: f32 = 1.25;

impl std::fmt::Debug for TranscribeStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscribeStage")
            .field("in_speech", &self.in_speech)
            .field("buffered_s", &(self.buf.len() as f32 / STREAM_RATE as f32))
            .finish_non_exhaustive()
    }
}

impl TranscribeStage {
    pub fn new(
        cfg: StreamingConfig,
        vad: &VadConfig,
        recognizer: Box<dyn Recognizer>,
    ) -> Result<Self, String> {
        cfg.validate()?;
        let vad = VadDetector::new(&VadConfig {
            hangover_ms: vad.hangover_ms.max(cfg.end_silence_ms),
            ..vad.clone()
        })
        .map_err(|e| e.to_string())?;
        Ok(Self {
            preroll: VecDeque::with_capacity((cfg.preroll_ms * STREAM_RATE / 1000) as usize + 1),
            buf: Vec::with_capacity((cfg.max_window_s * STREAM_RATE as f32) as usize + 1024),
            cfg,
            recognizer,
            vad,
            buf_start: 0,
            in_speech: false,
            since_decode: 0,
            committed: Vec::new(),
            committed_end: 0,
            pending: Vec::new(),
            context: String::new(),
            language: "en".into(),
            gated: true,
            decode_cost: 0,
            utterance_id: 1,
            utterance: Vec::new(),
        })
    }

    fn max_samples(&self) -> usize {
        (self.cfg.max_window_s * STREAM_RATE as f32) as usize
    }

    fn start_utterance(&mut self, onset: u64, frame_start: u64) {
        self.in_speech = true;
        // Start from the pre-roll, but not before the (earlier) onset the VAD dated.
        let pre: Vec<f32> = self.preroll.iter().copied().collect();
        self.buf.clear();
        self.buf.extend_from_slice(&pre);
        self.buf_start = frame_start.saturating_sub(pre.len() as u64);
        let _ = onset;
        self.since_decode = 0;
        self.committed.clear();
        self.pending.clear();
        self.committed_end = self.buf_start;
    }

    /// Decodes the buffer and applies the commit rule. `last` finalises everything.
    fn decode(&mut self, last: bool, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        self.since_decode = 0;
        if self.buf.len() < (STREAM_RATE / 10) as usize {
            return Ok(());
        }
        // Never hand the recogniser more than it takes, even after failed decodes left the
        // buffer untrimmed: the oldest audio goes (it was shown as interim already).
        self.drop_front(self.buf.len().saturating_sub(self.max_samples()));
        let prompt = self.context.clone();
        let started = std::time::Instant::now();
        let hyp = self.recognizer.recognize(&self.buf, &prompt);
        self.decode_cost = (started.elapsed().as_secs_f32() * DUTY * STREAM_RATE as f32) as usize;
        let hyp = hyp.map_err(StageError::Failed)?;
        tracing::debug!(
            buffered_s = self.buf.len() as f32 / STREAM_RATE as f32,
            decode_ms = started.elapsed().as_millis() as u64,
            words = hyp.words.len(),
            last,
            "Re-decoded."
        );
        tracing::trace!(
            from_s = self.buf_start as f32 / STREAM_RATE as f32,
            text = hyp
                .words
                .iter()
                .map(|w| w.word.as_str())
                .collect::<String>(),
            "Hypothesis."
        );
        if !hyp.language.is_empty() {
            self.language = hyp.language.clone();
        }
        let to_abs = |t: f32| self.buf_start + (t.max(0.0) * STREAM_RATE as f32) as u64;
        let mut words: Vec<AbsWord> = hyp
            .words
            .iter()
            .filter(|w| !norm(&w.word).is_empty())
            .map(|w| AbsWord {
                word: w.word.clone(),
                start: to_abs(w.start),
                end: to_abs(w.end).max(to_abs(w.start)),
                p: w.p,
            })
            .collect();
        self.drop_committed_overlap(&mut words);
        // Nothing new starts inside audio already committed: a word aligned across the trim
        // margin would otherwise date a final before the previous one.
        for w in &mut words {
            w.start = w.start.max(self.committed_end.min(w.end));
        }
        // Words touching the end of the window may be cut off mid-word: never commit those
        // before the audio after them has been heard.
        let buf_end = self.buf_start + self.buf.len() as u64;
        let guard = u64::from(STREAM_RATE) / 4;
        let agreed = if last {
            words.len()
        } else {
            words
                .iter()
                .zip(&self.pending)
                .take_while(|(a, b)| norm(&a.word) == norm(&b.word) && a.end + guard <= buf_end)
                .count()
        };
        let stability = if words.is_empty() {
            1.0
        } else {
            agreed as f32 / words.len() as f32
        };
        let tail = words.split_off(agreed);
        if !words.is_empty() {
            self.commit(words, out);
        }
        if !last && !tail.is_empty() {
            out.push((
                tail.last().map_or(self.committed_end, |w| w.end),
                EventKind::Transcript(self.transcript(&tail, false, 0.5 * stability + 0.25)),
            ));
        }
        self.pending = tail;
        self.trim();
        Ok(())
    }

    /// Removes the head of a new hypothesis that re-recognises committed audio still in the
    /// window. The window starts in a pause after a committed word (see [`Self::trim`]), so a
    /// hypothesis begins with the committed words after that pause: its head is the prefix
    /// that best matches them (fewest word edits; among equals, the one ending nearest the
    /// commit point: 3.9% long-form streaming WER, against 4.7% when preferring the shortest).
    /// Text decides, not time: word times from a re-decode jitter by a few hundred
    /// milliseconds, and alignment squeezes a quickly spoken word ("we are at present") into
    /// its neighbour. Words starting well after the commit point are never taken for
    /// committed ones.
    fn drop_committed_overlap(&self, words: &mut Vec<AbsWord>) {
        let inside: Vec<String> = self
            .committed
            .iter()
            .filter(|w| w.end > self.buf_start)
            .map(|w| norm(&w.word))
            .collect();
        if inside.is_empty() {
            return;
        }
        let late = self.committed_end + u64::from(STREAM_RATE) / 5;
        let m = words.iter().take_while(|w| w.start < late).count();
        // Edit distance between `inside` and each prefix words[..j], row by row.
        let mut row: Vec<usize> = (0..=m).collect();
        for (i, c) in inside.iter().enumerate() {
            let mut next = vec![i + 1; m + 1];
            for j in 1..=m {
                let sub = row[j - 1] + usize::from(norm(&words[j - 1].word) != *c);
                next[j] = sub.min(row[j] + 1).min(next[j - 1] + 1);
            }
            row = next;
        }
        let boundary = |j: usize| {
            if j == 0 {
                self.buf_start
            } else {
                words[j - 1].end
            }
        };
        let head = (0..=m)
            .min_by_key(|&j| (row[j], boundary(j).abs_diff(self.committed_end)))
            .unwrap_or(0);
        words.drain(..head);
    }

    fn transcript(&self, words: &[AbsWord], is_final: bool, stability: f32) -> Transcript {
        let text: String = words.iter().map(|w| w.word.as_str()).collect();
        Transcript {
            text: text.trim().to_string(),
            is_final,
            stability: if is_final {
                1.0
            } else {
                stability.clamp(0.0, 1.0)
            },
            start_sample: words.first().map_or(0, |w| w.start),
            end_sample: words.last().map_or(0, |w| w.end),
            language: self.language.clone(),
            words: words
                .iter()
                .map(|w| Word {
                    word: w.word.trim().to_string(),
                    start_sample: w.start,
                    end_sample: w.end,
                    p: w.p,
                })
                .collect(),
            utterance_id: self.utterance_id,
        }
    }

    /// Sends newly agreed words as finals. A final never spans two utterances: the words are
    /// split after each sentence end, which closes the utterance. Past half of
    /// `max_utterance_s` an utterance also closes after a clause (a word followed by `,` `;`
    /// `:`) or at a pause between two words (Whisper does not always punctuate), so that the
    /// hard cap rarely cuts a phrase in two: a phrase search looks inside one utterance.
    fn commit(&mut self, mut words: Vec<AbsWord>, out: &mut Vec<Emitted>) {
        let max_len = (self.cfg.max_utterance_s * STREAM_RATE as f32) as u64;
        while !words.is_empty() {
            let start = self
                .utterance
                .first()
                .or(words.first())
                .map_or(0, |w| w.start);
            let speech = self.mean_frame_energy(start, words.last().map_or(start, |w| w.end));
            let split = (0..words.len()).find(|&i| {
                let w = &words[i];
                if ends_sentence(&w.word) {
                    return true;
                }
                if 2 * w.end.saturating_sub(start) < max_len {
                    return false;
                }
                w.word.trim_end().ends_with([',', ';', ':'])
                    || words
                        .get(i + 1)
                        .is_some_and(|next| self.is_pause(w.end, next.start, speech))
            });
            let n = split.map_or(words.len(), |i| i + 1);
            let rest = words.split_off(n);
            let chunk = std::mem::replace(&mut words, rest);
            let t = self.transcript(&chunk, true, 1.0);
            self.committed_end = self.committed_end.max(t.end_sample);
            out.push((t.end_sample, EventKind::Transcript(t)));
            self.committed.extend(chunk.iter().cloned());
            self.utterance.extend(chunk);
            let (last_word, last_end) = self
                .utterance
                .last()
                .map_or(("", start), |w| (w.word.as_str(), w.end));
            if split.is_some() && ends_sentence(last_word) {
                self.close_utterance(UtteranceEnd::Sentence, out);
            } else if split.is_some() || last_end.saturating_sub(start) >= max_len {
                // A clause end or a pause past half the cap, or the cap itself.
                self.close_utterance(UtteranceEnd::MaxLength, out);
            }
        }
    }

    /// Mean energy of a 10 ms frame of the buffered audio in `[from, to)` (stream samples).
    fn mean_frame_energy(&self, from: u64, to: u64) -> f32 {
        let lo = (from.max(self.buf_start) - self.buf_start) as usize;
        let hi = (to.saturating_sub(self.buf_start) as usize).min(self.buf.len());
        if hi <= lo {
            return 0.0;
        }
        let sum: f32 = self.buf[lo..hi].iter().map(|x| x * x).sum();
        sum / (hi - lo) as f32 * (STREAM_RATE / 100) as f32
    }

    /// Whether the speaker paused between a word ending at `end` and the next starting at
    /// `next`: at least [`PAUSE_MS`] of 10 ms frames 20 dB below the speech's mean frame
    /// energy, looked for up to 150 ms either side (word times from a decode are that loose).
    /// Shorter dips are stop consonants, not pauses.
    fn is_pause(&self, end: u64, next: u64, speech: f32) -> bool {
        let frame = (STREAM_RATE / 100) as usize;
        let margin = u64::from(STREAM_RATE) * 3 / 20;
        let lo = (end.saturating_sub(margin).max(self.buf_start) - self.buf_start) as usize;
        let hi =
            ((next.max(end) + margin).saturating_sub(self.buf_start) as usize).min(self.buf.len());
        if speech <= 0.0 || hi < lo + frame {
            return false;
        }
        let need = PAUSE_MS as usize / 10;
        let mut run = 0;
        for f in self.buf[lo..hi].chunks_exact(frame) {
            let e: f32 = f.iter().map(|x| x * x).sum();
            run = if e < 0.01 * speech { run + 1 } else { 0 };
            if run >= need {
                return true;
            }
        }
        false
    }

    /// Sends the `utterance` event for the committed words since the last one, if any.
    fn close_utterance(&mut self, reason: UtteranceEnd, out: &mut Vec<Emitted>) {
        if self.utterance.is_empty() {
            return;
        }
        let words = std::mem::take(&mut self.utterance);
        let t = self.transcript(&words, true, 1.0);
        out.push((
            t.end_sample,
            EventKind::Utterance(Utterance {
                id: self.utterance_id,
                text: t.text,
                start_sample: t.start_sample,
                end_sample: t.end_sample,
                language: t.language,
                words: t.words,
                reason,
            }),
        ));
        self.utterance_id += 1;
    }

    /// Moves committed words whose audio has left the window (all of them with `all`) into the
    /// prompt. The prompt is text *before* the window: given the text of audio it is about to
    /// hear, Whisper skips that audio and then loops back over it.
    fn retire_committed(&mut self, all: bool) {
        let n = if all {
            self.committed.len()
        } else {
            self.committed
                .iter()
                .take_while(|w| w.end <= self.buf_start)
                .count()
        };
        for w in self.committed.drain(..n) {
            if !w.word.starts_with(' ') {
                self.context.push(' ');
            }
            self.context.push_str(&w.word);
        }
        if self.context.len() > self.cfg.prompt_chars {
            let mut cut = self.context.len() - self.cfg.prompt_chars;
            while !self.context.is_char_boundary(cut) {
                cut += 1;
            }
            self.context.drain(..cut);
        }
    }

    /// Drops committed audio from the front of the window once it is long, and never lets the
    /// window exceed the recogniser's limit.
    fn trim(&mut self) {
        let trim_after = (self.cfg.trim_after_s * STREAM_RATE as f32) as usize;
        let mut cut_at = self.buf_start;
        if self.buf.len() > trim_after
            && let Some(cut) = self.cut_point(self.buf.len() > 2 * trim_after)
        {
            cut_at = cut;
        }
        let max = self.max_samples();
        if self.buf.len() > max {
            // Nothing agreed for a whole window: keep the newest audio.
            cut_at = cut_at.max(self.buf_start + (self.buf.len() - max) as u64);
        }
        self.drop_front((cut_at - self.buf_start) as usize);
        self.retire_committed(false);
    }

    /// Where to cut the window: in the pause after a committed word, so that the next decode
    /// starts on silence. A cut into a word makes Whisper mishear or misplace it, and the
    /// seam loses it. Prefers the last word with punctuation after it (the decoder heard a
    /// pause there); any word boundary only when `any_boundary` (the window is getting long).
    /// The cut goes to the quietest 10 ms around the boundary, at least [`CONTEXT_MS`] before
    /// the commit point.
    fn cut_point(&self, any_boundary: bool) -> Option<u64> {
        let ms = |n: u64| u64::from(STREAM_RATE) * n / 1000;
        let buf_end = self.buf_start + self.buf.len() as u64;
        let next_start = |i: usize| {
            self.committed
                .get(i + 1)
                .or(self.pending.first())
                .map_or(buf_end, |w| w.start)
        };
        // (cut, quietness, punctuated) per committed boundary far enough into the window.
        let candidates = self.committed.iter().enumerate().filter_map(|(i, w)| {
            let lo = w.end.saturating_sub(ms(100)).max(self.buf_start + ms(500));
            let hi = (next_start(i) + ms(100)).min(w.end + ms(400)).min(buf_end);
            if w.end <= self.buf_start + ms(500)
                || w.end + ms(CONTEXT_MS) > self.committed_end
                || hi <= lo + ms(10)
            {
                return None;
            }
            let (at, energy) = self.quietest(lo, hi);
            let punctuated = w.word.trim_end().ends_with(['.', ',', '?', '!', ';', ':']);
            Some((at, energy, punctuated))
        });
        let candidates: Vec<(u64, f32, bool)> = candidates.collect();
        if let Some(&(at, _, _)) = candidates.iter().rev().find(|c| c.2) {
            return Some(at);
        }
        if !any_boundary {
            return None;
        }
        candidates
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|c| c.0)
    }

    /// The middle of the quietest 10 ms frame in `[lo, hi)` (stream samples) and its energy.
    fn quietest(&self, lo: u64, hi: u64) -> (u64, f32) {
        let frame = (STREAM_RATE / 100) as usize;
        let from = (lo - self.buf_start) as usize;
        let to = ((hi - self.buf_start) as usize).min(self.buf.len());
        let mut best = (lo, f32::INFINITY);
        let mut i = from;
        while i + frame <= to {
            let e: f32 = self.buf[i..i + frame].iter().map(|x| x * x).sum();
            if e < best.1 {
                best = (self.buf_start + (i + frame / 2) as u64, e);
            }
            i += frame / 2;
        }
        best
    }

    /// Drops the oldest `n` buffered samples (at most all of them).
    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.buf_start += n as u64;
    }

    fn end_utterance(
        &mut self,
        reason: UtteranceEnd,
        out: &mut Vec<Emitted>,
    ) -> Result<(), StageError> {
        let r = if self.in_speech {
            self.decode(true, out)
        } else {
            Ok(())
        };
        // Even when the last decode failed: what was committed stays one utterance.
        self.close_utterance(reason, out);
        self.in_speech = false;
        self.buf.clear();
        self.pending.clear();
        self.retire_committed(true);
        r
    }
}

impl Stage for TranscribeStage {
    fn name(&self) -> &'static str {
        "transcribe"
    }

    fn window(&self) -> WindowSpec {
        let n = self.vad.frame_len();
        WindowSpec { len: n, hop: n }
    }

    fn process(&mut self, w: &Window<'_>, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        let transition = if self.gated {
            self.vad.push_frame(w.samples, w.start)
        } else if !self.in_speech {
            Some(VadTransition::Started { at: w.start })
        } else {
            None
        };
        if let Some(VadTransition::Started { at }) = transition {
            self.start_utterance(at, w.start);
        }
        if self.in_speech {
            self.buf.extend_from_slice(w.samples);
            self.since_decode += w.samples.len();
            if self.buf.len() > self.max_samples() {
                self.decode(false, out)?;
            }
        } else {
            let cap = (self.cfg.preroll_ms * STREAM_RATE / 1000) as usize;
            for &s in w.samples {
                if self.preroll.len() >= cap {
                    self.preroll.pop_front();
                }
                if cap > 0 {
                    self.preroll.push_back(s);
                }
            }
        }
        if let Some(VadTransition::Ended { .. }) = transition {
            return self.end_utterance(UtteranceEnd::Pause, out);
        }
        let interval = ((self.cfg.interim_ms * STREAM_RATE / 1000) as usize).max(self.decode_cost);
        if self.in_speech && self.since_decode >= interval {
            self.decode(false, out)?;
        }
        Ok(())
    }

    fn discontinuity(&mut self, at: u64, out: &mut Vec<Emitted>) {
        if let Err(e) = self.end_utterance(UtteranceEnd::StreamEnd, out) {
            tracing::warn!(error = %e, "Transcription failed at a discontinuity.");
        }
        self.vad.close(at);
        self.preroll.clear();
    }

    fn finish(&mut self, _end: u64, out: &mut Vec<Emitted>) {
        if let Err(e) = self.end_utterance(UtteranceEnd::StreamEnd, out) {
            tracing::warn!(error = %e, "Transcription failed at the end of the stream.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pretends to recognise a script: word i is spoken from i*0.4 s to i*0.4+0.3 s of the
    /// stream (after `offset_s`). A word whose audio is cut off by the end of the window is
    /// misheard ("uh"), as real decoders do with cut-off audio.
    struct Scripted {
        words: Vec<&'static str>,
        offset_s: f32,
        stream_pos: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Recognizer for Scripted {
        fn recognize(&mut self, audio: &[f32], prompt: &str) -> Result<Hypothesis, String> {
            let end = self.stream_pos.load(std::sync::atomic::Ordering::Relaxed) as f32 / 16000.0;
            let start = end - audio.len() as f32 / 16000.0;
            // Like Whisper, skip audio whose text the prompt already ends with: the prompt
            // must only hold text from before the window.
            let said: Vec<String> = prompt.split_whitespace().map(norm).collect();
            let skip_to = (0..self.words.len())
                .filter(|&i| {
                    i >= 2
                        && said.len() >= 3
                        && said[said.len() - 3..] == self.words[i - 2..=i]
                        && self.offset_s + i as f32 * 0.4 >= start
                })
                .max();
            let mut words = Vec::new();
            for (i, w) in self.words.iter().enumerate() {
                let ws = self.offset_s + i as f32 * 0.4;
                let we = ws + 0.3;
                if skip_to.is_some_and(|k| i <= k) {
                    continue;
                }
                if ws >= start - 0.05 && ws < end {
                    let cut = we > end;
                    // A clause ends every fifth word.
                    let comma = if i % 5 == 4 { "," } else { "" };
                    words.push(HypWord {
                        word: format!(" {}{comma}", if cut { "uh" } else { w }),
                        start: ws - start,
                        end: we - start,
                        p: 0.9,
                    });
                }
            }
            Ok(Hypothesis {
                words,
                language: "en".into(),
            })
        }
    }

    fn run(script: Vec<&'static str>) -> Vec<Transcript> {
        run_all(script).0
    }

    /// Finals and utterances of a scripted stream.
    fn run_all(script: Vec<&'static str>) -> (Vec<Transcript>, Vec<Utterance>) {
        let pos = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let rec = Scripted {
            words: script.clone(),
            offset_s: 1.0,
            stream_pos: pos.clone(),
        };
        let vad = VadConfig {
            frame_ms: 30,
            ..VadConfig::default()
        };
        let cfg = StreamingConfig {
            trim_after_s: 3.0,
            max_window_s: 6.0,
            ..StreamingConfig::default()
        };
        let mut st = TranscribeStage::new(cfg, &vad, Box::new(rec)).unwrap();
        // The commit policy alone: one utterance over the whole input.
        st.gated = false;
        let total_s = 1.0 + script.len() as f32 * 0.4 + 0.5;
        let n = (total_s * 16000.0) as usize / 480 * 480;
        let mut seed = 1u32;
        let mut out = Vec::new();
        let mut finals = Vec::new();
        let mut utterances = Vec::new();
        let mut collect = |out: &mut Vec<Emitted>| {
            for (_, e) in out.drain(..) {
                match e {
                    EventKind::Transcript(t) if t.is_final => finals.push(t),
                    EventKind::Utterance(u) => utterances.push(u),
                    _ => {}
                }
            }
        };
        for f in 0..n / 480 {
            let start = (f * 480) as u64;
            let t = start as f32 / 16000.0;
            let speaking = t >= 1.0 && t < 1.0 + script.len() as f32 * 0.4;
            let frame: Vec<f32> = (0..480)
                .map(|i| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let noise = (seed >> 9) as f32 / (1u32 << 23) as f32 - 0.5;
                    if speaking {
                        let ph = (start as usize + i) as f32 / 16000.0;
                        0.3 * (2.0 * std::f32::consts::PI * 220.0 * ph).sin()
                            + 0.2 * (2.0 * std::f32::consts::PI * 660.0 * ph).sin()
                            + 0.05 * noise
                    } else {
                        0.0005 * noise
                    }
                })
                .collect();
            pos.store(start + 480, std::sync::atomic::Ordering::Relaxed);
            st.process(
                &Window {
                    samples: &frame,
                    start,
                },
                &mut out,
            )
            .unwrap();
            collect(&mut out);
        }
        st.finish(n as u64, &mut out);
        collect(&mut out);
        (finals, utterances)
    }

    #[test]
    fn utterances_tile_the_finals_and_end_at_sentence_ends() {
        let script: Vec<&'static str> = "the quick brown jumped. over the lazy dog while \
             seven wise owls watched. from the old oak tree near Mr. Smith's quiet river bank"
            .split(' ')
            .collect();
        let (finals, utterances) = run_all(script);
        let text = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let finals_text = text(
            &finals
                .iter()
                .map(|t| t.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        );
        let utt_text = text(
            &utterances
                .iter()
                .map(|u| u.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        );
        assert_eq!(finals_text, utt_text);
        // Two sentence ends, then the stream end ("Mr." is not one).
        let reasons: Vec<UtteranceEnd> = utterances.iter().map(|u| u.reason).collect();
        assert_eq!(
            reasons,
            [
                UtteranceEnd::Sentence,
                UtteranceEnd::Sentence,
                UtteranceEnd::StreamEnd
            ],
            "{utterances:#?}"
        );
        for (i, u) in utterances.iter().enumerate() {
            assert_eq!(u.id, i as u64 + 1);
            let own: Vec<&Transcript> = finals.iter().filter(|t| t.utterance_id == u.id).collect();
            assert!(!own.is_empty());
            assert_eq!(u.start_sample, own[0].start_sample);
            assert_eq!(u.end_sample, own[own.len() - 1].end_sample);
            assert_eq!(
                u.words.len(),
                own.iter().map(|t| t.words.len()).sum::<usize>()
            );
            if let Some(next) = utterances.get(i + 1) {
                assert!(u.end_sample <= next.start_sample, "overlap: {u:?} {next:?}");
            }
        }
        assert!(
            utterances[0].text.ends_with("jumped."),
            "{}",
            utterances[0].text
        );
        assert!(
            finals
                .iter()
                .all(|t| t.utterance_id >= 1 && t.utterance_id <= 3)
        );
    }

    /// Finals and utterances as "final ID TEXT" / "utterance ID TEXT".
    fn describe(out: &[Emitted]) -> Vec<String> {
        out.iter()
            .map(|(_, e)| match e {
                EventKind::Transcript(t) => format!("final {} {}", t.utterance_id, t.text),
                EventKind::Utterance(u) => format!("utterance {} {}", u.id, u.text),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn long_utterances_close_at_a_pause_past_half_the_cap() {
        let mut st = TranscribeStage::new(
            StreamingConfig {
                max_utterance_s: 2.0,
                ..StreamingConfig::default()
            },
            &VadConfig::default(),
            Box::new(Silent),
        )
        .unwrap();
        // Loud audio with a 300 ms pause at 2.0-2.3 s and a 50 ms closure at 1.5 s (too short).
        st.buf = (0..4 * 16000)
            .map(|i| {
                let t = i as f32 / 16000.0;
                if (2.0..2.3).contains(&t) || (1.5..1.55).contains(&t) {
                    0.0
                } else {
                    0.3 * (t * 1500.0).sin()
                }
            })
            .collect();
        let mut out = Vec::new();
        st.commit(
            vec![
                word("a", 0.2, 0.9),
                word("b", 1.0, 1.5),
                word("e", 1.55, 1.9),
                word("c", 2.3, 2.8),
                word("d", 2.85, 3.4),
            ],
            &mut out,
        );
        let texts = describe(&out);
        assert_eq!(texts, ["final 1 a b e", "utterance 1 a b e", "final 2 c d"]);
    }

    #[test]
    fn long_utterances_are_closed_at_the_length_cap() {
        let pos = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut st = TranscribeStage::new(
            StreamingConfig {
                max_utterance_s: 2.0,
                ..StreamingConfig::default()
            },
            &VadConfig::default(),
            Box::new(Scripted {
                words: vec![],
                offset_s: 0.0,
                stream_pos: pos,
            }),
        )
        .unwrap();
        let mut out = Vec::new();
        let words: Vec<AbsWord> = (0..10)
            .map(|i| word("la", i as f32 * 0.4, i as f32 * 0.4 + 0.3))
            .collect();
        st.commit(words[..4].to_vec(), &mut out);
        assert!(
            !out.iter()
                .any(|(_, e)| matches!(e, EventKind::Utterance(_)))
        );
        st.commit(words[4..8].to_vec(), &mut out);
        let u: Vec<&Utterance> = out
            .iter()
            .filter_map(|(_, e)| match e {
                EventKind::Utterance(u) => Some(u),
                _ => None,
            })
            .collect();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].reason, UtteranceEnd::MaxLength);
        assert_eq!(u[0].words.len(), 8);
        // The next final starts utterance 2.
        st.commit(words[8..].to_vec(), &mut out);
        match out.last() {
            Some((_, EventKind::Transcript(t))) => assert_eq!(t.utterance_id, 2),
            other => panic!("{other:?}"),
        }
        // Past half the cap, a clause end closes the utterance: the final is split there.
        out.clear();
        st.commit(
            vec![
                word("so,", 4.4, 4.7),
                word("then", 4.8, 5.0),
                word("we", 5.1, 5.3),
            ],
            &mut out,
        );
        let texts = describe(&out);
        assert_eq!(
            texts,
            ["final 2 so,", "utterance 2 la la so,", "final 3 then we"]
        );
    }

    #[test]
    fn finals_cover_every_word_once_in_order_across_trims() {
        let script: Vec<&'static str> =
            "the quick brown fox jumps over the lazy dog while seven wise owls watch \
             from the old oak tree near the quiet river bank"
                .split(' ')
                .collect();
        let finals = run(script.clone());
        let words: Vec<String> = finals
            .iter()
            .flat_map(|t| {
                t.words
                    .iter()
                    .map(|w| w.word.trim_end_matches(',').to_string())
            })
            .collect();
        // The VAD may clip the very first/last word; what it keeps must be the script, in
        // order, without duplicates, and without the decoder's "uh" for unfinished words.
        let joined = words.join(" ");
        let script_text = script.join(" ");
        assert!(
            script_text.contains(&joined),
            "finals {joined:?} vs script {script_text:?}"
        );
        assert!(words.len() >= script.len() - 2, "lost words: {joined:?}");
        // Finals are in stream order.
        let starts: Vec<u64> = finals.iter().map(|t| t.start_sample).collect();
        assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    }
    struct Silent;

    impl Recognizer for Silent {
        fn recognize(&mut self, _: &[f32], _: &str) -> Result<Hypothesis, String> {
            Ok(Hypothesis::default())
        }
    }

    fn word(w: &str, start_s: f32, end_s: f32) -> AbsWord {
        AbsWord {
            word: format!(" {w}"),
            start: (start_s * 16000.0) as u64,
            end: (end_s * 16000.0) as u64,
            p: 0.9,
        }
    }

    fn stage_with(committed: Vec<AbsWord>) -> TranscribeStage {
        let mut st = TranscribeStage::new(
            StreamingConfig::default(),
            &VadConfig::default(),
            Box::new(Silent),
        )
        .unwrap();
        st.committed_end = committed.last().map_or(0, |w| w.end);
        st.committed = committed;
        st
    }

    #[test]
    fn windows_are_cut_in_the_pause_after_a_committed_word() {
        // Loud audio with a 100 ms pause at 2.00-2.10 s.
        let mut st = stage_with(vec![
            word("hello", 0.6, 1.5),
            word("world", 1.55, 2.02),
            word("again", 2.08, 2.6),
        ]);
        st.buf = (0..6 * 16000)
            .map(|i| {
                let t = i as f32 / 16000.0;
                if (2.0..2.1).contains(&t) {
                    0.0
                } else {
                    0.3 * (t * 1500.0).sin()
                }
            })
            .collect();
        let in_pause = |cut: Option<u64>| cut.is_some_and(|c| (32_000..33_600).contains(&c));
        // Less than CONTEXT_MS of committed audio after any boundary: no cut.
        assert_eq!(st.cut_point(true), None);
        // Words were committed up to 4 s.
        st.committed_end = 64_000;
        // No punctuation: no cut until the window is long, then the quietest boundary.
        assert_eq!(st.cut_point(false), None);
        assert!(in_pause(st.cut_point(true)), "{:?}", st.cut_point(true));
        // A punctuated word is a cut point at once.
        st.committed[1].word = " world,".into();
        assert!(in_pause(st.cut_point(false)), "{:?}", st.cut_point(false));
    }

    #[test]
    fn committed_words_in_the_window_are_matched_by_text() {
        let st = stage_with(vec![
            word("the", 1.0, 1.2),
            word("art", 1.2, 1.5),
            word("of", 1.5, 1.7),
        ]);
        let strip = |hyp: Vec<AbsWord>| {
            let mut hyp = hyp;
            st.drop_committed_overlap(&mut hyp);
            hyp.iter()
                .map(|w| w.word.trim().to_string())
                .collect::<Vec<_>>()
        };
        // Repeated exactly, with times off by 200 ms.
        assert_eq!(
            strip(vec![
                word("the", 0.9, 1.0),
                word("art", 1.0, 1.3),
                word("of", 1.3, 1.5),
                word("printing", 1.5, 2.0),
            ]),
            ["printing"]
        );
        // Misheard inside the committed span, and a quick new word squeezed before the commit
        // point by the alignment: still only the committed three go.
        assert_eq!(
            strip(vec![
                word("the", 1.0, 1.2),
                word("arts", 1.2, 1.5),
                word("of", 1.5, 1.6),
                word("a", 1.6, 1.65),
                word("printing", 1.7, 2.0),
            ]),
            ["a", "printing"]
        );
        // Nothing of the committed words, and the new words well after the commit point:
        // nothing goes.
        assert_eq!(
            strip(vec![word("printing", 1.95, 2.2), word("and", 2.2, 2.4)]),
            ["printing", "and"]
        );
    }
}

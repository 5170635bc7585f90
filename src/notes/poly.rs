//! Polyphonic transcription with Basic Pitch: the network's posteriors decoded into notes the
//! way the `basic-pitch` package's `output_to_notes_polyphonic` does, offline or streaming.
//!
//! ```text
//! 16 kHz mono ─ resample ─> 22.05 kHz ─ 15 frames of zeros in front ─ windows of 43844,
//!   hop 36164 (30 frames overlap) ─ BasicPitch ─ keep frames 15..157 of each window ("unwrap")
//!   ─> posteriorgram [frame][88] ─ decode in segments ─> Notes
//! ```
//!
//! # Decoding
//!
//! [`output_to_notes`] is the package's algorithm on a whole posteriorgram: onsets are the
//! onset posteriors maxed with rises of the note posteriors (`infer_onsets`), peak-picked in time
//! and above `onset_threshold`; each, latest first, starts a note that lasts while the note
//! posterior stays above `frame_threshold` (gaps up to `energy_tol` frames) and erases its energy
//! (and its neighbours'); then the "melodia trick" turns the strongest remaining energy, again
//! and again, into notes grown both ways. Notes of `min_note_len` frames or fewer are dropped.
//!
//! # Streaming
//!
//! The algorithm looks at the whole file (the onset rescaling uses global maxima, notes are
//! found latest-first and strongest-first), so [`PolyTranscriber`] decodes a growing buffer in
//! segments: once it holds [`SEGMENT`] + [`LOOKAHEAD`] frames past the segment start, it decodes
//! them all and commits the notes that end inside the first [`SEGMENT`] frames (their ends were
//! found with at least `energy_tol` frames to spare). A note still sounding at the commit
//! horizon is not emitted: the next segment starts at (one frame before) its onset and decodes
//! it again with more audio, so a note that spans a window or segment edge comes out once and
//! whole. Committed notes that overlap the next segment have their energy erased there first,
//! so they are not found twice. The onset rescaling uses the maxima seen so far.
//!
//! Every decision depends on frame counts, never on how the audio was chunked: pushing a buffer
//! in any pieces gives exactly the notes of [`transcribe_poly`]. A single segment (clips up to
//! about 7 s) gives exactly [`output_to_notes`]. A note held longer than [`MAX_SPAN`] frames
//! (~30 s) is cut there.

use std::sync::Arc;

use rubato::{FftFixedIn, Resampler as _};

use super::Note;
use crate::nn::NnError;
use crate::nn::basic_pitch::{BasicPitch, CONTOUR_BINS, FRAMES, HOP, NOTE_BINS, WINDOW};

/// Sample rate of the input.
pub const INPUT_RATE: u32 = 16_000;
/// Sample rate of the network.
pub const MODEL_RATE: u32 = crate::nn::basic_pitch::SAMPLE_RATE;
/// MIDI number of posterior bin 0 (A0).
pub const MIDI_OFFSET: u8 = 21;
/// Frames shared by consecutive windows (`n_overlapping_frames`).
pub const OVERLAP_FRAMES: usize = 30;
/// Frames each window contributes after dropping half the overlap at each end.
pub const FRAMES_PER_WINDOW: usize = FRAMES - OVERLAP_FRAMES;
/// Window hop in 22.05 kHz samples.
pub const WINDOW_HOP: usize = WINDOW - OVERLAP_FRAMES * HOP;
/// Zeros in front of the audio, so the first kept frame is at time 0.
const LEAD_IN: usize = OVERLAP_FRAMES / 2 * HOP;
/// Frames committed per streaming decode (~5 s).
pub const SEGMENT: usize = 430;
/// Frames decoded past the commit horizon (~2 s; must exceed `energy_tol`).
pub const LOOKAHEAD: usize = 172;
/// Longest buffer of undecided frames before notes still sounding are cut (~30 s).
pub const MAX_SPAN: usize = 2600;
/// Input samples per resampler call.
const RESAMPLE_CHUNK: usize = 1024;

/// Errors of polyphonic transcription.
#[derive(Debug, thiserror::Error)]
pub enum PolyError {
    #[error("basic pitch: {0}")]
    Model(#[from] NnError),
    #[error("resampler: {0}")]
    Resampler(String),
    #[error("invalid parameters: {0}")]
    Params(String),
}

/// Decoding parameters; the defaults are `basic_pitch.inference.predict`'s.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PolyParams {
    /// Minimum onset posterior (after peak picking) that starts a note (`onset_threshold`).
    pub onset_threshold: f32,
    /// Minimum note posterior that keeps a note sounding (`frame_threshold`).
    pub frame_threshold: f32,
    /// Notes must be longer than this many frames (`min_note_len`: 127.7 ms -> 11).
    pub min_note_len: usize,
    /// Also take onsets from rises of the note posteriors (`infer_onsets`).
    pub infer_onsets: bool,
    /// Turn strong energy without an onset into notes too (`melodia_trick`).
    pub melodia_trick: bool,
    /// Frames below `frame_threshold` a note may bridge (`energy_tol`).
    pub energy_tol: usize,
    /// Ignore pitches below this frequency in Hz (`minimum_frequency`).
    pub min_freq: Option<f64>,
    /// Ignore pitches above this frequency in Hz (`maximum_frequency`).
    pub max_freq: Option<f64>,
}

impl Default for PolyParams {
    fn default() -> Self {
        Self {
            onset_threshold: 0.5,
            frame_threshold: 0.3,
            min_note_len: 11,
            infer_onsets: true,
            melodia_trick: true,
            energy_tol: 11,
            min_freq: None,
            max_freq: None,
        }
    }
}

impl PolyParams {
    fn validate(&self) -> Result<(), PolyError> {
        if self.energy_tol + 2 >= LOOKAHEAD {
            return Err(PolyError::Params(format!(
                "energy_tol {} must be below {}",
                self.energy_tol,
                LOOKAHEAD - 2
            )));
        }
        if !(self.onset_threshold.is_finite() && self.frame_threshold.is_finite()) {
            return Err(PolyError::Params("thresholds must be finite".into()));
        }
        Ok(())
    }

    /// Posterior bins kept by `min_freq` / `max_freq` (`constrain_frequency`).
    fn bins(&self) -> std::ops::Range<usize> {
        let bin = |hz: f64| {
            (super::hz_to_midi(hz) - f64::from(MIDI_OFFSET))
                .round()
                .clamp(0.0, NOTE_BINS as f64) as usize
        };
        let lo = self.min_freq.map_or(0, bin);
        let hi = self.max_freq.map_or(NOTE_BINS, bin);
        lo..hi.max(lo)
    }
}

/// A note in posteriorgram frames: `[start, end)`, as the package's note events before times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameNote {
    pub start: usize,
    pub end: usize,
    pub midi: u8,
    /// Mean note posterior over the note (the package's "amplitude").
    pub amplitude: f32,
}

/// Start time in seconds of unwrapped frame `n`: frame `j` of window `w` is centred on sample
/// `w * WINDOW_HOP + j * HOP - LEAD_IN`, and frame `n` is frame `n % 142 + 15` of window
/// `n / 142`. (The package's `model_frames_to_time` approximates this drift with a constant.)
pub fn frame_time(n: usize) -> f64 {
    let w = n / FRAMES_PER_WINDOW;
    let j = n % FRAMES_PER_WINDOW;
    (w * WINDOW_HOP + j * HOP) as f64 / f64::from(MODEL_RATE)
}

/// A posteriorgram: rows `offset..offset + len()` of note, onset and contour posteriors.
#[derive(Debug, Clone, Default)]
pub struct Posteriorgram {
    offset: usize,
    note: Vec<f32>,
    onset: Vec<f32>,
    contour: Vec<f32>,
}

impl Posteriorgram {
    /// A whole posteriorgram from frame-major `[frames][88]`, `[frames][88]`, `[frames][264]`.
    pub fn new(note: Vec<f32>, onset: Vec<f32>, contour: Vec<f32>) -> Result<Self, PolyError> {
        let n = note.len() / NOTE_BINS;
        if note.len() != n * NOTE_BINS
            || onset.len() != n * NOTE_BINS
            || contour.len() != n * CONTOUR_BINS
        {
            return Err(PolyError::Params(
                "posteriorgram sizes do not match [frames][88] / [frames][264]".into(),
            ));
        }
        Ok(Self {
            offset: 0,
            note,
            onset,
            contour,
        })
    }

    /// One past the last frame held.
    pub fn end(&self) -> usize {
        self.offset + self.note.len() / NOTE_BINS
    }

    fn note(&self, t: usize) -> &[f32] {
        let i = t - self.offset;
        &self.note[i * NOTE_BINS..(i + 1) * NOTE_BINS]
    }

    fn onset(&self, t: usize) -> &[f32] {
        let i = t - self.offset;
        &self.onset[i * NOTE_BINS..(i + 1) * NOTE_BINS]
    }

    fn contour(&self, t: usize) -> &[f32] {
        let i = t - self.offset;
        &self.contour[i * CONTOUR_BINS..(i + 1) * CONTOUR_BINS]
    }

    fn push_rows(&mut self, note: &[f32], onset: &[f32], contour: &[f32]) {
        self.note.extend_from_slice(note);
        self.onset.extend_from_slice(onset);
        self.contour.extend_from_slice(contour);
    }

    /// Forgets frames before `t`.
    fn drop_before(&mut self, t: usize) {
        if t <= self.offset {
            return;
        }
        let k = (t - self.offset).min(self.note.len() / NOTE_BINS);
        self.note.drain(..k * NOTE_BINS);
        self.onset.drain(..k * NOTE_BINS);
        self.contour.drain(..k * CONTOUR_BINS);
        self.offset += k;
    }

    /// The package's `get_pitch_bends` averaged over the note, in cents: per frame, the
    /// contour bin (1/3 semitone) of the Gaussian-weighted (std 5 bins, +-25) peak around the
    /// note's pitch.
    fn cents(&self, n: &FrameNote) -> f32 {
        const TOL: i64 = 25;
        let centre = 3 * i64::from(n.midi - MIDI_OFFSET);
        let lo = (centre - TOL).max(0);
        let hi = (centre + TOL + 1).min(CONTOUR_BINS as i64);
        let mut sum = 0i64;
        let mut count = 0i64;
        for t in n.start..n.end {
            let row = self.contour(t);
            let mut best = (f32::NEG_INFINITY, lo);
            for b in lo..hi {
                let d = (b - centre) as f32 / 5.0;
                let v = row[b as usize] * (-0.5 * d * d).exp();
                // argmax: the first of equal maxima.
                if v > best.0 {
                    best = (v, b);
                }
            }
            sum += best.1 - centre;
            count += 1;
        }
        if count == 0 {
            return 0.0;
        }
        (sum as f32 / count as f32 * 100.0 / 3.0).clamp(-50.0, 50.0)
    }

    /// A decoded note with times, velocity (`round(127 * amplitude)`, as the package's MIDI
    /// export) and cents.
    fn to_note(&self, n: &FrameNote) -> Note {
        Note {
            midi: n.midi,
            cents: self.cents(n),
            start: frame_time(n.start),
            end: frame_time(n.end),
            velocity: (127.0 * n.amplitude).round().clamp(1.0, 127.0) as u8,
            confidence: n.amplitude.clamp(0.0, 1.0),
        }
    }
}

/// Running maxima for `infer_onsets`' rescaling of the note-posterior rises.
#[derive(Debug, Clone, Copy, Default)]
struct OnsetScale {
    /// Frames folded in so far.
    upto: usize,
    max_onset: f32,
    max_diff: f32,
}

impl OnsetScale {
    fn update(&mut self, g: &Posteriorgram, bins: &std::ops::Range<usize>, end: usize) {
        for t in self.upto.max(g.offset)..end {
            for f in bins.clone() {
                self.max_onset = self.max_onset.max(g.onset(t)[f]);
                self.max_diff = self.max_diff.max(frame_diff(g, t, f));
            }
        }
        self.upto = self.upto.max(end);
    }

    /// `np.max(onsets) / np.max(frame_diff)` (0 when there is no rise at all).
    fn factor(&self) -> f32 {
        if self.max_diff > 0.0 {
            self.max_onset / self.max_diff
        } else {
            0.0
        }
    }
}

/// `get_infered_onsets`' rise of the note posterior at frame `t`: the smaller of the rises over
/// one and two frames, clipped at 0; 0 for the first two frames of the stream.
fn frame_diff(g: &Posteriorgram, t: usize, f: usize) -> f32 {
    if t < 2 || t - 2 < g.offset {
        return 0.0;
    }
    let v = g.note(t)[f];
    (v - g.note(t - 1)[f]).min(v - g.note(t - 2)[f]).max(0.0)
}

/// Decodes frames `base..end` of `g` (which must also hold the 3 frames before `base`, if any).
/// `erased` notes have their energy removed first. `final_` says `end` is the end of the audio.
fn decode_span(
    g: &Posteriorgram,
    base: usize,
    end: usize,
    factor: f32,
    erased: &[FrameNote],
    p: &PolyParams,
) -> Vec<FrameNote> {
    let n = end - base;
    let bins = p.bins();
    let thr = p.frame_threshold;
    // Note posteriors, zero outside the kept bins (`constrain_frequency`).
    let frames: Vec<f32> = (base..end)
        .flat_map(|t| {
            let row = g.note(t);
            (0..NOTE_BINS).map(move |f| row[f])
        })
        .enumerate()
        .map(|(i, v)| {
            if bins.contains(&(i % NOTE_BINS)) {
                v
            } else {
                0.0
            }
        })
        .collect();
    let onset_at = |t: usize, f: usize| -> f32 {
        if !bins.contains(&f) {
            return 0.0;
        }
        let o = g.onset(t)[f];
        if p.infer_onsets {
            o.max(factor * frame_diff(g, t, f))
        } else {
            o
        }
    };
    // Peaks in time (`scipy.signal.argrelmax`, axis 0: strictly above both neighbours; never
    // the first or last frame), latest first, then highest bin first.
    let mut onsets = Vec::new();
    for t in base.max(1)..end.saturating_sub(1) {
        if t - 1 < g.offset {
            continue;
        }
        for f in bins.clone() {
            let v = onset_at(t, f);
            if v >= p.onset_threshold && v > onset_at(t - 1, f) && v > onset_at(t + 1, f) {
                onsets.push((t - base, f));
            }
        }
    }
    onsets.reverse();

    let mut rem = frames.clone();
    let erase = |rem: &mut [f32], t: usize, f: usize| {
        rem[t * NOTE_BINS + f] = 0.0;
        if f + 1 < NOTE_BINS {
            rem[t * NOTE_BINS + f + 1] = 0.0;
        }
        if f > 0 {
            rem[t * NOTE_BINS + f - 1] = 0.0;
        }
    };
    for e in erased {
        let f = usize::from(e.midi - MIDI_OFFSET);
        for t in e.start.max(base)..e.end.min(end) {
            erase(&mut rem, t - base, f);
        }
    }
    let mean = |a: usize, b: usize, f: usize| -> f32 {
        if b <= a {
            return 0.0;
        }
        (a..b).map(|t| frames[t * NOTE_BINS + f]).sum::<f32>() / (b - a) as f32
    };
    let midi = |f: usize| MIDI_OFFSET + f as u8;

    let mut notes = Vec::new();
    for (start, f) in onsets {
        if start + 1 >= n {
            continue;
        }
        let mut i = start + 1;
        let mut k = 0;
        while i + 1 < n && k < p.energy_tol {
            if rem[i * NOTE_BINS + f] < thr {
                k += 1;
            } else {
                k = 0;
            }
            i += 1;
        }
        i -= k;
        if i - start <= p.min_note_len {
            continue;
        }
        for t in start..i {
            erase(&mut rem, t, f);
        }
        notes.push(FrameNote {
            start: base + start,
            end: base + i,
            midi: midi(f),
            amplitude: mean(start, i, f),
        });
    }

    if p.melodia_trick {
        // np.argmax over the remaining energy, repeatedly: energy only ever drops to 0, so the
        // cells above threshold in (value desc, row-major index asc) order, skipping erased
        // ones, visit the same maxima in the same order.
        let mut cells: Vec<usize> = (0..rem.len()).filter(|&i| rem[i] > thr).collect();
        cells.sort_by(|&a, &b| rem[b].total_cmp(&rem[a]).then(a.cmp(&b)));
        for cell in cells {
            if rem[cell] <= thr {
                continue;
            }
            let (mid, f) = (cell / NOTE_BINS, cell % NOTE_BINS);
            rem[cell] = 0.0;
            let tol = p.energy_tol;
            // Forward.
            let mut i = mid + 1;
            let mut k = 0;
            while i + 1 < n && k < tol {
                if rem[i * NOTE_BINS + f] < thr {
                    k += 1;
                } else {
                    k = 0;
                }
                erase(&mut rem, i, f);
                i += 1;
            }
            let i_end = i as i64 - 1 - k as i64;
            // Backward (never reaches frame 0 of the span, as in the package).
            let mut i = mid as i64 - 1;
            let mut k = 0;
            while i > 0 && k < tol {
                let t = i as usize;
                if rem[t * NOTE_BINS + f] < thr {
                    k += 1;
                } else {
                    k = 0;
                }
                erase(&mut rem, t, f);
                i -= 1;
            }
            let i_start = i + 1 + k as i64;
            if i_end - i_start <= p.min_note_len as i64 {
                continue;
            }
            let (s, e) = (i_start as usize, i_end as usize);
            notes.push(FrameNote {
                start: base + s,
                end: base + e,
                midi: midi(f),
                amplitude: mean(s, e, f),
            });
        }
    }
    notes
}

/// The package's `output_to_notes_polyphonic` on a whole posteriorgram, in its order (onset
/// notes latest first, then melodia notes).
pub fn output_to_notes(g: &Posteriorgram, p: &PolyParams) -> Vec<FrameNote> {
    let mut scale = OnsetScale::default();
    let bins = p.bins();
    scale.update(g, &bins, g.end());
    decode_span(g, g.offset, g.end(), scale.factor(), &[], p)
}

/// [`output_to_notes`] with times, velocities and cents, sorted by start then pitch.
pub fn posteriorgram_to_notes(g: &Posteriorgram, p: &PolyParams) -> Vec<Note> {
    let mut notes: Vec<Note> = output_to_notes(g, p).iter().map(|n| g.to_note(n)).collect();
    sort_notes(&mut notes);
    notes
}

fn sort_notes(notes: &mut [Note]) {
    notes.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.midi.cmp(&b.midi)));
}

/// The streaming decoder over a growing posteriorgram (see the module docs).
#[derive(Debug)]
struct SegmentDecoder {
    params: PolyParams,
    grid: Posteriorgram,
    base: usize,
    next_decode: usize,
    /// Committed notes that may overlap frames not yet decoded.
    committed: Vec<FrameNote>,
    scale: OnsetScale,
}

impl SegmentDecoder {
    fn new(params: PolyParams) -> Self {
        Self {
            params,
            grid: Posteriorgram::default(),
            base: 0,
            next_decode: SEGMENT + LOOKAHEAD,
            committed: Vec::new(),
            scale: OnsetScale::default(),
        }
    }

    /// Appends frames and returns the notes that became final.
    fn push(&mut self, note: &[f32], onset: &[f32], contour: &[f32]) -> Vec<Note> {
        self.grid.push_rows(note, onset, contour);
        let mut out = Vec::new();
        while self.grid.end() >= self.next_decode {
            out.extend(self.decode(false));
        }
        out
    }

    fn finish(&mut self) -> Vec<Note> {
        self.decode(true)
    }

    fn decode(&mut self, final_: bool) -> Vec<Note> {
        let end = self.grid.end();
        let base = self.base;
        if end <= base {
            return Vec::new();
        }
        let bins = self.params.bins();
        self.scale.update(&self.grid, &bins, end);
        let notes = decode_span(
            &self.grid,
            base,
            end,
            self.scale.factor(),
            &self.committed,
            &self.params,
        );
        let horizon = (base + SEGMENT).min(end);
        let (commit, next_base): (Vec<FrameNote>, usize) = if final_ {
            (notes, end)
        } else {
            let overflow = end - base >= MAX_SPAN;
            let mut next = horizon;
            let mut commit = Vec::new();
            for n in notes {
                if n.end < horizon || (overflow && n.start < horizon) {
                    commit.push(n);
                } else if n.start < horizon {
                    // Still sounding at the horizon: decode it again from just before its onset.
                    next = next.min(n.start.saturating_sub(1).max(base));
                }
            }
            (commit, next)
        };
        let mut out: Vec<Note> = commit.iter().map(|n| self.grid.to_note(n)).collect();
        sort_notes(&mut out);
        self.committed.extend(commit);
        self.committed.retain(|n| n.end > next_base);
        // No progress (a note as long as the buffer): wait for a segment more of frames.
        self.next_decode = (next_base + SEGMENT + LOOKAHEAD).max(end + SEGMENT);
        self.base = next_base;
        // frame_diff and the peak test look up to 3 frames back.
        self.grid.drop_before(next_base.saturating_sub(3));
        out
    }
}

/// 16 kHz -> 22.05 kHz with the resampler's delay removed (sample `n` out is at `n / 22050` s).
struct Upsampler {
    inner: FftFixedIn<f32>,
    pending: Vec<f32>,
    out: Vec<Vec<f32>>,
    skip: usize,
    frames_in: u64,
    frames_out: u64,
}

impl std::fmt::Debug for Upsampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upsampler")
            .field("frames_in", &self.frames_in)
            .finish_non_exhaustive()
    }
}

impl Upsampler {
    fn new() -> Result<Self, PolyError> {
        let inner = FftFixedIn::<f32>::new(
            INPUT_RATE as usize,
            MODEL_RATE as usize,
            RESAMPLE_CHUNK,
            2,
            1,
        )
        .map_err(|e| PolyError::Resampler(e.to_string()))?;
        Ok(Self {
            out: vec![vec![0f32; inner.output_frames_max()]],
            skip: inner.output_delay(),
            pending: Vec::with_capacity(RESAMPLE_CHUNK),
            inner,
            frames_in: 0,
            frames_out: 0,
        })
    }

    fn process(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), PolyError> {
        self.frames_in += samples.len() as u64;
        for &s in samples {
            // Non-finite input would poison the FFT (and every later window): silence it.
            self.pending.push(if s.is_finite() {
                s.clamp(-8.0, 8.0)
            } else {
                0.0
            });
            if self.pending.len() == self.inner.input_frames_next() {
                self.run(false, out)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), PolyError> {
        let expected = self.frames_in * u64::from(MODEL_RATE) / u64::from(INPUT_RATE);
        let mut guard = 0;
        while self.frames_out < expected && guard < 16 {
            let before = out.len();
            self.run(true, out)?;
            let keep = ((out.len() - before) as u64).min(expected - self.frames_out);
            out.truncate(before + keep as usize);
            self.frames_out += keep;
            guard += 1;
        }
        Ok(())
    }

    fn run(&mut self, partial: bool, out: &mut Vec<f32>) -> Result<(), PolyError> {
        let (_, produced) = if partial {
            let input = [&self.pending[..]];
            let input = (!self.pending.is_empty()).then_some(&input[..]);
            self.inner
                .process_partial_into_buffer(input, &mut self.out, None)
        } else {
            self.inner
                .process_into_buffer(&[&self.pending[..]], &mut self.out, None)
        }
        .map_err(|e| PolyError::Resampler(e.to_string()))?;
        self.pending.clear();
        let skip = self.skip.min(produced);
        self.skip -= skip;
        out.extend_from_slice(&self.out[0][skip..produced]);
        if !partial {
            self.frames_out += (produced - skip) as u64;
        }
        Ok(())
    }
}

/// Streaming polyphonic transcriber: 16 kHz mono audio in, final notes out.
#[derive(Debug)]
pub struct PolyTranscriber {
    model: Arc<BasicPitch>,
    resampler: Upsampler,
    /// 22.05 kHz audio with the lead-in zeros, from sample `audio_offset` of that stream.
    audio: Vec<f32>,
    audio_offset: usize,
    /// Next window to run.
    window: usize,
    decoder: SegmentDecoder,
}

impl PolyTranscriber {
    pub fn new(model: Arc<BasicPitch>, params: PolyParams) -> Result<Self, PolyError> {
        params.validate()?;
        Ok(Self {
            model,
            resampler: Upsampler::new()?,
            audio: vec![0.0; LEAD_IN],
            audio_offset: 0,
            window: 0,
            decoder: SegmentDecoder::new(params),
        })
    }

    /// Takes the next 16 kHz samples; returns notes that are final (sorted by start).
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<Note>, PolyError> {
        self.resampler.process(samples, &mut self.audio)?;
        let mut out = Vec::new();
        while self.audio_offset + self.audio.len() >= self.window * WINDOW_HOP + WINDOW {
            out.extend(self.run_window(usize::MAX)?);
        }
        Ok(out)
    }

    /// Ends the stream: runs the last (zero-padded) windows and returns the remaining notes.
    pub fn finish(mut self) -> Result<Vec<Note>, PolyError> {
        self.resampler.flush(&mut self.audio)?;
        let total_samples = self.resampler.frames_out as usize;
        // unwrap_output: floor(samples * ANNOTATIONS_FPS / rate) frames, FPS = 22050 // 256.
        let total_frames = total_samples * (MODEL_RATE as usize / HOP) / MODEL_RATE as usize;
        let padded = LEAD_IN + total_samples;
        let mut out = Vec::new();
        while self.window * WINDOW_HOP < padded && self.window * FRAMES_PER_WINDOW < total_frames {
            let need = self.window * WINDOW_HOP + WINDOW;
            let have = self.audio_offset + self.audio.len();
            if have < need {
                self.audio.resize(self.audio.len() + need - have, 0.0);
            }
            out.extend(self.run_window(total_frames)?);
        }
        out.extend(self.decoder.finish());
        sort_notes(&mut out);
        Ok(out)
    }

    /// Runs the next window and feeds its kept frames (below `limit`) to the decoder.
    fn run_window(&mut self, limit: usize) -> Result<Vec<Note>, PolyError> {
        let start = self.window * WINDOW_HOP - self.audio_offset;
        let post = self.model.forward(&self.audio[start..start + WINDOW])?;
        let first = self.window * FRAMES_PER_WINDOW;
        let keep = FRAMES_PER_WINDOW.min(limit.saturating_sub(first));
        let rows = OVERLAP_FRAMES / 2..OVERLAP_FRAMES / 2 + keep;
        let notes = self.decoder.push(
            &post.note[rows.start * NOTE_BINS..rows.end * NOTE_BINS],
            &post.onset[rows.start * NOTE_BINS..rows.end * NOTE_BINS],
            &post.contour[rows.start * CONTOUR_BINS..rows.end * CONTOUR_BINS],
        );
        self.window += 1;
        // Samples before the next window are no longer needed.
        let next = (self.window * WINDOW_HOP - self.audio_offset).min(self.audio.len());
        self.audio.drain(..next);
        self.audio_offset += next;
        Ok(notes)
    }
}

/// Transcribes a whole 16 kHz buffer (the same notes as pushing it to a [`PolyTranscriber`] in
/// any pieces).
pub fn transcribe_poly(
    samples_16k: &[f32],
    model: &Arc<BasicPitch>,
    params: PolyParams,
) -> Result<Vec<Note>, PolyError> {
    let mut t = PolyTranscriber::new(Arc::clone(model), params)?;
    let mut notes = t.push(samples_16k)?;
    notes.extend(t.finish()?);
    sort_notes(&mut notes);
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A posteriorgram with a few synthetic notes: `(start, end, bin, level)`; onsets get a
    /// single-frame peak at the start.
    fn synthetic(frames: usize, notes: &[(usize, usize, usize, f32)]) -> Posteriorgram {
        let mut note = vec![0.05f32; frames * NOTE_BINS];
        let mut onset = vec![0.02f32; frames * NOTE_BINS];
        for &(s, e, f, level) in notes {
            for t in s..e {
                note[t * NOTE_BINS + f] = level;
            }
            onset[s * NOTE_BINS + f] = 0.9;
        }
        Posteriorgram::new(note, onset, vec![0.0; frames * CONTOUR_BINS]).unwrap()
    }

    #[test]
    fn poly_decodes_clear_notes() {
        let g = synthetic(
            300,
            &[(10, 60, 39, 0.8), (20, 200, 48, 0.7), (100, 105, 10, 0.9)],
        );
        let mut notes = output_to_notes(&g, &PolyParams::default());
        notes.sort_by_key(|n| (n.start, n.midi));
        // The 5-frame note is too short; the others come out whole.
        let got: Vec<(usize, usize, u8)> = notes.iter().map(|n| (n.start, n.end, n.midi)).collect();
        assert_eq!(got, [(10, 60, 60), (20, 200, 69)]);
        assert!((notes[0].amplitude - 0.8).abs() < 1e-6);
    }

    #[test]
    fn poly_melodia_finds_notes_without_onsets() {
        let mut g = synthetic(200, &[(40, 120, 30, 0.6)]);
        // Remove the onset: only the melodia trick can find it.
        g.onset.iter_mut().for_each(|v| *v = 0.02);
        let p = PolyParams {
            infer_onsets: false,
            ..PolyParams::default()
        };
        let notes = output_to_notes(&g, &p);
        assert_eq!(notes.len(), 1);
        // The package's melodia notes end a frame before the energy does (`i - 1 - k`).
        assert_eq!((notes[0].start, notes[0].end, notes[0].midi), (40, 119, 51));
        let none = output_to_notes(
            &g,
            &PolyParams {
                melodia_trick: false,
                ..p
            },
        );
        assert!(none.is_empty());
    }

    /// The segmented decoder finds notes across segment edges once and whole, like the
    /// whole-buffer decode.
    #[test]
    fn poly_segments_stitch_notes() {
        let mut spec = Vec::new();
        // Notes every 37 frames on rotating pitches, some long enough to cross many segments.
        for i in 0..60 {
            let s = 5 + i * 37;
            let len = if i % 7 == 0 { 900 } else { 30 + (i * 13) % 70 };
            // Pitches 7 bins apart (mod 61): no two overlapping notes are neighbours.
            spec.push((s, s + len, 20 + (i * 7) % 61, 0.5 + (i % 4) as f32 * 0.1));
        }
        let frames = 5 + 60 * 37 + 1000;
        let g = synthetic(frames, &spec);
        let p = PolyParams::default();
        let mut whole: Vec<Note> = posteriorgram_to_notes(&g, &p);
        let mut dec = SegmentDecoder::new(p);
        let mut streamed = Vec::new();
        for t0 in (0..frames).step_by(FRAMES_PER_WINDOW) {
            let t1 = (t0 + FRAMES_PER_WINDOW).min(frames);
            streamed.extend(dec.push(
                &g.note[t0 * NOTE_BINS..t1 * NOTE_BINS],
                &g.onset[t0 * NOTE_BINS..t1 * NOTE_BINS],
                &g.contour[t0 * CONTOUR_BINS..t1 * CONTOUR_BINS],
            ));
        }
        streamed.extend(dec.finish());
        sort_notes(&mut streamed);
        sort_notes(&mut whole);
        assert_eq!(whole.len(), spec.len());
        assert_eq!(streamed, whole);
    }

    #[test]
    fn poly_frame_times_follow_the_windows() {
        assert_eq!(frame_time(0), 0.0);
        assert!((frame_time(1) - 256.0 / 22050.0).abs() < 1e-12);
        // The first frame of the second window is one window hop in.
        assert!((frame_time(142) - 36164.0 / 22050.0).abs() < 1e-12);
    }

    fn model() -> Option<Arc<BasicPitch>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/basic-pitch");
        if !dir.join("model.safetensors").exists() {
            eprintln!("skipping: no converted model at {}", dir.display());
            return None;
        }
        Some(Arc::new(BasicPitch::load(&dir).unwrap()))
    }

    fn chorale(seconds: f64) -> Vec<f32> {
        let path = "/work/shared/data/music/synth/poly01_bach_bwv66.6_piano.flac";
        let path = std::path::Path::new(path);
        if !path.exists() {
            // A synthetic chord sequence when the corpus is absent.
            return (0..(seconds * 16000.0) as usize)
                .map(|i| {
                    let t = i as f32 / 16000.0;
                    let base = [220.0f32, 277.2, 329.6][(t / 0.7) as usize % 3];
                    (0.3 * (std::f32::consts::TAU * base * t).sin()
                        + 0.2 * (std::f32::consts::TAU * base * 1.5 * t).sin())
                        * (-(t % 0.7) * 2.0).exp()
                })
                .collect();
        }
        let mut a = crate::audio::file::decode_file_16k(path).unwrap();
        a.truncate((seconds * 16000.0) as usize);
        a
    }

    /// Random chunk sizes give exactly the notes of the whole-buffer call.
    #[test]
    fn poly_chunking_does_not_change_notes() {
        let Some(model) = model() else { return };
        let audio = chorale(12.0);
        let whole = transcribe_poly(&audio, &model, PolyParams::default()).unwrap();
        assert!(whole.len() > 10, "only {} notes", whole.len());
        let mut seed = 7u64;
        for _ in 0..2 {
            let mut t = PolyTranscriber::new(Arc::clone(&model), PolyParams::default()).unwrap();
            let mut got = Vec::new();
            let mut rest = &audio[..];
            while !rest.is_empty() {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let n = ((seed >> 33) as usize % 9000 + 1).min(rest.len());
                got.extend(t.push(&rest[..n]).unwrap());
                rest = &rest[n..];
            }
            got.extend(t.finish().unwrap());
            sort_notes(&mut got);
            assert_eq!(got, whole);
        }
    }
}

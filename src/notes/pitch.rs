//! Frame-level F0 with voicing: probabilistic YIN (pYIN, Mauch & Dixon 2014) decoded by an HMM
//! with a fixed lag, so it runs on a live stream.
//!
//! Per 10 ms frame, YIN's cumulative mean normalised difference is computed (by FFT) over a 64 ms
//! window; instead of one threshold, a Beta(2, b) prior over thresholds turns its troughs into F0
//! candidates with probabilities, and what is left is the probability of "unvoiced" (from 500 Hz up
//! a candidate's frequency is read off the nearest spectral peak, where the lag grid is coarse and
//! inharmonic partials pull the trough). An HMM over pitch bins (20 cents) x {voiced, unvoiced}
//! with local pitch transitions then picks a smooth path: octave slips and one-frame glitches that
//! single-frame YIN makes cost more than they explain. The path is decided `lag` frames behind the
//! newest frame (fixed-lag Viterbi), which bounds latency and memory; the decision for each frame
//! is final once made.
//!
//! Besides F0, each frame carries its level and a spectral flux (an onset cue used by the note
//! segmenter to split repeated notes of the same pitch). Hand-written: no maintained Rust crate
//! offers a streaming pYIN (the `pyin` crate is offline, whole-signal).

use std::{collections::VecDeque, sync::Arc};

use rustfft::{Fft, FftPlanner, num_complex::Complex32};

use crate::nn::swift_f0::{self, SwiftF0};

/// Settings of the F0 tracker. Defaults suit voice and melody instruments at 16 kHz.
#[derive(Debug, Clone, PartialEq)]
pub struct PitchParams {
    pub sample_rate: u32,
    /// Lowest F0 searched (Hz). 32 Hz is just above C1 (32.7 Hz) and just inside the longest period
    /// YIN can measure in `frame` (half of it: 31.25 Hz at 1024 samples), so a bass guitar's or a
    /// double bass's low E (41.2 Hz) and F (43.7 Hz) are heard. At 55 Hz (A1) they were not: a
    /// picked bass reel of the `test` renders lost 5 notes, the held-out slap-bass files 2-25 each.
    /// Note F1 55 -> 32 Hz (whole-file prior): held-out-instrument renders 0.927 -> 0.931,
    /// training-instrument renders 0.906 -> 0.908, a quarter of the training renders (150 files)
    /// 0.829 -> 0.829, shared synth melodies 0.919 -> 0.919, `test` 0.865 -> 0.864 (13 bass notes
    /// gained; lead 7 fifths, a chord per key read two octaves down, now also reads its lowest
    /// notes: 16 more false ones), held-out renders in 0.8 s reverberation 0.675 -> 0.675,
    /// noise-bed false notes 9 -> 9. 40 and 45 Hz read 0.928 / 0.908 and 0.926 / 0.908 on the first
    /// two. Real singing needs `LOWEST_SUNG` (in `track.rs`) with it: without, SSVD train/valid
    /// read 0.677 -> 0.672 (46 notes under 55 Hz in the rests).
    pub fmin: f32,
    /// Highest F0 searched (Hz). 4200 Hz is C8, the top of a piano and of a piccolo. At
    /// 2000 Hz (B6) a piccolo's high notes came out an octave low: on the held-out-instrument
    /// renders note F1 rose 0.782 -> 0.796 with the higher limit (piccolo files up to +0.45,
    /// no voice changed; two slap-bass files lost 0.02-0.09 to high candidates in the slap).
    pub fmax: f32,
    /// Analysis window (samples); YIN integrates over half of it.
    pub frame: usize,
    /// Frame hop (samples); 160 = 10 ms.
    pub hop: usize,
    /// Frames the HMM looks ahead before deciding a frame (latency = lag x hop). 10: against
    /// 12, notes come out 20 ms sooner (p50 220 -> 200 ms after the note-off on the shared
    /// melodies) with note F1 within 0.001 on every render set and the same notes on two real
    /// sung clips; 8 cost 0.003-0.006 F1 (`cargo bench --bench notes`).
    pub lag: usize,
    /// HMM pitch-bin width (semitones).
    pub resolution: f32,
    /// Largest pitch move per frame the HMM allows (semitones).
    pub max_step_semitones: f32,
    /// Probability of switching between voiced and unvoiced per frame.
    pub switch_prob: f32,
    /// Frames quieter than this (dBFS) are never voiced (room noise is not a note).
    pub silence_db: f32,
    /// Mean of pYIN's Beta(2, b) prior over YIN thresholds (the paper offers 0.1, 0.15 and
    /// 0.2). Higher lets rougher periodicity count as voiced. At 0.1 (Beta(2, 18)) a slap
    /// bass's low notes, whose YIN troughs sit at 0.2-0.37 under the previous notes' ringing,
    /// got 2-5% voicing and were lost; 0.15 raised note F1 on the held-out-instrument renders
    /// 0.800 -> 0.823 and on the shared synth melodies 0.886 -> 0.913 (micro) for 2 more false
    /// notes on 5.6 min of noise beds. 0.2 gained a little more on those renders (0.835) but
    /// doubled the noise notes (21), and is a larger step for voices we could not re-measure.
    pub threshold_mean: f32,
}

impl PitchParams {
    /// Seconds per frame.
    pub fn frame_s(&self) -> f64 {
        self.hop as f64 / f64::from(self.sample_rate)
    }
}

impl Default for PitchParams {
    fn default() -> Self {
        Self {
            sample_rate: 16_000,
            fmin: 32.0,
            fmax: 4200.0,
            frame: 1024,
            hop: 160,
            lag: 10,
            resolution: 0.2,
            max_step_semitones: 4.0,
            switch_prob: 0.01,
            silence_db: -60.0,
            threshold_mean: 0.15,
        }
    }
}

/// A learned F0 model's posterior over a whole recording, computed ahead of tracking: per frame
/// of the model's own hop (frame `k` centred at `k * hop_s`), a distribution over `bins`
/// log-spaced pitches from `fmin` to `fmax` Hz. pYIN's candidates are reweighted by it
/// ([`PitchTracker::with_prior`]): the trough whose pitch the model also believes wins, which
/// is what pYIN gets wrong when a room or noise blurs its troughs (the 2nd harmonic taken for
/// the fundamental, a trough filled in). Offline it covers the whole recording
/// ([`PitchPrior::from_swift_f0`]); live, [`LivePrior`] grows one as the audio arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct PitchPrior {
    hop_s: f64,
    fmin: f32,
    fmax: f32,
    bins: usize,
    /// Index of the first frame held (live priors drop frames the tracker has passed).
    first: usize,
    /// `frames x bins`, row-major, from frame `first` on.
    probs: Vec<f32>,
}

/// Added to the prior's density before it weighs a candidate, so that a trough the model gives
/// nothing keeps a little of its pYIN mass (the model is not always right: SwiftF0 puts a flute
/// an octave up). 0.02 was the one value measured (README, "a learned pitch prior").
const PRIOR_FLOOR: f32 = 0.02;

impl PitchPrior {
    /// Checks the shape and range; `probs` holds `bins` values per frame.
    pub fn new(
        hop_s: f64,
        fmin: f32,
        fmax: f32,
        bins: usize,
        probs: Vec<f32>,
    ) -> Result<Self, String> {
        if !(hop_s.is_finite() && hop_s > 0.0) {
            return Err(format!("hop {hop_s} s is not a positive time"));
        }
        if !(fmin.is_finite() && fmin > 0.0 && fmax.is_finite() && fmax > fmin) {
            return Err(format!("pitch range {fmin}..{fmax} Hz is empty"));
        }
        if bins < 2 || probs.is_empty() || !probs.len().is_multiple_of(bins) {
            return Err(format!(
                "{} values are not whole frames of {bins} pitch bins",
                probs.len()
            ));
        }
        if probs.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err("a probability is negative or not a number".into());
        }
        Ok(Self {
            hop_s,
            fmin,
            fmax,
            bins,
            first: 0,
            probs,
        })
    }

    /// SwiftF0's posterior over a whole recording (16 kHz).
    pub fn from_swift_f0(net: &SwiftF0, samples: &[f32]) -> Self {
        let mut p = Self::empty_swift_f0(net);
        p.probs = net.posterior(samples);
        p
    }

    /// A prior on SwiftF0's frames and bins that holds no frame yet.
    fn empty_swift_f0(net: &SwiftF0) -> Self {
        let c = net.config();
        Self {
            hop_s: swift_f0::HOP as f64 / f64::from(swift_f0::SAMPLE_RATE),
            fmin: c.fmin,
            fmax: c.fmax,
            bins: swift_f0::PITCH_BINS,
            first: 0,
            probs: Vec::new(),
        }
    }

    /// Frames held.
    fn frames(&self) -> usize {
        self.probs.len() / self.bins
    }

    /// The frames `at` reads for time `t_s` (the two around it, the last held at the end).
    fn frames_at(&self, t_s: f64) -> (usize, usize) {
        let k0 = (t_s / self.hop_s).max(0.0).floor() as usize;
        (k0, k0 + 1)
    }

    /// The prior's probability at `hz`, `t_s` seconds in: linear between the two nearest frames
    /// and the two nearest bins. Up to an octave above its pitch range: its octave below's;
    /// further outside it: the mean over bins (no opinion).
    fn at(&self, t_s: f64, hz: f32) -> f32 {
        let neutral = 1.0 / self.bins as f32;
        // A pitch above the network's range has the weight of its octave below, which is
        // where the network puts it: so the prior cannot pull a high note an octave down
        // (SwiftF0 stops at 2094 Hz; a piccolo plays to 4 kHz) and pYIN decides between them.
        if hz > self.fmax && hz <= 2.0 * self.fmax {
            return self.at(t_s, hz / 2.0);
        }
        let top = (self.bins - 1) as f32;
        let pos = (hz / self.fmin).log2() / (self.fmax / self.fmin).log2() * top;
        if !(0.0..=top).contains(&pos) {
            return neutral;
        }
        if self.frames() == 0 {
            return neutral;
        }
        let last = self.first + self.frames() - 1;
        let ft = ((t_s / self.hop_s).max(0.0) as f32).clamp(self.first as f32, last as f32);
        let (k0, b0) = (ft.floor() as usize, pos.floor() as usize);
        let (k1, b1) = ((k0 + 1).min(last), (b0 + 1).min(self.bins - 1));
        let (wt, wb) = (ft - k0 as f32, pos - b0 as f32);
        let row = |k: usize| {
            let k = k - self.first;
            let r = &self.probs[k * self.bins..(k + 1) * self.bins];
            r[b0] * (1.0 - wb) + r[b1] * wb
        };
        row(k0) * (1.0 - wt) + row(k1) * wt
    }

    /// Reweights a frame's candidates by the prior, keeping their total (pYIN's voicing).
    fn reweight(&self, t_s: f64, cands: &mut [Candidate]) {
        let total: f32 = cands.iter().map(|c| c.p).sum();
        let mut sum = 0.0;
        for c in cands.iter_mut() {
            c.p *= self.at(t_s, c.hz) + PRIOR_FLOOR;
            sum += c.p;
        }
        if sum > 0.0 {
            for c in cands.iter_mut() {
                c.p *= total / sum;
            }
        }
    }
}

/// SwiftF0 run on a live stream: a [`PitchPrior`] that grows as audio arrives. Frames are
/// computed four at a time (a frame needs 6 frames of context either side, so one at a time
/// would cost the work of 13 frames each; four at a time cost 3 % of a core), a batch once the
/// stream holds [`LIVE_LOOKAHEAD`] samples past the batch's last frame. The frames of a batch
/// so see 16-64 ms of audio past their centre (the whole-file posterior sees 176 ms; 32 ms kept
/// the gain on singing in a room, README "a learned pitch prior"). The batches do not depend on
/// how the stream is chunked.
#[derive(Debug)]
pub struct LivePrior {
    net: Arc<SwiftF0>,
    prior: PitchPrior,
    /// Audio from stream sample `offset` on: what the next batch's context reaches back to.
    audio: Vec<f32>,
    offset: usize,
    /// Next frame to compute; all before it are computed.
    next: usize,
    finished: bool,
}

/// Frames per network run of a [`LivePrior`].
const LIVE_BATCH: usize = 4;
/// Samples past the last frame of a batch the stream must hold before the batch is computed.
pub const LIVE_LOOKAHEAD: usize = swift_f0::HOP;

impl LivePrior {
    pub fn new(net: Arc<SwiftF0>) -> Self {
        Self {
            prior: PitchPrior::empty_swift_f0(&net),
            net,
            audio: Vec::new(),
            offset: 0,
            next: 0,
            finished: false,
        }
    }

    fn len(&self) -> usize {
        self.offset + self.audio.len()
    }

    /// Adds samples (non-finite ones as silence) and computes the batches they complete.
    fn push(&mut self, samples: &[f32]) {
        self.audio
            .extend(samples.iter().map(|s| if s.is_finite() { *s } else { 0.0 }));
        let hop = swift_f0::HOP;
        while (self.next + LIVE_BATCH - 1) * hop + LIVE_LOOKAHEAD <= self.len() {
            let end = (self.next + LIVE_BATCH - 1) * hop + LIVE_LOOKAHEAD;
            self.compute(LIVE_BATCH, end, end / hop);
        }
    }

    /// End of stream: the frames left, from all the audio.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let total = SwiftF0::frames(self.len());
        if total > self.next {
            self.compute(total - self.next, self.len(), total);
        }
    }

    /// Computes frames `next .. next + count` from the audio before stream sample `end`, in a
    /// stream of `total` frames so far.
    fn compute(&mut self, count: usize, end: usize, total: usize) {
        let audio = &self.audio[..end - self.offset];
        let mut z = self
            .net
            .logits_range(audio, self.offset, self.next, count, total);
        swift_f0::softmax_rows(&mut z);
        self.prior.probs.extend_from_slice(&z);
        self.next += count;
        // Keep the audio the next batch's context needs: CONTEXT frames back, half the
        // largest FFT before that.
        let keep_from =
            (self.next.saturating_sub(swift_f0::CONTEXT) * swift_f0::HOP).saturating_sub(2048);
        if keep_from > self.offset {
            self.audio.drain(..keep_from - self.offset);
            self.offset = keep_from;
        }
    }

    /// Whether the frames the tracker reads at `t_s` are computed.
    fn ready(&self, t_s: f64) -> bool {
        self.finished || self.prior.frames_at(t_s).1 < self.next
    }

    /// Drops the frames before the ones read at `t_s` (the tracker only moves forward).
    fn forget_before(&mut self, t_s: f64) {
        let k0 = self.prior.frames_at(t_s).0.min(self.next.saturating_sub(1));
        if k0 > self.prior.first {
            let n = (k0 - self.prior.first).min(self.prior.frames());
            self.prior.probs.drain(..n * self.prior.bins);
            self.prior.first += n;
        }
    }
}

/// Where a tracker's learned prior comes from.
#[derive(Debug)]
enum PriorSource {
    /// Computed ahead over the whole recording.
    Whole(Arc<PitchPrior>),
    /// Computed as the stream arrives.
    Live(Box<LivePrior>),
}

/// One decided frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PitchFrame {
    /// Frame index; its centre is at sample `index * hop` of the input.
    pub index: u64,
    /// F0 in Hz when voiced, else 0.
    pub hz: f32,
    pub voiced: bool,
    /// Probability mass of all F0 candidates (pYIN's voicing probability), 0..1.
    pub p_voiced: f32,
    /// RMS level of the frame's central 20 ms, dBFS.
    pub rms_db: f32,
    /// Half-wave rectified log-spectral flux against the frame two hops back (onset cue).
    pub flux: f32,
    /// Spectral power of the analysis window by pitch class (C = 0), summed over 0.5-5 kHz
    /// (the harmonics a 64 ms window resolves to a semitone): where a new note's pitch class
    /// began to sound, before its pitch took over (zero in frames too quiet to analyse).
    pub chroma: [f32; 12],
}

/// An F0 candidate of one frame: a YIN trough.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    hz: f32,
    bin: usize,
    p: f32,
}

/// Everything the decoder keeps about a frame until it is decided.
#[derive(Debug, Clone)]
struct Pending {
    index: u64,
    candidates: Vec<Candidate>,
    p_voiced: f32,
    rms_db: f32,
    flux: f32,
    chroma: [f32; 12],
    /// Best predecessor of each state (voiced bins, then unvoiced bins).
    back: Vec<u16>,
}

/// Streaming pYIN. Feed samples with [`PitchTracker::push`]; decided frames come out `lag`
/// frames behind.
pub struct PitchTracker {
    p: PitchParams,
    n_bins: usize,
    tau_min: usize,
    tau_max: usize,
    /// Beta(2, b) prior mass of each of 100 thresholds 0.01..1.
    beta: Vec<f32>,
    /// log of the triangular transition weight for a move of `k - band` bins.
    log_trans: Vec<f32>,
    band: usize,
    log_stay: f32,
    log_switch: f32,
    // Framing: samples not yet consumed, and the index of the next frame to analyse.
    buf: VecDeque<f32>,
    next_frame: u64,
    started: bool,
    // Analysis scratch.
    fft_n: usize,
    fwd: Arc<dyn Fft<f32>>,
    inv: Arc<dyn Fft<f32>>,
    spec_fft: Arc<dyn Fft<f32>>,
    a: Vec<Complex32>,
    b: Vec<Complex32>,
    scratch: Vec<Complex32>,
    frame: Vec<f32>,
    window: Vec<f32>,
    spec: Vec<Complex32>,
    log_mag: VecDeque<Vec<f32>>,
    diff: Vec<f32>,
    /// `(FFT bin, pitch class)` of the bins the chroma sums.
    chroma_bins: Vec<(usize, u8)>,
    chroma_fft: Arc<dyn Fft<f32>>,
    chroma_window: Vec<f32>,
    chroma_spec: Vec<Complex32>,
    chroma: [f32; 12],
    /// The strongest bin's power in the current frame's Hann spectrum (see
    /// [`PitchTracker::spectral_peak`]).
    spec_max: f32,
    // Decoder state: log-probability of the best path into each state.
    delta: Vec<f32>,
    next_delta: Vec<f32>,
    pending: VecDeque<Pending>,
    prior: Option<PriorSource>,
}

impl std::fmt::Debug for PitchTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PitchTracker")
            .field("params", &self.p)
            .field("next_frame", &self.next_frame)
            .finish_non_exhaustive()
    }
}

/// The flux looks at the central 32 ms only: with the whole 64 ms window an attack shows up
/// 30 ms before it happens.
const FLUX_WIN: usize = 512;
/// Spectral bins used by the flux (up to 5 kHz at 16 kHz: the harmonics that carry onsets).
const FLUX_BINS: usize = 160;
/// Lowest frequency the chroma sums (Hz): below it a 64 ms Hann window's main lobe (+-31 Hz)
/// is wider than a semitone.
const CHROMA_MIN_HZ: f32 = 500.0;
/// Highest frequency the chroma sums (Hz): the harmonics that tell pitch classes apart.
const CHROMA_MAX_HZ: f32 = 5000.0;
/// From this F0 (Hz) up, a YIN candidate's frequency is taken from the spectral peak within
/// [`REFINE_SEMITONES`] of it ([`PitchTracker::spectral_peak`]). A short period is measured on a
/// coarse lag grid (13.6 samples at 1175 Hz), and a strong inharmonic partial pulls the lag that
/// fits best: a glockenspiel's 6.4x partial put its D6 84 cents sharp. From 500 Hz up a semitone
/// (30 Hz there) is as wide as the Hann window's main lobe is on either side of its peak (31 Hz),
/// so the spectrum tells the fundamental from a neighbour a semitone away, as for the chroma;
/// further down two notes of a legato step share one lobe. Whole-file prior, before -> after:
/// held-out-instrument renders 0.918 -> 0.923, training instruments 0.903 -> 0.905, `test` 0.845 ->
/// 0.848 (glockenspiel 0.20 -> 0.73, synth strings 0.52 -> 0.63, a piccolo reel 0.64 -> 0.60), real
/// singing (SSVD) 0.709 -> 0.709, shared synth 0.923 -> 0.919 (two choir notes). From 250 Hz the
/// renders gained more (0.926, 0.905, 0.852, shared 0.930) but singing fell to 0.693.
const REFINE_MIN_HZ: f32 = 500.0;
/// How far (semitones) the spectral peak may lie from the YIN candidate.
const REFINE_SEMITONES: f32 = 1.0;
/// How far under the frame's strongest bin (power) that peak may be: 30 dB. Below it the
/// fundamental is missing (a bell, a thin bass) and YIN's period stands.
const REFINE_FLOOR: f32 = 1e-3;
/// Where the parabola through `(-1, l)`, `(0, c)`, `(1, r)` has its vertex, within half a
/// step of the middle point: a trough's or a peak's position between grid points.
fn vertex_offset(l: f32, c: f32, r: f32) -> f32 {
    let denom = l - 2.0 * c + r;
    if denom.abs() > 1e-12 {
        (0.5 * (l - r) / denom).clamp(-0.5, 0.5)
    } else {
        0.0
    }
}

/// Half of the span (samples) the level is measured over: 20 ms around the frame centre.
const LEVEL_HALF: usize = 160;

impl PitchTracker {
    pub fn new(p: PitchParams) -> Self {
        let sr = p.sample_rate as f32;
        let tau_min = ((sr / p.fmax).floor() as usize).max(2);
        let tau_max = ((sr / p.fmin).ceil() as usize).min(p.frame / 2 - 1);
        let span = 12.0 * (p.fmax / p.fmin).log2();
        let n_bins = (span / p.resolution).ceil() as usize + 1;
        assert!(n_bins < u16::MAX as usize / 2, "too many pitch bins");
        // Prior over thresholds: Beta(2, b) CDF differences, b from the mean 2 / (2 + b);
        // I_x(2, b) = 1 - (1-x)^b (1 + b x).
        let b = 2.0 / f64::from(p.threshold_mean.clamp(0.01, 0.5)) - 2.0;
        let cdf = |x: f64| 1.0 - (1.0 - x).powf(b) * (1.0 + b * x);
        let beta = (1..=100)
            .map(|i| (cdf(i as f64 / 100.0) - cdf((i - 1) as f64 / 100.0)) as f32)
            .collect();
        let band = (p.max_step_semitones / p.resolution).round() as usize;
        let weights: Vec<f32> = (0..=2 * band)
            .map(|k| (band + 1 - k.abs_diff(band)) as f32)
            .collect();
        let sum: f32 = weights.iter().sum();
        let log_trans = weights.iter().map(|w| (w / sum).ln()).collect();
        let fft_n = (2 * p.frame).next_power_of_two();
        let mut planner = FftPlanner::new();
        let fwd = planner.plan_fft_forward(fft_n);
        let inv = planner.plan_fft_inverse(fft_n);
        let spec_fft = planner.plan_fft_forward(FLUX_WIN);
        let chroma_fft = planner.plan_fft_forward(p.frame);
        let scratch_len = fwd
            .get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len())
            .max(spec_fft.get_inplace_scratch_len())
            .max(chroma_fft.get_inplace_scratch_len());
        let states = 2 * n_bins;
        let chroma_bins = (1..p.frame / 2)
            .filter_map(|k| {
                let hz = k as f32 * sr / p.frame as f32;
                if !(CHROMA_MIN_HZ..=CHROMA_MAX_HZ).contains(&hz) {
                    return None;
                }
                let class = super::pitch_class(super::hz_to_midi(f64::from(hz)));
                Some((k, class as u8))
            })
            .collect();
        Self {
            n_bins,
            tau_min,
            tau_max,
            beta,
            log_trans,
            band,
            log_stay: (1.0 - p.switch_prob).ln(),
            log_switch: p.switch_prob.ln(),
            buf: VecDeque::new(),
            next_frame: 0,
            started: false,
            fft_n,
            fwd,
            inv,
            spec_fft,
            a: vec![Complex32::default(); fft_n],
            b: vec![Complex32::default(); fft_n],
            scratch: vec![Complex32::default(); scratch_len],
            frame: vec![0.0; p.frame],
            window: crate::dsp::stft::hann_window(FLUX_WIN),
            spec: vec![Complex32::default(); FLUX_WIN],
            log_mag: VecDeque::new(),
            diff: vec![0.0; p.frame / 2 + 1],
            chroma_bins,
            chroma_fft,
            chroma_window: crate::dsp::stft::hann_window(p.frame),
            chroma_spec: vec![Complex32::default(); p.frame],
            chroma: [0.0; 12],
            spec_max: 0.0,
            delta: vec![-(states as f32).ln(); states],
            next_delta: vec![0.0; states],
            pending: VecDeque::new(),
            prior: None,
            p,
        }
    }

    /// Reweights every frame's F0 candidates by a learned model's posterior over the same
    /// samples, from the first sample pushed (see [`PitchPrior`]).
    pub fn with_prior(mut self, prior: Arc<PitchPrior>) -> Self {
        self.prior = Some(PriorSource::Whole(prior));
        self
    }

    /// Reweights every frame's F0 candidates by SwiftF0's posterior computed as the samples
    /// arrive ([`LivePrior`]): a frame is analysed once its posterior is, up to 48 ms later
    /// than without.
    pub fn with_live_prior(mut self, net: Arc<SwiftF0>) -> Self {
        self.prior = Some(PriorSource::Live(Box::new(LivePrior::new(net))));
        self
    }

    /// Whether the frame to analyse next has its prior (always, without a live one).
    fn prior_ready(&self) -> bool {
        match &self.prior {
            Some(PriorSource::Live(l)) => l.ready(self.next_frame as f64 * self.p.frame_s()),
            _ => true,
        }
    }

    pub fn params(&self) -> &PitchParams {
        &self.p
    }

    /// Seconds per frame.
    pub fn frame_s(&self) -> f64 {
        self.p.frame_s()
    }

    /// Adds samples; returns the frames decided as a result, in order.
    pub fn push(&mut self, samples: &[f32]) -> Vec<PitchFrame> {
        if !self.started {
            // Frame t is centred on sample t * hop: the stream starts half a window in.
            self.buf.extend(std::iter::repeat_n(0.0, self.p.frame / 2));
            self.started = true;
        }
        self.buf
            .extend(samples.iter().map(|s| if s.is_finite() { *s } else { 0.0 }));
        if let Some(PriorSource::Live(l)) = &mut self.prior {
            l.push(samples);
        }
        let mut out = Vec::new();
        while self.buf.len() >= self.p.frame && self.prior_ready() {
            self.analyse_next();
            self.buf.drain(..self.p.hop);
            if self.pending.len() > self.p.lag {
                out.push(self.decide_oldest());
            }
        }
        out
    }

    /// Ends the stream: analyses the frames centred on the remaining samples and decides every
    /// pending frame on the best complete path.
    pub fn finish(&mut self) -> Vec<PitchFrame> {
        if let Some(PriorSource::Live(l)) = &mut self.prior {
            l.finish();
        }
        if self.started {
            // Frames a live prior held back.
            while self.buf.len() >= self.p.frame {
                self.analyse_next();
                self.buf.drain(..self.p.hop);
            }
            let centre_left = self.buf.len().saturating_sub(self.p.frame / 2);
            self.buf.extend(std::iter::repeat_n(0.0, self.p.frame / 2));
            let frames = centre_left.div_ceil(self.p.hop);
            for _ in 0..frames {
                if self.buf.len() < self.p.frame {
                    break;
                }
                self.analyse_next();
                self.buf.drain(..self.p.hop);
            }
            self.buf.clear();
        }
        // Backtrack the whole pending window from the best final state.
        let mut state = argmax(&self.delta);
        let mut states = vec![0usize; self.pending.len()];
        for (i, f) in self.pending.iter().enumerate().rev() {
            states[i] = state;
            state = usize::from(f.back[state]);
        }
        let pending: Vec<Pending> = self.pending.drain(..).collect();
        pending
            .into_iter()
            .zip(states)
            .map(|(f, s)| self.frame_out(&f, s))
            .collect()
    }

    fn analyse_next(&mut self) {
        let n = self.p.frame;
        for (d, s) in self.frame.iter_mut().zip(self.buf.iter()) {
            *d = *s;
        }
        let index = self.next_frame;
        self.next_frame += 1;
        let rms_db = {
            let c = &self.frame[n / 2 - LEVEL_HALF..n / 2 + LEVEL_HALF];
            let e = c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32;
            10.0 * (e + 1e-12).log10()
        };
        let flux = self.flux();
        self.chroma = [0.0; 12];
        let (candidates, p_voiced) = if rms_db < self.p.silence_db {
            (Vec::new(), 0.0)
        } else {
            self.chroma();
            let (mut cands, p_voiced) = self.candidates();
            let t_s = index as f64 * self.p.frame_s();
            match &mut self.prior {
                Some(PriorSource::Whole(prior)) => prior.reweight(t_s, &mut cands),
                Some(PriorSource::Live(live)) => {
                    live.prior.reweight(t_s, &mut cands);
                    live.forget_before(t_s);
                }
                None => {}
            }
            (cands, p_voiced)
        };
        self.viterbi_step(index, candidates, p_voiced, rms_db, flux);
    }

    /// SuperFlux-style onset cue: rise of the log magnitude over the maximum of the neighbouring
    /// bins two frames back (the maximum keeps vibrato from reading as onsets).
    fn flux(&mut self) -> f32 {
        let off = (self.p.frame - FLUX_WIN) / 2;
        let centre = &self.frame[off..off + FLUX_WIN];
        for ((d, s), w) in self.spec.iter_mut().zip(centre).zip(&self.window) {
            *d = Complex32::new(s * w, 0.0);
        }
        self.spec_fft
            .process_with_scratch(&mut self.spec, &mut self.scratch);
        let mag: Vec<f32> = self.spec[..FLUX_BINS]
            .iter()
            .map(|c| (1.0 + 100.0 * c.norm()).ln())
            .collect();
        let flux = match self.log_mag.front() {
            Some(prev) if self.log_mag.len() == 2 => (0..FLUX_BINS)
                .map(|k| {
                    let lo = k.saturating_sub(1);
                    let hi = (k + 1).min(FLUX_BINS - 1);
                    let ref_max = prev[lo..=hi].iter().copied().fold(f32::MIN, f32::max);
                    (mag[k] - ref_max).max(0.0)
                })
                .sum::<f32>(),
            _ => 0.0,
        };
        if self.log_mag.len() == 2 {
            self.log_mag.pop_front();
        }
        self.log_mag.push_back(mag);
        flux
    }

    /// The current frame's power by pitch class (Hann window over the whole frame).
    fn chroma(&mut self) {
        for ((d, s), w) in self
            .chroma_spec
            .iter_mut()
            .zip(&self.frame)
            .zip(&self.chroma_window)
        {
            *d = Complex32::new(s * w, 0.0);
        }
        self.chroma_fft
            .process_with_scratch(&mut self.chroma_spec, &mut self.scratch);
        for &(k, class) in &self.chroma_bins {
            self.chroma[usize::from(class)] += self.chroma_spec[k].norm_sqr();
        }
        self.spec_max = self.chroma_spec[1..self.p.frame / 2]
            .iter()
            .map(|c| c.norm_sqr())
            .fold(0.0, f32::max);
    }

    /// The frequency of the spectral peak nearest `hz` within [`REFINE_SEMITONES`] of it in
    /// the current frame's Hann spectrum (the chroma's), log-parabolically interpolated: a
    /// local maximum no more than [`REFINE_FLOOR`] under the frame's strongest bin. The nearest,
    /// not the strongest: where a legato note rings into the next a semitone away, both peaks
    /// are there and YIN already chose between them.
    fn spectral_peak(&self, hz: f32) -> Option<f32> {
        let bin_hz = self.p.sample_rate as f32 / self.p.frame as f32;
        let r = 2f32.powf(REFINE_SEMITONES / 12.0);
        let lo = ((hz / r / bin_hz).floor() as usize).max(2);
        let hi = ((hz * r / bin_hz).ceil() as usize).min(self.p.frame / 2 - 2);
        let power = |k: usize| self.chroma_spec[k].norm_sqr();
        let floor = REFINE_FLOOR * self.spec_max;
        (lo..=hi)
            .filter(|&k| power(k) > power(k - 1) && power(k) >= power(k + 1) && power(k) >= floor)
            .map(|k| {
                let ln = |k: usize| power(k).max(1e-20).ln();
                (k as f32 + vertex_offset(ln(k - 1), ln(k), ln(k + 1))) * bin_hz
            })
            .filter(|&f| (f / hz).log2().abs() * 12.0 <= REFINE_SEMITONES)
            .min_by(|a, b| (a / hz).ln().abs().total_cmp(&(b / hz).ln().abs()))
    }

    /// pYIN's F0 candidates of the current frame and its voicing probability.
    fn candidates(&mut self) -> (Vec<Candidate>, f32) {
        let n = self.p.frame;
        let w = n / 2;
        // r(tau) = sum_{j<w} x[j] x[j+tau], by FFT cross-correlation.
        for (i, c) in self.a.iter_mut().enumerate() {
            *c = Complex32::new(if i < w { self.frame[i] } else { 0.0 }, 0.0);
        }
        for (i, c) in self.b.iter_mut().enumerate() {
            *c = Complex32::new(if i < n { self.frame[i] } else { 0.0 }, 0.0);
        }
        self.fwd
            .process_with_scratch(&mut self.a, &mut self.scratch);
        self.fwd
            .process_with_scratch(&mut self.b, &mut self.scratch);
        for (a, b) in self.a.iter_mut().zip(&self.b) {
            *a = a.conj() * b;
        }
        self.inv
            .process_with_scratch(&mut self.a, &mut self.scratch);
        let scale = 1.0 / self.fft_n as f32;
        // d(tau) = E(0..w) + E(tau..tau+w) - 2 r(tau), energies from a running sum.
        let e0: f32 = self.frame[..w].iter().map(|x| x * x).sum();
        let mut e_tau = e0;
        self.diff[0] = 0.0;
        let mut running = 0.0f32;
        let mut cmnd = vec![1.0f32; self.tau_max + 2];
        // tau indexes three arrays and the frame at two offsets: a range reads best.
        #[allow(clippy::needless_range_loop)]
        for tau in 1..=self.tau_max + 1 {
            e_tau += self.frame[tau + w - 1].powi(2) - self.frame[tau - 1].powi(2);
            let d = (e0 + e_tau - 2.0 * self.a[tau].re * scale).max(0.0);
            self.diff[tau] = d;
            running += d;
            cmnd[tau] = if running > 0.0 {
                d * tau as f32 / running
            } else {
                1.0
            };
        }
        // Troughs in [tau_min, tau_max], refined by parabolic interpolation.
        let mut troughs: Vec<(f32, f32)> = Vec::new(); // (tau, value)
        for tau in self.tau_min..=self.tau_max {
            let (l, c, r) = (cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]);
            let is_min = c <= r && (c < l || tau == self.tau_min);
            if !is_min {
                continue;
            }
            troughs.push((tau as f32 + vertex_offset(l, c, r), c));
        }
        if troughs.is_empty() {
            return (Vec::new(), 0.0);
        }
        // Each threshold gives its prior mass to the troughs below it, earlier troughs favoured
        // (Boltzmann, parameter 2), or, when none is below, 1% of it to the global minimum.
        let mut probs = vec![0.0f32; troughs.len()];
        let global_min = troughs
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let lambda = 2.0f32;
        for (ti, mass) in self.beta.iter().enumerate() {
            let thr = (ti + 1) as f32 / 100.0;
            let below: Vec<usize> = (0..troughs.len()).filter(|&i| troughs[i].1 < thr).collect();
            if below.is_empty() {
                probs[global_min] += 0.01 * mass;
                continue;
            }
            let norm = (1.0 - (-lambda * below.len() as f32).exp()) / (1.0 - (-lambda).exp());
            for (k, &i) in below.iter().enumerate() {
                probs[i] += mass * (-lambda * k as f32).exp() / norm;
            }
        }
        let sr = self.p.sample_rate as f32;
        let mut cands = Vec::new();
        let mut total = 0.0;
        for ((tau, _), p) in troughs.into_iter().zip(probs) {
            if p <= 1e-6 {
                continue;
            }
            let mut hz = sr / tau;
            if !(self.p.fmin..=self.p.fmax).contains(&hz) {
                continue;
            }
            if hz >= REFINE_MIN_HZ {
                hz = self.spectral_peak(hz).unwrap_or(hz);
            }
            let bin = (12.0 * (hz / self.p.fmin).log2() / self.p.resolution).round() as usize;
            let bin = bin.min(self.n_bins - 1);
            total += p;
            cands.push(Candidate { hz, bin, p });
        }
        (cands, total.min(1.0))
    }

    fn viterbi_step(
        &mut self,
        index: u64,
        candidates: Vec<Candidate>,
        p_voiced: f32,
        rms_db: f32,
        flux: f32,
    ) {
        let nb = self.n_bins;
        // Observation log-likelihoods: voiced bins get their candidates' mass, unvoiced bins
        // share what is left. A floor keeps every path alive.
        const FLOOR: f32 = 1e-8;
        let mut obs_v = vec![FLOOR.ln(); nb];
        let mut mass = vec![0.0f32; nb];
        for c in &candidates {
            mass[c.bin] += c.p;
        }
        for (o, m) in obs_v.iter_mut().zip(&mass) {
            if *m > 0.0 {
                *o = (m + FLOOR).ln();
            }
        }
        let obs_u = ((1.0 - p_voiced).max(0.0) / nb as f32 + FLOOR).ln();
        let mut back = vec![0u16; 2 * nb];
        let band = self.band as isize;
        for j in 0..nb {
            let lo = (j as isize - band).max(0) as usize;
            let hi = (j + self.band).min(nb - 1);
            // Best voiced and best unvoiced predecessor within the band.
            let (mut bv, mut bvi) = (f32::NEG_INFINITY, 0usize);
            let (mut bu, mut bui) = (f32::NEG_INFINITY, 0usize);
            for i in lo..=hi {
                let t = self.log_trans[(i as isize - j as isize + band) as usize];
                let v = self.delta[i] + t;
                if v > bv {
                    bv = v;
                    bvi = i;
                }
                let u = self.delta[nb + i] + t;
                if u > bu {
                    bu = u;
                    bui = nb + i;
                }
            }
            // Into voiced j: stay voiced or switch on; into unvoiced j: the mirror.
            let (sv, fv) = (bv + self.log_stay, bu + self.log_switch);
            let (su, fu) = (bu + self.log_stay, bv + self.log_switch);
            let (val_v, from_v) = if sv >= fv { (sv, bvi) } else { (fv, bui) };
            let (val_u, from_u) = if su >= fu { (su, bui) } else { (fu, bvi) };
            self.next_delta[j] = val_v + obs_v[j];
            self.next_delta[nb + j] = val_u + obs_u;
            back[j] = from_v as u16;
            back[nb + j] = from_u as u16;
        }
        // Renormalise so log-probabilities do not drift to -inf on long streams.
        let max = self
            .next_delta
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        for d in &mut self.next_delta {
            *d -= max;
        }
        std::mem::swap(&mut self.delta, &mut self.next_delta);
        self.pending.push_back(Pending {
            index,
            candidates,
            p_voiced,
            rms_db,
            flux,
            chroma: self.chroma,
            back,
        });
    }

    /// Decides the oldest pending frame from the best path into the newest frame.
    fn decide_oldest(&mut self) -> PitchFrame {
        let mut state = argmax(&self.delta);
        for f in self.pending.iter().skip(1).rev() {
            state = usize::from(f.back[state]);
        }
        let f = self.pending.pop_front().expect("pending frames");
        self.frame_out(&f, state)
    }

    fn frame_out(&self, f: &Pending, state: usize) -> PitchFrame {
        let nb = self.n_bins;
        let voiced = state < nb;
        let hz = if voiced {
            // The candidate in (or next to) the chosen bin gives the exact F0; else the bin.
            f.candidates
                .iter()
                .filter(|c| c.bin.abs_diff(state) <= 1)
                .max_by(|a, b| a.p.total_cmp(&b.p))
                .map(|c| c.hz)
                .unwrap_or_else(|| self.p.fmin * 2f32.powf(state as f32 * self.p.resolution / 12.0))
        } else {
            0.0
        };
        PitchFrame {
            index: f.index,
            hz,
            voiced,
            p_voiced: f.p_voiced,
            rms_db: f.rms_db,
            flux: f.flux,
            chroma: f.chroma,
        }
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Tracks a whole buffer.
pub fn track(samples: &[f32], params: PitchParams) -> Vec<PitchFrame> {
    let mut t = PitchTracker::new(params);
    let mut out = t.push(samples);
    out.extend(t.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, seconds: f32, harmonics: &[f32]) -> Vec<f32> {
        let n = (seconds * 16_000.0) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                harmonics
                    .iter()
                    .enumerate()
                    .map(|(h, a)| a * (2.0 * std::f32::consts::PI * hz * (h + 1) as f32 * t).sin())
                    .sum::<f32>()
                    * 0.3
            })
            .collect()
    }

    #[test]
    fn finds_the_pitch_of_harmonic_tones_across_the_range() {
        for hz in [65.4f32, 110.0, 220.0, 440.0, 987.8, 1760.0] {
            let frames = track(
                &tone(hz, 0.6, &[1.0, 0.6, 0.4, 0.2]),
                PitchParams::default(),
            );
            let voiced: Vec<_> = frames.iter().filter(|f| f.voiced).collect();
            assert!(
                voiced.len() > frames.len() * 8 / 10,
                "{hz} Hz: too few voiced"
            );
            for f in &voiced[5..voiced.len() - 5] {
                let cents = 1200.0 * (f.hz / hz).log2();
                // Parabolic interpolation of a 9-sample period is good to ~15 cents.
                assert!(
                    cents.abs() < 20.0,
                    "{hz} Hz: frame {} at {} Hz",
                    f.index,
                    f.hz
                );
            }
        }
    }

    #[test]
    fn a_bar_with_a_strong_inharmonic_partial_reads_at_its_fundamental() {
        // A glockenspiel-like D6: the fundamental 10 dB under a partial at 6.3x, and one at
        // 2.76x. The lag that fits both best is 13 samples (1231 Hz, 81 cents sharp, as YIN
        // read FluidR3's glockenspiel); the spectrum has the fundamental itself.
        let hz = 1174.7f32;
        let x: Vec<f32> = (0..8000)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                [(1.0f32, 0.3f32), (2.76, 0.15), (6.3, 1.0)]
                    .iter()
                    .map(|&(k, a)| a * (std::f32::consts::TAU * k * hz * t).sin())
                    .sum::<f32>()
                    * 0.2
            })
            .collect();
        let frames = track(&x, PitchParams::default());
        let voiced: Vec<_> = frames.iter().filter(|f| f.voiced).collect();
        assert!(voiced.len() > frames.len() / 2, "too few voiced");
        for f in &voiced[5..voiced.len() - 5] {
            let cents = 1200.0 * (f.hz / hz).log2();
            assert!(cents.abs() < 10.0, "frame {} at {} Hz", f.index, f.hz);
        }
    }

    #[test]
    fn the_chroma_hears_the_pitch_class_through_the_harmonics() {
        // A5 (880 Hz): its class (9) gets the 1st and 2nd harmonics, the fifth (E, 4) only
        // the 3rd.
        let frames = track(&tone(880.0, 0.5, &[1.0, 0.5, 0.3]), PitchParams::default());
        let mid = &frames[frames.len() / 2];
        let class = argmax(&mid.chroma);
        assert_eq!(class, 9, "{:?}", mid.chroma);
        assert!(mid.chroma[9] > 2.0 * mid.chroma[4], "{:?}", mid.chroma);
        // Silence has none.
        let quiet = track(&vec![0.0; 8000], PitchParams::default());
        assert!(quiet.iter().all(|f| f.chroma == [0.0; 12]));
    }

    /// A prior of 95 bins over SwiftF0's range, every frame a narrow peak at `hz`.
    fn peaked_prior(hz: f32, frames: usize) -> Arc<PitchPrior> {
        let (fmin, fmax, bins) = (46.875f32, 2093.75f32, 95);
        let at = (hz / fmin).log2() / (fmax / fmin).log2() * (bins - 1) as f32;
        let row: Vec<f32> = (0..bins)
            .map(|b| (-0.5 * (b as f32 - at).powi(2)).exp())
            .collect();
        let sum: f32 = row.iter().sum();
        let probs = row
            .iter()
            .map(|p| p / sum)
            .cycle()
            .take(bins * frames)
            .collect();
        Arc::new(PitchPrior::new(0.016, fmin, fmax, bins, probs).unwrap())
    }

    fn share_at(frames: &[PitchFrame], hz: f32) -> f32 {
        let voiced: Vec<_> = frames.iter().filter(|f| f.voiced).collect();
        let near = voiced
            .iter()
            .filter(|f| (1200.0 * (f.hz / hz).log2()).abs() < 50.0)
            .count();
        near as f32 / voiced.len().max(1) as f32
    }

    #[test]
    fn a_prior_chooses_among_the_troughs_and_cannot_invent_a_pitch() {
        let x = tone(440.0, 0.6, &[1.0, 0.6, 0.4, 0.2]);
        let run = |prior: Option<Arc<PitchPrior>>| {
            let mut t = PitchTracker::new(PitchParams::default());
            if let Some(p) = prior {
                t = t.with_prior(p);
            }
            let mut out = t.push(&x);
            out.extend(t.finish());
            out
        };
        let plain = run(None);
        assert!(share_at(&plain, 440.0) > 0.9);
        // A tone at 440 Hz also repeats every two periods: YIN has a trough at 220 Hz, and
        // a prior that believes 220 Hz takes the track there.
        let low = run(Some(peaked_prior(220.0, 40)));
        assert!(share_at(&low, 220.0) > 0.9, "{}", share_at(&low, 220.0));
        // No trough lies near 300 Hz: the prior reweights nothing, and voicing is pYIN's.
        let elsewhere = run(Some(peaked_prior(300.0, 40)));
        assert!(share_at(&elsewhere, 440.0) > 0.9);
        let voiced = |f: &[PitchFrame]| f.iter().filter(|f| f.voiced).count();
        assert_eq!(voiced(&elsewhere), voiced(&plain));
        for (a, b) in elsewhere.iter().zip(&plain) {
            assert!((a.p_voiced - b.p_voiced).abs() < 1e-5);
        }
    }

    #[test]
    fn a_note_above_the_priors_range_is_not_pulled_an_octave_down() {
        // A piccolo's D7 (2349 Hz) is above SwiftF0's 2094 Hz, which puts its mass on the
        // octave below, where YIN also has a trough (two periods).
        let x = tone(2349.0, 0.6, &[1.0, 0.5, 0.25]);
        let mut t = PitchTracker::new(PitchParams::default()).with_prior(peaked_prior(1174.5, 40));
        let mut out = t.push(&x);
        out.extend(t.finish());
        assert!(share_at(&out, 2349.0) > 0.9, "{}", share_at(&out, 2349.0));
    }

    /// A live prior holds frames back until their posterior exists, yet every frame comes out,
    /// the same however the stream is chunked.
    #[test]
    fn a_live_prior_loses_no_frame_and_ignores_chunking() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/swift-f0");
        let net = Arc::new(SwiftF0::load(&dir).unwrap());
        let mut x = tone(220.0, 0.7, &[1.0, 0.6, 0.4, 0.2]);
        x.extend(vec![0.0; 3000]);
        x.extend(tone(330.0, 0.5, &[0.3, 1.0, 0.5]));
        let run = |chunk: usize, live: bool| {
            let mut t = PitchTracker::new(PitchParams::default());
            if live {
                t = t.with_live_prior(net.clone());
            }
            let mut out = Vec::new();
            for c in x.chunks(chunk) {
                out.extend(t.push(c));
            }
            out.extend(t.finish());
            out
        };
        let plain = run(160, false);
        let small = run(160, true);
        let large = run(7919, true);
        assert_eq!(small.len(), plain.len());
        assert_eq!(small, large);
        assert!(share_at(&small, 220.0) > 0.4 && share_at(&small, 330.0) > 0.2);
        // Held back while its posterior is computed: never more than a batch and a hop.
        let mut t = PitchTracker::new(PitchParams::default()).with_live_prior(net.clone());
        let mut pushed = 0usize;
        let mut decided = 0usize;
        let lag = PitchParams::default().lag;
        for c in x.chunks(160) {
            pushed += c.len();
            decided += t.push(c).len();
            let analysed = decided + lag;
            let hop = PitchParams::default().hop;
            let behind = pushed.saturating_sub(analysed * hop + 512);
            assert!(
                behind <= (LIVE_BATCH + 1) * swift_f0::HOP,
                "{behind} samples behind"
            );
        }
    }

    #[test]
    fn a_prior_of_the_wrong_shape_is_refused() {
        assert!(PitchPrior::new(0.016, 46.9, 2094.0, 95, vec![0.01; 95 * 3]).is_ok());
        for (hop, fmin, fmax, bins, n) in [
            (0.016, 46.9, 2094.0, 95, 95 * 3 + 1),
            (0.016, 46.9, 2094.0, 95, 0),
            (0.0, 46.9, 2094.0, 95, 95),
            (0.016, 2094.0, 46.9, 95, 95),
            (0.016, 46.9, 2094.0, 1, 95),
        ] {
            assert!(PitchPrior::new(hop, fmin, fmax, bins, vec![0.01; n]).is_err());
        }
        assert!(PitchPrior::new(0.016, 46.9, 2094.0, 2, vec![0.5, f32::NAN]).is_err());
    }

    #[test]
    fn a_weak_fundamental_is_not_an_octave_error() {
        // Most energy in harmonics 2 and 3, as in many reed and brass tones.
        let frames = track(
            &tone(196.0, 0.6, &[0.2, 1.0, 0.8, 0.3]),
            PitchParams::default(),
        );
        let voiced: Vec<_> = frames.iter().filter(|f| f.voiced).collect();
        let right = voiced
            .iter()
            .filter(|f| (1200.0 * (f.hz / 196.0).log2()).abs() < 50.0)
            .count();
        assert!(right > voiced.len() * 9 / 10, "{right}/{}", voiced.len());
    }

    #[test]
    fn the_threshold_prior_is_beta_2_b_with_the_asked_mean() {
        let prior = |mean: f32| {
            PitchTracker::new(PitchParams {
                threshold_mean: mean,
                ..PitchParams::default()
            })
            .beta
        };
        // Mean 0.1 is pYIN's Beta(2, 18), whose CDF is 1 - (1-x)^19 - 19 x (1-x)^18.
        let cdf18 = |x: f64| 1.0 - (1.0 - x).powi(19) - 19.0 * x * (1.0 - x).powi(18);
        for (i, &m) in prior(0.1).iter().enumerate() {
            let want = cdf18((i + 1) as f64 / 100.0) - cdf18(i as f64 / 100.0);
            assert!(
                (f64::from(m) - want).abs() < 1e-6,
                "threshold {i}: {m} vs {want}"
            );
        }
        for mean in [0.1f32, 0.15, 0.2] {
            let p = prior(mean);
            let total: f32 = p.iter().sum();
            let got: f32 = p
                .iter()
                .enumerate()
                .map(|(i, m)| m * (i as f32 + 0.5) / 100.0)
                .sum();
            assert!((total - 1.0).abs() < 1e-4, "mass {total}");
            assert!((got - mean).abs() < 0.005, "mean {got} for {mean}");
        }
    }

    #[test]
    fn silence_and_white_noise_are_unvoiced() {
        let silence = track(&vec![0.0; 16_000], PitchParams::default());
        assert!(silence.iter().all(|f| !f.voiced));
        let mut x = 12345u32;
        let noise: Vec<f32> = (0..32_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 0.5
            })
            .collect();
        let frames = track(&noise, PitchParams::default());
        let voiced = frames.iter().filter(|f| f.voiced).count();
        assert!(
            voiced < frames.len() / 20,
            "{voiced}/{} voiced",
            frames.len()
        );
    }

    #[test]
    fn streaming_in_any_chunks_decides_the_same_frames_count_and_timing() {
        let x = tone(330.0, 1.0, &[1.0, 0.5]);
        let whole = track(&x, PitchParams::default());
        assert_eq!(whole.len(), x.len().div_ceil(160));
        let mut t = PitchTracker::new(PitchParams::default());
        let mut got = Vec::new();
        for chunk in x.chunks(333) {
            got.extend(t.push(chunk));
        }
        got.extend(t.finish());
        assert_eq!(got.len(), whole.len());
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.index, i as u64);
        }
        let agree = got
            .iter()
            .zip(&whole)
            .filter(|(a, b)| a.voiced == b.voiced && (a.hz - b.hz).abs() < 1.0)
            .count();
        assert!(agree > got.len() * 95 / 100);
    }
}

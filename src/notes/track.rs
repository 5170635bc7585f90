//! The monophonic note transcriber: pYIN frames ([`super::pitch`]) cut into notes.
//!
//! A note starts where voicing starts, where the pitch settles more than `split_semitones` away
//! from the note's median for `change_frames` frames (a new pitch; vibrato and scoops shorter
//! than that do not split), or at a clear onset on the same pitch, which is how repeated notes
//! are told apart. Onsets come from the note-onset detector ([`crate::nn::onset`], a small CNN
//! trained on rendered melodies: it hears legato repeats and slow attacks) when one is loaded,
//! and from two rules in any case: a spectral-flux peak with a rise in level, and a level dip
//! with a voicing dip (a breath or consonant). A pitch change's note starts at the detector's
//! peak before it (but not at the peak the note before began at, when that note had a clear
//! pitch of its own: a fast legato run), else at the flux peak for a jump, or where a glide
//! began, or, where no voice sings, earlier still where its pitch class began to rise under
//! the old note's release. A note ends after `gap_frames` unvoiced frames or where the next
//! note starts. Its pitch is the median F0 of its frames (rounded to a key, or, read well
//! between two keys, the one whose pitch class sounds); its velocity follows its loudest early
//! frame.
//!
//! Everything is streaming: [`MonoTracker::push`] returns the pitch frames decided so far and
//! the notes that have ended, so a live client gets a note shortly after it stops sounding.

use std::{collections::VecDeque, sync::Arc};

use super::{
    Note, hz_to_midi,
    pitch::{PitchFrame, PitchParams, PitchPrior, PitchTracker},
    pitch_class,
};
use crate::nn::onset::{OnsetDetector, OnsetModel};
use crate::nn::sound::SoundClassifier;
use crate::nn::swift_f0::{self, SwiftF0};
use crate::notes::voice::VoiceGate;

/// How frames become notes.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentParams {
    /// Shorter notes are dropped (seconds) ...
    pub min_note_s: f64,
    /// ... unless the onset detector fires where they start and where they end (or silence
    /// follows) and their pitch holds: those are kept down to this length. Fast fiddle tunes
    /// and ornaments have 50-120 ms notes: 100 of the ~540 misses on the held-out-instrument
    /// renders, sorted by cause, were notes that short. With the detector's say, 0.06 raised
    /// note F1 0.823 -> 0.825 there and 0.817 -> 0.828 on the training-instrument renders,
    /// with the shared synth melodies (0.913) and the noise-bed false notes (11) unchanged.
    /// Where the voice gate says no voice sings, a short note between two quick pitch steps
    /// is kept too (a legato run has no attack to hear; see `Segmenter::is_stepped_note`):
    /// the test renders 0.813 -> 0.821 (a piccolo reel 0.51 -> 0.69), held-out-instrument
    /// renders 0.906 -> 0.907, training-instrument renders 0.887 -> 0.888, shared synth and
    /// noise beds unchanged, real singing (SSVD test) 0.709 -> 0.708. Without the gate the
    /// same rule added scoops of 60-110 ms to sung notes.
    pub min_onset_note_s: f64,
    /// A sung note (the voice gate held) that began at a pitch change, straight out of the
    /// note before, is dropped when shorter than this (seconds): it is where a singer's glide
    /// to the next note lingers, or the pitch falling off at a note's end, not a note. On SSVD
    /// v2.0 train/valid (real singing), 174 of the 204 sung notes under 200 ms that followed
    /// the note before without a rest matched no reference note. Dropping them there, on saved
    /// transcriptions, under 0.15 / 0.18 / 0.2 / 0.22 / 0.25 s: 0.2 was best; in the tracker,
    /// note F1 0.669 -> 0.677 (SSVD test 0.709 -> 0.722). No effect at or below `min_note_s`.
    pub min_sung_change_s: f64,
    /// A pitch this far from the current note's median (semitones) may start a new note.
    pub split_semitones: f32,
    /// ... when it holds, within one semitone, for this many frames.
    pub change_frames: usize,
    /// Unvoiced frames that end a note (shorter gaps are bridged).
    pub gap_frames: usize,
    /// A same-pitch onset needs a flux peak this many times the recent median flux ...
    pub onset_ratio: f32,
    /// ... and a level rise of at least this many dB.
    pub onset_rise_db: f32,
    /// A level dip this deep (dB, against both sides) on a held pitch is a re-attack.
    pub valley_db: f32,
    /// ... once the note has lasted this long (seconds): a tremolo or vibrato swell early in a
    /// note is not a re-attack.
    pub valley_min_s: f64,
    /// ... and, near its bottom, the voicing probability falls below this: a re-attack (a
    /// breath, a consonant, a new bow stroke) is briefly aperiodic, while tremolo, beating
    /// detuned oscillators (synth leads, accordions, choir patches) and swells stay periodic
    /// through their dips.
    pub valley_voicing: f32,
    /// Notes with a lower mean voicing probability are dropped.
    pub min_confidence: f32,
}

impl Default for SegmentParams {
    fn default() -> Self {
        Self {
            // Tuned on the development sets (synthetic, noisy, sung and real singing): shorter
            // fragments are mostly scoops, vibrato swings and transitions, not notes.
            min_note_s: 0.12,
            min_onset_note_s: 0.06,
            min_sung_change_s: 0.2,
            split_semitones: 0.8,
            change_frames: 4,
            gap_frames: 3,
            onset_ratio: 4.0,
            onset_rise_db: 3.0,
            valley_db: 6.0,
            valley_min_s: 0.15,
            // Valleys only split where the voicing also dips: on the dev renders most 6 dB
            // valleys on a held pitch were tremolo or beating (square lead, accordion), and on
            // real singing a third were false (dev F1 +0.017 synthetic, +0.007 real singing).
            valley_voicing: 0.3,
            min_confidence: 0.3,
        }
    }
}

/// Everything the monophonic transcriber can be told.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MonoParams {
    pub pitch: PitchParams,
    pub segment: SegmentParams,
}

/// What one [`MonoTracker::push`] produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MonoOutput {
    /// Decided pitch frames, in order (for `pitch` events).
    pub frames: Vec<PitchFrame>,
    /// Notes that ended, in order of start.
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone)]
struct Building {
    start: u64,
    midis: Vec<f32>,
    p_sum: f32,
    n: usize,
    peak_db: f32,
    /// Frames since the start that were unvoiced, in a row (a gap being bridged).
    unvoiced_run: usize,
    /// Frames in a row that sit away from the median: a possible new note.
    deviants: Vec<(u64, f32)>,
    /// The first frame of the current run of deviants (kept when a glide trims `deviants`).
    first_deviant: Option<u64>,
    /// The pitch of that first deviant frame (how abrupt the change is).
    first_deviant_midi: f32,
    /// The first frames' indices and levels (where a sung note's vowel begins).
    head: Vec<(u64, f32)>,
    /// Begun while a voice sang (the segmenter's voice gate held).
    voice: bool,
    /// How it began.
    begin: Begin,
    /// Its frames' power per pitch class, summed (which key sounds when the F0 reads between
    /// two).
    chroma: [f32; 12],
}

/// How a note began.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Begin {
    /// After silence: its attack is where the sound began.
    Silence,
    /// At an onset (or merged into the note an onset began), where the pitch before it may
    /// still ring in the analysis window.
    Onset,
    /// At a confirmed pitch change, so its pitch is its own; `step`: a quick step from the
    /// note before ([`Segmenter::is_step`]).
    Change { step: bool },
}

/// How a note ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// At a quick pitch step into the next note.
    Step,
    /// At an onset, or silence followed.
    Cut,
    /// At a slower pitch change (a glide).
    Glide,
}

impl Building {
    /// A note from frame `start`, sung when `voice` (the voice gate held there).
    fn new(start: u64, voice: bool, begin: Begin) -> Self {
        Self {
            start,
            midis: Vec::new(),
            p_sum: 0.0,
            n: 0,
            peak_db: f32::MIN,
            unvoiced_run: 0,
            deviants: Vec::new(),
            first_deviant: None,
            first_deviant_midi: 0.0,
            head: Vec::new(),
            voice,
            begin,
            chroma: [0.0; 12],
        }
    }

    fn add(&mut self, f: &PitchFrame, midi: f32) {
        self.midis.push(midi);
        self.p_sum += f.p_voiced;
        self.n += 1;
        // Velocity follows the attack, not a swell later in a long note.
        if self.n <= 10 {
            self.peak_db = self.peak_db.max(f.rms_db);
        }
        if self.head.len() < VOWEL_FRAMES {
            self.head.push((f.index, f.rms_db));
        }
        for (sum, p) in self.chroma.iter_mut().zip(f.chroma) {
            *sum += p;
        }
    }

    /// The key the note sounds and its pitch (fractional MIDI): the median F0, rounded, unless
    /// that reads well between two keys ([`BETWEEN_KEYS`]) and the note's spectrum puts
    /// [`BETWEEN_KEYS_RATIO`] times more power in the other key's pitch class. Then the F0 was
    /// a blend (a crossfade: the old note rings on under the new one) and the pitch is the
    /// median of the frames that read within a semitone of the key, or the key. Not for a
    /// sung note: a voice sings between keys, and SSVD lost notes to the spectrum's choice.
    fn key(&self) -> (f32, f32) {
        let m = self.median();
        let near = m.round();
        let off = m - near;
        if self.voice || off.abs() < BETWEEN_KEYS {
            return (near, m);
        }
        let other = near + off.signum();
        let power = |k: f32| self.chroma[pitch_class(f64::from(k))];
        if power(other) <= BETWEEN_KEYS_RATIO * power(near) {
            return (near, m);
        }
        let own: Vec<f32> = self
            .midis
            .iter()
            .copied()
            .filter(|x| (x - other).abs() < 0.5)
            .collect();
        (other, if own.is_empty() { other } else { median(&own) })
    }

    fn median(&self) -> f32 {
        median(&self.midis)
    }
}

fn median(v: &[f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    }
}

/// Whether `frames` frames of `frame_s` seconds last at least `secs`. Counted in frames:
/// `end_s - start_s` of a 12-frame note is 0.11999... s, which dropped every note exactly at the
/// 0.12 s minimum (16th notes at 125 beats/min, for one).
fn lasts(frame_s: f64, frames: u64, secs: f64) -> bool {
    frames as f64 * frame_s >= secs - 1e-9
}

/// The fewest frames of `frame_s` seconds that last `secs` (as [`lasts`] counts).
fn frames_for(frame_s: f64, secs: f64) -> u64 {
    ((secs - 1e-9) / frame_s).ceil() as u64
}

/// Whether a short note's pitch holds within [`STRUCK_SPREAD`] once its attack is past (the
/// first frames' analysis windows still reach into the note before).
fn holds(b: &Building) -> bool {
    let settled = b.midis.len().saturating_sub(ATTACK_FRAMES).max(1);
    let (lo, hi) = span(b.midis.iter().rev().take(settled).copied());
    hi - lo <= STRUCK_SPREAD
}

/// Lowest and highest of some pitches.
fn span(v: impl Iterator<Item = f32>) -> (f32, f32) {
    v.fold((f32::MAX, f32::MIN), |a, m| (a.0.min(m), a.1.max(m)))
}

/// Frames of lookahead the onset test needs (a peak must beat its right neighbours too).
const ONSET_AHEAD: usize = 6;
/// How far before a confirmed pitch change its onset is looked for (frames). 12 (was 8) and a
/// flux peak of `CHANGE_FLUX` x the recent median (was 2): slow-attack renders (cello, tuba,
/// horn, choir and synth-voice patches) reach their new pitch 50-120 ms after the note-on, and
/// the onset is the flux peak back there (dev renders +0.02-0.04 F1).
const CHANGE_LOOKBACK: u64 = 12;
const CHANGE_FLUX: f32 = 1.5;
/// A pitch change is abrupt (a jump, as instruments play it) when its first deviant frame
/// already covers this fraction of the interval; its onset is then looked for before it.
/// Otherwise it is a glide (as singers sing it) and the note starts at the first deviant frame:
/// on real singing the annotated onset is where the glide arrives, not the flux before it
/// (without this split the lookback costs real singing 0.02 F1).
const ABRUPT_FRACTION: f32 = 0.6;
/// Frames a pitch step may take, between the old pitch and the new (see
/// [`Segmenter::is_step`]): a 64 ms analysis window hears a jump for two or three.
const STEP_FRAMES: usize = 3;
/// How close (semitones) a frame's pitch must be to count as at a step's old or new pitch.
/// 0.5 read the same on the renders and 0.707 on real singing (0.708 at 0.3).
const STEP_NEAR: f32 = 0.3;
/// Frames kept after processing (onset context, the pitch-change lookback and a pitch class's
/// rise before it).
const BEHIND: usize = 64;
/// A pitch change's note may start where its pitch class rose from this many dB under the new
/// note's level ([`Segmenter::rise_start`]), up to [`RISE_LOOKBACK`] frames before the onset
/// the detector and the flux gave, where no voice sings. Slow attacks under the old note's
/// release (string ensembles, choir and synth-voice patches, pads) keep the old pitch for
/// 100-250 ms after the new note-on, and those onsets came late. Measured on the render sets
/// and the shared melodies with the change alone (note F1, micro): held-out-instrument
/// renders 0.911 -> 0.918, training instruments 0.903 -> 0.903, `test` 0.842 -> 0.845,
/// shared synth mono 0.921 -> 0.923; no file lost more than one note. 15 dB read 0.917,
/// 0.901, 0.846, 0.921. A chroma of the unwindowed frame from 55 Hz, which leaks into the
/// neighbouring classes of low notes, cost the training-instrument renders 0.010 (0.004 with
/// the [`RISE_SWELL`] test) by walking back over the old note's overtones.
const RISE_DB: f32 = 10.0;
/// How far before the onset a pitch class's rise is looked for (frames): 300 ms.
const RISE_LOOKBACK: u64 = 30;
/// Walking back, the class's power may grow by this factor (1 dB) frame to frame before the
/// walk stops (the class was sounding already).
const RISE_SWELL: f32 = 1.26;
/// At a confirmed pitch change, a detector peak of at least this fraction of the threshold in
/// the lookback is where the new note started.
const CHANGE_ONSET_FRACTION: f32 = 0.25;
/// A note shorter than this followed by the same pitch class an octave or two away, with no
/// onset between, is an octave error of the tracker during an attack: it joins the next note.
const OCTAVE_GLITCH_S: f64 = 0.25;
/// Widest pitch range (semitones) of a short note kept for its onsets
/// ([`SegmentParams::min_onset_note_s`]).
const STRUCK_SPREAD: f32 = 1.0;
/// Frames after an onset whose 64 ms pitch window (centred) still hears the note before: a
/// struck note's pitch spread is measured after them.
const ATTACK_FRAMES: usize = 3;
/// A note after silence starts at the detector's peak in the unvoiced frames before its pitch
/// only when those frames' mean level is within this many dB of the loudest of the note's
/// first [`ATTACK_FRAMES`] frames. Always taking the peak gained the held-out-instrument
/// renders 0.005 note F1 and cost real singing 0.045 (SSVD v2.0 test, 127 songs: 0.683 ->
/// 0.639): the detector, trained on instruments, fires on consonants, and those notes came
/// out 50-150 ms early. Chosen on SSVD's train/valid songs and the dev renders among 3-20 dB
/// (6: singing 0.568 -> 0.618, dev renders 0.908 -> 0.906, never taking it: 0.621 / 0.899).
const ATTACK_NOISE_DB: f32 = 6.0;
/// A note begun at a confirmed pitch change whose frames' mean voicing probability is at least
/// this keeps the detector peak it started at: the next pitch change's lookback
/// ([`CHANGE_LOOKBACK`]) only looks from `min_onset_note_s` after it. In a fast legato run
/// (a piccolo reel's 70-110 ms notes, which the pitch window hears 40-70 ms late) that
/// lookback reached back to the short note's own onset and took it for the next note's, and
/// the short note vanished. Measured (note F1, whole-file prior): `test` 0.848 -> 0.856 (the
/// piccolo reel 0.60 -> 0.76, a shanai 0.89 -> 0.91), the other render sets and the shared
/// melodies within one note, real singing (SSVD) unchanged. Without the voicing test the
/// held-out-instrument renders fell 0.923 -> 0.915 and the shared melodies 0.919 -> 0.910: a
/// voice patch's glide between two notes is confirmed as a pitch of its own for a few barely
/// periodic frames (mean voicing ~0.5), and the next note's onset is the peak at its start.
const CLEAR_VOICING: f32 = 0.8;
/// Frames of recent flux the onset threshold is relative to.
const FLUX_HISTORY: usize = 100;

/// Cuts a stream of pitch frames into notes.
#[derive(Debug)]
pub struct Segmenter {
    p: SegmentParams,
    frame_s: f64,
    /// Frames waiting for their onset lookahead.
    ahead: VecDeque<PitchFrame>,
    /// The last few processed frames (level before an onset).
    behind: VecDeque<PitchFrame>,
    flux_hist: VecDeque<f32>,
    cur: Option<Building>,
    /// With an onset detector: its threshold, and the probabilities not yet passed by, from
    /// frame `probs_first` on.
    onset_threshold: Option<f32>,
    probs: VecDeque<f32>,
    probs_first: u64,
    /// Where the last emitted note ended: a later note's attack is looked for after it.
    last_end: u64,
    /// A voice is singing (see [`crate::notes::voice`]): the detector is not listened to, only
    /// the rules. Changes wait in `voice_from` until the frame they hold from.
    voice: bool,
    voice_from: VecDeque<(u64, bool)>,
    /// A voice gate has judged the frames since its first decision (before it, nobody knows
    /// whether a voice sings).
    gated: bool,
}

impl Segmenter {
    pub fn new(p: SegmentParams, frame_s: f64) -> Self {
        Self {
            p,
            frame_s,
            ahead: VecDeque::new(),
            behind: VecDeque::new(),
            flux_hist: VecDeque::new(),
            cur: None,
            onset_threshold: None,
            probs: VecDeque::new(),
            probs_first: 0,
            last_end: 0,
            voice: false,
            voice_from: VecDeque::new(),
            gated: false,
        }
    }

    /// A segmenter that also cuts at the peaks of an onset detector's probabilities (fed with
    /// [`Segmenter::push_onsets`] ahead of the frames), and starts pitch changes at them.
    pub fn with_onsets(p: SegmentParams, frame_s: f64, threshold: f32) -> Self {
        let mut s = Self::new(p, frame_s);
        s.onset_threshold = Some(threshold);
        s
    }

    /// Onset probabilities of the next frames (frame 0 first, in order).
    pub fn push_onsets(&mut self, probs: &[f32]) {
        self.probs.extend(probs);
    }

    /// From frame `from` on, whether a voice is singing (decisions in order).
    pub fn push_voice(&mut self, from: u64, voice: bool) {
        self.voice_from.push_back((from, voice));
    }

    /// The detector's threshold, when there is a detector and no voice is singing.
    fn threshold(&self) -> Option<f32> {
        self.onset_threshold.filter(|_| !self.voice)
    }

    /// The detector's probability of frame `i` (0 when unknown).
    fn prob(&self, i: u64) -> f32 {
        i.checked_sub(self.probs_first)
            .and_then(|k| self.probs.get(k as usize))
            .copied()
            .unwrap_or(0.0)
    }

    /// A detector peak at frame `i` at least `t` high.
    fn onset_peak(&self, i: u64, t: f32) -> bool {
        let p = self.prob(i);
        p >= t && p > self.prob(i.wrapping_sub(1)) && p >= self.prob(i + 1)
    }

    /// Feeds decided frames; returns notes that ended.
    pub fn push(&mut self, frames: &[PitchFrame]) -> Vec<Note> {
        let mut out = Vec::new();
        for f in frames {
            self.ahead.push_back(*f);
            if self.ahead.len() > ONSET_AHEAD {
                self.step(&mut out);
            }
        }
        out
    }

    /// Ends the stream: the last note (if any) ends after its last frame.
    pub fn finish(&mut self) -> Vec<Note> {
        let mut out = Vec::new();
        while !self.ahead.is_empty() {
            self.step(&mut out);
        }
        let end = self.behind.back().map_or(0, |f| f.index + 1);
        if let Some(b) = self.cur.take() {
            let end = end - b.unvoiced_run as u64;
            self.emit(b, end, End::Cut, &mut out);
        }
        out
    }

    /// The median flux of the recent past: what "a peak" is measured against.
    fn flux_base(&self) -> f32 {
        let mut recent: Vec<f32> = self.flux_hist.iter().copied().collect();
        if recent.is_empty() {
            return 1e-3;
        }
        let m = recent.len() / 2;
        recent.select_nth_unstable_by(m, f32::total_cmp).1.max(1e-3)
    }

    /// Whether a new note starts at `f` (the front of `ahead`) on the same pitch.
    fn is_onset(&self, f: &PitchFrame) -> bool {
        let lasted = self
            .cur
            .as_ref()
            .is_some_and(|b| lasts(self.frame_s, f.index - b.start, self.p.valley_min_s));
        if let Some(t) = self.threshold() {
            // The rules stay: on real singing their onsets (consonants, re-articulations) are
            // ones the detector, trained on instruments, misses (SSVD valid F1 0.675 -> 0.692).
            return self.onset_peak(f.index, t)
                || self.flux_onset(f)
                || (lasted && self.level_valley(f));
        }
        self.flux_onset(f) || (lasted && self.level_valley(f))
    }

    /// A spectral-flux peak well above the recent median, with a rise in level.
    fn flux_onset(&self, f: &PitchFrame) -> bool {
        let later_max = self
            .ahead
            .iter()
            .skip(1)
            .take(2)
            .map(|g| g.flux)
            .fold(0.0, f32::max);
        let earlier_max = self
            .behind
            .iter()
            .rev()
            .take(2)
            .map(|g| g.flux)
            .fold(0.0, f32::max);
        if f.flux <= later_max || f.flux < earlier_max {
            return false;
        }
        if f.flux < self.p.onset_ratio * self.flux_base() {
            return false;
        }
        // The dip is around the onset (a release, or the attack's first milliseconds); the
        // level it rises to comes just after.
        let before = self
            .behind
            .iter()
            .rev()
            .take(3)
            .chain(self.ahead.iter().take(2))
            .map(|g| g.rms_db)
            .fold(f32::MAX, f32::min);
        let after = self
            .ahead
            .iter()
            .take(4)
            .map(|g| g.rms_db)
            .fold(f32::MIN, f32::max);
        before == f32::MAX || after - before >= self.p.onset_rise_db
    }

    /// A dip in level between two louder stretches: a breathy or bowed instrument (or a voice)
    /// re-attacking the same pitch, where the flux is too noisy to show the onset.
    fn level_valley(&self, f: &PitchFrame) -> bool {
        let near = self
            .behind
            .iter()
            .rev()
            .take(3)
            .chain(self.ahead.iter().skip(1).take(3));
        if near.map(|g| g.rms_db).any(|db| db < f.rms_db) {
            return false;
        }
        let before = self
            .behind
            .iter()
            .rev()
            .take(8)
            .map(|g| g.rms_db)
            .fold(f32::MIN, f32::max);
        let after = self
            .ahead
            .iter()
            .skip(1)
            .map(|g| g.rms_db)
            .fold(f32::MIN, f32::max);
        if before - f.rms_db < self.p.valley_db || after - f.rms_db < self.p.valley_db {
            return false;
        }
        let p_min = self
            .behind
            .iter()
            .rev()
            .take(3)
            .chain(self.ahead.iter().take(3))
            .map(|g| g.p_voiced)
            .fold(f32::MAX, f32::min);
        p_min < self.p.valley_voicing
    }

    /// Where a pitch change that was confirmed at `first` really started: the strongest flux
    /// peak just before it (the old note's release masks the new pitch for a few frames).
    /// Only frames from `floor` on are looked at.
    fn change_start(&self, first: u64, now: u64, abrupt: bool, floor: u64) -> u64 {
        let lo = first.saturating_sub(CHANGE_LOOKBACK).max(floor);
        if let Some(i) = self.strongest_peak(lo..now + 1) {
            return i;
        }
        if !abrupt {
            return first;
        }
        let base = self.flux_base();
        self.behind
            .iter()
            .filter(|g| g.index >= lo && g.index <= first)
            .filter(|g| g.flux >= CHANGE_FLUX * base)
            .max_by(|a, b| a.flux.total_cmp(&b.flux))
            .map_or(first, |g| g.index)
    }

    /// Where a note whose first voiced frame is `first`, after unvoiced ones, started: the
    /// strongest detector peak in the unvoiced frames just before it, when those frames are
    /// about as loud as the note's head. A slow attack (a bow, a breath, a choir patch) sounds
    /// as noise for 50-120 ms before its pitch settles, at the note's level; a singer's
    /// consonant before the vowel is quieter, and sung notes are annotated where the vowel's
    /// pitch begins. See [`ATTACK_NOISE_DB`].
    fn attack_start(&self, first: u64) -> u64 {
        let lo = first.saturating_sub(CHANGE_LOOKBACK).max(self.last_end);
        let Some(peak) = self.strongest_peak(lo..first) else {
            return first;
        };
        let level = |i: u64| self.frame(i).map_or(f32::MIN, |g| g.rms_db);
        let noise = (peak..first).map(level).sum::<f32>() / (first - peak) as f32;
        let head = (first..first + ATTACK_FRAMES as u64)
            .map(level)
            .fold(f32::MIN, f32::max);
        if noise >= head - ATTACK_NOISE_DB {
            peak
        } else {
            first
        }
    }

    /// The frame in `frames` with the highest detector peak of at least
    /// [`CHANGE_ONSET_FRACTION`] of the threshold (none without a detector).
    fn strongest_peak(&self, frames: std::ops::Range<u64>) -> Option<u64> {
        let t = CHANGE_ONSET_FRACTION * self.threshold()?;
        frames
            .filter(|&i| self.onset_peak(i, t))
            .max_by(|&a, &b| self.prob(a).total_cmp(&self.prob(b)))
    }

    fn step(&mut self, out: &mut Vec<Note>) {
        let Some(f) = self.ahead.front().copied() else {
            return;
        };
        while let Some(&(from, voice)) = self.voice_from.front() {
            if from > f.index {
                break;
            }
            self.voice = voice;
            self.gated = true;
            self.voice_from.pop_front();
        }
        let onset = self.is_onset(&f);
        self.ahead.pop_front();
        if f.voiced {
            let midi = hz_to_midi(f64::from(f.hz)) as f32;
            match self.cur.as_mut() {
                None => {
                    let start = self.attack_start(f.index);
                    let mut b = Building::new(start, self.voice, Begin::Silence);
                    b.add(&f, midi);
                    self.cur = Some(b);
                }
                Some(b) => {
                    b.unvoiced_run = 0;
                    let long_enough = lasts(self.frame_s, f.index - b.start, self.p.min_note_s);
                    if (midi - b.median()).abs() > self.p.split_semitones {
                        b.deviants.push((f.index, midi));
                        if b.first_deviant.is_none() {
                            b.first_deviant = Some(f.index);
                            b.first_deviant_midi = midi;
                        }
                        let (lo, hi) = span(b.deviants.iter().map(|d| d.1));
                        if hi - lo > 1.0 {
                            // Still moving (a glide): keep only the latest frames.
                            let keep = b.deviants.len().min(2);
                            let drop = b.deviants.len() - keep;
                            b.deviants.drain(..drop);
                        }
                        if b.deviants.len() >= self.p.change_frames {
                            let first = b.first_deviant.unwrap_or(b.deviants[0].0);
                            let dev = std::mem::take(&mut b.deviants);
                            let new_pitch = median(&dev.iter().map(|d| d.1).collect::<Vec<_>>());
                            let old_pitch = b.median();
                            let abrupt = (b.first_deviant_midi - old_pitch).abs()
                                >= ABRUPT_FRACTION * (new_pitch - old_pitch).abs();
                            let done = self.cur.take().expect("current note");
                            self.change(done, first, &f, abrupt, dev, new_pitch, out);
                        }
                    } else if onset && long_enough {
                        let done = self.cur.take().expect("current note");
                        self.emit(done, f.index, End::Cut, out);
                        let mut nb = Building::new(f.index, self.voice, Begin::Onset);
                        nb.add(&f, midi);
                        self.cur = Some(nb);
                    } else {
                        // Deviants that did not hold were a glitch or vibrato: part of this note.
                        let dev = std::mem::take(&mut b.deviants);
                        b.first_deviant = None;
                        for (_, m) in dev {
                            b.midis.push(m);
                        }
                        b.add(&f, midi);
                    }
                }
            }
        } else if let Some(b) = self.cur.as_mut() {
            b.unvoiced_run += 1;
            if b.unvoiced_run >= self.p.gap_frames {
                let end = f.index + 1 - b.unvoiced_run as u64;
                let done = self.cur.take().expect("current note");
                self.emit(done, end, End::Cut, out);
            }
        }
        self.flux_hist.push_back(f.flux);
        if self.flux_hist.len() > FLUX_HISTORY {
            self.flux_hist.pop_front();
        }
        self.behind.push_back(f);
        if self.behind.len() > BEHIND {
            self.behind.pop_front();
        }
        // Probabilities older than the pitch-change lookback are no longer asked for.
        let keep_from = f.index.saturating_sub(2 * CHANGE_LOOKBACK + BEHIND as u64);
        while self.probs_first < keep_from && !self.probs.is_empty() {
            self.probs.pop_front();
            self.probs_first += 1;
        }
    }

    /// A confirmed pitch change: `done` ends where the new note (whose frames so far are
    /// `dev`) starts, unless it was an octave glitch of the attack, which the new note absorbs.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        done: Building,
        first: u64,
        f: &PitchFrame,
        abrupt: bool,
        dev: Vec<(u64, f32)>,
        new_pitch: f32,
        out: &mut Vec<Note>,
    ) {
        // An onset already split `done` off where the new pitch begins, and the old pitch held
        // on only while the pitch window still heard it: those frames were the new note's
        // attack, and it starts at that onset (not a frame after it).
        let attack = first.saturating_sub(done.start) as usize <= ATTACK_FRAMES;
        // When `done` began at a pitch change of its own ([`CLEAR_VOICING`]), a peak that would
        // leave it shorter than the shortest note kept is its own attack, not the new note's:
        // in a fast legato run the lookback reaches back past the old note's start. (A note
        // split off at an onset, by contrast, may be the pitch before it ringing on in the
        // window, and the new note starts at that onset.)
        let clear = done.n > 0 && done.p_sum / done.n as f32 >= CLEAR_VOICING;
        let changed = matches!(done.begin, Begin::Change { .. });
        let floor = if changed && !attack && clear {
            done.start + frames_for(self.frame_s, self.p.min_onset_note_s)
        } else {
            0
        };
        let onset = self.change_start(first, f.index, abrupt, floor);
        let tail = attack && onset <= done.start;
        let start = onset.max(done.start + 1);
        // An octave jump early in a note is the tracker's error during the attack unless the
        // detector is sure a note starts there: its weaker peaks only place onsets.
        let at_onset = self.threshold().is_some_and(|t| self.onset_peak(start, t));
        let interval = new_pitch - done.median();
        let octaves = (interval / 12.0).round();
        let glitch = !at_onset
            && octaves != 0.0
            && (interval - 12.0 * octaves).abs() < 0.7
            && !lasts(self.frame_s, start - done.start, OCTAVE_GLITCH_S);
        let quick = self.is_step(first, done.median(), f);
        let merged = glitch || tail;
        let start = if merged {
            done.start
        } else {
            let s = if self.voice {
                start
            } else {
                self.rise_start(start, done.start, f.index, new_pitch, done.median())
            };
            self.emit(done, s, if quick { End::Step } else { End::Glide }, out);
            s
        };
        let begin = if merged {
            Begin::Onset
        } else {
            Begin::Change { step: quick }
        };
        let mut nb = Building::new(start, self.voice, begin);
        for (i, m) in dev {
            let g = self.frame(i).unwrap_or(*f);
            nb.add(&g, m);
        }
        self.cur = Some(nb);
    }

    /// Where a new note's pitch class began to sound, when that is before `start`: walking
    /// back from `start`, the frame after the first one whose power in the class is
    /// [`RISE_DB`] under its peak over the new note's frames so far, provided the power only
    /// falls on the way (a swell of more than [`RISE_SWELL`] means the class was sounding
    /// already, an overtone of the old note) and the old note keeps `min_note_s`. None of this
    /// applies when old and new share a pitch class.
    fn rise_start(
        &self,
        start: u64,
        done_start: u64,
        now: u64,
        new_pitch: f32,
        old_pitch: f32,
    ) -> u64 {
        let class = |m: f32| pitch_class(f64::from(m));
        let c = class(new_pitch);
        if class(old_pitch) == c {
            return start;
        }
        let level = |i: u64| self.frame(i).map(|g| g.chroma[c]);
        let full = (start..=now).filter_map(level).fold(0.0f32, f32::max);
        if full <= 0.0 {
            return start;
        }
        let quiet = full * 10f32.powf(-RISE_DB / 10.0);
        let lo = start
            .saturating_sub(RISE_LOOKBACK)
            .max(done_start + frames_for(self.frame_s, self.p.min_note_s))
            .max(self.last_end);
        let mut i = start;
        while i > lo {
            let (Some(before), Some(here)) = (level(i - 1), level(i)) else {
                return start;
            };
            if before <= quiet {
                return i;
            }
            if before > here * RISE_SWELL {
                return start;
            }
            i -= 1;
        }
        start
    }

    /// Frame `i`, if it is still held (behind or ahead of the current one).
    fn frame(&self, i: u64) -> Option<PitchFrame> {
        self.behind
            .iter()
            .chain(self.ahead.iter())
            .find(|g| g.index == i)
            .copied()
    }

    /// Whether a short note `b` ending at frame `end` was played, not passed through: the
    /// detector fires at its start and (unless silence follows) at the next note's, and its
    /// pitch holds within [`STRUCK_SPREAD`]. A singer's scoop or a glide's midpoint has
    /// neither: its onset is the note it leads into, and its pitch moves.
    fn is_struck_note(&self, b: &Building, end: u64) -> bool {
        let Some(t) = self.threshold() else {
            return false;
        };
        let silence_after = self.frame(end).is_none_or(|g| !g.voiced);
        self.onset_peak(b.start, t) && (silence_after || self.onset_peak(end, t)) && holds(b)
    }

    /// Whether the pitch left `old` (MIDI) around frame `first` (the first frame away from it)
    /// in a step, not a glide: at most [`STEP_FRAMES`] frames lie between the last one within
    /// [`STEP_NEAR`] of `old` and the first of three that hold within [`STEP_NEAR`] of each
    /// other (the new pitch). `now` is the frame being decided (no longer held ahead, not yet
    /// behind).
    fn is_step(&self, first: u64, old: f32, now: &PitchFrame) -> bool {
        let midi = |i: u64| {
            (if i == now.index {
                Some(*now)
            } else {
                self.frame(i)
            })
            .filter(|g| g.voiced)
            .map(|g| hz_to_midi(f64::from(g.hz)) as f32)
        };
        let window = STEP_FRAMES as u64 + 1;
        let Some(left) = (first.saturating_sub(window)..first)
            .rev()
            .find(|&i| midi(i).is_some_and(|m| (m - old).abs() <= STEP_NEAR))
        else {
            return false;
        };
        (first..=left + window).any(|i| {
            let held: Option<Vec<f32>> = (i..i + 3).map(midi).collect();
            held.is_some_and(|h| {
                let (lo, hi) = span(h.into_iter());
                hi - lo <= STEP_NEAR
            })
        })
    }

    /// Whether a short note `b` was a note of a fast legato run: no voice sings (the voice gate
    /// says so), it began at a quick pitch step from the note before, it ends at another one
    /// (`end`; an onset or silence also counts) and its pitch holds within
    /// [`STRUCK_SPREAD`]. A legato run on a wind or bowed instrument has no attack for the
    /// detector to hear, only steps: the test renders' piccolo reel lost 23 of its 122 notes
    /// as too short, at 80-110 ms each. A note that began after silence and ends at a quick
    /// step counts too (a tune's first note: its attack out of silence is as clear a start).
    /// A singer's scoop also looks like this, which is why it needs the gate: without one the
    /// rule is off.
    fn is_stepped_note(&self, b: &Building, end: End) -> bool {
        let run = matches!(
            (b.begin, end),
            (Begin::Change { step: true }, End::Step | End::Cut) | (Begin::Silence, End::Step)
        );
        self.gated && !b.voice && run && holds(b)
    }

    /// Ends note `b` at frame `end` (`how` it ended) and sends it when it is long enough (and,
    /// when sung, not under [`LOWEST_SUNG`]).
    fn emit(&mut self, b: Building, end: u64, how: End, out: &mut Vec<Note>) {
        if b.n == 0 || end <= b.start {
            return;
        }
        let start = vowel_start(&b).unwrap_or(b.start);
        let (start_s, end_s) = (start as f64 * self.frame_s, end as f64 * self.frame_s);
        let confidence = b.p_sum / b.n as f32;
        let frames = end - b.start;
        let sung_change = b.voice && matches!(b.begin, Begin::Change { .. });
        let min_s = if sung_change {
            self.p.min_note_s.max(self.p.min_sung_change_s)
        } else {
            self.p.min_note_s
        };
        let long_enough = lasts(self.frame_s, frames, min_s)
            || (lasts(self.frame_s, frames, self.p.min_onset_note_s)
                && (self.is_struck_note(&b, end) || self.is_stepped_note(&b, how)));
        if !long_enough || confidence < self.p.min_confidence {
            return;
        }
        let (key, m) = b.key();
        if b.voice && m < LOWEST_SUNG {
            return;
        }
        let midi = key.clamp(0.0, 127.0);
        // -60 dBFS and below is pianissimo (1), full scale is 127.
        let velocity = (((b.peak_db + 60.0) / 60.0) * 126.0 + 1.0).clamp(1.0, 127.0);
        self.last_end = end;
        out.push(Note {
            midi: midi as u8,
            cents: ((m - midi) * 100.0).clamp(-50.0, 50.0),
            start: start_s,
            end: end_s,
            velocity: velocity.round() as u8,
            confidence: confidence.clamp(0.0, 1.0),
        });
    }
}

/// A note whose median F0 is this far from the nearest key (semitones) ... (0.25, the first
/// value tried, lost two blown-bottle notes on the held-out renders, whose partials sit a little
/// sharp of their F0; 0.3 lost none.)
const BETWEEN_KEYS: f32 = 0.3;
/// ... takes the other neighbouring key when its pitch class holds this many times the power.
const BETWEEN_KEYS_RATIO: f32 = 2.0;

/// Sung notes below this (MIDI; A1, 55 Hz) are dropped: no voice sings that low, and where the
/// voice gate hears a voice the tracker's bass range (down to 32 Hz, see `PitchParams::fmin`)
/// picked up breath and room rumble in the rests. SSVD v2.0 train/valid with that range: 0.672
/// without the floor, 0.677 with it (as at 55 Hz); test 0.721 (0.722 at 55 Hz).
const LOWEST_SUNG: f32 = 33.0;

/// Frames of a note's head (200 ms) searched for where its vowel begins.
const VOWEL_FRAMES: usize = 20;

/// A sung note starts where its vowel does: at the first of its head frames within this of the
/// loudest. A voiced consonant before the vowel (the m, n, l, r, d of a lyric or of solfege)
/// already has a pitch but is 10-20 dB quieter, and singers place the vowel, not the
/// consonant, on the beat; SSVD annotates it so. Before this rule, 500 of the 651 sung notes
/// whose onset was 50-200 ms off started early. Chosen on SSVD v2.0 train/valid, dry and in
/// the two rooms of `../shared/data/noise/rir` (`hark-train eval notes --room`): a dry
/// recording favours a tight margin, a room a wide one, because a room's colour and tail
/// flatten the level rise into the vowel and a tight margin then starts notes late.
///
/// | margin | dry | bright room (its first 8 ms) | 0.8 s reverberation |
/// |---|---|---|---|
/// | 6 dB | 0.677 | 0.587 | 0.464 |
/// | 8 dB | 0.675 | 0.623 | 0.529 |
/// | **10 dB** | 0.666 | 0.646 | 0.552 |
/// | 12 dB | 0.659 | 0.653 | 0.558 |
/// | no rule | 0.640 | 0.643 | 0.558 |
///
/// 10 dB gives up 0.011 dry for 0.06-0.09 in the rooms. Only where a voice sings: an
/// instrument's attack is where its note starts, however quiet.
const VOWEL_DB: f32 = 10.0;

/// Where sung note `b`'s vowel begins (see [`VOWEL_DB`]); None when it was not sung, or when
/// no quieter frames lead into its vowel.
fn vowel_start(b: &Building) -> Option<u64> {
    if !b.voice {
        return None;
    }
    let top = b.head.iter().map(|h| h.1).fold(f32::MIN, f32::max);
    let first = b.head.iter().find(|h| h.1 >= top - VOWEL_DB)?;
    (first.0 > b.head.first()?.0).then_some(first.0)
}

/// The networks the monophonic transcriber may use besides pYIN (none: the rules alone).
#[derive(Debug, Clone, Default)]
pub struct MonoModels {
    /// The note-onset detector notes are cut at.
    pub onsets: Option<Arc<OnsetModel>>,
    /// A sound model with YAMNet's AudioSet classifier: where it hears a voice, the detector
    /// is set aside for the rules (see [`crate::notes::voice`]).
    pub voice: Option<Arc<SoundClassifier>>,
    /// A learned pitch network (SwiftF0) whose posterior reweights pYIN's F0 candidates (see
    /// [`PitchPrior`]): computed as the audio arrives in a stream, over the whole buffer in
    /// [`transcribe_mono_frames`].
    pub f0: Option<Arc<SwiftF0>>,
}

/// The streaming monophonic transcriber: samples in, pitch frames and finished notes out.
#[derive(Debug)]
pub struct MonoTracker {
    params: MonoParams,
    models: MonoModels,
    pitch: PitchTracker,
    seg: Segmenter,
    onsets: Option<(Arc<OnsetModel>, OnsetDetector)>,
    voice: Option<VoiceGate>,
}

impl MonoTracker {
    /// Notes cut by the flux and level rules alone.
    pub fn new(p: MonoParams) -> Self {
        Self::build(p, MonoModels::default())
    }

    /// A tracker with these networks. With an onset detector, notes are also cut at its peaks
    /// (see [`crate::nn::onset`]); it needs less lookahead than the pitch tracker, so this
    /// adds no latency. With a voice model as well, the detector is heard only where no voice
    /// sings. A voice model that cannot serve (no AudioSet classifier) is left out, with a
    /// warning.
    pub fn build(p: MonoParams, models: MonoModels) -> Self {
        let mut pitch = PitchTracker::new(p.pitch.clone());
        if let Some(net) = models.f0.clone().filter(|_| f0_rate_ok(&p)) {
            pitch = pitch.with_live_prior(net);
        }
        let (seg, onsets) = match &models.onsets {
            Some(m) => (
                Segmenter::with_onsets(p.segment.clone(), pitch.frame_s(), m.config.threshold),
                Some((m.clone(), OnsetDetector::new(m))),
            ),
            None => (Segmenter::new(p.segment.clone(), pitch.frame_s()), None),
        };
        // Without a detector there is nothing for the gate to switch off.
        let voice = models
            .voice
            .clone()
            .filter(|_| onsets.is_some())
            .and_then(|m| match VoiceGate::new(m) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(error = %e, "Notes: no voice gate; the detector cuts every passage.");
                    None
                }
            });
        Self {
            params: p,
            models,
            pitch,
            seg,
            onsets,
            voice,
        }
    }

    /// Reweights pYIN's candidates by a learned F0 posterior over the samples to come, from the
    /// first one, instead of the live one of `models.f0` (offline: a restart drops it, as its
    /// times would no longer line up).
    pub fn with_f0_prior(mut self, prior: Arc<PitchPrior>) -> Self {
        self.pitch = self.pitch.with_prior(prior);
        self
    }

    /// A fresh tracker with the same settings and networks (after a gap in the stream).
    pub fn restart(&mut self) {
        *self = Self::build(self.params.clone(), self.models.clone());
    }

    /// Seconds per pitch frame.
    pub fn frame_s(&self) -> f64 {
        self.pitch.frame_s()
    }

    pub fn push(&mut self, samples: &[f32]) -> MonoOutput {
        self.push_voice(samples);
        if let Some((model, det)) = &mut self.onsets {
            self.seg.push_onsets(&det.push(model, samples));
        }
        let frames = self.pitch.push(samples);
        let notes = self.seg.push(&frames);
        MonoOutput { frames, notes }
    }

    /// Feeds the voice gate; its decisions hold from the first pitch frame at or after the
    /// end of the patch they were made on, so they never look ahead of the audio.
    fn push_voice(&mut self, samples: &[f32]) {
        let Some(gate) = &mut self.voice else {
            return;
        };
        match gate.push(samples) {
            Ok(decisions) => {
                let hop = self.params.pitch.hop as u64;
                for (end, voice) in decisions {
                    self.seg.push_voice(end.div_ceil(hop), voice);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Notes: the voice gate failed; the detector cuts every passage.");
                self.voice = None;
            }
        }
    }

    pub fn finish(&mut self) -> MonoOutput {
        if let Some((model, det)) = &mut self.onsets {
            self.seg.push_onsets(&det.finish(model));
        }
        let frames = self.pitch.finish();
        let mut notes = self.seg.push(&frames);
        notes.extend(self.seg.finish());
        MonoOutput { frames, notes }
    }
}

/// Transcribes a whole buffer (mono, at `params.pitch.sample_rate`), with the onset detector
/// when one is given.
pub fn transcribe_mono(samples: &[f32], params: &MonoParams, models: MonoModels) -> Vec<Note> {
    transcribe_mono_frames(samples, params, models, None).notes
}

/// Whether the tracker's rate is the one the pitch network hears (16 kHz, as every caller
/// resamples to).
fn f0_rate_ok(p: &MonoParams) -> bool {
    p.pitch.sample_rate == swift_f0::SAMPLE_RATE
}

/// Transcribes a whole buffer: its notes and every pitch frame. pYIN's candidates are
/// reweighted by `prior`, a learned F0 posterior over the same buffer, or else by the posterior
/// of `models.f0` over the whole buffer.
pub fn transcribe_mono_frames(
    samples: &[f32],
    params: &MonoParams,
    models: MonoModels,
    prior: Option<Arc<PitchPrior>>,
) -> MonoOutput {
    let prior = prior.or_else(|| {
        let net = models.f0.as_ref().filter(|_| f0_rate_ok(params))?;
        Some(Arc::new(PitchPrior::from_swift_f0(net, samples)))
    });
    let mut t = MonoTracker::build(params.clone(), models);
    if let Some(p) = prior {
        t = t.with_f0_prior(p);
    }
    let mut out = t.push(samples);
    let rest = t.finish();
    out.frames.extend(rest.frames);
    out.notes.extend(rest.notes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notes::midi_to_hz;

    /// A melody of harmonic tones with short attacks and releases; `gap_s` of silence between.
    fn melody(notes: &[(u8, f64)], gap_s: f64) -> (Vec<f32>, Vec<(u8, f64, f64)>) {
        let sr = 16_000.0;
        let mut x = Vec::new();
        let mut truth = Vec::new();
        for &(m, dur) in notes {
            let start = x.len() as f64 / sr;
            let hz = midi_to_hz(f64::from(m));
            let n = (dur * sr) as usize;
            for i in 0..n {
                let t = i as f64 / sr;
                let env = (t / 0.01).min(1.0) * ((dur - t) / 0.02).clamp(0.0, 1.0);
                let s: f64 = (1..=4)
                    .map(|h| (2.0 * std::f64::consts::PI * hz * h as f64 * t).sin() / h as f64)
                    .sum();
                x.push((0.25 * env * s) as f32);
            }
            truth.push((m, start, start + dur));
            x.extend(std::iter::repeat_n(0.0, (gap_s * sr) as usize));
        }
        (x, truth)
    }

    #[test]
    fn a_scale_comes_out_note_for_note() {
        let (x, truth) = melody(
            &[
                (60, 0.4),
                (62, 0.3),
                (64, 0.3),
                (65, 0.5),
                (67, 0.25),
                (72, 0.6),
            ],
            0.0,
        );
        let notes = keys_come_out(&x, &truth);
        for (n, t) in notes.iter().zip(&truth) {
            assert!((n.start - t.1).abs() < 0.05, "{n:?} vs {t:?}");
            assert!((n.end - t.2).abs() < 0.08, "{n:?} vs {t:?}");
        }
    }

    /// Transcribes `x` and checks that its notes are the keys of `truth`, in order.
    fn keys_come_out(x: &[f32], truth: &[(u8, f64, f64)]) -> Vec<Note> {
        let notes = transcribe_mono(x, &MonoParams::default(), MonoModels::default());
        let got: Vec<u8> = notes.iter().map(|n| n.midi).collect();
        let want: Vec<u8> = truth.iter().map(|t| t.0).collect();
        assert_eq!(got, want, "{notes:?}");
        notes
    }

    #[test]
    fn a_bass_guitars_low_e_and_f_come_out() {
        let (x, truth) = melody(&[(28, 0.6), (29, 0.5), (33, 0.6)], 0.0);
        keys_come_out(&x, &truth);
    }

    #[test]
    fn repeated_notes_are_split_at_their_onsets() {
        let (x, truth) = melody(&[(67, 0.3), (67, 0.3), (67, 0.3), (64, 0.6)], 0.0);
        let notes = transcribe_mono(&x, &MonoParams::default(), MonoModels::default());
        assert_eq!(notes.len(), truth.len(), "{notes:?}");
    }

    /// Steady voiced frames at `midis[i]` (no flux, no level change): only a detector can cut.
    fn flat_frames(midis: &[f32]) -> Vec<PitchFrame> {
        midis
            .iter()
            .enumerate()
            .map(|(i, &m)| PitchFrame {
                index: i as u64,
                hz: midi_to_hz(f64::from(m)) as f32,
                voiced: true,
                p_voiced: 0.95,
                rms_db: -20.0,
                flux: 1.0,
                chroma: [0.0; 12],
            })
            .collect()
    }

    fn segment_with(frames: &[PitchFrame], probs: &[f32]) -> Vec<Note> {
        segment_gated(frames, probs, None)
    }

    /// [`segment_with`], the gate saying `voice` from frame 0 (None: no gate).
    fn segment_gated(frames: &[PitchFrame], probs: &[f32], voice: Option<bool>) -> Vec<Note> {
        let mut s = Segmenter::with_onsets(SegmentParams::default(), 0.01, 0.5);
        s.push_onsets(probs);
        run_segmenter(s, frames, voice)
    }

    /// All of `frames` through segmenter `s`, its gate saying `voice` from frame 0 (None: no
    /// gate); every note, the last one included.
    fn run_segmenter(mut s: Segmenter, frames: &[PitchFrame], voice: Option<bool>) -> Vec<Note> {
        if let Some(v) = voice {
            s.push_voice(0, v);
        }
        let mut notes = s.push(frames);
        notes.extend(s.finish());
        notes
    }

    /// 1.5 s of one steady pitch, and detector peaks at frames 50 and 100.
    fn legato_repeats() -> (Vec<PitchFrame>, Vec<f32>) {
        let mut probs = vec![0.01f32; 150];
        for k in [50usize, 100] {
            probs[k - 1] = 0.4;
            probs[k] = 0.9;
            probs[k + 1] = 0.5;
        }
        (flat_frames(&[69.0; 150]), probs)
    }

    #[test]
    fn detector_peaks_split_legato_repeats_the_rules_cannot_hear() {
        let (frames, probs) = legato_repeats();
        let notes = segment_with(&frames, &probs);
        let starts: Vec<f64> = notes.iter().map(|n| (n.start * 100.0).round()).collect();
        assert_eq!(starts, vec![0.0, 50.0, 100.0], "{notes:?}");
        assert!(notes.iter().all(|n| n.midi == 69));
        // Without the detector the same frames are one note.
        let one = run_segmenter(
            Segmenter::new(SegmentParams::default(), 0.01),
            &frames,
            None,
        );
        assert_eq!(one.len(), 1, "{one:?}");
    }

    /// 50 frames whose F0 reads 70.6 (a blend of A#4 and the B4 or C5 ringing on) with
    /// `a_sharp` and `b` the power in A#'s and B's pitch classes; the note's (key, pitch).
    fn crossfade_note(a_sharp: f32, b: f32, voice: bool) -> (u8, f32) {
        let mut frames = flat_frames(&[70.6; 50]);
        for (i, f) in frames.iter_mut().enumerate() {
            if i >= 40 {
                // The old note has faded: the last frames read the new one's own pitch.
                f.hz = midi_to_hz(70.1) as f32;
            }
            (f.chroma[10], f.chroma[11]) = (a_sharp, b);
        }
        let notes = segment_voice(&frames, voice);
        assert_eq!(notes.len(), 1, "{notes:?}");
        (
            notes[0].midi,
            f32::from(notes[0].midi) + notes[0].cents / 100.0,
        )
    }

    #[test]
    fn a_pitch_read_between_two_keys_takes_the_key_whose_class_sounds() {
        let (key, pitch) = crossfade_note(1.0, 0.1, false);
        assert_eq!(key, 70);
        // Its pitch comes from the frames that read within a semitone of it.
        assert!((pitch - 70.1).abs() < 0.01, "{pitch}");
        // Rounding stands when the spectrum does not say otherwise, or a voice sings.
        assert_eq!(crossfade_note(1.0, 1.0, false).0, 71);
        assert_eq!(crossfade_note(1.0, 0.1, true).0, 71);
    }

    /// A slow attack under a release: the pitch reads C for 40 frames, then G, while G's
    /// pitch class (7) rises from frame `rise_from` (power 0.001, x1.5 a frame up to 1; never
    /// under `g_before`) and C's (0) stays at 1. Returns the second note's start frame, with
    /// or without a voice singing.
    fn second_start(rise_from: usize, g_before: f32, voice: bool) -> f64 {
        let mut frames = flat_frames(&[60.0; 40]);
        frames.extend(flat_frames(&[67.0; 40]));
        for (i, f) in frames.iter_mut().enumerate() {
            f.index = i as u64;
            f.chroma[0] = 1.0;
            f.chroma[7] = if i < rise_from {
                g_before
            } else {
                (0.001 * 1.5f32.powi((i - rise_from) as i32)).clamp(g_before, 1.0)
            };
        }
        let notes = segment_voice(&frames, voice);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!((notes[0].midi, notes[1].midi), (60, 67));
        (notes[1].start * 100.0).round()
    }

    #[test]
    fn a_slow_attack_starts_where_its_pitch_class_rises() {
        // G's class is under a tenth of its peak up to frame 28 (0.001 x 1.5^11 = 0.086) and
        // over it from 29 (0.13): the note starts there, not at the pitch change (frame 40).
        assert_eq!(second_start(17, 0.0, false), 29.0);
        // Already sounding under C (an overtone at -3 dB, no rise): the pitch change stands.
        assert_eq!(second_start(17, 0.5, false), 40.0);
        // Where a voice sings, sung notes start where their pitch arrives (SSVD convention).
        assert_eq!(second_start(17, 0.0, true), 40.0);
        // A rise that began before the previous note's shortest length (12 frames) could be
        // that note's own: the pitch change stands.
        assert_eq!(second_start(0, 0.0, false), 40.0);
    }

    /// Runs the rules (no detector) over `frames`, with the voice gate saying `voice`.
    fn segment_voice(frames: &[PitchFrame], voice: bool) -> Vec<Note> {
        run_segmenter(
            Segmenter::new(SegmentParams::default(), 0.01),
            frames,
            Some(voice),
        )
    }

    #[test]
    fn a_sung_note_starts_at_its_vowel_an_instruments_at_its_attack() {
        // Silence, then 8 frames of a voiced consonant 15 dB under the vowel, then the vowel.
        let mut frames = flat_frames(&[0.0; 20]);
        frames.extend(flat_frames(&[64.0; 60]));
        for (i, f) in frames.iter_mut().enumerate() {
            f.index = i as u64;
            f.voiced = i >= 20;
            f.rms_db = if i < 28 { -35.0 } else { -20.0 };
        }
        let sung = segment_voice(&frames, true);
        assert_eq!(sung.len(), 1, "{sung:?}");
        assert!((sung[0].start - 0.28).abs() < 1e-9, "{sung:?}");
        let played = segment_voice(&frames, false);
        assert!((played[0].start - 0.20).abs() < 1e-9, "{played:?}");
    }

    #[test]
    fn a_note_below_a1_is_no_sung_note() {
        let low = flat_frames(&[30.0; 40]);
        assert!(segment_voice(&low, true).is_empty());
        let played = segment_voice(&low, false);
        assert_eq!(played.iter().map(|n| n.midi).collect::<Vec<_>>(), [30]);
        let sung = segment_voice(&flat_frames(&[40.0; 40]), true);
        assert_eq!(sung.iter().map(|n| n.midi).collect::<Vec<_>>(), [40]);
    }

    #[test]
    fn a_sung_glide_between_two_notes_is_no_note() {
        // 60, then 150 ms at 62 (where a singer's glide from 60 to 64 lingers), then 64.
        let glide = |len: usize| {
            let mut m = vec![60.0; 50];
            m.extend(vec![62.0; len]);
            m.extend(vec![64.0; 50]);
            flat_frames(&m)
        };
        let keys = |notes: Vec<Note>| notes.iter().map(|n| n.midi).collect::<Vec<_>>();
        assert_eq!(keys(segment_voice(&glide(15), true)), vec![60, 64]);
        // An instrument's 150 ms note is a note, and so is a sung one of 250 ms.
        assert_eq!(keys(segment_voice(&glide(15), false)), vec![60, 62, 64]);
        assert_eq!(keys(segment_voice(&glide(25), true)), vec![60, 62, 64]);
    }

    #[test]
    fn where_a_voice_sings_the_detector_is_not_heard() {
        // The same legato repeats; a voice from frame 80 on: the peak at 50 still splits, the
        // one at 100 (a singer's consonant, say) does not.
        let (frames, probs) = legato_repeats();
        let mut s = Segmenter::with_onsets(SegmentParams::default(), 0.01, 0.5);
        s.push_onsets(&probs);
        s.push_voice(80, true);
        let mut notes = s.push(&frames);
        notes.extend(s.finish());
        let starts: Vec<f64> = notes.iter().map(|n| (n.start * 100.0).round()).collect();
        assert_eq!(starts, vec![0.0, 50.0], "{notes:?}");
    }

    #[test]
    fn a_slow_attack_starts_at_the_detector_onset_not_where_its_pitch_settles() {
        // The detector fires at frame 60; the pitch only reaches the new note 8 frames later
        // (a slow attack under the old note's release).
        let mut midis = vec![69.0f32; 68];
        midis.extend(vec![72.0f32; 80]);
        let frames = flat_frames(&midis);
        let mut probs = vec![0.01f32; midis.len()];
        probs[60] = 0.9;
        let notes = segment_with(&frames, &probs);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!((notes[0].midi, notes[1].midi), (69, 72));
        assert!((notes[1].start - 0.60).abs() <= 0.011, "{notes:?}");
        // The rules alone start it where the pitch moved.
        let late = run_segmenter(
            Segmenter::new(SegmentParams::default(), 0.01),
            &frames,
            None,
        );
        assert!(late[1].start >= 0.67, "{late:?}");
    }

    #[test]
    fn a_short_note_between_two_onsets_is_kept_a_passing_one_is_not() {
        // 69 for 50 frames, 72 for 7 (70 ms), 74 for 50: a fast run's middle note.
        let mut midis = vec![69.0f32; 50];
        midis.extend(vec![72.0f32; 7]);
        midis.extend(vec![74.0f32; 50]);
        let frames = flat_frames(&midis);
        let mut probs = vec![0.01f32; midis.len()];
        probs[50] = 0.9;
        probs[57] = 0.9;
        let notes = segment_with(&frames, &probs);
        let got: Vec<u8> = notes.iter().map(|n| n.midi).collect();
        assert_eq!(got, vec![69, 72, 74], "{notes:?}");
        // No onset where it ends: a pitch passed through on the way to the next note.
        probs[57] = 0.01;
        let got: Vec<u8> = segment_with(&frames, &probs)
            .iter()
            .map(|n| n.midi)
            .collect();
        assert_eq!(got, vec![69, 74]);
        // Onsets at both ends but a pitch still moving (a scoop): dropped too.
        probs[57] = 0.9;
        let mut moving = frames.clone();
        for (k, f) in moving[50..57].iter_mut().enumerate() {
            f.hz = midi_to_hz(70.5 + 0.5 * k as f64) as f32;
        }
        let got: Vec<u8> = segment_with(&moving, &probs)
            .iter()
            .map(|n| n.midi)
            .collect();
        assert_eq!(got, vec![69, 74]);
    }

    #[test]
    fn a_fast_legato_run_keeps_its_short_notes_where_no_voice_sings() {
        // 69 for 40 frames, then 71, 73, 75 for 11 frames (110 ms) each, then 77 for 40, with
        // no detector peak anywhere: a legato run has steps, not attacks.
        let mut midis = vec![69.0f32; 40];
        for m in [71.0, 73.0, 75.0] {
            midis.extend([m; 11]);
        }
        midis.extend([77.0; 40]);
        let run = |frames: &[PitchFrame], voice: Option<bool>| {
            segment_gated(frames, &vec![0.01; frames.len()], voice)
                .iter()
                .map(|n| n.midi)
                .collect::<Vec<u8>>()
        };
        let frames = flat_frames(&midis);
        assert_eq!(run(&frames, Some(false)), vec![69, 71, 73, 75, 77]);
        // A voice singing, or no gate to say none does: the steps may be a singer's scoops.
        assert_eq!(run(&frames, Some(true)), vec![69, 77]);
        assert_eq!(run(&frames, None), vec![69, 77]);
        // Steps that glide (a whole tone over 7 frames) are passed through, not played.
        let mut glided = frames.clone();
        for start in [40usize, 51, 62, 73] {
            let (from, to) = (midis[start - 1], midis[start]);
            for k in 0..7 {
                let m = from + (to - from) * (k as f32 + 1.0) / 8.0;
                glided[start + k].hz = midi_to_hz(f64::from(m)) as f32;
            }
        }
        assert_eq!(run(&glided, Some(false)), vec![69, 77]);
    }

    /// Runs the segmenter over `frames` with detector `probs`, the gate saying `voice` from
    /// frame 0 (None: no gate); the notes' (midi, start frame).
    fn notes_of(frames: &[PitchFrame], probs: &[f32], voice: Option<bool>) -> Vec<(u8, u64)> {
        segment_gated(frames, probs, voice)
            .iter()
            .map(|n| (n.midi, (n.start / 0.01).round() as u64))
            .collect()
    }

    /// Frames `0..silent` unvoiced, then `midis`.
    fn after_silence(silent: usize, midis: &[f32]) -> Vec<PitchFrame> {
        let mut all = vec![0.0f32; silent];
        all.extend(midis);
        let mut frames = flat_frames(&all);
        for f in &mut frames[..silent] {
            (f.hz, f.voiced, f.p_voiced) = (0.0, false, 0.0);
        }
        frames
    }

    #[test]
    fn a_short_legato_note_keeps_its_onset_from_the_next_notes_lookback() {
        // 80 from frame 10; the detector fires at 40 (strongly) and 49, and each time the
        // pitch window still hears the old pitch for a few frames: 78 holds 46-50, 77 from 51.
        // The change to 77 looks back 12 frames from 51, to 39, past 78's own onset.
        let mut midis = vec![80.0f32; 36];
        midis.extend([78.0; 5]);
        midis.extend([77.0; 30]);
        let frames = after_silence(10, &midis);
        let mut probs = vec![0.01f32; frames.len()];
        (probs[40], probs[49]) = (0.9, 0.6);
        let near = |got: &[(u8, u64)], want: &[(u8, u64)]| {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(g, w)| g.0 == w.0 && g.1.abs_diff(w.1) <= 1)
        };
        let got = notes_of(&frames, &probs, Some(false));
        assert!(near(&got, &[(80, 10), (78, 40), (77, 49)]), "{got:?}");
        // Where the short note's frames are barely periodic (a glide's midpoint in a voice
        // patch), the peak at its start is the next note's, as before.
        let mut weak = frames.clone();
        for f in &mut weak[46..51] {
            f.p_voiced = 0.5;
        }
        let got = notes_of(&weak, &probs, Some(false));
        assert!(near(&got, &[(80, 10), (77, 41)]), "{got:?}");
    }

    #[test]
    fn a_short_first_note_after_silence_is_kept_when_it_steps_into_the_next() {
        // 78 for 10 frames (100 ms) after silence, then a quick step to 77: a fast tune's first
        // note. Its attack out of silence is as clear a start as a step.
        let mut midis = vec![78.0f32; 10];
        midis.extend([77.0; 40]);
        let frames = after_silence(10, &midis);
        let probs = vec![0.01f32; frames.len()];
        assert_eq!(
            notes_of(&frames, &probs, Some(false)),
            vec![(78, 10), (77, 20)]
        );
        // A voice's scoop into its note looks the same: not without the gate's say.
        assert_eq!(notes_of(&frames, &probs, Some(true)), vec![(77, 20)]);
        assert_eq!(notes_of(&frames, &probs, None), vec![(77, 20)]);
        // Nor a blip after silence that ends in silence.
        let blip = after_silence(10, &[78.0f32; 10]);
        assert!(notes_of(&blip, &[0.01; 20], Some(false)).is_empty());
    }

    #[test]
    fn a_jump_at_an_onset_starts_there_though_the_old_pitch_lingers_in_the_window() {
        // The detector fires at 50 and 62; the pitch window still hears 69 for 2 frames after
        // the first onset, then 63 holds until the second: a 120 ms note of a fast tune.
        let mut midis = vec![69.0f32; 52];
        midis.extend(vec![63.0f32; 10]);
        midis.extend(vec![69.0f32; 50]);
        let frames = flat_frames(&midis);
        let mut probs = vec![0.01f32; midis.len()];
        probs[50] = 0.9;
        probs[62] = 0.9;
        let notes = segment_with(&frames, &probs);
        let got: Vec<(u8, i64, i64)> = notes
            .iter()
            .map(|n| {
                let frame = |t: f64| (t * 100.0).round() as i64;
                (n.midi, frame(n.start), frame(n.end))
            })
            .collect();
        assert_eq!(got, vec![(69, 0, 50), (63, 50, 62), (69, 62, 112)]);
    }

    #[test]
    fn an_attack_that_breaks_the_voicing_starts_at_the_onset_before_the_break() {
        // The detector fires at 50, the pitch window hears the old note and a blip of the new
        // one, then 3 unvoiced frames (a bow change, a breath) before 65 settles at 55.
        let mut midis = vec![69.0f32; 51];
        midis.extend(vec![65.0f32; 50]);
        let mut frames = flat_frames(&midis);
        for f in &mut frames[52..55] {
            f.voiced = false;
            f.p_voiced = 0.02;
        }
        let mut probs = vec![0.01f32; midis.len()];
        probs[50] = 0.9;
        let notes = segment_with(&frames, &probs);
        let got: Vec<(u8, i64)> = notes
            .iter()
            .map(|n| (n.midi, (n.start * 100.0).round() as i64))
            .collect();
        assert_eq!(got, vec![(69, 0), (65, 50)], "{notes:?}");
    }

    #[test]
    fn a_note_after_silence_starts_at_the_detector_onset_in_a_loud_noisy_attack() {
        // A note, 60 unvoiced frames, then a note whose pitch shows 9 frames after the
        // detector fired at frame 111 (a bowed or breathy attack).
        let mut frames = flat_frames(&[69.0; 160]);
        for f in &mut frames[60..120] {
            f.voiced = false;
            f.hz = 0.0;
            f.p_voiced = 0.1;
        }
        let mut probs = vec![0.01f32; frames.len()];
        probs[111] = 0.9;
        // An earlier peak in the gap, more than 120 ms before the pitch, is not its onset.
        probs[95] = 0.9;
        let notes = segment_with(&frames, &probs);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!((notes[1].start - 1.11).abs() <= 0.005, "{notes:?}");
        // Without a peak in reach it starts at its first voiced frame.
        let mut probs = vec![0.01f32; frames.len()];
        probs[100] = 0.9;
        let notes = segment_with(&frames, &probs);
        assert!((notes[1].start - 1.20).abs() <= 0.005, "{notes:?}");
        // A quiet consonant before a sung vowel: the peak is 12 dB under the note's head, so
        // the note starts where its pitch does.
        for f in &mut frames[60..120] {
            f.rms_db = -32.0;
        }
        let mut probs = vec![0.01f32; frames.len()];
        probs[111] = 0.9;
        let notes = segment_with(&frames, &probs);
        assert!((notes[1].start - 1.20).abs() <= 0.005, "{notes:?}");
    }

    #[test]
    fn streaming_matches_offline() {
        let (x, _) = melody(&[(57, 0.3), (59, 0.3), (60, 0.5)], 0.1);
        let whole = transcribe_mono(&x, &MonoParams::default(), MonoModels::default());
        let mut t = MonoTracker::new(MonoParams::default());
        let mut notes = Vec::new();
        for c in x.chunks(777) {
            notes.extend(t.push(c).notes);
        }
        notes.extend(t.finish().notes);
        assert_eq!(
            notes.iter().map(|n| n.midi).collect::<Vec<_>>(),
            whole.iter().map(|n| n.midi).collect::<Vec<_>>()
        );
    }
}

/// Development aid: `HARK_NOTES_DUMP=IN_DIR:OUT_DIR cargo test --lib dump_notes -- --ignored`
/// transcribes every audio file in IN_DIR to OUT_DIR/<stem>.tsv (onset, offset, midi).
#[cfg(test)]
mod dump {
    #[test]
    #[ignore = "development aid"]
    fn dump_notes() {
        let Ok(spec) = std::env::var("HARK_NOTES_DUMP") else {
            return;
        };
        let (inp, out) = spec.split_once(':').expect("IN:OUT");
        std::fs::create_dir_all(out).unwrap();
        let paths: Vec<_> = std::fs::read_dir(inp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("flac" | "wav")))
            .collect();
        std::thread::scope(|s| {
            for part in paths.chunks(paths.len().div_ceil(2).max(1)) {
                s.spawn(move || part.iter().for_each(|p| one(p, out)));
            }
        });
    }

    /// HARK_ONSET=DIR: cut at that onset detector's peaks.
    fn onset_model() -> Option<std::sync::Arc<crate::nn::onset::OnsetModel>> {
        let dir = std::env::var("HARK_ONSET").ok()?;
        let mut m = crate::nn::onset::OnsetModel::load(std::path::Path::new(&dir)).unwrap();
        if let Some(t) = std::env::var("HARK_ONSET_T")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            m.config.threshold = t;
        }
        Some(std::sync::Arc::new(m))
    }

    fn one(p: &std::path::Path, out: &str) {
        {
            let x = crate::audio::file::decode_file_16k(p).unwrap();
            let mut params = super::MonoParams::default();
            let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = env("HARK_LAG") {
                params.pitch.lag = v as usize;
            }
            if let Some(v) = env("HARK_MIN_NOTE") {
                params.segment.min_note_s = v;
            }
            if let Some(v) = env("HARK_SPLIT") {
                params.segment.split_semitones = v as f32;
            }
            if let Some(v) = env("HARK_VALLEY") {
                params.segment.valley_db = v as f32;
            }
            if let Some(v) = env("HARK_ONSET_RATIO") {
                params.segment.onset_ratio = v as f32;
            }
            if let Some(v) = env("HARK_RISE") {
                params.segment.onset_rise_db = v as f32;
            }
            if let Some(v) = env("HARK_GAP") {
                params.segment.gap_frames = v as usize;
            }
            if let Some(v) = env("HARK_CONF") {
                params.segment.min_confidence = v as f32;
            }
            if let Some(v) = env("HARK_VALLEY_MIN") {
                params.segment.valley_min_s = v;
            }
            if let Some(v) = env("HARK_VALLEY_P") {
                params.segment.valley_voicing = v as f32;
            }
            if let Some(v) = env("HARK_CHANGE") {
                params.segment.change_frames = v as usize;
            }
            let stem = p.file_stem().unwrap().to_str().unwrap();
            if std::env::var("HARK_FRAMES").is_ok() {
                let mut s = String::new();
                for f in crate::notes::pitch::track(&x, params.pitch.clone()) {
                    s += &format!(
                        "{}\t{:.2}\t{}\t{:.3}\t{:.2}\t{:.3}\n",
                        f.index,
                        f.hz,
                        u8::from(f.voiced),
                        f.p_voiced,
                        f.rms_db,
                        f.flux
                    );
                }
                std::fs::write(format!("{out}/{stem}.frames"), s).unwrap();
            }
            let model = onset_model();
            if let (Some(m), true) = (&model, std::env::var("HARK_FRAMES").is_ok()) {
                let probs: Vec<String> = m
                    .probabilities(&x)
                    .iter()
                    .map(|p| format!("{p:.3}"))
                    .collect();
                std::fs::write(format!("{out}/{stem}.probs"), probs.join("\n")).unwrap();
            }
            let models = super::MonoModels {
                onsets: model,
                voice: None,
                f0: None,
            };
            let notes = super::transcribe_mono(&x, &params, models);
            let mut s = String::new();
            for n in notes {
                let pitch = f32::from(n.midi) + n.cents / 100.0;
                s += &format!("{:.4}\t{:.4}\t{pitch:.3}\n", n.start, n.end);
            }
            std::fs::write(format!("{out}/{stem}.tsv"), s).unwrap();
        }
    }
}
#[cfg(test)]
mod dbg {
    #[test]
    #[ignore = "development aid"]
    fn dbg_frames() {
        let spec = std::env::var("HARK_DBG").unwrap();
        let v: Vec<&str> = spec.split(':').collect();
        let x = crate::audio::file::decode_file_16k(std::path::Path::new(v[0])).unwrap();
        let (a, b): (u64, u64) = (v[1].parse().unwrap(), v[2].parse().unwrap());
        for f in crate::notes::pitch::track(&x, Default::default()) {
            if f.index >= a && f.index < b {
                eprintln!(
                    "{} {:.1} {:.2} {} {:.2} {:.1} {:.2}",
                    f.index,
                    f.hz,
                    crate::notes::hz_to_midi(f.hz as f64),
                    f.voiced,
                    f.p_voiced,
                    f.rms_db,
                    f.flux
                );
            }
        }
    }
}

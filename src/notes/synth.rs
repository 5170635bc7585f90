//! A small additive synthesiser: plays notes back so a user can hear a transcription (or hear it
//! backwards), and so tests can make audio with known notes.
//!
//! Each note is a sum of harmonics (`Voice::harmonics`, amplitudes of partials 1, 2, 3, ...; those
//! above Nyquist are left out) under a linear ADSR envelope whose release starts at the note's
//! end. Velocity sets amplitude as `(velocity / 127)^2` (the usual MIDI velocity curve, about
//! 40 dB from 1 to 127). The mix is never clipped: when its peak exceeds [`PEAK`] the whole
//! buffer is scaled down to it (never up), so relative loudness within a piece is kept.
//!
//! [`reverse`] plays the piece backwards *as a score*: the note order is reversed in time (a note
//! that spanned `[s, e]` in a piece of length `T` spans `[T - e, T - s]`), but each note still
//! sounds forwards with its own attack and decay. Reversing the samples instead would turn every
//! attack into a swell, which is a different (and less musical) effect.

use super::Note;

/// Highest peak of a rendered buffer.
pub const PEAK: f32 = 0.9;

/// Longest buffer [`render`] makes; later notes are cut (a bad note list must not exhaust memory).
pub const MAX_SECONDS: f64 = 3600.0;

/// The sound of every note.
#[derive(Debug, Clone, PartialEq)]
pub struct Voice {
    /// Amplitude of partial k + 1 (the fundamental first).
    pub harmonics: Vec<f32>,
    pub attack_s: f64,
    pub decay_s: f64,
    /// Level held after the decay, relative to the attack's peak (0..1).
    pub sustain: f32,
    pub release_s: f64,
}

impl Default for Voice {
    /// A soft organ-like tone: six partials falling off as 1/k, quick attack, short release.
    fn default() -> Self {
        Self {
            harmonics: (1..=6).map(|k| 1.0 / k as f32).collect(),
            attack_s: 0.01,
            decay_s: 0.1,
            sustain: 0.7,
            release_s: 0.08,
        }
    }
}

impl Voice {
    /// The envelope at `t` seconds after the onset of a note lasting `dur` seconds.
    fn envelope(&self, t: f64, dur: f64) -> f32 {
        let held = |t: f64| -> f64 {
            let s = f64::from(self.sustain);
            if t < self.attack_s {
                t / self.attack_s
            } else if t < self.attack_s + self.decay_s {
                1.0 - (1.0 - s) * (t - self.attack_s) / self.decay_s
            } else {
                s
            }
        };
        if t < 0.0 {
            0.0
        } else if t < dur {
            held(t) as f32
        } else if t < dur + self.release_s {
            (held(dur) * (1.0 - (t - dur) / self.release_s)) as f32
        } else {
            0.0
        }
    }
}

/// Renders notes to mono f32 at `rate` Hz; the buffer lasts until the last release ends (at most
/// [`MAX_SECONDS`]).
pub fn render(notes: &[Note], rate: u32, voice: &Voice) -> Vec<f32> {
    let rate_f = f64::from(rate.max(1));
    let end = notes
        .iter()
        .map(|n| n.end)
        .filter(|e| e.is_finite())
        .fold(0.0, f64::max);
    let len = ((end + voice.release_s).min(MAX_SECONDS) * rate_f)
        .ceil()
        .max(0.0) as usize;
    let mut out = vec![0f32; len];
    for n in notes {
        if !(n.start.is_finite() && n.end.is_finite()) || n.end <= n.start || n.start < 0.0 {
            continue;
        }
        let f0 = n.hz();
        let partials: Vec<(f64, f32)> = voice
            .harmonics
            .iter()
            .enumerate()
            .map(|(k, &a)| ((k + 1) as f64 * f0, a))
            .filter(|&(f, _)| f < rate_f / 2.0)
            .collect();
        let gain = (f32::from(n.velocity.min(127)) / 127.0).powi(2);
        let dur = n.end - n.start;
        let first = ((n.start * rate_f).ceil() as usize).min(len);
        let last = (((n.end + voice.release_s) * rate_f).ceil() as usize).min(len);
        for (i, y) in out.iter_mut().enumerate().take(last).skip(first) {
            let t = i as f64 / rate_f - n.start;
            let env = voice.envelope(t, dur);
            if env == 0.0 {
                continue;
            }
            let w = std::f64::consts::TAU * t;
            let s: f32 = partials
                .iter()
                .map(|&(f, a)| a * (w * f).sin() as f32)
                .sum();
            *y += gain * env * s;
        }
    }
    let peak = out.iter().fold(0f32, |m, x| m.max(x.abs()));
    if peak > PEAK {
        let k = PEAK / peak;
        out.iter_mut().for_each(|x| *x *= k);
    }
    out
}

/// The notes in reverse time order within a piece that ends at the last note's end (see the
/// module docs); sorted by start.
pub fn reverse(notes: &[Note]) -> Vec<Note> {
    let total = notes.iter().map(|n| n.end).fold(0.0, f64::max);
    reverse_in(notes, total)
}

/// The notes in reverse time order within a piece of `total_s` seconds (e.g. the audio's
/// length, so leading and trailing silence swap too); sorted by start.
pub fn reverse_in(notes: &[Note], total_s: f64) -> Vec<Note> {
    let mut out: Vec<Note> = notes
        .iter()
        .map(|n| Note {
            start: (total_s - n.end).max(0.0),
            end: (total_s - n.start).max(0.0),
            ..*n
        })
        .collect();
    out.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.midi.cmp(&b.midi)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustfft::{FftPlanner, num_complex::Complex};

    fn note(start: f64, end: f64, midi: u8, velocity: u8) -> Note {
        Note {
            midi,
            cents: 0.0,
            start,
            end,
            velocity,
            confidence: 1.0,
        }
    }

    /// Frequency of the strongest FFT bin of `x[from..from + n]` (Hann window).
    fn peak_hz(x: &[f32], from: usize, n: usize, rate: u32) -> f64 {
        let mut buf: Vec<Complex<f32>> = (0..n)
            .map(|i| {
                let w = 0.5 - 0.5 * (std::f32::consts::TAU * i as f32 / n as f32).cos();
                Complex::new(x[from + i] * w, 0.0)
            })
            .collect();
        FftPlanner::new().plan_fft_forward(n).process(&mut buf);
        let (k, _) = buf[1..n / 2]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.norm().total_cmp(&b.1.norm()))
            .unwrap();
        (k + 1) as f64 * f64::from(rate) / n as f64
    }

    #[test]
    fn a_single_note_peaks_at_its_frequency() {
        let rate = 16_000;
        for midi in [57u8, 69, 81] {
            let x = render(&[note(0.1, 1.2, midi, 100)], rate, &Voice::default());
            let n = 8192; // 1.95 Hz bins
            let got = peak_hz(&x, 3200, n, rate);
            let want = super::super::midi_to_hz(f64::from(midi));
            assert!(
                (got - want).abs() < 2.0,
                "midi {midi}: {got} Hz, want {want}"
            );
            assert!(
                x[..1600].iter().all(|&s| s == 0.0),
                "sound before the onset"
            );
        }
    }

    #[test]
    fn never_clips_and_velocity_sets_loudness() {
        let chord: Vec<Note> = [48u8, 52, 55, 60, 64, 67, 72]
            .iter()
            .map(|&m| note(0.0, 0.5, m, 127))
            .collect();
        let x = render(&chord, 16_000, &Voice::default());
        let peak = x.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak <= PEAK + 1e-6 && peak > 0.5, "peak {peak}");
        let rms = |v: u8| {
            let y = render(&[note(0.0, 0.5, 60, v)], 16_000, &Voice::default());
            (y.iter().map(|s| s * s).sum::<f32>() / y.len() as f32).sqrt()
        };
        assert!(rms(100) > 3.0 * rms(50));
    }

    #[test]
    fn reversal_reverses_the_order_not_the_notes() {
        let notes = vec![
            note(0.0, 0.5, 60, 100),
            note(0.5, 1.5, 62, 90),
            note(1.5, 2.0, 64, 80),
        ];
        let r = reverse(&notes);
        let order: Vec<u8> = r.iter().map(|n| n.midi).collect();
        assert_eq!(order, [64, 62, 60]);
        assert_eq!((r[0].start, r[0].end), (0.0, 0.5));
        assert_eq!((r[1].start, r[1].end), (0.5, 1.5));
        assert_eq!((r[2].start, r[2].end, r[2].velocity), (1.5, 2.0, 100));
        assert_eq!(reverse(&r), notes);
        // Each reversed note still starts with an attack: rendered, the first note's onset is
        // at 0 and its second half is as loud as the original's (not a swell from silence).
        let rate = 16_000;
        let x = render(&r, rate, &Voice::default());
        assert!(peak_hz(&x, 1000, 4096, rate) > 320.0); // E4 first (330 Hz), not C4 (262 Hz)
        let y = render(&reverse_in(&notes, 3.0), rate, &Voice::default());
        assert!(
            y[..16_000].iter().all(|&s| s == 0.0),
            "1 s of silence leads"
        );
    }
}

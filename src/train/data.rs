//! Data sets and augmentation for the trainers.
//!
//! [`Us8k`] reads any data set in UrbanSound8K's layout (`metadata/UrbanSound8K.csv` +
//! `audio/foldN/<slice_file_name>`): the original (WAV at mixed rates, bit depths and channel
//! counts) or the FLAC copy in `../shared/data` (the CSV keeps the `.wav` names; a missing `.wav`
//! is looked up as `.flac`). Every clip is decoded to 16 kHz mono, the stream format.
//!
//! [`NoiseBank`] holds real background noise for augmentation; [`Augment`] draws every random
//! choice from one seeded generator, so a run with the same `--seed` sees the same data.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::TrainError;
use crate::audio::{Format, file};

/// One labelled clip of the data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub path: PathBuf,
    pub fold: u32,
    pub class_id: usize,
    pub class: String,
}

/// An UrbanSound8K-layout data set.
#[derive(Debug, Clone)]
pub struct Us8k {
    pub root: PathBuf,
    pub clips: Vec<Clip>,
    /// Class names by id.
    pub classes: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct Row {
    slice_file_name: String,
    fold: u32,
    #[serde(rename = "classID")]
    class_id: usize,
    class: String,
}

impl Us8k {
    /// Reads the manifest and resolves every clip's file (clips whose file is missing are an
    /// error naming the first few, so a half-copied data set does not train silently).
    pub fn load(root: &Path) -> Result<Self, TrainError> {
        let csv_path = root.join("metadata").join("UrbanSound8K.csv");
        let mut rdr = csv::Reader::from_path(&csv_path).map_err(|e| TrainError::Data {
            path: csv_path.clone(),
            reason: e.to_string(),
        })?;
        let mut clips = Vec::new();
        let mut classes: Vec<String> = Vec::new();
        let mut missing = Vec::new();
        for row in rdr.deserialize::<Row>() {
            let row = row.map_err(|e| TrainError::Data {
                path: csv_path.clone(),
                reason: e.to_string(),
            })?;
            if row.class_id >= 1000 {
                return Err(TrainError::Data {
                    path: csv_path.clone(),
                    reason: format!("classID {} is out of range", row.class_id),
                });
            }
            if classes.len() <= row.class_id {
                classes.resize(row.class_id + 1, String::new());
            }
            classes[row.class_id] = row.class.clone();
            let dir = root.join("audio").join(format!("fold{}", row.fold));
            let mut path = dir.join(&row.slice_file_name);
            if !path.is_file() {
                path.set_extension("flac");
            }
            if !path.is_file() {
                missing.push(dir.join(&row.slice_file_name));
                continue;
            }
            clips.push(Clip {
                path,
                fold: row.fold,
                class_id: row.class_id,
                class: row.class,
            });
        }
        if !missing.is_empty() {
            return Err(TrainError::Data {
                path: root.to_path_buf(),
                reason: format!(
                    "{} clips listed in the CSV are missing (e.g. {})",
                    missing.len(),
                    missing
                        .iter()
                        .take(3)
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if clips.is_empty() || classes.iter().any(String::is_empty) {
            return Err(TrainError::Data {
                path: csv_path,
                reason: "no clips, or class ids with no name".into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            clips,
            classes,
        })
    }

    /// The clips of the given folds.
    pub fn folds(&self, folds: &[u32]) -> Vec<Clip> {
        self.clips
            .iter()
            .filter(|c| folds.contains(&c.fold))
            .cloned()
            .collect()
    }
}

/// Decodes a clip to 16 kHz mono.
pub fn load_16k(path: &Path) -> Result<Vec<f32>, TrainError> {
    file::decode_file_16k(path).map_err(|e| TrainError::Data {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Real background noise (every audio file under the given directories, 16 kHz mono).
#[derive(Debug, Default)]
pub struct NoiseBank {
    pub clips: Vec<(PathBuf, Vec<f32>)>,
}

impl NoiseBank {
    /// Loads every `.flac`/`.wav`/`.ogg`/`.mp3` under `dirs` (recursively; a path that is a
    /// file is taken as it is); room impulse responses (files under a directory named `rir`)
    /// are skipped: they are not noise.
    pub fn load(dirs: &[PathBuf]) -> Result<Self, TrainError> {
        let mut files = Vec::new();
        for d in dirs {
            if d.is_file() {
                files.push(d.clone());
            } else {
                collect_audio(d, &mut files)?;
            }
        }
        files.sort();
        let mut clips = Vec::new();
        for f in files {
            let x = load_16k(&f)?;
            // At least a second of audio, and not digital silence.
            if x.len() >= 16_000 && rms(&x) > 1e-4 {
                clips.push((f, x));
            }
        }
        Ok(Self { clips })
    }

    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }
}

/// Clips of "anything else" (speech, ambience) under `dirs`, labelled `class_id`/`class`: a
/// catch-all class lets the classifier say "none of the above" instead of forcing speech into
/// the nearest sound class. Files are used whole (the front end pads or tiles them).
pub fn background_clips(
    dirs: &[PathBuf],
    class_id: usize,
    class: &str,
) -> Result<Vec<Clip>, TrainError> {
    let mut files = Vec::new();
    for d in dirs {
        collect_audio(d, &mut files)?;
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|path| Clip {
            path,
            fold: 0,
            class_id,
            class: class.to_string(),
        })
        .collect())
}

fn collect_audio(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TrainError> {
    let rd = std::fs::read_dir(dir).map_err(|e| TrainError::Data {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "rir") {
                continue;
            }
            collect_audio(&p, out)?;
        } else if crate::audio::file::is_audio_path(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Adds `noise` (read from `offset`, wrapping around) to `x` at `snr_db` below `x`'s RMS
/// over its whole length. Nothing is added to silence, or when the noise is silent.
pub fn add_noise(x: &mut [f32], noise: &[f32], offset: usize, snr_db: f32) {
    if noise.is_empty() {
        return;
    }
    let seg: Vec<f32> = (0..x.len())
        .map(|i| noise[(offset + i) % noise.len()])
        .collect();
    let (ps, pn) = (rms(x), rms(&seg));
    if ps > 1e-6 && pn > 1e-6 {
        let g = ps / pn / 10f32.powf(snr_db / 20.0);
        for (a, b) in x.iter_mut().zip(&seg) {
            *a += g * b;
        }
    }
}

pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Waveform augmentation settings. Defaults are what `hark-train sound` uses.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentConfig {
    /// Max shift of the clip in time (a circular roll), seconds.
    pub max_shift_s: f32,
    /// Gain range, dB.
    pub gain_db: (f32, f32),
    /// Probability of mixing in background noise, and its SNR range in dB.
    pub noise_p: f32,
    pub snr_db: (f32, f32),
    /// Probability and range of a speed change (pitch and tempo together), as a factor.
    pub speed_p: f32,
    pub speed: (f32, f32),
    /// Probability of playing the clip in a synthetic room ([`synthetic_room`]), before the
    /// noise is added.
    pub room_p: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            max_shift_s: 1.0,
            gain_db: (-12.0, 6.0),
            noise_p: 0.6,
            snr_db: (0.0, 20.0),
            speed_p: 0.5,
            speed: (0.9, 1.1),
            room_p: 0.0,
        }
    }
}

/// A seeded augmenter.
#[derive(Debug)]
pub struct Augment<'a> {
    pub cfg: AugmentConfig,
    pub noise: &'a NoiseBank,
    pub rng: StdRng,
}

impl<'a> Augment<'a> {
    pub fn new(cfg: AugmentConfig, noise: &'a NoiseBank, seed: u64) -> Self {
        Self {
            cfg,
            noise,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// One augmented copy of `x` (16 kHz mono).
    pub fn apply(&mut self, x: &[f32]) -> Vec<f32> {
        let c = self.cfg.clone();
        let mut y = if self.rng.random::<f32>() < c.speed_p {
            let f = self.rng.random_range(c.speed.0..=c.speed.1);
            change_speed(x, f)
        } else {
            x.to_vec()
        };
        if c.max_shift_s > 0.0 && !y.is_empty() {
            let max = ((c.max_shift_s * 16_000.0) as usize).min(y.len() - 1);
            if max > 0 {
                let k = self.rng.random_range(0..=max);
                y.rotate_right(k);
            }
        }
        if c.room_p > 0.0 && self.rng.random::<f32>() < c.room_p {
            let h = synthetic_room(&mut self.rng);
            y = convolve(&y, &h);
        }
        if !self.noise.is_empty() && self.rng.random::<f32>() < c.noise_p {
            let (_, n) = &self.noise.clips[self.rng.random_range(0..self.noise.clips.len())];
            let off = self
                .rng
                .random_range(0..n.len().saturating_sub(y.len()).max(1));
            let snr = self.rng.random_range(c.snr_db.0..=c.snr_db.1);
            add_noise(&mut y, n, off, snr);
        }
        let gain = 10f32.powf(self.rng.random_range(c.gain_db.0..=c.gain_db.1) / 20.0);
        let peak = y.iter().fold(0f32, |m, v| m.max(v.abs())) * gain;
        // Never clip: a clipped copy teaches distortion, not the class.
        let gain = if peak > 0.99 {
            gain * 0.99 / peak
        } else {
            gain
        };
        for v in &mut y {
            *v *= gain;
        }
        y
    }

    /// SpecAugment on a `[frames][mels]` patch: one time mask and one frequency mask, filled with
    /// the patch mean.
    pub fn spec_augment(&mut self, patch: &mut [f32], frames: usize, mels: usize) {
        let mean = patch.iter().sum::<f32>() / patch.len().max(1) as f32;
        let t = self.rng.random_range(0..=frames / 8);
        let t0 = self.rng.random_range(0..=frames - t);
        for f in t0..t0 + t {
            patch[f * mels..(f + 1) * mels].fill(mean);
        }
        let m = self.rng.random_range(0..=mels / 8);
        let m0 = self.rng.random_range(0..=mels - m);
        for f in 0..frames {
            patch[f * mels + m0..f * mels + m0 + m].fill(mean);
        }
    }
}

/// FFT convolution of `x` with `h` (same length as `x`), peak kept.
pub fn convolve(x: &[f32], h: &[f32]) -> Vec<f32> {
    use rustfft::{FftPlanner, num_complex::Complex};
    let n = (x.len() + h.len()).next_power_of_two();
    let mut p = FftPlanner::<f32>::new();
    let (f, i) = (p.plan_fft_forward(n), p.plan_fft_inverse(n));
    let mut a: Vec<Complex<f32>> = (0..n)
        .map(|k| Complex::new(*x.get(k).unwrap_or(&0.0), 0.0))
        .collect();
    let mut b: Vec<Complex<f32>> = (0..n)
        .map(|k| Complex::new(*h.get(k).unwrap_or(&0.0), 0.0))
        .collect();
    f.process(&mut a);
    f.process(&mut b);
    for (u, v) in a.iter_mut().zip(&b) {
        *u *= v;
    }
    i.process(&mut a);
    let y: Vec<f32> = a[..x.len()].iter().map(|c| c.re / n as f32).collect();
    let (px, py) = (peak(x), peak(&y));
    if py > 0.0 {
        y.iter().map(|v| v * px / py).collect()
    } else {
        y
    }
}

/// A random room impulse response (16 kHz) for augmentation: the direct sound at sample 0
/// (so onsets stay where they were), 2-6 early reflections within 3-30 ms, and a diffuse tail
/// of noise decaying with a reverberation time of 0.2-1.2 s, faster above ~1.5 kHz (air and
/// walls absorb highs), at -6..+10 dB direct-to-reverberant ratio. Recorded responses are
/// few and are kept for measuring (`hark-train eval notes --room`); a generated one is a
/// different room every time, which is what a model that must work in rooms it never heard
/// needs to see.
pub fn synthetic_room(rng: &mut StdRng) -> Vec<f32> {
    const SR: f32 = 16_000.0;
    let rt60 = rng.random_range(0.2f32..=1.2);
    let len = ((rt60 * SR) as usize).max(1);
    let mut h = vec![0f32; len];
    for _ in 0..rng.random_range(2..=6) {
        let at = rng
            .random_range((0.003 * SR) as usize..(0.03 * SR) as usize)
            .min(len - 1);
        let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
        h[at] += sign * rng.random_range(0.1f32..0.6);
    }
    // Two bands of noise (a one-pole low-pass and the rest), the upper one decaying at 0.6x
    // the reverberation time: -60 dB at rt60 is a factor of 10^-3, ln(1000) = 6.91.
    let onset = (0.005 * SR) as usize;
    let (mut low, mut tail) = (0f32, vec![0f32; len]);
    for (i, t) in tail.iter_mut().enumerate().skip(onset) {
        let n: f32 = rng.random_range(-1.0..1.0);
        low += 0.3 * (n - low);
        let secs = i as f32 / SR;
        *t = low * (-6.91 * secs / rt60).exp() + (n - low) * (-6.91 * secs / (0.6 * rt60)).exp();
    }
    let energy: f32 = tail.iter().map(|v| v * v).sum();
    let drr_db = rng.random_range(-6.0f32..=10.0);
    // Direct sound (energy 1) over the tail's energy is the ratio drawn.
    let g = if energy > 0.0 {
        (10f32.powf(-drr_db / 10.0) / energy).sqrt()
    } else {
        0.0
    };
    h[0] = 1.0;
    for (a, t) in h.iter_mut().zip(&tail) {
        *a += g * t;
    }
    h
}

/// The largest absolute sample.
pub fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// A room impulse response (16 kHz) from `path`, starting 1 ms before its direct sound:
/// recorded responses begin with the sound's flight time (32 ms in
/// `../shared/data/noise/rir/rir48000.flac`), which would delay every onset convolved with it.
pub fn room_response(path: &Path) -> Result<Vec<f32>, TrainError> {
    let h = load_16k(path)?;
    let top = peak(&h);
    if top <= 0.0 {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            reason: "the room impulse response is silent".into(),
        });
    }
    let direct = h.iter().position(|v| v.abs() >= 0.1 * top).unwrap_or(0);
    Ok(h[direct.saturating_sub(16)..].to_vec())
}

/// Plays `x` `factor` times faster (pitch up and shorter for factor > 1), by resampling:
/// treat the audio as recorded at `16 kHz * factor` and convert it back to 16 kHz.
pub fn change_speed(x: &[f32], factor: f32) -> Vec<f32> {
    let rate = (16_000.0 * factor).round() as u32;
    file::to_16k_mono(Format { rate, channels: 1 }, x).unwrap_or_else(|_| x.to_vec())
}

/// Writes 16 kHz mono 16-bit WAV (clipped to [-1, 1]).
pub fn write_wav(path: &Path, x: &[f32]) -> Result<(), TrainError> {
    let err = |reason: String| TrainError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = file::wav_bytes(x, 16_000).map_err(|e| err(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_room_starts_with_its_direct_sound_and_decays() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let h = synthetic_room(&mut rng);
            assert!((3_200..=19_200).contains(&h.len()), "{}", h.len());
            // Nothing before the direct sound, which is the largest sample.
            assert_eq!(peak(&h), h[0].abs());
            let energy = |a: usize, b: usize| h[a..b].iter().map(|v| v * v).sum::<f32>();
            let tenth = h.len() / 10;
            // The tail decays: its last tenth holds far less energy than its second tenth.
            assert!(energy(9 * tenth, h.len()) < 0.1 * energy(tenth, 2 * tenth));
        }
    }

    #[test]
    fn augmentation_is_deterministic_per_seed_and_never_clips() {
        let bank = NoiseBank {
            clips: vec![(
                PathBuf::from("n"),
                (0..20_000)
                    .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
                    .collect(),
            )],
        };
        let x: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.9).collect();
        let a = Augment::new(AugmentConfig::default(), &bank, 7).apply(&x);
        let b = Augment::new(AugmentConfig::default(), &bank, 7).apply(&x);
        let c = Augment::new(AugmentConfig::default(), &bank, 8).apply(&x);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| v.abs() <= 0.99 + 1e-6));
    }

    #[test]
    fn noise_is_added_at_the_asked_snr_and_never_to_silence() {
        let x: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let noise: Vec<f32> = (0..5_000)
            .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
            .collect();
        let mut y = x.clone();
        add_noise(&mut y, &noise, 4_000, 10.0);
        let added: Vec<f32> = y.iter().zip(&x).map(|(a, b)| a - b).collect();
        let snr = 20.0 * (rms(&x) / rms(&added)).log10();
        assert!((snr - 10.0).abs() < 0.01, "{snr}");
        // The noise wraps around from its offset.
        assert!((added[1_000] / added[6_000] - 1.0).abs() < 1e-4);
        let mut silent = vec![0f32; 100];
        add_noise(&mut silent, &noise, 0, 10.0);
        assert!(silent.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn speed_change_scales_length() {
        let x = vec![0.1f32; 16_000];
        let y = change_speed(&x, 1.1);
        assert!(
            (y.len() as f32 - 16_000.0 / 1.1).abs() < 200.0,
            "{}",
            y.len()
        );
    }

    #[test]
    fn reverb_keeps_length_and_peak() {
        let x: Vec<f32> = (0..1000).map(|i| if i == 10 { 0.5 } else { 0.0 }).collect();
        let y = convolve(&x, &[1.0, 0.5, 0.25]);
        assert_eq!(y.len(), x.len());
        assert!((peak(&y) - 0.5).abs() < 1e-4);
        assert!((y[11] - 0.25).abs() < 1e-3);
    }
}

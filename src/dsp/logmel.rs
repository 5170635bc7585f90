//! Whisper's log-mel spectrogram (`whisper/audio.py::log_mel_spectrogram`).
//!
//! ```text
//! stft  = torch.stft(audio, 400, 160, window=hann_window(400), center=True, pad_mode="reflect")
//! power = stft[..., :-1].abs() ** 2            # last frame dropped
//! mel   = filters @ power                      # Slaney filters, 80 or 128 bands
//! log   = log10(max(mel, 1e-10))
//! log   = max(log, log.max() - 8)              # global max over the whole call
//! out   = (log + 4) / 4
//! ```
//!
//! Note the `max - 8` floor depends on the loudest frame of the *whole* input of one call, so
//! log-mel computed chunk by chunk differs from log-mel of the concatenated audio.

use std::fmt;

use super::mel::MelBank;
use super::stft::{Stft, StftScratch, hann_window};

/// Sample rate Whisper expects, in Hz.
pub const SAMPLE_RATE: u32 = 16_000;
/// FFT length (25 ms at 16 kHz).
pub const N_FFT: usize = 400;
/// Frame advance (10 ms at 16 kHz).
pub const HOP: usize = 160;

/// Precomputed Whisper log-mel plan: periodic Hann window, FFT plan and Slaney mel filters.
/// Build once, reuse; it is `Send + Sync`, and [`LogMel::compute`] takes `&self`.
#[derive(Clone)]
pub struct LogMel {
    n_mels: usize,
    stft: Stft,
    bank: MelBank,
}

impl fmt::Debug for LogMel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogMel")
            .field("n_mels", &self.n_mels)
            .field("stft", &self.stft)
            .field("bank", &self.bank)
            .finish()
    }
}

/// Reusable scratch buffers for [`LogMel::compute_into`] (one per thread).
pub struct LogMelScratch {
    stft: StftScratch,
    power: Vec<f32>,
    mel: Vec<f32>,
}

impl fmt::Debug for LogMelScratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogMelScratch")
            .field("n_bins", &self.power.len())
            .field("n_mels", &self.mel.len())
            .finish_non_exhaustive()
    }
}

impl LogMel {
    /// Plan for `n_mels` bands (80 for most Whisper models, 128 for large-v3).
    ///
    /// # Panics
    /// If `n_mels` is 0.
    pub fn new(n_mels: usize) -> Self {
        assert!(n_mels > 0, "n_mels must be positive");
        Self {
            n_mels,
            stft: Stft::new(N_FFT, HOP, hann_window(N_FFT)),
            bank: MelBank::new(SAMPLE_RATE, N_FFT, n_mels, 0.0, SAMPLE_RATE as f32 / 2.0),
        }
    }

    /// Number of mel bands (rows of the output).
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Number of output frames (columns) for `n_samples` input samples: `n_samples / HOP`
    /// (torch's `1 + n / hop` centred frames, minus the dropped last one).
    pub fn n_frames(n_samples: usize) -> usize {
        n_samples / HOP
    }

    /// The STFT plan used.
    pub fn stft(&self) -> &Stft {
        &self.stft
    }

    /// The mel filter bank used.
    pub fn filters(&self) -> &MelBank {
        &self.bank
    }

    /// Allocates scratch buffers for [`Self::compute_into`].
    pub fn make_scratch(&self) -> LogMelScratch {
        LogMelScratch {
            stft: self.stft.make_scratch(),
            power: vec![0.0; self.stft.n_bins()],
            mel: vec![0.0; self.n_mels],
        }
    }

    /// Whisper's `log_mel_spectrogram` of `samples` (16 kHz mono, nominally in [-1, 1]).
    ///
    /// Returns row-major `[n_mels][n_frames]` with `n_frames = samples.len() / HOP`; empty for
    /// fewer than `HOP` samples. Input shorter than `N_FFT / 2 + 1` samples, where Whisper's
    /// reflect padding is impossible, is treated as zero-extended to that length first (see
    /// [`super::stft`]). Silence gives a constant -1.5 (= (log10(1e-10) + 4) / 4), never NaN.
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        self.compute_into(samples, &mut self.make_scratch(), &mut out);
        out
    }

    /// As [`Self::compute`], writing into `out` (cleared and resized) with caller-owned scratch:
    /// allocates nothing once `out` has the capacity.
    pub fn compute_into(&self, samples: &[f32], scratch: &mut LogMelScratch, out: &mut Vec<f32>) {
        let n_frames = Self::n_frames(samples.len());
        out.clear();
        out.resize(self.n_mels * n_frames, 0.0);
        if n_frames == 0 {
            return;
        }
        let mut max = f32::NEG_INFINITY;
        for t in 0..n_frames {
            self.stft
                .power_frame_centered(samples, t, &mut scratch.power, &mut scratch.stft);
            self.bank.apply(&scratch.power, &mut scratch.mel);
            for (&v, row) in scratch.mel.iter().zip(out.chunks_exact_mut(n_frames)) {
                let l = v.max(1e-10).log10();
                row[t] = l;
                max = max.max(l);
            }
        }
        let floor = max - 8.0;
        for v in out.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn golden_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
    }

    fn read_f32(name: &str) -> Vec<f32> {
        let path = golden_dir().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(bytes.len() % 4, 0);
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn matches_whisper_golden() {
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(golden_dir().join("logmel_cases.json")).expect("logmel_cases.json"),
        )
        .expect("valid json");
        let cases = index["cases"].as_array().expect("cases");
        assert!(cases.len() >= 3);
        let mut plans: Vec<LogMel> = Vec::new();
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let n_mels = case["n_mels"].as_u64().unwrap() as usize;
            let n_frames = case["n_frames"].as_u64().unwrap() as usize;
            let input = read_f32(case["input"].as_str().unwrap());
            let want = read_f32(case["expected"].as_str().unwrap());
            assert_eq!(input.len() as u64, case["n_samples"].as_u64().unwrap());
            assert_eq!(want.len(), n_mels * n_frames);
            assert_eq!(LogMel::n_frames(input.len()), n_frames, "{name}");
            if !plans.iter().any(|p| p.n_mels() == n_mels) {
                plans.push(LogMel::new(n_mels));
            }
            let plan = plans.iter().find(|p| p.n_mels() == n_mels).unwrap();
            let got = plan.compute(&input);
            let diff = max_abs_diff(&got, &want);
            println!(
                "{name}: [{n_mels}][{n_frames}] max abs diff vs numpy float64 reference {diff:e}"
            );
            assert!(diff <= 1e-4, "{name}: max abs diff {diff}");
        }
    }

    #[test]
    fn zeros_give_constant_not_nan() {
        let lm = LogMel::new(80);
        for n in [160, 400, 16_000] {
            let out = lm.compute(&vec![0.0; n]);
            assert_eq!(out.len(), 80 * (n / 160));
            assert!(out.iter().all(|&v| v == -1.5), "n = {n}");
        }
    }

    #[test]
    fn short_input_does_not_panic() {
        let lm = LogMel::new(80);
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        for n in (0..=450).chain([479, 480, 481, 999, 1000]) {
            let out = lm.compute(&x[..n]);
            assert_eq!(out.len(), 80 * LogMel::n_frames(n), "n = {n}");
            assert!(out.iter().all(|v| v.is_finite()), "n = {n}");
            if !out.is_empty() {
                let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let min = out.iter().copied().fold(f32::INFINITY, f32::min);
                assert!(
                    max - min <= 2.0 + 1e-6,
                    "floor at max - 8 (= 2 after scaling)"
                );
            }
        }
        assert!(lm.compute(&[]).is_empty());
        assert!(lm.compute(&x[..159]).is_empty());
    }

    #[test]
    fn frame_count() {
        assert_eq!(LogMel::n_frames(0), 0);
        assert_eq!(LogMel::n_frames(159), 0);
        assert_eq!(LogMel::n_frames(160), 1);
        assert_eq!(LogMel::n_frames(480_000), 3000);
        assert_eq!(LogMel::n_frames(480_159), 3000);
        let lm = LogMel::new(128);
        assert_eq!(lm.n_mels(), 128);
        assert_eq!(lm.compute(&vec![0.1; 3333]).len(), 128 * 20);
    }

    #[test]
    fn compute_into_reuses_buffers_and_matches() {
        let lm = LogMel::new(80);
        let x: Vec<f32> = (0..8000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut scratch = lm.make_scratch();
        let mut out = Vec::new();
        lm.compute_into(&x, &mut scratch, &mut out);
        assert_eq!(out, lm.compute(&x));
        let cap = out.capacity();
        lm.compute_into(&x[..4000], &mut scratch, &mut out);
        assert_eq!(out, lm.compute(&x[..4000]));
        assert_eq!(out.capacity(), cap);
    }

    #[test]
    fn plan_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<LogMel>();
    }
}

//! Log-mel patches for sound classification: YAMNet's front end.
//!
//! YAMNet (and the AudioSet VGGish line before it) was trained on this exact front end, so a
//! backbone taken from it only works if we reproduce it; our own from-scratch CNN uses the same
//! patches so that both models train and serve through one code path:
//!
//! - 16 kHz mono; frames of 400 samples (25 ms) every 160 (10 ms), periodic Hann window,
//!   zero-padded to a 512-point FFT, **magnitude** (not power) spectrum; no centre padding
//!   (`tf.signal.stft(pad_end=False)`), so frame `t` covers samples `160 t .. 160 t + 400`;
//! - 64 mel bands from 125 to 7500 Hz on the HTK mel scale with triangular, un-normalised
//!   weights, exactly as `tf.signal.linear_to_mel_weight_matrix` builds them (the DC bin has
//!   no weight);
//! - `ln(mel + 0.001)`;
//! - patches of 96 frames (0.96 s of frames, 15 600 samples of audio), hop 48 frames (0.48 s).
//!
//! Everything is computed in f32 except the filter bank (f64, then rounded), which keeps us
//! within ~1e-5 of TensorFlow's float32 result.

use std::sync::Arc;

use rustfft::{Fft, FftPlanner, num_complex::Complex32};
use serde::{Deserialize, Serialize};

/// Front-end parameters, stored in a sound model's `config.json` so a model always runs on the
/// features it was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchParams {
    pub sample_rate: u32,
    /// Analysis window and hop, samples.
    pub win: usize,
    pub hop: usize,
    pub n_fft: usize,
    pub n_mels: usize,
    pub fmin: f32,
    pub fmax: f32,
    /// Added to mel magnitudes before the natural log.
    pub log_offset: f32,
    /// Frames per patch and between patch starts.
    pub patch_frames: usize,
    pub patch_hop_frames: usize,
}

impl Default for PatchParams {
    /// YAMNet's values.
    fn default() -> Self {
        Self {
            sample_rate: 16_000,
            win: 400,
            hop: 160,
            n_fft: 512,
            n_mels: 64,
            fmin: 125.0,
            fmax: 7500.0,
            log_offset: 0.001,
            patch_frames: 96,
            patch_hop_frames: 48,
        }
    }
}

impl PatchParams {
    /// Samples of audio one patch covers (15 600 for YAMNet: 0.975 s).
    pub fn patch_samples(&self) -> usize {
        self.win + (self.patch_frames - 1) * self.hop
    }

    /// Samples between patch starts (7 680: 0.48 s).
    pub fn patch_hop_samples(&self) -> usize {
        self.patch_hop_frames * self.hop
    }

    pub fn validate(&self) -> Result<(), String> {
        let ok = self.sample_rate > 0
            && self.win > 0
            && self.hop > 0
            && self.n_fft >= self.win
            && self.n_mels > 0
            && self.patch_frames > 0
            && self.patch_hop_frames > 0
            && self.fmin >= 0.0
            && self.fmax > self.fmin
            && self.fmax <= self.sample_rate as f32 / 2.0
            && self.log_offset > 0.0;
        if ok {
            Ok(())
        } else {
            Err(format!("invalid front-end parameters {self:?}"))
        }
    }
}

fn hz_to_mel_htk(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

/// Dense `[n_mels][n_fft / 2 + 1]` matrix as `tf.signal.linear_to_mel_weight_matrix`.
pub fn tf_mel_matrix(p: &PatchParams) -> Vec<f32> {
    let n_bins = p.n_fft / 2 + 1;
    let nyquist = f64::from(p.sample_rate) / 2.0;
    let lo = hz_to_mel_htk(f64::from(p.fmin));
    let hi = hz_to_mel_htk(f64::from(p.fmax));
    let edge = |i: usize| lo + (hi - lo) * i as f64 / (p.n_mels + 1) as f64;
    let mut m = vec![0f32; p.n_mels * n_bins];
    // Bin 0 (DC) gets no weight: TF computes slopes for bins 1.. and pads a zero row.
    for bin in 1..n_bins {
        let mel = hz_to_mel_htk(nyquist * bin as f64 / (n_bins - 1) as f64);
        for band in 0..p.n_mels {
            let (l, c, u) = (edge(band), edge(band + 1), edge(band + 2));
            let w = ((mel - l) / (c - l)).min((u - mel) / (u - c)).max(0.0);
            m[band * n_bins + bin] = w as f32;
        }
    }
    m
}

/// A planned front end. Cheap to clone (the FFT plan is shared).
#[derive(Clone)]
pub struct PatchFrontEnd {
    params: PatchParams,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
    /// Per band: first bin and its weights (the non-zero run of the dense matrix).
    bands: Vec<(usize, Vec<f32>)>,
}

impl std::fmt::Debug for PatchFrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchFrontEnd")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl PatchFrontEnd {
    pub fn new(params: PatchParams) -> Self {
        let n_bins = params.n_fft / 2 + 1;
        let dense = tf_mel_matrix(&params);
        let bands = dense
            .chunks(n_bins)
            .map(|row| {
                let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                (first, row[first..=last.max(first)].to_vec())
            })
            .collect();
        Self {
            window: super::stft::hann_window(params.win),
            fft: FftPlanner::new().plan_fft_forward(params.n_fft),
            params,
            bands,
        }
    }

    pub fn params(&self) -> &PatchParams {
        &self.params
    }

    /// Log-mel frames of `samples` (no padding: `1 + (len - win) / hop` frames, none if shorter
    /// than a window), row-major `[frames][n_mels]`.
    pub fn frames(&self, samples: &[f32]) -> Vec<f32> {
        let p = &self.params;
        if samples.len() < p.win {
            return Vec::new();
        }
        let n = 1 + (samples.len() - p.win) / p.hop;
        let mut out = vec![0f32; n * p.n_mels];
        let mut buf = vec![Complex32::new(0.0, 0.0); p.n_fft];
        let mut scratch = vec![Complex32::new(0.0, 0.0); self.fft.get_inplace_scratch_len()];
        let mut mag = vec![0f32; p.n_fft / 2 + 1];
        for (t, row) in out.chunks_mut(p.n_mels).enumerate() {
            let frame = &samples[t * p.hop..t * p.hop + p.win];
            for (i, c) in buf.iter_mut().enumerate() {
                *c = Complex32::new(frame.get(i).map_or(0.0, |x| x * self.window[i]), 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (m, c) in mag.iter_mut().zip(&buf) {
                *m = c.norm();
            }
            for (o, (first, w)) in row.iter_mut().zip(&self.bands) {
                let e: f32 = w.iter().zip(&mag[*first..]).map(|(a, b)| a * b).sum();
                *o = (e + p.log_offset).ln();
            }
        }
        out
    }

    /// Patches of `samples`, each `[patch_frames][n_mels]`, flattened; with their start sample.
    /// Audio shorter than one patch is zero-padded to one patch, so every clip yields at least
    /// one; a tail shorter than a patch hop is dropped (it is inside the previous patch).
    pub fn patches(&self, samples: &[f32]) -> (Vec<f32>, Vec<usize>) {
        let p = &self.params;
        let need = p.patch_samples();
        let padded;
        let samples = if samples.len() < need {
            let mut v = samples.to_vec();
            v.resize(need, 0.0);
            padded = v;
            &padded[..]
        } else {
            samples
        };
        let frames = self.frames(samples);
        let n_frames = frames.len() / p.n_mels;
        let per = p.patch_frames * p.n_mels;
        let mut out = Vec::new();
        let mut starts = Vec::new();
        let mut f = 0;
        while f + p.patch_frames <= n_frames {
            out.extend_from_slice(&frames[f * p.n_mels..f * p.n_mels + per]);
            starts.push(f * p.hop);
            f += p.patch_hop_frames;
        }
        (out, starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_matrix_matches_tensorflow_shape_and_edges() {
        let p = PatchParams::default();
        let m = tf_mel_matrix(&p);
        let n_bins = 257;
        assert_eq!(m.len(), 64 * n_bins);
        // No band covers DC, nothing below 125 Hz (bin 4 = 125 Hz) or above 7500 Hz (bin 240).
        for band in 0..64 {
            assert_eq!(m[band * n_bins], 0.0);
            assert!(m[band * n_bins + 4] == 0.0 && m[band * n_bins + 241] == 0.0);
            let peak = m[band * n_bins..(band + 1) * n_bins]
                .iter()
                .cloned()
                .fold(0f32, f32::max);
            assert!(peak > 0.3 && peak <= 1.0, "band {band} peak {peak}");
        }
    }

    #[test]
    fn sine_lands_in_the_right_band_and_patches_tile_the_clip() {
        let fe = PatchFrontEnd::new(PatchParams::default());
        let sr = 16_000.0;
        let x: Vec<f32> = (0..32_000)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / sr).sin())
            .collect();
        let frames = fe.frames(&x);
        assert_eq!(frames.len() / 64, 1 + (32_000 - 400) / 160);
        let row = &frames[64 * 10..64 * 11];
        let best = (0..64).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        // 1 kHz on the HTK scale between 125 and 7500 Hz with 64 bands is band ~20.
        let mel = |hz: f64| hz_to_mel_htk(hz);
        let expect = ((mel(1000.0) - mel(125.0)) / (mel(7500.0) - mel(125.0)) * 65.0 - 1.0).round();
        assert!((best as f64 - expect).abs() <= 1.0, "{best} vs {expect}");
        let (p, starts) = fe.patches(&x);
        assert_eq!(starts, vec![0, 7680, 15360]);
        assert_eq!(p.len(), 3 * 96 * 64);
        // Short clips pad to one patch; silence is ln(0.001).
        let (p, starts) = fe.patches(&[0.0; 100]);
        assert_eq!(starts, vec![0]);
        assert!((p[0] - 0.001f32.ln()).abs() < 1e-6);
    }
}

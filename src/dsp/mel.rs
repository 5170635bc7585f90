//! Mel filter bank, Slaney mel scale with Slaney area normalisation: the defaults of
//! `librosa.filters.mel` (`htk=False`, `norm="slaney"`), which is what Whisper's
//! `assets/mel_filters.npz` holds.
//!
//! [`mel_filters`] returns the dense matrix; [`MelBank`] stores only each filter's non-zero run
//! and applies it to power spectra.

use std::fmt;

// Slaney scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per 6.4x).
const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn logstep() -> f64 {
    6.4f64.ln() / 27.0
}

/// Hertz to mels on the Slaney scale (`librosa.hz_to_mel(f, htk=False)`).
pub fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / logstep()
    } else {
        hz / F_SP
    }
}

/// Mels to hertz on the Slaney scale (`librosa.mel_to_hz(m, htk=False)`).
pub fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (logstep() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// Dense mel filter bank, row-major `[n_mels][n_fft / 2 + 1]`, computed exactly as
/// `librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`
/// (Slaney scale, Slaney norm, float64 arithmetic, float32 result with librosa's rounding steps).
/// Whisper uses `mel_filters(16_000, 400, 80 or 128, 0.0, 8000.0)`.
pub fn mel_filters(
    sample_rate: u32,
    n_fft: usize,
    n_mels: usize,
    fmin: f32,
    fmax: f32,
) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    // np.fft.rfftfreq(n_fft, d=1/sr): k * (1 / (n * d))
    let val = 1.0 / (n_fft as f64 * (1.0 / sample_rate as f64));
    let fft_freqs: Vec<f64> = (0..n_bins).map(|k| k as f64 * val).collect();

    // librosa.mel_frequencies(n_mels + 2, fmin, fmax): np.linspace over mels, back to Hz
    let n_pts = n_mels + 2;
    let (min_mel, max_mel) = (hz_to_mel(fmin as f64), hz_to_mel(fmax as f64));
    let step = (max_mel - min_mel) / (n_pts - 1) as f64;
    let mel_f: Vec<f64> = (0..n_pts)
        .map(|i| {
            // np.linspace: start + i * step, with the end point set exactly
            let m = if i == n_pts - 1 {
                max_mel
            } else {
                i as f64 * step + min_mel
            };
            mel_to_hz(m)
        })
        .collect();

    let mut weights = vec![0.0f32; n_mels * n_bins];
    for (i, row) in weights.chunks_exact_mut(n_bins).enumerate() {
        let fdiff_lo = mel_f[i + 1] - mel_f[i];
        let fdiff_hi = mel_f[i + 2] - mel_f[i + 1];
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for (w, &f) in row.iter_mut().zip(&fft_freqs) {
            let lower = -(mel_f[i] - f) / fdiff_lo;
            let upper = (mel_f[i + 2] - f) / fdiff_hi;
            // librosa stores the triangle into a float32 array, then scales it in float64
            let tri = 0.0f64.max(lower.min(upper)) as f32;
            *w = (tri as f64 * enorm) as f32;
        }
    }
    weights
}

/// A mel filter bank stored sparsely: for each filter, the contiguous run of non-zero weights.
#[derive(Clone)]
pub struct MelBank {
    n_mels: usize,
    n_bins: usize,
    /// Per filter: (first bin, offset into `weights`, run length).
    runs: Vec<(usize, usize, usize)>,
    weights: Vec<f32>,
}

impl fmt::Debug for MelBank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MelBank")
            .field("n_mels", &self.n_mels)
            .field("n_bins", &self.n_bins)
            .field("nonzero", &self.weights.len())
            .finish()
    }
}

impl MelBank {
    /// Slaney filter bank, see [`mel_filters`].
    pub fn new(sample_rate: u32, n_fft: usize, n_mels: usize, fmin: f32, fmax: f32) -> Self {
        let dense = mel_filters(sample_rate, n_fft, n_mels, fmin, fmax);
        Self::from_dense(&dense, n_mels, n_fft / 2 + 1)
    }

    /// Builds from a dense row-major `[n_mels][n_bins]` matrix. Zeros inside a filter's
    /// first..last non-zero span are kept, so any matrix is represented exactly.
    ///
    /// # Panics
    /// If `dense.len() != n_mels * n_bins`.
    pub fn from_dense(dense: &[f32], n_mels: usize, n_bins: usize) -> Self {
        assert_eq!(dense.len(), n_mels * n_bins, "dense filter bank size");
        let mut runs = Vec::with_capacity(n_mels);
        let mut weights = Vec::new();
        for row in dense.chunks_exact(n_bins.max(1)).take(n_mels) {
            let first = row.iter().position(|&w| w != 0.0);
            let last = row.iter().rposition(|&w| w != 0.0);
            match (first, last) {
                (Some(a), Some(b)) => {
                    runs.push((a, weights.len(), b + 1 - a));
                    weights.extend_from_slice(&row[a..=b]);
                }
                _ => runs.push((0, weights.len(), 0)),
            }
        }
        // n_bins == 0: chunks_exact(1) over an empty slice yields no rows
        runs.resize(n_mels, (0, weights.len(), 0));
        Self {
            n_mels,
            n_bins,
            runs,
            weights,
        }
    }

    /// Number of filters.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Number of spectrum bins each filter spans.
    pub fn n_bins(&self) -> usize {
        self.n_bins
    }

    /// The dense row-major `[n_mels][n_bins]` matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut dense = vec![0.0; self.n_mels * self.n_bins];
        for (m, &(start, off, len)) in self.runs.iter().enumerate() {
            dense[m * self.n_bins + start..][..len].copy_from_slice(&self.weights[off..off + len]);
        }
        dense
    }

    /// `out[m] = sum_k filter[m][k] * power[k]` for one spectrum.
    ///
    /// # Panics
    /// If `power.len() != n_bins()` or `out.len() != n_mels()`.
    #[inline]
    pub fn apply(&self, power: &[f32], out: &mut [f32]) {
        assert_eq!(power.len(), self.n_bins, "spectrum length");
        assert_eq!(out.len(), self.n_mels, "output length");
        for (o, &(start, off, len)) in out.iter_mut().zip(&self.runs) {
            *o = dot(&self.weights[off..off + len], &power[start..start + len]);
        }
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Natural-log mel energies of single windowed frames (`ln(mel + 1e-6)`), the front end the
/// small always-on CNNs (wake word, note onsets) share; each picks its own frame length, band
/// count and range. `Send + Sync`; the scratch is per caller, so a frame never allocates.
#[derive(Clone)]
pub struct FrameLogMel {
    n_mels: usize,
    stft: crate::dsp::Stft,
    bank: MelBank,
}

impl fmt::Debug for FrameLogMel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameLogMel")
            .field("n_mels", &self.n_mels)
            .finish_non_exhaustive()
    }
}

/// Scratch buffers for [`FrameLogMel::frame`].
pub struct FrameLogMelScratch {
    stft: crate::dsp::StftScratch,
    power: Vec<f32>,
}

impl fmt::Debug for FrameLogMelScratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameLogMelScratch").finish_non_exhaustive()
    }
}

impl FrameLogMel {
    /// Hann-windowed frames of `frame` samples at `sample_rate`, `n_mels` bands over
    /// `fmin..fmax` Hz.
    pub fn new(
        sample_rate: u32,
        frame: usize,
        hop: usize,
        n_mels: usize,
        fmin: f32,
        fmax: f32,
    ) -> Self {
        Self {
            n_mels,
            stft: crate::dsp::Stft::new(frame, hop, crate::dsp::hann_window(frame)),
            bank: MelBank::new(sample_rate, frame, n_mels, fmin, fmax),
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    pub fn make_scratch(&self) -> FrameLogMelScratch {
        FrameLogMelScratch {
            stft: self.stft.make_scratch(),
            power: vec![0.0; self.stft.n_bins()],
        }
    }

    /// One frame (the frame length given to [`new`](Self::new)) -> `n_mels` log energies in
    /// `out`.
    pub fn frame(&self, samples: &[f32], scratch: &mut FrameLogMelScratch, out: &mut [f32]) {
        self.stft
            .power_frame(samples, &mut scratch.power, &mut scratch.stft);
        self.bank.apply(&scratch.power, out);
        for v in out.iter_mut() {
            *v = (*v + 1e-6).ln();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
    }

    fn read_f32(name: &str) -> Vec<f32> {
        let path = golden_dir().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 100.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(6400.0) - 42.0).abs() < 1e-12);
    }

    #[test]
    fn filters_match_librosa_golden() {
        let want = read_f32("mel_filters_80.f32");
        let got = mel_filters(16_000, 400, 80, 0.0, 8000.0);
        assert_eq!(got.len(), want.len());
        let (mut max_abs, mut max_rel) = (0.0f32, 0.0f32);
        for (&g, &w) in got.iter().zip(&want) {
            max_abs = max_abs.max((g - w).abs());
            if w != 0.0 {
                max_rel = max_rel.max(((g - w) / w).abs());
            } else {
                assert_eq!(g, 0.0, "zero pattern must match");
            }
        }
        println!("mel_filters_80 vs librosa: max abs diff {max_abs:e}, max rel diff {max_rel:e}");
        assert!(max_abs <= 1e-8, "max abs diff {max_abs}");
        assert!(max_rel <= 1e-6, "max rel diff {max_rel}");
    }

    #[test]
    fn sparse_bank_matches_dense() {
        for n_mels in [80, 128] {
            let dense = mel_filters(16_000, 400, n_mels, 0.0, 8000.0);
            let bank = MelBank::from_dense(&dense, n_mels, 201);
            assert_eq!(bank.to_dense(), dense);
            let power: Vec<f32> = (0..201).map(|k| 1.0 + (k as f32 * 0.37).sin()).collect();
            let mut out = vec![0.0; n_mels];
            bank.apply(&power, &mut out);
            for (m, &o) in out.iter().enumerate() {
                let want: f64 = dense[m * 201..(m + 1) * 201]
                    .iter()
                    .zip(&power)
                    .map(|(&w, &p)| w as f64 * p as f64)
                    .sum();
                assert!((o as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3));
            }
            // each filter is one short run of at most a few dozen bins
            assert!(bank.weights.len() < 3 * 201);
        }
    }

    #[test]
    fn slaney_norm_gives_unit_area_triangles_in_hz() {
        // Slaney norm scales each triangle to area 1 over frequency (peak 2 / width); summed over
        // bins spaced 40 Hz apart, each filter's weights add to about 1/40 (librosa: 0.93..1.08).
        let dense = mel_filters(16_000, 400, 80, 0.0, 8000.0);
        for m in 0..80 {
            let s: f32 = dense[m * 201..(m + 1) * 201].iter().sum();
            assert!((s * 40.0 - 1.0).abs() < 0.1, "filter {m}: {}", s * 40.0);
        }
    }
}

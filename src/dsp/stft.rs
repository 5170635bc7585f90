//! Short-time Fourier transform: power spectra of windowed frames.
//!
//! [`Stft`] is a precomputed plan (window + FFT plan). All per-frame work goes through a
//! caller-owned [`StftScratch`], so after construction computing frames allocates nothing.
//!
//! Centred framing follows `torch.stft(center=True, pad_mode="reflect")`: the signal is padded by
//! `n_fft / 2` samples on both sides by reflection *without* repeating the edge sample (numpy's and
//! torch's `"reflect"`, e.g. `[1, 2, 3]` padded by 2 is `[3, 2, 1, 2, 3, 2, 1]`), and frame `t`
//! covers padded samples `t * hop .. t * hop + n_fft`, i.e. it is centred on input sample `t * hop`.
//! The padding is never materialised: edge frames read through a reflected index.
//!
//! **Short input.** Reflect padding needs more samples than the pad (torch rejects
//! `len <= n_fft / 2`). For such input the signal is first treated as zero-extended to
//! `n_fft / 2 + 1` samples and then reflected, so any length, including 0, is accepted.

use std::fmt;
use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Periodic Hann window of length `n`, as `torch.hann_window(n)` (periodic=True) and
/// `scipy.signal.get_window("hann", n)`: `0.5 - 0.5 cos(2 pi k / n)`.
pub fn hann_window(n: usize) -> Vec<f32> {
    (0..n)
        .map(|k| {
            let phase = 2.0 * std::f64::consts::PI * k as f64 / n as f64;
            (0.5 - 0.5 * phase.cos()) as f32
        })
        .collect()
}

/// A reusable STFT plan producing one-sided power spectra (`|X_k|^2`, `k = 0..=n_fft/2`).
#[derive(Clone)]
pub struct Stft {
    n_fft: usize,
    hop: usize,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl fmt::Debug for Stft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stft")
            .field("n_fft", &self.n_fft)
            .field("hop", &self.hop)
            .finish_non_exhaustive()
    }
}

/// Scratch buffers for one thread of [`Stft`] work; make one with [`Stft::make_scratch`] and reuse it.
pub struct StftScratch {
    n_fft: usize,
    buf: Vec<Complex<f32>>,
    fft_scratch: Vec<Complex<f32>>,
}

impl fmt::Debug for StftScratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StftScratch")
            .field("n_fft", &self.n_fft)
            .finish_non_exhaustive()
    }
}

impl Stft {
    /// Plans an STFT of `n_fft` points advancing `hop` samples per frame, with `window`
    /// (length `n_fft`) applied to each frame.
    ///
    /// # Panics
    /// If `n_fft` or `hop` is 0, or `window.len() != n_fft`.
    pub fn new(n_fft: usize, hop: usize, window: Vec<f32>) -> Self {
        assert!(n_fft > 0, "n_fft must be positive");
        assert!(hop > 0, "hop must be positive");
        assert_eq!(window.len(), n_fft, "window length must equal n_fft");
        let fft = FftPlanner::<f32>::new().plan_fft_forward(n_fft);
        Self {
            n_fft,
            hop,
            window,
            fft,
        }
    }

    /// FFT length.
    pub fn n_fft(&self) -> usize {
        self.n_fft
    }

    /// Frame advance in samples.
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Number of one-sided frequency bins, `n_fft / 2 + 1`.
    pub fn n_bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// The analysis window.
    pub fn window(&self) -> &[f32] {
        &self.window
    }

    /// Padding added on each side in centred mode, `n_fft / 2`.
    pub fn center_pad(&self) -> usize {
        self.n_fft / 2
    }

    /// Number of frames of the centred STFT of `n_samples` samples, as `torch.stft(center=True)`
    /// gives: `1 + (n + 2 * pad - n_fft) / hop`, with `n` raised to `pad + 1` for short input
    /// (see the module docs). For even `n_fft` this is `1 + n_samples / hop`.
    pub fn n_frames_centered(&self, n_samples: usize) -> usize {
        let pad = self.center_pad();
        let n = n_samples.max(pad + 1);
        1 + (n + 2 * pad - self.n_fft) / self.hop
    }

    /// Allocates the scratch buffers this plan needs.
    pub fn make_scratch(&self) -> StftScratch {
        StftScratch {
            n_fft: self.n_fft,
            buf: vec![Complex::default(); self.n_fft],
            fft_scratch: vec![Complex::default(); self.fft.get_inplace_scratch_len()],
        }
    }

    /// Power spectrum of one raw frame (`frame.len() == n_fft`, window applied here) into `out`
    /// (`out.len() == n_bins()`).
    ///
    /// # Panics
    /// On wrong lengths or a scratch made by a plan of another size.
    pub fn power_frame(&self, frame: &[f32], out: &mut [f32], scratch: &mut StftScratch) {
        assert_eq!(frame.len(), self.n_fft, "frame length must equal n_fft");
        self.check(out, scratch);
        for ((b, &x), &w) in scratch.buf.iter_mut().zip(frame).zip(&self.window) {
            *b = Complex::new(x * w, 0.0);
        }
        self.transform_into(out, scratch);
    }

    /// Power spectrum of frame `t` of the centred, reflect-padded STFT of `samples` into `out`
    /// (`out.len() == n_bins()`). `t` may be any index below [`Self::n_frames_centered`].
    ///
    /// # Panics
    /// On wrong lengths, `t` out of range, or a scratch made by a plan of another size.
    pub fn power_frame_centered(
        &self,
        samples: &[f32],
        t: usize,
        out: &mut [f32],
        scratch: &mut StftScratch,
    ) {
        assert!(
            t < self.n_frames_centered(samples.len()),
            "frame index out of range"
        );
        self.check(out, scratch);
        let pad = self.center_pad();
        let start = t * self.hop; // in padded coordinates
        if start >= pad && start - pad + self.n_fft <= samples.len() {
            let frame = &samples[start - pad..start - pad + self.n_fft];
            for ((b, &x), &w) in scratch.buf.iter_mut().zip(frame).zip(&self.window) {
                *b = Complex::new(x * w, 0.0);
            }
        } else {
            // Edge frame: read through the reflected (and, for short input, zero-extended) signal.
            let len_ext = samples.len().max(pad + 1);
            for (i, (b, &w)) in scratch.buf.iter_mut().zip(&self.window).enumerate() {
                let p = reflect_index(start + i, pad, len_ext);
                let x = samples.get(p).copied().unwrap_or(0.0);
                *b = Complex::new(x * w, 0.0);
            }
        }
        self.transform_into(out, scratch);
    }

    /// Power spectra of the first `n_frames` centred frames of `samples`, frame-major into `out`
    /// (`out.len() == n_frames * n_bins()`: frame `t` at `out[t * n_bins..(t + 1) * n_bins]`).
    ///
    /// # Panics
    /// If `n_frames` exceeds [`Self::n_frames_centered`] or `out` has the wrong length.
    pub fn power_frames_centered(
        &self,
        samples: &[f32],
        n_frames: usize,
        out: &mut [f32],
        scratch: &mut StftScratch,
    ) {
        let n_bins = self.n_bins();
        assert_eq!(out.len(), n_frames * n_bins, "output length");
        for (t, row) in out.chunks_exact_mut(n_bins).enumerate() {
            self.power_frame_centered(samples, t, row, scratch);
        }
    }

    fn check(&self, out: &[f32], scratch: &StftScratch) {
        assert_eq!(out.len(), self.n_bins(), "output length must equal n_bins");
        assert_eq!(scratch.n_fft, self.n_fft, "scratch made for another n_fft");
    }

    fn transform_into(&self, out: &mut [f32], scratch: &mut StftScratch) {
        self.fft
            .process_with_scratch(&mut scratch.buf, &mut scratch.fft_scratch);
        for (o, c) in out.iter_mut().zip(&scratch.buf) {
            *o = c.re * c.re + c.im * c.im;
        }
    }
}

/// Maps index `j` of the signal reflect-padded by `pad` on both sides to an index of the
/// (zero-extended) signal of length `len`, numpy/torch `"reflect"` style (edge not repeated).
/// Requires `len > pad`, which makes a single reflection enough.
#[inline]
fn reflect_index(j: usize, pad: usize, len: usize) -> usize {
    debug_assert!(len > pad && j < len + 2 * pad);
    if j < pad {
        pad - j
    } else if j - pad >= len {
        2 * (len - 1) - (j - pad)
    } else {
        j - pad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reflect_pad(x: &[f32], pad: usize) -> Vec<f32> {
        let len = x.len().max(pad + 1);
        (0..len + 2 * pad)
            .map(|j| x.get(reflect_index(j, pad, len)).copied().unwrap_or(0.0))
            .collect()
    }

    #[test]
    fn reflect_matches_numpy() {
        // np.pad([1, 2, 3, 4, 5], 2, mode="reflect")
        assert_eq!(
            reflect_pad(&[1., 2., 3., 4., 5.], 2),
            [3., 2., 1., 2., 3., 4., 5., 4., 3.]
        );
        // np.pad([1, 2, 3], 2, mode="reflect")
        assert_eq!(reflect_pad(&[1., 2., 3.], 2), [3., 2., 1., 2., 3., 2., 1.]);
        // short: zero-extended to pad + 1 = 3 first -> np.pad([7, 0, 0], 2, mode="reflect")
        assert_eq!(reflect_pad(&[7.], 2), [0., 0., 7., 0., 0., 0., 7.]);
        assert_eq!(reflect_pad(&[], 1), [0., 0., 0., 0.]);
    }

    #[test]
    fn hann_is_periodic() {
        let w = hann_window(400);
        assert_eq!(w[0], 0.0);
        assert!((w[200] - 1.0).abs() < 1e-7);
        for k in 1..400 {
            assert!((w[k] - w[400 - k]).abs() < 1e-6, "symmetric about n/2");
        }
    }

    #[test]
    fn frame_counts_match_torch() {
        let s = Stft::new(400, 160, hann_window(400));
        assert_eq!(s.n_bins(), 201);
        // torch.stft(center=True): 1 + len // hop for even n_fft
        for n in [201, 400, 480, 1000, 16_000, 16_159, 16_160] {
            assert_eq!(s.n_frames_centered(n), 1 + n / 160, "n = {n}");
        }
        // short input counts frames of the zero-extended signal (201 samples)
        assert_eq!(s.n_frames_centered(0), 2);
        assert_eq!(s.n_frames_centered(200), 2);
        let odd = Stft::new(5, 2, vec![1.0; 5]);
        // 1 + (n + 2 * 2 - 5) / 2
        assert_eq!(odd.n_frames_centered(10), 5);
    }

    /// Deterministic pseudo-random samples in [-1, 1).
    fn noise(n: usize, mut seed: u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn power_matches_naive_dft() {
        let n = 400;
        let s = Stft::new(n, 160, hann_window(n));
        let mut scratch = s.make_scratch();
        let x = noise(n, 7);
        let mut out = vec![0.0; s.n_bins()];
        s.power_frame(&x, &mut out, &mut scratch);
        let w = s.window();
        for (k, &got) in out.iter().enumerate() {
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for (i, (&xi, &wi)) in x.iter().zip(w).enumerate() {
                let ph = -2.0 * std::f64::consts::PI * (k * i) as f64 / n as f64;
                let v = (xi * wi) as f64;
                re += v * ph.cos();
                im += v * ph.sin();
            }
            let want = re * re + im * im;
            assert!(
                (got as f64 - want).abs() <= 1e-4 * want.max(1.0),
                "bin {k}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn sinusoid_peaks_at_its_bin() {
        let s = Stft::new(400, 160, hann_window(400));
        let mut scratch = s.make_scratch();
        // 1000 Hz at 16 kHz with n_fft 400 -> bin 25
        let x: Vec<f32> = (0..4000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let n_frames = s.n_frames_centered(x.len());
        let mut out = vec![0.0; n_frames * s.n_bins()];
        s.power_frames_centered(&x, n_frames, &mut out, &mut scratch);
        // interior frames (edge frames see the reflected, phase-broken signal)
        for row in out.chunks_exact(s.n_bins()).skip(2).take(n_frames - 4) {
            let peak = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            assert_eq!(peak, 25);
        }
    }

    #[test]
    fn centered_frames_match_explicit_padding() {
        let s = Stft::new(16, 4, hann_window(16));
        let mut scratch = s.make_scratch();
        for len in [0, 1, 5, 8, 9, 10, 17, 33] {
            let x = noise(len, len as u64 + 1);
            let padded = reflect_pad(&x, 8);
            let n_frames = s.n_frames_centered(len);
            assert_eq!(n_frames, 1 + (padded.len() - 16) / 4, "len {len}");
            let mut got = vec![0.0; s.n_bins()];
            let mut want = vec![0.0; s.n_bins()];
            for t in 0..n_frames {
                s.power_frame_centered(&x, t, &mut got, &mut scratch);
                s.power_frame(&padded[t * 4..t * 4 + 16], &mut want, &mut scratch);
                assert_eq!(got, want, "len {len} frame {t}");
            }
        }
    }
}

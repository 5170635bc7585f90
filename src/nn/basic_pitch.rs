//! Spotify's Basic Pitch (ICASSP 2022 "NMP" network): polyphonic note, onset and pitch-contour
//! posteriors from 2 s of 22.05 kHz audio, in plain Rust (im2col + the `gemm` crate).
//!
//! The published ONNX export computes its constant-Q transform inside the graph, and candle's
//! ONNX runner fails on one of those convolutions, so the graph is ported by hand. The flow
//! (names from `basic_pitch/models.py` and the nnAudio `CQT2010v2` layer it uses):
//!
//! ```text
//! window [43844]
//!   -> CQT: 9 octaves, top first; each: reflect-pad 128, complex 256-tap kernels (36 bins),
//!      stride 256 >> octave -> 172 frames; then zero-pad 127 and low-pass/decimate by 2
//!   -> keep the top 309 of 9 x 36 bins, scale by sqrt(kernel length), power
//!   -> normalized_log: 10 log10(power + 1e-10), minus its min, over its max (whole window)
//!   -> batch_normalization (one scalar scale and shift)
//!   -> harmonic stacking: 8 copies shifted by [-36, 0, 36, 57, 72, 84, 93, 101] bins, first 264
//!   -> contour = sigmoid(conv5x5(relu(conv3x39(hs))))                     [172 x 264]
//!   -> note    = sigmoid(conv7x3(relu(conv7x7/stride3(contour))))         [172 x 88]
//!   -> onset   = sigmoid(conv3x3([note, relu(conv5x5/stride3(hs))]))      [172 x 88]
//! ```
//!
//! Batch norms are already folded into the convolutions of the export. Tensors are
//! channels-first `[C][T=172][F]`; the outputs are frame-major (`[frame][bin]`), as the Python
//! package returns them. No threads of our own: the convolutions split their rows over rayon's
//! global pool (one thread with `RAYON_NUM_THREADS=1`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    NnError,
    conv::{Act, Conv2d, read, read_f32_safetensors},
    vits::matmul,
};

/// Sample rate the network expects.
pub const SAMPLE_RATE: u32 = 22_050;
/// Samples per window (`AUDIO_N_SAMPLES` = 2 s - one hop).
pub const WINDOW: usize = 43_844;
/// CQT hop in samples (`FFT_HOP`).
pub const HOP: usize = 256;
/// Output frames per window (`ANNOT_N_FRAMES`).
pub const FRAMES: usize = 172;
/// Piano keys, A0 (MIDI 21) up (`ANNOTATIONS_N_SEMITONES`).
pub const NOTE_BINS: usize = 88;
/// Contour bins: three per semitone (`N_FREQ_BINS_CONTOURS`).
pub const CONTOUR_BINS: usize = 264;

/// `config.json` of a converted model: the structural constants the importer read from (or
/// checked in) the graph. Weights are in `model.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BasicPitchConfig {
    pub sample_rate: u32,
    /// Input samples per window.
    pub window: usize,
    pub hop: usize,
    pub frames: usize,
    /// CQT octaves (each a decimation by 2 of the previous one).
    pub n_octaves: usize,
    pub bins_per_octave: usize,
    /// CQT bins kept (the top ones of `n_octaves * bins_per_octave`).
    pub cqt_bins: usize,
    /// Reflection padding before each octave's kernels (nnAudio: kernel length / 2).
    pub reflect_pad: usize,
    /// Zero padding before each decimation.
    pub lowpass_pad: usize,
    /// `normalized_log`: epsilon added to the power before the log.
    pub log_eps: f32,
    /// The folded `batch_normalization` after `normalized_log`.
    pub bn_scale: f32,
    pub bn_shift: f32,
    /// Bin shift of each harmonic channel (`harmonic-stacking`), in order.
    pub harmonic_shifts: Vec<i64>,
}

/// Tensor names in `model.safetensors`.
pub mod names {
    pub const CQT_REAL: &str = "cqt.kernel_real";
    pub const CQT_IMAG: &str = "cqt.kernel_imag";
    pub const CQT_LOWPASS: &str = "cqt.lowpass";
    pub const CQT_SCALE: &str = "cqt.scale";
    /// `(name, shape [cout, cin, kh, kw], stride along frequency, padding (time, freq))`.
    pub type ConvSpec = (&'static str, [usize; 4], usize, (usize, usize));

    /// The six convolutions, in the order of the port's fields.
    pub const CONVS: [ConvSpec; 6] = [
        ("contour.conv1", [8, 8, 3, 39], 1, (1, 19)),
        ("contour.conv2", [1, 8, 5, 5], 1, (2, 2)),
        ("note.conv1", [32, 1, 7, 7], 3, (3, 2)),
        ("note.conv2", [1, 32, 7, 3], 1, (3, 1)),
        ("onset.conv1", [32, 8, 5, 5], 3, (2, 1)),
        ("onset.conv2", [1, 33, 3, 3], 1, (1, 1)),
    ];
}

/// One window's posteriors, frame-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Posteriors {
    /// `[FRAMES][NOTE_BINS]`: a note of that key sounds in that frame.
    pub note: Vec<f32>,
    /// `[FRAMES][NOTE_BINS]`: a note of that key starts in that frame.
    pub onset: Vec<f32>,
    /// `[FRAMES][CONTOUR_BINS]`: pitch salience at 1/3 semitone.
    pub contour: Vec<f32>,
}

/// `numpy.pad(x, p, mode="reflect")` (the edge sample is not repeated).
fn reflect_pad(x: &[f32], p: usize) -> Vec<f32> {
    let n = x.len();
    let mut out = Vec::with_capacity(n + 2 * p);
    out.extend((1..=p).rev().map(|i| x[i.min(n - 1)]));
    out.extend_from_slice(x);
    out.extend((1..=p).map(|i| x[(n - 1).saturating_sub(i)]));
    out
}

/// Dot product with eight partial sums (vectorises without fast-math).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The Basic Pitch network with its weights.
#[derive(Debug)]
pub struct BasicPitch {
    cfg: BasicPitchConfig,
    /// `[2 * bins_per_octave][kernel]`: the real kernels, then the imaginary ones.
    kernels: Vec<f32>,
    kernel_len: usize,
    lowpass: Vec<f32>,
    /// `[cqt_bins]`, squared (applied to the power).
    scale2: Vec<f32>,
    contour1: Conv2d,
    contour2: Conv2d,
    note1: Conv2d,
    note2: Conv2d,
    onset1: Conv2d,
    onset2: Conv2d,
}

fn invalid(path: &Path, reason: impl Into<String>) -> NnError {
    NnError::InvalidFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl BasicPitch {
    /// Loads `dir/model.safetensors` and `dir/config.json` (as written by
    /// `hark::models::basic_pitch`).
    pub fn load(dir: &Path) -> Result<Self, NnError> {
        let config_path = dir.join("config.json");
        let weights_path = dir.join("model.safetensors");
        let cfg: BasicPitchConfig = serde_json::from_slice(&read(&config_path)?)
            .map_err(|e| invalid(&config_path, e.to_string()))?;
        let map = read_f32_safetensors(&weights_path)?;
        Self::from_tensors(cfg, map).map_err(|reason| invalid(&weights_path, reason))
    }

    /// Builds the network from named tensors (`shape`, values), checking every shape.
    pub fn from_tensors(
        cfg: BasicPitchConfig,
        mut map: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<Self, String> {
        if cfg.window != WINDOW || cfg.frames != FRAMES || cfg.hop != HOP {
            return Err(format!(
                "window {} / frames {} / hop {}: this port is built for {WINDOW} / {FRAMES} / {HOP}",
                cfg.window, cfg.frames, cfg.hop
            ));
        }
        if cfg.harmonic_shifts.len() != 8 || cfg.n_octaves == 0 {
            return Err("config: expected 8 harmonics and at least one octave".into());
        }
        if cfg.cqt_bins > cfg.n_octaves * cfg.bins_per_octave || cfg.cqt_bins < CONTOUR_BINS {
            return Err(format!("config: cqt_bins {} out of range", cfg.cqt_bins));
        }
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
            let (dims, data) = map
                .remove(name)
                .ok_or_else(|| format!("missing tensor {name}"))?;
            if dims != shape {
                return Err(format!("{name}: shape {dims:?}, expected {shape:?}"));
            }
            Ok(data)
        };
        let bpo = cfg.bins_per_octave;
        let kernel_len = 2 * cfg.reflect_pad;
        let mut kernels = take(names::CQT_REAL, &[bpo, kernel_len])?;
        kernels.extend(take(names::CQT_IMAG, &[bpo, kernel_len])?);
        let lowpass = take(names::CQT_LOWPASS, &[2 * cfg.lowpass_pad + 2])?;
        let scale2 = take(names::CQT_SCALE, &[cfg.cqt_bins])?
            .into_iter()
            .map(|s| s * s)
            .collect();
        let mut convs = Vec::new();
        for (name, shape, sw, (ph, pw)) in names::CONVS {
            let w = take(&format!("{name}.weight"), &shape)?;
            let b = take(&format!("{name}.bias"), &shape[..1])?;
            convs.push(Conv2d {
                sw,
                ph,
                pw: (pw, pw),
                ..Conv2d::new(shape, w, b)
            });
        }
        let mut convs = convs.into_iter();
        let mut next = || convs.next().ok_or("conv table too short".to_string());
        Ok(Self {
            contour1: next()?,
            contour2: next()?,
            note1: next()?,
            note2: next()?,
            onset1: next()?,
            onset2: next()?,
            cfg,
            kernels,
            kernel_len,
            lowpass,
            scale2,
        })
    }

    pub fn config(&self) -> &BasicPitchConfig {
        &self.cfg
    }

    /// The normalised log-CQT after the batch norm: `[FRAMES][cqt_bins]`.
    pub fn features(&self, window: &[f32]) -> Result<Vec<f32>, NnError> {
        if window.len() != WINDOW {
            return Err(NnError::InvalidInput(format!(
                "basic pitch takes windows of {WINDOW} samples, got {}",
                window.len()
            )));
        }
        let cfg = &self.cfg;
        let bpo = cfg.bins_per_octave;
        let total = cfg.n_octaves * bpo;
        // Bins below this index (of the full octave stack, lowest octave first) are dropped.
        let first = total - cfg.cqt_bins;
        let mut power = vec![0f32; FRAMES * cfg.cqt_bins];
        let mut x = window.to_vec();
        let mut resp = vec![0f32; FRAMES * 2 * bpo];
        for octave in 0..cfg.n_octaves {
            let stride = HOP >> octave;
            let xp = reflect_pad(&x, cfg.reflect_pad);
            if stride == 0 || (FRAMES - 1) * stride + self.kernel_len > xp.len() {
                return Err(NnError::InvalidInput(format!(
                    "octave {octave}: {} samples are too few for {FRAMES} frames",
                    x.len()
                )));
            }
            // Frames as a strided view of the padded signal times the kernels, transposed.
            matmul(
                (FRAMES, 2 * bpo, self.kernel_len),
                &mut resp,
                2 * bpo,
                false,
                &xp,
                (stride, 1),
                &self.kernels,
                (1, self.kernel_len),
            );
            let base = (cfg.n_octaves - 1 - octave) * bpo;
            for t in 0..FRAMES {
                let row = &resp[t * 2 * bpo..(t + 1) * 2 * bpo];
                for k in 0..bpo {
                    let Some(bin) = (base + k).checked_sub(first) else {
                        continue;
                    };
                    let (re, im) = (row[k], row[bpo + k]);
                    power[t * cfg.cqt_bins + bin] = (re * re + im * im) * self.scale2[bin];
                }
            }
            if octave + 1 < cfg.n_octaves {
                x = self.decimate(&x);
            }
        }
        // normalized_log: dB, then min-max over the whole window (ln * log10(e), as the graph).
        let log10_e = std::f32::consts::LOG10_E;
        for p in &mut power {
            *p = 10.0 * ((*p + cfg.log_eps).ln() * log10_e);
        }
        let min = power.iter().copied().fold(f32::INFINITY, f32::min);
        let max = power.iter().map(|&v| v - min).fold(0.0, f32::max);
        for p in &mut power {
            // div_no_nan: a constant window normalises to zeros.
            let v = if max == 0.0 { 0.0 } else { (*p - min) / max };
            *p = v * cfg.bn_scale + cfg.bn_shift;
        }
        Ok(power)
    }

    /// Zero-pad, low-pass and keep every other sample (one CQT octave down).
    fn decimate(&self, x: &[f32]) -> Vec<f32> {
        let p = self.cfg.lowpass_pad;
        let mut xp = vec![0f32; x.len() + 2 * p];
        xp[p..p + x.len()].copy_from_slice(x);
        let taps = self.lowpass.len();
        let n = (xp.len() - taps) / 2 + 1;
        (0..n)
            .map(|i| dot(&xp[2 * i..2 * i + taps], &self.lowpass))
            .collect()
    }

    /// Runs one window of [`WINDOW`] samples at [`SAMPLE_RATE`].
    pub fn forward(&self, window: &[f32]) -> Result<Posteriors, NnError> {
        let feats = self.features(window)?;
        let bins = self.cfg.cqt_bins;
        // Harmonic stacking, channels-first: hs[h][t][f] = feats[t][f + shift_h] (0 outside).
        let mut hs = vec![0f32; 8 * FRAMES * CONTOUR_BINS];
        for (h, &shift) in self.cfg.harmonic_shifts.iter().enumerate() {
            for t in 0..FRAMES {
                let src = &feats[t * bins..(t + 1) * bins];
                let dst = &mut hs[(h * FRAMES + t) * CONTOUR_BINS..][..CONTOUR_BINS];
                for (f, d) in dst.iter_mut().enumerate() {
                    let i = f as i64 + shift;
                    if (0..bins as i64).contains(&i) {
                        *d = src[i as usize];
                    }
                }
            }
        }
        let c1 = self.contour1.forward(&hs, FRAMES, CONTOUR_BINS, Act::Relu);
        let contour = self
            .contour2
            .forward(&c1, FRAMES, CONTOUR_BINS, Act::Sigmoid);
        let n1 = self
            .note1
            .forward(&contour, FRAMES, CONTOUR_BINS, Act::Relu);
        let note = self.note2.forward(&n1, FRAMES, NOTE_BINS, Act::Sigmoid);
        let o1 = self.onset1.forward(&hs, FRAMES, CONTOUR_BINS, Act::Relu);
        // The onset head sees the note posteriors as a 33rd channel, first.
        let mut cat = note.clone();
        cat.extend_from_slice(&o1);
        let onset = self.onset2.forward(&cat, FRAMES, NOTE_BINS, Act::Sigmoid);
        Ok(Posteriors {
            note,
            onset,
            contour,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped model directory.
    pub(crate) fn shipped_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/basic-pitch")
    }

    /// Agreement with ONNX Runtime on tests/fixtures/basic_pitch_golden.safetensors (made by
    /// basic_pitch_golden.py next to it): every kept frame of the three outputs.
    #[test]
    fn basic_pitch_golden_matches_onnxruntime() {
        let dir = shipped_dir();
        if !dir.join("model.safetensors").exists() {
            eprintln!("skipping: no converted model at {}", dir.display());
            return;
        }
        let model = BasicPitch::load(&dir).unwrap();
        let bytes = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/basic_pitch_golden.safetensors"),
        )
        .unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let audio: Vec<f32> = st
            .tensor("audio")
            .unwrap()
            .data()
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect();
        let frames: Vec<usize> = st
            .tensor("frames")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .collect();
        let f32s = |name: &str| -> Vec<f32> {
            st.tensor(name)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let got = model.forward(&audio).unwrap();
        let mut worst = 0f32;
        for (name, want, have, bins) in [
            ("note", f32s("note"), &got.note, NOTE_BINS),
            ("onset", f32s("onset"), &got.onset, NOTE_BINS),
            ("contour", f32s("contour"), &got.contour, CONTOUR_BINS),
        ] {
            assert_eq!(want.len(), frames.len() * bins, "{name}");
            let err = frames
                .iter()
                .enumerate()
                .flat_map(|(i, &f)| (0..bins).map(move |b| (i * bins + b, f * bins + b)))
                .map(|(w, h)| (want[w] - have[h]).abs())
                .fold(0.0, f32::max);
            eprintln!("{name}: max abs error {err:e}");
            worst = worst.max(err);
        }
        assert!(worst < 1e-4, "max abs error {worst}");
    }

    #[test]
    fn basic_pitch_reflect_pad_matches_numpy() {
        assert_eq!(
            reflect_pad(&[1.0, 2.0, 3.0, 4.0], 2),
            [3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]
        );
    }
}

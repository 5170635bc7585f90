//! SwiftF0 (Nieradzik 2025, MIT): a 30 k-parameter CNN giving a pitch posterior over 95
//! log-spaced bins (46.9-2093.8 Hz) for every 16 ms of 16 kHz audio. hark uses it as the learned
//! prior its pYIN tracker reweights candidates by (`notes::pitch::PitchPrior`): it stays right
//! in noise and rooms where YIN's troughs blur.
//!
//! Ported by hand from the ONNX graph of the `swift-f0` 0.3.0 wheel (the graph computes its
//! STFTs with matrix products, which this replaces with FFTs). The flow:
//!
//! ```text
//! audio [L] (16 kHz), frames k = 0 .. max(1, L / 256), frame k centred on sample 256 k
//!   -> for N in 1024, 2048, 512: periodic Hann window of N samples centred on the frame
//!      (zeros outside the audio), |rFFT|, times a sparse [N/2+1, 128] projection,
//!      ln(x + 1e-8)                                              -> 3 channels [T][128]
//!   -> relu(conv 3x3)                                            -> 12 channels
//!   -> 6 residual blocks x = relu(x + conv(relu(conv(x)))), kernels (time x freq):
//!      3x7, 1x7 dil 17, 1x5 dil 27, 1x3 dil 40, 1x3 dil 48, 3x7 dil 2 (dilations along freq)
//!   -> keep the lowest 96 bins, relu(conv 3x3, freq padding 1 below, 0 above) -> 4 x [T][95]
//!   -> conv 1x1 -> pitch logits [T][95]
//! ```
//!
//! The network's voicing head is not ported: hark keeps pYIN's voicing. Each output frame sees
//! 6 feature frames either side (the six convolutions 3 frames wide), so long audio is run in
//! blocks with that much context and matches a whole-file run exactly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustfft::{Fft, FftPlanner, num_complex::Complex32};
use serde::{Deserialize, Serialize};

use super::{
    NnError,
    conv::{Act, Conv2d, read, read_f32_safetensors},
};

/// Sample rate the network expects.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per frame.
pub const HOP: usize = 256;
/// Pitch bins of the posterior.
pub const PITCH_BINS: usize = 95;
/// Feature bins of each spectrogram.
pub const FEATURE_BINS: usize = 128;
/// Feature frames each output frame depends on, either side.
pub const CONTEXT: usize = 6;
/// Output frames per block when long audio is run in pieces (bounds the activations to about
/// 12 x 1036 x 128 floats, 6 MB).
const BLOCK: usize = 1024;

/// `config.json` of a converted model: what the importer read from (or checked in) the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwiftF0Config {
    pub sample_rate: u32,
    pub hop: usize,
    /// FFT size of each input channel, in channel order.
    pub fft_sizes: Vec<usize>,
    pub feature_bins: usize,
    pub log_eps: f32,
    /// Centre of the lowest and highest pitch bin, Hz (log-spaced between).
    pub fmin: f32,
    pub fmax: f32,
    pub pitch_bins: usize,
    /// Feature bins the head sees (the lowest ones).
    pub head_bins: usize,
}

/// Tensor names and geometry in `model.safetensors`. Convolution weights are stored
/// `[cout][cin][time][freq]` (the graph's are `[cout][cin][freq][time]`).
pub mod names {
    /// `(name, [cout, cin, k_time, k_freq], freq dilation, time padding, freq padding)`.
    pub type ConvSpec = (&'static str, [usize; 4], usize, usize, (usize, usize));
    pub const CONVS: [ConvSpec; 15] = [
        ("stem", [12, 3, 3, 3], 1, 1, (1, 1)),
        ("block1.conv1", [12, 12, 3, 7], 1, 1, (3, 3)),
        ("block1.conv2", [12, 12, 3, 7], 1, 1, (3, 3)),
        ("block2.conv1", [12, 12, 1, 7], 17, 0, (51, 51)),
        ("block2.conv2", [12, 12, 1, 7], 17, 0, (51, 51)),
        ("block3.conv1", [12, 12, 1, 5], 27, 0, (54, 54)),
        ("block3.conv2", [12, 12, 1, 5], 27, 0, (54, 54)),
        ("block4.conv1", [12, 12, 1, 3], 40, 0, (40, 40)),
        ("block4.conv2", [12, 12, 1, 3], 40, 0, (40, 40)),
        ("block5.conv1", [12, 12, 1, 3], 48, 0, (48, 48)),
        ("block5.conv2", [12, 12, 1, 3], 48, 0, (48, 48)),
        ("block6.conv1", [12, 12, 3, 7], 2, 1, (6, 6)),
        ("block6.conv2", [12, 12, 3, 7], 2, 1, (6, 6)),
        ("head.conv", [4, 12, 3, 3], 1, 1, (1, 0)),
        ("head.out", [1, 4, 1, 1], 1, 0, (0, 0)),
    ];
    /// Projection of spectrogram `n` (channel order): `[nnz]` flat indices into the
    /// `[n/2+1][128]` matrix (stored as f32, exact: they are below 2^18), and the values.
    pub fn projection(n: usize) -> (String, String) {
        (format!("fe.{n}.index"), format!("fe.{n}.value"))
    }
}

/// One input channel's spectrogram: FFT plan, window and sparse projection.
struct Spectrogram {
    n: usize,
    fft: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    /// `(fft bin, feature bin, weight)`.
    projection: Vec<(usize, usize, f32)>,
}

impl std::fmt::Debug for Spectrogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spectrogram")
            .field("n", &self.n)
            .field("nnz", &self.projection.len())
            .finish()
    }
}

/// The network with its weights.
#[derive(Debug)]
pub struct SwiftF0 {
    cfg: SwiftF0Config,
    spectrograms: Vec<Spectrogram>,
    stem: Conv2d,
    blocks: Vec<(Conv2d, Conv2d)>,
    head: Conv2d,
    out: Conv2d,
}

/// The periodic Hann window (`torch.hann_window(n)`).
pub fn hann(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
        .collect()
}

impl SwiftF0 {
    /// Loads `dir/model.safetensors` and `dir/config.json` (as written by
    /// `hark::models::swift_f0`).
    pub fn load(dir: &Path) -> Result<Self, NnError> {
        let config_path = dir.join("config.json");
        let weights_path = dir.join("model.safetensors");
        let cfg: SwiftF0Config = serde_json::from_slice(&read(&config_path)?)
            .map_err(|e| super::invalid_file(&config_path, e))?;
        let map = read_f32_safetensors(&weights_path)?;
        Self::from_tensors(cfg, map).map_err(|reason| super::invalid_file(&weights_path, reason))
    }

    /// Builds the network from named tensors (`shape`, values), checking every shape.
    pub fn from_tensors(
        cfg: SwiftF0Config,
        mut map: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<Self, String> {
        if cfg.sample_rate != SAMPLE_RATE
            || cfg.hop != HOP
            || cfg.feature_bins != FEATURE_BINS
            || cfg.pitch_bins != PITCH_BINS
            || cfg.head_bins != PITCH_BINS + 1
            || cfg.fft_sizes.len() != 3
        {
            return Err(format!(
                "config {cfg:?}: this port is built for {SAMPLE_RATE} Hz, hop {HOP}, \
                 3 x {FEATURE_BINS} feature bins and {PITCH_BINS} pitch bins"
            ));
        }
        if !(cfg.fmin > 0.0 && cfg.fmax > cfg.fmin && cfg.log_eps > 0.0) {
            return Err(format!(
                "config: pitch range {}..{} Hz or log epsilon {} invalid",
                cfg.fmin, cfg.fmax, cfg.log_eps
            ));
        }
        let mut take = |name: &str, shape: Option<&[usize]>| -> Result<Vec<f32>, String> {
            let (dims, data) = map
                .remove(name)
                .ok_or_else(|| format!("missing tensor {name}"))?;
            if let Some(shape) = shape
                && dims != shape
            {
                return Err(format!("{name}: shape {dims:?}, expected {shape:?}"));
            }
            if dims.len() != 1 && shape.is_none() {
                return Err(format!("{name}: shape {dims:?}, expected a vector"));
            }
            Ok(data)
        };
        let mut planner = FftPlanner::new();
        let mut spectrograms = Vec::new();
        for &n in &cfg.fft_sizes {
            if !(n.is_power_of_two() && (HOP..=8192).contains(&n)) {
                return Err(format!("FFT size {n} is not a power of two in {HOP}..8192"));
            }
            let (iname, vname) = names::projection(n);
            let index = take(&iname, None)?;
            let value = take(&vname, Some(&[index.len()]))?;
            let rows = n / 2 + 1;
            let projection = index
                .iter()
                .zip(&value)
                .map(|(&i, &v)| {
                    let i = i as usize;
                    if i >= rows * FEATURE_BINS || !v.is_finite() {
                        return Err(format!(
                            "{iname}: entry {i} outside [{rows}][{FEATURE_BINS}]"
                        ));
                    }
                    Ok((i / FEATURE_BINS, i % FEATURE_BINS, v))
                })
                .collect::<Result<Vec<_>, String>>()?;
            spectrograms.push(Spectrogram {
                n,
                fft: planner.plan_fft_forward(n),
                window: hann(n),
                projection,
            });
        }
        let mut convs = Vec::new();
        for (name, shape, dw, ph, pw) in names::CONVS {
            let w = take(&format!("{name}.weight"), Some(&shape))?;
            let b = take(&format!("{name}.bias"), Some(&shape[..1]))?;
            convs.push(Conv2d {
                dw,
                ph,
                pw,
                ..Conv2d::new(shape, w, b)
            });
        }
        if let Some(extra) = map.keys().next() {
            return Err(format!("unexpected tensor {extra}"));
        }
        let out = convs.pop().ok_or("conv table too short")?;
        let head = convs.pop().ok_or("conv table too short")?;
        let mut rest = convs.into_iter();
        let stem = rest.next().ok_or("conv table too short")?;
        let mut blocks = Vec::new();
        while let (Some(a), Some(b)) = (rest.next(), rest.next()) {
            blocks.push((a, b));
        }
        Ok(Self {
            cfg,
            spectrograms,
            stem,
            blocks,
            head,
            out,
        })
    }

    pub fn config(&self) -> &SwiftF0Config {
        &self.cfg
    }

    /// Frames the network gives for `samples` samples: one per hop, at least one.
    pub fn frames(samples: usize) -> usize {
        (samples / HOP).max(1)
    }

    /// The three log spectrograms of frames `first .. first + count`, channels-first
    /// `[3][count][FEATURE_BINS]`. `audio[0]` is sample `offset` of the stream; samples outside
    /// `audio` are zeros (as the graph pads a whole file).
    fn features(&self, audio: &[f32], offset: usize, first: usize, count: usize) -> Vec<f32> {
        let mut out = vec![0f32; 3 * count * FEATURE_BINS];
        let mut buf = Vec::new();
        let mut scratch = Vec::new();
        let mut mag = Vec::new();
        for (c, s) in self.spectrograms.iter().enumerate() {
            buf.resize(s.n, Complex32::default());
            scratch.resize(s.fft.get_inplace_scratch_len(), Complex32::default());
            for t in 0..count {
                let start = ((first + t) * HOP) as i64 - (s.n / 2) as i64 - offset as i64;
                for (i, (d, w)) in buf.iter_mut().zip(&s.window).enumerate() {
                    let j = start + i as i64;
                    let x = if (0..audio.len() as i64).contains(&j) {
                        audio[j as usize]
                    } else {
                        0.0
                    };
                    *d = Complex32::new(if x.is_finite() { x * w } else { 0.0 }, 0.0);
                }
                s.fft.process_with_scratch(&mut buf, &mut scratch);
                mag.clear();
                mag.extend(buf[..s.n / 2 + 1].iter().map(|z| z.norm()));
                let row = &mut out[(c * count + t) * FEATURE_BINS..][..FEATURE_BINS];
                for &(k, f, v) in &s.projection {
                    row[f] += mag[k] * v;
                }
                for v in row.iter_mut() {
                    *v = (*v + self.cfg.log_eps).ln();
                }
            }
        }
        out
    }

    /// The CNN over `[3][t][FEATURE_BINS]` features: logits `[t][PITCH_BINS]`.
    fn cnn(&self, feats: &[f32], t: usize) -> Vec<f32> {
        let f = FEATURE_BINS;
        let mut x = self.stem.forward(feats, t, f, Act::Relu);
        for (a, b) in &self.blocks {
            let y = a.forward(&x, t, f, Act::Relu);
            let y = b.forward(&y, t, f, Act::Linear);
            for (xv, yv) in x.iter_mut().zip(&y) {
                *xv = (*xv + yv).max(0.0);
            }
        }
        let hb = self.cfg.head_bins;
        let sliced: Vec<f32> = x
            .chunks_exact(f)
            .flat_map(|row| row[..hb].iter().copied())
            .collect();
        let h = self.head.forward(&sliced, t, hb, Act::Relu);
        self.out.forward(&h, t, self.head.out_w(hb), Act::Linear)
    }

    /// Pitch logits of output frames `first .. first + count` of a stream that has `total`
    /// frames so far, from `audio`, whose first sample is sample `offset` of the stream.
    /// Samples outside `audio` are silence; frames before 0 and from `total` on do not exist
    /// (the graph's zero padding), so a frame near the end sees what a run of the graph on the
    /// audio so far would. Frame-major `[count][PITCH_BINS]`.
    pub fn logits_range(
        &self,
        audio: &[f32],
        offset: usize,
        first: usize,
        count: usize,
        total: usize,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(count * PITCH_BINS);
        let mut done = 0;
        while done < count {
            let n = BLOCK.min(count - done);
            let a = first + done;
            let lo = a.saturating_sub(CONTEXT);
            let hi = (a + n + CONTEXT).min(total.max(a + n));
            let feats = self.features(audio, offset, lo, hi - lo);
            let logits = self.cnn(&feats, hi - lo);
            out.extend_from_slice(&logits[(a - lo) * PITCH_BINS..(a - lo + n) * PITCH_BINS]);
            done += n;
        }
        out
    }

    /// Pitch logits of a whole recording: `[frames(audio.len())][PITCH_BINS]`, as the graph
    /// gives them.
    pub fn logits(&self, audio: &[f32]) -> Vec<f32> {
        let frames = Self::frames(audio.len());
        self.logits_range(audio, 0, 0, frames, frames)
    }

    /// A softmax over each frame's logits: the pitch posterior, `[frames][PITCH_BINS]`.
    pub fn posterior(&self, audio: &[f32]) -> Vec<f32> {
        let mut z = self.logits(audio);
        softmax_rows(&mut z);
        z
    }
}

/// Softmax over each row of `PITCH_BINS` values, in place.
pub fn softmax_rows(z: &mut [f32]) {
    for row in z.chunks_exact_mut(PITCH_BINS) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped model directory.
    pub(crate) fn shipped_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/swift-f0")
    }

    fn golden() -> (Vec<f32>, Vec<f32>) {
        let bytes = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/swift_f0_golden.safetensors"),
        )
        .unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let audio = st
            .tensor("audio")
            .unwrap()
            .data()
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect();
        let logits = st
            .tensor("logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (audio, logits)
    }

    /// Agreement with ONNX Runtime on tests/fixtures/swift_f0_golden.safetensors (made by
    /// tests/fixtures/swift_f0_golden.py), and the arg-max pitch of every voiced-looking frame.
    #[test]
    fn swift_f0_golden_matches_onnxruntime() {
        let model = SwiftF0::load(&shipped_dir()).unwrap();
        let (audio, want) = golden();
        let got = model.logits(&audio);
        assert_eq!(got.len(), want.len(), "frames");
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!("swift-f0 logits: max abs error {err:e}");
        assert!(err < 2e-3, "max abs error {err}");
        let argmax = |r: &[f32]| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        for (g, w) in got.chunks(PITCH_BINS).zip(want.chunks(PITCH_BINS)) {
            assert_eq!(argmax(g), argmax(w));
        }
    }

    /// Frames computed in pieces with their context equal the whole run: what blocks of a
    /// long file and a live stream rely on.
    #[test]
    fn swift_f0_pieces_match_the_whole() {
        let model = SwiftF0::load(&shipped_dir()).unwrap();
        let (audio, _) = golden();
        let whole = model.logits(&audio);
        let total = SwiftF0::frames(audio.len());
        for (first, count) in [(0, 3), (40, 17), (total - 9, 9)] {
            // From a slice of the audio that starts well before the frames' context.
            let offset = (first.saturating_sub(CONTEXT + 8)) * HOP;
            let piece = model.logits_range(&audio[offset..], offset, first, count, total);
            let want = &whole[first * PITCH_BINS..(first + count) * PITCH_BINS];
            let err = piece
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-4, "frames {first}+{count}: {err}");
        }
        let p = model.posterior(&audio);
        for row in p.chunks(PITCH_BINS) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        }
    }

    /// No audio, a few samples, and non-numbers give finite posteriors (one frame at least).
    #[test]
    fn swift_f0_takes_empty_short_and_broken_audio() {
        let model = SwiftF0::load(&shipped_dir()).unwrap();
        for audio in [
            vec![],
            vec![0.1; 100],
            vec![f32::NAN; 3000],
            vec![f32::INFINITY; 600],
        ] {
            let p = model.posterior(&audio);
            assert_eq!(p.len(), SwiftF0::frames(audio.len()) * PITCH_BINS);
            assert!(p.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn swift_f0_refuses_a_wrong_shape() {
        let dir = shipped_dir();
        let cfg: SwiftF0Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let mut map = read_f32_safetensors(&dir.join("model.safetensors")).unwrap();
        let w = map.get_mut("block3.conv1.weight").unwrap();
        w.0 = vec![12, 12, 5, 1];
        let err = SwiftF0::from_tensors(cfg, map).unwrap_err();
        assert!(err.contains("block3.conv1.weight"), "{err}");
    }
}

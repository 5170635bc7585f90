//! The 2-D convolution of the small spectrogram CNNs ported from ONNX by hand (Basic Pitch,
//! SwiftF0), as im2col + the `gemm` crate, and the f32 safetensors reader they share.
//!
//! Tensors are channels-first `[C][T][F]`: rows are time frames (stride 1, symmetric zero
//! padding), columns frequency bins (any stride, dilation and padding on each side, which is
//! what the two networks use). No threads of our own: chunks of rows are split over rayon's
//! global pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{NnError, vits::matmul};

/// Activation applied to a convolution's output (after the bias).
#[derive(Debug, Clone, Copy)]
pub(super) enum Act {
    /// None: the caller adds a residual first.
    Linear,
    Relu,
    Sigmoid,
}

pub(super) fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// A 2-D convolution: stride 1 and symmetric padding `ph` along time, stride `sw`, dilation
/// `dw` and padding `pw` (before, after) along frequency.
#[derive(Debug, Clone)]
pub(super) struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sw: usize,
    pub dw: usize,
    pub ph: usize,
    pub pw: (usize, usize),
    /// `[cout][cin * kh * kw]` (`OIHW` flattened, H = time).
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

/// Output values per im2col chunk: keeps a chunk's column matrix around 1 MiB.
const CHUNK_VALUES: usize = 256 * 1024;

impl Conv2d {
    /// A convolution of `[cout, cin, kh, kw]` weights (OIHW) and bias, unit stride and
    /// dilation, no padding; the networks set their geometry with struct update syntax.
    pub fn new([cout, cin, kh, kw]: [usize; 4], w: Vec<f32>, b: Vec<f32>) -> Self {
        Self {
            cin,
            cout,
            kh,
            kw,
            sw: 1,
            dw: 1,
            ph: 0,
            pw: (0, 0),
            w,
            b,
        }
    }

    pub fn out_w(&self, w: usize) -> usize {
        (w + self.pw.0 + self.pw.1 - self.dw * (self.kw - 1) - 1) / self.sw + 1
    }

    /// `x` is `[cin][h][w]`; returns `[cout][h][out_w]`.
    pub fn forward(&self, x: &[f32], h: usize, w: usize, act: Act) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.cin * h * w);
        let wo = self.out_w(w);
        let kdim = self.cin * self.kh * self.kw;
        let rows = (CHUNK_VALUES / (kdim * wo)).clamp(1, h.max(1));
        let chunks: Vec<(usize, usize, Vec<f32>)> = (0..h.div_ceil(rows))
            .into_par_iter()
            .map(|c| {
                let t0 = c * rows;
                let nr = rows.min(h - t0);
                let n = nr * wo;
                let mut cols = vec![0f32; kdim * n];
                for ci in 0..self.cin {
                    for dy in 0..self.kh {
                        for dx in 0..self.kw {
                            let k = (ci * self.kh + dy) * self.kw + dx;
                            let dst = &mut cols[k * n..(k + 1) * n];
                            for r in 0..nr {
                                // Input row t + dy - ph; rows outside are zero padding.
                                let Some(ty) = (t0 + r + dy).checked_sub(self.ph) else {
                                    continue;
                                };
                                if ty >= h {
                                    continue;
                                }
                                let src = &x[(ci * h + ty) * w..(ci * h + ty + 1) * w];
                                let row = &mut dst[r * wo..(r + 1) * wo];
                                let shift = dx * self.dw;
                                if self.sw == 1 {
                                    // Output j reads input j + shift - pw.0: one slice copy
                                    // between the paddings.
                                    let lo = self.pw.0.saturating_sub(shift);
                                    let hi = (w + self.pw.0).saturating_sub(shift).min(wo);
                                    if lo < hi {
                                        let s0 = lo + shift - self.pw.0;
                                        row[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                                    }
                                    continue;
                                }
                                for (j, d) in row.iter_mut().enumerate() {
                                    let xi = (j * self.sw + shift).wrapping_sub(self.pw.0);
                                    if xi < w {
                                        *d = src[xi];
                                    }
                                }
                            }
                        }
                    }
                }
                let mut out = vec![0f32; self.cout * n];
                // Dense row-major output: row stride n, overwritten.
                matmul(
                    (self.cout, n, kdim),
                    &mut out,
                    n,
                    false,
                    &self.w,
                    (kdim, 1),
                    &cols,
                    (n, 1),
                );
                (t0, nr, out)
            })
            .collect();
        let mut y = vec![0f32; self.cout * h * wo];
        for (t0, nr, out) in chunks {
            let n = nr * wo;
            for co in 0..self.cout {
                let b = self.b[co];
                let dst = &mut y[(co * h + t0) * wo..(co * h + t0) * wo + n];
                for (d, &v) in dst.iter_mut().zip(&out[co * n..(co + 1) * n]) {
                    let v = v + b;
                    *d = match act {
                        Act::Linear => v,
                        Act::Relu => v.max(0.0),
                        Act::Sigmoid => sigmoid(v),
                    };
                }
            }
        }
        y
    }
}

/// Named f32 tensors: `(shape, values)`.
pub(super) type F32Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors file, which must all be f32, by name.
pub(super) fn read_f32_safetensors(path: &Path) -> Result<F32Tensors, NnError> {
    let bytes = read(path)?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| super::invalid_file(path, e))?;
    let mut map = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(super::invalid_file(
                path,
                format!("{name}: dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect::<Vec<_>>();
        map.insert(name, (view.shape().to_vec(), data));
    }
    Ok(map)
}

/// Reads a model file; a missing one is [`NnError::MissingFile`].
pub(super) fn read(path: &Path) -> Result<Vec<u8>, NnError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NnError::MissingFile {
                path: PathBuf::from(path),
            }
        } else {
            NnError::Io {
                path: PathBuf::from(path),
                source: e,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_conv(c: &Conv2d, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let wo = c.out_w(w);
        let mut y = vec![0f32; c.cout * h * wo];
        for co in 0..c.cout {
            for t in 0..h {
                for j in 0..wo {
                    let mut s = c.b[co];
                    for ci in 0..c.cin {
                        for dy in 0..c.kh {
                            for dx in 0..c.kw {
                                let ty = t as i64 + dy as i64 - c.ph as i64;
                                let xi = (j * c.sw + dx * c.dw) as i64 - c.pw.0 as i64;
                                if ty < 0 || ty >= h as i64 || xi < 0 || xi >= w as i64 {
                                    continue;
                                }
                                s += c.w[((co * c.cin + ci) * c.kh + dy) * c.kw + dx]
                                    * x[(ci * h + ty as usize) * w + xi as usize];
                            }
                        }
                    }
                    y[(co * h + t) * wo + j] = s.max(0.0);
                }
            }
        }
        y
    }

    fn check(sw: usize, dw: usize, pw: (usize, usize)) {
        let mut seed = 1u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let weights = (0..4 * 3 * 5 * 7).map(|_| rnd()).collect();
        let bias = (0..4).map(|_| rnd()).collect();
        let c = Conv2d {
            sw,
            dw,
            ph: 2,
            pw,
            ..Conv2d::new([4, 3, 5, 7], weights, bias)
        };
        let (h, w) = (9, 31);
        let x: Vec<f32> = (0..3 * h * w).map(|_| rnd()).collect();
        let got = c.forward(&x, h, w, Act::Relu);
        let want = naive_conv(&c, &x, h, w);
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "sw {sw} dw {dw} pw {pw:?}: max error {err}");
    }

    #[test]
    fn conv_matches_naive() {
        // Basic Pitch's strided convolutions, SwiftF0's dilated and one-sided ones.
        check(3, 1, (2, 2));
        check(1, 3, (9, 9));
        check(1, 1, (1, 0));
        check(1, 17, (51, 51));
        check(2, 2, (0, 3));
    }
}

//! YAMNet's MobileNet-v1 trunk as a frozen feature extractor: log-mel patch `[96][64]` in,
//! 1024-d embedding out (global average of the last feature map).
//!
//! The trunk is 27 convolutions (one full 3x3, then 13 depthwise-3x3 + pointwise-1x1 pairs),
//! each followed by ReLU, with batch norm already folded into the weights and biases. Only
//! inference is needed (the trunk is never trained here), so the layers are plain loops over
//! NCHW buffers except the pointwise convolutions, which are matrix products and go through
//! candle's gemm. candle's grouped `conv2d` runs one convolution per group — 1024 tiny ones
//! for the last depthwise layer — which is why depthwise layers are written out here.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::nn::NnError;

/// How one convolution is applied (as in the ONNX node it was imported from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvSpec {
    /// Same stride along time and mel.
    pub stride: usize,
    /// Zero padding `[top, left, bottom, right]` (ONNX order `[t, l, b, r]`; YAMNet's "SAME"
    /// padding is asymmetric on strided layers: `[0, 0, 1, 1]`).
    pub pads: [usize; 4],
    /// 1 = full convolution; = channels for a depthwise one.
    pub group: usize,
}

/// A convolution's weights: `[c_out][c_in / group][k][k]` and `[c_out]`.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    pub spec: ConvSpec,
    pub c_out: usize,
    pub c_in: usize,
    pub k: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

#[derive(Debug)]
enum Layer {
    /// A spatial convolution computed directly (full with few inputs, or depthwise).
    Direct(ConvWeights),
    /// 1x1 convolution: `[c_out, c_in]` matrix and `[c_out, 1]` bias.
    Pointwise { w: Tensor, b: Tensor, c_out: usize },
}

/// The frozen trunk.
#[derive(Debug)]
pub struct Backbone {
    layers: Vec<Layer>,
    dim: usize,
}

impl Backbone {
    pub fn new(convs: Vec<ConvWeights>) -> Result<Self, NnError> {
        let mut layers = Vec::with_capacity(convs.len());
        let mut dim = 1;
        for c in convs {
            let expect = c.c_out * (c.c_in / c.spec.group.max(1)) * c.k * c.k;
            if c.weight.len() != expect || c.bias.len() != c.c_out || c.spec.stride == 0 {
                return Err(NnError::InvalidInput(format!(
                    "backbone layer with {} weights, {} biases for {}x{}x{}x{} / group {}",
                    c.weight.len(),
                    c.bias.len(),
                    c.c_out,
                    c.c_in,
                    c.k,
                    c.k,
                    c.spec.group
                )));
            }
            dim = c.c_out;
            if c.k == 1 && c.spec.group == 1 && c.spec.stride == 1 && c.spec.pads == [0; 4] {
                let w = Tensor::from_vec(c.weight, (c.c_out, c.c_in), &Device::Cpu)?;
                let b = Tensor::from_vec(c.bias, (c.c_out, 1), &Device::Cpu)?;
                layers.push(Layer::Pointwise {
                    w,
                    b,
                    c_out: c.c_out,
                });
            } else {
                layers.push(Layer::Direct(c));
            }
        }
        Ok(Self { layers, dim })
    }

    /// Embedding size (1024 for YAMNet).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeddings of `n` patches `[n][h][w]` (row-major, one input channel) -> `[n][dim]`.
    ///
    /// Activations are kept channel-major across the batch (`[c][n][h][w]`), so that every
    /// pointwise layer is one `[c_out, c_in] x [c_in, n*h*w]` product: late layers have maps
    /// of 6x4 or 3x2, and one small product per patch would waste the gemm.
    pub fn embed(
        &self,
        patches: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, NnError> {
        if patches.len() != n * h * w {
            return Err(NnError::InvalidInput(format!(
                "{} values for {n} patches of {h}x{w}",
                patches.len()
            )));
        }
        // One input channel: [n][h][w] is already [1][n][h][w].
        let (mut x, mut c, mut h, mut w) = (patches.to_vec(), 1usize, h, w);
        for layer in &self.layers {
            match layer {
                Layer::Direct(conv) => {
                    let (y, oh, ow) = direct_conv(&x, n, c, h, w, conv);
                    x = y;
                    c = conv.c_out;
                    h = oh;
                    w = ow;
                }
                Layer::Pointwise { w: wt, b, c_out } => {
                    let t = Tensor::from_vec(x, (c, n * h * w), &Device::Cpu)?;
                    let y = wt.matmul(&t)?.broadcast_add(b)?.relu()?;
                    x = y.flatten_all()?.to_vec1::<f32>()?;
                    c = *c_out;
                }
            }
        }
        // Global average pool over the last map, transposed to [n][c].
        let hw = (h * w).max(1);
        let mut out = vec![0f32; n * c];
        for (i, plane) in x.chunks(hw).enumerate() {
            let (ch, b) = (i / n, i % n);
            out[b * c + ch] = plane.iter().sum::<f32>() / hw as f32;
        }
        Ok(out)
    }
}

/// Convolution + bias + ReLU over channel-major `x` (`[c][n][h][w]`), for full (`group` = 1)
/// or depthwise (`group` = c) kernels. Returns the output (`[c_out][n][oh][ow]`) and its height
/// and width.
fn direct_conv(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    conv: &ConvWeights,
) -> (Vec<f32>, usize, usize) {
    let ConvSpec {
        stride,
        pads: [pt, pl, pb, pr],
        group,
    } = conv.spec;
    let k = conv.k;
    let oh = (h + pt + pb - k) / stride + 1;
    let ow = (w + pl + pr - k) / stride + 1;
    let cin_per = c / group;
    let cout_per = conv.c_out / group;
    let mut y = vec![0f32; n * conv.c_out * oh * ow];
    // One output plane per task: planes are independent, and a batch of patches has hundreds.
    y.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane_idx, out)| {
            let (co, b) = (plane_idx / n, plane_idx % n);
            let g = co / cout_per;
            out.fill(conv.bias[co]);
            for ci in 0..cin_per {
                let plane = &x[((g * cin_per + ci) * n + b) * h * w..][..h * w];
                let kern = &conv.weight[(co * cin_per + ci) * k * k..][..k * k];
                for ky in 0..k {
                    for kx in 0..k {
                        let wv = kern[ky * k + kx];
                        for oy in 0..oh {
                            let iy = (oy * stride + ky) as isize - pt as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let row = &plane[iy as usize * w..][..w];
                            let orow = &mut out[oy * ow..][..ow];
                            for (ox, o) in orow.iter_mut().enumerate() {
                                let ix = (ox * stride + kx) as isize - pl as isize;
                                if ix >= 0 && (ix as usize) < w {
                                    *o += wv * row[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
            for v in out.iter_mut() {
                *v = v.max(0.0);
            }
        });
    (y, oh, ow)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A depthwise layer must equal candle's grouped conv2d on the same weights (symmetric pads,
    /// where candle can express it), and a strided one must follow TF "SAME" (pad bottom/right).
    #[test]
    fn direct_conv_matches_candle_grouped_conv() {
        let (n, c, h, w, k) = (1, 3, 7, 6, 3);
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 37) % 11) as f32 - 5.0)
            .collect();
        let wt: Vec<f32> = (0..c * k * k)
            .map(|i| ((i * 13) % 7) as f32 * 0.1 - 0.3)
            .collect();
        let conv = ConvWeights {
            spec: ConvSpec {
                stride: 1,
                pads: [1, 1, 1, 1],
                group: c,
            },
            c_out: c,
            c_in: c,
            k,
            weight: wt.clone(),
            bias: vec![0.5, -0.5, 0.0],
        };
        let (y, oh, ow) = direct_conv(&x, n, c, h, w, &conv);
        assert_eq!((oh, ow), (h, w));
        let xt = Tensor::from_vec(x.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(wt, (c, 1, k, k), &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, -0.5, 0.0], &Device::Cpu)
            .unwrap()
            .reshape((1, c, 1, 1))
            .unwrap();
        let expect = xt
            .conv2d(&wt, 1, 1, 1, c)
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .relu()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, e) in y.iter().zip(&expect) {
            assert!((a - e).abs() < 1e-4, "{a} vs {e}");
        }
        // Stride 2 with [0, 0, 1, 1]: output (7+1-3)/2+1 = 3 rows, (6+1-3)/2+1 = 3 columns; the
        // first output reads rows 0..3 (no top padding).
        let conv2 = ConvWeights {
            spec: ConvSpec {
                stride: 2,
                pads: [0, 0, 1, 1],
                group: c,
            },
            ..conv
        };
        let (y2, oh, ow) = direct_conv(&x, n, c, h, w, &conv2);
        assert_eq!((oh, ow), (3, 3));
        let manual: f32 = (0..3)
            .flat_map(|ky| (0..3).map(move |kx| (ky, kx)))
            .map(|(ky, kx)| conv2.weight[ky * 3 + kx] * x[ky * w + kx])
            .sum::<f32>()
            + 0.5;
        assert!((y2[0] - manual.max(0.0)).abs() < 1e-4);
    }
}

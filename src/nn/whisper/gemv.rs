//! Matrix-vector products for the decoder's one-token steps.
//!
//! A decode step multiplies a handful of rows (one per beam) by every weight matrix. candle's
//! general matmul (the `gemm` crate) packs the transposed weight on each call and took 11 ms
//! for the 51864 x 384 output projection with one row (22 ms with five) on our 2-core machine,
//! and candle's Q8_0 matmul 8.4 ms (its x86 SIMD paths are chosen at compile time, and we do
//! not build with `target-cpu=native`: binaries must run on any x86-64). Here each output is a
//! dot product with a contiguous weight row, the loops are written so the compiler vectorises
//! them, and the AVX2+FMA version of the same code is picked at run time. Rows are split over
//! rayon's pool (the one candle already uses).
//!
//! [`I8Rows`] stores a matrix as int8 with one f32 scale per row (symmetric, max-abs / 127):
//! a quarter of the bytes to read per step for the output projection.

use rayon::prelude::*;

/// Lanes of the partial sums (one AVX register of f32).
const LANES: usize = 8;
/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 2048;

/// An int8 matrix (rows x cols) with one scale per row.
#[derive(Debug, Clone)]
pub struct I8Rows {
    data: Vec<i8>,
    scales: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl I8Rows {
    /// Quantises a row-major f32 matrix.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "matrix size");
        let mut data = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows];
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let max = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales[r] = scale;
            for (q, &x) in data[r * cols..(r + 1) * cols].iter_mut().zip(row) {
                *q = (x / scale).round().clamp(-127.0, 127.0) as i8;
            }
        }
        Self {
            data,
            scales,
            rows,
            cols,
        }
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }
}

/// Dot product of f32 activations with f32 or int8 weights, in `LANES` independent
/// accumulators so the compiler vectorises it.
#[inline(always)]
fn dot<W: Copy + Into<f32>>(x: &[f32], w: &[W]) -> f32 {
    let mut acc = [0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let wc = w.chunks_exact(LANES);
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (a, b) in xc.zip(wc) {
        for k in 0..LANES {
            acc[k] += a[k] * b[k].into();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, &b) in xr.iter().zip(wr) {
        s += a * b.into();
    }
    s
}

/// out[m][j] = dot(x[m], w[j]) for a block of rows `j0..j0 + out_block.len() / m_rows`.
#[inline(always)]
fn block_f32(x: &[f32], k: usize, w: &[f32], j0: usize, out: &mut [f32]) {
    let m_rows = x.len() / k;
    let nb = out.len() / m_rows;
    for jj in 0..nb {
        let row = &w[(j0 + jj) * k..(j0 + jj + 1) * k];
        for m in 0..m_rows {
            out[m * nb + jj] = dot(&x[m * k..(m + 1) * k], row);
        }
    }
}

#[inline(always)]
fn block_i8(x: &[f32], w: &I8Rows, j0: usize, out: &mut [f32]) {
    let k = w.cols;
    let m_rows = x.len() / k;
    let nb = out.len() / m_rows;
    for jj in 0..nb {
        let j = j0 + jj;
        let row = &w.data[j * k..(j + 1) * k];
        for m in 0..m_rows {
            out[m * nb + jj] = dot(&x[m * k..(m + 1) * k], row) * w.scales[j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_f32_avx2(x: &[f32], k: usize, w: &[f32], j0: usize, out: &mut [f32]) {
    block_f32(x, k, w, j0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_i8_avx2(x: &[f32], w: &I8Rows, j0: usize, out: &mut [f32]) {
    block_i8(x, w, j0, out)
}

pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f(j0, block)` over blocks of output columns in parallel and assembles the (M, N)
/// result (block results are laid out (M, rows-in-block)).
fn par_blocks(m_rows: usize, n: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let starts: Vec<usize> = (0..n).step_by(ROWS_PER_TASK).collect();
    let blocks: Vec<Vec<f32>> = starts
        .par_iter()
        .map(|&j0| {
            let nb = ROWS_PER_TASK.min(n - j0);
            let mut b = vec![0f32; m_rows * nb];
            f(j0, &mut b);
            b
        })
        .collect();
    let mut out = vec![0f32; m_rows * n];
    for (&j0, b) in starts.iter().zip(&blocks) {
        let nb = b.len() / m_rows.max(1);
        for m in 0..m_rows {
            out[m * n + j0..m * n + j0 + nb].copy_from_slice(&b[m * nb..(m + 1) * nb]);
        }
    }
    out
}

/// x (M, K) times w^T, w (N, K) row-major f32: (M, N), plus `bias` (N) if given.
pub fn matmul_f32(x: &[f32], k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let m_rows = x.len() / k;
    let avx2 = has_avx2();
    let run = |j0: usize, out: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time above).
            unsafe { block_f32_avx2(x, k, w, j0, out) };
            return;
        }
        let _ = avx2;
        block_f32(x, k, w, j0, out)
    };
    let mut out = if n * k >= 1 << 18 {
        par_blocks(m_rows, n, run)
    } else {
        let mut out = vec![0f32; m_rows * n];
        run(0, &mut out);
        out
    };
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(n) {
            for (o, &bb) in row.iter_mut().zip(b) {
                *o += bb;
            }
        }
    }
    out
}

/// x (M, K) times w^T for an int8 matrix: (M, N).
pub fn matmul_i8(x: &[f32], w: &I8Rows) -> Vec<f32> {
    let m_rows = x.len() / w.cols;
    let avx2 = has_avx2();
    par_blocks(m_rows, w.rows, |j0, out| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time above).
            unsafe { block_i8_avx2(x, w, j0, out) };
            return;
        }
        let _ = avx2;
        block_i8(x, w, j0, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
            }
        }
        out
    }

    #[test]
    fn f32_and_i8_match_naive() {
        let (m, k, n) = (3, 37, 5000);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 11.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        let want = naive(&x, k, &w, n);
        let got = matmul_f32(&x, k, &w, n, Some(&bias));
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            let bb = b + bias[j % n];
            assert!((a - bb).abs() < 1e-4, "{j}: {a} vs {bb}");
        }
        let q = I8Rows::quantize(&w, n, k);
        assert_eq!(q.size_bytes(), n * k + 4 * n);
        let got = matmul_i8(&x, &q);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 0.05 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

//! Int8 matrix products with AVX-512 VNNI: Whisper's linear layers as `u8 x i8 -> i32`.
//!
//! The encoder spends most of a 30 s window in its linear layers (1500 rows times 384 x 384 and
//! 384 x 1536 weights), which candle's f32 gemm runs at ~40 GFLOP/s on our two cores. One
//! `vpdpbusd` does 64 multiply-adds where an f32 FMA does 16, so the same products in int8 take
//! a fraction of the time; faster-whisper's int8 mode (CTranslate2) quantises the same way:
//!
//! - weights: symmetric int8, one scale per output column (max-abs / 127), packed at load time
//!   into blocks of [`NB`] columns laid out `[k / 4][NB][4]`, so one 64-byte load holds four
//!   consecutive k of 16 columns, the operand shape of `vpdpbusd`;
//! - activations: one scale per row, quantised on every call to `u8` with a zero point of 128
//!   (`vpdpbusd` multiplies unsigned by signed bytes); the 128 x column sum it adds is
//!   subtracted once per output ([`PackedI8::corr`]);
//! - i32 accumulation is exact (K <= 4096: |sum| < 2^31), so the only error is rounding the
//!   two inputs.
//!
//! No kept crate has a VNNI int8 gemm (the `gemm` crate is float only), hence this file. CPUs
//! without AVX-512 VNNI get a scalar version of the same arithmetic, which callers avoid by
//! asking [`available`] first: there the f32 paths are faster.

use rayon::prelude::*;

/// Output columns per packed block: two 16-lane registers.
pub const NB: usize = 32;
/// Rows per register tile (8 rows x 2 registers = 16 accumulators of the 32).
const MR: usize = 8;
/// Largest K for which i32 accumulation cannot overflow (255 * 127 * K < 2^31).
const MAX_K: usize = 4096;

/// True when this CPU runs the VNNI kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight matrix (N outputs x K inputs) quantised to int8 and packed for [`matmul`].
#[derive(Debug, Clone)]
pub struct PackedI8 {
    /// `[N / NB][K / 4][NB][4]`, N padded with zero columns to a multiple of [`NB`].
    data: Vec<i8>,
    /// Scale per output column (padded columns: 0).
    scales: Vec<f32>,
    /// 128 x the sum of each column's int8 weights: what the activations' zero point adds.
    corr: Vec<i32>,
    pub n: usize,
    pub k: usize,
}

impl PackedI8 {
    /// Quantises and packs a row-major (n, k) f32 matrix (`nn.Linear` layout: one row per
    /// output). `None` when k is not a multiple of 4 or too large for exact accumulation.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Option<Self> {
        if k == 0 || !k.is_multiple_of(4) || k > MAX_K || w.len() != n * k {
            return None;
        }
        let blocks = n.div_ceil(NB);
        let padded = blocks * NB;
        let mut data = vec![0i8; padded * k];
        let mut scales = vec![0f32; padded];
        let mut corr = vec![0i32; padded];
        let k4 = k / 4;
        for (j, row) in w.chunks_exact(k).enumerate() {
            let max = row
                .iter()
                .fold(0f32, |m, &x| if x.abs() > m { x.abs() } else { m });
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales[j] = scale;
            let inv = 1.0 / scale;
            let (blk, col) = (j / NB, j % NB);
            let block = &mut data[blk * k4 * NB * 4..(blk + 1) * k4 * NB * 4];
            let mut sum = 0i32;
            for (k4i, four) in row.chunks_exact(4).enumerate() {
                let at = (k4i * NB + col) * 4;
                for (dst, &x) in block[at..at + 4].iter_mut().zip(four) {
                    // Round to nearest as in `quantize_rows` (no libm call per weight: keys
                    // and values of the encoder's attention are packed on every call).
                    let q = ((x * inv + 128.5) as u8).wrapping_sub(128) as i8;
                    sum += i32::from(q);
                    *dst = q;
                }
            }
            corr[j] = 128 * sum;
        }
        Some(Self {
            data,
            scales,
            corr,
            n,
            k,
        })
    }

    fn blocks(&self) -> usize {
        self.n.div_ceil(NB)
    }

    /// The int8 weight of output `j`, input `kk` (tests and the scalar path).
    fn weight(&self, j: usize, kk: usize) -> i8 {
        let (blk, col) = (j / NB, j % NB);
        self.data[((blk * (self.k / 4) + kk / 4) * NB + col) * 4 + kk % 4]
    }
}

/// How activations become bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// Any sign: `round(x / s) + 128` with s = max|x| / 127 (the zero point is removed
    /// through [`PackedI8::corr`]).
    Signed,
    /// Known to be >= 0 (attention probabilities): `round(x / s)` with s = max / 255, twice
    /// the resolution and no zero point.
    NonNegative,
}

impl Activations {
    /// (levels on one side of zero, value added before truncation)
    fn params(self) -> (f32, f32) {
        match self {
            Activations::Signed => (127.0, 128.5),
            Activations::NonNegative => (255.0, 0.5),
        }
    }
}

/// One row of activations as bytes (see [`Activations`]); returns its scale.
fn quantize_row(row: &[f32], q: &mut [u8], kind: Activations) -> f32 {
    let (levels, offset) = kind.params();
    let max = row
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m { v.abs() } else { m });
    // A zero row stays zero whatever the scale.
    let scale = if max > 0.0 { max / levels } else { 1.0 };
    let inv = 1.0 / scale;
    for (o, &v) in q.iter_mut().zip(row) {
        // v * inv is within [-127, 127] (or [0, 255]): adding the offset and truncating
        // rounds to nearest and saturates. One rounding (fused), as the AVX-512 version
        // does, so both give the same bytes.
        *o = v.mul_add(inv, offset) as u8;
    }
    scale
}

/// Rows of `x` (M, K) as `u8` with zero point 128 and one scale per row, into `q`/`scales`.
fn quantize_rows(
    x: &[f32],
    k: usize,
    q: &mut [u8],
    scales: &mut [f32],
    kind: Activations,
    vnni: bool,
) {
    let one = |row: &[f32], qrow: &mut [u8]| -> f32 {
        #[cfg(target_arch = "x86_64")]
        if vnni {
            // SAFETY: AVX-512 F/BW are part of what `available` checked.
            return unsafe { vnni::quantize_row(row, qrow, kind) };
        }
        let _ = vnni;
        quantize_row(row, qrow, kind)
    };
    if x.len() >= 1 << 16 {
        x.par_chunks_exact(k)
            .zip(q.par_chunks_exact_mut(k))
            .zip(scales.par_iter_mut())
            .for_each(|((row, qrow), s)| *s = one(row, qrow));
    } else {
        for ((row, qrow), s) in x.chunks_exact(k).zip(q.chunks_exact_mut(k)).zip(scales) {
            *s = one(row, qrow);
        }
    }
}

/// Output block layout: `out[r * ldo + (column - col0)]` for the rows being computed.
struct Out<'a> {
    buf: &'a mut [f32],
    ldo: usize,
    col0: usize,
    /// The activations carry the zero point 128 ([`Activations::Signed`]).
    zero_point: bool,
}

/// Scalar version of one tile (CPUs without VNNI, and the reference the tests hold the
/// kernel to).
#[allow(clippy::too_many_arguments)]
fn tile_scalar(
    a: &[u8],
    sa: &[f32],
    rows: usize,
    w: &PackedI8,
    blk: usize,
    bias: Option<&[f32]>,
    out: &mut Out<'_>,
) {
    let k = w.k;
    let n0 = blk * NB;
    for r in 0..rows {
        for j in n0..(n0 + NB).min(w.n) {
            let mut acc = 0i32;
            for kk in 0..k {
                acc += i32::from(a[r * k + kk]) * i32::from(w.weight(j, kk));
            }
            let corr = if out.zero_point { w.corr[j] } else { 0 };
            let v = (acc - corr) as f32 * (w.scales[j] * sa[r]);
            out.buf[r * out.ldo + j - out.col0] = v + bias.map_or(0.0, |b| b[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Activations, NB, Out, PackedI8};

    /// [`super::quantize_row`] sixteen lanes at a time.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW; `q` is as long as `row`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(row: &[f32], q: &mut [u8], kind: Activations) -> f32 {
        let (levels, offset) = kind.params();
        let n16 = row.len() - row.len() % 16;
        let mut vmax = _mm512_setzero_ps();
        for c in row[..n16].chunks_exact(16) {
            // SAFETY: `c` holds 16 floats.
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }));
        }
        let max = row[n16..].iter().fold(_mm512_reduce_max_ps(vmax), |m, &v| {
            if v.abs() > m { v.abs() } else { m }
        });
        let scale = if max > 0.0 { max / levels } else { 1.0 };
        let inv = _mm512_set1_ps(1.0 / scale);
        let half = _mm512_set1_ps(offset);
        for (c, o) in row[..n16].chunks_exact(16).zip(q.chunks_exact_mut(16)) {
            // SAFETY: `c` holds 16 floats and `o` 16 bytes.
            unsafe {
                let v = _mm512_fmadd_ps(_mm512_loadu_ps(c.as_ptr()), inv, half);
                let i = _mm512_min_epi32(
                    _mm512_max_epi32(_mm512_cvttps_epi32(v), _mm512_setzero_si512()),
                    _mm512_set1_epi32(255),
                );
                _mm_storeu_si128(o.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(i));
            }
        }
        let inv = 1.0 / scale;
        for (o, &v) in q[n16..].iter_mut().zip(&row[n16..]) {
            *o = v.mul_add(inv, offset) as u8;
        }
        scale
    }

    /// `R` rows of `a` (u8, row stride K) times column block `blk`, dequantised (and biased)
    /// into `out`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VNNI; `a` holds `R` rows of `w.k` bytes, `sa` `R`
    /// scales, `out` `R` rows of stride `ldo` covering the block's columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize>(
        a: &[u8],
        sa: &[f32],
        w: &PackedI8,
        blk: usize,
        bias: Option<&[f32]>,
        out: &mut Out<'_>,
    ) {
        let k = w.k;
        let k4 = k / 4;
        debug_assert!(a.len() >= R * k && sa.len() >= R);
        // SAFETY (whole body): every pointer below stays inside the slices it comes from:
        // block `blk` of `w.data` is k4 * NB * 4 bytes, `a` has R rows of k bytes, and the
        // stores are masked to the block's valid columns.
        unsafe {
            let b = w.data.as_ptr().add(blk * k4 * NB * 4);
            let ap = a.as_ptr();
            let mut acc0 = [_mm512_setzero_si512(); R];
            let mut acc1 = [_mm512_setzero_si512(); R];
            for kk in 0..k4 {
                let b0 = _mm512_loadu_si512(b.add(kk * NB * 4).cast());
                let b1 = _mm512_loadu_si512(b.add(kk * NB * 4 + 64).cast());
                for r in 0..R {
                    let av =
                        _mm512_set1_epi32(ap.add(r * k + kk * 4).cast::<i32>().read_unaligned());
                    acc0[r] = _mm512_dpbusd_epi32(acc0[r], av, b0);
                    acc1[r] = _mm512_dpbusd_epi32(acc1[r], av, b1);
                }
            }
            let n0 = blk * NB;
            let valid = (w.n - n0).min(NB);
            let m0: u16 = if valid >= 16 {
                u16::MAX
            } else {
                ((1u32 << valid) - 1) as u16
            };
            let m1: u16 = if valid >= 32 {
                u16::MAX
            } else if valid > 16 {
                ((1u32 << (valid - 16)) - 1) as u16
            } else {
                0
            };
            let (c0, c1) = if out.zero_point {
                (
                    _mm512_loadu_si512(w.corr.as_ptr().add(n0).cast()),
                    _mm512_loadu_si512(w.corr.as_ptr().add(n0 + 16).cast()),
                )
            } else {
                (_mm512_setzero_si512(), _mm512_setzero_si512())
            };
            let s0 = _mm512_loadu_ps(w.scales.as_ptr().add(n0));
            let s1 = _mm512_loadu_ps(w.scales.as_ptr().add(n0 + 16));
            let (bi0, bi1) = match bias {
                Some(bias) => (
                    _mm512_maskz_loadu_ps(m0, bias.as_ptr().add(n0)),
                    _mm512_maskz_loadu_ps(m1, bias.as_ptr().wrapping_add(n0 + 16)),
                ),
                None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
            };
            let o = out.buf.as_mut_ptr();
            for r in 0..R {
                let sr = _mm512_set1_ps(sa[r]);
                let v0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc0[r], c0));
                let v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc1[r], c1));
                let at = o.add(r * out.ldo + n0 - out.col0);
                _mm512_mask_storeu_ps(at, m0, _mm512_fmadd_ps(v0, _mm512_mul_ps(s0, sr), bi0));
                if m1 != 0 {
                    _mm512_mask_storeu_ps(
                        at.add(16),
                        m1,
                        _mm512_fmadd_ps(v1, _mm512_mul_ps(s1, sr), bi1),
                    );
                }
            }
        }
    }
}

/// Rows `a` (quantised, `rows` of them) times blocks `blocks` of `w` into `out`.
#[allow(clippy::too_many_arguments)]
fn run_blocks(
    a: &[u8],
    sa: &[f32],
    rows: usize,
    w: &PackedI8,
    blocks: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: &mut Out<'_>,
    vnni: bool,
) {
    let k = w.k;
    for blk in blocks {
        let mut r0 = 0;
        while r0 < rows {
            let n = (rows - r0).min(MR);
            let (at, st) = (&a[r0 * k..(r0 + n) * k], &sa[r0..r0 + n]);
            let mut o = Out {
                buf: &mut out.buf[r0 * out.ldo..],
                ldo: out.ldo,
                col0: out.col0,
                zero_point: out.zero_point,
            };
            #[cfg(target_arch = "x86_64")]
            if vnni {
                // SAFETY: VNNI is present (checked by the caller through `available`), and
                // `at`/`st`/`o` hold `n` rows.
                unsafe {
                    match n {
                        8 => vnni::tile::<8>(at, st, w, blk, bias, &mut o),
                        7 => vnni::tile::<7>(at, st, w, blk, bias, &mut o),
                        6 => vnni::tile::<6>(at, st, w, blk, bias, &mut o),
                        5 => vnni::tile::<5>(at, st, w, blk, bias, &mut o),
                        4 => vnni::tile::<4>(at, st, w, blk, bias, &mut o),
                        3 => vnni::tile::<3>(at, st, w, blk, bias, &mut o),
                        2 => vnni::tile::<2>(at, st, w, blk, bias, &mut o),
                        _ => vnni::tile::<1>(at, st, w, blk, bias, &mut o),
                    }
                }
                r0 += n;
                continue;
            }
            let _ = vnni;
            tile_scalar(at, st, n, w, blk, bias, &mut o);
            r0 += n;
        }
    }
}

/// `x` (M, K) times the packed weight's transpose, plus `bias` (N): (M, N), row-major.
pub fn matmul(x: &[f32], w: &PackedI8, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / w.k * w.n];
    let scratch = &mut Scratch::default();
    matmul_with(
        x,
        w,
        bias,
        Activations::Signed,
        available(),
        scratch,
        &mut out,
    );
    out
}

/// Buffers for the quantised activations, kept between calls by callers that make many
/// (the encoder's attention, head after head): fresh multi-megabyte allocations cost page
/// faults every time.
#[derive(Debug, Default)]
pub struct Scratch {
    q: Vec<u8>,
    scales: Vec<f32>,
}

/// [`matmul`] into `out` (M * N, overwritten), with reusable buffers and a choice of how
/// the activations are quantised.
pub fn matmul_into(
    x: &[f32],
    w: &PackedI8,
    kind: Activations,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    matmul_with(x, w, None, kind, available(), scratch, out)
}

fn matmul_with(
    x: &[f32],
    w: &PackedI8,
    bias: Option<&[f32]>,
    kind: Activations,
    vnni: bool,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let zero_point = kind == Activations::Signed;
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len() % k, 0, "activations are not rows of {k}");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias length");
    }
    let m = x.len() / k;
    assert_eq!(out.len(), m * n, "output size");
    if m == 0 || n == 0 {
        return;
    }
    scratch.q.resize(m * k, 0);
    scratch.scales.resize(m, 0.0);
    let (a, sa) = (&mut scratch.q[..m * k], &mut scratch.scales[..m]);
    quantize_rows(x, k, a, sa, kind, vnni);
    let (a, sa) = (&*a, &*sa);
    let threads = rayon::current_num_threads().max(1);
    if m >= 4 * MR * threads {
        // Many rows (the encoder): each task takes a run of rows across every column block,
        // so its rows stay in cache while the weights stream from L2.
        let per = m.div_ceil(4 * threads).next_multiple_of(MR);
        out.par_chunks_mut(per * n)
            .zip(a.par_chunks(per * k))
            .zip(sa.par_chunks(per))
            .for_each(|((buf, a), sa)| {
                let rows = sa.len();
                let mut o = Out {
                    buf,
                    ldo: n,
                    col0: 0,
                    zero_point,
                };
                run_blocks(a, sa, rows, w, 0..w.blocks(), bias, &mut o, vnni);
            });
    } else {
        // Few rows (decode steps, the output projection): split the columns instead; each
        // task fills an (M, its columns) buffer that is copied into place.
        let blocks = w.blocks();
        let per = blocks.div_ceil(4 * threads).max(1);
        let starts: Vec<usize> = (0..blocks).step_by(per).collect();
        let parts: Vec<(usize, usize, Vec<f32>)> = starts
            .par_iter()
            .map(|&b0| {
                let b1 = (b0 + per).min(blocks);
                let (c0, c1) = (b0 * NB, (b1 * NB).min(n));
                let mut buf = vec![0f32; m * (c1 - c0)];
                let mut o = Out {
                    buf: &mut buf,
                    ldo: c1 - c0,
                    col0: c0,
                    zero_point,
                };
                run_blocks(a, sa, m, w, b0..b1, bias, &mut o, vnni);
                (c0, c1, buf)
            })
            .collect();
        for (c0, c1, buf) in parts {
            let width = c1 - c0;
            for (r, row) in buf.chunks_exact(width).enumerate() {
                out[r * n + c0..r * n + c1].copy_from_slice(row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn naive(x: &[f32], k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|kk| x[r * k + kk] * w[j * k + kk]).sum();
                out[r * n + j] = s + bias.map_or(0.0, |b| b[j]);
            }
        }
        out
    }

    /// Shapes that exercise row tails (M % 8), column tails (N % 32, N < 16) and both the
    /// row-split and column-split schedules.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 64, 32),
        (3, 8, 7),
        (5, 128, 45),
        (13, 384, 1000),
        (200, 96, 70),
        (261, 384, 384),
    ];

    #[test]
    fn int8_product_is_close_to_f32() {
        let mut seed = 7;
        for &(m, k, n) in SHAPES {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| 0.1 * lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let q = PackedI8::quantize(&w, n, k).expect("k % 4 == 0");
            let want = naive(&x, k, &w, n, Some(&b));
            let got = matmul(&x, &q, Some(&b));
            // Each product is off by at most |w| * step_x / 2 + |x| * step_w / 2 (steps:
            // max / 127), with random signs over k terms: twice sqrt(k) of that is a generous
            // bound that a wrong product (errors of order 1) still breaks.
            let (xmax, wmax) = (1.0f32, 0.1f32);
            let tol = (k as f32).sqrt() * (wmax * xmax / 127.0 + xmax * wmax / 127.0);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= tol,
                    "{m}x{k}x{n} [{i}]: {g} vs {e} (tol {tol})"
                );
            }
            let nb = matmul(&x, &q, None);
            for ((g, e), bb) in nb.iter().zip(&got).zip(b.iter().cycle()) {
                assert!((g + bb - e).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn vnni_kernel_equals_the_scalar_arithmetic() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut seed = 11;
        for &(m, k, n) in SHAPES {
            let x: Vec<f32> = (0..m * k).map(|_| 3.0 * lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let q = PackedI8::quantize(&w, n, k).expect("k % 4 == 0");
            let mut fast = vec![0f32; m * n];
            let mut slow = vec![0f32; m * n];
            for kind in [Activations::Signed, Activations::NonNegative] {
                let x: Vec<f32> = match kind {
                    Activations::Signed => x.clone(),
                    Activations::NonNegative => x.iter().map(|v| v.abs()).collect(),
                };
                let s = &mut Scratch::default();
                matmul_with(&x, &q, Some(&b), kind, true, s, &mut fast);
                matmul_with(&x, &q, Some(&b), kind, false, s, &mut slow);
                // Same integers; only the order of the final f32 multiply-add differs.
                for (f, s) in fast.iter().zip(&slow) {
                    assert!((f - s).abs() <= 1e-5 * s.abs().max(1.0), "{f} vs {s}");
                }
            }
        }
    }

    #[test]
    fn zero_rows_and_odd_k_are_handled() {
        let w = vec![0.5f32; 32 * 8];
        let q = PackedI8::quantize(&w, 32, 8).expect("packs");
        assert_eq!(matmul(&[0.0; 16], &q, None), vec![0.0; 64]);
        assert!(PackedI8::quantize(&[0.0; 6], 2, 3).is_none());
        assert!(matmul(&[], &q, None).is_empty());
    }
}

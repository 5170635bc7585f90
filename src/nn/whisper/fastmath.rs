//! Vectorised `exp` for the softmax and `erf` for the GELU of the encoder.
//!
//! Both ran through libm one element at a time: on a 30 s window the encoder's softmax
//! (6 heads x 1500 x 1500 scores per layer) and GELU (1500 x 1536 per layer) took about a
//! sixth of a whole long-form transcription. Here the same functions are branch-free
//! polynomials the compiler vectorises; as in [`super::gemv`], an AVX2+FMA build of the same
//! code is chosen at run time. `exp` is Cephes' `expf` (range reduction by ln 2, degree-5
//! polynomial; relative error about 2e-7); `erf` is Abramowitz & Stegun 7.1.26 (absolute error
//! 1.5e-7, 7e-7 after f32 rounding), well below what f32 activations carry.

use rayon::prelude::*;

const LANES: usize = 8;

/// Cephes `expf`. Inputs are clamped to [-87.3, 88]: below, the result is the smallest
/// normal f32 (the softmax of a masked position is ~1e-38, not 0); above, it would overflow.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `fx * C1` is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.0);
    let fx = (x * LOG2E + 0.5).floor();
    let r = x - fx * C1 - fx * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^fx through the exponent bits; fx is within [-126, 127] after the clamp.
    let pow2 = f32::from_bits((((fx as i32) + 127) as u32) << 23);
    y * pow2
}

/// Abramowitz & Stegun 7.1.26.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// Largest value, in `LANES` independent maxima (a single running max does not vectorise).
#[inline(always)]
fn max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    rest.iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let m = max(row);
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - m);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

fn softmax_rows_generic(rows: &mut [f32], n: usize) {
    for row in rows.chunks_exact_mut(n) {
        softmax_row(row);
    }
}

fn gelu_generic(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// The same arithmetic with AVX2 intrinsics, eight lanes at a time. Written out because the
/// compiler stopped vectorising the generic loops (the saturating `as i32` of `exp` and the
/// lane-array accumulators came out as scalar code, a quarter of the encoder's time).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::exp`] on eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(88.0),
        );
        let fx = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvttps_epi32(fx),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_rows(rows: &mut [f32], n: usize) {
        for row in rows.chunks_exact_mut(n) {
            let (body, tail) = row.split_at_mut(n - n % 8);
            let mut vm = _mm256_set1_ps(f32::NEG_INFINITY);
            for c in body.chunks_exact(8) {
                // SAFETY: `c` holds 8 floats.
                vm = _mm256_max_ps(vm, unsafe { _mm256_loadu_ps(c.as_ptr()) });
            }
            let m = tail
                .iter()
                .fold(hmax(vm), |m, &x| if x > m { x } else { m });
            let vmax = _mm256_set1_ps(m);
            let mut vs = _mm256_setzero_ps();
            for c in body.chunks_exact_mut(8) {
                // SAFETY: `c` holds 8 floats.
                unsafe {
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vmax));
                    _mm256_storeu_ps(c.as_mut_ptr(), e);
                    vs = _mm256_add_ps(vs, e);
                }
            }
            let mut sum = hsum(vs);
            for x in tail.iter_mut() {
                *x = super::exp(*x - m);
                sum += *x;
            }
            let inv = 1.0 / sum;
            let vinv = _mm256_set1_ps(inv);
            for c in body.chunks_exact_mut(8) {
                // SAFETY: `c` holds 8 floats.
                unsafe {
                    _mm256_storeu_ps(
                        c.as_mut_ptr(),
                        _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), vinv),
                    );
                }
            }
            for x in tail.iter_mut() {
                *x *= inv;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu(xs: &mut [f32]) {
        let n8 = xs.len() - xs.len() % 8;
        let (body, tail) = xs.split_at_mut(n8);
        let sign = _mm256_set1_ps(-0.0);
        let one = _mm256_set1_ps(1.0);
        for c in body.chunks_exact_mut(8) {
            // SAFETY: `c` holds 8 floats.
            unsafe {
                let x = _mm256_loadu_ps(c.as_ptr());
                // erf(x / sqrt 2), Abramowitz & Stegun 7.1.26 as in `super::erf`.
                let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
                let a = _mm256_andnot_ps(sign, z);
                let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.327_591_1), a, one));
                let mut p = _mm256_set1_ps(1.061_405_4);
                for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
                    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
                }
                p = _mm256_mul_ps(p, t);
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
                let erf_abs = _mm256_fnmadd_ps(p, e, one);
                let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign, z));
                let g = _mm256_mul_ps(
                    _mm256_mul_ps(_mm256_set1_ps(0.5), x),
                    _mm256_add_ps(one, erf),
                );
                _mm256_storeu_ps(c.as_mut_ptr(), g);
            }
        }
        super::gelu_generic(tail);
    }
}

/// Elements per parallel task: enough work to pay for handing it to another thread.
const PER_TASK: usize = 1 << 16;

/// Softmax over each run of `n` values of `data`, in place, split over rayon's pool.
pub fn softmax_rows(data: &mut [f32], n: usize) {
    assert!(
        n > 0 && data.len().is_multiple_of(n),
        "softmax over rows of {n}"
    );
    let rows_per_task = (PER_TASK / n).max(1);
    data.par_chunks_mut(rows_per_task * n).for_each(|rows| {
        #[cfg(target_arch = "x86_64")]
        if super::gemv::has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { avx2::softmax_rows(rows, n) };
        }
        softmax_rows_generic(rows, n)
    });
}

/// Exact (erf) GELU, in place, split over rayon's pool.
pub fn gelu(data: &mut [f32]) {
    data.par_chunks_mut(PER_TASK).for_each(|xs| {
        #[cfg(target_arch = "x86_64")]
        if super::gemv::has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { avx2::gelu(xs) };
        }
        gelu_generic(xs)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert!(exp(-1e30) > 0.0 && exp(-1e30) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0f64;
        for i in 0..=100_000 {
            let x = -6.0 + 12.0 * i as f64 / 100_000.0;
            worst = worst.max((f64::from(erf(x as f32)) - libm::erf(x)).abs());
        }
        assert!(worst < 1e-6, "worst absolute error {worst}");
    }

    #[test]
    fn softmax_and_gelu_match_the_plain_formulas() {
        let n = 37;
        let mut data: Vec<f32> = (0..n * 9)
            .map(|i| ((i * 7919) % 113) as f32 / 9.0 - 6.0)
            .collect();
        let plain: Vec<f32> = data
            .chunks(n)
            .flat_map(|r| {
                let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = r.iter().map(|x| (x - m).exp()).sum();
                r.iter().map(move |x| (x - m).exp() / s).collect::<Vec<_>>()
            })
            .collect();
        let mut g = data.clone();
        softmax_rows(&mut data, n);
        for (a, b) in data.iter().zip(&plain) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let plain_gelu: Vec<f32> = g
            .iter()
            .map(|&x| (0.5 * f64::from(x) * (1.0 + libm::erf(f64::from(x) / 2f64.sqrt()))) as f32)
            .collect();
        gelu(&mut g);
        for (a, b) in g.iter().zip(&plain_gelu) {
            assert!((a - b).abs() < 2e-6, "{a} vs {b}");
        }
    }
}

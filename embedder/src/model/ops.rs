//! Element-wise and row-wise kernels of the encoder: LayerNorm, erf-GELU and softmax.
//!
//! They are written as plain loops over 8-float chunks that the compiler vectorises, and are
//! compiled twice: once for the baseline CPU and once with AVX2/FMA, picked at run time. The
//! erf and exp approximations are branch-free polynomials (exact libm calls would not vectorise
//! and cost more than the GEMMs around them on short texts); their error is below 5e-7, far
//! inside the 1e-4 cosine budget the reference test checks.

/// Runs `$generic` under AVX2/FMA code generation when the CPU has it.
macro_rules! dispatch {
    ($generic:ident ( $($arg:expr),* )) => {{
        #[cfg(target_arch = "x86_64")]
        {
            /// Runs `f`, inlined, under AVX2/FMA code generation.
            ///
            /// # Safety
            /// The CPU supports AVX2 and FMA.
            #[target_feature(enable = "avx2,fma")]
            unsafe fn simd(f: impl FnOnce()) { f() }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: AVX2 and FMA were just detected, which is `simd`'s only requirement.
                return unsafe { simd(|| $generic($($arg),*)) };
            }
        }
        $generic($($arg),*)
    }};
}

/// LayerNorm over each `width`-float row of `x`, in place.
pub fn layer_norm(x: &mut [f32], width: usize, weight: &[f32], bias: &[f32], eps: f32) {
    dispatch!(layer_norm_generic(x, width, weight, bias, eps))
}

/// GELU with the exact (erf) formulation BERT uses, in place.
pub fn gelu_erf(x: &mut [f32]) {
    dispatch!(gelu_erf_generic(x))
}

/// GELU, tanh approximation (`hidden_act: gelu_new` and friends), in place.
pub fn gelu_tanh(x: &mut [f32]) {
    dispatch!(gelu_tanh_generic(x))
}

/// Softmax over each `width`-float row of `x`, in place.
pub fn softmax_rows(x: &mut [f32], width: usize) {
    dispatch!(softmax_rows_generic(x, width))
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn layer_norm_generic(x: &mut [f32], width: usize, weight: &[f32], bias: &[f32], eps: f32) {
    let (weight, bias) = (&weight[..width], &bias[..width]);
    for row in x.chunks_exact_mut(width) {
        let mean = sum(row) / width as f32;
        let mut acc = [0f32; 8];
        let chunks = row.chunks_exact(8);
        let mut var = chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>();
        for c in chunks {
            for i in 0..8 {
                let d = c[i] - mean;
                acc[i] += d * d;
            }
        }
        var += acc.iter().sum::<f32>();
        let inv = 1.0 / (var / width as f32 + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// erf(x), |error| < 5e-7: a rational approximation on [-4, 4] (erf is ±1 in f32 beyond).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.9546e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_4e-3;
    q = q * x2 + -1.426_473_9e-2;
    x * p / q
}

/// e^x for x <= 88 (larger inputs saturate at e^88), relative error < 3e-7 on normal results:
/// x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, 2^n built in the exponent.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let n_int = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    er * f32::from_bits(((n_int + 127) << 23) as u32)
}

#[inline(always)]
fn gelu_erf_generic(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn gelu_tanh_generic(x: &mut [f32]) {
    // tanh(u) = 1 - 2 / (e^{2u} + 1)
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    for v in x.iter_mut() {
        let u = C * (*v + 0.044_715 * *v * *v * *v);
        let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
        *v = 0.5 * *v * (1.0 + t);
    }
}

#[inline(always)]
fn softmax_rows_generic(x: &mut [f32], width: usize) {
    for row in x.chunks_exact_mut(width) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = 1.0 / sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference erf in f64 (std has none): Taylor series below 3, continued fraction beyond.
    fn erf_f64(x: f64) -> f64 {
        let ax = x.abs();
        let r = if ax < 3.0 {
            let mut term = ax;
            let mut s = ax;
            let mut n = 0.0;
            while term.abs() > 1e-17 * s.abs() {
                n += 1.0;
                term *= -ax * ax / n;
                s += term / (2.0 * n + 1.0);
            }
            s * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(x) = exp(-x^2)/(x sqrt(pi)) * 1/(1+ 1/(2x^2)/(1+2/(2x^2)/(1+...)))
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (ax + f);
            }
            1.0 - (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f)
        };
        r.copysign(x)
    }

    #[test]
    fn erf_is_accurate() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f64 / 10_000.0;
            worst = worst.max((erf(x as f32) as f64 - erf_f64(x)).abs());
        }
        assert!(worst < 5e-7, "max |erf error| {worst}");
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = (i as f64 / 1000.0) as f32;
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            if want > 1e-37 {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 3e-7, "max relative exp error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_ignore_masked() {
        let mut x = vec![
            1.0, 2.0, 3.0, -1e9, 0.0, 0.0, 0.0, 0.0, 1000.0, 1000.0, 0.0, 0.0,
        ];
        softmax_rows(&mut x, 4);
        for row in x.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!(x[3] < 1e-30);
        let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
        let s: f64 = e.iter().sum();
        assert!((x[2] as f64 - e[2] / s).abs() < 1e-6);
        assert!((x[8] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_normalises_rows() {
        let width = 37;
        let mut x: Vec<f32> = (0..3 * width)
            .map(|i| (i as f32 * 0.7).sin() * 5.0 + 2.0)
            .collect();
        let w = vec![2.0; width];
        let b = vec![0.5; width];
        layer_norm(&mut x, width, &w, &b, 1e-12);
        for row in x.chunks(width) {
            let mean = row.iter().map(|v| (v - 0.5) / 2.0).sum::<f32>() / width as f32;
            let var = row
                .iter()
                .map(|v| ((v - 0.5) / 2.0 - mean).powi(2))
                .sum::<f32>()
                / width as f32;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
                "{mean} {var}"
            );
        }
    }

    #[test]
    fn gelu_matches_its_definitions() {
        let xs: Vec<f32> = (-60..=60).map(|i| i as f32 / 10.0).collect();
        let mut g = xs.clone();
        gelu_erf(&mut g);
        for (x, g) in xs.iter().zip(&g) {
            let want = 0.5 * *x as f64 * (1.0 + erf_f64(*x as f64 / 2f64.sqrt()));
            assert!(
                (*g as f64 - want).abs() < 2e-6,
                "gelu({x}) = {g}, want {want}"
            );
        }
        let mut t = xs.clone();
        gelu_tanh(&mut t);
        for (x, t) in xs.iter().zip(&t) {
            let x = *x as f64;
            let want = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!(
                (*t as f64 - want).abs() < 2e-6,
                "gelu_tanh({x}) = {t}, want {want}"
            );
        }
    }
}

//! INT8 GEMM: `C += dequant(A_q · B_q) + bias` with per-output-channel INT8 weights packed at
//! load and per-row INT8 activations quantised on the fly.
//!
//! Why: on this class of CPU (AVX2 without VNNI) `vpmaddubsw` retires 32 int8 multiply-adds
//! where an FMA retires 8 float ones, so an INT8 linear layer can run about twice as fast as the
//! f32 one. candle's q8_0 matmul does not get there (it re-quantises and walks one row at a
//! time: 4x slower than our f32 here), hence this kernel.
//!
//! Scheme: weights symmetric per output column (scale = max|w|/127), activations symmetric per
//! row (scale = max|a|/127), both in [-127, 127]. `vpmaddubsw` wants one unsigned operand, so A
//! is stored as |a| (u8) plus its sign, and the sign is moved onto B with `vpsignb`; a pair sum
//! is then at most 2 * 127 * 127 < 2^15 and never saturates. Products accumulate exactly in i32;
//! results are identical between the AVX2 and the portable kernel.
//!
//! Packed layout: K padded to a multiple of 4; panels of 16 columns; per group of 4 k values a
//! panel holds 64 bytes: two halves of 8 columns, each column's 4 k values contiguous.

use super::gemm::{for_panel_ranges, gemm_panels, F32Kernel, PackedB, SharedOut};

/// Columns per packed panel, as for f32.
const NR: usize = super::gemm::NR;
/// Most rows per AVX2 micro-kernel call (8 i32 accumulators + 7 temporaries = 15 registers).
const MR: usize = 4;
/// Most rows per AVX-VNNI call (12 accumulators + 2 B registers + 1 broadcast = 15 ymm).
const MR_VNNI256: usize = 6;
/// Most rows per AVX512-VNNI call, which covers two panels: 12 x 2 accumulators + 2 B registers
/// of the 32 zmm registers; A is broadcast from memory.
const MR_VNNI512: usize = 12;

/// Which micro-kernel runs the products, chosen once from the CPU's features
/// ([`I8Kernel::best`]). All of them accumulate the same exact i32 dot products, so their
/// results are bit-identical.
///
/// The VNNI kernels use `vpdpbusd` (u8 x s8, four products summed into an i32 lane, no 16-bit
/// intermediate that could saturate): activations q are fed as q + 128 (u8), and 128 x the
/// column sum of the weights (`PackedI8::offset_sums`) is subtracted afterwards. With |w| <=
/// 127, |q| <= 127 and k <= 2^16 nothing overflows i32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I8Kernel {
    /// Plain loops, any CPU.
    Portable,
    /// `vpmaddubsw` + `vpmaddwd`, 4 x 16 tile.
    Avx2,
    /// `vpdpbusd` on ymm (AVX-VNNI), 6 x 16 tile.
    AvxVnni,
    /// `vpdpbusd` on zmm (AVX512-VNNI), 12 x 32 tile.
    Avx512Vnni,
}

impl I8Kernel {
    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Self::Portable => true,
                Self::Avx2 => has!("avx2") && has!("fma"),
                Self::AvxVnni => has!("avx2") && has!("avxvnni"),
                Self::Avx512Vnni => has!("avx512f") && has!("avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }

    /// Every kernel this CPU can run, slowest first.
    pub fn available() -> Vec<Self> {
        [Self::Portable, Self::Avx2, Self::AvxVnni, Self::Avx512Vnni]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    /// The fastest kernel this CPU can run (detected once).
    pub fn best() -> Self {
        static BEST: std::sync::OnceLock<I8Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *Self::available().last().expect("portable is always there"))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2-4x16",
            Self::AvxVnni => "avx-vnni-6x16",
            Self::Avx512Vnni => "avx512-vnni-12x32",
        }
    }

    /// (most rows, panels) of one micro-kernel call.
    fn tile_shape(self) -> (usize, usize) {
        match self {
            Self::Avx512Vnni => (MR_VNNI512, 2),
            Self::AvxVnni => (MR_VNNI256, 1),
            _ => (MR, 1),
        }
    }
}

/// A k x n weight matrix quantised per column and packed for `qgemm`, optionally smoothed.
///
/// BERT's activations carry a few outlier channels that would eat most of a per-row 8-bit range.
/// Two remedies, chosen per model by [`Int8Scheme`]: smoothing (SmoothQuant): activations become
/// x / s per input channel and weight rows w * s, the product is unchanged, and the outliers'
/// range moves into the weights, where per-column scales absorb it; and leaving the outlier
/// channels out of the INT8 product (s = 0 here) for the caller to multiply in f32.
#[derive(Debug, Clone)]
pub struct PackedI8 {
    k: usize,
    /// k rounded up to a multiple of 4.
    kp: usize,
    n: usize,
    data: Vec<i8>,
    /// Per column; zero-padded to whole panels.
    scales: Vec<f32>,
    /// 128 x the sum over k of each column's INT8 weights, zero-padded to whole panels: what
    /// the VNNI kernels subtract after multiplying activations offset by +128 (see `I8Kernel`).
    offset_sums: Vec<i32>,
    /// 1 / s_kk per input channel when smoothed (0 for a channel left out).
    smooth: Option<Vec<f32>>,
}

/// How a layer is quantised from calibration ranges: [`PackedI8::quantize_calibrated`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int8Scheme {
    /// SmoothQuant's migration strength: how much of the activations' range moves into the
    /// weights (0: no smoothing).
    pub smooth_alpha: f32,
    /// How many input channels, those with the largest calibrated range, are left out of the
    /// INT8 product (their weights and activations are zero in it) for the caller to compute in
    /// f32 (outlier decomposition, as LLM.int8()).
    pub outliers: usize,
}

impl Int8Scheme {
    /// MiniLM's LayerNorm outputs carry one channel (99) at 6-30 on the [CLS] row where the other
    /// channels stay under 1-5 (100-600x the row's median |x|): with per-row scales it left
    /// [CLS] four times the rounding error of the other rows, and short texts, whose mean pools
    /// [CLS] and [SEP] with one or two words, lost the most (0.9969 on "thanks", 0.9975 on
    /// "yes"). Smoothing (0.6) only halved that ratio. Simulated on 16 short texts, the
    /// operator's 16 parity texts and the 64 bench texts (worst cosine to f32): smoothing 0.6
    /// alone 0.99692; 1 channel in f32 0.99882; 16 channels, no smoothing, 0.99930; 32: 0.99934;
    /// 16 with smoothing 0.3: 0.99920 (`bert_study.rs`).
    pub const MINILM: Int8Scheme = Int8Scheme {
        smooth_alpha: 0.0,
        outliers: 16,
    };

    /// s = max|x|^alpha / max|w|^(1-alpha), so that after x/s and w*s both sides have comparable
    /// ranges. Channels never seen active (or all-zero weights), and alpha 0, keep s = 1.
    fn smooth_factor(self, act_max: f32, w_max: f32) -> f32 {
        if act_max <= 0.0 || w_max <= 0.0 || self.smooth_alpha == 0.0 {
            return 1.0;
        }
        let alpha = self.smooth_alpha;
        (act_max.powf(alpha) / w_max.powf(1.0 - alpha)).clamp(1e-3, 1e3)
    }
}

/// Rounds half away from zero, as `f32::round`, but through a truncating conversion: on the
/// x86-64 baseline (SSE2, no `roundps`) `f32::round` is a libm call per element, which made
/// quantising the activations, a serial loop, a sixth of an INT8 forward pass. This form
/// vectorises. (It differs from `f32::round` only where `y + 0.5` itself rounds up, within half
/// an ulp below a .5; every kernel and the reference use this same function.)
#[inline]
pub(crate) fn quantize(v: f32, inv_scale: f32) -> i8 {
    let y = v * inv_scale;
    ((y + 0.5f32.copysign(y)) as i32).clamp(-127, 127) as i8
}

impl PackedI8 {
    /// From a PyTorch linear weight `w`: [n, k] row-major (out x in), used as its transpose.
    pub fn quantize_out_in(w: &[f32], n: usize, k: usize) -> Self {
        Self::quantize_smoothed(w, n, k, None)
    }

    /// As `quantize_out_in`, for activations whose largest |value| per input channel is
    /// `act_max` (observed on calibration data): smoothed, and without the `scheme.outliers`
    /// channels of the largest smoothed range, which are returned (ascending) for the caller to
    /// multiply in f32.
    pub fn quantize_calibrated(
        w: &[f32],
        n: usize,
        k: usize,
        act_max: &[f32],
        scheme: Int8Scheme,
    ) -> (Self, Vec<usize>) {
        assert_eq!(
            act_max.len(),
            k,
            "activation ranges are not for {k} channels"
        );
        let mut w_max = vec![0f32; k];
        for row in w.chunks_exact(k) {
            for (m, v) in w_max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let mut scale: Vec<f32> = act_max
            .iter()
            .zip(&w_max)
            .map(|(&a, &w)| scheme.smooth_factor(a, w))
            .collect();
        let mut by_range: Vec<usize> = (0..k).collect();
        // Largest smoothed range first; ties by channel, so the choice is deterministic.
        by_range.sort_by(|&a, &b| {
            (act_max[b] / scale[b])
                .total_cmp(&(act_max[a] / scale[a]))
                .then(a.cmp(&b))
        });
        let mut outliers: Vec<usize> = by_range.into_iter().take(scheme.outliers).collect();
        outliers.sort_unstable();
        for &c in &outliers {
            scale[c] = 0.0;
        }
        let smooth = scale.iter().any(|&s| s != 1.0).then_some(&scale[..]);
        (Self::quantize_smoothed(w, n, k, smooth), outliers)
    }

    /// As `quantize_out_in`, with input channel kk of `w` scaled by `smooth[kk]` and the
    /// activations by its inverse at run time; a factor of 0 leaves the channel out (weights and
    /// activations 0, so it does not count in a row's range either).
    pub fn quantize_smoothed(w: &[f32], n: usize, k: usize, smooth: Option<&[f32]>) -> Self {
        assert_eq!(w.len(), n * k, "weight is not {n} x {k}");
        let scaled: Vec<f32>;
        let w = match smooth {
            Some(scale) => {
                assert_eq!(scale.len(), k, "smoothing is not for {k} channels");
                scaled = w
                    .chunks_exact(k)
                    .flat_map(|row| row.iter().zip(scale).map(|(w, s)| w * s))
                    .collect();
                &scaled[..]
            }
            None => w,
        };
        let kp = k.div_ceil(4) * 4;
        let panels = n.div_ceil(NR);
        let mut scales = vec![0f32; panels * NR];
        let mut offset_sums = vec![0i32; panels * NR];
        let mut data = vec![0i8; panels * kp * NR];
        for (col, row) in w.chunks_exact(k).enumerate() {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            scales[col] = scale;
            let inv = if max > 0.0 { 1.0 / scale } else { 0.0 };
            let (p, within) = (col / NR, col % NR);
            let (half, c) = (within / 8, within % 8);
            for (kk, &v) in row.iter().enumerate() {
                let idx = p * kp * NR + (kk / 4) * 64 + half * 32 + c * 4 + kk % 4;
                data[idx] = quantize(v, inv);
                offset_sums[col] += 128 * data[idx] as i32;
            }
        }
        Self {
            k,
            kp,
            n,
            data,
            scales,
            offset_sums,
            smooth: smooth.map(|s| {
                s.iter()
                    .map(|&s| if s == 0.0 { 0.0 } else { 1.0 / s })
                    .collect()
            }),
        }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// Which forms of the quantised activations a kernel reads: |q| and q (the AVX2 `vpmaddubsw`
/// kernel and the portable one), or q + 128 (the VNNI kernels). Only those are computed.
#[derive(Debug, Clone, Copy)]
struct Forms {
    signed_abs: bool,
    biased: bool,
}

impl Forms {
    #[cfg(test)]
    const ALL: Forms = Forms {
        signed_abs: true,
        biased: true,
    };

    fn of(kernel: I8Kernel) -> Self {
        let vnni = matches!(kernel, I8Kernel::AvxVnni | I8Kernel::Avx512Vnni);
        Forms {
            signed_abs: !vnni,
            biased: vnni,
        }
    }
}

/// Below this many activations the rows are quantised on the calling thread.
const PARALLEL_QUANTIZE: usize = 1 << 15;

/// Rows of activations quantised for `qgemm`: |q| and q (for its sign) and/or q + 128, each row
/// padded to kp; the forms a kernel does not read are empty.
struct QuantizedRows {
    kp: usize,
    abs: Vec<u8>,
    signed: Vec<i8>,
    /// q + 128, for the VNNI kernels.
    biased: Vec<u8>,
    scales: Vec<f32>,
}

/// The rows [r0, r0 + n) of a `QuantizedRows` being filled, one task's share.
struct RowsPart<'a> {
    a: &'a [f32],
    abs: &'a mut [u8],
    signed: &'a mut [i8],
    biased: &'a mut [u8],
    scales: &'a mut [f32],
}

impl RowsPart<'_> {
    fn quantize(self, k: usize, kp: usize, smooth: Option<&[f32]>) {
        let mut smoothed = Vec::new();
        for (i, (row, scale)) in self.a.chunks_exact(k).zip(self.scales).enumerate() {
            let row = match smooth {
                Some(inv) => {
                    smoothed.clear();
                    smoothed.extend(row.iter().zip(inv).map(|(v, f)| v * f));
                    &smoothed[..]
                }
                None => row,
            };
            // max |x| in eight lanes (a plain fold over f32::max does not vectorise).
            let mut lanes = [0f32; 8];
            let mut chunks = row.chunks_exact(8);
            for c in &mut chunks {
                for (l, v) in lanes.iter_mut().zip(c) {
                    *l = l.max(v.abs());
                }
            }
            let max = chunks
                .remainder()
                .iter()
                .chain(&lanes)
                .fold(0f32, |m, v| m.max(v.abs()));
            *scale = max / 127.0;
            let inv = if max > 0.0 { 1.0 / *scale } else { 0.0 };
            let at = i * kp..i * kp + k;
            if !self.signed.is_empty() {
                for (q, &v) in self.signed[at.clone()].iter_mut().zip(row) {
                    *q = quantize(v, inv);
                }
                for (a, &q) in self.abs[at.clone()]
                    .iter_mut()
                    .zip(&self.signed[at.clone()])
                {
                    *a = q.unsigned_abs();
                }
            }
            if !self.biased.is_empty() {
                for (b, &v) in self.biased[at].iter_mut().zip(row) {
                    *b = (i32::from(quantize(v, inv)) + 128) as u8;
                }
            }
        }
    }
}

impl QuantizedRows {
    /// Every form (tests that run all kernels on the same rows).
    #[cfg(test)]
    fn new(a: &[f32], m: usize, k: usize, kp: usize, smooth: Option<&[f32]>) -> Self {
        Self::with_forms(a, m, k, kp, smooth, Forms::ALL)
    }

    /// `smooth`, when given, multiplies activation channel kk before rounding (1 / s_kk). Large
    /// inputs are quantised on rayon's threads, rows split in contiguous parts.
    fn with_forms(
        a: &[f32],
        m: usize,
        k: usize,
        kp: usize,
        smooth: Option<&[f32]>,
        forms: Forms,
    ) -> Self {
        let len = |need: bool| if need { m * kp } else { 0 };
        let mut abs = vec![0u8; len(forms.signed_abs)];
        let mut signed = vec![0i8; len(forms.signed_abs)];
        // Padding columns are q = 0, i.e. 128 here (their weights are 0).
        let mut biased = vec![128u8; len(forms.biased)];
        let mut scales = vec![0f32; m];
        let threads = rayon::current_num_threads();
        let parts = if m * k >= PARALLEL_QUANTIZE && threads > 1 {
            threads.min(m)
        } else {
            1
        };
        let mut tasks = Vec::with_capacity(parts);
        {
            let (mut a, mut abs, mut signed, mut biased, mut scales) = (
                &a[..m * k],
                &mut abs[..],
                &mut signed[..],
                &mut biased[..],
                &mut scales[..],
            );
            for part in 0..parts {
                let rows = (part + 1) * m / parts - part * m / parts;
                let bytes = |v: usize| if v == 0 { 0 } else { rows * kp };
                let (pa, ra) = a.split_at(rows * k);
                let (pabs, rabs) = abs.split_at_mut(bytes(abs.len()));
                let (psig, rsig) = signed.split_at_mut(bytes(signed.len()));
                let (pbia, rbia) = biased.split_at_mut(bytes(biased.len()));
                let (psc, rsc) = scales.split_at_mut(rows);
                tasks.push(RowsPart {
                    a: pa,
                    abs: pabs,
                    signed: psig,
                    biased: pbia,
                    scales: psc,
                });
                (a, abs, signed, biased, scales) = (ra, rabs, rsig, rbia, rsc);
            }
        }
        if tasks.len() > 1 {
            use rayon::prelude::*;
            tasks
                .into_par_iter()
                .for_each(|t| t.quantize(k, kp, smooth));
        } else {
            tasks.into_iter().for_each(|t| t.quantize(k, kp, smooth));
        }
        Self {
            kp,
            abs,
            signed,
            biased,
            scales,
        }
    }
}

/// A pointer to element `at` of `v`, or null when `v` is empty (a form the kernel does not read).
fn form_ptr<T>(v: &[T], at: usize) -> *const T {
    v.get(at..).map_or(std::ptr::null(), <[T]>::as_ptr)
}

/// `c[i*ldc + j] += (a_i · b_j) + bias[j]` for i < m, j < b.n(), with a_i and b_j rounded to
/// 8 bits; `a` is m x b.k() row-major (contiguous), `c` has row stride `ldc`.
pub fn qgemm(a: &[f32], m: usize, b: &PackedI8, bias: &[f32], c: &mut [f32], ldc: usize) {
    qgemm_with(I8Kernel::best(), a, m, b, bias, c, ldc);
}

/// [`qgemm`], then `c[i*ldc + j] += x_i · w_j` in f32 for the channels `b` leaves out (see
/// [`PackedI8::quantize_calibrated`]): `x` holds m rows of `w.k()` of them, contiguous. Each
/// panel's f32 part runs right after its INT8 part, while that part of C is in cache; every
/// element sees the same operations in the same order as `qgemm` followed by `gemm`.
#[allow(clippy::too_many_arguments)]
pub fn qgemm_with_outliers(
    a: &[f32],
    m: usize,
    b: &PackedI8,
    x: &[f32],
    w: &PackedB,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    assert_eq!(
        w.n(),
        b.n,
        "qgemm: outlier weights are not for {} columns",
        b.n
    );
    assert!(x.len() >= m * w.k(), "qgemm: outlier rows too short");
    qgemm_impl(I8Kernel::best(), a, m, b, Some((x, w)), bias, c, ldc);
}

/// [`qgemm`] on a given micro-kernel.
///
/// # Panics
/// If this CPU cannot run `kernel` (see [`I8Kernel::available`]), or on the shape mismatches
/// `qgemm` panics on.
pub fn qgemm_with(
    kernel: I8Kernel,
    a: &[f32],
    m: usize,
    b: &PackedI8,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    qgemm_impl(kernel, a, m, b, None, bias, c, ldc);
}

#[allow(clippy::too_many_arguments)]
fn qgemm_impl(
    kernel: I8Kernel,
    a: &[f32],
    m: usize,
    b: &PackedI8,
    outliers: Option<(&[f32], &PackedB)>,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        kernel.supported(),
        "qgemm: this CPU cannot run the {} kernel",
        kernel.name()
    );
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= m * k, "qgemm: A too short");
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "qgemm: C too short"
    );
    assert!(bias.len() >= n, "qgemm: bias too short");
    let q = QuantizedRows::with_forms(a, m, k, b.kp, b.smooth.as_deref(), Forms::of(kernel));
    let panels = b.panels();
    let out = SharedOut::new(c);
    for_panel_ranges(panels, m * k * n, |p0, p1| {
        // SAFETY: `q` holds m quantised rows of b.kp bytes; the asserts above (and
        // `qgemm_with_outliers`'s) make C hold m rows of n floats at stride ldc, bias n floats
        // and the outlier rows m x w.k() floats for w's n = b.n columns; `for_panel_ranges` hands
        // every call a disjoint panel range, so concurrent calls never write the same element of
        // C; the CPU can run `kernel`.
        unsafe { qgemm_panels(kernel, &q, m, b, outliers, bias, out.ptr(), ldc, p0, p1) }
    });
}

/// One micro-kernel call: rows x `cols` of C against `cols.div_ceil(NR)` adjacent panels.
///
/// Valid tile (what the kernels' contracts call "`t` is a valid tile for `rows` rows"): of `abs`,
/// `signed` and `biased`, those the kernel reads (see [`Forms`]) are readable for `rows` rows of
/// `4 * groups` bytes at stride `lda` (the others may be null);
/// `b` for `cols.div_ceil(NR)` packed panels of `64 * groups` bytes, each `panel_stride` bytes
/// after the previous; `c` readable and writable for `rows` rows of `cols` floats at stride
/// `ldc`, and not accessed by anybody else meanwhile; `row_scales` has >= rows values,
/// `col_scales` and `offset_sums` NR per panel, `bias` >= cols.
struct Tile<'a> {
    groups: usize,
    abs: *const u8,
    signed: *const i8,
    biased: *const u8,
    lda: usize,
    b: *const i8,
    panel_stride: usize,
    offset_sums: &'a [i32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    row_scales: &'a [f32],
    col_scales: &'a [f32],
    bias: &'a [f32],
}

/// C += dequant(A_q · B_q) + bias for the columns of panels [p0, p1) of `b`.
///
/// # Safety
/// - `q` holds m quantised rows, quantised for `b` (`q.kp == b.kp`), in the forms `kernel` reads;
/// - `c` is valid for reads and writes of m rows of `b.n` floats at stride `ldc >= b.n`;
/// - `bias` holds at least `b.n` floats; p0 <= p1 <= number of panels of `b`;
/// - no other thread reads or writes the columns [p0*NR, min(p1*NR, b.n)) of C meanwhile;
/// - `outliers`, when given, is m contiguous rows of `w.k()` floats and `w` has b.n columns.
#[allow(clippy::too_many_arguments)]
unsafe fn qgemm_panels(
    kernel: I8Kernel,
    q: &QuantizedRows,
    m: usize,
    b: &PackedI8,
    outliers: Option<(&[f32], &PackedB)>,
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
    p0: usize,
    p1: usize,
) {
    let (mr, width) = kernel.tile_shape();
    let blocks = m.div_ceil(mr);
    for p in (p0..p1).step_by(width) {
        let col0 = p * NR;
        let panels = width.min(p1 - p);
        let cols = (b.n - col0).min(panels * NR);
        for blk in 0..blocks {
            let (r0, r1) = (blk * m / blocks, (blk + 1) * m / blocks);
            let tile = Tile {
                groups: b.kp / 4,
                abs: form_ptr(&q.abs, r0 * q.kp),
                signed: form_ptr(&q.signed, r0 * q.kp),
                biased: form_ptr(&q.biased, r0 * q.kp),
                lda: q.kp,
                b: b.data[p * b.kp * NR..].as_ptr(),
                panel_stride: b.kp * NR,
                offset_sums: &b.offset_sums[col0..col0 + panels * NR],
                // SAFETY: r0 < m and col0 < b.n: inside C's m rows of ldc floats (contract).
                c: unsafe { c.add(r0 * ldc + col0) },
                ldc,
                cols,
                row_scales: &q.scales[r0..r1],
                col_scales: &b.scales[col0..col0 + panels * NR],
                bias: &bias[col0..col0 + cols],
            };
            let rows = r1 - r0;
            // SAFETY: the tile lies inside the quantised rows, the panels [p, p + panels) and C
            // as `Tile` requires, with 1 <= rows <= the kernel's most rows and cols <= its width
            // (16, or 32 for AVX512-VNNI), and the CPU can run `kernel` (contract above).
            unsafe {
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    I8Kernel::Avx512Vnni => vnni512::dispatch(rows, &tile),
                    #[cfg(target_arch = "x86_64")]
                    I8Kernel::AvxVnni => vnni256::dispatch(rows, &tile),
                    #[cfg(target_arch = "x86_64")]
                    I8Kernel::Avx2 => avx2::dispatch(rows, &tile),
                    _ => portable(rows, &tile),
                }
            }
        }
        if let Some((x, w)) = outliers {
            // SAFETY: x holds m rows of w.k() floats (stride w.k()), C m rows of w.n() = b.n
            // floats at stride ldc; the panels [p, p + panels) are within [p0, p1), the columns
            // no other thread touches (contract above); F32Kernel::best() runs on this CPU.
            unsafe {
                gemm_panels(
                    F32Kernel::best(),
                    x,
                    w.k(),
                    m,
                    w,
                    None,
                    c,
                    ldc,
                    p,
                    p + panels,
                )
            }
        }
    }
}

/// The reference kernel, for CPUs without AVX2.
///
/// # Safety
/// `t` is a valid tile (see [`Tile`]) for `rows` rows, with `cols <= NR`.
unsafe fn portable(rows: usize, t: &Tile<'_>) {
    for r in 0..rows {
        // SAFETY: r < rows, and `t` is a valid tile for `rows` rows.
        let acc = unsafe { portable_dots(t, r) };
        for (j, &acc) in acc.iter().enumerate().take(t.cols) {
            let v = acc as f32 * (t.col_scales[j] * t.row_scales[r]);
            // SAFETY: r < rows and j < cols lie inside the tile's C, which only we access.
            unsafe {
                let cp = t.c.add(r * t.ldc + j);
                *cp = (*cp + t.bias[j]) + v;
            }
        }
    }
}

/// The exact i32 dot products of row `r` of the tile with its 16 panel columns.
///
/// # Safety
/// `t` is a valid tile for more than `r` rows.
unsafe fn portable_dots(t: &Tile<'_>, r: usize) -> [i32; NR] {
    let mut acc = [0i32; NR];
    for g in 0..t.groups {
        for (j, acc) in acc.iter_mut().enumerate() {
            let (half, col) = (j / 8, j % 8);
            for kk in 0..4 {
                // SAFETY: g < groups, kk < 4 and j < 16 stay inside row r of A and the panel.
                let (a, w) = unsafe {
                    (
                        *t.signed.add(r * t.lda + g * 4 + kk) as i32,
                        *t.b.add(g * 64 + half * 32 + col * 4 + kk) as i32,
                    )
                };
                *acc += a * w;
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX2; `t` is a valid tile (see [`Tile`]) for `rows` rows, with
    /// `cols <= NR`; 1 <= rows <= 4.
    pub(super) unsafe fn dispatch(rows: usize, t: &Tile<'_>) {
        // SAFETY: forwarded from this function's contract, R = rows.
        unsafe {
            match rows {
                4 => kernel::<4>(t),
                3 => kernel::<3>(t),
                2 => kernel::<2>(t),
                1 => kernel::<1>(t),
                _ => unreachable!("row block of {rows}"),
            }
        }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; `t` is a valid tile (see [`Tile`]) for `R` rows, with
    /// `cols <= NR`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const R: usize>(t: &Tile<'_>) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..t.groups {
            // SAFETY: g < groups: the panel's 64 bytes of group g and 4 bytes of each of the
            // tile's R rows of A are inside the tile.
            unsafe {
                let bp = t.b.add(g * 64);
                let b0 = _mm256_loadu_si256(bp as *const __m256i);
                let b1 = _mm256_loadu_si256(bp.add(32) as *const __m256i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let at = r * t.lda + g * 4;
                    let a_abs = _mm256_set1_epi32((t.abs.add(at) as *const i32).read_unaligned());
                    let a_sgn =
                        _mm256_set1_epi32((t.signed.add(at) as *const i32).read_unaligned());
                    let p0 = _mm256_maddubs_epi16(a_abs, _mm256_sign_epi8(b0, a_sgn));
                    let p1 = _mm256_maddubs_epi16(a_abs, _mm256_sign_epi8(b1, a_sgn));
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(p0, ones));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(p1, ones));
                }
            }
        }
        // SAFETY: the tile's `row_scales`, `col_scales`, `bias` and C are as long as `Tile`
        // requires, and C is ours alone.
        unsafe { store(t, &acc) }
    }

    /// Dequantises `acc` (R rows of 16 i32 dot products) and adds it, plus the bias, into C.
    ///
    /// # Safety
    /// The CPU supports AVX2; `t` is a valid tile (see [`Tile`]) for `R` rows, with
    /// `cols <= NR`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn store<const R: usize>(t: &Tile<'_>, acc: &[[__m256i; 2]; R]) {
        // SAFETY: `col_scales` has NR = 16 values.
        let (s0, s1) = unsafe {
            (
                _mm256_loadu_ps(t.col_scales.as_ptr()),
                _mm256_loadu_ps(t.col_scales.as_ptr().add(8)),
            )
        };
        for (r, acc) in acc.iter().enumerate() {
            let rs = _mm256_set1_ps(t.row_scales[r]);
            let v0 = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[0]), _mm256_mul_ps(s0, rs));
            let v1 = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[1]), _mm256_mul_ps(s1, rs));
            // SAFETY: r < R rows of `cols` floats of C, and `cols` bias values, are inside the
            // tile; `tmp` holds 16 floats.
            unsafe {
                let cp = t.c.add(r * t.ldc);
                if t.cols == NR {
                    let b0 = _mm256_loadu_ps(t.bias.as_ptr());
                    let b1 = _mm256_loadu_ps(t.bias.as_ptr().add(8));
                    let c0 = _mm256_add_ps(_mm256_loadu_ps(cp), b0);
                    let c1 = _mm256_add_ps(_mm256_loadu_ps(cp.add(8)), b1);
                    _mm256_storeu_ps(cp, _mm256_add_ps(c0, v0));
                    _mm256_storeu_ps(cp.add(8), _mm256_add_ps(c1, v1));
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
                    for (j, v) in tmp.iter().enumerate().take(t.cols) {
                        *cp.add(j) = (*cp.add(j) + t.bias[j]) + v;
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni256 {
    use super::Tile;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX2 and AVX-VNNI; `t` is a valid tile (see [`Tile`]) for `rows`
    /// rows, with `cols <= NR`; 1 <= rows <= 6.
    pub(super) unsafe fn dispatch(rows: usize, t: &Tile<'_>) {
        // SAFETY: forwarded from this function's contract, R = rows.
        unsafe {
            match rows {
                6 => kernel::<6>(t),
                5 => kernel::<5>(t),
                4 => kernel::<4>(t),
                3 => kernel::<3>(t),
                2 => kernel::<2>(t),
                1 => kernel::<1>(t),
                _ => unreachable!("row block of {rows}"),
            }
        }
    }

    /// # Safety
    /// As `dispatch`, for `R` rows.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn kernel<const R: usize>(t: &Tile<'_>) {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..t.groups {
            // SAFETY: g < groups: the panel's 64 bytes of group g and 4 bytes of each of the
            // tile's R rows of A are inside the tile.
            unsafe {
                let bp = t.b.add(g * 64);
                let b0 = _mm256_loadu_si256(bp as *const __m256i);
                let b1 = _mm256_loadu_si256(bp.add(32) as *const __m256i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = (t.biased.add(r * t.lda + g * 4) as *const i32).read_unaligned();
                    let a = _mm256_set1_epi32(a);
                    acc[0] = _mm256_dpbusd_avx_epi32(acc[0], a, b0);
                    acc[1] = _mm256_dpbusd_avx_epi32(acc[1], a, b1);
                }
            }
        }
        // SAFETY: a tile has NR offset sums per panel.
        let (o0, o1) = unsafe {
            (
                _mm256_loadu_si256(t.offset_sums.as_ptr() as *const __m256i),
                _mm256_loadu_si256(t.offset_sums.as_ptr().add(8) as *const __m256i),
            )
        };
        for acc in acc.iter_mut() {
            acc[0] = _mm256_sub_epi32(acc[0], o0);
            acc[1] = _mm256_sub_epi32(acc[1], o1);
        }
        // SAFETY: the CPU supports AVX2; `t` is a valid tile for R rows with cols <= NR.
        unsafe { super::avx2::store(t, &acc) }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni512 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX-512F and AVX512-VNNI; `t` is a valid tile (see [`Tile`]) for `rows`
    /// rows, with `cols <= 2 * NR`; 1 <= rows <= 12.
    pub(super) unsafe fn dispatch(rows: usize, t: &Tile<'_>) {
        // SAFETY: forwarded from this function's contract, R = rows; P = the panels `cols`
        // spans.
        unsafe {
            if t.cols > NR {
                match rows {
                    12 => kernel::<12, 2>(t),
                    11 => kernel::<11, 2>(t),
                    10 => kernel::<10, 2>(t),
                    9 => kernel::<9, 2>(t),
                    8 => kernel::<8, 2>(t),
                    7 => kernel::<7, 2>(t),
                    6 => kernel::<6, 2>(t),
                    5 => kernel::<5, 2>(t),
                    4 => kernel::<4, 2>(t),
                    3 => kernel::<3, 2>(t),
                    2 => kernel::<2, 2>(t),
                    1 => kernel::<1, 2>(t),
                    _ => unreachable!("row block of {rows}"),
                }
            } else {
                match rows {
                    12 => kernel::<12, 1>(t),
                    11 => kernel::<11, 1>(t),
                    10 => kernel::<10, 1>(t),
                    9 => kernel::<9, 1>(t),
                    8 => kernel::<8, 1>(t),
                    7 => kernel::<7, 1>(t),
                    6 => kernel::<6, 1>(t),
                    5 => kernel::<5, 1>(t),
                    4 => kernel::<4, 1>(t),
                    3 => kernel::<3, 1>(t),
                    2 => kernel::<2, 1>(t),
                    1 => kernel::<1, 1>(t),
                    _ => unreachable!("row block of {rows}"),
                }
            }
        }
    }

    /// R x (16 P) block of C: one zmm of 16 i32 lanes (16 columns) per row and panel; a
    /// panel's 64 bytes of one group are exactly 16 columns x 4 k values, `vpdpbusd`'s layout.
    ///
    /// # Safety
    /// As `dispatch`, for `R` rows and `(P - 1) * NR < cols <= P * NR`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn kernel<const R: usize, const P: usize>(t: &Tile<'_>) {
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        for g in 0..t.groups {
            // SAFETY: g < groups: the 64 bytes of group g of each of the P panels, and 4 bytes
            // of each of the tile's R rows of A, are inside the tile.
            unsafe {
                let mut b = [_mm512_setzero_si512(); P];
                for (p, b) in b.iter_mut().enumerate() {
                    *b = _mm512_loadu_si512(t.b.add(p * t.panel_stride + g * 64) as *const _);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = (t.biased.add(r * t.lda + g * 4) as *const i32).read_unaligned();
                    let a = _mm512_set1_epi32(a);
                    for (acc, b) in acc.iter_mut().zip(&b) {
                        *acc = _mm512_dpbusd_epi32(*acc, a, *b);
                    }
                }
            }
        }
        for p in 0..P {
            let cols = (t.cols - p * NR).min(NR);
            let mask: __mmask16 = ((1u32 << cols) - 1) as u16;
            // SAFETY: a tile has NR offset sums and column scales per panel, and `cols` bias
            // values; the mask keeps the bias load inside them.
            let (offset, scales, bias) = unsafe {
                (
                    _mm512_loadu_si512(t.offset_sums.as_ptr().add(p * NR) as *const _),
                    _mm512_loadu_ps(t.col_scales.as_ptr().add(p * NR)),
                    _mm512_maskz_loadu_ps(mask, t.bias.as_ptr().add(p * NR)),
                )
            };
            for (r, acc) in acc.iter().enumerate() {
                // The same operations in the same order as the portable kernel: bit-identical.
                let dots = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[p], offset));
                let rs = _mm512_set1_ps(t.row_scales[r]);
                let v = _mm512_mul_ps(dots, _mm512_mul_ps(scales, rs));
                // SAFETY: the mask keeps loads and stores to the tile's R rows of `cols` floats.
                unsafe {
                    let cp = t.c.add(r * t.ldc + p * NR);
                    let cv = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cp), bias);
                    _mm512_mask_storeu_ps(cp, mask, _mm512_add_ps(cv, v));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::testutil::pseudo_random as seeded;

    /// The exact integer result the kernels must produce, from the same rounding.
    fn reference(a: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let row_q = |row: &[f32]| {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inv = if max > 0.0 { 1.0 / (max / 127.0) } else { 0.0 };
            let q: Vec<i32> = row.iter().map(|&v| quantize(v, inv) as i32).collect();
            (q, max / 127.0)
        };
        let wq: Vec<_> = w.chunks(k).map(row_q).collect();
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            let (aq, sa) = row_q(&a[i * k..(i + 1) * k]);
            for (j, (wq, sw)) in wq.iter().enumerate() {
                let dot: i32 = aq.iter().zip(wq).map(|(x, y)| x * y).sum();
                c[i * n + j] = dot as f32 * (sa * sw);
            }
        }
        c
    }

    #[test]
    fn matches_the_integer_reference_and_the_float_product() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 5, 3),
            (2, 8, 16),
            (3, 13, 17),
            (4, 64, 33),
            (7, 384, 48),
            (14, 384, 1152),
            (33, 1536, 40),
        ] {
            let a = seeded(m * k, 1);
            let w = seeded(n * k, 2);
            let bias = seeded(n, 3);
            let ldc = n + 3;
            let start = seeded(m * ldc, 4);
            let packed = PackedI8::quantize_out_in(&w, n, k);
            let mut c = start.clone();
            qgemm(&a, m, &packed, &bias, &mut c, ldc);
            let want = reference(&a, m, &w, n, k);
            for i in 0..m {
                for j in 0..n {
                    let got = c[i * ldc + j] - start[i * ldc + j] - bias[j];
                    let exact = want[i * n + j];
                    assert!(
                        (got - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                        "({m},{k},{n}) [{i},{j}]: {got} vs {exact}"
                    );
                    // And within 8-bit rounding of the real product.
                    let real: f32 = (0..k).map(|kk| a[i * k + kk] * w[j * k + kk]).sum();
                    assert!((got - real).abs() < 0.02 * (k as f32).sqrt() + 1e-3);
                }
                assert_eq!(
                    c[i * ldc + n..(i + 1) * ldc],
                    start[i * ldc + n..(i + 1) * ldc]
                );
            }
        }
    }

    /// Smoothing leaves the product unchanged up to rounding, and rescues rows whose range is
    /// dominated by one outlier channel.
    #[test]
    fn smoothing_keeps_the_product_and_tames_an_outlier_channel() {
        let (m, k, n) = (8, 64, 32);
        let mut a = seeded(m * k, 8);
        for row in a.chunks_mut(k) {
            row[5] *= 100.0; // an outlier channel, as BERT's LayerNorm outputs have
        }
        let w = seeded(n * k, 9);
        let real: Vec<f32> = (0..m * n)
            .map(|ij| {
                (0..k)
                    .map(|kk| a[ij / n * k + kk] * w[ij % n * k + kk])
                    .sum()
            })
            .collect();
        let err = |packed: &PackedI8, bias: &[f32]| {
            let mut c = vec![0f32; m * n];
            qgemm(&a, m, packed, bias, &mut c, n);
            c.iter()
                .zip(&real)
                .map(|(c, r)| (c - r).abs())
                .fold(0f32, f32::max)
        };
        let mut sm = vec![1f32; k];
        sm[5] = 10.0;
        let zero = vec![0f32; n];
        let plain = err(&PackedI8::quantize_out_in(&w, n, k), &zero);
        let smoothed = err(&PackedI8::quantize_smoothed(&w, n, k, Some(&sm)), &zero);
        assert!(
            smoothed < plain / 2.0,
            "smoothed {smoothed} vs plain {plain}"
        );
    }

    /// The channels of the largest calibrated range are left out: chosen by range, zero in the
    /// INT8 product, and not in a row's range, so a row whose range one outlier channel would
    /// eat keeps its other channels' precision; what is left out is exactly x[:, c] · w[c, :].
    #[test]
    fn outlier_channels_are_left_out_of_the_int8_product() {
        let (m, k, n) = (6, 64, 24);
        let mut a = seeded(m * k, 21);
        for row in a.chunks_mut(k) {
            row[5] *= 300.0;
            row[40] *= 50.0;
        }
        let w = seeded(n * k, 22);
        let mut act_max = vec![1f32; k];
        act_max[5] = 300.0;
        act_max[40] = 50.0;
        act_max[7] = 2.0;
        let scheme = Int8Scheme {
            smooth_alpha: 0.0,
            outliers: 2,
        };
        let (packed, channels) = PackedI8::quantize_calibrated(&w, n, k, &act_max, scheme);
        assert_eq!(channels, vec![5, 40]);
        let zero = vec![0f32; n];
        let mut c = vec![0f32; m * n];
        qgemm(&a, m, &packed, &zero, &mut c, n);
        // The same rows with the outlier channels zeroed, plainly quantised: the same result.
        let mut kept = a.clone();
        for row in kept.chunks_mut(k) {
            row[5] = 0.0;
            row[40] = 0.0;
        }
        let mut w_kept = w.clone();
        for row in w_kept.chunks_mut(k) {
            row[5] = 0.0;
            row[40] = 0.0;
        }
        let mut want = vec![0f32; m * n];
        qgemm(
            &kept,
            m,
            &PackedI8::quantize_out_in(&w_kept, n, k),
            &zero,
            &mut want,
            n,
        );
        assert_eq!(c, want);
        // Adding the left-out channels in f32 gives the product within 8-bit rounding of the
        // other channels, far closer than quantising the outliers with them.
        let real =
            |i: usize, j: usize| -> f32 { (0..k).map(|kk| a[i * k + kk] * w[j * k + kk]).sum() };
        let mut plain = vec![0f32; m * n];
        qgemm(
            &a,
            m,
            &PackedI8::quantize_out_in(&w, n, k),
            &zero,
            &mut plain,
            n,
        );
        let (mut err, mut err_plain) = (0f32, 0f32);
        for i in 0..m {
            for j in 0..n {
                let out: f32 = channels
                    .iter()
                    .map(|&cc| a[i * k + cc] * w[j * k + cc])
                    .sum();
                err = err.max((c[i * n + j] + out - real(i, j)).abs());
                err_plain = err_plain.max((plain[i * n + j] - real(i, j)).abs());
            }
        }
        assert!(
            err < 0.05 && err < err_plain / 20.0,
            "decomposed {err}, plain {err_plain}"
        );
    }

    /// The fused f32 part gives exactly `qgemm` followed by `gemm`, on shapes with row and
    /// column tails, large enough to be split across threads.
    #[test]
    fn fused_outlier_channels_equal_qgemm_then_gemm() {
        use crate::model::gemm::gemm;
        for &(m, k, n, c) in &[(1, 16, 5, 1), (13, 64, 40, 3), (150, 384, 1152, 16)] {
            let a = seeded(m * k, 41);
            let w = seeded(n * k, 42);
            let x = seeded(m * c, 43);
            let wo = PackedB::from_out_in(&seeded(n * c, 44), n, c);
            let bias = seeded(n, 45);
            let packed = PackedI8::quantize_out_in(&w, n, k);
            let ldc = n + 1;
            let start = seeded(m * ldc, 46);
            let mut want = start.clone();
            qgemm(&a, m, &packed, &bias, &mut want, ldc);
            gemm(&x, c, m, &wo, None, &mut want, ldc, true);
            let mut got = start.clone();
            qgemm_with_outliers(&a, m, &packed, &x, &wo, &bias, &mut got, ldc);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "({m},{k},{n},{c})"
            );
        }
    }

    #[test]
    fn zero_rows_and_columns_give_the_bias() {
        let (m, k, n) = (3, 10, 5);
        let a = vec![0f32; m * k];
        let mut w = seeded(n * k, 5);
        w[..k].fill(0.0); // column 0 all zero
        let packed = PackedI8::quantize_out_in(&w, n, k);
        let bias = [1.0, 2.0, 3.0, 4.0, 5.0];
        let mut c = vec![0f32; m * n];
        qgemm(&a, m, &packed, &bias, &mut c, n);
        for row in c.chunks(n) {
            assert_eq!(row, bias);
        }
    }

    #[test]
    fn portable_kernel_agrees_exactly_with_the_simd_one() {
        let (m, k, n) = (4, 100, 16);
        let a = seeded(m * k, 6);
        let w = seeded(n * k, 7);
        let packed = PackedI8::quantize_out_in(&w, n, k);
        let bias = vec![0f32; n];
        let mut fast = vec![0f32; m * n];
        qgemm(&a, m, &packed, &bias, &mut fast, n);
        let q = QuantizedRows::new(&a, m, k, packed.kp, None);
        let mut slow = vec![0f32; m * n];
        let tile = Tile {
            groups: packed.kp / 4,
            abs: q.abs.as_ptr(),
            signed: q.signed.as_ptr(),
            biased: q.biased.as_ptr(),
            lda: q.kp,
            b: packed.data.as_ptr(),
            panel_stride: packed.kp * NR,
            offset_sums: &packed.offset_sums[..NR],
            c: slow.as_mut_ptr(),
            ldc: n,
            cols: n,
            row_scales: &q.scales,
            col_scales: &packed.scales[..NR],
            bias: &bias,
        };
        // SAFETY: the tile covers exactly the buffers above.
        unsafe { portable(m, &tile) };
        assert_eq!(fast, slow);
    }

    /// Every kernel this CPU runs gives the portable kernel's result bit for bit, on shapes
    /// with row tails, partial and odd panel counts, K not a multiple of 4, smoothing, bias and
    /// accumulation into a strided C.
    #[test]
    fn every_kernel_agrees_bit_for_bit_with_the_portable_one() {
        let kernels = I8Kernel::available();
        eprintln!("INT8 kernels on this CPU: {kernels:?}");
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 5),
            (3, 13, 17),
            (5, 64, 48),
            (11, 384, 1152),
            (13, 100, 40),
            (25, 1536, 384),
            (37, 384, 33),
        ] {
            let a = seeded(m * k, 11);
            let w = seeded(n * k, 12);
            let mut smooth: Vec<f32> = seeded(k, 13).iter().map(|v| 1.5 + v).collect();
            // Channels left out (outlier decomposition) too.
            smooth.iter_mut().step_by(5).for_each(|s| *s = 0.0);
            let packed = PackedI8::quantize_smoothed(&w, n, k, Some(&smooth));
            let bias = seeded(n, 14);
            let ldc = n + 3;
            let start = seeded(m * ldc, 15);
            let mut want = start.clone();
            qgemm_with(I8Kernel::Portable, &a, m, &packed, &bias, &mut want, ldc);
            for &kernel in &kernels {
                let mut got = start.clone();
                qgemm_with(kernel, &a, m, &packed, &bias, &mut got, ldc);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{kernel:?} differs from portable at ({m},{k},{n})"
                );
            }
        }
    }

    /// The raw i32 accumulators: with unit scales, no bias and C = 0 every kernel writes the
    /// exact integer dot products (|dot| < 2^24, so f32 holds them exactly), including the
    /// extremes -127 x 127 that would saturate a 16-bit pair sum.
    #[test]
    fn every_kernel_accumulates_the_exact_i32_dot_products() {
        let (m, k, n): (usize, usize, usize) = (12, 1540, 32);
        let kp = k.div_ceil(4) * 4;
        // Weights and activations at the extremes and in between.
        let w: Vec<f32> = (0..n * k)
            .map(|i| [-1.0, 1.0, -0.5, 0.25, -1.0][i % 5] * (1 + i % 3) as f32)
            .collect();
        let a: Vec<f32> = (0..m * k)
            .map(|i| [1.0, -1.0, -1.0, 0.3, 0.0, 1.0, -0.7][i % 7])
            .collect();
        let packed = PackedI8::quantize_out_in(&w, n, k);
        let q = QuantizedRows::new(&a, m, k, kp, None);
        let ones = vec![1f32; m.max(2 * NR)];
        let zero = vec![0f32; n];
        for kernel in I8Kernel::available() {
            let (mr, width) = kernel.tile_shape();
            let rows = mr.min(m);
            let cols = (width * NR).min(n);
            let mut c = vec![0f32; rows * n];
            let tile = Tile {
                groups: kp / 4,
                abs: q.abs.as_ptr(),
                signed: q.signed.as_ptr(),
                biased: q.biased.as_ptr(),
                lda: kp,
                b: packed.data.as_ptr(),
                panel_stride: kp * NR,
                offset_sums: &packed.offset_sums[..width * NR],
                c: c.as_mut_ptr(),
                ldc: n,
                cols,
                row_scales: &ones[..rows],
                col_scales: &ones[..width * NR],
                bias: &zero,
            };
            // SAFETY: the tile covers `rows` rows and `cols` columns of the buffers above,
            // within the kernel's shape; `available` lists only kernels this CPU runs.
            unsafe {
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    I8Kernel::Avx512Vnni => vnni512::dispatch(rows, &tile),
                    #[cfg(target_arch = "x86_64")]
                    I8Kernel::AvxVnni => vnni256::dispatch(rows, &tile),
                    #[cfg(target_arch = "x86_64")]
                    I8Kernel::Avx2 => avx2::dispatch(rows, &tile),
                    _ => portable(rows, &tile),
                }
            }
            for r in 0..rows {
                for j in 0..cols {
                    let exact: i64 = (0..k)
                        .map(|kk| {
                            let wq = packed.data
                                [(j / NR) * kp * NR + (kk / 4) * 64 + (j % NR) * 4 + kk % 4]
                                as i64;
                            q.signed[r * kp + kk] as i64 * wq
                        })
                        .sum();
                    assert_eq!(c[r * n + j], exact as f32, "{kernel:?} [{r},{j}]");
                }
            }
        }
    }
}

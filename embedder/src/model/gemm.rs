//! Single-precision GEMM for inference: `C += A · B (+ bias)`, with B packed once.
//!
//! Why our own: every linear layer multiplies a few dozen token rows by a fixed weight matrix.
//! General-purpose GEMMs (candle's, matrixmultiply, OpenBLAS) repack the weights on every call,
//! which for 10-100 rows costs about as much as the multiplication; measured here they reach
//! 11-18 GFLOP/s per core on MiniLM's shapes against a 40 GFLOP/s FMA peak. Packing the weights
//! at load into 16-column panels leaves only the register-blocked inner loop at run time.
//!
//! Layout of a packed matrix (k x n): panels of `NR` columns, each panel k rows of `NR`
//! contiguous floats, the last panel zero-padded. The AVX2/FMA micro-kernel keeps an
//! up-to-6 x 16 block of C in twelve registers; rows of A are read in place (any row stride),
//! so Q·Kᵀ and P·V in attention use the same kernel on strided views of the QKV matrix.
//! Machines without AVX2/FMA run a portable loop with the same results up to rounding.

/// Columns per packed panel: two 8-float AVX registers, or one 16-float AVX-512 register.
pub const NR: usize = 16;
/// Most rows per AVX2 micro-kernel call (6 x 2 accumulators + 2 B registers + 1 broadcast <= 16).
const MR: usize = 6;
/// Most rows per AVX-512 micro-kernel call, which covers two panels (32 columns): 12 x 2
/// accumulators + 2 B registers of the 32 zmm registers; A is broadcast from memory.
const MR512: usize = 12;

/// Which micro-kernel runs the products: chosen once at run time from the CPU's features
/// ([`F32Kernel::best`]); the others stay callable for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Kernel {
    /// Plain loops, any CPU.
    Portable,
    /// 6 x 16 tile, AVX2 + FMA.
    Avx2,
    /// 12 x 32 tile, AVX-512F.
    Avx512,
}

impl F32Kernel {
    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Portable => true,
                Self::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }

    /// Every kernel this CPU can run, slowest first.
    pub fn available() -> Vec<Self> {
        [Self::Portable, Self::Avx2, Self::Avx512]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    /// The fastest kernel this CPU can run (detected once).
    pub fn best() -> Self {
        static BEST: std::sync::OnceLock<F32Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *Self::available().last().expect("portable is always there"))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2-6x16",
            Self::Avx512 => "avx512-12x32",
        }
    }

    /// (most rows, panels) of one micro-kernel call.
    fn tile_shape(self) -> (usize, usize) {
        match self {
            Self::Avx512 => (MR512, 2),
            _ => (MR, 1),
        }
    }
}
/// Rows processed against every panel before moving on, so that block of A stays in L2 while
/// the panels stream past it.
const MC: usize = 96;
/// Below this many multiply-adds a GEMM runs on the calling thread: splitting costs more.
const PARALLEL_MIN_MACS: usize = 1 << 19;

/// The output matrix C of a GEMM, shared by the tasks that each write a disjoint range of its
/// columns (panels). Those ranges interleave row by row, so C cannot be split into disjoint
/// `&mut` slices; the tasks get this raw pointer instead, and no `&mut` to C is created while
/// they run. It borrows C mutably for `'a`, so the caller cannot touch C meanwhile.
#[derive(Clone, Copy)]
pub(super) struct SharedOut<'a> {
    ptr: *mut f32,
    _c: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> SharedOut<'a> {
    pub(super) fn new(c: &'a mut [f32]) -> Self {
        Self {
            ptr: c.as_mut_ptr(),
            _c: std::marker::PhantomData,
        }
    }

    /// The start of C. (A method, not a field access: a closure capturing `self.ptr` would
    /// capture the bare pointer, which is not `Send`.)
    pub(super) fn ptr(self) -> *mut f32 {
        self.ptr
    }
}

// SAFETY: a `SharedOut` is a pointer into a `&'a mut [f32]` it keeps borrowed, so only the tasks
// holding copies of it can reach C. Sending or sharing it across threads is sound because its
// only users (`gemm_panels`, `qgemm_panels`, through `for_panel_ranges`) are `unsafe fn`s whose
// contract is that concurrent calls write disjoint column ranges of C, and `for_panel_ranges`
// returns only after every task finished: no element is written by two threads, nor read while
// another thread writes it.
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as for `Send`: shared references only hand out copies of the pointer.
unsafe impl Sync for SharedOut<'_> {}

/// A k x n matrix packed into `NR`-column panels.
#[derive(Debug, Clone, Default)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs a matrix given element-wise: `at(row, col)` for row < k, col < n.
    fn pack(k: usize, n: usize, mut data: Vec<f32>, at: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(NR);
        data.clear();
        data.resize(panels * k * NR, 0.0);
        for p in 0..panels {
            let panel = &mut data[p * k * NR..(p + 1) * k * NR];
            let cols = (n - p * NR).min(NR);
            for row in 0..k {
                for j in 0..cols {
                    panel[row * NR + j] = at(row, p * NR + j);
                }
            }
        }
        Self { k, n, data }
    }

    /// From a PyTorch linear weight: `w` is [n, k] row-major (out x in), used as its transpose.
    pub fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not {n} x {k}");
        Self::pack(k, n, Vec::new(), |row, col| w[col * k + row])
    }

    /// From a k x n row-major matrix.
    pub fn from_row_major(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), k * n, "matrix is not {k} x {n}");
        Self::pack(k, n, Vec::new(), |row, col| b[row * n + col])
    }

    /// Repacks `self` (reusing its buffer) from a strided view: element (row, col) is
    /// `src[row * row_stride + col * col_stride]`. Used for Kᵀ and V inside attention.
    pub fn repack_strided(
        &mut self,
        src: &[f32],
        k: usize,
        n: usize,
        row_stride: usize,
        col_stride: usize,
    ) {
        let data = std::mem::take(&mut self.data);
        *self = Self::pack(k, n, data, |row, col| {
            src[row * row_stride + col * col_stride]
        });
    }

    /// The matrix back in PyTorch's [n, k] (out x in) layout.
    pub fn to_out_in(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for col in 0..self.n {
            let panel = self.panel(col / NR);
            for row in 0..self.k {
                w[col * self.k + row] = panel[row * NR + col % NR];
            }
        }
        w
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Rows (the inner dimension of a product).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns.
    pub fn n(&self) -> usize {
        self.n
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

/// `c[i*ldc + j] += sum_kk a[i*lda + kk] * b(kk, j) + bias[j]` for i < m, j < b.n().
///
/// `a` holds m rows of at least b.k() floats at stride `lda`; `c` m rows of b.n() at `ldc`.
/// Large products are split by panels across rayon's threads when `parallel` is set.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
) {
    gemm_with(F32Kernel::best(), a, lda, m, b, bias, c, ldc, parallel);
}

/// [`gemm`] on a given micro-kernel.
///
/// # Panics
/// If this CPU cannot run `kernel` (see [`F32Kernel::available`]), or on the shape mismatches
/// `gemm` panics on.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    kernel: F32Kernel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
) {
    assert!(
        kernel.supported(),
        "gemm: this CPU cannot run the {} kernel",
        kernel.name()
    );
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldc >= n, "gemm: row strides too small");
    assert!(a.len() >= (m - 1) * lda + k, "gemm: A too short");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too short");
    if let Some(bias) = bias {
        assert!(bias.len() >= n, "gemm: bias too short");
    }
    let panels = b.panels();
    let out = SharedOut::new(c);
    let macs = if parallel { m * k * n } else { 0 };
    for_panel_ranges(panels, macs, |p0, p1| {
        // SAFETY: the asserts above make A hold m rows of k floats at stride lda, C m rows of n
        // at stride ldc and bias n floats; `for_panel_ranges` hands every call a disjoint panel
        // range, so concurrent calls never write the same element of C; `kernel` runs here.
        unsafe { gemm_panels(kernel, a, lda, m, b, bias, out.ptr(), ldc, p0, p1) }
    });
}

/// Runs `run(p0, p1)` over `panels` panels: in one call, or, for products of at least
/// `PARALLEL_MIN_MACS` multiply-adds, in contiguous, disjoint ranges on rayon's threads.
/// Returns once every call has returned.
pub(super) fn for_panel_ranges(panels: usize, macs: usize, run: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    if threads > 1 && panels > 1 && macs >= PARALLEL_MIN_MACS {
        let parts = threads.min(panels);
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(|t| {
            run(t * panels / parts, (t + 1) * panels / parts);
        });
    } else {
        run(0, panels);
    }
}

/// Splits `m` rows into blocks of at most `mr`, as even as possible: a 2-row tail would leave
/// the FMA units idle waiting on too few accumulators.
fn row_blocks(m: usize, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let blocks = m.div_ceil(mr);
    (0..blocks).map(move |i| (i * m / blocks, (i + 1) * m / blocks))
}

/// C += A · B (+ bias) for the columns of panels [p0, p1) of `b`.
///
/// # Safety
/// - `a` holds m rows of at least `b.k` floats at stride `lda` (`a.len() >= (m-1)*lda + b.k`);
/// - `c` is valid for reads and writes of m rows of `b.n` floats at stride `ldc >= b.n`;
/// - `bias`, when given, holds at least `b.n` floats;
/// - p0 <= p1 <= number of panels of `b`;
/// - no other thread reads or writes the columns [p0*NR, min(p1*NR, b.n)) of C meanwhile;
/// - the CPU can run `kernel`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_panels(
    kernel: F32Kernel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    p0: usize,
    p1: usize,
) {
    let k = b.k;
    let (mr, width) = kernel.tile_shape();
    for chunk in (0..m).step_by(MC) {
        let rows = (m - chunk).min(MC);
        for p in (p0..p1).step_by(width) {
            let col0 = p * NR;
            let panels = width.min(p1 - p);
            let cols = (b.n - col0).min(panels * NR);
            let bias = bias.map(|bs| &bs[col0..col0 + cols]);
            for (r0, r1) in row_blocks(rows, mr) {
                let row = chunk + r0;
                // Row `row` < m and column col0 < b.n lie inside A and C (contract above).
                let ap = a[row * lda..].as_ptr();
                // SAFETY: row < m and col0 < b.n, so the offset stays inside C's m x ldc rows.
                let cp = unsafe { c.add(row * ldc + col0) };
                let tile = Tile {
                    k,
                    a: ap,
                    lda,
                    b: b.data[p * k * NR..].as_ptr(),
                    panel_stride: k * NR,
                    c: cp,
                    ldc,
                    cols,
                    bias,
                };
                let rows = r1 - r0;
                // SAFETY: the tile lies inside A, the panels [p, p + panels) and C as `Tile`
                // requires, with 1 <= rows <= the kernel's most rows and cols <= its width
                // (16 for the AVX2 and portable kernels, 32 for AVX-512), and the CPU can run
                // `kernel` (contract above).
                unsafe {
                    match kernel {
                        #[cfg(target_arch = "x86_64")]
                        F32Kernel::Avx512 => avx512::dispatch(rows, &tile),
                        #[cfg(target_arch = "x86_64")]
                        F32Kernel::Avx2 => avx2::dispatch(rows, &tile),
                        _ => portable(rows, &tile),
                    }
                }
            }
        }
    }
}

/// One micro-kernel call: rows x `cols` of C against `cols.div_ceil(NR)` adjacent panels.
///
/// Valid tile (what the kernels' contracts call "`t` is a valid tile for `rows` rows"): `a` is
/// readable for `rows` rows of `k` floats at stride `lda`; `b` for `cols.div_ceil(NR)` packed
/// panels of `k` rows of `NR` floats, each starting `panel_stride` floats after the previous;
/// `c` readable and writable for `rows` rows of `cols` floats at stride `ldc`, and not accessed
/// by anybody else meanwhile; `bias`, when given, has >= `cols` floats.
struct Tile<'a> {
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    panel_stride: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    bias: Option<&'a [f32]>,
}

/// The reference kernel, for CPUs without AVX2/FMA.
///
/// # Safety
/// `t` is a valid tile (see [`Tile`]) for `rows` rows, with `cols <= NR`.
unsafe fn portable(rows: usize, t: &Tile<'_>) {
    for r in 0..rows {
        let mut acc = [0f32; NR];
        for kk in 0..t.k {
            // SAFETY: r < rows and kk < k lie inside the tile's A rows and its panel.
            let (av, bp) = unsafe { (*t.a.add(r * t.lda + kk), t.b.add(kk * NR)) };
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: j < NR, inside panel row kk.
                *acc += av * unsafe { *bp.add(j) };
            }
        }
        for (j, acc) in acc.iter().enumerate().take(t.cols) {
            let bias = t.bias.map_or(0.0, |b| b[j]);
            // SAFETY: r < rows and j < cols lie inside the tile's C, which only we access.
            unsafe { *t.c.add(r * t.ldc + j) += acc + bias };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX2 and FMA; `t` is a valid tile (see [`Tile`]) for `rows` rows,
    /// with `cols <= NR`; 1 <= rows <= 6.
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
    /// The CPU supports AVX2 and FMA; `t` is a valid tile (see [`Tile`]) for `R` rows, with
    /// `cols <= NR`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const R: usize>(t: &Tile<'_>) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for kk in 0..t.k {
            // SAFETY: kk < k: panel row kk (NR = 16 floats) and column kk of the tile's R rows
            // of A are inside the tile.
            unsafe {
                let bp = t.b.add(kk * NR);
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*t.a.add(r * t.lda + kk));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
        }
        if t.cols == NR {
            let (bias0, bias1) = match t.bias {
                // SAFETY: a tile's bias has at least cols = 16 floats.
                Some(b) => unsafe {
                    (
                        _mm256_loadu_ps(b.as_ptr()),
                        _mm256_loadu_ps(b.as_ptr().add(8)),
                    )
                },
                None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
            };
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: r < R rows of cols = 16 floats of C are inside the tile.
                unsafe {
                    let cp = t.c.add(r * t.ldc);
                    let c0 = _mm256_add_ps(_mm256_loadu_ps(cp), bias0);
                    let c1 = _mm256_add_ps(_mm256_loadu_ps(cp.add(8)), bias1);
                    _mm256_storeu_ps(cp, _mm256_add_ps(c0, acc[0]));
                    _mm256_storeu_ps(cp.add(8), _mm256_add_ps(c1, acc[1]));
                }
            }
        } else {
            // Last, partial panel: spill and add only the real columns.
            let mut tmp = [0f32; NR];
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: `tmp` holds 16 floats; the tile's C has R rows of `cols` floats.
                unsafe {
                    _mm256_storeu_ps(tmp.as_mut_ptr(), acc[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc[1]);
                    let cp = t.c.add(r * t.ldc);
                    for (j, v) in tmp.iter().enumerate().take(t.cols) {
                        *cp.add(j) += v + t.bias.map_or(0.0, |b| b[j]);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX-512F; `t` is a valid tile (see [`Tile`]) for `rows` rows, with
    /// `cols <= 2 * NR`; 1 <= rows <= 12.
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

    /// R x (16 P) block of C: one zmm accumulator per row and panel, A broadcast from memory.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `t` is a valid tile (see [`Tile`]) for `R` rows, with
    /// `(P - 1) * NR < cols <= P * NR`.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const R: usize, const P: usize>(t: &Tile<'_>) {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for kk in 0..t.k {
            // SAFETY: kk < k: row kk (NR floats) of each of the tile's P panels, and column kk
            // of its R rows of A, are inside the tile.
            unsafe {
                let mut b = [_mm512_setzero_ps(); P];
                for (p, b) in b.iter_mut().enumerate() {
                    *b = _mm512_loadu_ps(t.b.add(p * t.panel_stride + kk * NR));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*t.a.add(r * t.lda + kk));
                    for (acc, b) in acc.iter_mut().zip(&b) {
                        *acc = _mm512_fmadd_ps(av, *b, *acc);
                    }
                }
            }
        }
        for p in 0..P {
            let cols = (t.cols - p * NR).min(NR);
            // All ones for the real columns of this panel.
            let mask: __mmask16 = ((1u32 << cols) - 1) as u16;
            let bias = match t.bias {
                // SAFETY: the mask reads only the tile's `cols` bias values.
                Some(b) => unsafe { _mm512_maskz_loadu_ps(mask, b.as_ptr().add(p * NR)) },
                None => _mm512_setzero_ps(),
            };
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: the mask keeps loads and stores to the tile's R rows of `cols` floats.
                unsafe {
                    let cp = t.c.add(r * t.ldc + p * NR);
                    let cv = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cp), bias);
                    _mm512_mask_storeu_ps(cp, mask, _mm512_add_ps(cv, acc[p]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::testutil::pseudo_random as seeded;

    fn naive(a: &[f32], lda: usize, m: usize, b: &[f32], k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|kk| a[i * lda + kk] as f64 * b[kk * n + j] as f64)
                    .sum::<f64>() as f32;
            }
        }
        c
    }

    fn max_diff(x: &[f32], y: &[f32]) -> f32 {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// Every row-block size, partial panels, strided A and C, bias, accumulation into C, and
    /// the parallel split agree with a float64 reference.
    #[test]
    fn matches_naive_product_for_awkward_shapes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 5),
            (2, 16, 16),
            (5, 3, 17),
            (6, 64, 33),
            (7, 384, 48),
            (13, 100, 200),
            (14, 384, 1152),
            (97, 64, 31),
            (200, 384, 384),
        ] {
            let lda = k + 3;
            let ldc = n + 5;
            let a = seeded(m * lda, 1);
            let bm = seeded(k * n, 2);
            let bias = seeded(n, 3);
            let start = seeded(m * ldc, 4);
            let packed = PackedB::from_row_major(&bm, k, n);
            let want = naive(&a, lda, m, &bm, k, n);
            for parallel in [false, true] {
                let mut c = start.clone();
                gemm(&a, lda, m, &packed, Some(&bias), &mut c, ldc, parallel);
                for i in 0..m {
                    let got = &c[i * ldc..i * ldc + n];
                    let expect: Vec<f32> = (0..n)
                        .map(|j| want[i * n + j] + bias[j] + start[i * ldc + j])
                        .collect();
                    let d = max_diff(got, &expect);
                    assert!(d < 1e-3 * (k as f32).sqrt(), "({m},{k},{n}) row {i}: {d}");
                    // Padding columns between rows are never written.
                    assert_eq!(
                        c[i * ldc + n..(i + 1) * ldc],
                        start[i * ldc + n..(i + 1) * ldc]
                    );
                }
            }
        }
    }

    #[test]
    fn out_in_layout_is_the_transpose() {
        let (n, k) = (20, 9);
        let w = seeded(n * k, 5); // [n, k]
        let mut wt = vec![0f32; k * n];
        for j in 0..n {
            for kk in 0..k {
                wt[kk * n + j] = w[j * k + kk];
            }
        }
        let a = seeded(3 * k, 6);
        let mut c1 = vec![0f32; 3 * n];
        let mut c2 = vec![0f32; 3 * n];
        gemm(
            &a,
            k,
            3,
            &PackedB::from_out_in(&w, n, k),
            None,
            &mut c1,
            n,
            false,
        );
        gemm(
            &a,
            k,
            3,
            &PackedB::from_row_major(&wt, k, n),
            None,
            &mut c2,
            n,
            false,
        );
        assert_eq!(c1, c2);
    }

    #[test]
    fn strided_repack_reads_a_transposed_view() {
        // src is 4 x 10; view (row, col) = src[col * 10 + row + 2] is a 3 x 4 transposed window.
        let src = seeded(40, 7);
        let mut p = PackedB::default();
        p.repack_strided(&src[2..], 3, 4, 1, 10);
        let dense: Vec<f32> = (0..3)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .map(|(r, c)| src[2 + c * 10 + r])
            .collect();
        let a = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let mut c = vec![0f32; 12];
        gemm(&a, 3, 3, &p, None, &mut c, 4, false);
        assert_eq!(c, dense);
    }

    #[test]
    fn portable_kernel_agrees_with_the_simd_one() {
        let (m, k, n) = (6, 50, 16);
        let a = seeded(m * k, 8);
        let bm = seeded(k * n, 9);
        let packed = PackedB::from_row_major(&bm, k, n);
        let mut fast = vec![0f32; m * n];
        gemm(&a, k, m, &packed, None, &mut fast, n, false);
        let mut slow = vec![0f32; m * n];
        let tile = Tile {
            k,
            a: a.as_ptr(),
            lda: k,
            b: packed.panel(0).as_ptr(),
            panel_stride: k * NR,
            c: slow.as_mut_ptr(),
            ldc: n,
            cols: n,
            bias: None,
        };
        // SAFETY: the tile covers exactly the buffers above.
        unsafe { portable(m, &tile) };
        assert!(max_diff(&fast, &slow) < 1e-4);
    }

    /// Every kernel this CPU runs agrees with the portable one (up to float rounding) on row
    /// tails, odd and partial panel counts (the AVX-512 kernel takes two panels at a time),
    /// strided A and C, bias, accumulation into C and the parallel split.
    #[test]
    fn every_kernel_agrees_with_the_portable_one() {
        let kernels = F32Kernel::available();
        eprintln!("f32 kernels on this CPU: {kernels:?}");
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 9, 17),
            (5, 3, 33),
            (11, 384, 1152),
            (12, 32, 48),
            (13, 64, 31),
            (25, 384, 384),
            (97, 40, 80),
        ] {
            let lda = k + 1;
            let ldc = n + 2;
            let a = seeded(m * lda, 21);
            let bm = seeded(k * n, 22);
            let bias = seeded(n, 23);
            let start = seeded(m * ldc, 24);
            let packed = PackedB::from_row_major(&bm, k, n);
            let mut want = start.clone();
            gemm_with(
                F32Kernel::Portable,
                &a,
                lda,
                m,
                &packed,
                Some(&bias),
                &mut want,
                ldc,
                false,
            );
            for &kernel in &kernels {
                for parallel in [false, true] {
                    let mut got = start.clone();
                    gemm_with(
                        kernel,
                        &a,
                        lda,
                        m,
                        &packed,
                        Some(&bias),
                        &mut got,
                        ldc,
                        parallel,
                    );
                    let d = max_diff(&got, &want);
                    assert!(
                        d < 1e-4 * (k as f32).sqrt(),
                        "{kernel:?} ({m},{k},{n}): {d}"
                    );
                    for i in 0..m {
                        assert_eq!(
                            got[i * ldc + n..(i + 1) * ldc],
                            start[i * ldc + n..(i + 1) * ldc],
                            "{kernel:?} wrote past the columns"
                        );
                    }
                }
            }
        }
    }
}

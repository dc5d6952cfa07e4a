//! A linear layer whose weights are either f32 or INT8 (ggml q8_0), behind one `forward`.
//!
//! f32: batches of at least `DIRECT_GEMM_MIN_ROWS` rows call `matrixmultiply::sgemm` on the
//! tensors' memory directly, with the bias added by the GEMM itself (C starts as the bias rows,
//! beta = 1) and the columns split across two threads; it packs the weights on every call, which
//! pays off only when enough rows share the packing. Smaller inputs use candle's matmul, which
//! handles a few rows against a transposed weight without packing it.
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Storage, Tensor};

use super::config::Quantization;

/// From this many rows on, the direct GEMM beats candle's matmul (benches/inference.rs).
const DIRECT_GEMM_MIN_ROWS: usize = 32;

#[derive(Debug)]
enum Weight {
    /// Transposed once at load to [in, out] contiguous: candle's matmul is much faster with a
    /// row-major right-hand side for few rows, and the direct GEMM reads either layout.
    F32(Tensor),
    Q8(QMatMul),
}

#[derive(Debug)]
pub struct Linear {
    weight: Weight,
    bias: Tensor,
    bias_vec: Vec<f32>,
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("linear: tensor is not contiguous");
    };
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(&cpu.as_slice::<f32>()?[start..end])),
        _ => candle_core::bail!("linear: only CPU tensors are supported"),
    }
}

impl Linear {
    /// `weight` is [out, in] as stored by PyTorch, `bias` is [out].
    pub fn new(weight: &Tensor, bias: Tensor, quantization: Quantization) -> Result<Self> {
        let weight = match quantization {
            Quantization::None => Weight::F32(weight.t()?.contiguous()?),
            Quantization::Q8_0 => {
                let q = QTensor::quantize(&weight.contiguous()?, GgmlDType::Q8_0)?;
                Weight::Q8(QMatMul::from_qtensor(q)?)
            }
        };
        let bias_vec = bias.to_vec1::<f32>()?;
        Ok(Self {
            weight,
            bias,
            bias_vec,
        })
    }

    /// `x` is [rows, in]; returns [rows, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Weight::F32(wt) => {
                let (m, k) = x.dims2()?;
                let (wk, n) = wt.dims2()?;
                if k != wk {
                    candle_core::bail!("linear: input has {k} features, weight expects {wk}");
                }
                if m < DIRECT_GEMM_MIN_ROWS {
                    return x.matmul(wt)?.broadcast_add(&self.bias);
                }
                let x = x.contiguous()?;
                let mut c = Vec::with_capacity(m * n);
                for _ in 0..m {
                    c.extend_from_slice(&self.bias_vec);
                }
                with_f32(&x, |a| {
                    with_f32(wt, |wt| sgemm_bias(a, wt, &mut c, m, k, n))
                })??;
                Tensor::from_vec(c, (m, n), &Device::Cpu)
            }
            Weight::Q8(q) => q.forward(x)?.broadcast_add(&self.bias),
        }
    }
}

/// Below this many multiply-adds one thread is faster than splitting the work.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// c (m x n, pre-filled with the bias rows) += a (m x k) * wt (k x n).
/// Large products are split by output columns across two rayon tasks: each half reads all of
/// `a` (small) and half of `wt`, so neither packs the other's weights.
fn sgemm_bias(a: &[f32], w: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    debug_assert!(a.len() == m * k && w.len() == n * k && c.len() == m * n);
    if m * k * n < PARALLEL_MIN_MACS || rayon::current_num_threads() < 2 || n < 64 {
        // SAFETY: the slices hold exactly m x k, n x k and m x n elements.
        unsafe { sgemm_cols(a, w, c.as_mut_ptr(), m, k, n, 0, n) };
        return;
    }
    let half = (n / 2 + 7) & !7;
    let c_addr = c.as_mut_ptr() as usize;
    rayon::join(
        // SAFETY: the two calls write disjoint column ranges [0, half) and [half, n) of c.
        || unsafe { sgemm_cols(a, w, c_addr as *mut f32, m, k, n, 0, half) },
        || unsafe { sgemm_cols(a, w, c_addr as *mut f32, m, k, n, half, n) },
    );
}

/// Computes columns [n0, n1) of c += a * wt.
///
/// # Safety
/// `c` must point to an m x n row-major buffer that no one else writes in columns [n0, n1).
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_cols(
    a: &[f32],
    w: &[f32],
    c: *mut f32,
    m: usize,
    k: usize,
    n: usize,
    n0: usize,
    n1: usize,
) {
    matrixmultiply::sgemm(
        m,
        k,
        n1 - n0,
        1.0,
        a.as_ptr(),
        k as isize,
        1,
        w.as_ptr().add(n0),
        n as isize,
        1,
        1.0,
        c.add(n0),
        n as isize,
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct GEMM (bias fused, split or not) agrees with candle's matmul + broadcast_add.
    #[test]
    fn f32_forward_matches_candle_matmul() {
        for (m, k, n) in [(3, 32, 40), (31, 64, 64), (64, 384, 384), (70, 96, 1000)] {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let want = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let lin = Linear::new(&w, b, Quantization::None).unwrap();
            let got = lin.forward(&x).unwrap();
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-3, "({m},{k},{n}): {diff}");
        }
    }
}

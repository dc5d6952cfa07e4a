//! A linear layer whose weights are either f32 or INT8 (ggml q8_0), behind one `forward`.
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

use super::config::Quantization;

#[derive(Debug)]
enum Weight {
    /// Transposed once at load to [in, out] so the matmul reads it row-major.
    F32(Tensor),
    Q8(QMatMul),
}

#[derive(Debug)]
pub struct Linear {
    weight: Weight,
    bias: Tensor,
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
        Ok(Self { weight, bias })
    }

    /// `x` is [rows, in] (contiguous); returns [rows, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::F32(wt) => x.matmul(wt)?,
            Weight::Q8(q) => q.forward(x)?,
        };
        y.broadcast_add(&self.bias)
    }
}

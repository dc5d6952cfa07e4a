//! A linear layer whose weights are f32 (packed once for `gemm`), INT8 per column (`qgemm`), or
//! ggml q8_0 blocks (candle's `QMatMul`), behind one `forward_add`.
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

use super::config::Quantization;
use super::gemm::{gemm, PackedB};
use super::qgemm::{qgemm, PackedI8};

#[derive(Debug)]
enum Weight {
    F32(PackedB),
    Int8(PackedI8),
    Q8(QMatMul),
}

#[derive(Debug)]
pub struct Linear {
    weight: Weight,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    /// `weight` is [out, in] row-major as stored by PyTorch, `bias` is [out].
    pub fn new(
        weight: &[f32],
        bias: Vec<f32>,
        outputs: usize,
        inputs: usize,
        quantization: Quantization,
    ) -> Result<Self> {
        if weight.len() != outputs * inputs || bias.len() != outputs {
            candle_core::bail!(
                "linear: weight of {} and bias of {} do not make a {outputs} x {inputs} layer",
                weight.len(),
                bias.len()
            );
        }
        let weight = match quantization {
            Quantization::None => Weight::F32(PackedB::from_out_in(weight, outputs, inputs)),
            Quantization::Int8 => Weight::Int8(PackedI8::quantize_out_in(weight, outputs, inputs)),
            Quantization::Q8_0 => {
                let w = Tensor::from_slice(weight, (outputs, inputs), &Device::Cpu)?;
                Weight::Q8(QMatMul::from_qtensor(QTensor::quantize(
                    &w,
                    GgmlDType::Q8_0,
                )?)?)
            }
        };
        Ok(Self {
            weight,
            bias,
            inputs,
            outputs,
        })
    }

    /// The INT8 version of an f32 layer, smoothed for inputs whose largest |value| per channel is
    /// `act_max` (see `PackedI8`); `None` for a layer that is not f32.
    pub fn to_int8(&self, act_max: &[f32]) -> Option<Self> {
        let Weight::F32(w) = &self.weight else {
            return None;
        };
        let q = PackedI8::quantize_calibrated(&w.to_out_in(), self.outputs, self.inputs, act_max);
        Some(Self {
            weight: Weight::Int8(q),
            bias: self.bias.clone(),
            inputs: self.inputs,
            outputs: self.outputs,
        })
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `out += x · Wᵀ + b` for `rows` rows: `x` is [rows, in], `out` [rows, out]. Callers start
    /// `out` at zero, or at the residual the layer's output is added to.
    pub fn forward_add(&self, x: &[f32], rows: usize, out: &mut [f32]) -> Result<()> {
        if x.len() != rows * self.inputs || out.len() != rows * self.outputs {
            candle_core::bail!(
                "linear: {rows} rows need {} inputs and {} outputs, got {} and {}",
                rows * self.inputs,
                rows * self.outputs,
                x.len(),
                out.len()
            );
        }
        match &self.weight {
            Weight::F32(w) => {
                gemm(
                    x,
                    self.inputs,
                    rows,
                    w,
                    Some(&self.bias),
                    out,
                    self.outputs,
                    true,
                );
            }
            Weight::Int8(w) => qgemm(x, rows, w, &self.bias, out, self.outputs),
            Weight::Q8(q) => {
                let x = Tensor::from_slice(x, (rows, self.inputs), &Device::Cpu)?;
                let y = q.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
                for (row_out, row_y) in out
                    .chunks_exact_mut(self.outputs)
                    .zip(y.chunks_exact(self.outputs))
                {
                    for ((o, y), b) in row_out.iter_mut().zip(row_y).zip(&self.bias) {
                        *o += y + b;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both weight kinds compute x · Wᵀ + b plus what `out` held; q8_0 within its rounding,
    /// relative to the largest output (it rounds weights and inputs to 8 bits).
    #[test]
    fn forward_adds_the_affine_map_to_out() {
        for (m, k, n) in [(3, 32, 40), (31, 64, 64), (64, 384, 384)] {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let want = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bs = b.to_vec1::<f32>().unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (q, tol) in [
                (Quantization::None, 1e-3),
                (Quantization::Q8_0, 0.02 * scale),
            ] {
                let lin = Linear::new(&ws, bs.clone(), n, k, q).unwrap();
                let mut out = vec![1.0f32; m * n];
                lin.forward_add(&xs, m, &mut out).unwrap();
                let diff = out
                    .iter()
                    .zip(&want)
                    .map(|(o, w)| (o - 1.0 - w).abs())
                    .fold(0f32, f32::max);
                assert!(diff < tol, "{q:?} ({m},{k},{n}): {diff}");
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors_not_panics() {
        let lin = Linear::new(&[0.0; 6], vec![0.0; 2], 2, 3, Quantization::None).unwrap();
        let mut out = vec![0.0; 2];
        assert!(lin.forward_add(&[0.0; 4], 1, &mut out).is_err());
        assert!(Linear::new(&[0.0; 5], vec![0.0; 2], 2, 3, Quantization::None).is_err());
    }
}

//! A linear layer whose weights are f32 (packed once for `gemm`), INT8 per column (`qgemm`, with
//! a few outlier input channels in f32), or ggml q8_0 blocks (candle's `QMatMul`), behind one
//! `forward_add`.
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

use super::config::Quantization;
use super::gemm::{gemm, PackedB};
use super::qgemm::{qgemm, qgemm_with_outliers, Int8Scheme, PackedI8};

#[derive(Debug)]
enum Weight {
    F32(PackedB),
    Int8(PackedI8, Option<Outliers>),
    Q8(QMatMul),
}

/// The input channels an INT8 layer leaves out of its INT8 product (see
/// [`PackedI8::quantize_calibrated`]), multiplied in f32: `out += x[:, channels] · w`.
#[derive(Debug)]
struct Outliers {
    /// Ascending.
    channels: Vec<usize>,
    /// Their weight rows, channels x outputs.
    w: PackedB,
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
            Quantization::Int8 => {
                Weight::Int8(PackedI8::quantize_out_in(weight, outputs, inputs), None)
            }
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

    /// The INT8 version of an f32 layer for inputs whose largest |value| per channel is
    /// `act_max`, quantised as `scheme` says (see `PackedI8::quantize_calibrated`); `None` for a
    /// layer that is not f32.
    pub fn to_int8(&self, act_max: &[f32], scheme: Int8Scheme) -> Option<Self> {
        let Weight::F32(w) = &self.weight else {
            return None;
        };
        let (k, n) = (self.inputs, self.outputs);
        let w = w.to_out_in();
        let (q, channels) = PackedI8::quantize_calibrated(&w, n, k, act_max, scheme);
        let outliers = (!channels.is_empty()).then(|| {
            let rows: Vec<f32> = w
                .chunks_exact(k)
                .flat_map(|row| channels.iter().map(|&c| row[c]))
                .collect();
            Outliers {
                w: PackedB::from_out_in(&rows, n, channels.len()),
                channels,
            }
        });
        Some(Self {
            weight: Weight::Int8(q, outliers),
            bias: self.bias.clone(),
            inputs: self.inputs,
            outputs: self.outputs,
        })
    }

    /// The f32 weights [out, in] row-major and the bias of an f32 layer (studies of INT8).
    #[cfg(test)]
    pub(crate) fn f32_parts(&self) -> Option<(Vec<f32>, &[f32])> {
        match &self.weight {
            Weight::F32(w) => Some((w.to_out_in(), &self.bias)),
            _ => None,
        }
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
            Weight::Int8(w, None) => qgemm(x, rows, w, &self.bias, out, self.outputs),
            Weight::Int8(w, Some(o)) => {
                // The left-out channels of each row, contiguous: row by row, the same
                // operations whatever the batch, so batching changes nothing here either.
                let c = o.channels.len();
                let mut xo = vec![0f32; rows * c];
                for (dst, src) in xo.chunks_exact_mut(c).zip(x.chunks_exact(self.inputs)) {
                    for (d, &ch) in dst.iter_mut().zip(&o.channels) {
                        *d = src[ch];
                    }
                }
                qgemm_with_outliers(x, rows, w, &xo, &o.w, &self.bias, out, self.outputs);
            }
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

    /// INT8 with outlier decomposition: the channels of the largest calibrated range are
    /// multiplied in f32 beside the INT8 product, so a huge channel costs the others nothing.
    #[test]
    fn int8_layers_multiply_outlier_channels_in_f32() {
        use crate::model::testutil::pseudo_random as seeded;
        let (m, k, n) = (5, 96, 40);
        let mut x = seeded(m * k, 31);
        for row in x.chunks_mut(k) {
            row[17] *= 200.0;
        }
        let w = seeded(n * k, 32);
        let b = seeded(n, 33);
        let mut act_max = vec![1f32; k];
        act_max[17] = 200.0;
        let f = Linear::new(&w, b.clone(), n, k, Quantization::None).unwrap();
        let mut want = vec![0.5f32; m * n];
        f.forward_add(&x, m, &mut want).unwrap();
        let err = |outliers: usize| {
            let scheme = Int8Scheme {
                smooth_alpha: 0.0,
                outliers,
            };
            let q = f.to_int8(&act_max, scheme).unwrap();
            let mut got = vec![0.5f32; m * n];
            q.forward_add(&x, m, &mut got).unwrap();
            // Row by row: each row alone gives the same bits as in the batch.
            for i in 0..m {
                let mut one = vec![0.5f32; n];
                q.forward_add(&x[i * k..(i + 1) * k], 1, &mut one).unwrap();
                assert_eq!(one, got[i * n..(i + 1) * n], "row {i}");
            }
            got.iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max)
        };
        let (plain, decomposed) = (err(0), err(1));
        assert!(
            decomposed < 0.1 && decomposed < plain / 10.0,
            "decomposed {decomposed}, plain {plain}"
        );
    }

    #[test]
    fn mismatched_shapes_are_errors_not_panics() {
        let lin = Linear::new(&[0.0; 6], vec![0.0; 2], 2, 3, Quantization::None).unwrap();
        let mut out = vec![0.0; 2];
        assert!(lin.forward_add(&[0.0; 4], 1, &mut out).is_err());
        assert!(Linear::new(&[0.0; 5], vec![0.0; 2], 2, 3, Quantization::None).is_err());
    }
}

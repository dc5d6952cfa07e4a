//! Turning a sequence's token vectors into one sentence vector: pure functions on slices.
use super::config::Pooling;

/// Pools `tokens` (row-major, `tokens.len() / dim` rows of `dim` floats) into one vector.
pub fn pool(tokens: &[f32], dim: usize, pooling: Pooling) -> Vec<f32> {
    let rows = tokens.len() / dim;
    debug_assert!(rows > 0 && rows * dim == tokens.len());
    match pooling {
        Pooling::Cls => tokens[..dim].to_vec(),
        Pooling::Mean => {
            let mut acc = vec![0f32; dim];
            for row in tokens.chunks_exact(dim) {
                for (a, x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
            let inv = 1.0 / rows as f32;
            acc.iter_mut().for_each(|a| *a *= inv);
            acc
        }
        Pooling::Max => {
            let mut acc = vec![f32::NEG_INFINITY; dim];
            for row in tokens.chunks_exact(dim) {
                for (a, x) in acc.iter_mut().zip(row) {
                    *a = a.max(*x);
                }
            }
            acc
        }
    }
}

/// Scales `v` to unit L2 norm; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        let inv = 1.0 / norm;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: [f32; 6] = [1.0, -2.0, 3.0, 4.0, -5.0, 0.0];

    #[test]
    fn mean_averages_rows() {
        assert_eq!(pool(&TOKENS, 2, Pooling::Mean), vec![-1.0 / 3.0, 2.0 / 3.0]);
    }

    #[test]
    fn cls_takes_first_row() {
        assert_eq!(pool(&TOKENS, 2, Pooling::Cls), vec![1.0, -2.0]);
    }

    #[test]
    fn max_takes_elementwise_max() {
        assert_eq!(pool(&TOKENS, 2, Pooling::Max), vec![3.0, 4.0]);
    }

    #[test]
    fn normalize_gives_unit_norm_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
    }
}

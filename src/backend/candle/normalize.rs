//! LayerNorm's normalisation over the last axis on the CPU, both ways, one row at a time: its
//! mean and variance in f64, then one pass writing the row. Composed of candle ops it took five
//! passes over the tensor forward and thirteen back (ConvNeXt's and the vision transformers'
//! LayerNorms); the statistics in f64 also leave it closer to a float64 LayerNorm than the f32
//! sums were.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::elementwise::{f32_data, f32_pair};
use super::fresh::written_in_chunks;
use crate::backend::StdTerm;
use crate::error::Result;

/// Rows per parallel task: about 16k elements.
const CHUNK_ELEMENTS: usize = 1 << 14;

/// (x - mean) / sqrt(var + eps) along the last axis of a CPU f32 tensor.
pub fn normalize_last(x: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&Normalize { eps })?)
}

/// The input-VJP of [`normalize_last`] at `x` for `grad`: (g - mean(g) - y mean(g y)) / sqrt(var
/// + eps), y the normalised x; without the y term when the deviation is held constant.
pub fn normalize_last_vjp(x: &Tensor, grad: &Tensor, eps: f32, std: StdTerm) -> Result<Tensor> {
    let op = NormalizeVjp { eps, std };
    Ok(x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?)
}

/// Σ term(i) for i in 0..n in eight interleaved f64 partial sums, added up at the end: one chain
/// of dependent additions would wait on each one's latency, and does not vectorise.
#[inline(always)]
fn sum(n: usize, term: impl Fn(usize) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0f64; LANES];
    let whole = n / LANES * LANES;
    for start in (0..whole).step_by(LANES) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += term(start + l);
        }
    }
    lanes.iter().sum::<f64>() + (whole..n).map(term).sum::<f64>()
}

/// A row's mean and 1 / sqrt(var + eps), in f64.
fn statistics(row: &[f32], eps: f32) -> (f64, f64) {
    let n = row.len().max(1) as f64;
    let mean = sum(row.len(), |i| row[i] as f64) / n;
    let variance = sum(row.len(), |i| (row[i] as f64 - mean).powi(2)) / n;
    (mean, 1.0 / (variance + eps as f64).sqrt())
}

/// The width of the last axis, and the elements of as many whole rows as make a task.
fn row_chunks(layout: &Layout) -> (usize, usize) {
    let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
    (width, (CHUNK_ELEMENTS / width).max(1) * width)
}

struct Normalize {
    eps: f32,
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "normalize-last-axis"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let (width, chunk) = row_chunks(layout);
        // SAFETY: the rows of each chunk cover it, and each row's zip writes all its elements.
        let out = unsafe {
            written_in_chunks(x, chunk, |_, x, out| {
                for (row, out) in x.chunks(width).zip(out.chunks_mut(width)) {
                    let (mean, inv_std) = statistics(row, self.eps);
                    for (o, &v) in out.iter_mut().zip(row) {
                        o.write(((v as f64 - mean) * inv_std) as f32);
                    }
                }
            })
        };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

struct NormalizeVjp {
    eps: f32,
    std: StdTerm,
}

impl CustomOp2 for NormalizeVjp {
    fn name(&self) -> &'static str {
        "normalize-last-axis-vjp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = f32_pair((s1, l1), (s2, l2), self.name())?;
        let (width, chunk) = row_chunks(l1);
        let n = width as f64;
        // SAFETY: the rows of each chunk cover it, and each row's zip writes all its elements.
        let out = unsafe {
            written_in_chunks(x, chunk, |i, x, out| {
                let g = &g[i * chunk..][..x.len()];
                for ((row, grads), out) in x.chunks(width).zip(g.chunks(width)).zip(out.chunks_mut(width)) {
                    let (mean, inv_std) = statistics(row, self.eps);
                    let y = |v: f32| (v as f64 - mean) * inv_std;
                    let grad_mean = sum(width, |i| grads[i] as f64) / n;
                    let along = match self.std {
                        StdTerm::Differentiated => sum(width, |i| y(row[i]) * grads[i] as f64) / n,
                        StdTerm::Constant => 0.0,
                    };
                    for (o, (&v, &d)) in out.iter_mut().zip(row.iter().zip(grads)) {
                        o.write(((d as f64 - grad_mean - y(v) * along) * inv_std) as f32);
                    }
                }
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

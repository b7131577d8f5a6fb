//! LayerNorm's normalisation on the CPU, both ways: each normalised line's mean and variance
//! in f64, then one pass writing it. Composed of candle ops it took five passes over the tensor
//! forward and thirteen back (ConvNeXt's and the vision transformers' LayerNorms); the
//! statistics in f64 also leave it closer to a float64 LayerNorm than the f32 sums were.
//!
//! Over the last axis a line is a row, and the rows are shared between tasks. Over another
//! axis (ConvNeXt's channels-first LayerNorm2d: [N, C, H, W] normalised over C), the lines
//! run across rows, so the statistics of a run of neighbouring positions are summed together,
//! row after row (the sums vectorise along the positions), and the output is written in a
//! second pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::{f32_data, f32_pair};
use super::fresh::{rows_per_task, written_in_chunks};
use crate::backend::StdTerm;
use crate::error::Result;

/// (x - mean) / sqrt(var + eps) along `axis` of a CPU f32 tensor.
pub fn normalize(x: &Tensor, axis: usize, eps: f32) -> Result<Tensor> {
    let lines = Lines::of(x.dims(), axis);
    Ok(x.contiguous()?.apply_op1_no_bwd(&Normalize { lines, eps })?)
}

/// The input-VJP of [`normalize`] at `x` for `grad`: (g - mean(g) - y mean(g y)) / sqrt(var +
/// eps), y the normalised x; without the y term when the deviation is held constant.
pub fn normalize_vjp(x: &Tensor, grad: &Tensor, axis: usize, eps: f32, std: StdTerm) -> Result<Tensor> {
    let op = NormalizeVjp {
        lines: Lines::of(x.dims(), axis),
        eps,
        std,
    };
    Ok(x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?)
}

/// A tensor seen as [outer, length, inner], normalised along its middle axis: `inner`
/// interleaved lines of `length` elements in each of `outer` blocks.
#[derive(Clone, Copy)]
struct Lines {
    length: usize,
    inner: usize,
}

impl Lines {
    fn of(dims: &[usize], axis: usize) -> Self {
        Lines {
            length: dims.get(axis).copied().unwrap_or(1).max(1),
            inner: dims.iter().skip(axis + 1).product::<usize>().max(1),
        }
    }
}

/// Neighbouring positions whose lines are summed together: a run of `inner`.
const RUN: usize = 256;

/// One line's statistics: mean and 1 / sqrt(var + eps) of x, and for the VJP mean(g) and
/// mean(g y).
#[derive(Clone, Copy, Default)]
struct LineStatistics {
    mean: f64,
    inv_std: f64,
    grad_mean: f64,
    along: f64,
}

/// The statistics of every line across rows (`lines.inner` > 1), in position order
/// (outer-major), each run of positions summed row by row; with `grad`, its two means too.
fn statistics_across(x: &[f32], grad: Option<(&[f32], StdTerm)>, lines: Lines, eps: f32) -> Vec<LineStatistics> {
    let Lines { length, inner } = lines;
    let n = length as f64;
    let mut stats = vec![LineStatistics::default(); x.len() / length];
    stats.par_chunks_mut(RUN).enumerate().for_each(|(task, stats)| {
        let mut sums = [0f64; RUN];
        let mut first = task * RUN;
        // A run stops at the end of an outer block: its lines are contiguous there.
        for stats in split_at_blocks(stats, first, inner) {
            let run = stats.len();
            let rows = |data| run_rows(data, lines, first, run);
            let sums = &mut sums[..run];
            sums.fill(0.0);
            rows(x).for_each(|row| sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64));
            stats.iter_mut().zip(sums.iter()).for_each(|(st, s)| st.mean = s / n);
            sums.fill(0.0);
            rows(x).for_each(|row| {
                sums.iter_mut()
                    .zip(row)
                    .zip(stats.iter())
                    .for_each(|((s, &v), st)| *s += (v as f64 - st.mean).powi(2))
            });
            stats
                .iter_mut()
                .zip(sums.iter())
                .for_each(|(st, s)| st.inv_std = 1.0 / (s / n + eps as f64).sqrt());
            if let Some((grad, std)) = grad {
                sums.fill(0.0);
                rows(grad).for_each(|row| sums.iter_mut().zip(row).for_each(|(s, &g)| *s += g as f64));
                stats
                    .iter_mut()
                    .zip(sums.iter())
                    .for_each(|(st, s)| st.grad_mean = s / n);
                if std == StdTerm::Differentiated {
                    sums.fill(0.0);
                    for (xs, gs) in rows(x).zip(rows(grad)) {
                        for (((s, &v), &g), st) in sums.iter_mut().zip(xs).zip(gs).zip(stats.iter()) {
                            *s += (v as f64 - st.mean) * st.inv_std * g as f64;
                        }
                    }
                    stats.iter_mut().zip(sums.iter()).for_each(|(st, s)| st.along = s / n);
                }
            }
            first += run;
        }
    });
    stats
}

/// The `length` rows of the run of `run` positions from `first` (within one outer block).
fn run_rows(data: &[f32], lines: Lines, first: usize, run: usize) -> impl Iterator<Item = &[f32]> {
    let Lines { length, inner } = lines;
    let block = &data[first / inner * length * inner..][..length * inner];
    (0..length).map(move |row| &block[row * inner + first % inner..][..run])
}

/// `stats` (positions `first`..) cut where an outer block of `inner` positions ends.
fn split_at_blocks(mut stats: &mut [LineStatistics], first: usize, inner: usize) -> Vec<&mut [LineStatistics]> {
    let mut parts = Vec::new();
    let mut position = first % inner;
    while !stats.is_empty() {
        let len = (inner - position).min(stats.len());
        let (part, rest) = std::mem::take(&mut stats).split_at_mut(len);
        parts.push(part);
        stats = rest;
        position = 0;
    }
    parts
}

/// `value(index, element, its line's statistics)` for every element of a tensor normalised
/// across rows.
fn write_across(
    x: &[f32],
    lines: Lines,
    stats: &[LineStatistics],
    value: impl Fn(usize, f32, &LineStatistics) -> f32 + Sync,
) -> Vec<f32> {
    let Lines { length, inner } = lines;
    let rows = rows_per_task(inner);
    // SAFETY: each task's rows cover its chunk, and each row's zip writes all its elements.
    unsafe {
        written_in_chunks(x, rows * inner, |task, x, out| {
            for (r, (row, out)) in x.chunks(inner).zip(out.chunks_mut(inner)).enumerate() {
                let index = (task * rows + r) * inner;
                let block_stats = &stats[index / (length * inner) * inner..][..inner];
                for (p, ((o, &v), st)) in out.iter_mut().zip(row).zip(block_stats).enumerate() {
                    o.write(value(index + p, v, st));
                }
            }
        })
    }
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

struct Normalize {
    lines: Lines,
    eps: f32,
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "normalize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let Lines { length: width, inner } = self.lines;
        if inner > 1 {
            let stats = statistics_across(x, None, self.lines, self.eps);
            let out = write_across(x, self.lines, &stats, |_, v, st| {
                ((v as f64 - st.mean) * st.inv_std) as f32
            });
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        // SAFETY: the rows of each chunk cover it, and each row's zip writes all its elements.
        let out = unsafe {
            written_in_chunks(x, rows_per_task(width) * width, |_, x, out| {
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
    lines: Lines,
    eps: f32,
    std: StdTerm,
}

impl CustomOp2 for NormalizeVjp {
    fn name(&self) -> &'static str {
        "normalize-vjp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = f32_pair((s1, l1), (s2, l2), self.name())?;
        let Lines { length: width, inner } = self.lines;
        if inner > 1 {
            let stats = statistics_across(x, Some((g, self.std)), self.lines, self.eps);
            let out = write_across(x, self.lines, &stats, |i, v, st| {
                let y = (v as f64 - st.mean) * st.inv_std;
                ((g[i] as f64 - st.grad_mean - y * st.along) * st.inv_std) as f32
            });
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        let chunk = rows_per_task(width) * width;
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::backend::StdTerm;

    /// x normalised along `axis` and its VJP for `grad`, in f64 loops.
    fn reference(x: &[f32], grad: &[f32], dims: &[usize], axis: usize, eps: f64, std: StdTerm) -> (Vec<f64>, Vec<f64>) {
        let (length, inner) = (dims[axis], dims[axis + 1..].iter().product::<usize>());
        let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        for outer in 0..x.len() / (length * inner) {
            for p in 0..inner {
                let at = |c: usize| (outer * length + c) * inner + p;
                let n = length as f64;
                let mean = (0..length).map(|c| x[at(c)] as f64).sum::<f64>() / n;
                let var = (0..length).map(|c| (x[at(c)] as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv_std = 1.0 / (var + eps).sqrt();
                let grad_mean = (0..length).map(|c| grad[at(c)] as f64).sum::<f64>() / n;
                let normalised = |c: usize| (x[at(c)] as f64 - mean) * inv_std;
                let along = match std {
                    StdTerm::Differentiated => (0..length).map(|c| normalised(c) * grad[at(c)] as f64).sum::<f64>() / n,
                    StdTerm::Constant => 0.0,
                };
                for c in 0..length {
                    y[at(c)] = normalised(c);
                    dx[at(c)] = (grad[at(c)] as f64 - grad_mean - normalised(c) * along) * inv_std;
                }
            }
        }
        (y, dx)
    }

    /// Along the last axis and across rows (runs cut by outer blocks and by tasks), both
    /// ways: within 2 f32 ulp of the largest value of a float64 computation.
    #[test]
    fn matches_float64_along_any_axis() -> crate::error::Result<()> {
        let cases: [(&[usize], usize); 4] = [
            (&[3, 37, 5, 7], 1),
            (&[2, 24, 20, 30], 1),
            (&[4, 6, 96], 2),
            (&[2, 5, 300], 1),
        ];
        for (dims, axis) in cases {
            let n: usize = dims.iter().product();
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1013) as f32 * 0.01 - 5.0) * (1.0 + (i % 3) as f32))
                .collect();
            let grad: Vec<f32> = (0..n).map(|i| (i * 104_729 % 997) as f32 * 0.002 - 1.0).collect();
            let tensor = |v: &[f32]| Tensor::from_slice(v, dims, &Device::Cpu);
            for std in [StdTerm::Differentiated, StdTerm::Constant] {
                let (y, dx) = reference(&x, &grad, dims, axis, 1e-6, std);
                let ours_y = super::normalize(&tensor(&x)?, axis, 1e-6)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let ours_dx = super::normalize_vjp(&tensor(&x)?, &tensor(&grad)?, axis, 1e-6, std)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                for (ours, exact) in [(ours_y, y), (ours_dx, dx)] {
                    let scale = exact.iter().fold(0f64, |m, v| m.max(v.abs()));
                    let worst = ours
                        .iter()
                        .zip(&exact)
                        .map(|(&o, e)| (o as f64 - e).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        worst <= 2.0 * f32::EPSILON as f64 * scale,
                        "{dims:?} axis {axis} {std:?}: {worst:e} of {scale:e}"
                    );
                }
            }
        }
        Ok(())
    }
}

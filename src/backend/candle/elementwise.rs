//! Single-pass CPU kernels for the element-wise work between convolutions: BatchNorm's
//! per-channel affine map, every [`Map`] and [`Zip`] (the activations and their derivatives,
//! LRP's stabiliser, masks and sign splits, the arithmetic). Composed from candle ops these
//! take two to five passes over the tensor, with broadcast indexing, and on MobileNetV2 they
//! cost more than the convolutions. Other devices keep the candle ops (`composed.rs`).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::activation_pass::{self, Pass};
use super::fresh::{rows_per_task, written_in_chunks, TASK_ELEMENTS};
use crate::backend::{Activation, Map, Zip};
use crate::error::Result;

/// The f32 elements of two CPU tensors of one shape, for the kernels that zip them.
pub(super) fn f32_pair<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    op: &str,
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("{op}: shapes {:?} and {:?}", l1.shape(), l2.shape());
    }
    Ok((f32_data(s1, l1, op)?, f32_data(s2, l2, op)?))
}

/// The f32 elements a contiguous CPU tensor's layout covers, for the CPU kernels.
pub(super) fn f32_data<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match storage {
        CpuStorage::F32(data) => Ok(&data[layout.start_offset()..][..layout.shape().elem_count()]),
        _ => candle_core::bail!("{op} supports f32 only"),
    }
}

/// Whether the CPU kernels apply.
pub fn on_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// y[n, c, ...] = x[n, c, ...] * scale[c] + shift[c] for [N, C, ...] inputs on CPU, then
/// `activation` in the same pass (a BatchNorm and its ReLU: one pass over memory, not two).
pub fn channel_affine_activation(
    x: &Tensor,
    scale: &[f32],
    shift: &[f32],
    activation: Option<Activation>,
) -> Result<Tensor> {
    let op = ChannelAffine {
        scale: scale.to_vec(),
        shift: shift.to_vec(),
        activation,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&op)?)
}

/// The VJP of [`channel_affine_activation`] with a ReLU or ReLU6 (no other) from its output `y`: `grad`
/// where the activation passes it (its derivative read from y: 0 < y < 6 exactly where
/// 0 < x < 6), times scale[c], in one pass; the values the two layers' VJPs give in turn.
pub fn activation_channel_scale_vjp(
    y: &Tensor,
    grad: &Tensor,
    scale: &[f32],
    activation: Activation,
) -> Result<Tensor> {
    let op = ActivationChannelScaleVjp {
        scale: scale.to_vec(),
        activation,
    };
    Ok(y.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?)
}

/// The plane size of an [N, C, ...] layout with `c` channels.
fn channel_planes(layout: &Layout, c: usize, op: &str) -> candle_core::Result<usize> {
    let dims = layout.shape().dims();
    if dims.len() < 2 || dims[1] != c {
        candle_core::bail!("{op}: {c} channels for a tensor of shape {dims:?}");
    }
    Ok(dims[2..].iter().product())
}

/// Runs `each(i, x's plane i, the output's plane i)` over x's [plane]-long planes, as many to a
/// parallel chunk as fill a task ([`rows_per_task`]): one plane a chunk made a task of every
/// element where the planes are short.
///
/// # Safety
/// `each` must write every element of the output plane it is given.
unsafe fn by_planes(x: &[f32], plane: usize, each: impl Fn(usize, &[f32], &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let plane = plane.max(1);
    let per_chunk = rows_per_task(plane);
    written_in_chunks(x, per_chunk * plane, |i, src, dst| {
        for (j, (x, out)) in src.chunks(plane).zip(dst.chunks_mut(plane)).enumerate() {
            each(i * per_chunk + j, x, out);
        }
    })
}

/// `f(x * scale[c] + shift[c])` for each element of x's [plane]-long channel planes.
fn affine_planes(x: &[f32], plane: usize, (scale, shift): (&[f32], &[f32]), f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let c = scale.len();
    if plane == 1 {
        // [rows, C] (a LayerNorm over the last axis): each row zipped with the scales and shifts.
        // SAFETY: the output chunk is as long as x's and a whole number of rows; the zip
        // writes each of its elements.
        return unsafe {
            written_in_chunks(x, rows_per_task(c) * c, |_, src, dst| {
                for (x, out) in src.chunks(c).zip(dst.chunks_mut(c)) {
                    for (o, ((&v, &a), &b)) in out.iter_mut().zip(x.iter().zip(scale).zip(shift)) {
                        o.write(f(v * a + b));
                    }
                }
            })
        };
    }
    // SAFETY: the zip writes each element of the output plane.
    unsafe {
        by_planes(x, plane, |i, x, out| {
            let (a, b) = (scale[i % c], shift[i % c]);
            for (o, &v) in out.iter_mut().zip(x) {
                o.write(f(v * a + b));
            }
        })
    }
}

/// `vjp(y, g) * scale[c] + 0.0` for each element of the [plane]-long channel planes: the zero
/// shift turns -0 into +0, as the affine map it stands for does.
fn scaled_vjp_planes(
    (y, g): (&[f32], &[f32]),
    plane: usize,
    scale: &[f32],
    vjp: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    let c = scale.len();
    // SAFETY: the zip writes each element of the output plane.
    unsafe {
        by_planes(y, plane, |i, ys, out| {
            let (a, gs) = (scale[i % c], &g[i * plane..][..ys.len()]);
            for (o, (&v, &d)) in out.iter_mut().zip(ys.iter().zip(gs)) {
                o.write(vjp(v, d) * a + 0.0);
            }
        })
    }
}

struct ChannelAffine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    activation: Option<Activation>,
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // Only the layout's elements: a narrowed tensor's storage starts before them.
        let x = f32_data(storage, layout, "channel-affine")?;
        let c = self.scale.len();
        let plane = channel_planes(layout, c, "channel-affine")?;
        let (scale, shift) = (&self.scale[..], &self.shift[..]);
        // One loop per activation, each of which vectorises; the expressions are the affine
        // map's and the activation maps' own, so the values are theirs bit for bit.
        let out = match self.activation {
            None => affine_planes(x, plane, (scale, shift), |v| v),
            Some(Activation::Relu) => affine_planes(x, plane, (scale, shift), |v| v.max(0.0)),
            Some(Activation::Relu6) => affine_planes(x, plane, (scale, shift), |v| v.clamp(0.0, 6.0)),
            // SAFETY: each plane's pass writes its whole output plane.
            Some(other) => unsafe {
                by_planes(x, plane, |i, x, out| {
                    let (scale, shift) = (scale[i % c], shift[i % c]);
                    activation_pass::run(other, Pass::AffineValue { x, scale, shift }, out)
                })
            },
        };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

struct ActivationChannelScaleVjp {
    scale: Vec<f32>,
    activation: Activation,
}

impl CustomOp2 for ActivationChannelScaleVjp {
    fn name(&self) -> &'static str {
        "activation-channel-scale-vjp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "activation-channel-scale-vjp";
        let (y, g) = f32_pair((s1, l1), (s2, l2), op)?;
        let c = self.scale.len();
        let plane = channel_planes(l1, c, op)?;
        let scale = &self.scale[..];
        // As Zip::ActivationVjp then channel_affine(scale, None) compute it.
        let out = match self.activation {
            Activation::Relu => scaled_vjp_planes((y, g), plane, scale, |v, d| if v > 0.0 { d } else { 0.0 }),
            Activation::Relu6 => {
                scaled_vjp_planes((y, g), plane, scale, |v, d| if v > 0.0 && v < 6.0 { d } else { 0.0 })
            }
            other => candle_core::bail!("{op}: {other:?}'s derivative cannot be read from its output"),
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `op` in one pass: our loops for the maps candle composes of several passes (`Stabilize`'s
/// sign, the masks' comparisons and casts, `Clamp`'s maximum then minimum) and for the
/// activations; the same values candle's ops give, bit for bit.
pub fn map(x: &Tensor, op: Map) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&MapOp(op))?)
}

/// `op` of two tensors of one shape in one pass (activation derivatives included).
pub fn zip(x: &Tensor, rhs: &Tensor, op: Zip) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2_no_bwd(&rhs.contiguous()?, &ZipOp(op))?)
}

/// f(x) element by element, in parallel chunks.
fn map_each(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    // SAFETY: the output chunk is as long as x's, and the zip writes each of its elements.
    unsafe {
        written_in_chunks(x, TASK_ELEMENTS, |_, src, dst| {
            dst.iter_mut().zip(src).for_each(|(o, &v)| {
                o.write(f(v));
            })
        })
    }
}

/// f(x, g) element by element, in parallel chunks.
fn zip_each(x: &[f32], g: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    // SAFETY: the output chunk is as long as x's and g's, and the zip writes each element.
    unsafe {
        written_in_chunks(x, TASK_ELEMENTS, |i, xs, dst| {
            let gs = &g[i * TASK_ELEMENTS..][..xs.len()];
            dst.iter_mut().zip(xs.iter().zip(gs)).for_each(|(o, (&v, &d))| {
                o.write(f(v, d));
            })
        })
    }
}

struct MapOp(Map);

impl CustomOp1 for MapOp {
    fn name(&self) -> &'static str {
        "pointwise-map"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, "element-wise maps")?;
        // Each map gets a loop of its own, which vectorises: through one function that matches
        // on the map, every element would pay a call and a match (10% of a MobileNetV2 forward
        // pass for the activations). Comparisons are written as candle's maximum, minimum and
        // masks are, so that signed zeros and NaN come out the same.
        let out = match self.0 {
            Map::Affine { mul, add } => map_each(x, |v| v * mul + add),
            Map::Abs => map_each(x, f32::abs),
            Map::Sqr => map_each(x, |v| v * v),
            Map::Clamp { low, high } => map_each(x, |v| {
                let above = if v < low { low } else { v };
                if above > high {
                    high
                } else {
                    above
                }
            }),
            Map::Stabilize { epsilon } => map_each(x, |v| v + if v >= 0.0 { epsilon } else { -epsilon }),
            Map::PositiveMask => map_each(x, |v| (v > 0.0) as u8 as f32),
            Map::NegativeMask => map_each(x, |v| (v < 0.0) as u8 as f32),
            Map::Fill { value } => vec![value; x.len()],
            Map::Activation(Activation::Relu) => map_each(x, |v| v.max(0.0)),
            Map::Activation(Activation::Relu6) => map_each(x, |v| v.clamp(0.0, 6.0)),
            // SAFETY: each chunk's pass writes its whole output chunk.
            Map::Activation(other) => unsafe {
                written_in_chunks(x, TASK_ELEMENTS, |_, x, out| {
                    activation_pass::run(other, Pass::Value { x }, out)
                })
            },
        };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

struct ZipOp(Zip);

impl CustomOp2 for ZipOp {
    fn name(&self) -> &'static str {
        "pointwise-zip"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // `Tensor::zip` checked the shapes and names the op; this is a second line of defence.
        let (x, g) = f32_pair((s1, l1), (s2, l2), "element-wise zips")?;
        let out = match self.0 {
            Zip::Add => zip_each(x, g, |a, b| a + b),
            Zip::Sub => zip_each(x, g, |a, b| a - b),
            Zip::Mul => zip_each(x, g, |a, b| a * b),
            Zip::Div => zip_each(x, g, |a, b| a / b),
            Zip::ActivationVjp(Activation::Relu) => zip_each(x, g, |v, d| if v > 0.0 { d } else { 0.0 }),
            Zip::ActivationVjp(Activation::Relu6) => zip_each(x, g, |v, d| if v > 0.0 && v < 6.0 { d } else { 0.0 }),
            // SAFETY: each chunk's pass writes its whole output chunk.
            Zip::ActivationVjp(other) => unsafe {
                written_in_chunks(x, TASK_ELEMENTS, |i, x, out| {
                    let grad = &g[i * TASK_ELEMENTS..][..x.len()];
                    activation_pass::run(other, Pass::Vjp { x, grad }, out)
                })
            },
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

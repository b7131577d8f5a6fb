//! Max pooling on CPU in one pass: each window's first maximum in row-major order (PyTorch's
//! tie rule; cells in the padding never win) gives the value forward and takes the whole
//! gradient backward. The generic path (one-hot window gathering by convolution) is hundreds
//! of tiny products per batch here; other devices keep it.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::f32_data;
use crate::backend::PoolWindow;
use crate::error::Result;

/// `x` [N, C, H, W] pooled by `window` to `out_hw`.
pub fn max_pool(x: &Tensor, window: PoolWindow, out_hw: (usize, usize)) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&MaxPool { window, out_hw })?)
}

/// The input-VJP of `max_pool`: `grad` [N, C, Ho, Wo] routed to each window's winner.
pub fn max_pool_vjp(x: &Tensor, grad: &Tensor, window: PoolWindow) -> Result<Tensor> {
    let (_, _, ho, wo) = grad.dims4()?;
    let op = MaxPool {
        window,
        out_hw: (ho, wo),
    };
    Ok(x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?)
}

struct MaxPool {
    window: PoolWindow,
    out_hw: (usize, usize),
}

impl MaxPool {
    /// Calls `visit(output index, winner index)` for every window of one [H, W] plane.
    fn winners(&self, plane: &[f32], (h, w): (usize, usize), mut visit: impl FnMut(usize, usize)) {
        let PoolWindow {
            kernel: (kh, kw),
            stride: (sh, sw),
            padding: (ph, pw),
            dilation: (dh, dw),
            ..
        } = self.window;
        let (oh, ow) = self.out_hw;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(f32, usize)> = None;
                for a in 0..kh {
                    let y = (oy * sh + a * dh) as isize - ph as isize;
                    if y < 0 || y >= h as isize {
                        continue;
                    }
                    for b in 0..kw {
                        let x = (ox * sw + b * dw) as isize - pw as isize;
                        if x < 0 || x >= w as isize {
                            continue;
                        }
                        let at = y as usize * w + x as usize;
                        if best.is_none_or(|(v, _)| plane[at] > v) {
                            best = Some((plane[at], at));
                        }
                    }
                }
                if let Some((_, at)) = best {
                    visit(oy * ow + ox, at);
                }
            }
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = f32_data(storage, layout, "max-pool2d")?;
        let (oh, ow) = self.out_hw;
        let mut out = vec![f32::NEG_INFINITY; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, plane)| {
                self.winners(plane, (h, w), |o, at| dst[o] = plane[at]);
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

impl CustomOp2 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d-vjp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (x, grad) = (f32_data(s1, l1, "max-pool2d")?, f32_data(s2, l2, "max-pool2d")?);
        let (oh, ow) = self.out_hw;
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(grad.par_chunks(oh * ow)))
            .for_each(|(dst, (plane, g))| {
                self.winners(plane, (h, w), |o, at| dst[at] += g[o]);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

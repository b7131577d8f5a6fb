//! Max pooling in one pass, on CPU and (with the `cuda` feature) CUDA: each window's first
//! maximum in row-major order (PyTorch's tie rule; cells in the padding never win) gives the
//! value forward and takes the whole gradient backward. The CUDA kernels (kernels.cu) apply the
//! same rule and add a cell's gradients in the same order, so both give the same numbers.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::f32_data;
use super::fresh::built_in_chunks;
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

    /// The kernels' PoolShape for [H, W] planes.
    #[cfg(feature = "cuda")]
    fn shape(&self, (h, w): (usize, usize)) -> candle_core::Result<cuda_kernels::PoolShape> {
        use super::cuda::size;
        let PoolWindow {
            kernel: (kh, kw),
            stride: (sh, sw),
            padding: (ph, pw),
            dilation: (dh, dw),
            ..
        } = self.window;
        let (oh, ow) = self.out_hw;
        Ok(cuda_kernels::PoolShape {
            h: size(h)?,
            w: size(w)?,
            oh: size(oh)?,
            ow: size(ow)?,
            kh: size(kh)?,
            kw: size(kw)?,
            sh: size(sh)?,
            sw: size(sw)?,
            ph: size(ph)?,
            pw: size(pw)?,
            dh: size(dh)?,
            dw: size(dw)?,
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda_kernels {
    use candle_core::cuda_backend::cudarc::driver::DeviceRepr;

    /// kernels.cu's PoolShape.
    #[repr(C)]
    pub struct PoolShape {
        pub h: u32,
        pub w: u32,
        pub oh: u32,
        pub ow: u32,
        pub kh: u32,
        pub kw: u32,
        pub sh: u32,
        pub sw: u32,
        pub ph: u32,
        pub pw: u32,
        pub dh: u32,
        pub dw: u32,
    }

    // SAFETY: plain u32 fields, laid out as the C struct.
    unsafe impl DeviceRepr for PoolShape {}
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{f32_view, launch};
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = f32_view(storage, layout, "max-pool2d")?;
        let (oh, ow) = self.out_hw;
        let shape = self.shape((h, w))?;
        launch(
            &storage.device,
            "max_pool_forward",
            Shape::from((n, c, oh, ow)),
            &[&x],
            &shape,
        )
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
        let out = built_in_chunks(
            n * c * h * w,
            h * w,
            || (),
            |_, i, dst| {
                let (plane, g) = (&x[i * h * w..][..h * w], &grad[i * oh * ow..][..oh * ow]);
                self.winners(plane, (h, w), |o, at| dst[at] += g[o]);
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{f32_view, launch};
        let (_, _, h, w) = l1.shape().dims4()?;
        let (x, grad) = (f32_view(s1, l1, "max-pool2d")?, f32_view(s2, l2, "max-pool2d")?);
        let shape = self.shape((h, w))?;
        launch(&s1.device, "max_pool_vjp", l1.shape().clone(), &[&x, &grad], &shape)
    }
}

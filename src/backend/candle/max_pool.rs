//! Max pooling in one pass, on CPU and (with the `cuda` feature) CUDA: each window's first
//! maximum in row-major order (PyTorch's tie rule; cells in the padding never win) gives the
//! value forward and takes the whole gradient backward. The CUDA kernels (kernels.cu) apply the
//! same rule and add a cell's gradients in the same order, so both give the same numbers.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

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

/// A window with no cell inside the input: it pools to -inf and routes no gradient.
const NO_WINNER: u32 = u32::MAX;

impl MaxPool {
    /// Each window's winner in one [H, W] plane: its flat index in the plane to `at[o]` and its
    /// value to `values[o]` ([`NO_WINNER`] and -inf for a window with no cell in the input).
    /// The rule is PyTorch's, as the CUDA kernel applies it: the first in-input cell in row-major
    /// order starts, and a later cell wins only when strictly greater.
    fn winners(&self, plane: &[f32], (h, w): (usize, usize), values: &mut [f32], at: &mut [u32]) {
        let PoolWindow {
            kernel: (kh, kw),
            stride: (sh, sw),
            padding: (ph, pw),
            dilation: (dh, dw),
            ..
        } = self.window;
        let (oh, ow) = self.out_hw;
        // Columns whose window lies inside [0, w): ox·sw >= pw and ox·sw + (kw-1)·dw - pw < w.
        let first_inside = pw.div_ceil(sw).min(ow);
        let end_inside = match (w + pw).checked_sub((kw - 1) * dw + 1) {
            Some(last_start) => (last_start / sw + 1).clamp(first_inside, ow),
            None => first_inside,
        };
        let mut phases = vec![0f32; sw * w.div_ceil(sw)];
        for oy in 0..oh {
            // The window's rows inside [0, h): a contiguous run of its taps a.
            let input_row = |a: usize| (oy * sh + a * dh).checked_sub(ph).filter(|&y| y < h);
            let first_tap = (0..kh).find(|&a| input_row(a).is_some()).unwrap_or(kh);
            let end_tap = (first_tap..kh).find(|&a| input_row(a).is_none()).unwrap_or(kh);
            let rows: Vec<usize> = (first_tap..end_tap).map(|a| oy * sh + a * dh - ph).collect();
            let (values, at) = (&mut values[oy * ow..][..ow], &mut at[oy * ow..][..ow]);
            for ox in (0..first_inside).chain(end_inside..ow) {
                (values[ox], at[ox]) = self.border_winner(plane, w, &rows, ox);
            }
            let inside = first_inside..end_inside;
            let (values, at) = (&mut values[inside.clone()], &mut at[inside]);
            self.inside_winners(plane, w, &rows, first_inside, (values, at), &mut phases);
        }
    }

    /// The window's width, stride, padding and dilation along the columns.
    fn columns(&self) -> (usize, usize, usize, usize) {
        let PoolWindow {
            kernel: (_, kw),
            stride: (_, sw),
            padding: (_, pw),
            dilation: (_, dw),
            ..
        } = self.window;
        (kw, sw, pw, dw)
    }

    /// The winner of the window at column `ox` over the input rows `rows`, cell by cell.
    fn border_winner(&self, plane: &[f32], w: usize, rows: &[usize], ox: usize) -> (f32, u32) {
        let (kw, sw, pw, dw) = self.columns();
        let mut best: Option<(f32, usize)> = None;
        for &y in rows {
            for b in 0..kw {
                let Some(x) = (ox * sw + b * dw).checked_sub(pw).filter(|&x| x < w) else {
                    continue;
                };
                let cell = y * w + x;
                if best.is_none_or(|(v, _)| plane[cell] > v) {
                    best = Some((plane[cell], cell));
                }
            }
        }
        best.map_or((f32::NEG_INFINITY, NO_WINNER), |(v, cell)| (v, cell as u32))
    }

    /// The winners of the windows wholly inside the input's columns, starting at column
    /// `first`, over the input rows `rows`: column-parallel, tap by tap in row-major order, with
    /// branch-free selects the compiler vectorises. A window per output with a branch per tap
    /// took 26 ms of a ResNet-18 SmoothGrad (8 rows) each way; this takes 5-7.
    fn inside_winners(
        &self,
        plane: &[f32],
        w: usize,
        rows: &[usize],
        first: usize,
        (values, at): (&mut [f32], &mut [u32]),
        phases: &mut [f32],
    ) {
        let (kw, sw, pw, dw) = self.columns();
        if values.is_empty() {
            return;
        }
        if rows.is_empty() {
            values.fill(f32::NEG_INFINITY);
            at.fill(NO_WINNER);
            return;
        }
        let phase_len = w.div_ceil(sw);
        // Tap t = r·kw + b (input row rows[r], window column b) wins as the number t; the
        // window at column first + k reads it at cell start(t) + k·sw.
        for (r, &y) in rows.iter().enumerate() {
            let phases = split_phases(&plane[y * w..][..w], sw, phases);
            for b in 0..kw {
                let x = first * sw + b * dw - pw;
                let taps = &phases[(x % sw) * phase_len + x / sw..][..values.len()];
                let t = r * kw + b;
                if t == 0 {
                    values.copy_from_slice(taps);
                    at.fill(0);
                    continue;
                }
                for ((value, tap), &v) in values.iter_mut().zip(at.iter_mut()).zip(taps) {
                    let wins = v > *value;
                    *value = f32::from_bits(blend(wins, v.to_bits(), value.to_bits()));
                    *tap = blend(wins, t as u32, *tap);
                }
            }
        }
        // Tap number to cell, by a table rather than a division per window.
        let starts: Vec<usize> = (0..rows.len() * kw)
            .map(|t| rows[t / kw] * w + first * sw + (t % kw) * dw - pw)
            .collect();
        for (k, tap) in at.iter_mut().enumerate() {
            *tap = (starts[*tap as usize] + k * sw) as u32;
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

/// `row` split by column phase, cell k·stride + p at `[p·len + k]` (len = its length / stride,
/// rounded up), so that each tap of a strided window reads its cells as one contiguous run:
/// the row itself at stride 1, else written into `scratch`.
fn split_phases<'a>(row: &'a [f32], stride: usize, scratch: &'a mut [f32]) -> &'a [f32] {
    let len = row.len().div_ceil(stride);
    match stride {
        1 => return row,
        2 => {
            let (even, odd) = scratch.split_at_mut(len);
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                (*e, *o) = (pair[0], pair[1]);
            }
            if row.len() % 2 == 1 {
                even[len - 1] = row[row.len() - 1];
            }
        }
        _ => {
            for (k, cells) in row.chunks(stride).enumerate() {
                for (p, &v) in cells.iter().enumerate() {
                    scratch[p * len + k] = v;
                }
            }
        }
    }
    scratch
}

/// `if wins { a } else { b }` as bit masks. Written as a select, the compiler turned the loop's
/// two selects into a store per lane; as masks they stay one vector blend each.
#[inline(always)]
fn blend(wins: bool, a: u32, b: u32) -> u32 {
    let mask = (wins as u32).wrapping_neg();
    (a & mask) | (b & !mask)
}

/// The winners' flat indices are u32, [`NO_WINNER`] reserved.
fn check_plane(h: usize, w: usize) -> candle_core::Result<()> {
    match h.checked_mul(w) {
        Some(cells) if cells < NO_WINNER as usize => Ok(()),
        _ => candle_core::bail!(
            "max-pool2d: a {h}x{w} plane is too large (at most {} cells)",
            NO_WINNER - 1
        ),
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
        check_plane(h, w)?;
        let out = built_in_chunks(
            n * c * oh * ow,
            oh * ow,
            || vec![0u32; oh * ow],
            |at, i, dst| self.winners(&x[i * h * w..][..h * w], (h, w), dst, at),
        );
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
        check_plane(h, w)?;
        let out = built_in_chunks(
            n * c * h * w,
            h * w,
            || (vec![0f32; oh * ow], vec![0u32; oh * ow]),
            |(values, at), i, dst| {
                let (plane, g) = (&x[i * h * w..][..h * w], &grad[i * oh * ow..][..oh * ow]);
                self.winners(plane, (h, w), values, at);
                // In output order, so that a cell several windows route to adds in that order.
                for (&cell, &g) in at.iter().zip(g) {
                    if cell != NO_WINNER {
                        dst[cell as usize] += g;
                    }
                }
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

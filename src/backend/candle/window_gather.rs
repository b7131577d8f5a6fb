//! Max pooling on candle devices without our CPU kernel (CUDA): the windows are gathered by a
//! convolution with one-hot kernels ([N*C, k*k, Ho, Wo]) and reduced; the gradient goes back
//! through the same convolution's transpose. The first maximum in row-major window order
//! takes the whole gradient, as in PyTorch.

use candle_core::{DType, Device, Tensor};

use super::padding::pad_or_crop_hw;
use super::{BackendStorage, CandleStorage};
use crate::backend::{PoolWindow, WindowGeometry};
use crate::error::Result;

/// The window laid over one input size: PyTorch's padding, plus the extra (bottom, right)
/// cells that ceil_mode windows reach past it.
struct WindowPlan {
    geometry: WindowGeometry,
    padding: (usize, usize),
    overhang: (usize, usize),
    input_hw: (usize, usize),
}

impl WindowPlan {
    fn new(window: &PoolWindow, input_hw: (usize, usize)) -> Self {
        let (oh, ow) = window.output_hw(input_hw).expect("checked by Tensor::max_pool");
        let span = |k: usize, d: usize| d * (k - 1) + 1;
        let reach_h = (oh - 1) * window.stride.0 + span(window.kernel.0, window.dilation.0);
        let reach_w = (ow - 1) * window.stride.1 + span(window.kernel.1, window.dilation.1);
        let (ph, pw) = window.padding;
        Self {
            geometry: WindowGeometry {
                kernel: window.kernel,
                stride: window.stride.0,
                dilation: window.dilation.0,
                padding: (0, 0, 0, 0),
                groups: 1,
            },
            padding: (ph, pw),
            overhang: (
                reach_h.saturating_sub(input_hw.0 + 2 * ph),
                reach_w.saturating_sub(input_hw.1 + 2 * pw),
            ),
            input_hw,
        }
    }

    fn window_len(&self) -> usize {
        self.geometry.kernel.0 * self.geometry.kernel.1
    }

    /// [k*k, 1, kh, kw]: kernel i picks the i-th cell of the window (row-major).
    fn selector(&self, device: &Device) -> Result<Tensor> {
        let (kh, kw) = self.geometry.kernel;
        let n = kh * kw;
        let mut data = vec![0f32; n * n];
        for i in 0..n {
            data[i * n + i] = 1.0;
        }
        Ok(Tensor::from_vec(data, (n, 1, kh, kw), device)?)
    }

    fn framed_hw(&self) -> (usize, usize) {
        let (ph, pw) = self.padding;
        (
            self.input_hw.0 + 2 * ph + self.overhang.0,
            self.input_hw.1 + 2 * pw + self.overhang.1,
        )
    }

    /// [N, C, H, W] -> [N*C, k*k, Ho, Wo], with padding cells at the lowest f32.
    fn gather(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (ph, pw) = (self.padding.0 as isize, self.padding.1 as isize);
        let (oh, ow) = (self.overhang.0 as isize, self.overhang.1 as isize);
        let framed = pad_or_crop_hw(&x.reshape((n * c, 1, h, w))?, ph, ph + oh, pw, pw + ow, f32::MIN)?;
        let selector = CandleStorage::new(self.selector(x.device())?)?;
        Ok(CandleStorage::new(framed)?.conv2d(&selector, &self.geometry)?.0)
    }

    /// Transpose of `gather`: [N*C, k*k, Ho, Wo] -> [N, C, H, W].
    fn scatter(&self, windows: &Tensor, n: usize, c: usize) -> Result<Tensor> {
        let selector = CandleStorage::new(self.selector(windows.device())?)?;
        let framed = CandleStorage::new(windows.clone())?
            .conv2d_transposed(&selector, &self.geometry, self.framed_hw())?
            .0;
        let (ph, pw) = (self.padding.0 as isize, self.padding.1 as isize);
        let (oh, ow) = (self.overhang.0 as isize, self.overhang.1 as isize);
        let x = pad_or_crop_hw(&framed, -ph, -(ph + oh), -pw, -(pw + ow), 0.0)?;
        let (h, w) = self.input_hw;
        Ok(x.reshape((n, c, h, w))?)
    }
}

pub fn max_pool(x: &Tensor, window: &PoolWindow) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let plan = WindowPlan::new(window, (h, w));
    let pooled = plan.gather(x)?.max(1)?;
    let (ho, wo) = (pooled.dim(1)?, pooled.dim(2)?);
    Ok(pooled.reshape((n, c, ho, wo))?)
}

pub fn max_pool_vjp(x: &Tensor, grad: &Tensor, window: &PoolWindow) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let plan = WindowPlan::new(window, (h, w));
    let windows = plan.gather(x)?;
    // One-hot [N*C, k*k, Ho, Wo] marking the first maximum of each window.
    let first_max = windows.argmax_keepdim(1)?;
    let len = plan.window_len();
    let slots = Tensor::arange(0u32, len as u32, x.device())?.reshape((1, len, 1, 1))?;
    let winners = slots.broadcast_eq(&first_max)?.to_dtype(DType::F32)?;
    let (_, _, ho, wo) = grad.dims4()?;
    let routed = winners.broadcast_mul(&grad.reshape((n * c, 1, ho, wo))?)?;
    plan.scatter(&routed, n, c)
}

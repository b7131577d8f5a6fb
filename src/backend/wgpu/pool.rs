//! Max pooling and window means (average and adaptive average pooling), with their VJPs.

use bytemuck::{Pod, Zeroable};

use super::{u32_of, Kernel, WgpuTensor};
use crate::backend::BackendStorage;
use crate::backend::PoolWindow;
use crate::backend::WindowBins;
use crate::error::{Error, Result};

const MAX_POOL: Kernel = Kernel {
    name: "max_pool",
    source: concat!(
        include_str!("kernels/pool_params.wgsl"),
        include_str!("kernels/max_pool_window.wgsl"),
        include_str!("kernels/max_pool.wgsl")
    ),
    entry: "main",
    inputs: 1,
};
const MAX_POOL_ARGMAX: Kernel = Kernel {
    name: "max_pool_argmax",
    source: concat!(
        include_str!("kernels/pool_params.wgsl"),
        include_str!("kernels/max_pool_window.wgsl"),
        include_str!("kernels/max_pool_argmax.wgsl")
    ),
    entry: "main",
    inputs: 1,
};
const MAX_POOL_VJP: Kernel = Kernel {
    name: "max_pool_vjp",
    source: concat!(
        include_str!("kernels/pool_params.wgsl"),
        include_str!("kernels/max_pool_vjp.wgsl")
    ),
    entry: "main",
    inputs: 2,
};
const WINDOW_MEAN: Kernel = Kernel {
    name: "window_mean",
    source: include_str!("kernels/window_mean.wgsl"),
    entry: "forward",
    inputs: 3,
};
const WINDOW_MEAN_VJP: Kernel = Kernel {
    name: "window_mean_vjp",
    source: include_str!("kernels/window_mean.wgsl"),
    entry: "vjp",
    inputs: 3,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MaxParams {
    planes: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MeanParams {
    planes: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    cols_at: u32,
    row_ranges_at: u32,
    col_ranges_at: u32,
}

fn nchw(dims: &[usize], what: &str) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(dims).map_err(|_| Error::Shape(format!("{what} of {dims:?}: needs [N, C, H, W]")))
}

fn max_params(dims: [usize; 4], window: &PoolWindow) -> Result<(MaxParams, [usize; 4])> {
    let [n, c, h, w] = dims;
    let (kh, kw) = window.kernel;
    let valid = kh > 0 && kw > 0 && window.stride.0 > 0 && window.stride.1 > 0;
    let valid = valid && window.dilation.0 > 0 && window.dilation.1 > 0;
    let out = valid.then(|| window.output_hw((h, w))).flatten();
    let (ho, wo) = out.ok_or_else(|| Error::Shape(format!("max pooling of {dims:?} with {window:?}")))?;
    let params = MaxParams {
        planes: u32_of(n * c, "planes")?,
        h: u32_of(h, "height")?,
        w: u32_of(w, "width")?,
        ho: u32_of(ho, "output height")?,
        wo: u32_of(wo, "output width")?,
        kh: u32_of(kh, "kernel height")?,
        kw: u32_of(kw, "kernel width")?,
        sh: u32_of(window.stride.0, "stride")?,
        sw: u32_of(window.stride.1, "stride")?,
        ph: u32_of(window.padding.0, "padding")?,
        pw: u32_of(window.padding.1, "padding")?,
        dh: u32_of(window.dilation.0, "dilation")?,
        dw: u32_of(window.dilation.1, "dilation")?,
        _pad: [0; 3],
    };
    Ok((params, [n, c, ho, wo]))
}

pub(super) fn max_pool(x: &WgpuTensor, window: &PoolWindow) -> Result<WgpuTensor> {
    let (params, out_dims) = max_params(nchw(x.dims(), "max pooling")?, window)?;
    let device = x.device();
    let out = device.alloc(&out_dims)?;
    device.dispatch(
        &MAX_POOL,
        &params,
        &[x.buffer()?],
        out.buffer()?,
        device.linear_grid(out.len())?,
    )?;
    Ok(out)
}

pub(super) fn max_pool_vjp(x: &WgpuTensor, grad: &WgpuTensor, window: &PoolWindow) -> Result<WgpuTensor> {
    x.check_device(grad)?;
    let (params, out_dims) = max_params(nchw(x.dims(), "max pooling")?, window)?;
    if grad.dims() != out_dims {
        return Err(Error::Shape(format!(
            "max pooling gradient {:?} for an output of {out_dims:?}",
            grad.dims()
        )));
    }
    let device = x.device();
    // i32 winners share the f32 tensors' 4-byte layout, so a tensor's buffer holds them.
    let winners = device.alloc(&out_dims)?;
    device.dispatch(
        &MAX_POOL_ARGMAX,
        &params,
        &[x.buffer()?],
        winners.buffer()?,
        device.linear_grid(grad.len())?,
    )?;
    let dx = device.alloc(x.dims())?;
    let grid = device.linear_grid(dx.len())?;
    device.dispatch(
        &MAX_POOL_VJP,
        &params,
        &[winners.buffer()?, grad.buffer()?],
        dx.buffer()?,
        grid,
    )?;
    Ok(dx)
}

/// The bin table, the divisors, and the kernel parameters for a window mean over `dims`.
fn mean_tables(
    x: &WgpuTensor,
    bins: &WindowBins,
    planes: usize,
) -> Result<(::wgpu::Buffer, ::wgpu::Buffer, MeanParams)> {
    let (h, w) = bins.input_hw;
    let (ho, wo) = bins.output_hw();
    let bad = |why: &str| Error::Shape(format!("window bins for {:?}: {why}", bins.input_hw));
    if bins.row_counts.len() != ho || bins.col_counts.len() != wo {
        return Err(bad("one count per bin"));
    }
    if bins.rows.iter().any(|&(a, b)| a > b || b > h) || bins.cols.iter().any(|&(a, b)| a > b || b > w) {
        return Err(bad("a bin reaches outside the input"));
    }
    // For each input row, the bins from the first to the last that contain it; the kernel
    // still checks each, so bins need not be ordered for correctness, only for speed.
    let ranges = |bins: &[(usize, usize)], len: usize| -> Vec<(usize, usize)> {
        let mut r = vec![(usize::MAX, 0); len];
        for (i, &(a, b)) in bins.iter().enumerate() {
            for cell in &mut r[a..b] {
                *cell = (cell.0.min(i), cell.1.max(i + 1));
            }
        }
        r.into_iter()
            .map(|(a, b)| if a == usize::MAX { (0, 0) } else { (a, b) })
            .collect()
    };
    let mut table = Vec::with_capacity(2 * (ho + wo + h + w));
    for &(a, b) in bins
        .rows
        .iter()
        .chain(&bins.cols)
        .chain(&ranges(&bins.rows, h))
        .chain(&ranges(&bins.cols, w))
    {
        table.push(u32_of(a, "bin bound")?);
        table.push(u32_of(b, "bin bound")?);
    }
    let divisors: Vec<f32> = (0..ho).flat_map(|i| (0..wo).map(move |j| bins.divisor(i, j))).collect();
    let params = MeanParams {
        planes: u32_of(planes, "planes")?,
        h: u32_of(h, "height")?,
        w: u32_of(w, "width")?,
        ho: u32_of(ho, "output height")?,
        wo: u32_of(wo, "output width")?,
        cols_at: u32_of(2 * ho, "table size")?,
        row_ranges_at: u32_of(2 * (ho + wo), "table size")?,
        col_ranges_at: u32_of(2 * (ho + wo + h), "table size")?,
    };
    let device = x.device();
    Ok((device.table(&table), device.table(&divisors), params))
}

pub(super) fn window_mean(x: &WgpuTensor, bins: &WindowBins) -> Result<WgpuTensor> {
    let [n, c, h, w] = nchw(x.dims(), "window mean")?;
    if (h, w) != bins.input_hw {
        return Err(Error::Shape(format!(
            "window mean of {:?} with bins for {:?}",
            x.dims(),
            bins.input_hw
        )));
    }
    let (table, divisors, params) = mean_tables(x, bins, n * c)?;
    let (ho, wo) = bins.output_hw();
    let device = x.device();
    let out = device.alloc(&[n, c, ho, wo])?;
    let grid = device.linear_grid(out.len())?;
    device.dispatch(
        &WINDOW_MEAN,
        &params,
        &[x.buffer()?, &table, &divisors],
        out.buffer()?,
        grid,
    )?;
    Ok(out)
}

pub(super) fn window_mean_vjp(grad: &WgpuTensor, bins: &WindowBins) -> Result<WgpuTensor> {
    let [n, c, ho, wo] = nchw(grad.dims(), "window mean VJP")?;
    if (ho, wo) != bins.output_hw() {
        return Err(Error::Shape(format!(
            "window mean gradient {:?} for bins of {:?}",
            grad.dims(),
            bins.output_hw()
        )));
    }
    let (table, divisors, params) = mean_tables(grad, bins, n * c)?;
    let (h, w) = bins.input_hw;
    let device = grad.device();
    let out = device.alloc(&[n, c, h, w])?;
    let grid = device.linear_grid(out.len())?;
    device.dispatch(
        &WINDOW_MEAN_VJP,
        &params,
        &[grad.buffer()?, &table, &divisors],
        out.buffer()?,
        grid,
    )?;
    Ok(out)
}

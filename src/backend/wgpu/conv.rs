//! 2-D convolution and its input-VJP.

use bytemuck::{Pod, Zeroable};

use super::{u32_of, Kernel, WgpuDevice, WgpuTensor};
use crate::backend::BackendStorage;
use crate::backend::WindowGeometry;
use crate::error::{Error, Result};

const GEMM: Kernel = Kernel {
    name: "conv_gemm",
    source: concat!(
        include_str!("kernels/conv_params.wgsl"),
        include_str!("kernels/tile_gemm.wgsl"),
        include_str!("kernels/conv.wgsl")
    ),
    entry: "gemm",
    inputs: 2,
};
const DIRECT: Kernel = Kernel {
    name: "conv_direct",
    source: concat!(
        include_str!("kernels/conv_params.wgsl"),
        include_str!("kernels/tile_gemm.wgsl"),
        include_str!("kernels/conv.wgsl")
    ),
    entry: "direct",
    inputs: 2,
};
const TRANSPOSED_GEMM: Kernel = Kernel {
    name: "conv_transposed_gemm",
    source: concat!(
        include_str!("kernels/conv_params.wgsl"),
        include_str!("kernels/tile_gemm.wgsl"),
        include_str!("kernels/conv_transposed.wgsl")
    ),
    entry: "gemm",
    inputs: 2,
};
const TRANSPOSED_GATHER: Kernel = Kernel {
    name: "conv_transposed_gather",
    source: concat!(
        include_str!("kernels/conv_params.wgsl"),
        include_str!("kernels/tile_gemm.wgsl"),
        include_str!("kernels/conv_transposed.wgsl")
    ),
    entry: "gather",
    inputs: 2,
};
/// Channels and pixels per GEMM workgroup (see conv.wgsl and conv_transposed.wgsl).
const TILE: usize = 64;
/// Below this many input channels per group (the input-VJP's tile rows) or pixels per sample
/// (per stride phase for the input-VJP: the tile columns), a GEMM's 64x64 tiles would be at
/// least half padding, and the direct kernels sum each output on their own instead. On the
/// small maps of a network's last stages (2x2 at a 64x64 input) that is up to 16 times less
/// arithmetic. The forward is also direct with one input channel per group (depthwise), where
/// the reduction is only the window.
const GEMM_MIN_CHANNELS: usize = 16;
const GEMM_MIN_PIXELS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    dilation: u32,
    pad_top: u32,
    pad_left: u32,
    cin_g: u32,
    cout_g: u32,
    /// GEMMs only: 64-row tiles per group (conv_params.wgsl).
    channel_tiles: u32,
}

/// The sizes of one convolution, checked against each other.
struct Shape {
    n: usize,
    cin: usize,
    hw: (usize, usize),
    cout: usize,
    out_hw: (usize, usize),
    groups: usize,
}

impl Shape {
    fn check(x: &[usize], kernel: &[usize], g: &WindowGeometry, input_hw: Option<(usize, usize)>) -> Result<Self> {
        let bad = |why: &str| Error::Shape(format!("conv2d of {x:?} with kernel {kernel:?} ({g:?}): {why}"));
        let [k_out, k_in, kh, kw] = *kernel else {
            return Err(bad("the kernel must be [Cout, Cin/groups, kh, kw]"));
        };
        if (kh, kw) != g.kernel || g.groups == 0 || g.stride == 0 || g.dilation == 0 || kh == 0 || kw == 0 {
            return Err(bad("inconsistent geometry"));
        }
        if k_out % g.groups != 0 {
            return Err(bad("Cout must divide into the groups"));
        }
        // The forward reads x [N, Cin, H, W]; the VJP reads grad [N, Cout, Ho, Wo].
        let shape = match (input_hw, x) {
            (None, &[n, cin, h, w]) => {
                let out_hw = g
                    .output_hw((h, w))
                    .ok_or_else(|| bad("the window is larger than the padded input"))?;
                Shape {
                    n,
                    cin,
                    hw: (h, w),
                    cout: k_out,
                    out_hw,
                    groups: g.groups,
                }
            }
            (Some(hw), &[n, cout, ho, wo]) => {
                if cout != k_out || g.output_hw(hw) != Some((ho, wo)) {
                    return Err(bad(&format!("the gradient does not match an input of {hw:?}")));
                }
                Shape {
                    n,
                    cin: k_in * g.groups,
                    hw,
                    cout,
                    out_hw: (ho, wo),
                    groups: g.groups,
                }
            }
            _ => return Err(bad("x must be [N, C, H, W]")),
        };
        if shape.cin != k_in * g.groups {
            return Err(bad("Cin must equal the kernel's Cin/groups times groups"));
        }
        Ok(shape)
    }

    /// Whether the forward's GEMM tiles would be mostly padding.
    fn forward_is_direct(&self) -> bool {
        self.cin / self.groups == 1 || self.out_hw.0 * self.out_hw.1 < GEMM_MIN_PIXELS
    }

    fn params(&self, g: &WindowGeometry, channel_tiles: usize) -> Result<Params> {
        Ok(Params {
            n: u32_of(self.n, "batch")?,
            cin: u32_of(self.cin, "input channels")?,
            h: u32_of(self.hw.0, "height")?,
            w: u32_of(self.hw.1, "width")?,
            cout: u32_of(self.cout, "output channels")?,
            ho: u32_of(self.out_hw.0, "output height")?,
            wo: u32_of(self.out_hw.1, "output width")?,
            kh: u32_of(g.kernel.0, "kernel height")?,
            kw: u32_of(g.kernel.1, "kernel width")?,
            stride: u32_of(g.stride, "stride")?,
            dilation: u32_of(g.dilation, "dilation")?,
            pad_top: u32_of(g.padding.0, "top padding")?,
            pad_left: u32_of(g.padding.2, "left padding")?,
            cin_g: u32_of(self.cin / self.groups, "input channels per group")?,
            cout_g: u32_of(self.cout / self.groups, "output channels per group")?,
            channel_tiles: u32_of(channel_tiles, "channel tiles")?,
        })
    }
}

pub(super) fn conv2d(x: &WgpuTensor, kernel: &WgpuTensor, g: &WindowGeometry) -> Result<WgpuTensor> {
    x.check_device(kernel)?;
    let s = Shape::check(x.dims(), kernel.dims(), g, None)?;
    let device = x.device();
    let out = device.alloc(&[s.n, s.cout, s.out_hw.0, s.out_hw.1])?;
    let inputs = [x.buffer()?, kernel.buffer()?];
    if s.forward_is_direct() {
        device.dispatch(
            &DIRECT,
            &s.params(g, 0)?,
            &inputs,
            out.buffer()?,
            device.linear_grid(out.len())?,
        )?;
    } else {
        let channel_tiles = (s.cout / s.groups).div_ceil(TILE);
        let grid = [
            u32_of((s.out_hw.0 * s.out_hw.1).div_ceil(TILE), "pixel tiles")?,
            u32_of(s.groups * channel_tiles, "channel tiles")?,
            u32_of(s.n, "batch")?,
        ];
        device.dispatch(&GEMM, &s.params(g, channel_tiles)?, &inputs, out.buffer()?, grid)?;
    }
    Ok(out)
}

pub(super) fn conv2d_transposed(
    grad: &WgpuTensor,
    kernel: &WgpuTensor,
    g: &WindowGeometry,
    input_hw: (usize, usize),
) -> Result<WgpuTensor> {
    grad.check_device(kernel)?;
    let s = Shape::check(grad.dims(), kernel.dims(), g, Some(input_hw))?;
    let device = grad.device();
    let out = device.alloc(&[s.n, s.cin, input_hw.0, input_hw.1])?;
    let inputs = [grad.buffer()?, kernel.buffer()?];
    let cin_g = s.cin / s.groups;
    let phase_pixels = input_hw.0.div_ceil(g.stride) * input_hw.1.div_ceil(g.stride);
    if cin_g < GEMM_MIN_CHANNELS || phase_pixels < GEMM_MIN_PIXELS {
        device.dispatch(
            &TRANSPOSED_GATHER,
            &s.params(g, 0)?,
            &inputs,
            out.buffer()?,
            device.linear_grid(out.len())?,
        )?;
    } else {
        // One workgroup per (pixel tile, channel tile, group, stride phase, sample), folded
        // into x and y; the kernel unfolds the linear id (conv_transposed.wgsl).
        let channel_tiles = cin_g.div_ceil(TILE);
        let workgroups = phase_pixels.div_ceil(TILE) * channel_tiles * s.groups * g.stride * g.stride * s.n;
        let grid = WgpuDevice::fold(workgroups)?;
        device.dispatch(
            &TRANSPOSED_GEMM,
            &s.params(g, channel_tiles)?,
            &inputs,
            out.buffer()?,
            grid,
        )?;
    }
    Ok(out)
}

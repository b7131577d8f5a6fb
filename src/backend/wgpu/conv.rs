//! 2-D convolution and its input-VJP.

use bytemuck::{Pod, Zeroable};

use super::{u32_of, Kernel, WgpuTensor};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::layers::WindowGeometry;

const GEMM: Kernel = Kernel {
    name: "conv_gemm",
    source: concat!(
        include_str!("kernels/conv_params.wgsl"),
        include_str!("kernels/conv.wgsl")
    ),
    entry: "gemm",
    inputs: 2,
};
const DEPTHWISE: Kernel = Kernel {
    name: "conv_depthwise",
    source: concat!(
        include_str!("kernels/conv_params.wgsl"),
        include_str!("kernels/conv.wgsl")
    ),
    entry: "depthwise",
    inputs: 2,
};
const TRANSPOSED: Kernel = Kernel {
    name: "conv_transposed",
    source: concat!(
        include_str!("kernels/conv_params.wgsl"),
        include_str!("kernels/conv_transposed.wgsl")
    ),
    entry: "general",
    inputs: 2,
};
const TRANSPOSED_DEPTHWISE: Kernel = Kernel {
    name: "conv_transposed_depthwise",
    source: concat!(
        include_str!("kernels/conv_params.wgsl"),
        include_str!("kernels/conv_transposed.wgsl")
    ),
    entry: "depthwise",
    inputs: 2,
};
/// Output channels and output pixels per GEMM workgroup (see conv.wgsl).
const TILE: usize = 64;

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
    /// Forward GEMM only: workgroups along y per group (conv_params.wgsl).
    co_tiles: u32,
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

    fn depthwise(&self) -> bool {
        self.groups == self.cin && self.cout == self.cin
    }

    fn params(&self, g: &WindowGeometry, co_tiles: usize) -> Result<Params> {
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
            co_tiles: u32_of(co_tiles, "channel tiles")?,
        })
    }
}

pub(super) fn conv2d(x: &WgpuTensor, kernel: &WgpuTensor, g: &WindowGeometry) -> Result<WgpuTensor> {
    x.check_device(kernel)?;
    let s = Shape::check(x.dims(), kernel.dims(), g, None)?;
    let device = x.device();
    let out = device.alloc(&[s.n, s.cout, s.out_hw.0, s.out_hw.1])?;
    let inputs = [x.buffer(), kernel.buffer()];
    if s.depthwise() {
        device.dispatch(
            &DEPTHWISE,
            &s.params(g, 0)?,
            &inputs,
            out.buffer(),
            device.linear_grid(out.len())?,
        )?;
    } else {
        let co_tiles = (s.cout / s.groups).div_ceil(TILE);
        let grid = [
            u32_of((s.out_hw.0 * s.out_hw.1).div_ceil(TILE), "pixel tiles")?,
            u32_of(s.groups * co_tiles, "channel tiles")?,
            u32_of(s.n, "batch")?,
        ];
        device.dispatch(&GEMM, &s.params(g, co_tiles)?, &inputs, out.buffer(), grid)?;
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
    let kind = if s.depthwise() {
        &TRANSPOSED_DEPTHWISE
    } else {
        &TRANSPOSED
    };
    let grid = device.linear_grid(out.len())?;
    device.dispatch(
        kind,
        &s.params(g, 0)?,
        &[grad.buffer(), kernel.buffer()],
        out.buffer(),
        grid,
    )?;
    Ok(out)
}

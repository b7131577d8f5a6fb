//! Our CUDA kernels (kernels.cu, compiled to PTX by build.rs) on candle's CUDA storage: the
//! CUDA side of the custom ops that have CPU kernels (max_pool.rs, depthwise.rs). Each kernel
//! takes (out, len, inputs..., shape) and writes every one of its `len` outputs, one thread each.

use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
/// The name candle caches the loaded module under.
const MODULE: &str = "candle_xai_kernels";
const THREADS_PER_BLOCK: u32 = 256;

/// The f32 elements `layout` lays out in a contiguous `storage`.
pub fn f32_view<'a>(storage: &'a CudaStorage, layout: &Layout, op: &str) -> candle_core::Result<CudaView<'a, f32>> {
    let slice = storage.as_cuda_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("{op}: the input is not contiguous"),
    }
}

/// Runs `kernel` over `inputs` into a new f32 tensor of `shape`; `params` is the kernel's
/// shape struct, laid out as in kernels.cu.
pub fn launch<P: DeviceRepr>(
    device: &CudaDevice,
    kernel: &str,
    shape: Shape,
    inputs: &[&CudaView<'_, f32>],
    params: &P,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let len = shape.elem_count();
    // SAFETY: the kernel writes all `len` elements before anything reads them.
    let out = unsafe { device.alloc::<f32>(len)? };
    if len > 0 {
        let blocks = u32::try_from(len.div_ceil(THREADS_PER_BLOCK as usize))
            .map_err(|_| candle_core::Error::Msg(format!("{kernel}: {len} outputs are too many for one launch")))?;
        let function = device.get_or_load_custom_func(kernel, MODULE, PTX)?;
        let mut args = function.builder();
        let len = len as u64;
        args.arg(&out).arg(&len);
        for input in inputs {
            args.arg(*input);
        }
        args.arg(params);
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameters in kernels.cu, and every index the
        // kernel reads is within the shapes `params` describes.
        unsafe { args.launch(config) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), shape))
}

/// A size as the kernels take it (u32), refused when it does not fit.
pub fn size(value: usize) -> candle_core::Result<u32> {
    u32::try_from(value)
        .map_err(|_| candle_core::Error::Msg(format!("a size of {value} is too large for the CUDA kernels")))
}

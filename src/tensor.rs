//! The engine's tensor: one backend's storage behind one type, so that layers, rules and
//! methods are written once. Each operation checks shapes, then forwards to the backend.
//! Results come back to the host as candle CPU tensors ([`Tensor::to_host`]).

use std::fmt;

use crate::backend::candle::CandleStorage;
use crate::backend::{Activation, BackendStorage, Map, PoolWindow, Reduce, StdTerm, WindowBins, WindowGeometry, Zip};
use crate::error::{Error, Result};

/// Where a model's weights and activations live.
#[derive(Clone)]
pub enum Device {
    /// candle's CPU or CUDA device, with candle's storage and our CPU kernels.
    Candle(candle_core::Device),
    /// A wgpu adapter (Vulkan, Metal, DX12, GL) running our WGSL kernels.
    #[cfg(feature = "wgpu")]
    Wgpu(crate::backend::wgpu::WgpuDevice),
}

impl Device {
    pub const fn cpu() -> Self {
        Device::Candle(candle_core::Device::Cpu)
    }

    /// The device called `name`: `cpu`; `wgpu` (our WGSL kernels on the default adapter;
    /// `webgpu` too); `cuda` or `cuda:N` when built with the `cuda` feature.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(name: &str) -> Result<Self> {
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "cpu" => return Ok(Self::cpu()),
            #[cfg(feature = "wgpu")]
            "wgpu" | "webgpu" => return Ok(Device::Wgpu(crate::backend::wgpu::WgpuDevice::new()?)),
            #[cfg(not(feature = "wgpu"))]
            "wgpu" | "webgpu" => {
                return Err(Error::Device(
                    "this candle-xai was built without the `wgpu` feature; use --device cpu".into(),
                ))
            }
            _ => {}
        }
        let ordinal = match name.as_str() {
            "cuda" | "gpu" => 0,
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => n,
                _ => {
                    return Err(Error::Device(format!(
                        "unknown device `{other}`; use cpu, wgpu, cuda or cuda:N"
                    )))
                }
            },
        };
        if !cfg!(feature = "cuda") {
            return Err(Error::Device(
                "this candle-xai was built without CUDA support; rebuild it with `cargo build --release --features cuda`, \
                 or use --device cpu"
                    .into(),
            ));
        }
        candle_core::Device::new_cuda(ordinal)
            .map(Device::Candle)
            .map_err(|e| Error::Device(format!("could not open CUDA device {ordinal}: {e}")))
    }

    /// A tensor of `dims` holding `data` (row-major) on this device.
    pub fn tensor(&self, data: &[f32], dims: &[usize]) -> Result<Tensor> {
        let storage = match self {
            Device::Candle(device) => {
                Storage::Candle(CandleStorage(candle_core::Tensor::from_slice(data, dims, device)?))
            }
            #[cfg(feature = "wgpu")]
            Device::Wgpu(device) => Storage::Wgpu(device.upload(data, dims)?),
        };
        Ok(Tensor(storage))
    }

    /// A host tensor (any dtype, any candle device) copied to this device as f32.
    pub fn upload(&self, t: &candle_core::Tensor) -> Result<Tensor> {
        let t = t.to_dtype(candle_core::DType::F32)?;
        match self {
            Device::Candle(device) => Ok(Tensor(Storage::Candle(CandleStorage::new(t.to_device(device)?)?))),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(_) => self.tensor(&t.flatten_all()?.to_vec1::<f32>()?, t.dims()),
        }
    }

    /// The memory one explanation may hold at once here when its request sets no limit: the
    /// CPU's ([`crate::limits::default_memory_budget`]), or three quarters of a CUDA device's
    /// free memory. None on wgpu, which cannot tell its memory: there the largest buffer
    /// ([`Device::max_tensor_len`]) bounds the passes.
    pub fn memory_budget(&self) -> Option<u64> {
        match self {
            Device::Candle(candle_core::Device::Cpu) => Some(crate::limits::default_memory_budget()),
            #[cfg(feature = "cuda")]
            Device::Candle(candle_core::Device::Cuda(cuda)) => {
                let (free, _total) = cuda.cuda_stream().context().mem_get_info().ok()?;
                Some(free as u64 / 4 * 3)
            }
            _ => None,
        }
    }

    /// The most elements one tensor may hold here, when the device bounds it (a GPU's
    /// largest storage buffer); multi-pass methods split their passes to stay below it.
    pub fn max_tensor_len(&self) -> Option<usize> {
        match self {
            Device::Candle(_) => None,
            #[cfg(feature = "wgpu")]
            Device::Wgpu(d) => Some(d.max_tensor_len()),
        }
    }

    /// Resolves once the work submitted so far has finished (immediately on candle, whose
    /// operations return finished). Surfaces a GPU error raised by that work.
    pub async fn settle(&self) -> Result<()> {
        match self {
            Device::Candle(_) => Ok(()),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(d) => d.settle().await,
        }
    }

    /// What this device is, for messages: `cpu`, `cuda:0`, or the adapter's name.
    pub fn describe(&self) -> String {
        match self {
            Device::Candle(d) => match d.location() {
                candle_core::DeviceLocation::Cpu => "cpu".into(),
                candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
            },
            #[cfg(feature = "wgpu")]
            Device::Wgpu(d) => d.describe(),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl From<candle_core::Device> for Device {
    fn from(device: candle_core::Device) -> Self {
        Device::Candle(device)
    }
}

#[derive(Clone, Debug)]
enum Storage {
    Candle(CandleStorage),
    #[cfg(feature = "wgpu")]
    Wgpu(crate::backend::wgpu::WgpuTensor),
}

/// An f32 tensor on one backend's device.
#[derive(Clone, Debug)]
pub struct Tensor(Storage);

/// Applies a storage method to one tensor, keeping the backend.
macro_rules! unary {
    ($self:expr, $s:ident => $call:expr) => {
        Ok(Tensor(match &$self.0 {
            Storage::Candle($s) => Storage::Candle($call?),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu($s) => Storage::Wgpu($call?),
        }))
    };
}

/// Applies a storage method to two tensors of the same backend.
macro_rules! binary {
    ($a:expr, $b:expr, ($x:ident, $y:ident) => $call:expr) => {
        Ok(Tensor(match (&$a.0, &$b.0) {
            (Storage::Candle($x), Storage::Candle($y)) => Storage::Candle($call?),
            #[cfg(feature = "wgpu")]
            (Storage::Wgpu($x), Storage::Wgpu($y)) => Storage::Wgpu($call?),
            #[cfg(feature = "wgpu")]
            _ => return Err(Error::DeviceMismatch),
        }))
    };
}

impl Storage {
    fn candle(&self) -> Result<&CandleStorage> {
        match self {
            Storage::Candle(s) => Ok(s),
            #[cfg(feature = "wgpu")]
            _ => Err(Error::DeviceMismatch),
        }
    }

    #[cfg(feature = "wgpu")]
    fn wgpu(&self) -> Result<&crate::backend::wgpu::WgpuTensor> {
        match self {
            Storage::Wgpu(s) => Ok(s),
            _ => Err(Error::DeviceMismatch),
        }
    }
}

impl Tensor {
    pub fn dims(&self) -> &[usize] {
        match &self.0 {
            Storage::Candle(t) => t.dims(),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(t) => t.dims(),
        }
    }

    pub fn dim(&self, i: usize) -> Result<usize> {
        self.dims()
            .get(i)
            .copied()
            .ok_or_else(|| shape_error(format!("dimension {i} of a tensor of shape {:?}", self.dims())))
    }

    pub fn rank(&self) -> usize {
        self.dims().len()
    }

    pub fn elem_count(&self) -> usize {
        self.dims().iter().product()
    }

    pub fn dims4(&self) -> Result<(usize, usize, usize, usize)> {
        match *self.dims() {
            [n, c, h, w] => Ok((n, c, h, w)),
            ref dims => Err(shape_error(format!("expected [N, C, H, W], got {dims:?}"))),
        }
    }

    pub fn device(&self) -> Device {
        match &self.0 {
            Storage::Candle(t) => Device::Candle(t.0.device().clone()),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(t) => Device::Wgpu(t.device()),
        }
    }

    /// The elements, row-major, on the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.0 {
            Storage::Candle(t) => t.to_vec(),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(t) => t.to_vec(),
        }
    }

    /// [`Tensor::to_vec`] without blocking: the browser's GPU can only be read back this way.
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        match &self.0 {
            Storage::Candle(t) => t.to_vec(),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(t) => t.to_vec_async().await,
        }
    }

    /// [`Tensor::to_host`] without blocking.
    pub async fn to_host_async(&self) -> Result<candle_core::Tensor> {
        match &self.0 {
            Storage::Candle(_) => self.to_host(),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(t) => Ok(candle_core::Tensor::from_vec(
                t.to_vec_async().await?,
                t.dims(),
                &candle_core::Device::Cpu,
            )?),
        }
    }

    /// A candle CPU tensor with the same shape and elements.
    pub fn to_host(&self) -> Result<candle_core::Tensor> {
        match &self.0 {
            Storage::Candle(t) => Ok(t.0.to_device(&candle_core::Device::Cpu)?),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(t) => Ok(candle_core::Tensor::from_vec(
                t.to_vec()?,
                t.dims(),
                &candle_core::Device::Cpu,
            )?),
        }
    }

    /// The candle tensor when this one lives on a candle device.
    pub fn as_candle(&self) -> Option<&candle_core::Tensor> {
        match &self.0 {
            Storage::Candle(t) => Some(&t.0),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(_) => None,
        }
    }

    /// This tensor on `device` (a copy through the host between backends).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        match (&self.0, device) {
            (Storage::Candle(t), Device::Candle(d)) => Ok(Tensor(Storage::Candle(CandleStorage(t.0.to_device(d)?)))),
            #[allow(unreachable_patterns)]
            _ => device.tensor(&self.to_vec()?, self.dims()),
        }
    }

    pub fn reshape(&self, dims: &[usize]) -> Result<Tensor> {
        if dims.iter().product::<usize>() != self.elem_count() {
            return Err(shape_error(format!("cannot reshape {:?} to {dims:?}", self.dims())));
        }
        unary!(self, s => s.reshape(dims))
    }

    /// [N, ...] -> [N, product of the rest].
    pub fn flatten_from_1(&self) -> Result<Tensor> {
        let n = self.dim(0)?;
        self.reshape(&[n, self.elem_count() / n.max(1)])
    }

    /// Rows `start..start + len` of the first dimension.
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<Tensor> {
        if start + len > self.dim(0)? {
            return Err(shape_error(format!(
                "rows {start}..{} of a tensor of shape {:?}",
                start + len,
                self.dims()
            )));
        }
        unary!(self, s => s.narrow_rows(start, len))
    }

    /// Concatenation along the first dimension.
    pub fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| shape_error("nothing to concatenate".into()))?;
        if first.rank() == 0 || parts.iter().any(|p| p.dims().get(1..) != first.dims().get(1..)) {
            return Err(shape_error("concatenating tensors of different shapes".into()));
        }
        Ok(Tensor(match &first.0 {
            Storage::Candle(_) => {
                let storages = parts.iter().map(|p| p.0.candle()).collect::<Result<Vec<_>>>()?;
                Storage::Candle(CandleStorage::cat_rows(&storages)?)
            }
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(_) => {
                let storages = parts.iter().map(|p| p.0.wgpu()).collect::<Result<Vec<_>>>()?;
                Storage::Wgpu(crate::backend::wgpu::WgpuTensor::cat_rows(&storages)?)
            }
        }))
    }

    /// Slices `start..start + len` along `axis`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        if axis == 0 {
            return self.narrow_rows(start, len);
        }
        if self
            .dims()
            .get(axis)
            .is_none_or(|&d| start.checked_add(len).is_none_or(|end| end > d))
        {
            return Err(shape_error(format!(
                "slices {start}..{} along axis {axis} of a tensor of shape {:?}",
                start.saturating_add(len),
                self.dims()
            )));
        }
        unary!(self, s => s.narrow(axis, start, len))
    }

    /// Concatenation along `axis`; the parts agree on every other dimension.
    pub fn cat(parts: &[Tensor], axis: usize) -> Result<Tensor> {
        if axis == 0 {
            return Self::cat_rows(parts);
        }
        let first = parts
            .first()
            .ok_or_else(|| shape_error("nothing to concatenate".into()))?;
        let agree = |p: &Tensor| {
            p.rank() == first.rank()
                && p.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(k, (a, b))| k == axis || a == b)
        };
        if axis >= first.rank() || !parts.iter().all(agree) {
            let shapes: Vec<&[usize]> = parts.iter().map(Tensor::dims).collect();
            return Err(shape_error(format!(
                "concatenating shapes {shapes:?} along axis {axis}"
            )));
        }
        Ok(Tensor(match &first.0 {
            Storage::Candle(_) => {
                let storages = parts.iter().map(|p| p.0.candle()).collect::<Result<Vec<_>>>()?;
                Storage::Candle(CandleStorage::cat(&storages, axis)?)
            }
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(_) => {
                let storages = parts.iter().map(|p| p.0.wgpu()).collect::<Result<Vec<_>>>()?;
                Storage::Wgpu(crate::backend::wgpu::WgpuTensor::cat(&storages, axis)?)
            }
        }))
    }

    pub fn map(&self, op: Map) -> Result<Tensor> {
        unary!(self, s => s.map(op))
    }

    pub fn zip(&self, rhs: &Tensor, op: Zip) -> Result<Tensor> {
        if self.dims() != rhs.dims() {
            return Err(shape_error(format!(
                "{op:?} of shapes {:?} and {:?}",
                self.dims(),
                rhs.dims()
            )));
        }
        binary!(self, rhs, (a, b) => a.zip(b, op))
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip(rhs, Zip::Add)
    }

    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip(rhs, Zip::Sub)
    }

    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip(rhs, Zip::Mul)
    }

    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip(rhs, Zip::Div)
    }

    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.map(Map::Affine {
            mul: mul as f32,
            add: add as f32,
        })
    }

    pub fn fill_like(&self, value: f32) -> Result<Tensor> {
        self.map(Map::Fill { value })
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        self.fill_like(0.0)
    }

    pub fn ones_like(&self) -> Result<Tensor> {
        self.fill_like(1.0)
    }

    /// x * scale[c] + shift[c] for x [N, C, ...], with scale and shift [C] or [N, C].
    pub fn channel_affine(&self, scale: Option<&Tensor>, shift: Option<&Tensor>) -> Result<Tensor> {
        let c = match self.dims() {
            [_, c, ..] => *c,
            dims => return Err(shape_error(format!("per-channel map of a tensor of shape {dims:?}"))),
        };
        let n = self.dims()[0];
        for p in scale.iter().chain(shift.iter()) {
            if p.dims() != [c] && p.dims() != [n, c] {
                return Err(shape_error(format!(
                    "per-channel parameters of shape {:?} for a tensor of shape {:?}",
                    p.dims(),
                    self.dims()
                )));
            }
        }
        Ok(Tensor(match &self.0 {
            Storage::Candle(x) => Storage::Candle(x.channel_affine(
                scale.map(|t| t.0.candle()).transpose()?,
                shift.map(|t| t.0.candle()).transpose()?,
            )?),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(x) => Storage::Wgpu(x.channel_affine(
                scale.map(|t| t.0.wgpu()).transpose()?,
                shift.map(|t| t.0.wgpu()).transpose()?,
            )?),
        }))
    }

    /// `activation(x * scale[c] + shift[c])` for x [N, C, ...] and [C] parameters: a BatchNorm
    /// and the ReLU after it in one pass where the backend fuses them.
    pub fn channel_affine_activation(&self, scale: &Tensor, shift: &Tensor, activation: Activation) -> Result<Tensor> {
        self.check_channel_parameters(&[scale, shift])?;
        Ok(Tensor(match &self.0 {
            Storage::Candle(x) => {
                Storage::Candle(x.channel_affine_activation(scale.0.candle()?, shift.0.candle()?, activation)?)
            }
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(x) => {
                Storage::Wgpu(x.channel_affine_activation(scale.0.wgpu()?, shift.0.wgpu()?, activation)?)
            }
        }))
    }

    /// The input-VJP of [`Tensor::channel_affine_activation`] from its output (this tensor), for
    /// a ReLU or ReLU6, whose derivative the output gives.
    pub fn channel_affine_activation_vjp(
        &self,
        grad: &Tensor,
        scale: &Tensor,
        activation: Activation,
    ) -> Result<Tensor> {
        if !matches!(activation, Activation::Relu | Activation::Relu6) {
            return Err(Error::InvalidGraph(format!(
                "{activation:?}'s derivative cannot be read from its output"
            )));
        }
        self.check_channel_parameters(&[scale])?;
        if self.dims() != grad.dims() {
            return Err(shape_error(format!(
                "activation VJP of shapes {:?} and {:?}",
                self.dims(),
                grad.dims()
            )));
        }
        Ok(Tensor(match (&self.0, &grad.0) {
            (Storage::Candle(y), Storage::Candle(g)) => {
                Storage::Candle(y.channel_affine_activation_vjp(g, scale.0.candle()?, activation)?)
            }
            #[cfg(feature = "wgpu")]
            (Storage::Wgpu(y), Storage::Wgpu(g)) => {
                Storage::Wgpu(y.channel_affine_activation_vjp(g, scale.0.wgpu()?, activation)?)
            }
            #[cfg(feature = "wgpu")]
            _ => return Err(Error::DeviceMismatch),
        }))
    }

    /// [C] per-channel parameters for this [N, C, ...] tensor.
    fn check_channel_parameters(&self, parameters: &[&Tensor]) -> Result<()> {
        match self.dims() {
            [_, c, ..] if parameters.iter().all(|p| p.dims() == [*c]) => Ok(()),
            dims => Err(shape_error(format!(
                "per-channel parameters of shapes {:?} for a tensor of shape {dims:?}",
                parameters.iter().map(|p| p.dims()).collect::<Vec<_>>()
            ))),
        }
    }

    pub fn reduce(&self, op: Reduce) -> Result<Tensor> {
        let rank_ok = match op {
            Reduce::MeanHw => self.rank() == 4,
            Reduce::SumChannels => self.rank() >= 2,
            Reduce::SumPerSample => self.rank() >= 1,
        };
        if !rank_ok {
            return Err(shape_error(format!("{op:?} of a tensor of shape {:?}", self.dims())));
        }
        unary!(self, s => s.reduce(op))
    }

    /// `f` applied to this tensor seen as a matrix of rows [product of the leading dims, last
    /// dim], its result given back the leading dims.
    pub fn over_rows(&self, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let dims = self.dims();
        if dims.len() == 2 {
            return f(self);
        }
        let (&last, lead) = dims
            .split_last()
            .ok_or_else(|| shape_error("rows of a scalar".into()))?;
        let y = f(&self.reshape(&[lead.iter().product(), last])?)?;
        let out_dims = [lead, &[y.dims()[1]]].concat();
        y.reshape(&out_dims)
    }

    /// [..., K] x [K, N] -> [..., N], or x [N, K]^T when `rhs_transposed`: a matrix applied
    /// along the last dimension.
    pub fn matmul_last_axis(&self, rhs: &Tensor, rhs_transposed: bool) -> Result<Tensor> {
        self.over_rows(|rows| rows.matmul(rhs, rhs_transposed))
    }

    /// [M, K] x [K, N], or x [N, K]^T when `rhs_transposed`.
    pub fn matmul(&self, rhs: &Tensor, rhs_transposed: bool) -> Result<Tensor> {
        let inner_ok = match (self.dims(), rhs.dims()) {
            ([_, k], [a, b]) => *k == if rhs_transposed { *b } else { *a },
            _ => false,
        };
        if !inner_ok {
            return Err(shape_error(format!(
                "matrix product of {:?} and {:?}{}",
                self.dims(),
                rhs.dims(),
                if rhs_transposed { "^T" } else { "" }
            )));
        }
        binary!(self, rhs, (a, b) => a.matmul(b, rhs_transposed))
    }

    /// [B, M, K] x [B, K, N] -> [B, M, N], or x [B, N, K]^T when `rhs_transposed`.
    pub fn batched_matmul(&self, rhs: &Tensor, rhs_transposed: bool) -> Result<Tensor> {
        let fits = match (self.dims(), rhs.dims()) {
            ([b, _, k], [b2, x, y]) => b == b2 && k == if rhs_transposed { y } else { x },
            _ => false,
        };
        if !fits {
            return Err(shape_error(format!(
                "batched matrix product of {:?} and {:?}{}",
                self.dims(),
                rhs.dims(),
                if rhs_transposed { "^T" } else { "" }
            )));
        }
        binary!(self, rhs, (a, b) => a.batched_matmul(b, rhs_transposed))
    }

    pub fn conv2d(&self, kernel: &Tensor, geometry: &WindowGeometry) -> Result<Tensor> {
        let (_, c, h, w) = self.dims4()?;
        if c != kernel.dim(1)? * geometry.groups {
            return Err(Error::InvalidGraph(format!(
                "convolution expects {} input channels, got {c}",
                kernel.dim(1)? * geometry.groups
            )));
        }
        if geometry.output_hw((h, w)).is_none() {
            return Err(Error::InputTooSmall {
                height: h,
                width: w,
                min: geometry.kernel.0.max(geometry.kernel.1),
            });
        }
        binary!(self, kernel, (x, k) => x.conv2d(k, geometry))
    }

    pub fn conv2d_transposed(
        &self,
        kernel: &Tensor,
        geometry: &WindowGeometry,
        input_hw: (usize, usize),
    ) -> Result<Tensor> {
        self.dims4()?;
        binary!(self, kernel, (g, k) => g.conv2d_transposed(k, geometry, input_hw))
    }

    pub fn max_pool(&self, window: &PoolWindow) -> Result<Tensor> {
        let (_, _, h, w) = self.dims4()?;
        if window.output_hw((h, w)).is_none() {
            return Err(Error::InputTooSmall {
                height: h,
                width: w,
                min: window.kernel.0.max(window.kernel.1),
            });
        }
        unary!(self, s => s.max_pool(window))
    }

    pub fn max_pool_vjp(&self, grad: &Tensor, window: &PoolWindow) -> Result<Tensor> {
        binary!(self, grad, (x, g) => x.max_pool_vjp(g, window))
    }

    pub fn window_mean(&self, bins: &WindowBins) -> Result<Tensor> {
        let (_, _, h, w) = self.dims4()?;
        if (h, w) != bins.input_hw {
            return Err(shape_error(format!(
                "pooling windows for {:?}, input {h}x{w}",
                bins.input_hw
            )));
        }
        unary!(self, s => s.window_mean(bins))
    }

    pub fn window_mean_vjp(&self, bins: &WindowBins) -> Result<Tensor> {
        self.dims4()?;
        unary!(self, s => s.window_mean_vjp(bins))
    }

    /// The dimensions reordered: output dimension k is input dimension `order[k]`.
    pub fn permute(&self, order: &[usize]) -> Result<Tensor> {
        let mut seen = order.to_vec();
        seen.sort_unstable();
        if order.len() != self.rank() || seen.iter().enumerate().any(|(i, &k)| i != k) {
            return Err(shape_error(format!(
                "permutation {order:?} of a tensor of shape {:?}",
                self.dims()
            )));
        }
        unary!(self, s => s.permute(order))
    }

    /// (x - mean) / sqrt(var + eps) along `axis`, the biased variance (LayerNorm, GroupNorm).
    pub fn normalize(&self, axis: usize, eps: f32) -> Result<Tensor> {
        self.check_axis(axis)?;
        unary!(self, s => s.normalize(axis, eps))
    }

    /// The input-VJP of [`Tensor::normalize`] at this input, through the standard deviation
    /// or with it held constant.
    pub fn normalize_vjp(&self, grad: &Tensor, axis: usize, eps: f32, std: StdTerm) -> Result<Tensor> {
        self.check_axis(axis)?;
        if grad.dims() != self.dims() {
            return Err(shape_error(format!(
                "normalisation gradient {:?} for an input of shape {:?}",
                grad.dims(),
                self.dims()
            )));
        }
        binary!(self, grad, (x, g) => x.normalize_vjp(g, axis, eps, std))
    }

    /// exp(x - max) / sum(exp(x - max)) along `axis` (PyTorch's `softmax(dim)`).
    pub fn softmax(&self, axis: usize) -> Result<Tensor> {
        self.check_axis(axis)?;
        unary!(self, s => s.softmax(axis))
    }

    /// The input-VJP of [`Tensor::softmax`], called on its output.
    pub fn softmax_vjp(&self, grad: &Tensor, axis: usize) -> Result<Tensor> {
        self.check_axis(axis)?;
        if grad.dims() != self.dims() {
            return Err(shape_error(format!(
                "softmax gradient {:?} for an output of shape {:?}",
                grad.dims(),
                self.dims()
            )));
        }
        binary!(self, grad, (s, g) => s.softmax_vjp(g, axis))
    }

    fn check_axis(&self, axis: usize) -> Result<()> {
        if axis >= self.rank() || self.dims()[axis] == 0 {
            return Err(shape_error(format!(
                "axis {axis} of a tensor of shape {:?}",
                self.dims()
            )));
        }
        Ok(())
    }
}

impl Tensor {
    /// Wraps a candle tensor, on its own device, as f32 and contiguous.
    pub fn from_candle(t: candle_core::Tensor) -> Result<Tensor> {
        Ok(Tensor(Storage::Candle(CandleStorage::new(t)?)))
    }
}

fn shape_error(message: String) -> Error {
    Error::Shape(message)
}

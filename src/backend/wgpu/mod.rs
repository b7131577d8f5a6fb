//! The wgpu backend: our own WGSL compute kernels over f32 storage buffers.
//!
//! Every operation records its commands into the device's pending batch (batch.rs) without
//! waiting; the batch is submitted when a readback needs it or when it is full, and results
//! stay on the device until `to_vec` maps a staging copy. wgpu reports validation and
//! out-of-memory errors asynchronously, so the device keeps the first uncaptured error and
//! the next readback returns it as [`Error::Device`] instead of letting wgpu's default
//! handler panic.

mod batch;
mod conv;
mod elementwise;
mod layout;
mod matmul;
mod pool;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};

use ::wgpu::util::DeviceExt;

use crate::backend::{BackendStorage, Map, Reduce, WindowBins, Zip};
use crate::backend::{PoolWindow, WindowGeometry};
use crate::error::{Error, Result};
use batch::Batch;

/// Threads per workgroup of the 1-D kernels; WebGPU's default limit is 256.
const LINEAR_WORKGROUP: u32 = 256;

/// A WGSL entry point with the binding convention all our kernels share: binding 0 is the
/// uniform parameter block, bindings `1..=inputs` are read-only storage buffers, and binding
/// `inputs + 1` is the read-write output. One convention lets one helper build every layout.
pub(crate) struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
    pub inputs: u32,
}

struct Pipeline {
    pipeline: ::wgpu::ComputePipeline,
    layout: ::wgpu::BindGroupLayout,
}

struct DeviceContext {
    device: ::wgpu::Device,
    queue: ::wgpu::Queue,
    info: ::wgpu::AdapterInfo,
    limits: ::wgpu::Limits,
    pipelines: Mutex<HashMap<&'static str, Arc<Pipeline>>>,
    /// Commands recorded but not yet submitted. Held locked while recording and submitting,
    /// so that batches reach the queue in the order their commands were recorded.
    batch: Mutex<Option<Batch>>,
    /// The first error wgpu raised outside an error scope, waiting for the next readback.
    uncaptured: Arc<Mutex<Option<String>>>,
}

/// A wgpu adapter's device and queue, with the compiled pipelines. Cheap to clone.
#[derive(Clone)]
pub struct WgpuDevice(Arc<DeviceContext>);

/// A dense row-major f32 tensor in storage buffers of one [`WgpuDevice`].
///
/// A tensor is one buffer unless it exceeds the device's largest storage buffer (a browser
/// may grant only 128 MiB, less than VGG's first classifier weight): then it is split into
/// pieces of whole rows, one buffer each. Element-wise operations run piece by piece and
/// matrix products piece by piece of the right-hand side, so layers and LRP rules work on
/// split weights unchanged; the other kernels need their operands whole and say so.
#[derive(Clone)]
pub struct WgpuTensor {
    pieces: Arc<[Piece]>,
    dims: Vec<usize>,
    device: WgpuDevice,
}

/// One buffer of a tensor: the next `len` elements in row-major order.
#[derive(Clone)]
pub(crate) struct Piece {
    pub buffer: Arc<::wgpu::Buffer>,
    pub len: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned cache or error slot is still consistent: every writer stores whole values.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WgpuDevice {
    /// The default (high-performance) adapter with its own limits, blocking until it is ready.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// The high-performance adapter among `backends` (default: the environment's choice).
    async fn adapter(backends: Option<::wgpu::Backends>) -> Result<::wgpu::Adapter> {
        let mut descriptor = ::wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(backends) = backends {
            descriptor.backends = backends;
        }
        ::wgpu::Instance::new(descriptor)
            .request_adapter(&::wgpu::RequestAdapterOptions {
                power_preference: ::wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Device(format!("no wgpu adapter: {e}")))
    }

    pub async fn new_async() -> Result<Self> {
        Self::open(None).await
    }

    /// The default adapter, with its storage buffers capped at `bytes` (never above what the
    /// adapter allows): runs a model as a device with less memory per buffer would, such as
    /// a browser that grants only WebGPU's default 128 MiB. Blocks until it is ready.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_max_buffer_bytes(bytes: u64) -> Result<Self> {
        pollster::block_on(Self::open(Some(bytes)))
    }

    async fn open(max_buffer_bytes: Option<u64>) -> Result<Self> {
        // Instance::new panics when the build enabled no backend for this platform.
        if ::wgpu::Instance::enabled_backend_features().is_empty() {
            return Err(Error::Device(
                "this build enables no wgpu backend for this platform".into(),
            ));
        }
        // Probing GL opens EGL, which prints errors on headless machines: it is asked only when
        // no Vulkan, Metal or DX12 adapter exists, unless WGPU_BACKEND chooses.
        let chosen = std::env::var_os("WGPU_BACKEND").is_some();
        let adapter = match Self::adapter(if chosen { None } else { Some(::wgpu::Backends::PRIMARY) }).await {
            Err(_) if !chosen => Self::adapter(None).await,
            found => found,
        }?;
        let info = adapter.get_info();
        // The adapter's own limits rather than WebGPU's defaults, so native drivers allow
        // storage buffers far beyond 128 MiB.
        let mut limits = adapter.limits();
        if let Some(cap) = max_buffer_bytes {
            limits.max_buffer_size = limits.max_buffer_size.min(cap);
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(cap);
        }
        let (device, queue) = adapter
            .request_device(&::wgpu::DeviceDescriptor {
                label: Some("candle-xai"),
                required_features: ::wgpu::Features::empty(),
                required_limits: limits,
                memory_hints: ::wgpu::MemoryHints::Performance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Device(format!("cannot open {}: {e}", info.name)))?;
        let uncaptured = Arc::new(Mutex::new(None));
        let slot = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: ::wgpu::Error| {
            let mut slot = lock(&slot);
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        // A lost device (a driver reset, the browser reclaiming the GPU) fails the next
        // readback with the reason, like any other error.
        let slot = uncaptured.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = lock(&slot);
            if slot.is_none() {
                *slot = Some(format!("the GPU device was lost ({reason:?}): {message}"));
            }
        });
        let limits = device.limits();
        Ok(WgpuDevice(Arc::new(DeviceContext {
            device,
            queue,
            info,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            batch: Mutex::new(None),
            uncaptured,
        })))
    }

    /// Loses the device on purpose, as a driver reset would (WebGL's `loseContext` for
    /// WebGPU): every later readback fails with [`Error::Device`]. For testing fallbacks.
    pub fn lose_for_testing(&self) {
        self.0.device.destroy();
    }

    pub fn describe(&self) -> String {
        let info = &self.0.info;
        // Browsers hide the adapter's name from wgpu.
        let name = if info.name.is_empty() {
            "unnamed adapter"
        } else {
            &info.name
        };
        format!("{name} ({:?}, {:?})", info.backend, info.device_type)
    }

    /// `data` (row-major, shaped `dims`) on this device, split into whole rows across
    /// several buffers when it exceeds the largest one.
    pub fn upload(&self, data: &[f32], dims: &[usize]) -> Result<WgpuTensor> {
        let len = elem_count(dims);
        if len != data.len() {
            return Err(Error::Shape(format!("{} values for shape {dims:?}", data.len())));
        }
        let mut start = 0;
        let pieces = self
            .split(dims)?
            .into_iter()
            .map(|len| {
                let values = &data[start..start + len];
                start += len;
                // wgpu cannot bind an empty buffer; empty tensors keep one unused element.
                let contents: &[u8] = if values.is_empty() {
                    &[0; 4]
                } else {
                    bytemuck::cast_slice(values)
                };
                let buffer = self.0.device.create_buffer_init(&::wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents,
                    usage: Self::usage(),
                });
                Piece {
                    buffer: Arc::new(buffer),
                    len,
                }
            })
            .collect();
        Ok(WgpuTensor {
            pieces,
            dims: dims.to_vec(),
            device: self.clone(),
        })
    }

    fn usage() -> ::wgpu::BufferUsages {
        ::wgpu::BufferUsages::STORAGE | ::wgpu::BufferUsages::COPY_SRC | ::wgpu::BufferUsages::COPY_DST
    }

    fn same(&self, other: &WgpuDevice) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The most f32 elements one tensor may hold on this device.
    pub fn max_tensor_len(&self) -> usize {
        let bytes = self
            .0
            .limits
            .max_storage_buffer_binding_size
            .min(self.0.limits.max_buffer_size);
        usize::try_from(bytes / 4).unwrap_or(usize::MAX)
    }

    /// Too large a buffer would otherwise only surface as an asynchronous validation error.
    fn check_size(&self, len: usize) -> Result<()> {
        if len > self.max_tensor_len() {
            let bytes = (len as u64).saturating_mul(4);
            return Err(self.over_limit(format!("a tensor of {len} f32 ({bytes} bytes)")));
        }
        Ok(())
    }

    fn over_limit(&self, what: String) -> Error {
        let limit = self.max_tensor_len() as u64 * 4;
        Error::Device(format!(
            "{what} exceeds the device's storage buffer limit of {limit} bytes"
        ))
    }

    /// How a tensor of `dims` is laid out in buffers: the element count of each piece. One
    /// piece when it fits a buffer, else as many whole rows (along the first dimension) per
    /// piece as fit. A row larger than a buffer cannot be split this way and is refused.
    fn split(&self, dims: &[usize]) -> Result<Vec<usize>> {
        let len = elem_count(dims);
        let max = self.max_tensor_len();
        if len <= max {
            return Ok(vec![len]);
        }
        let row = match dims {
            [_, rest @ ..] if !rest.is_empty() => elem_count(rest),
            _ => return self.check_size(len).map(|()| vec![len]),
        };
        if row > max {
            let bytes = (row as u64).saturating_mul(4);
            return Err(self.over_limit(format!(
                "a tensor of shape {dims:?} is split across buffers by whole rows only, and one row \
                 of {row} f32 ({bytes} bytes)"
            )));
        }
        let per_piece = (max / row) * row;
        Ok((0..len)
            .step_by(per_piece)
            .map(|start| per_piece.min(len - start))
            .collect())
    }

    /// A zero-filled tensor (wgpu clears new buffers) for a kernel to write, in one buffer.
    pub(crate) fn alloc(&self, dims: &[usize]) -> Result<WgpuTensor> {
        let len = elem_count(dims);
        self.check_size(len)?;
        self.alloc_pieces(dims, &[len])
    }

    /// A zero-filled tensor whose pieces hold `lens` elements (which sum to the shape's
    /// count and each fit a buffer).
    pub(crate) fn alloc_pieces(&self, dims: &[usize], lens: &[usize]) -> Result<WgpuTensor> {
        debug_assert_eq!(lens.iter().sum::<usize>(), elem_count(dims));
        let pieces = lens
            .iter()
            .map(|&len| {
                self.check_size(len)?;
                let buffer = self.0.device.create_buffer(&::wgpu::BufferDescriptor {
                    label: None,
                    size: (len.max(1) * 4) as u64,
                    usage: Self::usage(),
                    mapped_at_creation: false,
                });
                Ok(Piece {
                    buffer: Arc::new(buffer),
                    len,
                })
            })
            .collect::<Result<_>>()?;
        Ok(WgpuTensor {
            pieces,
            dims: dims.to_vec(),
            device: self.clone(),
        })
    }

    /// A small read-only table (bin bounds, divisors) for one dispatch.
    pub(crate) fn table<T: bytemuck::Pod>(&self, data: &[T]) -> ::wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.0.device.create_buffer_init(&::wgpu::util::BufferInitDescriptor {
            label: None,
            contents: if bytes.is_empty() { &[0; 4] } else { bytes },
            usage: ::wgpu::BufferUsages::STORAGE,
        })
    }

    fn pipeline(&self, kernel: &Kernel) -> Arc<Pipeline> {
        let mut cache = lock(&self.0.pipelines);
        if let Some(p) = cache.get(kernel.name) {
            return p.clone();
        }
        let device = &self.0.device;
        let module = device.create_shader_module(::wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: ::wgpu::ShaderSource::Wgsl(kernel.source.into()),
        });
        let storage = |binding: u32, read_only: bool| ::wgpu::BindGroupLayoutEntry {
            binding,
            visibility: ::wgpu::ShaderStages::COMPUTE,
            ty: ::wgpu::BindingType::Buffer {
                ty: ::wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![::wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: ::wgpu::ShaderStages::COMPUTE,
            ty: ::wgpu::BindingType::Buffer {
                ty: ::wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        entries.extend((1..=kernel.inputs).map(|b| storage(b, true)));
        entries.push(storage(kernel.inputs + 1, false));
        let layout = device.create_bind_group_layout(&::wgpu::BindGroupLayoutDescriptor {
            label: Some(kernel.name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&::wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&::wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let p = Arc::new(Pipeline { pipeline, layout });
        cache.insert(kernel.name, p.clone());
        p
    }

    /// Records one dispatch of `kernel` into the pending batch; does not wait for it.
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        inputs: &[&::wgpu::Buffer],
        output: &::wgpu::Buffer,
        workgroups: [u32; 3],
    ) -> Result<()> {
        debug_assert_eq!(inputs.len(), kernel.inputs as usize);
        if workgroups.contains(&0) {
            return Ok(());
        }
        let max = self.0.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&n| n > max) {
            return Err(Error::Device(format!(
                "{} needs {workgroups:?} workgroups, over the device's {max} per dimension",
                kernel.name
            )));
        }
        let p = self.pipeline(kernel);
        self.record(|batch| {
            let mut entries = vec![::wgpu::BindGroupEntry {
                binding: 0,
                resource: ::wgpu::BindingResource::Buffer(batch.params(bytemuck::bytes_of(params))),
            }];
            for (i, b) in inputs.iter().chain(std::iter::once(&output)).enumerate() {
                entries.push(::wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                });
            }
            let bind_group = self.0.device.create_bind_group(&::wgpu::BindGroupDescriptor {
                label: Some(kernel.name),
                layout: &p.layout,
                entries: &entries,
            });
            let mut pass = batch.encoder.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                label: Some(kernel.name),
                timestamp_writes: None,
            });
            pass.set_pipeline(&p.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        });
        Ok(())
    }

    /// Records one command into the pending batch, submitting the batch once it is full.
    fn record(&self, command: impl FnOnce(&mut Batch)) {
        let mut pending = lock(&self.0.batch);
        let batch = pending.get_or_insert_with(|| Batch::new(&self.0.device, &self.0.limits));
        command(batch);
        if batch.count() {
            if let Some(full) = pending.take() {
                full.submit(&self.0.queue);
            }
        }
    }

    /// Submits the pending batch, if any.
    fn flush(&self) {
        if let Some(batch) = lock(&self.0.batch).take() {
            batch.submit(&self.0.queue);
        }
    }

    /// Records `last` after everything pending and submits it all.
    fn submit_with(&self, last: impl FnOnce(&mut ::wgpu::CommandEncoder)) {
        let mut pending = lock(&self.0.batch);
        match pending.take() {
            Some(mut batch) => {
                last(&mut batch.encoder);
                batch.submit(&self.0.queue);
            }
            None => {
                let mut encoder = self.0.device.create_command_encoder(&Default::default());
                last(&mut encoder);
                self.0.queue.submit([encoder.finish()]);
            }
        }
    }

    /// Workgroups for `len` threads of a 1-D kernel. Past 65535 workgroups the count folds
    /// into y; the kernels rebuild the linear index from `num_workgroups` and skip the tail.
    pub(crate) fn linear_grid(&self, len: usize) -> Result<[u32; 3]> {
        Self::fold(len.div_ceil(LINEAR_WORKGROUP as usize))
    }

    /// `groups` workgroups of a kernel whose workgroup handles one row, folded like
    /// [`Self::linear_grid`].
    pub(crate) fn fold(groups: usize) -> Result<[u32; 3]> {
        const MAX: usize = 65535;
        let x = groups.min(MAX);
        let y = if x == 0 { 0 } else { groups.div_ceil(x) };
        if y > MAX {
            return Err(Error::Device(format!(
                "{groups} workgroups are too many for one dispatch"
            )));
        }
        Ok([x as u32, y as u32, 1])
    }

    /// Resolves once the work submitted so far has finished; returns the first error it raised.
    pub async fn settle(&self) -> Result<()> {
        self.flush();
        let (done, deliver) = Callback::new();
        self.0.queue.on_submitted_work_done(move || deliver(()));
        self.poll_natively()?;
        done.await;
        self.take_error()
    }

    /// Natively, wgpu runs callbacks only inside `poll`; in the browser the event loop runs
    /// them and only the await waits.
    fn poll_natively(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.0
            .device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("waiting for the device: {e}")))?;
        Ok(())
    }

    fn take_error(&self) -> Result<()> {
        match lock(&self.0.uncaptured).take() {
            Some(e) => Err(Error::Device(e)),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl fmt::Debug for WgpuTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgpuTensor")
            .field("dims", &self.dims)
            .field("device", &self.device)
            .finish()
    }
}

/// A future that resolves with the value a wgpu callback (`map_async`,
/// `on_submitted_work_done`) delivers, without any executor-specific channel.
struct Callback<T>(Arc<Mutex<CallbackState<T>>>);

struct CallbackState<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

impl<T: 'static> Callback<T> {
    /// The future, and the function to hand wgpu as its callback.
    fn new() -> (Self, impl FnOnce(T) + 'static) {
        let state = Arc::new(Mutex::new(CallbackState {
            value: None,
            waker: None,
        }));
        let sender = state.clone();
        let deliver = move |value: T| {
            let mut s = lock(&sender);
            s.value = Some(value);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        };
        (Callback(state), deliver)
    }
}

impl<T> Future for Callback<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<T> {
        let mut state = lock(&self.0);
        match state.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The element count, saturated so that absurd shapes fail the size check instead of wrapping.
pub(crate) fn elem_count(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX)
}

impl WgpuTensor {
    pub fn device(&self) -> WgpuDevice {
        self.device.clone()
    }

    /// The tensor's one buffer, for the kernels that need their operands whole.
    pub(crate) fn buffer(&self) -> Result<&::wgpu::Buffer> {
        match &*self.pieces {
            [one] => Ok(&one.buffer),
            pieces => Err(Error::Device(format!(
                "this operation needs its operand of shape {:?} in one buffer, but it is split \
                 across {} to fit the device's storage buffer limit of {} bytes",
                self.dims,
                pieces.len(),
                self.device.max_tensor_len() as u64 * 4
            ))),
        }
    }

    pub(crate) fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The element count of each piece.
    pub(crate) fn piece_lens(&self) -> Vec<usize> {
        self.pieces.iter().map(|p| p.len).collect()
    }

    pub(crate) fn len(&self) -> usize {
        elem_count(&self.dims)
    }

    /// Fails unless `other` lives on this tensor's device: buffers cannot cross devices.
    pub(crate) fn check_device(&self, other: &WgpuTensor) -> Result<()> {
        if self.device.same(&other.device) {
            Ok(())
        } else {
            Err(Error::Device(format!(
                "tensors on two different devices ({:?})",
                self.device
            )))
        }
    }

    /// Copies the elements to the host. Natively this blocks inside `device.poll`; in the
    /// browser the map callback fires from the event loop, so only the await waits.
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        let ctx = &self.device.0;
        let len = self.len();
        if len == 0 {
            self.device.take_error()?;
            return Ok(Vec::new());
        }
        // The pending batch is submitted inside these scopes, so its errors come back here.
        let validation = ctx.device.push_error_scope(::wgpu::ErrorFilter::Validation);
        let oom = ctx.device.push_error_scope(::wgpu::ErrorFilter::OutOfMemory);
        // One staging buffer per piece: a staging buffer is bounded like any other.
        let staging: Vec<::wgpu::Buffer> = self
            .pieces
            .iter()
            .map(|piece| {
                ctx.device.create_buffer(&::wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: (piece.len.max(1) * 4) as u64,
                    usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        // After everything recorded so far, this tensor's producers among it.
        self.device.submit_with(|encoder| {
            for (piece, staging) in self.pieces.iter().zip(&staging) {
                if piece.len > 0 {
                    encoder.copy_buffer_to_buffer(&piece.buffer, 0, staging, 0, (piece.len * 4) as u64);
                }
            }
        });
        let mapped: Vec<_> = staging
            .iter()
            .map(|staging| {
                let (mapped, deliver) = Callback::new();
                staging.map_async(::wgpu::MapMode::Read, .., deliver);
                mapped
            })
            .collect();
        let oom = oom.pop().await;
        let validation = validation.pop().await;
        // An error raised outside the scopes (a kernel that failed to compile, a full batch
        // submitted earlier) is the older and more telling one; both are consumed.
        self.device.take_error()?;
        if let Some(e) = oom.or(validation) {
            return Err(Error::Device(format!(
                "reading a tensor of shape {:?} back: {e}",
                self.dims
            )));
        }
        self.device.poll_natively()?;
        for mapped in mapped {
            mapped
                .await
                .map_err(|e| Error::Device(format!("mapping a tensor of shape {:?}: {e}", self.dims)))?;
        }
        // A kernel of this or an earlier operation may have failed after submission.
        self.device.take_error()?;
        let mut data = Vec::with_capacity(len);
        for (piece, staging) in self.pieces.iter().zip(&staging) {
            {
                let view = staging
                    .get_mapped_range(..)
                    .map_err(|e| Error::Device(format!("reading a mapped buffer: {e}")))?;
                // The mapping need not be 4-byte aligned on the host, so copy rather than cast.
                data.extend(bytemuck::pod_collect_to_vec::<u8, f32>(&view[..piece.len * 4]));
            }
            staging.unmap();
        }
        Ok(data)
    }

    /// Each piece with the index of its first element.
    fn spans(&self) -> Vec<(usize, &Piece)> {
        let mut start = 0;
        self.pieces
            .iter()
            .map(|p| {
                start += p.len;
                (start - p.len, p)
            })
            .collect()
    }

    /// The span holding element `at`: the last one that starts at or before it.
    fn holding<'a>(spans: &[(usize, &'a Piece)], at: usize) -> (usize, &'a Piece) {
        spans[spans.partition_point(|(start, _)| *start <= at).saturating_sub(1)]
    }

    /// Records copies of `len` elements from `src` at element `from` to `dst` at element
    /// `to`, across however the two are split into pieces.
    fn copy_elements(src: &WgpuTensor, from: usize, dst: &WgpuTensor, to: usize, len: usize) {
        let (src_spans, dst_spans) = (src.spans(), dst.spans());
        src.device.record(|batch| {
            let mut done = 0;
            while done < len {
                let (s, d) = (from + done, to + done);
                let (s0, sp) = Self::holding(&src_spans, s);
                let (d0, dp) = Self::holding(&dst_spans, d);
                let n = (len - done).min(s0 + sp.len - s).min(d0 + dp.len - d);
                batch.encoder.copy_buffer_to_buffer(
                    &sp.buffer,
                    ((s - s0) * 4) as u64,
                    &dp.buffer,
                    ((d - d0) * 4) as u64,
                    (n * 4) as u64,
                );
                done += n;
            }
        });
    }
}

impl BackendStorage for WgpuTensor {
    fn dims(&self) -> &[usize] {
        &self.dims
    }

    fn to_vec(&self) -> Result<Vec<f32>> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            pollster::block_on(self.to_vec_async())
        }
        #[cfg(target_arch = "wasm32")]
        {
            Err(Error::Device(
                "blocking readback is impossible in the browser; use to_vec_async".into(),
            ))
        }
    }

    fn reshape(&self, dims: &[usize]) -> Result<Self> {
        if elem_count(dims) != self.len() {
            return Err(Error::Shape(format!("cannot reshape {:?} to {dims:?}", self.dims)));
        }
        Ok(WgpuTensor {
            pieces: self.pieces.clone(),
            dims: dims.to_vec(),
            device: self.device.clone(),
        })
    }

    fn narrow_rows(&self, start: usize, len: usize) -> Result<Self> {
        let rows = self.dims.first().copied().unwrap_or(0);
        if self.dims.is_empty() || start.checked_add(len).is_none_or(|end| end > rows) {
            return Err(Error::Shape(format!(
                "rows {start}..{} of shape {:?}",
                start + len,
                self.dims
            )));
        }
        let row = elem_count(&self.dims[1..]);
        let mut dims = self.dims.clone();
        dims[0] = len;
        let out = self.device.alloc(&dims)?;
        Self::copy_elements(self, start * row, &out, 0, len * row);
        Ok(out)
    }

    fn cat_rows(parts: &[&Self]) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Shape("concatenation of no tensors".into()))?;
        let tail = first
            .dims
            .get(1..)
            .ok_or_else(|| Error::Shape("concatenation of scalars".into()))?;
        let mut rows = 0;
        for p in parts {
            first.check_device(p)?;
            if p.dims.is_empty() || p.dims[1..] != *tail {
                return Err(Error::Shape(format!(
                    "cannot concatenate {:?} and {:?}",
                    first.dims, p.dims
                )));
            }
            rows += p.dims[0];
        }
        let mut dims = first.dims.clone();
        dims[0] = rows;
        let out = first.device.alloc(&dims)?;
        let mut offset = 0;
        for p in parts {
            Self::copy_elements(p, 0, &out, offset, p.len());
            offset += p.len();
        }
        Ok(out)
    }

    fn map(&self, op: Map) -> Result<Self> {
        elementwise::map(self, op)
    }

    fn zip(&self, rhs: &Self, op: Zip) -> Result<Self> {
        elementwise::zip(self, rhs, op)
    }

    fn channel_affine(&self, scale: Option<&Self>, shift: Option<&Self>) -> Result<Self> {
        elementwise::channel_affine(self, scale, shift)
    }

    fn reduce(&self, op: Reduce) -> Result<Self> {
        elementwise::reduce(self, op)
    }

    fn matmul(&self, rhs: &Self, rhs_transposed: bool) -> Result<Self> {
        matmul::matmul(self, rhs, rhs_transposed)
    }

    fn batched_matmul(&self, rhs: &Self, rhs_transposed: bool) -> Result<Self> {
        matmul::batched_matmul(self, rhs, rhs_transposed)
    }

    fn conv2d(&self, kernel: &Self, geometry: &WindowGeometry) -> Result<Self> {
        conv::conv2d(self, kernel, geometry)
    }

    fn conv2d_transposed(&self, kernel: &Self, geometry: &WindowGeometry, input_hw: (usize, usize)) -> Result<Self> {
        conv::conv2d_transposed(self, kernel, geometry, input_hw)
    }

    fn max_pool(&self, window: &PoolWindow) -> Result<Self> {
        pool::max_pool(self, window)
    }

    fn max_pool_vjp(&self, grad: &Self, window: &PoolWindow) -> Result<Self> {
        pool::max_pool_vjp(self, grad, window)
    }

    fn window_mean(&self, bins: &WindowBins) -> Result<Self> {
        pool::window_mean(self, bins)
    }

    fn window_mean_vjp(&self, bins: &WindowBins) -> Result<Self> {
        pool::window_mean_vjp(self, bins)
    }

    fn permute(&self, order: &[usize]) -> Result<Self> {
        layout::permute(self, order)
    }

    fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        layout::narrow(self, axis, start, len)
    }

    fn cat(parts: &[&Self], axis: usize) -> Result<Self> {
        layout::cat(parts, axis)
    }

    fn normalize(&self, axis: usize, eps: f32) -> Result<Self> {
        layout::normalize(self, axis, eps)
    }

    fn normalize_vjp(&self, grad: &Self, axis: usize, eps: f32, std: crate::backend::StdTerm) -> Result<Self> {
        layout::normalize_vjp(self, grad, axis, eps, std)
    }

    fn softmax(&self, axis: usize) -> Result<Self> {
        layout::softmax(self, axis)
    }

    fn softmax_vjp(&self, grad: &Self, axis: usize) -> Result<Self> {
        layout::softmax_vjp(self, grad, axis)
    }
}

/// Converts a size to the u32 the kernels index with; `check_size` keeps element counts far
/// below this, so only absurd geometry (a huge kernel or stride) can fail here.
pub(crate) fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Shape(format!("{what} = {n} does not fit the kernels' 32-bit indices")))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// wgpu's default handler would panic on a broken kernel; ours must surface an error at
    /// the next readback and leave the device usable. Its own device, so that the error
    /// cannot reach another test's readback.
    #[test]
    fn kernel_errors_come_back_as_device_errors() {
        let device = WgpuDevice::new().expect("a wgpu adapter (lavapipe is enough)");
        const BROKEN: Kernel = Kernel {
            name: "broken",
            source: "fn main( {",
            entry: "main",
            inputs: 1,
        };
        let x = device.upload(&[1.0, 2.0], &[2]).unwrap();
        let y = device.alloc(&[2]).unwrap();
        let params = [0u32; 4];
        device
            .dispatch(&BROKEN, &params, &[x.buffer().unwrap()], y.buffer().unwrap(), [1, 1, 1])
            .unwrap();
        let err = y.to_vec().unwrap_err();
        assert!(matches!(err, Error::Device(_)), "{err}");
        assert_eq!(x.map(Map::Sqr).unwrap().to_vec().unwrap(), [1.0, 4.0]);
        // Again with enough work after the broken dispatch that its batch is submitted
        // before the readback, outside the readback's error scopes.
        device
            .dispatch(&BROKEN, &params, &[x.buffer().unwrap()], y.buffer().unwrap(), [1, 1, 1])
            .unwrap();
        let mut z = x.clone();
        for _ in 0..batch::MAX_COMMANDS {
            z = z.map(Map::Sqr).unwrap();
        }
        let err = z.to_vec().unwrap_err();
        assert!(matches!(err, Error::Device(_)), "{err}");
        assert_eq!(x.map(Map::Sqr).unwrap().to_vec().unwrap(), [1.0, 4.0]);
    }
}

//! Commands recorded since the last submission.
//!
//! A `queue.submit` costs far more than recording one dispatch, and a model's pass is a
//! hundred or more small operations, so operations record into one shared encoder that is
//! submitted only when a readback needs the results or the batch is full. The bound keeps
//! what a pending batch holds alive (its uniforms, and the buffers its commands use) small.

/// Commands per submission at most.
pub(super) const MAX_COMMANDS: usize = 128;
/// Bytes reserved for each dispatch's parameter block: a slot per dispatch keeps every
/// binding offset a multiple of the device's uniform offset alignment (256 on most GPUs).
const MAX_PARAMS_BYTES: u64 = 256;

pub(super) struct Batch {
    pub encoder: ::wgpu::CommandEncoder,
    /// Every dispatch's parameter block, one slot each, uploaded to `uniforms` just before
    /// the batch is submitted. One buffer per batch: nothing ever rewrites a buffer that
    /// recorded or submitted commands still read.
    params: Vec<u8>,
    uniforms: ::wgpu::Buffer,
    slot: u64,
    commands: usize,
}

impl Batch {
    pub fn new(device: &::wgpu::Device, limits: &::wgpu::Limits) -> Self {
        let slot = MAX_PARAMS_BYTES.max(limits.min_uniform_buffer_offset_alignment.into());
        Batch {
            encoder: device.create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some("candle-xai batch"),
            }),
            params: Vec::new(),
            uniforms: device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some("candle-xai parameters"),
                size: slot * MAX_COMMANDS as u64,
                usage: ::wgpu::BufferUsages::UNIFORM | ::wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            slot,
            commands: 0,
        }
    }

    /// Stores one dispatch's parameter block and returns its binding.
    pub fn params(&mut self, bytes: &[u8]) -> ::wgpu::BufferBinding<'_> {
        assert!(
            bytes.len() as u64 <= MAX_PARAMS_BYTES && !bytes.is_empty(),
            "a kernel parameter block of {} bytes",
            bytes.len()
        );
        let offset = self.params.len() as u64;
        self.params.extend_from_slice(bytes);
        self.params.resize((offset + self.slot) as usize, 0);
        ::wgpu::BufferBinding {
            buffer: &self.uniforms,
            offset,
            size: ::wgpu::BufferSize::new(bytes.len() as u64),
        }
    }

    /// Counts one recorded command; true once the batch should be submitted.
    pub fn count(&mut self) -> bool {
        self.commands += 1;
        self.commands >= MAX_COMMANDS
    }

    pub fn submit(self, queue: &::wgpu::Queue) {
        if !self.params.is_empty() {
            // Queue writes land before the commands submitted after them.
            queue.write_buffer(&self.uniforms, 0, &self.params);
        }
        queue.submit([self.encoder.finish()]);
    }
}

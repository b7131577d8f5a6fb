// x[n, c, inner] * scale + shift. An absent scale or shift is bound to x itself (read-only
// aliasing is allowed) and skipped by its flag, so one layout covers all four cases.
struct Params {
    len: u32,
    channels: u32,
    inner: u32,
    has_scale: u32,
    has_shift: u32,
    // 1 when that table is [N, C] (one row per sample), 0 when it is [C].
    scale_per_sample: u32,
    shift_per_sample: u32,
    // The (sample, channel) plane x starts at: a piece of a tensor split across buffers.
    plane_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> scale: array<f32>;
@group(0) @binding(3) var<storage, read> shift: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.len {
        return;
    }
    let nc = i / p.inner + p.plane_offset;
    let c = nc % p.channels;
    var v = x[i];
    if p.has_scale != 0u {
        v = v * scale[select(c, nc, p.scale_per_sample != 0u)];
    }
    if p.has_shift != 0u {
        v = v + shift[select(c, nc, p.shift_per_sample != 0u)];
    }
    y[i] = v;
}

// The shared head of the kernels along one axis (normalize.wgsl, softmax.wgsl): x viewed as
// [outer, len, inner], one thread per (outer, inner) position walking its `len` elements.
// Neighbouring threads read neighbouring elements when inner > 1 (channels of NCHW); for
// inner == 1 (the last axis) rows are few and long only in transformers, where len is a few
// hundred. The parameters are layout.rs's `AxisParams`.
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    // normalize.wgsl only: the variance's epsilon, and 1 where its vjp holds the standard
    // deviation constant (its gradient term left out).
    eps: f32,
    constant_std: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x; for softmax.wgsl's `vjp`, the softmax output s.
@group(0) @binding(1) var<storage, read> x: array<f32>;
// The incoming gradient for `vjp`; `forward` is bound to x here and does not read it.
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn position(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// The index of the first element of position i's line.
fn first(i: u32) -> u32 {
    return (i / p.inner) * p.len * p.inner + i % p.inner;
}

// Softmax over the middle axis of x viewed as [outer, len, inner] (PyTorch's softmax(dim)),
// and its input-VJP from the output s: s * (g - sum(g * s)). One thread per (outer, inner)
// position walks its `len` elements, as normalize.wgsl does.
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x for `forward`, the softmax output s for `vjp`.
@group(0) @binding(1) var<storage, read> x: array<f32>;
// The incoming gradient for `vjp`; `forward` is bound to x here and does not read it.
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn position(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

fn first(i: u32) -> u32 {
    return (i / p.inner) * p.len * p.inner + i % p.inner;
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = position(gid, nwg);
    if i >= p.outer * p.inner {
        return;
    }
    let base = first(i);
    var top = x[base];
    for (var j = 1u; j < p.len; j++) {
        top = max(top, x[base + j * p.inner]);
    }
    var sum = 0.0;
    for (var j = 0u; j < p.len; j++) {
        let at = base + j * p.inner;
        let e = exp(x[at] - top);
        y[at] = e;
        sum += e;
    }
    let scale = 1.0 / sum;
    for (var j = 0u; j < p.len; j++) {
        let at = base + j * p.inner;
        y[at] = y[at] * scale;
    }
}

@compute @workgroup_size(256)
fn vjp(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = position(gid, nwg);
    if i >= p.outer * p.inner {
        return;
    }
    let base = first(i);
    var along = 0.0;
    for (var j = 0u; j < p.len; j++) {
        let at = base + j * p.inner;
        along += g[at] * x[at];
    }
    for (var j = 0u; j < p.len; j++) {
        let at = base + j * p.inner;
        y[at] = x[at] * (g[at] - along);
    }
}

// One element-wise map per dispatch; the op code is uniform, so the switch never diverges.
// Codes from 8 on are activations (activation.wgsl, code - 8), with their slope in `a`.
struct Params {
    len: u32,
    op: u32,
    a: f32,
    b: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.len {
        return;
    }
    let v = x[i];
    var r: f32;
    switch p.op {
        case 0u: { r = v * p.a + p.b; }
        case 1u: { r = abs(v); }
        case 2u: { r = v * v; }
        case 3u: { r = min(max(v, p.a), p.b); }
        case 4u: { r = v + select(-p.a, p.a, v >= 0.0); }
        case 5u: { r = select(0.0, 1.0, v > 0.0); }
        case 6u: { r = select(0.0, 1.0, v < 0.0); }
        case 7u: { r = p.a; }
        default: { r = activate(p.op - 8u, v, p.a); }
    }
    y[i] = r;
}

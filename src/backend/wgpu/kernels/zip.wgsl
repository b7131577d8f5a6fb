struct Params {
    len: u32,
    op: u32,
    slope: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.len {
        return;
    }
    let u = a[i];
    let v = b[i];
    var r: f32;
    switch p.op {
        case 0u: { r = u + v; }
        case 1u: { r = u - v; }
        case 2u: { r = u * v; }
        case 3u: { r = u / v; }
        // Activation VJPs (codes 4 + activation.wgsl's): u is the activation's input, v the
        // incoming gradient.
        default: { r = v * activation_derivative(p.op - 4u, u, p.slope); }
    }
    y[i] = r;
}

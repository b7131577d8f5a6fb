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
        // Activation VJPs: u is the activation's input, v the incoming gradient.
        case 4u: { r = select(0.0, v, u > 0.0); }
        case 5u: { r = select(0.0, v, u > 0.0 && u < 6.0); }
        default: { r = select(v * p.slope, v, u > 0.0); }
    }
    y[i] = r;
}

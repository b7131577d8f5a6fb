// y = x with its dimensions reordered (rank <= 8): output element i, written as an index
// into `dims`, reads x at the dot product of that index with `strides` (x's strides taken
// in the output's dimension order).
struct Params {
    len: u32,
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    dims: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 2>,
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
    var rest = i;
    var at = 0u;
    for (var k = p.rank; k > 0u; k--) {
        let d = k - 1u;
        let size = p.dims[d / 4u][d % 4u];
        at += (rest % size) * p.strides[d / 4u][d % 4u];
        rest /= size;
    }
    y[i] = x[at];
}

// Sums x viewed as [outer, mid, inner] over mid, times `scale`: y[o, i].
struct Params {
    outer: u32,
    mid: u32,
    inner: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, 256>;

// inner == 1: rows are contiguous, so a whole workgroup shares one row and reads it
// coalesced; a thread per row would leave most of the GPU idle for few, long rows.
@compute @workgroup_size(256)
fn rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.x + wid.y * nwg.x;
    // `row` is uniform across the workgroup, so this early exit keeps barriers uniform.
    if row >= p.outer {
        return;
    }
    let base = row * p.mid;
    var acc = 0.0;
    for (var j = lid; j < p.mid; j += 256u) {
        acc += x[base + j];
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        y[row] = partial[0] * p.scale;
    }
}

// inner > 1: neighbouring threads read neighbouring elements of each mid slice.
@compute @workgroup_size(256)
fn strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.outer * p.inner {
        return;
    }
    let o = i / p.inner;
    let k = i % p.inner;
    var acc = 0.0;
    for (var j = 0u; j < p.mid; j++) {
        acc += x[(o * p.mid + j) * p.inner + k];
    }
    y[i] = acc * p.scale;
}

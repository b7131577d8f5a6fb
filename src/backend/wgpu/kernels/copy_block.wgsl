// Copies a block along one axis: with src viewed as [outer, src_len, inner] and dst as
// [outer, dst_len, inner], dst[o, dst_start + j, k] = src[o, src_start + j, k] for j < len.
// A narrow is one such copy into a fresh tensor, a concatenation one per part.
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    src_len: u32,
    src_start: u32,
    dst_len: u32,
    dst_start: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let block = p.len * p.inner;
    if i >= p.outer * block {
        return;
    }
    let o = i / block;
    let j = (i % block) / p.inner;
    let k = i % p.inner;
    dst[(o * p.dst_len + p.dst_start + j) * p.inner + k] = src[(o * p.src_len + p.src_start + j) * p.inner + k];
}

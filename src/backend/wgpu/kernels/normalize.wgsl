// Normalisation along one axis (after along_axis.wgsl): y = (x - mean) / sqrt(var + eps) with
// the biased variance, as PyTorch's LayerNorm and GroupNorm, and its input-VJP.

// (mean, 1 / sqrt(var + eps)) of the row starting at `base`.
fn moments(base: u32) -> vec2<f32> {
    var sum = 0.0;
    for (var j = 0u; j < p.len; j++) {
        sum += x[base + j * p.inner];
    }
    let mean = sum / f32(p.len);
    var sq = 0.0;
    for (var j = 0u; j < p.len; j++) {
        let d = x[base + j * p.inner] - mean;
        sq += d * d;
    }
    return vec2<f32>(mean, inverseSqrt(sq / f32(p.len) + p.eps));
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = position(gid, nwg);
    if i >= p.outer * p.inner {
        return;
    }
    let base = first(i);
    let m = moments(base);
    for (var j = 0u; j < p.len; j++) {
        let at = base + j * p.inner;
        y[at] = (x[at] - m.x) * m.y;
    }
}

// dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps), without the xhat term when
// the standard deviation is held constant.
@compute @workgroup_size(256)
fn vjp(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = position(gid, nwg);
    if i >= p.outer * p.inner {
        return;
    }
    let base = first(i);
    let m = moments(base);
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var j = 0u; j < p.len; j++) {
        let at = base + j * p.inner;
        sum_g += g[at];
        sum_gx += g[at] * (x[at] - m.x) * m.y;
    }
    let n = f32(p.len);
    if p.constant_std != 0u {
        sum_gx = 0.0;
    }
    for (var j = 0u; j < p.len; j++) {
        let at = base + j * p.inner;
        let xhat = (x[at] - m.x) * m.y;
        y[at] = (g[at] - sum_g / n - xhat * sum_gx / n) * m.y;
    }
}

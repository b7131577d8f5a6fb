// Softmax along one axis (after along_axis.wgsl), PyTorch's softmax(dim), and its input-VJP
// from the output s: s * (g - sum(g * s)).

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

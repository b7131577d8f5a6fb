// Input-VJP of conv.wgsl: grad [N, Cout, Ho, Wo] back to dx [N, Cin, H, W]. Gathered: each
// thread owns one dx element and visits the outputs its input pixel fed, so no two threads
// write the same element and no atomics are needed.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

// The output index along one axis that tap k of input position `pos` fed, or -1 when the
// tap lands between strides or outside the output.
fn source(pos: u32, pad: u32, k: u32, out_len: u32) -> i32 {
    let t = i32(pos + pad) - i32(k * p.dilation);
    if t < 0 || t % i32(p.stride) != 0 {
        return -1;
    }
    let o = t / i32(p.stride);
    return select(-1, o, o < i32(out_len));
}

@compute @workgroup_size(256)
fn general(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n * p.cin * p.h * p.w {
        return;
    }
    let iw = i % p.w;
    let ih = (i / p.w) % p.h;
    let ci = (i / (p.w * p.h)) % p.cin;
    let n = i / (p.w * p.h * p.cin);
    let g = ci / p.cin_g;
    let cl = ci % p.cin_g;
    let out_plane = p.ho * p.wo;
    let khw = p.kh * p.kw;
    var acc = 0.0;
    for (var ki = 0u; ki < p.kh; ki++) {
        let oh = source(ih, p.pad_top, ki, p.ho);
        if oh < 0 {
            continue;
        }
        for (var kj = 0u; kj < p.kw; kj++) {
            let ow = source(iw, p.pad_left, kj, p.wo);
            if ow < 0 {
                continue;
            }
            let co0 = g * p.cout_g;
            var gi = (n * p.cout + co0) * out_plane + u32(oh) * p.wo + u32(ow);
            var wi = (co0 * p.cin_g + cl) * khw + ki * p.kw + kj;
            for (var c = 0u; c < p.cout_g; c++) {
                acc = fma(grad[gi], weight[wi], acc);
                gi += out_plane;
                wi += p.cin_g * khw;
            }
        }
    }
    dx[i] = acc;
}

@compute @workgroup_size(256)
fn depthwise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n * p.cin * p.h * p.w {
        return;
    }
    let iw = i % p.w;
    let ih = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let c = plane % p.cin;
    let g_base = plane * p.ho * p.wo;
    let w_base = c * p.kh * p.kw;
    var acc = 0.0;
    for (var ki = 0u; ki < p.kh; ki++) {
        let oh = source(ih, p.pad_top, ki, p.ho);
        if oh < 0 {
            continue;
        }
        for (var kj = 0u; kj < p.kw; kj++) {
            let ow = source(iw, p.pad_left, kj, p.wo);
            if ow >= 0 {
                acc = fma(grad[g_base + u32(oh) * p.wo + u32(ow)], weight[w_base + ki * p.kw + kj], acc);
            }
        }
    }
    dx[i] = acc;
}

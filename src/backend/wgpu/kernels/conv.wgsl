// Forward 2-D convolution (cross-correlation) of x [N, Cin, H, W] with w [Cout, Cin/g, kh, kw].
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// Implicit GEMM per (sample, group): out[co, pixel] = sum_r weight[co, r] * patch[r, pixel],
// r = (ci, ki, kj). The patch matrix (im2col) is never stored: each tile of it is gathered
// from x straight into workgroup memory, zero outside the padded input. Tiling as in
// tile_gemm.wgsl: 64 channels x 64 pixels per workgroup, 4x4 outputs per thread.
@compute @workgroup_size(16, 16)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let pixels = p.ho * p.wo;
    let g = wid.y / p.channel_tiles;
    let co0 = (wid.y % p.channel_tiles) * TILE;
    let pix0 = wid.x * TILE;
    let n = wid.z;
    let khw = p.kh * p.kw;
    let red = p.cin_g * khw;
    let w_base = g * p.cout_g * red;
    let x_base = (n * p.cin + g * p.cin_g) * p.h * p.w;
    var acc: array<vec4<f32>, 4>;
    var run: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < red; k0 += TK) {
        for (var t = 0u; t < 4u; t++) {
            let e = li + t * 256u;
            // Weights: consecutive threads read consecutive r of one output channel.
            let kk = e % TK;
            let r = e / TK;
            let co = co0 + r;
            let gk = k0 + kk;
            var va = 0.0;
            if co < p.cout_g && gk < red {
                va = weight[w_base + co * red + gk];
            }
            tile_a[kk * TILE + r] = va;
            // Patches: consecutive threads read consecutive output pixels.
            let col = e % TILE;
            let kb = e / TILE;
            let pix = pix0 + col;
            let gkb = k0 + kb;
            var vb = 0.0;
            if pix < pixels && gkb < red {
                let ci = gkb / khw;
                let rem = gkb % khw;
                let ki = rem / p.kw;
                let kj = rem % p.kw;
                let oh = pix / p.wo;
                let ow = pix % p.wo;
                let ih = i32(oh * p.stride + ki * p.dilation) - i32(p.pad_top);
                let iw = i32(ow * p.stride + kj * p.dilation) - i32(p.pad_left);
                if ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w) {
                    vb = x[x_base + (ci * p.h + u32(ih)) * p.w + u32(iw)];
                }
            }
            tile_b[kb * TILE + col] = vb;
        }
        workgroupBarrier();
        accumulate_slice(lid, k0, &run, &acc);
        workgroupBarrier();
    }
    fold_run(&run, &acc);
    for (var i = 0u; i < 4u; i++) {
        let co = co0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let pix = pix0 + lid.x + 16u * j;
            if co < p.cout_g && pix < pixels {
                y[(n * p.cout + g * p.cout_g + co) * pixels + pix] = acc[i][j];
            }
        }
    }
}

// Few outputs per sample (a late layer's 2x2 map) or one input channel per group (depthwise):
// a GEMM tile would be mostly padding, so one thread sums one output directly.
@compute @workgroup_size(256)
fn direct(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n * p.cout * p.ho * p.wo {
        return;
    }
    let ow = i % p.wo;
    let oh = (i / p.wo) % p.ho;
    let plane = i / (p.wo * p.ho);
    let co = plane % p.cout;
    let n = plane / p.cout;
    let g = co / p.cout_g;
    let khw = p.kh * p.kw;
    let ih0 = i32(oh * p.stride) - i32(p.pad_top);
    let iw0 = i32(ow * p.stride) - i32(p.pad_left);
    // In runs of about RUN_TERMS (whole input channels), as the tiled kernel sums (tile_gemm.wgsl).
    let run_channels = max(1u, RUN_TERMS / khw);
    var acc = 0.0;
    var run = 0.0;
    for (var ci = 0u; ci < p.cin_g; ci++) {
        let x_base = (n * p.cin + g * p.cin_g + ci) * p.h * p.w;
        let w_base = (co * p.cin_g + ci) * khw;
        for (var ki = 0u; ki < p.kh; ki++) {
            let ih = ih0 + i32(ki * p.dilation);
            if ih < 0 || ih >= i32(p.h) {
                continue;
            }
            for (var kj = 0u; kj < p.kw; kj++) {
                let iw = iw0 + i32(kj * p.dilation);
                if iw >= 0 && iw < i32(p.w) {
                    run = fma(x[x_base + u32(ih) * p.w + u32(iw)], weight[w_base + ki * p.kw + kj], run);
                }
            }
        }
        if (ci + 1u) % run_channels == 0u {
            acc += run;
            run = 0.0;
        }
    }
    y[i] = acc + run;
}

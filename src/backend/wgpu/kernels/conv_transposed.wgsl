// Input-VJP of conv.wgsl: grad [N, Cout, Ho, Wo] back to dx [N, Cin, H, W]. Every kernel
// here gathers: each dx element is summed by one thread from the outputs its input pixel fed, so
// no two threads write the same element and no atomics are needed.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

// gather: the output index along one axis that tap k of input position `pos`
// fed, or -1 when the tap lands between strides or outside the output.
fn source(pos: u32, pad: u32, k: u32, out_len: u32) -> i32 {
    let t = i32(pos + pad) - i32(k * p.dilation);
    if t < 0 || t % i32(p.stride) != 0 {
        return -1;
    }
    let o = t / i32(p.stride);
    return select(-1, o, o < i32(out_len));
}

// Few input channels per group (a network's stem: 3; depthwise: 1) or few input pixels per
// stride phase (a late layer's 2x2 map): a 64x64 GEMM tile would be mostly padding, so one
// thread gathers one dx element from the outputs it fed.
@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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
    // In runs of RUN_TERMS at most, as the tiled kernel sums (tile_gemm.wgsl).
    var acc = 0.0;
    var run = 0.0;
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
                run = fma(grad[gi], weight[wi], run);
                gi += out_plane;
                wi += p.cin_g * khw;
                fold_scalar_run(c, &run, &acc);
            }
        }
    }
    dx[i] = acc + run;
}

// One axis of a stride phase: the `count` input positions from `first` in steps of the
// stride, those with (pos + pad) % stride == phase. All of them are fed by the same kernel
// taps, `taps` of them from `k0` in steps of `step`, and tap k0 + t * step of the m-th
// position read output `base + m - t * shift`.
struct Phase {
    first: u32,
    count: u32,
    k0: u32,
    step: u32,
    taps: u32,
    base: i32,
    shift: i32,
}

fn phase_positions(phase: u32, len: u32, pad: u32) -> Phase {
    let s = p.stride;
    var ph: Phase;
    ph.first = (phase + s - pad % s) % s;
    ph.count = select(0u, (len - ph.first + s - 1u) / s, ph.first < len);
    return ph;
}

fn phase_taps(positions: Phase, phase: u32, pad: u32, k: u32) -> Phase {
    let s = p.stride;
    var ph = positions;
    // Taps repeat their residue every stride / gcd(dilation, stride) steps, so the step and
    // the first matching tap both lie below the stride.
    ph.step = s;
    for (var j = 1u; j < s; j++) {
        if (j * p.dilation) % s == 0u {
            ph.step = j;
            break;
        }
    }
    ph.k0 = k;
    for (var j = 0u; j < ph.step; j++) {
        if (j * p.dilation) % s == phase {
            ph.k0 = j;
            break;
        }
    }
    ph.taps = select(0u, (k - 1u - ph.k0) / ph.step + 1u, ph.k0 < k);
    ph.base = (i32(ph.first + pad) - i32(ph.k0 * p.dilation)) / i32(s);
    ph.shift = i32(ph.step * p.dilation / s);
    return ph;
}

// Implicit GEMM per (sample, group, stride phase): dx[ci, pixel] = sum_r wT[ci, r] * g[r, pixel],
// r = (tap, co) over the taps that feed this phase. Splitting the input pixels by stride
// phase makes the taps uniform across a workgroup, so no multiply is spent on taps that fall
// between strides. Tiling as in conv.wgsl's gemm: 64 input channels x 64 input pixels per
// workgroup, 4x4 per thread. The grid is folded: the linear workgroup id enumerates
// (pixel tile, channel tile, group, phase, sample).
@compute @workgroup_size(16, 16)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let s = p.stride;
    let pixel_tiles = (((p.h + s - 1u) / s) * ((p.w + s - 1u) / s) + TILE - 1u) / TILE;
    let groups = p.cin / p.cin_g;
    var id = wid.x + wid.y * nwg.x;
    let pix0 = (id % pixel_tiles) * TILE;
    id /= pixel_tiles;
    let ci0 = (id % p.channel_tiles) * TILE;
    id /= p.channel_tiles;
    let g = id % groups;
    id /= groups;
    let phase = id % (s * s);
    let n = id / (s * s);
    var rows = phase_positions(phase / s, p.h, p.pad_top);
    var cols = phase_positions(phase % s, p.w, p.pad_left);
    let pixels = rows.count * cols.count;
    if n >= p.n || pix0 >= pixels {
        return;
    }
    rows = phase_taps(rows, phase / s, p.pad_top, p.kh);
    cols = phase_taps(cols, phase % s, p.pad_left, p.kw);
    let khw = p.kh * p.kw;
    let red = rows.taps * cols.taps * p.cout_g;
    let grad_base = (n * p.cout + g * p.cout_g) * p.ho * p.wo;
    var acc: array<vec4<f32>, 4>;
    var run: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < red; k0 += TK) {
        for (var t = 0u; t < 4u; t++) {
            let e = li + t * 256u;
            // Weights: consecutive threads read consecutive input channels of one tap.
            let ci = ci0 + e % TILE;
            let ka = e / TILE;
            let ra = k0 + ka;
            var va = 0.0;
            if ci < p.cin_g && ra < red {
                let tap = ra / p.cout_g;
                let co = ra % p.cout_g;
                let ki = rows.k0 + (tap / cols.taps) * rows.step;
                let kj = cols.k0 + (tap % cols.taps) * cols.step;
                va = weight[((g * p.cout_g + co) * p.cin_g + ci) * khw + ki * p.kw + kj];
            }
            tile_a[ka * TILE + e % TILE] = va;
            // Gradients: consecutive threads read consecutive output columns.
            let col = e % TILE;
            let kb = e / TILE;
            let pix = pix0 + col;
            let rb = k0 + kb;
            var vb = 0.0;
            if pix < pixels && rb < red {
                let tap = rb / p.cout_g;
                let co = rb % p.cout_g;
                let oh = rows.base + i32(pix / cols.count) - i32(tap / cols.taps) * rows.shift;
                let ow = cols.base + i32(pix % cols.count) - i32(tap % cols.taps) * cols.shift;
                if oh >= 0 && oh < i32(p.ho) && ow >= 0 && ow < i32(p.wo) {
                    vb = grad[grad_base + (co * p.ho + u32(oh)) * p.wo + u32(ow)];
                }
            }
            tile_b[kb * TILE + col] = vb;
        }
        workgroupBarrier();
        accumulate_slice(lid, k0, &run, &acc);
        workgroupBarrier();
    }
    fold_run(&run, &acc);
    // Every input pixel belongs to exactly one phase, so each dx element is written once,
    // zero where no tap reaches it.
    for (var i = 0u; i < 4u; i++) {
        let ci = ci0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let pix = pix0 + lid.x + 16u * j;
            if ci < p.cin_g && pix < pixels {
                let ih = rows.first + (pix / cols.count) * s;
                let iw = cols.first + (pix % cols.count) * s;
                dx[((n * p.cin + g * p.cin_g + ci) * p.h + ih) * p.w + iw] = acc[i][j];
            }
        }
    }
}

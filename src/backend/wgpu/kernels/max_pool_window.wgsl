// Shared by max_pool.wgsl and max_pool_argmax.wgsl (prepended to each): the first maximum
// of one pooling window, PyTorch's rule. Padding cells are skipped rather than read as -inf,
// so they never win.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;

struct Best {
    value: f32,
    // Row-major index within the plane, -1 while no input cell has been seen.
    index: i32,
}

fn window_max(i: u32) -> Best {
    let ow = i % p.wo;
    let oh = (i / p.wo) % p.ho;
    let plane = i / (p.wo * p.ho);
    let base = plane * p.h * p.w;
    let h0 = i32(oh * p.sh) - i32(p.ph);
    let w0 = i32(ow * p.sw) - i32(p.pw);
    // The index, not the value, marks "nothing yet": browsers' WGSL compilers refuse an
    // infinite constant. PyTorch's geometry never makes an empty window.
    var best = Best(0.0, -1);
    for (var ki = 0u; ki < p.kh; ki++) {
        let ih = h0 + i32(ki * p.dh);
        if ih < 0 || ih >= i32(p.h) {
            continue;
        }
        for (var kj = 0u; kj < p.kw; kj++) {
            let iw = w0 + i32(kj * p.dw);
            if iw < 0 || iw >= i32(p.w) {
                continue;
            }
            let v = x[base + u32(ih) * p.w + u32(iw)];
            // Strictly greater keeps the first of equal maxima; NaN wins like in PyTorch.
            if best.index < 0 || v > best.value || v != v {
                best = Best(v, ih * i32(p.w) + iw);
            }
        }
    }
    return best;
}

// Means over separable windows. `table` holds, as u32 pairs [start, end): the row bins
// (Ho pairs), the column bins (Wo pairs), and for the VJP the range of row bins that may
// contain each input row (H pairs) and of column bins for each input column (W pairs).
struct Params {
    planes: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    cols_at: u32,
    row_ranges_at: u32,
    col_ranges_at: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read> divisor: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.planes * p.ho * p.wo {
        return;
    }
    let oj = i % p.wo;
    let oi = (i / p.wo) % p.ho;
    let base = (i / (p.wo * p.ho)) * p.h * p.w;
    let c0 = table[p.cols_at + 2u * oj];
    let c1 = table[p.cols_at + 2u * oj + 1u];
    var acc = 0.0;
    for (var r = table[2u * oi]; r < table[2u * oi + 1u]; r++) {
        for (var c = c0; c < c1; c++) {
            acc += x[base + r * p.w + c];
        }
    }
    y[i] = acc / divisor[oi * p.wo + oj];
}

// Here x is the gradient [N, C, Ho, Wo] and y the input gradient [N, C, H, W].
@compute @workgroup_size(256)
fn vjp(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.planes * p.h * p.w {
        return;
    }
    let iw = i % p.w;
    let ih = (i / p.w) % p.h;
    let base = (i / (p.w * p.h)) * p.ho * p.wo;
    let j0 = table[p.col_ranges_at + 2u * iw];
    let j1 = table[p.col_ranges_at + 2u * iw + 1u];
    var acc = 0.0;
    for (var oi = table[p.row_ranges_at + 2u * ih]; oi < table[p.row_ranges_at + 2u * ih + 1u]; oi++) {
        if ih < table[2u * oi] || ih >= table[2u * oi + 1u] {
            continue;
        }
        for (var oj = j0; oj < j1; oj++) {
            if iw >= table[p.cols_at + 2u * oj] && iw < table[p.cols_at + 2u * oj + 1u] {
                acc += x[base + oi * p.wo + oj] / divisor[oi * p.wo + oj];
            }
        }
    }
    y[i] = acc;
}

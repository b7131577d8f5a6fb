// C[M, N] = A[M, K] x B, with B stored [K, N] or, when rhs_t != 0, [N, K].
// A 64x64 block of C per workgroup, tiled as tile_gemm.wgsl describes.
// A and C may be wider than this product (a piece of a B split across buffers, matmul.rs):
// A's k range starts at column a_col of rows lda long, C's columns at c_col of rows ldc long,
// and with accumulate != 0 the product adds to C instead of overwriting it.
// A batch of products (attention's per-head products) runs along the grid's z, each reading
// A, B and C at z times their batch strides.
struct Params {
    m: u32,
    k: u32,
    n: u32,
    rhs_t: u32,
    lda: u32,
    a_col: u32,
    ldc: u32,
    c_col: u32,
    accumulate: u32,
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let za = wid.z * p.a_batch;
    let zb = wid.z * p.b_batch;
    let zc = wid.z * p.c_batch;
    var acc: array<vec4<f32>, 4>;
    var run: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var t = 0u; t < 4u; t++) {
            let e = li + t * 256u;
            // Consecutive threads take consecutive k of one row of A: contiguous reads.
            let kk = e % TK;
            let r = e / TK;
            let gr = row0 + r;
            let gk = k0 + kk;
            var va = 0.0;
            if gr < p.m && gk < p.k {
                va = a[za + gr * p.lda + p.a_col + gk];
            }
            tile_a[kk * TILE + r] = va;
            var vb = 0.0;
            if p.rhs_t != 0u {
                let gc = col0 + r;
                if gc < p.n && gk < p.k {
                    vb = b[zb + gc * p.k + gk];
                }
                tile_b[kk * TILE + r] = vb;
            } else {
                let col = e % TILE;
                let kb = e / TILE;
                let gc = col0 + col;
                let gkb = k0 + kb;
                if gc < p.n && gkb < p.k {
                    vb = b[zb + gkb * p.n + gc];
                }
                tile_b[kb * TILE + col] = vb;
            }
        }
        workgroupBarrier();
        accumulate_slice(lid, k0, &run, &acc);
        workgroupBarrier();
    }
    fold_run(&run, &acc);
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + 16u * j;
            if r < p.m && col < p.n {
                let at = zc + r * p.ldc + p.c_col + col;
                c[at] = select(0.0, c[at], p.accumulate != 0u) + acc[i][j];
            }
        }
    }
}

// Few rows (M below half a tile): one invocation per element of C, each walking all of k, so
// no invocation computes the padding rows a 64-row tile would (15/16 of the work for the one
// or two rows of a classifier, or a late stage's few positions).
@compute @workgroup_size(256)
fn few_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.m * p.n {
        return;
    }
    let r = i / p.n;
    let col = i % p.n;
    let a0 = gid.z * p.a_batch + r * p.lda + p.a_col;
    let zb = gid.z * p.b_batch;
    // In runs of RUN_TERMS, as the tiled kernel sums (tile_gemm.wgsl).
    var acc = 0.0;
    var run = 0.0;
    let b0 = select(zb + col, zb + col * p.k, p.rhs_t != 0u);
    let b_step = select(p.n, 1u, p.rhs_t != 0u);
    for (var kk = 0u; kk < p.k; kk++) {
        run = fma(a[a0 + kk], b[b0 + kk * b_step], run);
        fold_scalar_run(kk, &run, &acc);
    }
    let at = gid.z * p.c_batch + r * p.ldc + p.c_col + col;
    c[at] = select(0.0, c[at], p.accumulate != 0u) + (acc + run);
}

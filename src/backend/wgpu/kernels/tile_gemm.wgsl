// Shared by the tiled GEMMs (prepended to matmul.wgsl, conv.wgsl and conv_transposed.wgsl):
// a 16x16 workgroup owns a TILE x TILE block of the output, each invocation a 4x4 sub-block
// strided by 16, so the shared-memory reads of one k step are conflict-free and reused 4x.
// The kernels stage TK-deep slices of both operands here, k-major ([TK][TILE]).
const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

// Slices whose products are summed on their own (`run`) before joining the total (`acc`):
// a float32 sum's rounding error grows with the length of its runs, and runs of 128 terms
// err as little as PyTorch's (oneDNN's) convolutions, which sequential sums over thousands
// of terms do not (tests/engine/conv_accuracy.rs).
const RUN_SLICES: u32 = 8u;
// The same run in terms, for the kernels that sum one output per invocation.
const RUN_TERMS: u32 = RUN_SLICES * TK;

// Adds the staged slice (the one starting at k0) into this invocation's 4x4 sub-block of
// the current run, row i of it in run[i], and ends the run after every RUN_SLICES slices.
// Whole vec4 rows rather than an array of 16 scalars: a compiler that cannot keep a
// dynamically indexed array in registers (Mesa's lavapipe spills it to memory) keeps these,
// which makes the GEMMs about five times faster there.
fn accumulate_slice(
    lid: vec3<u32>,
    k0: u32,
    run: ptr<function, array<vec4<f32>, 4>>,
    acc: ptr<function, array<vec4<f32>, 4>>,
) {
    for (var kk = 0u; kk < TK; kk++) {
        let row = kk * TILE;
        let a = vec4<f32>(
            tile_a[row + lid.y],
            tile_a[row + lid.y + 16u],
            tile_a[row + lid.y + 32u],
            tile_a[row + lid.y + 48u],
        );
        let b = vec4<f32>(
            tile_b[row + lid.x],
            tile_b[row + lid.x + 16u],
            tile_b[row + lid.x + 32u],
            tile_b[row + lid.x + 48u],
        );
        (*run)[0] = fma(vec4<f32>(a.x), b, (*run)[0]);
        (*run)[1] = fma(vec4<f32>(a.y), b, (*run)[1]);
        (*run)[2] = fma(vec4<f32>(a.z), b, (*run)[2]);
        (*run)[3] = fma(vec4<f32>(a.w), b, (*run)[3]);
    }
    if (k0 / TK + 1u) % RUN_SLICES == 0u {
        fold_run(run, acc);
    }
}

// Adds the run to the total and starts the next one.
fn fold_run(run: ptr<function, array<vec4<f32>, 4>>, acc: ptr<function, array<vec4<f32>, 4>>) {
    (*acc)[0] += (*run)[0];
    (*acc)[1] += (*run)[1];
    (*acc)[2] += (*run)[2];
    (*acc)[3] += (*run)[3];
    *run = array<vec4<f32>, 4>();
}

// fold_run for one output: ends the run when `term` (counted from 0) closes one.
fn fold_scalar_run(term: u32, run: ptr<function, f32>, acc: ptr<function, f32>) {
    if (term + 1u) % RUN_TERMS == 0u {
        *acc += *run;
        *run = 0.0;
    }
}

// Shared by the tiled GEMMs (prepended to matmul.wgsl, conv.wgsl and conv_transposed.wgsl):
// a 16x16 workgroup owns a TILE x TILE block of the output, each invocation a 4x4 sub-block
// strided by 16, so the shared-memory reads of one k step are conflict-free and reused 4x.
// The kernels stage TK-deep slices of both operands here, k-major ([TK][TILE]).
const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

// Adds the staged slice's product into this invocation's 4x4 sub-block, row i of it in
// acc[i]. Whole vec4 rows rather than an array of 16 scalars: a compiler that cannot keep a
// dynamically indexed array in registers (Mesa's lavapipe spills it to memory) keeps these,
// which makes the GEMMs about five times faster there.
fn accumulate_slice(lid: vec3<u32>, acc: ptr<function, array<vec4<f32>, 4>>) {
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
        (*acc)[0] = fma(vec4<f32>(a.x), b, (*acc)[0]);
        (*acc)[1] = fma(vec4<f32>(a.y), b, (*acc)[1]);
        (*acc)[2] = fma(vec4<f32>(a.z), b, (*acc)[2]);
        (*acc)[3] = fma(vec4<f32>(a.w), b, (*acc)[3]);
    }
}

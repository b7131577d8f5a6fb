// Shared by the tiled GEMMs (prepended to matmul.wgsl, conv.wgsl and conv_transposed.wgsl):
// a 16x16 workgroup owns a TILE x TILE block of the output, each invocation a 4x4 sub-block
// strided by 16, so the shared-memory reads of one k step are conflict-free and reused 4x.
// The kernels stage TK-deep slices of both operands here, k-major ([TK][TILE]).
const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

// Adds the staged slice's product into this invocation's 4x4 sub-block.
fn accumulate_slice(lid: vec3<u32>, acc: ptr<function, array<f32, 16>>) {
    for (var kk = 0u; kk < TK; kk++) {
        var ra: array<f32, 4>;
        var rb: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) {
            ra[i] = tile_a[kk * TILE + lid.y + 16u * i];
            rb[i] = tile_b[kk * TILE + lid.x + 16u * i];
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                (*acc)[i * 4u + j] = fma(ra[i], rb[j], (*acc)[i * 4u + j]);
            }
        }
    }
}

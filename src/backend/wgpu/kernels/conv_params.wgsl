// The sizes of one convolution, shared by conv.wgsl and conv_transposed.wgsl (prepended to
// each; conv.rs fills it).
struct Params {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    dilation: u32,
    pad_top: u32,
    pad_left: u32,
    cin_g: u32,
    cout_g: u32,
    // GEMMs only: 64-row tiles per group, ceil(cout_g / 64) forward and ceil(cin_g / 64)
    // for the input-VJP.
    channel_tiles: u32,
}

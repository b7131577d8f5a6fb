// The sizes of one max pooling, shared by the max-pooling kernels (prepended to each; pool.rs
// fills it).
struct Params {
    planes: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

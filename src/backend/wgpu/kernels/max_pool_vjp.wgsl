// Each input cell gathers the gradients of the windows that chose it (max_pool_argmax.wgsl),
// so every window's gradient lands on exactly one cell without atomics.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> winner: array<i32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.planes * p.h * p.w {
        return;
    }
    let iw = i % p.w;
    let ih = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let me = i32(ih * p.w + iw);
    var acc = 0.0;
    for (var ki = 0u; ki < p.kh; ki++) {
        // The window row whose tap ki lands on ih: oh * sh = ih + ph - ki * dh.
        let th = i32(ih + p.ph) - i32(ki * p.dh);
        if th < 0 {
            break;
        }
        if th % i32(p.sh) != 0 || th / i32(p.sh) >= i32(p.ho) {
            continue;
        }
        let oh = u32(th) / p.sh;
        for (var kj = 0u; kj < p.kw; kj++) {
            let tw = i32(iw + p.pw) - i32(kj * p.dw);
            if tw < 0 {
                break;
            }
            if tw % i32(p.sw) != 0 || tw / i32(p.sw) >= i32(p.wo) {
                continue;
            }
            let k = (plane * p.ho + oh) * p.wo + u32(tw) / p.sw;
            if winner[k] == me {
                acc += grad[k];
            }
        }
    }
    dx[i] = acc;
}

@group(0) @binding(2) var<storage, read_write> winner: array<i32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.planes * p.ho * p.wo {
        return;
    }
    winner[i] = window_max(i).index;
}

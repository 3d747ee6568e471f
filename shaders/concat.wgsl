// Channel concat by writing into channel offsets: `copy_channels` writes src [N, Cs, H, W] into
// dst [N, Cd, H, W] from channel `offset` on, one invocation per quad. Rows are padded per channel,
// so source and destination quads line up and the copy is quad to quad.

#include common
#storage src 0 read
#storage dst 1 read_write

struct Params { n: u32, cs: u32, cd: u32, offset: u32, qpr: u32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn copy_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.qpr * p.cs * p.n) { return; }
    let q = t % p.qpr;
    let c = (t / p.qpr) % p.cs;
    let n = t / (p.qpr * p.cs);
    dst_st4((n * p.cd + p.offset + c) * p.qpr + q, src_ld4(t));
}

// `split_channels`, the adjoint of copy_channels (channel-concat backward): dst [N, Cs, H, W] gets
// channels `offset..offset + Cs` of the wide src [N, Cd, H, W], one invocation per dst quad.
@compute @workgroup_size(64)
fn split_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.qpr * p.cs * p.n) { return; }
    let q = t % p.qpr;
    let c = (t / p.qpr) % p.cs;
    let n = t / (p.qpr * p.cs);
    dst_st4(t, src_ld4((n * p.cd + p.offset + c) * p.qpr + q));
}

// Attention fusion: out = m ⊙ a + (1 − m) ⊙ b, with m a single channel [N, 1, H, W] broadcast
// over the C channels of a and b, used raw or through a sigmoid. One invocation per output quad.

#include common
#storage a 0 read
#storage b 1 read
#storage m 2 read
#storage y 3 read_write

struct Params { n: u32, c: u32, plane: u32, sigmoid: u32 }
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn fusion(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.plane + 3u) / 4u;
    if (t >= qpr * p.c * p.n) { return; }
    let q = t % qpr;
    let n = t / (qpr * p.c);
    var mv = m_ld4(n * qpr + q);
    if (p.sigmoid != 0u) { mv = activate(mv, ACT_SIGMOID, 0.0); }
    let av = a_ld4(t);
    let v = b_ld4(t) + mv * (av - b_ld4(t));
    y_st4(t, select(vec4<f32>(0.0), v, lane_mask(q, p.plane)));
}

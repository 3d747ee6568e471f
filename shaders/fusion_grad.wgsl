// Backward of the attention fusion (fusion.wgsl): y = m'⊙a + (1 − m')⊙b with m' = m or σ(m), the
// mask [N, 1, H, W] broadcast over the C channels of a and b. Given dy:
//   da = dy·m',  db = dy·(1 − m')  (optional),  dm = Σ_c dy·(a − b)  (· σ(m)(1 − σ(m)) with sigmoid).
// One invocation per quad of the mask: it loops over the channels in order, writes the da (and db)
// quads of every channel and sums the dm quad in f32 itself: no reduction across invocations, so
// the result is deterministic and each quad has one writer. Pad lanes are written as 0.

#include common
#storage a 0 read
#storage b 1 read
#storage m 2 read
#storage dy 3 read
#storage da 4 read_write
#storage db 5 read_write
#storage dm 6 read_write

struct Params { n: u32, c: u32, plane: u32, sigmoid: u32, has_db: u32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(7) var<uniform> p: Params;

@compute @workgroup_size(64)
fn fusion_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.plane + 3u) / 4u;
    if (t >= qpr * p.n) { return; }
    let q = t % qpr;
    let n = t / qpr;
    let live = lane_mask(q, p.plane);
    let zero = vec4<f32>(0.0);
    var mv = m_ld4(t);
    if (p.sigmoid != 0u) { mv = activate(mv, ACT_SIGMOID, 0.0); }
    let mb = vec4<f32>(1.0) - mv;
    var acc = zero;
    for (var c = 0u; c < p.c; c++) {
        let i = (n * p.c + c) * qpr + q;
        let d = dy_ld4(i);
        acc += d * (a_ld4(i) - b_ld4(i));
        da_st4(i, select(zero, d * mv, live));
        if (p.has_db != 0u) { db_st4(i, select(zero, d * mb, live)); }
    }
    if (p.sigmoid != 0u) { acc *= mv * mb; }
    dm_st4(t, select(zero, acc, live));
}

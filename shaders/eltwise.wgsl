// Element-wise `binary`, one invocation per output quad: y = act(a + b), act(a ⊙ b), or act(a·scale[c] + shift[c]) (affine, b unused); b has
//   a's shape or is [N, C, 1, 1], broadcast over the plane (squeeze-excitation gates).

#include common
#storage a 0 read
#storage b 1 read
@group(0) @binding(2) var<storage, read> ep: array<f32>; // [scale(C) | shift(C)]
#storage y 3 read_write

struct Params {
    n: u32, c: u32, plane: u32, op: u32, // op: 0 add, 1 mul, 2 affine
    b_bcast: u32, act: u32, slope: f32, _p0: u32,
}
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.plane + 3u) / 4u;
    if (t >= qpr * p.c * p.n) { return; }
    let q = t % qpr;
    let row = t / qpr;
    let av = a_ld4(t);
    var v: vec4<f32>;
    if (p.op == 2u) {
        let c = row % p.c;
        v = av * ep[c] + ep[p.c + c];
    } else {
        var bv: vec4<f32>;
        if (p.b_bcast != 0u) { bv = vec4<f32>(b_ld(row * 4u)); } else { bv = b_ld4(t); }
        v = select(av + bv, av * bv, p.op == 1u);
    }
    y_st4(t, select(vec4<f32>(0.0), activate(v, p.act, p.slope), lane_mask(q, p.plane)));
}

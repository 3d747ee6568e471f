// Element-wise `binary`, one invocation per output quad:
//   y = act(a + b (+ r)), act(a ⊙ b (+ r)), or act(a·scale[c] + shift[c] (+ r))
// `b` has a's shape, or is broadcast: [N, C, 1, 1] (one value per channel) or a vector [N, 1, 1, C]
// (a linear layer's output: squeeze-excitation gates). The optional residual `r` joins before the
// activation, so an IR-SE block's `prelu(out ⊙ gate + shortcut)` is one dispatch.

#include common
#storage a 0 read
#storage b 1 read
@group(0) @binding(2) var<storage, read> ep: array<f32>; // [scale(C) | shift(C) | prelu(C)]
#storage r 3 read
#storage y 4 read_write

struct Params {
    n: u32, c: u32, plane: u32, op: u32,   // op: 0 add, 1 mul, 2 affine
    b_mode: u32, has_r: u32, act: u32, prelu_pc: u32, // b_mode: 0 same, 1 [N,C,1,1], 2 [N,1,1,C]
    slope: f32, _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.plane + 3u) / 4u;
    if (t >= qpr * p.c * p.n) { return; }
    let q = t % qpr;
    let row = t / qpr;
    let c = row % p.c;
    let av = a_ld4(t);
    var v: vec4<f32>;
    if (p.op == 2u) {
        v = av * ep[c] + ep[p.c + c];
    } else {
        var bv: vec4<f32>;
        switch p.b_mode {
            case 1u: { bv = vec4<f32>(b_ld(row * 4u)); }
            case 2u: { bv = vec4<f32>(b_ld((row / p.c) * ((p.c + 3u) & ~3u) + c)); }
            default: { bv = b_ld4(t); }
        }
        v = select(av + bv, av * bv, p.op == 1u);
    }
    if (p.has_r != 0u) { v += r_ld4(t); }
    var slope = p.slope;
    if (p.prelu_pc != 0u) { slope = ep[2u * p.c + c]; }
    y_st4(t, select(vec4<f32>(0.0), activate(v, p.act, slope), lane_mask(q, p.plane)));
}

// Batched linear layer y[n, o] = act(scale[o]·Σ_f W[o, f]·x[n, f] + shift[o]). The input may be
// any tensor [N, C, H, W] read as C·H·W features in PyTorch flatten order: the host lays W out
// with the input's padded rows (zeros in the pad slots), so every load is a vec4 and no flatten
// copy is needed. Each invocation computes a quad of 4 outputs of one sample.

#include common
#storage x 0 read
#storage w 1 read
@group(0) @binding(2) var<storage, read> ep: array<f32>; // [scale(O) | shift(O) | prelu(O)]
#storage y 3 read_write

struct Params {
    n: u32, fq: u32, out: u32, act: u32,
    prelu_pc: u32, slope: f32, _p0: u32, _p1: u32,
}
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn linear(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let oqs = (p.out + 3u) / 4u;
    if (t >= oqs * p.n) { return; }
    let oq = t % oqs;
    let n = t / oqs;
    let o0 = oq * 4u;
    // Rows of missing outputs (o ≥ out) re-read the last row; their lanes are masked on store.
    let r0 = o0 * p.fq;
    let r1 = min(o0 + 1u, p.out - 1u) * p.fq;
    let r2 = min(o0 + 2u, p.out - 1u) * p.fq;
    let r3 = min(o0 + 3u, p.out - 1u) * p.fq;
    let xb = n * p.fq;
    var acc = vec4<f32>(0.0);
    for (var f = 0u; f < p.fq; f++) {
        let xv = x_ld4(xb + f);
        acc += vec4<f32>(dot(xv, w_ld4(r0 + f)), dot(xv, w_ld4(r1 + f)),
                         dot(xv, w_ld4(r2 + f)), dot(xv, w_ld4(r3 + f)));
    }
    let oi = min(vec4<u32>(o0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.out - 1u));
    var v = acc * vec4<f32>(ep[oi.x], ep[oi.y], ep[oi.z], ep[oi.w])
        + vec4<f32>(ep[p.out + oi.x], ep[p.out + oi.y], ep[p.out + oi.z], ep[p.out + oi.w]);
    if (p.prelu_pc != 0u) {
        let s = vec4<f32>(ep[2u * p.out + oi.x], ep[2u * p.out + oi.y], ep[2u * p.out + oi.z], ep[2u * p.out + oi.w]);
        v = select(v * s, v, v >= vec4<f32>(0.0));
    } else {
        v = activate(v, p.act, p.slope);
    }
    let rs = (p.out + 3u) & ~3u;
    y_st4((n * rs) / 4u + oq, select(vec4<f32>(0.0), v, lane_mask(oq, p.out)));
}

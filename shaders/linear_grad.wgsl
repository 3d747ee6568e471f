// Backward of the batched linear layer (linear.wgsl) for the trainer, with respect to the product
// z[n, o] = Σ_f W[o, f]·x[n, f] (the epilogue's bias/activation backward is the tape's business).
// The input may be any [N, C, H, W] read as C·H·W features in PyTorch flatten order: feature
// f = c·H·W + p lives at quad-padded row n·C + c, slot p.
//
// grad_input   dX[n, f] = Σ_o dY[n, o]·W[o, f], W the f32 master weights in PyTorch order
//              [out, in]. One invocation owns one quad of dX (4 consecutive positions of one
//              channel row) for up to NB samples, so each weight it loads feeds NB sums; pad lanes
//              are written as zeros.
// grad_weight  dW[o, f] = Σ_n dY[n, o]·x[n, f] and dBias[o] = Σ_n dY[n, o], f32, PyTorch order.
//              The sum runs over the batch only, so one invocation owns a 4 × 4 tile (4 outputs ×
//              one x quad) and adds its samples in order: no cross-invocation reduction, results
//              are bit-identical run to run. The invocations of the first quad of channel 0 also
//              write dBias for their 4 outputs.

#include common
#storage x 0 read
#storage dy 1 read
@group(0) @binding(2) var<storage, read> wt: array<f32>;         // [out, in]
#storage dx 3 read_write
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;   // [out, in]
@group(0) @binding(5) var<storage, read_write> db: array<f32>;   // [out]

struct Params {
    n: u32, c: u32, plane: u32, qpr: u32,   // batch, channels, H·W, quads per channel row
    out: u32, oqs: u32, feats: u32, _p0: u32, // out features, quads per dY row, C·H·W
}
@group(0) @binding(6) var<uniform> p: Params;

// Samples per grad_input invocation.
const NB: u32 = 4u;

@compute @workgroup_size(64)
fn grad_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let tiles = (p.n + NB - 1u) / NB;
    if (t >= p.qpr * p.c * tiles) { return; }
    let q = t % p.qpr;
    let c = (t / p.qpr) % p.c;
    let n0 = (t / (p.qpr * p.c)) * NB;
    let pos = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    let live = pos < vec4<u32>(p.plane);
    // Pad lanes read a valid weight; their sums are discarded on store.
    let f = vec4<u32>(c * p.plane) + min(pos, vec4<u32>(p.plane - 1u));
    var acc: array<vec4<f32>, NB>;
    for (var oq = 0u; oq < p.oqs; oq++) {
        var g: array<vec4<f32>, NB>;
        for (var b = 0u; b < NB; b++) {
            g[b] = dy_ld4(min(n0 + b, p.n - 1u) * p.oqs + oq);
        }
        for (var j = 0u; j < 4u; j++) {
            let o = 4u * oq + j;
            if (o >= p.out) { break; }
            let r = o * p.feats;
            let wv = vec4<f32>(wt[r + f.x], wt[r + f.y], wt[r + f.z], wt[r + f.w]);
            for (var b = 0u; b < NB; b++) {
                acc[b] += g[b][j] * wv;
            }
        }
    }
    for (var b = 0u; b < NB; b++) {
        let n = n0 + b;
        if (n < p.n) {
            dx_st4((n * p.c + c) * p.qpr + q, select(vec4<f32>(0.0), acc[b], live));
        }
    }
}

@compute @workgroup_size(64)
fn grad_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.qpr * p.c * p.oqs) { return; }
    let q = t % p.qpr;
    let c = (t / p.qpr) % p.c;
    let oq = t / (p.qpr * p.c);
    let omask = lane_mask(oq, p.out);
    var acc: array<vec4<f32>, 4>; // acc[j][l]: output 4·oq + j, position 4·q + l
    var bsum = vec4<f32>(0.0);
    for (var n = 0u; n < p.n; n++) {
        let xv = x_ld4((n * p.c + c) * p.qpr + q);
        let g = select(vec4<f32>(0.0), dy_ld4(n * p.oqs + oq), omask);
        acc[0] += g.x * xv;
        acc[1] += g.y * xv;
        acc[2] += g.z * xv;
        acc[3] += g.w * xv;
        bsum += g;
    }
    let write_bias = c == 0u && q == 0u;
    for (var j = 0u; j < 4u; j++) {
        let o = 4u * oq + j;
        if (o >= p.out) { break; }
        let r = o * p.feats + c * p.plane;
        for (var l = 0u; l < 4u; l++) {
            let pos = 4u * q + l;
            if (pos < p.plane) { dw[r + pos] = acc[j][l]; }
        }
        if (write_bias) { db[o] = bsum[j]; }
    }
}

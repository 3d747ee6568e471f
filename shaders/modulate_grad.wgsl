// Backward of the weight modulation + demodulation (modulate.wgsl) for the trainer.
//
// Forward, per sample n:  W'[n, o, i] = W[o, i]·(s[n, i] + bias)
//                         W''[n, o, i] = W'[n, o, i]·a[n, o],  a = 1/sqrt(Σ_i W'² + eps)  (demod)
// Backward from G = dL/dW'' (fp16, the forward output's layout [N, cin, 1, cout]):
//   r'[n, o] = Σ_i G·W'                      (so Σ_i G·W'' = a·r')
//   dW'[n, o, i] = a·G − c·W',  c = r'·a³     (= (G − W''·Σ_j G·W'')/σ);  a = 1, c = 0 without demod
//   ds[n, i] = Σ_o dW'[n, o, i]·W[o, i]       (fp16 [N, 1, 1, cin])
//   dW[o, i] = Σ_n dW'[n, o, i]·(s[n, i] + bias)   (f32, PyTorch [cout, cin])
// W is the f32 master copy; W' is recomputed in f32 from it and the fp16 style.
//
// grad_stats   one invocation per (sample, quad of output channels): the sums over i, then
//              (a, c) per (n, o) into the f32 scratch `st` [N, cout, 2]. Skipped without demod.
// grad_style   one invocation per (sample, quad of input channels): ds, summed over o in order.
// grad_weight  one invocation per (input channel, quad of output channels): dW, summed over the
//              batch in order.
// Every sum has one owner and a fixed order: results are bit-identical run to run.

#include common
@group(0) @binding(0) var<storage, read> wt: array<f32>;        // [cout, cin]
#storage s 1 read
#storage g 2 read
@group(0) @binding(3) var<storage, read_write> st: array<f32>;  // [N, cout, 2]: (a, c)
#storage ds 4 read_write
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;  // [cout, cin]

struct Params {
    n: u32, cin: u32, cout: u32, s_stride: u32,
    s_offset: u32, demod: u32, s_bias: f32, eps: f32,
}
@group(0) @binding(6) var<uniform> p: Params;

// Output channels of quad oq, clamped to valid indices (the caller masks the extra lanes).
fn out_idx(oq: u32) -> vec4<u32> {
    return min(vec4<u32>(4u * oq) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.cout - 1u));
}

// W[o, i] for the 4 output channels `o`.
fn w_col(o: vec4<u32>, i: u32) -> vec4<f32> {
    return vec4<f32>(wt[o.x * p.cin + i], wt[o.y * p.cin + i], wt[o.z * p.cin + i], wt[o.w * p.cin + i]);
}

// (a, c) of sample n for the 4 output channels `o`.
fn coefs(n: u32, o: vec4<u32>) -> array<vec4<f32>, 2> {
    if (p.demod == 0u) { return array<vec4<f32>, 2>(vec4<f32>(1.0), vec4<f32>(0.0)); }
    let b = 2u * n * p.cout;
    let a = vec4<f32>(st[b + 2u * o.x], st[b + 2u * o.y], st[b + 2u * o.z], st[b + 2u * o.w]);
    let c = vec4<f32>(st[b + 2u * o.x + 1u], st[b + 2u * o.y + 1u], st[b + 2u * o.z + 1u], st[b + 2u * o.w + 1u]);
    return array<vec4<f32>, 2>(a, c);
}

@compute @workgroup_size(64)
fn grad_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let oqs = (p.cout + 3u) / 4u;
    if (t >= oqs * p.n) { return; }
    let oq = t % oqs;
    let n = t / oqs;
    let o = out_idx(oq);
    let sb = n * p.s_stride + p.s_offset;
    var ss = vec4<f32>(0.0);
    var gr = vec4<f32>(0.0);
    for (var i = 0u; i < p.cin; i++) {
        let wp = w_col(o, i) * (s_ld(sb + i) + p.s_bias);
        ss += wp * wp;
        gr += g_ld4((n * p.cin + i) * oqs + oq) * wp;
    }
    let a = inverseSqrt(ss + p.eps);
    let c = gr * a * a * a;
    let live = lane_mask(oq, p.cout);
    let b = 2u * n * p.cout;
    for (var j = 0u; j < 4u; j++) {
        if (live[j]) {
            st[b + 2u * (4u * oq + j)] = a[j];
            st[b + 2u * (4u * oq + j) + 1u] = c[j];
        }
    }
}

@compute @workgroup_size(64)
fn grad_style(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let iqs = (p.cin + 3u) / 4u;
    if (t >= iqs * p.n) { return; }
    let iq = t % iqs;
    let n = t / iqs;
    let oqs = (p.cout + 3u) / 4u;
    let sb = n * p.s_stride + p.s_offset;
    var acc = vec4<f32>(0.0);
    for (var l = 0u; l < 4u; l++) {
        let i = 4u * iq + l;
        if (i >= p.cin) { break; }
        let sv = s_ld(sb + i) + p.s_bias;
        var sum = vec4<f32>(0.0);
        for (var oq = 0u; oq < oqs; oq++) {
            let o = out_idx(oq);
            // Missing output channels (o ≥ cout) contribute nothing: their weights read as 0.
            let w = select(vec4<f32>(0.0), w_col(o, i), lane_mask(oq, p.cout));
            let k = coefs(n, o);
            let d = k[0] * g_ld4((n * p.cin + i) * oqs + oq) - k[1] * w * sv;
            sum += d * w;
        }
        acc[l] = sum.x + sum.y + sum.z + sum.w;
    }
    ds_st4(n * iqs + iq, acc);
}

@compute @workgroup_size(64)
fn grad_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let oqs = (p.cout + 3u) / 4u;
    if (t >= oqs * p.cin) { return; }
    let oq = t % oqs;
    let i = t / oqs;
    let o = out_idx(oq);
    let w = w_col(o, i);
    var acc = vec4<f32>(0.0);
    for (var n = 0u; n < p.n; n++) {
        let sv = s_ld(n * p.s_stride + p.s_offset + i) + p.s_bias;
        let k = coefs(n, o);
        let d = k[0] * g_ld4((n * p.cin + i) * oqs + oq) - k[1] * w * sv;
        acc += d * sv;
    }
    let live = lane_mask(oq, p.cout);
    for (var j = 0u; j < 4u; j++) {
        if (live[j]) { dw[(4u * oq + j) * p.cin + i] = acc[j]; }
    }
}

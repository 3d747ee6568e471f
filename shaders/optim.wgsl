// Optimiser step for the trainer: gradient norm, loss-scale bookkeeping, SGD / Adam / AdamW.
// Parameters, gradients and optimiser state are plain f32 arrays in PyTorch layout.
//
// sumsq     one dispatch per parameter, one workgroup per chunk of `chunk_len` gradients: lanes
//           stride over the chunk summing (g / scale)², lane 0 adds the 64 lane sums in lane order
//           and writes the chunk's partial to norms[slot + chunk] (-1 when the chunk holds a
//           non-finite gradient). Deterministic: fixed chunks, fixed order.
// finalize  one workgroup: sums every partial in slot order (lane l takes slots l, l + 64, ...;
//           lane 0 then adds the lanes in order), and decides the step: the global norm of the
//           unscaled gradients, the clip coefficient (torch.nn.utils.clip_grad_norm_), the factor
//           the update multiplies gradients by, the skip flag, the loss-scale update
//           (torch.cuda.amp.GradScaler) and Adam's bias corrections for the effective step count.
// sgd, adam one invocation per element: torch.optim.SGD / Adam / AdamW (single-tensor code path,
//           maximize = False, amsgrad = False). Nothing is written when the skip flag is set.
//
// Scaler slots (kernels::optim::scaler on the host): 0 loss scale, 1 gradient factor, 2 skip flag,
// 3 consecutive good steps, 4 global norm, 5 skipped steps so far, 6-7 reserved.

#include common
@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;  // exp_avg or momentum_buffer
@group(0) @binding(3) var<storage, read_write> v: array<f32>;  // exp_avg_sq
@group(0) @binding(4) var<storage, read_write> scaler: array<f32>;
@group(0) @binding(5) var<storage, read_write> norms: array<f32>;

// Written by the host at the start of every step (lr, t, decay) and by `finalize` (the rest).
struct Hyper {
    lr: f32,       // learning rate of this step
    t: u32,        // host step number, 1-based, counting skipped steps
    decay: f32,    // 1 - lr·weight_decay (AdamW), computed in f64 by the host
    _h0: u32,
    t_eff: u32,    // steps actually taken, this one included: t - skipped
    bc1: f32,      // 1 - β1^t_eff
    bc2_sqrt: f32, // sqrt(1 - β2^t_eff)
    _h1: u32,
}
@group(0) @binding(6) var<storage, read_write> hy: Hyper;

struct Params {
    len: u32, chunks: u32, chunk_len: u32, slot: u32,
    nslots: u32, clip: u32, dynamic: u32, growth_interval: u32,
    max_norm: f32, growth: f32, backoff: f32, adam: u32,
    beta1: f32, beta2: f32, d1: f32, d2: f32,
    eps: f32, wd: f32, momentum: f32, damp_c: f32,
    nesterov: u32, adamw: u32, inf_bits: u32, _p0: u32,
}
@group(0) @binding(7) var<uniform> p: Params;

const S_SCALE: u32 = 0u;
const S_FACTOR: u32 = 1u;
const S_SKIP: u32 = 2u;
const S_GOOD: u32 = 3u;
const S_NORM: u32 = 4u;
const S_SKIPPED: u32 = 5u;

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

var<workgroup> red: array<f32, 64>;
var<workgroup> redbad: array<u32, 64>;

@compute @workgroup_size(64)
fn sumsq(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let chunk = wid3.x + wid3.y * nwg.x;
    if (chunk >= p.chunks) { return; }
    let inv = 1.0 / scaler[S_SCALE];
    let start = chunk * p.chunk_len;
    let end = min(p.len, start + p.chunk_len);
    var s = 0.0;
    var bad = 0u;
    for (var i = start + lid; i < end; i += 64u) {
        let g = grad[i];
        if (!finite(g)) { bad = 1u; }
        let u = g * inv;
        s += u * u;
    }
    red[lid] = s;
    redbad[lid] = bad;
    workgroupBarrier();
    if (lid == 0u) {
        var t = 0.0;
        var b = 0u;
        for (var k = 0u; k < 64u; k++) {
            t += red[k];
            b |= redbad[k];
        }
        norms[p.slot + chunk] = select(t, -1.0, b != 0u);
    }
}

// 1 - β^n with d = 1 - β (computed in f64 by the host), accurate to a few ulps for any n ≥ 1:
// for small d through ln(1 - d) and expm1 series (no cancellation), else by repeated squaring.
fn bias_correction(beta: f32, d: f32, n: u32) -> f32 {
    if (d >= 0.25) {
        var base = beta;
        var r = 1.0;
        var e = n;
        loop {
            if ((e & 1u) != 0u) { r *= base; }
            e = e >> 1u;
            if (e == 0u) { break; }
            base *= base;
        }
        return 1.0 - r;
    }
    // ln(1 - d) = -(d + d²/2 + d³/3 + ...), d < 1/4: 30 terms reach 1e-19.
    var l = 0.0;
    var term = d;
    for (var k = 1u; k <= 30u; k++) {
        l -= term / f32(k);
        term *= d;
    }
    let y = f32(n) * l;
    if (y > -0.5) {
        // -expm1(y) = -(y + y²/2! + y³/3! + ...), |y| < 1/2: 14 terms reach 1e-16.
        var s = 0.0;
        var tk = y;
        for (var k = 1u; k <= 14u; k++) {
            s += tk;
            tk *= y / f32(k + 1u);
        }
        return -s;
    }
    return 1.0 - exp(y);
}

@compute @workgroup_size(64)
fn finalize(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    var bad = 0u;
    for (var i = lid; i < p.nslots; i += 64u) {
        let x = norms[i];
        if (x < 0.0 || !finite(x)) { bad = 1u; }
        s += x;
    }
    red[lid] = s;
    redbad[lid] = bad;
    workgroupBarrier();
    if (lid != 0u) { return; }
    var total = 0.0;
    var b = 0u;
    for (var k = 0u; k < 64u; k++) {
        total += red[k];
        b |= redbad[k];
    }
    let scale = scaler[S_SCALE];
    let found_inf = b != 0u || !finite(total);
    let skipped = u32(scaler[S_SKIPPED]);
    if (found_inf) {
        scaler[S_NORM] = bitcast<f32>(p.inf_bits);
        scaler[S_FACTOR] = 0.0;
        scaler[S_SKIP] = 1.0;
        scaler[S_GOOD] = 0.0;
        scaler[S_SKIPPED] = f32(skipped + 1u);
        if (p.dynamic != 0u) { scaler[S_SCALE] = scale * p.backoff; }
        return;
    }
    let norm = sqrt(total);
    var coef = 1.0;
    if (p.clip != 0u) {
        let c = p.max_norm / (norm + 1e-6);
        if (c < 1.0) { coef = c; }
    }
    scaler[S_NORM] = norm;
    scaler[S_FACTOR] = (1.0 / scale) * coef;
    scaler[S_SKIP] = 0.0;
    let good = u32(scaler[S_GOOD]) + 1u;
    if (p.dynamic != 0u && good >= p.growth_interval) {
        let grown = scale * p.growth;
        if (finite(grown)) { scaler[S_SCALE] = grown; }
        scaler[S_GOOD] = 0.0;
    } else {
        scaler[S_GOOD] = f32(good);
    }
    let t_eff = max(hy.t, skipped + 1u) - skipped;
    hy.t_eff = t_eff;
    if (p.adam != 0u) {
        hy.bc1 = bias_correction(p.beta1, p.d1, t_eff);
        hy.bc2_sqrt = sqrt(bias_correction(p.beta2, p.d2, t_eff));
    } else {
        hy.bc1 = 1.0;
        hy.bc2_sqrt = 1.0;
    }
}

@compute @workgroup_size(64)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.len || scaler[S_SKIP] != 0.0) { return; }
    var g = grad[i] * scaler[S_FACTOR];
    let x = param[i];
    if (p.wd != 0.0) { g += p.wd * x; }                 // grad.add(param, alpha=wd)
    if (p.momentum != 0.0) {
        var buf = g;                                    // first step: clone of the gradient
        if (hy.t_eff > 1u) { buf = m[i] * p.momentum + p.damp_c * g; }
        m[i] = buf;
        if (p.nesterov != 0u) { g += p.momentum * buf; } else { g = buf; }
    }
    param[i] = x - hy.lr * g;
}

@compute @workgroup_size(64)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.len || scaler[S_SKIP] != 0.0) { return; }
    var g = grad[i] * scaler[S_FACTOR];
    var x = param[i];
    if (p.adamw != 0u) {
        x *= hy.decay;                                  // param.mul_(1 - lr·wd)
    } else if (p.wd != 0.0) {
        g += p.wd * x;                                  // grad.add(param, alpha=wd)
    }
    let m0 = m[i];
    var m1: f32;
    if (p.d1 < 0.5) { m1 = m0 + p.d1 * (g - m0); } else { m1 = g - (g - m0) * p.beta1; } // lerp
    let v1 = v[i] * p.beta2 + p.d2 * (g * g);
    m[i] = m1;
    v[i] = v1;
    let step_size = hy.lr / hy.bc1;
    let denom = sqrt(v1) / hy.bc2_sqrt + p.eps;
    param[i] = x - step_size * (m1 / denom);
}

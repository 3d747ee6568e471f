// Training-time normalisation for the trainer (issue 5): batch norm with batch statistics and
// running-stat updates, and the backward of instance norm / AdaIN / conditional batch norm.
//
// Batch norm (kernels::norm_grad::BatchNorm). Statistics per channel over N·H·W (layout Channels,
// NCHW) or per feature over N (layout Features, a vector batch [N, 1, 1, F], BatchNorm1d).
//   bn_stats            Channels, train, pass 1: one workgroup per (chunk of the channel's N·⌈HW/4⌉
//                       quads, channel) writes the chunk's (mean, M2 = Σ(x − mean)², count), the mean
//                       and M2 each a fixed-order sum (lanes, then a workgroup tree).
//   bn_stats_features   Features, train, pass 1: one invocation per quad of features loops over N
//                       (two passes: mean, then M2); one "chunk".
//   bn_finalize         train, pass 2: one invocation per channel merges the chunks in chunk order
//                       (Chan et al.), writes saved = [mean | 1/√(var + eps)] (biased variance) and
//                       updates the running stats in place (the variance unbiased, PyTorch).
//   bn_eval_stats       eval: saved = [running mean | 1/√(running var + eps)].
//   bn_normalize        y = act(γ·(x − mean)·invstd + β), one invocation per quad.
//   bn_grad_stats       Channels backward pass 1: per (chunk, channel) Σdz and Σdz·x̂, dz = dy·act'(y).
//   bn_grad_stats_features  the same per quad of features, looping over N.
//   bn_grad_finalize    pass 2: per channel, sums the chunks in order: dγ = Σdz·x̂, dβ = Σdz.
//   bn_grad_input       dx = γ·invstd·(dz − dβ/M − x̂·dγ/M) (train) or γ·invstd·dz (eval).
// Norm backward (kernels::norm_grad::NormGrad), one workgroup per (n, c) row where a row is needed:
//   ng_gather           per-row γ (+ gamma_bias) and β read out of a style tensor [N, 1, 1, F].
//   ng_forward          instance norm / AdaIN / conditional BN forward with γ/β from f32 buffers.
//   ng_backward         per row: statistics (recomputed from x as the forward does, or running),
//                       Σdz and Σdz·x̂ (written to partials [row][2]), then dx.
//   ng_scatter          the per-row Σdz·x̂ / Σdz into the γ / β feature ranges of an fp16 style
//                       gradient; quads meeting neither range are not written.
//   (static γ/β gradients: bn_grad_finalize over the N rows of each channel, in order.)
// Every reduction is in a fixed order: results are bit-identical from run to run (no atomics).
//
// Bindings are shared by role: tensors x (forward input; the style tensor in ng_gather), y (the
// forward output, read by backward kernels), dy, out (whatever a kernel writes); f32 buffers fa, fb,
// fc, fd whose roles each entry point lists. At most 8 storage buffers in the module.

#include common
#storage x 0 read
#storage y 1 read
#storage dy 2 read
#storage out 3 read_write
@group(0) @binding(4) var<storage, read_write> fa: array<f32>;
@group(0) @binding(5) var<storage, read_write> fb: array<f32>;
@group(0) @binding(6) var<storage, read_write> fc: array<f32>;
@group(0) @binding(7) var<storage, read_write> fd: array<f32>;

struct Params {
    n: u32, c: u32, plane: u32, qpr: u32,         // qpr: quads per row (row stride / 4)
    chunks: u32, chunk_quads: u32, features: u32, act: u32,
    rec: u32, affine: u32, s_stride: u32, g_off: u32, // rec: floats per partials record
    b_off: u32, train: u32, _p0: u32, _p1: u32,   // affine: 0 none, 1 per channel, 2 per row
    slope: f32, eps: f32, momentum: f32, g_bias: f32,
}
@group(0) @binding(8) var<uniform> p: Params;

// d act / d z as a function of the activation's output (the activations whose derivative the
// output determines; the host rejects the others). Kinks take PyTorch's side: 0 at y = 0 for ReLU,
// the slope at y = 0 for leaky ReLU, 0 at y = 0 and y = 6 for ReLU6.
fn act_grad(yv: vec4<f32>) -> vec4<f32> {
    let one = vec4<f32>(1.0);
    let zero = vec4<f32>(0.0);
    switch p.act {
        case 1u: { return select(zero, one, yv > zero); }
        case 2u: { return select(vec4<f32>(p.slope), one, yv > zero); }
        case 3u: { return select(zero, one, (yv > zero) & (yv < vec4<f32>(6.0))); }
        case 4u: { return yv * (one - yv); }
        case 5u: { return one - yv * yv; }
        default: { return one; }
    }
}

var<workgroup> red: array<vec2<f32>, 64>;

// Sum over the 64 lanes of a workgroup, in a fixed tree order.
fn wg_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn wg_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn hsum(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}

// Number of rows of the tensor a per-quad kernel walks: N·C planes, or N vectors.
fn rows() -> u32 {
    return select(p.n * p.c, p.n, p.features != 0u);
}

// Values averaged per channel: N·H·W, or N for features.
fn count() -> f32 {
    return f32(select(p.n * p.plane, p.n, p.features != 0u));
}

// Word index of quad `t` (of the N·qpr quads of channel `ch`, sample-major) in an NCHW tensor.
fn chan_quad(t: u32, ch: u32) -> u32 {
    return ((t / p.qpr) * p.c + ch) * p.qpr + t % p.qpr;
}

// Channel of each lane of tensor quad `t`: the row's channel (Channels), or the lane's feature,
// clamped into range for pad lanes (Features).
fn lane_channels(t: u32) -> vec4<u32> {
    let q = t % p.qpr;
    if (p.features != 0u) {
        return min(vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.c - 1u));
    }
    return vec4<u32>((t / p.qpr) % p.c);
}

fn fa4(i: vec4<u32>, off: u32) -> vec4<f32> {
    return vec4<f32>(fa[off + i.x], fa[off + i.y], fa[off + i.z], fa[off + i.w]);
}
fn fb4(i: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(fb[i.x], fb[i.y], fb[i.z], fb[i.w]);
}
fn fc4(i: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(fc[i.x], fc[i.y], fc[i.z], fc[i.w]);
}
fn fd4(i: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(fd[i.x], fd[i.y], fd[i.z], fd[i.w]);
}

fn mask4(m: vec4<bool>, v: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, m);
}

// ---------------------------------------------------------------------------------------------
// Batch norm forward

// x: input. fd: partials [chunks][C][3] (written).
@compute @workgroup_size(64)
fn bn_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let g = wg_index(wid, nwg);
    if (g >= p.chunks * p.c) { return; } // uniform per workgroup
    let ch = g % p.c;
    let k = g / p.c;
    let t0 = k * p.chunk_quads;
    let t1 = min(t0 + p.chunk_quads, p.n * p.qpr);
    var acc = vec2<f32>(0.0);
    for (var t = t0 + lid; t < t1; t += 64u) {
        let m = lane_mask(t % p.qpr, p.plane);
        acc += vec2<f32>(hsum(mask4(m, x_ld4(chan_quad(t, ch)))), hsum(mask4(m, vec4<f32>(1.0))));
    }
    let s = wg_sum2(acc, lid);
    let mean = s.x / s.y;
    var m2 = 0.0;
    for (var t = t0 + lid; t < t1; t += 64u) {
        let d = mask4(lane_mask(t % p.qpr, p.plane), x_ld4(chan_quad(t, ch)) - mean);
        m2 += dot(d, d);
    }
    let r = wg_sum2(vec2<f32>(m2, 0.0), lid);
    if (lid == 0u) {
        let o = (k * p.c + ch) * 3u;
        fd[o] = mean;
        fd[o + 1u] = r.x;
        fd[o + 2u] = s.y;
    }
}

// x: input [N, 1, 1, F]. fd: partials [1][F][3] (written).
@compute @workgroup_size(64)
fn bn_stats_features(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let fq = flat_id(gid, nwg);
    if (fq >= p.qpr) { return; }
    var s = vec4<f32>(0.0);
    for (var n = 0u; n < p.n; n++) { s += x_ld4(n * p.qpr + fq); }
    let mean = s / f32(p.n);
    var m2 = vec4<f32>(0.0);
    for (var n = 0u; n < p.n; n++) {
        let d = x_ld4(n * p.qpr + fq) - mean;
        m2 += d * d;
    }
    for (var j = 0u; j < 4u; j++) {
        let f = 4u * fq + j;
        if (f < p.c) {
            fd[f * 3u] = mean[j];
            fd[f * 3u + 1u] = m2[j];
            fd[f * 3u + 2u] = f32(p.n);
        }
    }
}

// fd: partials (read). fa: saved [mean(C) | invstd(C)] (written). fb, fc: running mean and
// running variance (updated in place).
@compute @workgroup_size(64)
fn bn_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ch = flat_id(gid, nwg);
    if (ch >= p.c) { return; }
    var mean = fd[ch * 3u];
    var m2 = fd[ch * 3u + 1u];
    var cnt = fd[ch * 3u + 2u];
    for (var k = 1u; k < p.chunks; k++) {
        let o = (k * p.c + ch) * 3u;
        let nb = fd[o + 2u];
        let tot = cnt + nb;
        let d = fd[o] - mean;
        mean += d * (nb / tot);
        m2 += fd[o + 1u] + d * d * (cnt * (nb / tot));
        cnt = tot;
    }
    fa[ch] = mean;
    fa[p.c + ch] = inverseSqrt(m2 / cnt + p.eps);
    let keep = 1.0 - p.momentum;
    fb[ch] = keep * fb[ch] + p.momentum * mean;
    fc[ch] = keep * fc[ch] + p.momentum * (m2 / (cnt - 1.0));
}

// fa: saved (written). fb, fc: running mean and variance (read).
@compute @workgroup_size(64)
fn bn_eval_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ch = flat_id(gid, nwg);
    if (ch >= p.c) { return; }
    fa[ch] = fb[ch];
    fa[p.c + ch] = inverseSqrt(fc[ch] + p.eps);
}

// x: input. out: y. fa: saved. fb: γ. fc: β.
@compute @workgroup_size(64)
fn bn_normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= rows() * p.qpr) { return; }
    let ch = lane_channels(t);
    let k = fa4(ch, p.c) * fb4(ch);
    let v = activate((x_ld4(t) - fa4(ch, 0u)) * k + fc4(ch), p.act, p.slope);
    out_st4(t, mask4(lane_mask(t % p.qpr, p.plane), v));
}

// ---------------------------------------------------------------------------------------------
// Batch norm backward

// x, y, dy. fa: saved. fd: partials [chunks][C][3]: Σdz, Σdz·x̂ (written).
@compute @workgroup_size(64)
fn bn_grad_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let g = wg_index(wid, nwg);
    if (g >= p.chunks * p.c) { return; } // uniform per workgroup
    let ch = g % p.c;
    let k = g / p.c;
    let mean = fa[ch];
    let inv = fa[p.c + ch];
    let t0 = k * p.chunk_quads;
    let t1 = min(t0 + p.chunk_quads, p.n * p.qpr);
    var acc = vec2<f32>(0.0);
    for (var t = t0 + lid; t < t1; t += 64u) {
        let w = chan_quad(t, ch);
        let dz = mask4(lane_mask(t % p.qpr, p.plane), dy_ld4(w) * act_grad(y_ld4(w)));
        acc += vec2<f32>(hsum(dz), dot(dz, (x_ld4(w) - mean) * inv));
    }
    let s = wg_sum2(acc, lid);
    if (lid == 0u) {
        let o = (k * p.c + ch) * 3u;
        fd[o] = s.x;
        fd[o + 1u] = s.y;
    }
}

// x, y, dy [N, 1, 1, F]. fa: saved. fd: partials [1][F][3] (written).
@compute @workgroup_size(64)
fn bn_grad_stats_features(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let fq = flat_id(gid, nwg);
    if (fq >= p.qpr) { return; }
    let ch = min(vec4<u32>(4u * fq) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.c - 1u));
    let mean = fa4(ch, 0u);
    let inv = fa4(ch, p.c);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    for (var n = 0u; n < p.n; n++) {
        let w = n * p.qpr + fq;
        let dz = dy_ld4(w) * act_grad(y_ld4(w));
        s1 += dz;
        s2 += dz * (x_ld4(w) - mean) * inv;
    }
    for (var j = 0u; j < 4u; j++) {
        let f = 4u * fq + j;
        if (f < p.c) {
            fd[f * 3u] = s1[j];
            fd[f * 3u + 1u] = s2[j];
        }
    }
}

// fd: partials [chunks][C][rec] holding Σdz, Σdz·x̂ (read). fb: dγ, fc: dβ (written).
@compute @workgroup_size(64)
fn bn_grad_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ch = flat_id(gid, nwg);
    if (ch >= p.c) { return; }
    var s = vec2<f32>(0.0);
    for (var k = 0u; k < p.chunks; k++) {
        let o = (k * p.c + ch) * p.rec;
        s += vec2<f32>(fd[o], fd[o + 1u]);
    }
    fb[ch] = s.y;
    fc[ch] = s.x;
}

// x, y, dy. out: dx. fa: saved. fb: dγ. fc: dβ. fd: γ.
@compute @workgroup_size(64)
fn bn_grad_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= rows() * p.qpr) { return; }
    let ch = lane_channels(t);
    let inv = fa4(ch, p.c);
    var g = dy_ld4(t) * act_grad(y_ld4(t));
    if (p.train != 0u) {
        let xh = (x_ld4(t) - fa4(ch, 0u)) * inv;
        let r = 1.0 / count();
        g = g - fc4(ch) * r - xh * (fb4(ch) * r);
    }
    out_st4(t, mask4(lane_mask(t % p.qpr, p.plane), fd4(ch) * inv * g));
}

// ---------------------------------------------------------------------------------------------
// Instance norm / AdaIN / conditional batch norm (rows of one sample and channel)

// x: the style tensor [N, 1, 1, F]. fa: γ per row, fc: β per row (written).
@compute @workgroup_size(64)
fn ng_gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_id(gid, nwg);
    if (r >= p.n * p.c) { return; }
    let b = (r / p.c) * p.s_stride;
    let ch = r % p.c;
    fa[r] = x_ld(b + p.g_off + ch) + p.g_bias;
    fc[r] = x_ld(b + p.b_off + ch);
}

// Mean and 1/√(σ² + eps) of a row: the row's own statistics, two passes as norm.wgsl's
// instance_norm computes them (train = 1), or the running statistics in fb = [mean(C) | var(C)].
fn row_stats(base: u32, ch: u32, lid: u32) -> vec2<f32> {
    if (p.train == 0u) {
        return vec2<f32>(fb[ch], inverseSqrt(fb[p.c + ch] + p.eps));
    }
    var s = 0.0;
    for (var q = lid; q < p.qpr; q += 64u) {
        s += hsum(mask4(lane_mask(q, p.plane), x_ld4(base + q)));
    }
    let mean = wg_sum2(vec2<f32>(s, 0.0), lid).x / f32(p.plane);
    var s2 = 0.0;
    for (var q = lid; q < p.qpr; q += 64u) {
        let d = mask4(lane_mask(q, p.plane), x_ld4(base + q) - mean);
        s2 += dot(d, d);
    }
    return vec2<f32>(mean, inverseSqrt(wg_sum2(vec2<f32>(s2, 0.0), lid).x / f32(p.plane) + p.eps));
}

// x. out: y. fa: γ, fc: β (per channel or per row). fb: running [mean | var].
@compute @workgroup_size(64)
fn ng_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = wg_index(wid, nwg);
    if (row >= p.n * p.c) { return; } // uniform per workgroup
    let ch = row % p.c;
    let base = row * p.qpr;
    let st = row_stats(base, ch, lid);
    var gb = vec2<f32>(1.0, 0.0);
    if (p.affine == 1u) { gb = vec2<f32>(fa[ch], fc[ch]); }
    if (p.affine == 2u) { gb = vec2<f32>(fa[row], fc[row]); }
    let k = st.y * gb.x;
    for (var q = lid; q < p.qpr; q += 64u) {
        let v = activate((x_ld4(base + q) - st.x) * k + gb.y, p.act, p.slope);
        out_st4(base + q, mask4(lane_mask(q, p.plane), v));
    }
}

// x, y, dy. out: dx. fa: γ (per channel or per row). fb: running [mean | var].
// fd: partials [row][2]: Σdz, Σdz·x̂ (written).
@compute @workgroup_size(64)
fn ng_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = wg_index(wid, nwg);
    if (row >= p.n * p.c) { return; } // uniform per workgroup
    let ch = row % p.c;
    let base = row * p.qpr;
    let st = row_stats(base, ch, lid);
    var gamma = 1.0;
    if (p.affine == 1u) { gamma = fa[ch]; }
    if (p.affine == 2u) { gamma = fa[row]; }
    var acc = vec2<f32>(0.0);
    for (var q = lid; q < p.qpr; q += 64u) {
        let dz = mask4(lane_mask(q, p.plane), dy_ld4(base + q) * act_grad(y_ld4(base + q)));
        acc += vec2<f32>(hsum(dz), dot(dz, (x_ld4(base + q) - st.x) * st.y));
    }
    let s = wg_sum2(acc, lid);
    let k = gamma * st.y;
    let r = 1.0 / f32(p.plane);
    for (var q = lid; q < p.qpr; q += 64u) {
        var g = dy_ld4(base + q) * act_grad(y_ld4(base + q));
        if (p.train != 0u) {
            g = g - s.x * r - (x_ld4(base + q) - st.x) * st.y * (s.y * r);
        }
        out_st4(base + q, mask4(lane_mask(q, p.plane), k * g));
    }
    if (lid == 0u) {
        fd[row * 2u] = s.x;
        fd[row * 2u + 1u] = s.y;
    }
}

// out: the style gradient [N, 1, 1, F] (quads meeting the γ or β range are read, patched and
// written; other quads are not touched). fd: partials [row][2].
@compute @workgroup_size(64)
fn ng_scatter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let sq = p.s_stride / 4u;
    if (t >= p.n * sq) { return; }
    let n = t / sq;
    let f0 = 4u * (t % sq);
    let hit_g = f0 + 4u > p.g_off && f0 < p.g_off + p.c;
    let hit_b = f0 + 4u > p.b_off && f0 < p.b_off + p.c;
    if (!hit_g && !hit_b) { return; }
    var v = out_ld4(t);
    for (var j = 0u; j < 4u; j++) {
        let f = f0 + j;
        var s = 0.0;
        var hit = false;
        if (f >= p.g_off && f < p.g_off + p.c) {
            s += fd[(n * p.c + f - p.g_off) * 2u + 1u];
            hit = true;
        }
        if (f >= p.b_off && f < p.b_off + p.c) {
            s += fd[(n * p.c + f - p.b_off) * 2u];
            hit = true;
        }
        if (hit) { v[j] = s; }
    }
    out_st4(t, v);
}

// Training losses for the trainer (src/kernels/loss.rs): per-sample values, the weighted batch
// total, and the gradient seed d(total)/d(prediction) times the loss scale.
//
// Every loss runs in three passes, all in a fixed order (bit-identical from run to run, no atomics):
//   1. partials  one workgroup per (sample or channel plane, chunk): lanes stride over the chunk,
//                accumulate in f32, and the 64 lane sums are added in a fixed tree order; the
//                workgroup writes its sums into the state buffer `st`.
//   2. finalize  one workgroup: per sample, the chunk sums in chunk order give the loss l_n
//                (st[n]) and the gradient coefficient (st[N + n]): scale · λ · w_n · ∂l_n/∂(sum)
//                / D; the batch total λ · Σ w_n l_n / D goes to ls[slot].
//   3. grad      one invocation per quad of the gradient: coefficient times the element's
//                derivative, written as a whole quad (pad lanes 0).
//
// pixel_*   L1 / MSE, optionally masked (broadcast [N,1,H,W] or same-shape weights), target optional
//           (the background mask loss has none). Weight mode: k = m, e = d; inputs mode (faceswap's
//           penalized mask loss, mask multiplied into both images): k = 1, e = m·d. Per element
//           v = k·φ(e), ∂v/∂p = m·φ'(e) in both modes (φ = |·| or (·)²).
// ssim_*    SSIM with a k×k Gaussian window, valid padding, per channel. Pass 1 (one workgroup per
//           16×4 output tile, its input window staged in workgroup memory) computes the local
//           means and centred (co)variances per output position, the SSIM value and three maps:
//           A = ∂s/∂μx (through the raw moments E[x²], E[xy]), B = ∂s/∂σx², C = ∂s/∂σxy. The
//           centred moments carry μμ'(1 − Σw) so that they equal E[xy] − μxμy exactly for the
//           f32-rounded window (Σw ≠ 1 by a few ulps): value and gradient are one function. The
//           gradient gathers the maps back through the window, separably (x then y):
//           ∂s/∂x_p = Σ_o w(p−o)·(A_o + 2·x_p·B_o + y_p·C_o).
// id_*      1 − cos(a, b) per sample, optionally relu(1 − cos − margin), mean over the batch or over
//           the samples with a positive loss. Gradients for a, and for b by swapping the roles.
// cos2_weights  α_n = cos(a_n, b_n)² · Q_n into st (no gradient).

#include common
#storage pa 0 read
#storage pb 1 read
#storage pm 2 read
#storage gr 3 read_write
@group(0) @binding(4) var<storage, read> wv: array<f32>;       // per-sample weights w / quality Q
@group(0) @binding(5) var<storage, read> sc: array<f32>;       // loss scale in element 0
@group(0) @binding(6) var<storage, read_write> st: array<f32>; // [values N | coef N | partials | maps]
@group(0) @binding(7) var<storage, read_write> ls: array<f32>; // losses (total at p.slot)

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    ho: u32, wo: u32, k: u32, chunks: u32,
    chunk_len: u32, dist: u32, apply: u32, norm: u32,
    mask: u32, flags: u32, slot: u32, part: u32,
    maps: u32, hmaps: u32, _p1: u32, _p2: u32,
    factor: f32, lambda: f32, c1: f32, c2: f32,
    kappa: f32, margin: f32, eps: f32, wdef: f32,
    win: array<vec4<f32>, 32>, // the 1-D window, one weight per element (.x): no dynamic lane pick
}
@group(0) @binding(8) var<uniform> p: Params;

const F_TARGET: u32 = 1u;   // pb holds a target (else the target is 0)
const F_WEIGHTS: u32 = 2u;  // wv holds per-sample weights (else 1)
const F_SWAP: u32 = 4u;     // id_grad for b: pa/pb are bound swapped, so swap |a|² and |b|²
const F_MARGIN: u32 = 8u;   // identity loss relu(1 − cos − margin)
const F_ACTIVE: u32 = 16u;  // identity total divided by the number of samples with l > 0
const F_QUALITY: u32 = 32u; // cos2_weights multiplies by Q from wv

const MASK_NONE: u32 = 0u;
const MASK_BROADCAST: u32 = 1u; // [N,1,H,W] over every channel
const MASK_FULL: u32 = 2u;      // same shape as the prediction

var<workgroup> red: array<vec4<f32>, 64>;

// Sum of `v` over the 64 lanes in a fixed tree order, returned to every lane. Call from uniform
// control flow.
fn wg_sum(lid: u32, v: vec4<f32>) -> vec4<f32> {
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

fn has(flag: u32) -> bool { return (p.flags & flag) != 0u; }

fn sample_weight(n: u32) -> f32 {
    if (has(F_WEIGHTS)) { return wv[n]; }
    return 1.0;
}

fn hsum(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }

// ---------------------------------------------------------------------------------------------
// L1 / MSE

// Mask quad for tensor row `row` (sample n), quad q of a row of `qpr` quads; ones without a mask.
fn mask_quad(n: u32, row: u32, q: u32, qpr: u32) -> vec4<f32> {
    if (p.mask == MASK_BROADCAST) { return pm_ld4(n * qpr + q); }
    if (p.mask == MASK_FULL) { return pm_ld4(row * qpr + q); }
    return vec4<f32>(1.0);
}

struct Term { v: vec4<f32>, g: vec4<f32> }

// Per-element loss and its derivative with respect to the prediction, for differences d, mask m.
fn pixel_term(d: vec4<f32>, m: vec4<f32>) -> Term {
    var e = d;
    var k = m;
    if (p.apply == 1u) { e = m * d; k = vec4<f32>(1.0); }
    if (p.dist == 0u) {
        return Term(k * abs(e), m * sign(e));
    }
    return Term(k * e * e, 2.0 * m * e);
}

fn pixel_quad(n: u32, row: u32, q: u32, qpr: u32) -> Term {
    let i = row * qpr + q;
    var t = vec4<f32>(0.0);
    if (has(F_TARGET)) { t = pb_ld4(i); }
    return pixel_term(pa_ld4(i) - t, mask_quad(n, row, q, qpr));
}

@compute @workgroup_size(64)
fn pixel_partial(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    if (wid >= p.n * p.chunks) { return; }
    let n = wid / p.chunks;
    let chunk = wid % p.chunks;
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    let q0 = chunk * p.chunk_len;
    let q1 = min(q0 + p.chunk_len, p.c * qpr);
    var acc = vec2<f32>(0.0);
    for (var fq = q0 + lid; fq < q1; fq += WG) {
        let ch = fq / qpr;
        let q = fq % qpr;
        let row = n * p.c + ch;
        let live = lane_mask(q, plane);
        let t = pixel_quad(n, row, q, qpr);
        acc.x += hsum(select(vec4<f32>(0.0), t.v, live));
        if (p.mask == MASK_FULL || (p.mask == MASK_BROADCAST && ch == 0u)) {
            acc.y += hsum(select(vec4<f32>(0.0), mask_quad(n, row, q, qpr), live));
        }
    }
    let s = wg_sum(lid, vec4<f32>(acc, 0.0, 0.0));
    if (lid == 0u) {
        let i = p.part + 2u * wid;
        st[i] = s.x;
        st[i + 1u] = s.y;
    }
}

// (Σ loss terms, Σ mask) of sample n, its chunks added in order.
fn pixel_sums(n: u32) -> vec2<f32> {
    var s = vec2<f32>(0.0);
    for (var k = 0u; k < p.chunks; k++) {
        let i = p.part + 2u * (n * p.chunks + k);
        s += vec2<f32>(st[i], st[i + 1u]);
    }
    return s;
}

@compute @workgroup_size(64)
fn pixel_finalize(@builtin(local_invocation_index) lid: u32) {
    var msum = 0.0;
    for (var n = lid; n < p.n; n += WG) { msum += pixel_sums(n).y; }
    let mtot = wg_sum(lid, vec4<f32>(msum, 0.0, 0.0, 0.0)).x;
    let nf = f32(p.n);
    let scale = sc[0];
    var acc = 0.0;
    for (var n = lid; n < p.n; n += WG) {
        let s = pixel_sums(n);
        var den = f32(p.c * p.h * p.w);
        if (p.norm == 1u) { den = s.y; }
        if (p.norm == 2u) { den = mtot / nf; }
        var l = 0.0;
        var coef = 0.0;
        let wn = sample_weight(n);
        if (den > 0.0) {
            l = p.factor * s.x / den;
            coef = scale * p.lambda * wn * p.factor / (nf * den);
        }
        st[n] = l;
        st[p.n + n] = coef;
        acc += wn * l;
    }
    let tot = wg_sum(lid, vec4<f32>(acc, 0.0, 0.0, 0.0)).x;
    if (lid == 0u) { ls[p.slot] = p.lambda * tot / nf; }
}

@compute @workgroup_size(64)
fn pixel_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    if (t >= p.n * p.c * qpr) { return; }
    let row = t / qpr;
    let q = t % qpr;
    let n = row / p.c;
    let term = pixel_quad(n, row, q, qpr);
    gr_st4(t, select(vec4<f32>(0.0), st[p.n + n] * term.g, lane_mask(q, plane)));
}

// ---------------------------------------------------------------------------------------------
// SSIM

fn win_at(i: u32) -> f32 { return p.win[i].x; }

fn mask_at(n: u32, row: u32, i: u32) -> f32 {
    if (p.mask == MASK_BROADCAST) { return pm_ld(n * ((p.h * p.w + 3u) & ~3u) + i); }
    if (p.mask == MASK_FULL) { return pm_ld(row * ((p.h * p.w + 3u) & ~3u) + i); }
    return 1.0;
}

// (m·x, m·y) at plane index i of tensor row `row` (sample n).
fn ssim_xy(n: u32, row: u32, i: u32) -> vec2<f32> {
    let j = row * ((p.h * p.w + 3u) & ~3u) + i;
    return vec2<f32>(pa_ld(j), pb_ld(j)) * mask_at(n, row, i);
}

// Output tile of one ssim_stats workgroup: TSW × TSH positions, one per lane. Its input window
// (TSW + k − 1) × (TSH + k − 1) of masked (x, y) pairs is loaded once into workgroup memory.
const TSW: u32 = 16u;
const TSH: u32 = 4u;
var<workgroup> tile: array<vec2<f32>, 1645>; // (TSW + 31) × (TSH + 31): the largest window, 32

@compute @workgroup_size(64)
fn ssim_stats(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    if (wid >= p.n * p.c * p.chunks) { return; }
    let row = wid / p.chunks;
    let tidx = wid % p.chunks;
    let n = row / p.c;
    let tiles_x = (p.wo + TSW - 1u) / TSW;
    let y0 = (tidx / tiles_x) * TSH;
    let x0 = (tidx % tiles_x) * TSW;
    let tw = TSW + p.k - 1u;
    let th = TSH + p.k - 1u;
    for (var j = lid; j < tw * th; j += WG) {
        let iy = y0 + j / tw;
        let ix = x0 + j % tw;
        var v = vec2<f32>(0.0);
        if (iy < p.h && ix < p.w) { v = ssim_xy(n, row, iy * p.w + ix); }
        tile[j] = v;
    }
    workgroupBarrier();
    let ly = lid / TSW;
    let lx = lid % TSW;
    let oy = y0 + ly;
    let ox = x0 + lx;
    var acc = 0.0;
    if (oy < p.ho && ox < p.wo) {
        var mu = vec2<f32>(0.0);
        for (var ky = 0u; ky < p.k; ky++) {
            var r = vec2<f32>(0.0);
            let base = (ly + ky) * tw + lx;
            for (var kx = 0u; kx < p.k; kx++) { r += win_at(kx) * tile[base + kx]; }
            mu += win_at(ky) * r;
        }
        // σx², σy², σxy centred on the local means, plus μμ'(1 − Σw): equal to E[xy] − μxμy (the
        // raw moments the gradient below differentiates) for the f32 window, whose sum is not 1.
        var mom = vec3<f32>(mu.x * mu.x, mu.y * mu.y, mu.x * mu.y) * p.wdef;
        for (var ky = 0u; ky < p.k; ky++) {
            var r = vec3<f32>(0.0);
            let base = (ly + ky) * tw + lx;
            for (var kx = 0u; kx < p.k; kx++) {
                let d = tile[base + kx] - mu;
                r += win_at(kx) * vec3<f32>(d.x * d.x, d.y * d.y, d.x * d.y);
            }
            mom += win_at(ky) * r;
        }
        let d1 = mu.x * mu.x + mu.y * mu.y + p.c1;
        let d2 = mom.x + mom.y + p.c2;
        let lum = (2.0 * mu.x * mu.y + p.c1) / d1;
        let cs = (2.0 * mom.z + p.c2) / d2;
        let s = lum * cs;
        let bm = -s / d2;
        let cm = 2.0 * lum / d2;
        let am = 2.0 * cs * (mu.y - lum * mu.x) / d1 - 2.0 * mu.x * bm - mu.y * cm;
        let mi = p.maps + 3u * ((row * p.ho + oy) * p.wo + ox);
        st[mi] = am;
        st[mi + 1u] = bm;
        st[mi + 2u] = cm;
        acc = s;
    }
    let tot = wg_sum(lid, vec4<f32>(acc, 0.0, 0.0, 0.0)).x;
    if (lid == 0u) { st[p.part + wid] = tot; }
}

@compute @workgroup_size(64)
fn ssim_finalize(@builtin(local_invocation_index) lid: u32) {
    let cnt = f32(p.c * p.ho * p.wo);
    let nf = f32(p.n);
    let scale = sc[0];
    var acc = 0.0;
    for (var n = lid; n < p.n; n += WG) {
        var s = 0.0;
        let base = p.part + n * p.c * p.chunks;
        for (var i = 0u; i < p.c * p.chunks; i++) { s += st[base + i]; }
        let l = p.kappa * (1.0 - s / cnt);
        let wn = sample_weight(n);
        st[n] = l;
        st[p.n + n] = -scale * p.lambda * wn * p.kappa / (nf * cnt);
        acc += wn * l;
    }
    let tot = wg_sum(lid, vec4<f32>(acc, 0.0, 0.0, 0.0)).x;
    if (lid == 0u) { ls[p.slot] = p.lambda * tot / nf; }
}

// The gather of the maps through the window is a transposed convolution, separable like the
// window: ssim_grad_h sums along x into H [rows, Ho, W, 3], ssim_grad along y.
@compute @workgroup_size(64)
fn ssim_grad_h(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.n * p.c * p.ho * p.w) { return; }
    let ix = t % p.w;
    let ro = t / p.w; // row · Ho + oy
    // Output columns whose window covers ix: ox = ix − tap, 0 ≤ ox < Wo.
    let ox0 = select(0u, ix + 1u - p.k, ix + 1u > p.k);
    let ox1 = min(ix, p.wo - 1u);
    let mb = p.maps + 3u * ro * p.wo;
    var r = vec3<f32>(0.0);
    for (var ox = ox0; ox <= ox1; ox++) {
        let mi = mb + 3u * ox;
        r += win_at(ix - ox) * vec3<f32>(st[mi], st[mi + 1u], st[mi + 2u]);
    }
    let hi = p.hmaps + 3u * t;
    st[hi] = r.x;
    st[hi + 1u] = r.y;
    st[hi + 2u] = r.z;
}

@compute @workgroup_size(64)
fn ssim_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    if (t >= p.n * p.c * qpr) { return; }
    let row = t / qpr;
    let q = t % qpr;
    let n = row / p.c;
    let coef = st[p.n + n];
    var g = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let i = 4u * q + j;
        if (i >= plane) { continue; }
        let iy = i / p.w;
        let ix = i % p.w;
        let oy0 = select(0u, iy + 1u - p.k, iy + 1u > p.k);
        let oy1 = min(iy, p.ho - 1u);
        var acc = vec3<f32>(0.0);
        for (var oy = oy0; oy <= oy1; oy++) {
            let hi = p.hmaps + 3u * ((row * p.ho + oy) * p.w + ix);
            acc += win_at(iy - oy) * vec3<f32>(st[hi], st[hi + 1u], st[hi + 2u]);
        }
        let xy = ssim_xy(n, row, i);
        g[j] = coef * mask_at(n, row, i) * (acc.x + 2.0 * xy.x * acc.y + xy.y * acc.z);
    }
    gr_st4(t, g);
}

// ---------------------------------------------------------------------------------------------
// Identity: embeddings [N, 1, 1, F] (rows of F halves padded to quads)

// (a·b, a·a, b·b) of sample n over its quads; every lane gets the sums.
fn dots(n: u32, lid: u32) -> vec4<f32> {
    let qpr = (p.w + 3u) / 4u;
    var acc = vec4<f32>(0.0);
    for (var q = lid; q < qpr; q += WG) {
        let live = lane_mask(q, p.w);
        let a = select(vec4<f32>(0.0), pa_ld4(n * qpr + q), live);
        let b = select(vec4<f32>(0.0), pb_ld4(n * qpr + q), live);
        acc += vec4<f32>(dot(a, b), dot(a, a), dot(b, b), 0.0);
    }
    return wg_sum(lid, acc);
}

fn cosine(ab: f32, aa: f32, bb: f32) -> f32 {
    return ab / (max(sqrt(aa), p.eps) * max(sqrt(bb), p.eps));
}

@compute @workgroup_size(64)
fn id_stats(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let n = wid3.x + wid3.y * nwg.x;
    if (n >= p.n) { return; }
    let s = dots(n, lid);
    if (lid == 0u) {
        let i = p.part + 3u * n;
        st[i] = s.x;
        st[i + 1u] = s.y;
        st[i + 2u] = s.z;
    }
}

// (l_n, 1 where the loss is active else 0).
fn id_loss(n: u32) -> vec2<f32> {
    let i = p.part + 3u * n;
    var l = 1.0 - cosine(st[i], st[i + 1u], st[i + 2u]);
    if (has(F_MARGIN)) {
        l -= p.margin;
        if (!(l > 0.0)) { return vec2<f32>(0.0); }
    }
    return vec2<f32>(l, 1.0);
}

@compute @workgroup_size(64)
fn id_finalize(@builtin(local_invocation_index) lid: u32) {
    var cnt = 0.0;
    for (var n = lid; n < p.n; n += WG) { cnt += id_loss(n).y; }
    let nactive = wg_sum(lid, vec4<f32>(cnt, 0.0, 0.0, 0.0)).x;
    var den = f32(p.n);
    if (has(F_ACTIVE)) { den = nactive; }
    let scale = sc[0];
    var acc = 0.0;
    for (var n = lid; n < p.n; n += WG) {
        let r = id_loss(n);
        let wn = sample_weight(n);
        st[n] = r.x;
        st[p.n + n] = select(0.0, scale * p.lambda * wn * r.y / den, den > 0.0);
        acc += wn * r.x;
    }
    let tot = wg_sum(lid, vec4<f32>(acc, 0.0, 0.0, 0.0)).x;
    if (lid == 0u) { ls[p.slot] = select(0.0, p.lambda * tot / den, den > 0.0); }
}

@compute @workgroup_size(64)
fn id_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.w + 3u) / 4u;
    if (t >= p.n * qpr) { return; }
    let n = t / qpr;
    let q = t % qpr;
    let i = p.part + 3u * n;
    let ab = st[i];
    var aa = st[i + 1u];
    var bb = st[i + 2u];
    if (has(F_SWAP)) { let tmp = aa; aa = bb; bb = tmp; }
    let ra = sqrt(aa);
    let na = max(ra, p.eps);
    let nb = max(sqrt(bb), p.eps);
    let cs = ab / (na * nb);
    let a = pa_ld4(t);
    let b = pb_ld4(t);
    // ∂cos/∂a = b/(|a||b|) − cos·a/|a|² (the second term vanishes where |a| is clamped to eps).
    var d = b / (na * nb);
    if (ra > p.eps) { d -= cs * a / (na * na); }
    gr_st4(t, select(vec4<f32>(0.0), -st[p.n + n] * d, lane_mask(q, p.w)));
}

@compute @workgroup_size(64)
fn cos2_weights(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let n = wid3.x + wid3.y * nwg.x;
    if (n >= p.n) { return; }
    let s = dots(n, lid);
    if (lid == 0u) {
        let cs = cosine(s.x, s.y, s.z);
        var q = 1.0;
        if (has(F_QUALITY)) { q = wv[n]; }
        st[n] = cs * cs * q;
    }
}

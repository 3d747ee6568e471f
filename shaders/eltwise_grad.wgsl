// Backward of the element-wise kernels (eltwise.wgsl, the activations of common.wgsl) for the
// trainer. Gradients are fp16 tensors (whole quads, pad lanes written as 0); parameter gradients
// (PReLU slopes) are f32. Every output is overwritten, never accumulated.
//
// act_backward       dx = dy·act'(·) from the forward OUTPUT y (u): ReLU y > 0, ReLU6 0 < y < 6,
//                    leaky (slope > 0) 1 for y > 0 else slope, sigmoid y(1 − y), tanh 1 − y².
// prelu_forward      y = x ≥ 0 ? x : slope·x with slopes read from an f32 buffer (the trainer's
//                    parameter), shared, per channel, or per feature of a vector [N, 1, 1, F].
// prelu_backward     pass 1 of PReLU backward from the forward INPUT x (u): writes dx = dy for x > 0,
//                    slope·dy otherwise (PyTorch's rule at 0), and per (segment, chunk) the partial
//                    Σ dy·x over x < 0 (the slope gradient).
// prelu_backward_features  per-feature PReLU on a vector [N, 1, 1, F]: one invocation per feature
//                    quad loops over the batch in order and writes dx and dslope directly.
// mul_backward_same  y = a ⊙ g, g of a's shape: da = dy ⊙ g, dg = dy ⊙ a.
// mul_backward_rows  pass 1 of y = a ⊙ g with g broadcast per row ([N, C, 1, 1] or a vector
//                    [N, 1, 1, C]): writes da = dy·g[n, c] and the partial Σ_hw dy·a per chunk.
// sum_rows           pass 1 of Σ_hw dy per row (the broadcast operand of an add).
// finalize_f32       pass 2: each segment's partials summed in chunk order into an f32 buffer.
// finalize_half      pass 2: the same into an fp16 tensor, [N, C, 1, 1] (one row per segment) or
//                    a vector [N, 1, 1, C] (four segments per quad).
//
// Reductions are deterministic (no float atomics): a segment's quads are split into chunks of
// `chunk_quads`; one workgroup per (segment, chunk) has each lane sum a fixed stride of the chunk,
// then a fixed tree over the 64 lanes, then pass 2 sums the chunks in order. A segment k is the
// rows `r = j·segs + k` for j < seg_outer, each of `qpr` quads: per channel (segs = C, outer = N),
// whole tensor (segs = 1, outer = N·C) or per row (segs = N·C, outer = 1).

#include common
// u: the forward output y (act_backward), input x (PReLU) or operand a (multiply).
#storage u 0 read
#storage dy 1 read
@group(0) @binding(2) var<storage, read> slope: array<f32>;        // PReLU slopes (1, C or F)
// g: the multiply's gate; out: dx or da.
#storage g 3 read
#storage out 4 read_write
@group(0) @binding(5) var<storage, read_write> part: array<f32>;   // [chunks, segs]
@group(0) @binding(6) var<storage, read_write> dsum: array<f32>;   // [segs] (dslope)
// dg: the gate's gradient (fp16).
#storage dg 7 read_write

struct Params {
    n: u32, c: u32, plane: u32, qpr: u32,
    act: u32, slope: f32, one_slope: u32, g_mode: u32, // gate / dg layout 1 [N,C,1,1], 2 [N,1,1,C]; PReLU 2: per feature
    segs: u32, seg_outer: u32, chunks: u32, chunk_quads: u32,
}
@group(0) @binding(8) var<uniform> p: Params;

var<workgroup> red: array<f32, 64>;

// Sums red[0..64] into red[0] by a fixed tree (every lane must call it).
fn reduce_lanes(lid: u32, v: f32) {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
}

fn lanes_sum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// The slope of channel `c` (shared: the single slope).
fn channel_slope(c: u32) -> f32 {
    return slope[select(c, 0u, p.one_slope != 0u)];
}

@compute @workgroup_size(64)
fn act_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.qpr * p.c * p.n) { return; }
    let q = t % p.qpr;
    let y = u_ld4(t);
    let d = dy_ld4(t);
    let zero = vec4<f32>(0.0);
    let one = vec4<f32>(1.0);
    var f = one;
    switch p.act {
        case 1u: { f = select(zero, one, y > zero); }
        case 2u: { f = select(vec4<f32>(p.slope), one, y > zero); }
        case 3u: { f = select(zero, one, (y > zero) & (y < vec4<f32>(6.0))); }
        case 4u: { f = y * (one - y); }
        case 5u: { f = one - y * y; }
        default: {}
    }
    out_st4(t, select(zero, d * f, lane_mask(q, p.plane)));
}

// Per-lane slopes of quad q: per feature (vector tensors) when p.g_mode == 2, else the channel's.
fn quad_slopes(q: u32, c: u32) -> vec4<f32> {
    if (p.g_mode == 2u) {
        let last = p.plane - 1u;
        return vec4<f32>(slope[min(4u * q, last)], slope[min(4u * q + 1u, last)],
                         slope[min(4u * q + 2u, last)], slope[min(4u * q + 3u, last)]);
    }
    return vec4<f32>(channel_slope(c));
}

@compute @workgroup_size(64)
fn prelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.qpr * p.c * p.n) { return; }
    let q = t % p.qpr;
    let c = (t / p.qpr) % p.c;
    let x = u_ld4(t);
    let s = quad_slopes(q, c);
    out_st4(t, select(vec4<f32>(0.0), select(x * s, x, x >= vec4<f32>(0.0)), lane_mask(q, p.plane)));
}

@compute @workgroup_size(64)
fn prelu_backward(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    if (wid >= p.segs * p.chunks) { return; }
    let k = wid % p.segs;
    let chunk = wid / p.segs;
    let q_begin = chunk * p.chunk_quads;
    let q_end = min(q_begin + p.chunk_quads, p.seg_outer * p.qpr);
    let zero = vec4<f32>(0.0);
    var acc = 0.0;
    for (var fq = q_begin + lid; fq < q_end; fq += WG) {
        let row = (fq / p.qpr) * p.segs + k;
        let q = fq % p.qpr;
        let i = row * p.qpr + q;
        let s = channel_slope(row % p.c);
        let x = u_ld4(i);
        let d = dy_ld4(i);
        let live = lane_mask(q, p.plane);
        out_st4(i, select(zero, select(d * s, d, x > zero), live));
        acc += lanes_sum(select(zero, d * x, live & (x < zero)));
    }
    reduce_lanes(lid, acc);
    if (lid == 0u) { part[chunk * p.segs + k] = red[0]; }
}

@compute @workgroup_size(64)
fn prelu_backward_features(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = flat_id(gid, nwg);
    if (q >= p.qpr) { return; }
    let zero = vec4<f32>(0.0);
    let live = lane_mask(q, p.plane);
    let s = quad_slopes(q, 0u);
    var acc = zero;
    for (var n = 0u; n < p.n; n++) {
        let i = n * p.qpr + q;
        let x = u_ld4(i);
        let d = dy_ld4(i);
        out_st4(i, select(zero, select(d * s, d, x > zero), live));
        acc += select(zero, d * x, live & (x < zero));
    }
    for (var l = 0u; l < 4u; l++) {
        if (4u * q + l < p.plane) { dsum[4u * q + l] = acc[l]; }
    }
}

@compute @workgroup_size(64)
fn mul_backward_same(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.qpr * p.c * p.n) { return; }
    let live = lane_mask(t % p.qpr, p.plane);
    let d = dy_ld4(t);
    let zero = vec4<f32>(0.0);
    out_st4(t, select(zero, d * g_ld4(t), live));
    dg_st4(t, select(zero, d * u_ld4(t), live));
}

// The gate value of row (n, c): g [N, C, 1, 1] (one quad per row) or a vector [N, 1, 1, C].
fn gate(row: u32) -> f32 {
    if (p.g_mode == 1u) { return g_ld(row * 4u); }
    return g_ld((row / p.c) * ((p.c + 3u) & ~3u) + row % p.c);
}

@compute @workgroup_size(64)
fn mul_backward_rows(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    if (wid >= p.segs * p.chunks) { return; }
    let k = wid % p.segs;
    let chunk = wid / p.segs;
    let q_begin = chunk * p.chunk_quads;
    let q_end = min(q_begin + p.chunk_quads, p.seg_outer * p.qpr);
    let zero = vec4<f32>(0.0);
    var acc = 0.0;
    for (var fq = q_begin + lid; fq < q_end; fq += WG) {
        let row = (fq / p.qpr) * p.segs + k;
        let q = fq % p.qpr;
        let i = row * p.qpr + q;
        let d = dy_ld4(i);
        let live = lane_mask(q, p.plane);
        out_st4(i, select(zero, d * gate(row), live));
        acc += lanes_sum(select(zero, d * u_ld4(i), live));
    }
    reduce_lanes(lid, acc);
    if (lid == 0u) { part[chunk * p.segs + k] = red[0]; }
}

@compute @workgroup_size(64)
fn sum_rows(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    if (wid >= p.segs * p.chunks) { return; }
    let k = wid % p.segs;
    let chunk = wid / p.segs;
    let q_begin = chunk * p.chunk_quads;
    let q_end = min(q_begin + p.chunk_quads, p.seg_outer * p.qpr);
    var acc = 0.0;
    for (var fq = q_begin + lid; fq < q_end; fq += WG) {
        let row = (fq / p.qpr) * p.segs + k;
        let q = fq % p.qpr;
        acc += lanes_sum(select(vec4<f32>(0.0), dy_ld4(row * p.qpr + q), lane_mask(q, p.plane)));
    }
    reduce_lanes(lid, acc);
    if (lid == 0u) { part[chunk * p.segs + k] = red[0]; }
}

// Segment k's partials summed in chunk order.
fn segment_total(k: u32) -> f32 {
    var s = 0.0;
    for (var ch = 0u; ch < p.chunks; ch++) { s += part[ch * p.segs + k]; }
    return s;
}

@compute @workgroup_size(64)
fn finalize_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.segs) { return; }
    dsum[t] = segment_total(t);
}

@compute @workgroup_size(64)
fn finalize_half(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (p.g_mode == 1u) {
        // [N, C, 1, 1]: one quad per row, the value in lane 0.
        if (t >= p.segs) { return; }
        dg_st4(t, vec4<f32>(segment_total(t), 0.0, 0.0, 0.0));
        return;
    }
    // [N, 1, 1, C]: quad j of sample n holds channels 4j..4j+3.
    let cq = (p.c + 3u) / 4u;
    if (t >= p.n * cq) { return; }
    let n = t / cq;
    let c0 = (t % cq) * 4u;
    var v = vec4<f32>(0.0);
    for (var l = 0u; l < 4u; l++) {
        if (c0 + l < p.c) { v[l] = segment_total(n * p.c + c0 + l); }
    }
    dg_st4(t, v);
}

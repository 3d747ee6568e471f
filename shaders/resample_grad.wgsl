// Backward of resample.wgsl for the trainer: dX = ∂L/∂X from dY, one invocation per dX quad, as
// a gather. Each invocation owns one quad of dX (4 consecutive positions of one input plane) and
// sums, in a fixed order, every output tap that read those positions with the weight the forward
// gave it: no atomics, no scatter, bit-identical from run to run. dX is overwritten; pad lanes get
// zeros.
//
// bilinear_grad  adjoint of mode 0 (any sizes, align_corners true or false, PyTorch index clamping
//                at the borders). The forward reads, per axis, indices i0 = min(floor(f), size−1)
//                and i1 = min(i0 + 1, size−1) with weights 1 − l and l (l = f − i0), f the source
//                coordinate of the output index. An input index i is read by exactly the outputs
//                with i0 ∈ {i − 1, i}; i0 is non-decreasing in the output index, so they form the
//                range [first(i − 1), first(i + 1)), first(t) = the first output with i0 ≥ t. first
//                is solved analytically from f = a·d + b, then corrected against the forward's own
//                f32 index computation (so float rounding can never drop or add a tap). The weight
//                of each tap is recomputed with the forward's formulas; the 2-D weight is the product
//                of the two axes' (the forward's two nested mixes).
// nearest_grad   adjoint of mode 1 (src = min(floor(d·s), size−1)): outputs [first(i), first(i+1)).
// shuffle_grad   adjoint of mode 2 (pixel unshuffle): dX[n, c·r² + a·r + b, y, x] =
//                dY[n, c, y·r + a, x·r + b].
//
// Work per invocation is O(taps that read its quad) (plus a constant for the range solve), not
// O(output).

#include common
#storage dy 0 read
#storage dx 1 read_write

// Same layout as resample.wgsl. c: channels of dY (= of dX except for the pixel shuffle, whose dX
// has c·r²); h, w: dX; ho, wo: dY; sy, sx: the forward's scales.
struct Params {
    n: u32, c: u32, h: u32, w: u32,
    ho: u32, wo: u32, align: u32, r: u32,
    sy: f32, sx: f32, mode: u32, _p1: u32,
}
@group(0) @binding(2) var<uniform> p: Params;

// The forward's source coordinate of output index d along an axis, bit for bit the same
// expressions: nearest and align_corners=true use d·s, align_corners=false (d + 0.5)·s − 0.5
// clamped at 0.
fn coord(d: u32, s: f32, nearest: bool) -> f32 {
    if (nearest || p.align != 0u) { return f32(d) * s; }
    return max((f32(d) + 0.5) * s - 0.5, 0.0);
}

// First input index the forward reads for output d: min(floor(coord), size − 1).
fn index_of(d: u32, s: f32, size: u32, nearest: bool) -> i32 {
    return i32(min(u32(floor(coord(d, s, nearest))), size - 1u));
}

// The first output index d in [0, out] whose index_of is ≥ t (out when none). index_of is
// non-decreasing in d. Estimate from coord = s·d + b (≥ t ⇔ d ≥ (t − b)/s), then step until the
// forward's own index computation agrees: the estimate is within a fraction of a step, so each loop
// runs at most once or twice.
fn first_at_least(t: i32, s: f32, size: u32, out: u32, nearest: bool) -> u32 {
    if (t <= 0) { return 0u; }
    if (t > i32(size) - 1) { return out; } // the index never exceeds size − 1
    if (s <= 0.0) { return out; }          // every output reads index 0
    var b = 0.0;
    if (!nearest && p.align == 0u) { b = 0.5 * s - 0.5; }
    var d = u32(clamp(ceil((f32(t) - b) / s), 0.0, f32(out)));
    loop {
        if (d > 0u && index_of(d - 1u, s, size, nearest) >= t) { d -= 1u; } else { break; }
    }
    loop {
        if (d < out && index_of(d, s, size, nearest) < t) { d += 1u; } else { break; }
    }
    return d;
}

// Weight with which the forward's bilinear tap for output d reads input index i on one axis.
fn tap_weight(d: u32, i: u32, s: f32, size: u32) -> f32 {
    let f = coord(d, s, false);
    let i0 = min(u32(floor(f)), size - 1u);
    let i1 = min(i0 + 1u, size - 1u);
    let l = f - f32(i0);
    return select(0.0, 1.0 - l, i0 == i) + select(0.0, l, i1 == i);
}

@compute @workgroup_size(64)
fn bilinear_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    if (t >= qpr * p.c * p.n) { return; }
    let q = t % qpr;
    let row = t / qpr;
    let yb = row * ((p.ho * p.wo + 3u) & ~3u);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * q + j;
        if (pos >= plane) { break; }
        let iy = pos / p.w;
        let ix = pos - iy * p.w;
        let y_lo = first_at_least(i32(iy) - 1, p.sy, p.h, p.ho, false);
        let y_hi = first_at_least(i32(iy) + 1, p.sy, p.h, p.ho, false);
        let x_lo = first_at_least(i32(ix) - 1, p.sx, p.w, p.wo, false);
        let x_hi = first_at_least(i32(ix) + 1, p.sx, p.w, p.wo, false);
        var acc = 0.0;
        for (var oy = y_lo; oy < y_hi; oy++) {
            let wy = tap_weight(oy, iy, p.sy, p.h);
            let ob = yb + oy * p.wo;
            var accx = 0.0;
            for (var ox = x_lo; ox < x_hi; ox++) {
                accx += dy_ld(ob + ox) * tap_weight(ox, ix, p.sx, p.w);
            }
            acc += wy * accx;
        }
        v[j] = acc;
    }
    dx_st4(t, v);
}

@compute @workgroup_size(64)
fn nearest_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    if (t >= qpr * p.c * p.n) { return; }
    let q = t % qpr;
    let row = t / qpr;
    let yb = row * ((p.ho * p.wo + 3u) & ~3u);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * q + j;
        if (pos >= plane) { break; }
        let iy = pos / p.w;
        let ix = pos - iy * p.w;
        let y_lo = first_at_least(i32(iy), p.sy, p.h, p.ho, true);
        let y_hi = first_at_least(i32(iy) + 1, p.sy, p.h, p.ho, true);
        let x_lo = first_at_least(i32(ix), p.sx, p.w, p.wo, true);
        let x_hi = first_at_least(i32(ix) + 1, p.sx, p.w, p.wo, true);
        var acc = 0.0;
        for (var oy = y_lo; oy < y_hi; oy++) {
            let ob = yb + oy * p.wo;
            for (var ox = x_lo; ox < x_hi; ox++) {
                acc += dy_ld(ob + ox);
            }
        }
        v[j] = acc;
    }
    dx_st4(t, v);
}

@compute @workgroup_size(64)
fn shuffle_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    let rr = p.r * p.r;
    let cin = p.c * rr;
    if (t >= qpr * cin * p.n) { return; }
    let q = t % qpr;
    let row = t / qpr;
    let n = row / cin;
    let ci = row % cin;
    let c = ci / rr;
    let a = (ci % rr) / p.r;
    let b = ci % p.r;
    let yb = (n * p.c + c) * ((p.ho * p.wo + 3u) & ~3u);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * q + j;
        if (pos >= plane) { break; }
        let iy = pos / p.w;
        let ix = pos - iy * p.w;
        v[j] = dy_ld(yb + (iy * p.r + a) * p.wo + ix * p.r + b);
    }
    dx_st4(t, v);
}

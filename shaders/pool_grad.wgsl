// Backward of pool.wgsl for the trainer: dX = ∂L/∂X from dY, one invocation per dX quad, as a
// gather. Each invocation owns one quad of dX (4 consecutive positions of one input plane) and sums,
// in a fixed order (output rows, then columns), the gradient of every window that covers them: no
// atomics, no scatter, bit-identical from run to run. dX is overwritten; pad lanes get zeros.
//
// max_grad         the gradient of a window goes to the element its max picked. Tie rule (PyTorch's
//                  CPU and CUDA kernels): the FIRST maximum of the window in raster order (window
//                  row, then column), among in-bounds elements only (padding is never part of the
//                  max). The forward writes only the value, so the pick is recomputed from x: the
//                  element wins when every element before it in the window is smaller and none
//                  after it is larger. NaN inputs: unspecified (so is the forward's max).
// avg_grad         each window sends dY / divisor to every in-bounds element, the divisor as the
//                  forward's: mode 1 (count_include_pad) the window clipped to the padded input,
//                  mode 2 the in-bounds count.
// global_avg_grad  dX[n, c, ·] = dY[n, c] / (H·W).
//
// Windows covering input coordinate i on one axis (padded coordinate a = i + pad): the outputs o
// with o·s ≤ a ≤ o·s + k − 1, i.e. ceil((a − k + 1)/s) ≤ o ≤ floor(a/s), clipped to [0, out).

#include common
#storage x 0 read
#storage dy 1 read
#storage dx 2 read_write

// Same layout as pool.wgsl; h, w: dX (= x); ho, wo: dY.
struct Params {
    n: u32, c: u32, h: u32, w: u32,
    ho: u32, wo: u32, k: u32, s: u32,
    pad: u32, mode: u32, _p0: u32, _p1: u32, // mode: 0 max, 1 avg incl. pad, 2 avg excl. pad
}
@group(0) @binding(3) var<uniform> p: Params;

// [lo, hi) of the output coordinates whose window covers input coordinate i (empty when lo ≥ hi).
fn windows(i: u32, out: u32) -> vec2<u32> {
    let a = i + p.pad;
    var lo = 0u;
    if (a >= p.k) { lo = (a - p.k + p.s) / p.s; } // ceil((a − k + 1)/s)
    let hi = min(a / p.s + 1u, out);
    return vec2<u32>(lo, hi);
}

struct Quad { row: u32, q: u32, plane: u32, yb: u32, xb: u32, ok: bool }

fn quad(gid: vec3<u32>, nwg: vec3<u32>) -> Quad {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    let row = t / qpr;
    return Quad(row, t, plane, row * ((p.ho * p.wo + 3u) & ~3u), row * ((plane + 3u) & ~3u),
                t < qpr * p.c * p.n);
}

// Whether element (iy, ix) of the plane at xb is the one the max of window (oy, ox) picks.
fn picked(xb: u32, oy: u32, ox: u32, iy: u32, ix: u32) -> bool {
    let y0 = i32(oy * p.s) - i32(p.pad);
    let x0 = i32(ox * p.s) - i32(p.pad);
    let v = x_ld(xb + iy * p.w + ix);
    for (var ky = 0; ky < i32(p.k); ky++) {
        let yy = y0 + ky;
        if (yy < 0 || yy >= i32(p.h)) { continue; }
        for (var kx = 0; kx < i32(p.k); kx++) {
            let xx = x0 + kx;
            if (xx < 0 || xx >= i32(p.w)) { continue; }
            let u = x_ld(xb + u32(yy * i32(p.w) + xx));
            let before = yy < i32(iy) || (yy == i32(iy) && xx < i32(ix));
            let after = yy > i32(iy) || (yy == i32(iy) && xx > i32(ix));
            if ((before && u >= v) || (after && u > v)) { return false; }
        }
    }
    return true;
}

@compute @workgroup_size(64)
fn max_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let qd = quad(gid, nwg);
    if (!qd.ok) { return; }
    let qpr = (qd.plane + 3u) / 4u;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * (qd.q % qpr) + j;
        if (pos >= qd.plane) { break; }
        let iy = pos / p.w;
        let ix = pos - iy * p.w;
        let ry = windows(iy, p.ho);
        let rx = windows(ix, p.wo);
        var acc = 0.0;
        for (var oy = ry.x; oy < ry.y; oy++) {
            for (var ox = rx.x; ox < rx.y; ox++) {
                if (picked(qd.xb, oy, ox, iy, ix)) { acc += dy_ld(qd.yb + oy * p.wo + ox); }
            }
        }
        v[j] = acc;
    }
    dx_st4(qd.q, v);
}

@compute @workgroup_size(64)
fn avg_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let qd = quad(gid, nwg);
    if (!qd.ok) { return; }
    let qpr = (qd.plane + 3u) / 4u;
    let k = i32(p.k);
    let pad = i32(p.pad);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * (qd.q % qpr) + j;
        if (pos >= qd.plane) { break; }
        let iy = pos / p.w;
        let ix = pos - iy * p.w;
        let ry = windows(iy, p.ho);
        let rx = windows(ix, p.wo);
        var acc = 0.0;
        for (var oy = ry.x; oy < ry.y; oy++) {
            let y0 = i32(oy * p.s) - pad;
            // Window rows in the divisor: clipped to the padded input (mode 1) or to the input.
            var hy = min(y0 + k, i32(p.h) + pad) - y0;
            if (p.mode == 2u) { hy = min(y0 + k, i32(p.h)) - max(y0, 0); }
            for (var ox = rx.x; ox < rx.y; ox++) {
                let x0 = i32(ox * p.s) - pad;
                var hx = min(x0 + k, i32(p.w) + pad) - x0;
                if (p.mode == 2u) { hx = min(x0 + k, i32(p.w)) - max(x0, 0); }
                acc += dy_ld(qd.yb + oy * p.wo + ox) / f32(hy * hx);
            }
        }
        v[j] = acc;
    }
    dx_st4(qd.q, v);
}

@compute @workgroup_size(64)
fn global_avg_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let qd = quad(gid, nwg);
    if (!qd.ok) { return; }
    // dY is [N, C, 1, 1]: one element per row, rows of one quad.
    let g = dy_ld(4u * qd.row) / f32(qd.plane);
    let qpr = (qd.plane + 3u) / 4u;
    dx_st4(qd.q, select(vec4<f32>(0.0), vec4<f32>(g), lane_mask(qd.q % qpr, qd.plane)));
}

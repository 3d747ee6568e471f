// Pointwise (1×1) convolution as a register-tiled matrix product: each invocation computes
// 8 output channels × 4 positions (32 accumulators). Per input channel it makes one vec4
// activation load and two vec4 weight loads for 32 multiply-adds: on lavapipe loads, not FLOPs,
// are the cost (engines.md E). Weights are stored transposed, `[n?, cin, 1, cout]` rows (one row
// of output channels per input channel), so a quad of output channels is one 8-byte load; the
// modulation kernel writes this same layout, so modulated weights need no relayout.

#include common
#storage x 0 read
#storage w 1 read
@group(0) @binding(2) var<storage, read> ep: array<f32>; // [scale(C) | shift(C) | prelu(C)]
#storage res 3 read
#storage y 4 read_write

struct Params {
    n: u32, cin: u32, cout: u32, plane: u32,
    w_nstride: u32, act: u32, res_mode: u32, prelu_pc: u32,
    slope: f32, _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(5) var<uniform> p: Params;

#include epilogue

fn epilogue(acc: vec4<f32>, n: u32, o: u32, q: u32) {
    epilogue_store(acc, n, o, q, p.plane);
}

@compute @workgroup_size(64)
fn pointwise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let rs = (p.plane + 3u) & ~3u;
    let qpr = rs / 4u;
    let tiles = (p.cout + 7u) / 8u;
    if (t >= qpr * tiles * p.n) { return; }
    // Consecutive invocations take consecutive quads of the same channels: their weight loads are
    // the same addresses (cache hits), their activation loads contiguous.
    let q = t % qpr;
    let tile = (t / qpr) % tiles;
    let n = t / (qpr * tiles);
    let o0 = tile * 8u;
    let ws = ((p.cout + 3u) & ~3u) / 4u; // weight row stride in quads
    // The second quad of a tile may lie past the row: read the first again (never stored).
    let oq0 = o0 / 4u;
    let oq1 = select(oq0, oq0 + 1u, o0 + 4u < p.cout);
    let wq = (n * p.w_nstride) / 4u;
    let xq = (n * p.cin * rs) / 4u + q;
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    for (var i = 0u; i < p.cin; i++) {
        let xv = x_ld4(xq + i * qpr);
        let wa = w_ld4(wq + i * ws + oq0);
        let wb = w_ld4(wq + i * ws + oq1);
        a0 += xv * wa.x; a1 += xv * wa.y; a2 += xv * wa.z; a3 += xv * wa.w;
        a4 += xv * wb.x; a5 += xv * wb.y; a6 += xv * wb.z; a7 += xv * wb.w;
    }
    let nv = min(8u, p.cout - o0);
    epilogue(a0, n, o0, q);
    if (nv > 1u) { epilogue(a1, n, o0 + 1u, q); }
    if (nv > 2u) { epilogue(a2, n, o0 + 2u, q); }
    if (nv > 3u) { epilogue(a3, n, o0 + 3u, q); }
    if (nv > 4u) { epilogue(a4, n, o0 + 4u, q); }
    if (nv > 5u) { epilogue(a5, n, o0 + 5u, q); }
    if (nv > 6u) { epilogue(a6, n, o0 + 6u, q); }
    if (nv > 7u) { epilogue(a7, n, o0 + 7u, q); }
}

// Stores up to 8 output channels of one quad through the epilogue.
fn store8(c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>, c4: vec4<f32>, c5: vec4<f32>, c6: vec4<f32>, c7: vec4<f32>,
          n: u32, o0: u32, nv: u32, q: u32) {
    epilogue(c0, n, o0, q);
    if (nv > 1u) { epilogue(c1, n, o0 + 1u, q); }
    if (nv > 2u) { epilogue(c2, n, o0 + 2u, q); }
    if (nv > 3u) { epilogue(c3, n, o0 + 3u, q); }
    if (nv > 4u) { epilogue(c4, n, o0 + 4u, q); }
    if (nv > 5u) { epilogue(c5, n, o0 + 5u, q); }
    if (nv > 6u) { epilogue(c6, n, o0 + 6u, q); }
    if (nv > 7u) { epilogue(c7, n, o0 + 7u, q); }
}

// Wide tile: 8 output channels × 4 quads (16 positions) per invocation, 128 multiply-adds per 2
// weight loads and 4 activation loads. On CPU devices (lavapipe), where every load is a separate
// gather and registers spill cheaply, this is ~2x faster than `pointwise`; on GPUs the 32 vec4
// accumulators would cost occupancy, so the host picks it per adapter.
@compute @workgroup_size(64)
fn pointwise_wide(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let rs = (p.plane + 3u) & ~3u;
    let qpr = rs / 4u;
    let groups = (qpr + 3u) / 4u; // quad groups of 4 per row
    let tiles = (p.cout + 7u) / 8u;
    if (t >= groups * tiles * p.n) { return; }
    let qg = t % groups;
    let tile = (t / groups) % tiles;
    let n = t / (groups * tiles);
    let o0 = tile * 8u;
    let ws = ((p.cout + 3u) & ~3u) / 4u;
    let oq0 = o0 / 4u;
    let oq1 = select(oq0, oq0 + 1u, o0 + 4u < p.cout);
    let wq = (n * p.w_nstride) / 4u;
    let q0 = qg * 4u;
    let nq = min(4u, qpr - q0); // quads present in this group
    let xq = (n * p.cin * rs) / 4u + q0;
    // 32 named accumulators: an array indexed in loops stays in memory on lavapipe (measured 2x slower).
    var a00 = vec4<f32>(0.0); var a01 = vec4<f32>(0.0); var a02 = vec4<f32>(0.0); var a03 = vec4<f32>(0.0); var a04 = vec4<f32>(0.0); var a05 = vec4<f32>(0.0); var a06 = vec4<f32>(0.0); var a07 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0); var a12 = vec4<f32>(0.0); var a13 = vec4<f32>(0.0); var a14 = vec4<f32>(0.0); var a15 = vec4<f32>(0.0); var a16 = vec4<f32>(0.0); var a17 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a22 = vec4<f32>(0.0); var a23 = vec4<f32>(0.0); var a24 = vec4<f32>(0.0); var a25 = vec4<f32>(0.0); var a26 = vec4<f32>(0.0); var a27 = vec4<f32>(0.0);
    var a30 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0); var a32 = vec4<f32>(0.0); var a33 = vec4<f32>(0.0); var a34 = vec4<f32>(0.0); var a35 = vec4<f32>(0.0); var a36 = vec4<f32>(0.0); var a37 = vec4<f32>(0.0);
    for (var i = 0u; i < p.cin; i++) {
        let wa = w_ld4(wq + i * ws + oq0);
        let wb = w_ld4(wq + i * ws + oq1);
        let xi = xq + i * qpr;
        let x0 = x_ld4(xi + select(0u, 0u, 0u < nq));
        let x1 = x_ld4(xi + select(0u, 1u, 1u < nq));
        let x2 = x_ld4(xi + select(0u, 2u, 2u < nq));
        let x3 = x_ld4(xi + select(0u, 3u, 3u < nq));
        a00 += x0 * wa.x; a01 += x0 * wa.y; a02 += x0 * wa.z; a03 += x0 * wa.w;
        a04 += x0 * wb.x; a05 += x0 * wb.y; a06 += x0 * wb.z; a07 += x0 * wb.w;
        a10 += x1 * wa.x; a11 += x1 * wa.y; a12 += x1 * wa.z; a13 += x1 * wa.w;
        a14 += x1 * wb.x; a15 += x1 * wb.y; a16 += x1 * wb.z; a17 += x1 * wb.w;
        a20 += x2 * wa.x; a21 += x2 * wa.y; a22 += x2 * wa.z; a23 += x2 * wa.w;
        a24 += x2 * wb.x; a25 += x2 * wb.y; a26 += x2 * wb.z; a27 += x2 * wb.w;
        a30 += x3 * wa.x; a31 += x3 * wa.y; a32 += x3 * wa.z; a33 += x3 * wa.w;
        a34 += x3 * wb.x; a35 += x3 * wb.y; a36 += x3 * wb.z; a37 += x3 * wb.w;
    }
    let nv = min(8u, p.cout - o0);
    if (0u < nq) { store8(a00, a01, a02, a03, a04, a05, a06, a07, n, o0, nv, q0 + 0u); }
    if (1u < nq) { store8(a10, a11, a12, a13, a14, a15, a16, a17, n, o0, nv, q0 + 1u); }
    if (2u < nq) { store8(a20, a21, a22, a23, a24, a25, a26, a27, n, o0, nv, q0 + 2u); }
    if (3u < nq) { store8(a30, a31, a32, a33, a34, a35, a36, a37, n, o0, nv, q0 + 3u); }
}

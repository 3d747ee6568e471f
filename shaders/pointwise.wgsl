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

// Pooling: `pool2d` (max, or average counting padding or not; PyTorch floor mode), one invocation
// per output quad; `global_avg` ([N, C, H, W] → [N, C, 1, 1]), one workgroup per row.

#include common
#storage x 0 read
#storage y 1 read_write

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    ho: u32, wo: u32, k: u32, s: u32,
    pad: u32, mode: u32, _p0: u32, _p1: u32, // mode: 0 max, 1 avg incl. pad, 2 avg excl. pad
}
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn pool2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.ho * p.wo + 3u) / 4u;
    if (t >= qpr * p.c * p.n) { return; }
    let q = t % qpr;
    let row = t / qpr;
    let xb = row * ((p.h * p.w + 3u) & ~3u);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * q + j;
        if (pos >= p.ho * p.wo) { break; }
        let oy = pos / p.wo;
        let ox = pos - oy * p.wo;
        let y0 = i32(oy * p.s) - i32(p.pad);
        let x0 = i32(ox * p.s) - i32(p.pad);
        var best = -3.4e38;
        var sum = 0.0;
        var cnt = 0u;
        for (var ky = 0; ky < i32(p.k); ky++) {
            let iy = y0 + ky;
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            for (var kx = 0; kx < i32(p.k); kx++) {
                let ix = x0 + kx;
                if (ix < 0 || ix >= i32(p.w)) { continue; }
                let xv = x_ld(xb + u32(iy * i32(p.w) + ix));
                best = max(best, xv);
                sum += xv;
                cnt += 1u;
            }
        }
        if (p.mode == 0u) {
            v[j] = best;
        } else if (p.mode == 1u) {
            // PyTorch divides by the window clipped to the padded input, not by k².
            let hy = min(y0 + i32(p.k), i32(p.h + p.pad)) - y0;
            let hx = min(x0 + i32(p.k), i32(p.w + p.pad)) - x0;
            v[j] = sum / f32(hy * hx);
        } else {
            v[j] = sum / f32(max(cnt, 1u));
        }
    }
    y_st4(t, v);
}

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn global_avg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.n * p.c) { return; } // uniform per workgroup
    let qpr = (p.h * p.w + 3u) / 4u;
    var s = 0.0;
    for (var q = lid; q < qpr; q += 64u) {
        let v = x_ld4(row * qpr + q);
        s += v.x + v.y + v.z + v.w; // pad lanes hold zeros
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    if (lid == 0u) { y_st4(row, vec4<f32>(red[0] / f32(p.h * p.w), 0.0, 0.0, 0.0)); }
}

// Separable filters on single-channel maps (paste-back mask post-processing), along x or y, one
// invocation per output quad:
//   op 0 max (dilate), 1 min (erode): out-of-image taps ignored (OpenCV's morphology border);
//   op 2 mean (box blur): out-of-image taps mirrored without the edge (OpenCV BORDER_REFLECT_101);
//   op 3 threshold: y = 1 where x > t, else x (MobileFaceSwap's `mask[mask > t] = 1`).

#include common
#storage x 0 read
#storage y 1 read_write

struct Params { rows: u32, h: u32, w: u32, axis: u32, radius: u32, op: u32, t: f32, _p0: u32 }
@group(0) @binding(2) var<uniform> p: Params;

fn reflect101(i: i32, n: i32) -> i32 {
    var r = abs(i);
    if (r >= n) { r = 2 * n - 2 - r; }
    return clamp(r, 0, n - 1);
}

@compute @workgroup_size(64)
fn filter1d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    if (t >= qpr * p.rows) { return; }
    let q = t % qpr;
    let base = (t / qpr) * 4u * qpr;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * q + j;
        if (pos >= plane) { break; }
        let py = i32(pos / p.w);
        let px = i32(pos % p.w);
        if (p.op == 3u) {
            let a = x_ld(base + pos);
            v[j] = select(a, 1.0, a > p.t);
            continue;
        }
        var acc = select(3.4e38, -3.4e38, p.op == 0u);
        if (p.op == 2u) { acc = 0.0; }
        let n = select(i32(p.w), i32(p.h), p.axis == 1u);
        let c = select(px, py, p.axis == 1u);
        for (var k = -i32(p.radius); k <= i32(p.radius); k++) {
            var i = c + k;
            if (p.op == 2u) {
                i = reflect101(i, n);
            } else if (i < 0 || i >= n) {
                continue;
            }
            let idx = select(u32(py) * p.w + u32(i), u32(i) * p.w + u32(px), p.axis == 1u);
            let a = x_ld(base + idx);
            switch p.op {
                case 0u: { acc = max(acc, a); }
                case 1u: { acc = min(acc, a); }
                default: { acc += a; }
            }
        }
        if (p.op == 2u) { acc /= f32(2u * p.radius + 1u); }
        v[j] = acc;
    }
    y_st4(t, v);
}

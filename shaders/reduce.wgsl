// Reductions across a dimension:
// - `l2_normalize`: each row of [N, 1, 1, F] divided by max(‖row‖₂, eps) (F.normalize(dim=1)),
//   one workgroup per row;
// - `softmax_channels`: softmax over C at every position of [N, C, H, W], one invocation per
//   position quad, max-subtracted for range safety.

#include common
#storage x 0 read
#storage y 1 read_write

struct Params { n: u32, c: u32, plane: u32, eps: f32 }
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn l2_normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.n * p.c) { return; } // uniform per workgroup
    let qpr = (p.plane + 3u) / 4u;
    var s = 0.0;
    for (var q = lid; q < qpr; q += 64u) {
        let v = x_ld4(row * qpr + q); // pad lanes hold zeros
        s += dot(v, v);
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    let inv = 1.0 / max(sqrt(red[0]), p.eps);
    for (var q = lid; q < qpr; q += 64u) {
        y_st4(row * qpr + q, select(vec4<f32>(0.0), x_ld4(row * qpr + q) * inv, lane_mask(q, p.plane)));
    }
}

@compute @workgroup_size(64)
fn softmax_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.plane + 3u) / 4u;
    if (t >= qpr * p.n) { return; }
    let q = t % qpr;
    let base = (t / qpr) * p.c * qpr + q;
    var m = vec4<f32>(-3.4e38);
    for (var c = 0u; c < p.c; c++) { m = max(m, x_ld4(base + c * qpr)); }
    var s = vec4<f32>(0.0);
    for (var c = 0u; c < p.c; c++) { s += exp(x_ld4(base + c * qpr) - m); }
    let mask = lane_mask(q, p.plane);
    for (var c = 0u; c < p.c; c++) {
        y_st4(base + c * qpr, select(vec4<f32>(0.0), exp(x_ld4(base + c * qpr) - m) / s, mask));
    }
}

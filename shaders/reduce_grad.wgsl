// Backward of the reductions in reduce.wgsl, for the trainer:
// - `l2_normalize_grad`: y = x / max(‖x‖, eps) over each row of [N, 1, 1, F]. With ν = ‖x‖:
//   dx = dy/ν − x·(x·dy)/ν³ (= (dy − y·(y·dy))/ν) where ν > eps, dx = dy/eps otherwise.
//   One workgroup per row: ‖x‖² and x·dy by a fixed tree over the 64 lanes (deterministic), then
//   each lane writes its quads. x is re-read (not the fp16 y) so y and ν are f32-exact.
// - `softmax_channels_grad`: y = softmax over C at every position of [N, C, H, W]:
//   dx = y·(dy − Σ_c y·dy). One invocation per position quad, from the saved output y.

#include common
#storage a 0 read
#storage dy 1 read
#storage dx 2 read_write

struct Params { n: u32, c: u32, plane: u32, eps: f32 }
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> red: array<vec2<f32>, 64>;

@compute @workgroup_size(64)
fn l2_normalize_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.n) { return; } // uniform per workgroup
    let qpr = (p.plane + 3u) / 4u;
    var s = vec2<f32>(0.0);
    for (var q = lid; q < qpr; q += 64u) {
        let mask = lane_mask(q, p.plane);
        let x = select(vec4<f32>(0.0), a_ld4(row * qpr + q), mask);
        let g = select(vec4<f32>(0.0), dy_ld4(row * qpr + q), mask);
        s += vec2<f32>(dot(x, x), dot(x, g));
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    let nrm = sqrt(red[0].x);
    let xdy = red[0].y;
    let big = nrm > p.eps;
    let inv = 1.0 / select(p.eps, nrm, big);
    // x·(x·dy)/ν³, zero on the clamped branch.
    let k3 = select(0.0, xdy * inv * inv * inv, big);
    for (var q = lid; q < qpr; q += 64u) {
        let v = dy_ld4(row * qpr + q) * inv - a_ld4(row * qpr + q) * k3;
        dx_st4(row * qpr + q, select(vec4<f32>(0.0), v, lane_mask(q, p.plane)));
    }
}

@compute @workgroup_size(64)
fn softmax_channels_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.plane + 3u) / 4u;
    if (t >= qpr * p.n) { return; }
    let q = t % qpr;
    let base = (t / qpr) * p.c * qpr + q;
    var s = vec4<f32>(0.0);
    for (var c = 0u; c < p.c; c++) { s += a_ld4(base + c * qpr) * dy_ld4(base + c * qpr); }
    let mask = lane_mask(q, p.plane);
    for (var c = 0u; c < p.c; c++) {
        let y = a_ld4(base + c * qpr);
        dx_st4(base + c * qpr, select(vec4<f32>(0.0), y * (dy_ld4(base + c * qpr) - s), mask));
    }
}

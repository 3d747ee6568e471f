// Colour matching of a swapped crop to its target (faceswap's "avg-color"): per channel, the
// mask-weighted mean difference Σ m·(target − swapped) / Σ m is added to the swapped crop, result
// clamped to [0, 1]. One workgroup per sample: it reduces the three channel sums and the mask sum in
// shared memory, then writes the shifted crop.

#include common
#storage tgt 0 read
#storage src 1 read
#storage msk 2 read
#storage dst 3 read_write

struct Params { n: u32, plane: u32, _p0: u32, _p1: u32 }
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> red: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn mean_shift(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wid.x;
    if (n >= p.n) { return; } // uniform per workgroup
    let qpr = (p.plane + 3u) / 4u;
    var acc = vec4<f32>(0.0); // Σ m·Δr, Σ m·Δg, Σ m·Δb, Σ m
    for (var q = lid; q < qpr; q += 64u) {
        let m = msk_ld4(n * qpr + q); // pad lanes are zero
        for (var c = 0u; c < 3u; c++) {
            let i = (n * 3u + c) * qpr + q;
            acc[c] += dot(m, tgt_ld4(i) - src_ld4(i));
        }
        acc.w += m.x + m.y + m.z + m.w;
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    let shift = select(vec3<f32>(0.0), total.xyz / total.w, total.w > 1e-6);
    for (var q = lid; q < qpr; q += 64u) {
        for (var c = 0u; c < 3u; c++) {
            let i = (n * 3u + c) * qpr + q;
            let v = clamp(src_ld4(i) + shift[c], vec4<f32>(0.0), vec4<f32>(1.0));
            dst_st4(i, select(vec4<f32>(0.0), v, lane_mask(q, p.plane)));
        }
    }
}

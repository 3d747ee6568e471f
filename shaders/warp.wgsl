// Affine warps with OpenCV `warpAffine` semantics (WARP_INVERSE_MAP: each output pixel samples the
// source at M·(x, y), pixel centres at integer coordinates, bilinear, constant-zero border).
// `mats` holds, per output sample, the 2×3 matrix and the index of its source image, so one dispatch
// aligns every face of a frame, or pastes a batch back. One invocation per output quad.

#include common
#storage src 0 read
@group(0) @binding(1) var<storage, read> mats: array<vec4<f32>>; // per sample: (a, b, tx, c), (d, ty, src, 0)
#storage dst 2 read_write

struct Params { n: u32, c: u32, h: u32, w: u32, ho: u32, wo: u32, src_n: u32, _p0: u32 }
@group(0) @binding(3) var<uniform> p: Params;

fn tap(base: u32, x: i32, y: i32) -> f32 {
    if (x < 0 || y < 0 || x >= i32(p.w) || y >= i32(p.h)) { return 0.0; }
    return src_ld(base + u32(y) * p.w + u32(x));
}

@compute @workgroup_size(64)
fn warp_affine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.ho * p.wo;
    let qpr = (plane + 3u) / 4u;
    if (t >= qpr * p.c * p.n) { return; }
    let q = t % qpr;
    let row = t / qpr;
    let n = row / p.c;
    let ch = row % p.c;
    let m0 = mats[2u * n];
    let m1 = mats[2u * n + 1u];
    let s = min(u32(m1.z), p.src_n - 1u);
    let base = (s * p.c + ch) * ((p.h * p.w + 3u) & ~3u);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * q + j;
        if (pos >= plane) { break; }
        let oy = f32(pos / p.wo);
        let ox = f32(pos % p.wo);
        let sx = m0.x * ox + m0.y * oy + m0.z;
        let sy = m0.w * ox + m1.x * oy + m1.y;
        let x0 = i32(floor(sx));
        let y0 = i32(floor(sy));
        let fx = sx - f32(x0);
        let fy = sy - f32(y0);
        let top = mix(tap(base, x0, y0), tap(base, x0 + 1, y0), fx);
        let bot = mix(tap(base, x0, y0 + 1), tap(base, x0 + 1, y0 + 1), fx);
        v[j] = mix(top, bot, fy);
    }
    dst_st4(t, v);
}

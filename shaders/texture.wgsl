// Host textures in and out of the engine's tensors, one invocation per tensor quad:
// - `from_texture`: an rgba8unorm or bgra8unorm sampled texture (textureLoad gives RGBA either way)
//   into [1, 3, H, W] in [0, 1];
// - `to_texture`: [1, 3, H, W] into an rgba8unorm storage texture (alpha 1), values clamped.
// The storage texture is rgba8unorm on purpose: bgra8unorm storage needs an optional feature and is
// write-only where it exists (engines.md P18).

#include common
#storage t 0 read_write
@group(0) @binding(1) var src: texture_2d<f32>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba8unorm, write>;

struct Params { h: u32, w: u32, _p0: u32, _p1: u32 }
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn from_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    if (i >= qpr * 3u) { return; }
    let q = i % qpr;
    let c = i / qpr;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * q + j;
        if (pos >= plane) { break; }
        v[j] = textureLoad(src, vec2<u32>(pos % p.w, pos / p.w), 0)[c];
    }
    t_st4(i, v);
}

@compute @workgroup_size(64)
fn to_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let plane = p.h * p.w;
    if (i >= plane) { return; }
    let rs = (plane + 3u) & ~3u;
    let rgb = vec3<f32>(t_ld(i), t_ld(rs + i), t_ld(2u * rs + i));
    textureStore(dst, vec2<u32>(i % p.w, i / p.w), vec4<f32>(clamp(rgb, vec3<f32>(0.0), vec3<f32>(1.0)), 1.0));
}

// Resampling, one invocation per output quad:
// - `bilinear`: to any size, align_corners true or false (PyTorch F.interpolate semantics);
// - `nearest`: PyTorch 'nearest' (src = floor(dst·in/out));
// - `pixel_shuffle`: [N, C·r², H, W] → [N, C, H·r, W·r].

#include common
#storage x 0 read
#storage y 1 read_write

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    ho: u32, wo: u32, align: u32, r: u32,
    sy: f32, sx: f32, _p0: u32, _p1: u32,
}
@group(0) @binding(2) var<uniform> p: Params;

struct Quad { q: u32, row: u32, ok: bool }

fn quad_of(gid: vec3<u32>, nwg: vec3<u32>) -> Quad {
    let t = flat_id(gid, nwg);
    let qpr = (p.ho * p.wo + 3u) / 4u;
    return Quad(t % qpr, t / qpr, t < qpr * p.c * p.n);
}

// Source coordinate of output index d along an axis (scale s = in/out, or (in−1)/(out−1)).
fn src_coord(d: u32, s: f32) -> f32 {
    if (p.align != 0u) { return f32(d) * s; }
    return max((f32(d) + 0.5) * s - 0.5, 0.0);
}

@compute @workgroup_size(64)
fn bilinear(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = quad_of(gid, nwg);
    if (!t.ok) { return; }
    let xb = t.row * ((p.h * p.w + 3u) & ~3u);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * t.q + j;
        if (pos >= p.ho * p.wo) { break; }
        let oy = pos / p.wo;
        let ox = pos - oy * p.wo;
        let fy = src_coord(oy, p.sy);
        let fx = src_coord(ox, p.sx);
        let y0 = min(u32(floor(fy)), p.h - 1u);
        let x0 = min(u32(floor(fx)), p.w - 1u);
        let y1 = min(y0 + 1u, p.h - 1u);
        let x1 = min(x0 + 1u, p.w - 1u);
        let ly = fy - f32(y0);
        let lx = fx - f32(x0);
        let top = mix(x_ld(xb + y0 * p.w + x0), x_ld(xb + y0 * p.w + x1), lx);
        let bot = mix(x_ld(xb + y1 * p.w + x0), x_ld(xb + y1 * p.w + x1), lx);
        v[j] = mix(top, bot, ly);
    }
    y_st4(t.row * ((p.ho * p.wo + 3u) / 4u) + t.q, v);
}

@compute @workgroup_size(64)
fn nearest(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = quad_of(gid, nwg);
    if (!t.ok) { return; }
    let xb = t.row * ((p.h * p.w + 3u) & ~3u);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * t.q + j;
        if (pos >= p.ho * p.wo) { break; }
        let oy = pos / p.wo;
        let ox = pos - oy * p.wo;
        let iy = min(u32(floor(f32(oy) * p.sy)), p.h - 1u);
        let ix = min(u32(floor(f32(ox) * p.sx)), p.w - 1u);
        v[j] = x_ld(xb + iy * p.w + ix);
    }
    y_st4(t.row * ((p.ho * p.wo + 3u) / 4u) + t.q, v);
}

@compute @workgroup_size(64)
fn pixel_shuffle(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = quad_of(gid, nwg);
    if (!t.ok) { return; }
    let n = t.row / p.c;
    let c = t.row % p.c;
    let xs = (p.h * p.w + 3u) & ~3u;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * t.q + j;
        if (pos >= p.ho * p.wo) { break; }
        let oy = pos / p.wo;
        let ox = pos - oy * p.wo;
        let ci = c * p.r * p.r + (oy % p.r) * p.r + (ox % p.r);
        v[j] = x_ld((n * p.c * p.r * p.r + ci) * xs + (oy / p.r) * p.w + ox / p.r);
    }
    y_st4(t.row * ((p.ho * p.wo + 3u) / 4u) + t.q, v);
}

// Resampling, one invocation per output quad, the mode chosen by `p.mode`:
// - 0 bilinear: to any size, align_corners true or false (PyTorch F.interpolate semantics);
// - 1 nearest: PyTorch 'nearest' (src = floor(dst·in/out));
// - 2 pixel shuffle: [N, C·r², H, W] → [N, C, H·r, W·r].

#include common
#storage x 0 read
#storage y 1 read_write

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    ho: u32, wo: u32, align: u32, r: u32,
    sy: f32, sx: f32, mode: u32, _p1: u32,
}
@group(0) @binding(2) var<uniform> p: Params;

// Source coordinate of output index d along an axis (scale s = in/out, or (in−1)/(out−1)).
fn src_coord(d: u32, s: f32) -> f32 {
    if (p.align != 0u) { return f32(d) * s; }
    return max((f32(d) + 0.5) * s - 0.5, 0.0);
}

fn bilinear_at(xb: u32, oy: u32, ox: u32) -> f32 {
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
    return mix(top, bot, ly);
}

fn nearest_at(xb: u32, oy: u32, ox: u32) -> f32 {
    let iy = min(u32(floor(f32(oy) * p.sy)), p.h - 1u);
    let ix = min(u32(floor(f32(ox) * p.sx)), p.w - 1u);
    return x_ld(xb + iy * p.w + ix);
}

fn shuffle_at(row: u32, oy: u32, ox: u32) -> f32 {
    let n = row / p.c;
    let c = row % p.c;
    let ci = c * p.r * p.r + (oy % p.r) * p.r + (ox % p.r);
    let xs = (p.h * p.w + 3u) & ~3u;
    return x_ld((n * p.c * p.r * p.r + ci) * xs + (oy / p.r) * p.w + ox / p.r);
}

@compute @workgroup_size(64)
fn resample(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.ho * p.wo;
    let qpr = (plane + 3u) / 4u;
    if (t >= qpr * p.c * p.n) { return; }
    let q = t % qpr;
    let row = t / qpr;
    let xb = row * ((p.h * p.w + 3u) & ~3u);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let pos = 4u * q + j;
        if (pos >= plane) { break; }
        let oy = pos / p.wo;
        let ox = pos - oy * p.wo;
        switch p.mode {
            case 0u: { v[j] = bilinear_at(xb, oy, ox); }
            case 1u: { v[j] = nearest_at(xb, oy, ox); }
            default: { v[j] = shuffle_at(row, oy, ox); }
        }
    }
    y_st4(t, v);
}

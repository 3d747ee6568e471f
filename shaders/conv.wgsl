// Direct k×k convolution, dense or grouped (depthwise is groups = channels), any stride, dilation,
// zero or reflect padding, weights from any buffer (static or predicted at run time, per sample
// or shared), with the fused epilogue: per-channel scale and shift (bias, folded batch norm),
// activation, residual add.
//
// Work unit: one output quad (4 consecutive positions of one output row) for `conv_single`, and
// four output channels of one group × one quad for `conv_tile4` (each input load feeds 4 FMAs).

#include common
#storage x 0 read
#storage w 1 read
@group(0) @binding(2) var<storage, read> ep: array<f32>; // [scale(C) | shift(C) | prelu(C)]
#storage res 3 read
#storage y 4 read_write

struct Params {
    n: u32, cin: u32, h: u32, w: u32,
    cout: u32, ho: u32, wo: u32, kh: u32,
    kw: u32, sy: u32, sx: u32, py: u32,
    px: u32, dy: u32, dx: u32, cin_g: u32,
    cout_g: u32, reflect: u32, w_nstride: u32, w_ostride: u32,
    act: u32, res_mode: u32, prelu_pc: u32, slope: f32,
}
@group(0) @binding(5) var<uniform> p: Params;

// Where the 4 output positions of quad q start in the input (before adding the tap offset), and
// which lanes exist. Computed once per invocation: integer division is scalarised on CPU devices
// and costs more than the taps' arithmetic.
struct Origins { iy: vec4<i32>, ix: vec4<i32>, live: vec4<bool> }

fn origins(q: u32) -> Origins {
    var o: Origins;
    let plane = p.ho * p.wo;
    let pos = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    let oy = pos / vec4<u32>(p.wo);
    let ox = pos - oy * vec4<u32>(p.wo);
    o.iy = vec4<i32>(oy * p.sy) - vec4<i32>(i32(p.py));
    o.ix = vec4<i32>(ox * p.sx) - vec4<i32>(i32(p.px));
    o.live = pos < vec4<u32>(plane);
    return o;
}

// Input offsets of the 4 output positions for tap (ky, kx); -1 marks padding or a missing lane.
fn taps(org: Origins, ky: u32, kx: u32) -> vec4<i32> {
    var o = vec4<i32>(-1);
    let reflect = p.reflect != 0u;
    for (var j = 0u; j < 4u; j++) {
        if (!org.live[j]) { continue; }
        let iy = pad_index(org.iy[j] + i32(ky * p.dy), i32(p.h), reflect);
        let ix = pad_index(org.ix[j] + i32(kx * p.dx), i32(p.w), reflect);
        if (iy >= 0 && ix >= 0) { o[j] = iy * i32(p.w) + ix; }
    }
    return o;
}

fn load_x(base: u32, off: vec4<i32>) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (off[j] >= 0) { v[j] = x_ld(base + u32(off[j])); }
    }
    return v;
}

#include epilogue

fn epilogue(acc: vec4<f32>, n: u32, o: u32, q: u32) {
    epilogue_store(acc, n, o, q, p.ho * p.wo);
}

@compute @workgroup_size(64)
fn conv_single(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.ho * p.wo + 3u) / 4u;
    if (t >= qpr * p.cout * p.n) { return; }
    let q = t % qpr;
    let o = (t / qpr) % p.cout;
    let n = t / (qpr * p.cout);
    let g = o / p.cout_g;
    let xs = (p.h * p.w + 3u) & ~3u;
    let wbase = n * p.w_nstride + o * p.w_ostride;
    let org = origins(q);
    var acc = vec4<f32>(0.0);
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            let off = taps(org, ky, kx);
            for (var i = 0u; i < p.cin_g; i++) {
                let xb = (n * p.cin + g * p.cin_g + i) * xs;
                acc += load_x(xb, off) * w_ld(wbase + (i * p.kh + ky) * p.kw + kx);
            }
        }
    }
    epilogue(acc, n, o, q);
}

@compute @workgroup_size(64)
fn conv_tile4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qpr = (p.ho * p.wo + 3u) / 4u;
    let tiles_g = (p.cout_g + 3u) / 4u;
    let groups = p.cout / p.cout_g;
    if (t >= qpr * tiles_g * groups * p.n) { return; }
    let q = t % qpr;
    let tile = (t / qpr) % (tiles_g * groups);
    let n = t / (qpr * tiles_g * groups);
    let g = tile / tiles_g;
    let o0 = g * p.cout_g + (tile % tiles_g) * 4u;
    let nv = min(4u, (g + 1u) * p.cout_g - o0); // valid channels in this tile
    let xs = (p.h * p.w + 3u) & ~3u;
    let wb = n * p.w_nstride + o0 * p.w_ostride;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let wlast = (nv - 1u) * p.w_ostride; // clamp weight reads of missing channels in range
    let org = origins(q);
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            let off = taps(org, ky, kx);
            for (var i = 0u; i < p.cin_g; i++) {
                let xv = load_x((n * p.cin + g * p.cin_g + i) * xs, off);
                let wi = wb + (i * p.kh + ky) * p.kw + kx;
                acc0 += xv * w_ld(wi);
                acc1 += xv * w_ld(wi + min(p.w_ostride, wlast));
                acc2 += xv * w_ld(wi + min(2u * p.w_ostride, wlast));
                acc3 += xv * w_ld(wi + min(3u * p.w_ostride, wlast));
            }
        }
    }
    epilogue(acc0, n, o0, q);
    if (nv > 1u) { epilogue(acc1, n, o0 + 1u, q); }
    if (nv > 2u) { epilogue(acc2, n, o0 + 2u, q); }
    if (nv > 3u) { epilogue(acc3, n, o0 + 3u, q); }
}

// ---------------------------------------------------------------------------------------------
// Row-quad fast path: output and input widths multiples of 4, dilation 1, zero padding. The 4
// outputs of a quad are consecutive in one image row, so for each kernel row the inputs they need
// are a few aligned quads of one input row, loaded as vectors once and shared by every tap (and
// by RT output channels). Kernel size, stride and padding are pipeline constants: tap loops
// unroll and register indices resolve at compile time. On lavapipe this replaces 4 scalar gathers
// and a division per lane and tap with ≤ 4 vector loads per kernel row.

override RK: u32 = 3u; // kernel size (square)
override RS: u32 = 1u; // stride
override RP: u32 = 1u; // zero padding
override RT: u32 = 1u; // output channels per invocation: 1 (depthwise) or 4

override RCR: u32 = (RP + 3u) / 4u;                     // whole quads of padding to the left
override ROFF: u32 = 4u * RCR - RP;                      // first needed value's index in the window
override RNQ: u32 = (ROFF + 3u * RS + RK + 3u) / 4u;     // quads in the window (≤ 6 for RS ≤ 2, RK ≤ 7)

fn window_value(win: ptr<function, array<vec4<f32>, 6>>, i: u32) -> f32 {
    return (*win)[i / 4u][i % 4u];
}

@compute @workgroup_size(64)
fn conv_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qrow = p.wo / 4u;
    let qpr = p.ho * qrow;
    let tiles_g = (p.cout_g + RT - 1u) / RT;
    let groups = p.cout / p.cout_g;
    if (t >= qpr * tiles_g * groups * p.n) { return; }
    let q = t % qpr;
    let tile = (t / qpr) % (tiles_g * groups);
    let n = t / (qpr * tiles_g * groups);
    let g = tile / tiles_g;
    let o0 = g * p.cout_g + (tile % tiles_g) * RT;
    let nv = min(RT, (g + 1u) * p.cout_g - o0);
    let oy = q / qrow;
    let ox0 = (q % qrow) * 4u;
    let wq = p.w / 4u;                               // quads per input row
    let xq0 = i32(ox0 * RS / 4u) - i32(RCR);         // first window quad (may be < 0: padding)
    let wlast = (nv - 1u) * p.w_ostride;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < p.cin_g; i++) {
        let plane_q = (n * p.cin + g * p.cin_g + i) * p.h * wq;
        for (var ky = 0u; ky < RK; ky++) {
            let iy = i32(oy * RS + ky) - i32(RP);
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            var win: array<vec4<f32>, 6>;
            let row_q = plane_q + u32(iy) * wq;
            for (var k = 0u; k < RNQ; k++) {
                let xq = xq0 + i32(k);
                win[k] = select(vec4<f32>(0.0), x_ld4(row_q + u32(clamp(xq, 0, i32(wq) - 1))), xq >= 0 && xq < i32(wq));
            }
            let wb = n * p.w_nstride + o0 * p.w_ostride + (i * RK + ky) * RK;
            for (var kx = 0u; kx < RK; kx++) {
                let v = vec4<f32>(window_value(&win, ROFF + kx), window_value(&win, ROFF + RS + kx),
                                  window_value(&win, ROFF + 2u * RS + kx), window_value(&win, ROFF + 3u * RS + kx));
                for (var c = 0u; c < RT; c++) {
                    acc[c] += v * w_ld(wb + min(c * p.w_ostride, wlast) + kx);
                }
            }
        }
    }
    for (var c = 0u; c < RT; c++) {
        if (c < nv) { epilogue(acc[c], n, o0 + c, q); }
    }
}

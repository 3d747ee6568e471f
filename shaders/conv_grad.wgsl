// Backward of the direct convolution (conv.wgsl) for the trainer: any ConvSpec the forward takes
// (stride, dilation, groups incl. depthwise, zero or reflect padding).
//
// grad_input   dX = ∂L/∂X. Gather formulation: each invocation owns one quad of dX (4 consecutive
//              positions of one input plane) for CT input channels of one group, and sums
//              dY[o, oy, ox]·W[o, i, ky, kx] over every output channel o of the group and every tap
//              whose window touches the position. No atomics, no scatter: every dX quad is written
//              once, whole. With reflect padding a position can be read by up to 3 padded
//              coordinates per axis (itself and its mirrors); each contributes.
//              grad_input_rows: zero padding, x stride/dilation 1, whole-quad rows: dY read as
//              vector windows (the depthwise conv with the flipped kernel). grad_input_reflect:
//              reflect padding.
// grad_weight  pass 1 of dW = ∂L/∂W: one workgroup per (output channel, chunk of the N·Ho·Wo
//              positions, tile of KT weights of that channel). Lanes stride over the chunk's dY
//              quads, accumulate in f32 registers, and lane j < KT sums the 64 lanes' values in lane
//              order; the workgroup writes KT fp32 partials. Slot K of each channel is dBias (Σ dY).
//              grad_weight4: 4 output channels × KT4 weights per workgroup (dense, grouped).
//              grad_weight_rows: one channel, all K + 1 sums in one tile, x as vector windows.
//              grad_weight4_rows: 4 channels × whole kernel rows, x as vector windows.
// grad_finalize pass 2: one invocation per (channel, weight) sums the chunks' partials in chunk
//              order and writes dW (f32, [cout, cin/g, kh, kw]) and dBias (f32, [cout]).
// Both reductions are in a fixed order: results are bit-identical run to run (no float atomics).

#include common
#storage x 0 read
#storage dy 1 read
@group(0) @binding(2) var<storage, read> wt: array<f32>;         // [cout, cin/g, kh, kw]
#storage dx 3 read_write
@group(0) @binding(4) var<storage, read_write> part: array<f32>; // [chunks, cout, K + 1]
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;   // [cout, K]
@group(0) @binding(6) var<storage, read_write> db: array<f32>;   // [cout]

struct Params {
    n: u32, cin: u32, h: u32, w: u32,
    cout: u32, ho: u32, wo: u32, kh: u32,
    kw: u32, sy: u32, sx: u32, py: u32,
    px: u32, dy: u32, dx: u32, cin_g: u32,
    cout_g: u32, reflect: u32, kp: u32, chunks: u32,
    chunk_quads: u32, ntiles: u32, rows_per_tile: u32, _p1: u32,
}
@group(0) @binding(7) var<uniform> p: Params;

// ---------------------------------------------------------------------------------------------
// dX

// Channels per invocation of grad_input: 1 (depthwise, cin/g = 1) or 4.
override CT: u32 = 4u;

// Output coordinate that reads padded coordinate `v` through tap `k` on one axis, or -1.
fn src_of(v: i32, k: u32, pad: u32, d: u32, s: u32, out: u32) -> i32 {
    let t = v + i32(pad) - i32(k * d);
    if (t < 0) { return -1; }
    let o = u32(t) / s;
    if (o * s != u32(t) || o >= out) { return -1; }
    return i32(o);
}

// Output coordinates (up to 3, -1 absent) whose tap `k` reads input coordinate `i` on one axis:
// through `i` itself and, with reflect padding, through its mirrors -i and 2(size-1)-i.
fn sources(i: i32, size: u32, k: u32, pad: u32, d: u32, s: u32, out: u32) -> vec3<i32> {
    var r = vec3<i32>(src_of(i, k, pad, d, s, out), -1, -1);
    if (p.reflect != 0u) {
        let last = i32(size) - 1;
        if (i > 0 && i <= i32(pad)) { r.y = src_of(-i, k, pad, d, s, out); }
        if (i < last && 2 * last - i <= last + i32(pad)) { r.z = src_of(2 * last - i, k, pad, d, s, out); }
    }
    return r;
}

// Zero padding. Per lane the input coordinate plus padding is split once as a = qa·s + r; a tap at
// offset k·d = m·s + rk reads it from output coordinate qa − m exactly when r = rk, so the tap loop
// needs no division.
struct Axis { q: vec4<i32>, r: vec4<i32> }

fn axis(i: vec4<u32>, pad: u32, s: u32) -> Axis {
    let a = i + vec4<u32>(pad);
    let q = a / vec4<u32>(s);
    return Axis(vec4<i32>(q), vec4<i32>(a - q * vec4<u32>(s)));
}

// Output coordinate per lane for tap offset k·d, or -1.
fn axis_src(ax: Axis, kd: u32, s: u32, out: u32) -> vec4<i32> {
    let m = i32(kd / s);
    let rk = i32(kd % s);
    let o = ax.q - vec4<i32>(m);
    let ok = (ax.r == vec4<i32>(rk)) & (o >= vec4<i32>(0)) & (o < vec4<i32>(i32(out)));
    return select(vec4<i32>(-1), o, ok);
}

fn load_dy(base: u32, off: vec4<i32>) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (off[j] >= 0) { v[j] = dy_ld(base + u32(off[j])); }
    }
    return v;
}

@compute @workgroup_size(64)
fn grad_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    let tiles_g = (p.cin_g + CT - 1u) / CT;
    let groups = p.cin / p.cin_g;
    if (t >= qpr * tiles_g * groups * p.n) { return; }
    let q = t % qpr;
    let tile = (t / qpr) % (tiles_g * groups);
    let n = t / (qpr * tiles_g * groups);
    let g = tile / tiles_g;
    let i0 = (tile % tiles_g) * CT;
    let nv = min(CT, p.cin_g - i0);
    let ys = (p.ho * p.wo + 3u) & ~3u;
    let pos = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    let live = pos < vec4<u32>(plane);
    let iy = pos / vec4<u32>(p.w);
    let ax_y = axis(iy, p.py, p.sy);
    let ax_x = axis(pos - iy * vec4<u32>(p.w), p.px, p.sx);
    let ksz = p.kh * p.kw;
    var acc: array<vec4<f32>, 4>;
    for (var ky = 0u; ky < p.kh; ky++) {
        let oy = axis_src(ax_y, ky * p.dy, p.sy, p.ho);
        if (all(oy < vec4<i32>(0))) { continue; }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ox = axis_src(ax_x, kx * p.dx, p.sx, p.wo);
            let ok = live & (oy >= vec4<i32>(0)) & (ox >= vec4<i32>(0));
            if (!any(ok)) { continue; }
            let off = select(vec4<i32>(-1), oy * i32(p.wo) + ox, ok);
            let tap = ky * p.kw + kx;
            for (var oo = 0u; oo < p.cout_g; oo++) {
                let o = g * p.cout_g + oo;
                let v = load_dy((n * p.cout + o) * ys, off);
                let wb = (o * p.cin_g + i0) * ksz + tap;
                for (var c = 0u; c < CT; c++) {
                    acc[c] += v * wt[wb + min(c, nv - 1u) * ksz];
                }
            }
        }
    }
    let xs = (plane + 3u) & ~3u;
    for (var c = 0u; c < CT; c++) {
        if (c < nv) {
            let row = n * p.cin + g * p.cin_g + i0 + c;
            dx_st4(row * xs / 4u + q, acc[c]);
        }
    }
}

// Row-quad fast path for zero padding, x stride 1 and x dilation 1 with W and Wo multiples of 4
// (the depthwise conv with the flipped kernel of engines.md T20): the 4 dX positions of a quad
// are consecutive in one row, so per (output channel, kernel row) the dY values they need are a
// few aligned quads of one dY row, loaded as vectors once and shared by every tap. Kernel width
// and x padding are pipeline constants so the window indices resolve at compile time. The y axis
// stays general (stride, dilation).

override RKW: u32 = 3u; // kernel width
override RPX: u32 = 1u; // x padding
override GROFF: u32 = (RPX + 3u * RKW + 1u) % 4u;                   // window index of the first needed value
override GQOFF: i32 = (i32(RPX) - i32(RKW) + 1 - i32(GROFF)) / 4;    // first window quad, relative to the dX quad
override GNQ: u32 = (GROFF + RKW + 6u) / 4u;                         // quads in the window (host checks ≤ 6)

fn gwin(win: ptr<function, array<vec4<f32>, 6>>, i: u32) -> f32 {
    return (*win)[i / 4u][i % 4u];
}

@compute @workgroup_size(64)
fn grad_input_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let qrow = p.w / 4u;
    let qpr = p.h * qrow;
    let tiles_g = (p.cin_g + CT - 1u) / CT;
    let groups = p.cin / p.cin_g;
    if (t >= qpr * tiles_g * groups * p.n) { return; }
    let q = t % qpr;
    let tile = (t / qpr) % (tiles_g * groups);
    let n = t / (qpr * tiles_g * groups);
    let g = tile / tiles_g;
    let i0 = (tile % tiles_g) * CT;
    let nv = min(CT, p.cin_g - i0);
    let iy = q / qrow;
    let woq = p.wo / 4u;
    let xq0 = i32(q % qrow) + GQOFF;
    let ksz = p.kh * RKW;
    var acc: array<vec4<f32>, 4>;
    for (var ky = 0u; ky < p.kh; ky++) {
        let ty = i32(iy + p.py) - i32(ky * p.dy);
        if (ty < 0) { continue; }
        let oy = u32(ty) / p.sy;
        if (oy * p.sy != u32(ty) || oy >= p.ho) { continue; }
        for (var oo = 0u; oo < p.cout_g; oo++) {
            let o = g * p.cout_g + oo;
            let row_q = ((n * p.cout + o) * p.ho + oy) * woq;
            var win: array<vec4<f32>, 6>;
            for (var k = 0u; k < GNQ; k++) {
                let xq = xq0 + i32(k);
                win[k] = select(vec4<f32>(0.0), dy_ld4(row_q + u32(clamp(xq, 0, i32(woq) - 1))), xq >= 0 && xq < i32(woq));
            }
            let wb = (o * p.cin_g + i0) * ksz + ky * RKW;
            for (var kx = 0u; kx < RKW; kx++) {
                let b = GROFF + RKW - 1u - kx;
                let v = vec4<f32>(gwin(&win, b), gwin(&win, b + 1u), gwin(&win, b + 2u), gwin(&win, b + 3u));
                for (var c = 0u; c < CT; c++) {
                    acc[c] += v * wt[wb + min(c, nv - 1u) * ksz + kx];
                }
            }
        }
    }
    let xs = p.h * p.w;
    for (var c = 0u; c < CT; c++) {
        if (c < nv) {
            let row = n * p.cin + g * p.cin_g + i0 + c;
            dx_st4(row * xs / 4u + q, acc[c]);
        }
    }
}

// Reflect padding: a position is also read through its mirrors, so up to 3 source coordinates
// per axis (9 per tap) contribute.
@compute @workgroup_size(64)
fn grad_input_reflect(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let plane = p.h * p.w;
    let qpr = (plane + 3u) / 4u;
    let tiles_g = (p.cin_g + CT - 1u) / CT;
    let groups = p.cin / p.cin_g;
    if (t >= qpr * tiles_g * groups * p.n) { return; }
    let q = t % qpr;
    let tile = (t / qpr) % (tiles_g * groups);
    let n = t / (qpr * tiles_g * groups);
    let g = tile / tiles_g;
    let i0 = (tile % tiles_g) * CT;             // first input channel within the group
    let nv = min(CT, p.cin_g - i0);              // valid channels in this tile
    let ys = (p.ho * p.wo + 3u) & ~3u;           // dY row stride
    let pos = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    let live = pos < vec4<u32>(plane);
    let iy = vec4<i32>(pos / vec4<u32>(p.w));
    let ix = vec4<i32>(pos % vec4<u32>(p.w));
    let ksz = p.kh * p.kw;
    var acc: array<vec4<f32>, 4>;
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            // dY plane offsets feeding each lane through this tap (up to 9 with reflection).
            var offs: array<vec4<i32>, 9>;
            var ncand = 1u;
            if (p.reflect != 0u) { ncand = 9u; }
            var any_live = false;
            for (var c = 0u; c < ncand; c++) { offs[c] = vec4<i32>(-1); }
            for (var j = 0u; j < 4u; j++) {
                if (!live[j]) { continue; }
                let sy = sources(iy[j], p.h, ky, p.py, p.dy, p.sy, p.ho);
                let sx = sources(ix[j], p.w, kx, p.px, p.dx, p.sx, p.wo);
                for (var c = 0u; c < ncand; c++) {
                    let oy = sy[c / 3u];
                    let ox = sx[c % 3u];
                    if (oy >= 0 && ox >= 0) {
                        offs[c][j] = oy * i32(p.wo) + ox;
                        any_live = true;
                    }
                }
            }
            if (!any_live) { continue; }
            let tap = ky * p.kw + kx;
            for (var oo = 0u; oo < p.cout_g; oo++) {
                let o = g * p.cout_g + oo;
                let yb = (n * p.cout + o) * ys;
                var v = vec4<f32>(0.0);
                for (var c = 0u; c < ncand; c++) {
                    for (var j = 0u; j < 4u; j++) {
                        if (offs[c][j] >= 0) { v[j] += dy_ld(yb + u32(offs[c][j])); }
                    }
                }
                let wb = (o * p.cin_g + i0) * ksz + tap;
                for (var c = 0u; c < CT; c++) {
                    acc[c] += v * wt[wb + min(c, nv - 1u) * ksz];
                }
            }
        }
    }
    let xs = (plane + 3u) & ~3u;
    for (var c = 0u; c < CT; c++) {
        if (c < nv) {
            let row = n * p.cin + g * p.cin_g + i0 + c;
            dx_st4(row * xs / 4u + q, select(vec4<f32>(0.0), acc[c], live));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dW, pass 1

const KT: u32 = 16u; // weights per workgroup
var<workgroup> red: array<f32, 1024>; // [KT][64]

// The input values under tap (ky, kx) for the 4 output positions whose tap-(0, 0) input
// coordinates are (by, bx); zero where padding (zero mode) or a lane is missing.
fn gather_x(xb: u32, by: vec4<i32>, bx: vec4<i32>, ky: u32, kx: u32, live: vec4<bool>, reflect: bool) -> vec4<f32> {
    var yy = by + vec4<i32>(i32(ky * p.dy));
    var xx = bx + vec4<i32>(i32(kx * p.dx));
    if (reflect) {
        for (var l = 0u; l < 4u; l++) {
            yy[l] = pad_index(yy[l], i32(p.h), true);
            xx[l] = pad_index(xx[l], i32(p.w), true);
        }
    }
    let ok = live & (yy >= vec4<i32>(0)) & (yy < vec4<i32>(i32(p.h))) & (xx >= vec4<i32>(0)) & (xx < vec4<i32>(i32(p.w)));
    let off = select(vec4<i32>(-1), yy * i32(p.w) + xx, ok);
    var xv = vec4<f32>(0.0);
    for (var l = 0u; l < 4u; l++) {
        if (off[l] >= 0) { xv[l] = x_ld(xb + u32(off[l])); }
    }
    return xv;
}

@compute @workgroup_size(64)
fn grad_weight(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    if (wid >= p.ntiles * p.cout * p.chunks) { return; }
    let tile = wid % p.ntiles;
    let o = (wid / p.ntiles) % p.cout;
    let chunk = wid / (p.ntiles * p.cout);
    let g = o / p.cout_g;
    let k0 = tile * KT;
    let kn = min(KT, p.kp - k0);
    let K = p.kp - 1u;
    let ksz = p.kh * p.kw;
    let oplane = p.ho * p.wo;
    let qpr = (oplane + 3u) / 4u;
    let ys = (oplane + 3u) & ~3u;
    let xs = (p.h * p.w + 3u) & ~3u;
    let reflect = p.reflect != 0u;
    let q_begin = chunk * p.chunk_quads;
    let q_end = min(q_begin + p.chunk_quads, qpr * p.n);
    var acc: array<f32, 16>;
    for (var fq = q_begin + lid; fq < q_end; fq += WG) {
        let n = fq / qpr;
        let q = fq % qpr;
        let pos = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
        let live = pos < vec4<u32>(oplane);
        let gy = select(vec4<f32>(0.0), dy_ld4((n * p.cout + o) * ys / 4u + q), live);
        let oy = pos / vec4<u32>(p.wo);
        let ox = pos - oy * vec4<u32>(p.wo);
        let by = vec4<i32>(oy * p.sy) - vec4<i32>(i32(p.py));
        let bx = vec4<i32>(ox * p.sx) - vec4<i32>(i32(p.px));
        for (var j = 0u; j < kn; j++) {
            let k = k0 + j;
            if (k == K) { acc[j] += gy.x + gy.y + gy.z + gy.w; continue; }
            let i = k / ksz;
            let tap = k % ksz;
            let ky = tap / p.kw;
            let kx = tap % p.kw;
            let xb = (n * p.cin + g * p.cin_g + i) * xs;
            let xv = gather_x(xb, by, bx, ky, kx, live, reflect);
            acc[j] += dot(gy, xv);
        }
    }
    for (var j = 0u; j < KT; j++) { red[j * WG + lid] = acc[j]; }
    workgroupBarrier();
    if (lid < kn) {
        var s = 0.0;
        for (var l = 0u; l < WG; l++) { s += red[lid * WG + l]; }
        part[(chunk * p.cout + o) * p.kp + k0 + lid] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// dW and dBias, pass 2

@compute @workgroup_size(64)
fn grad_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.cout * p.kp) { return; }
    let o = t / p.kp;
    let k = t % p.kp;
    var s = 0.0;
    for (var c = 0u; c < p.chunks; c++) { s += part[c * p.cout * p.kp + t]; }
    if (k == p.kp - 1u) { db[o] = s; } else { dw[o * (p.kp - 1u) + k] = s; }
}

// ---------------------------------------------------------------------------------------------
// dW, pass 1, four output channels per workgroup (dense and grouped convs with cout/g ≥ 2): each
// x gather feeds 4 channels' sums, the dY loads are 4 vector loads per quad. Tiles of KT4 weights;
// lanes past the last channel of a group read a valid channel again and are never written.

const KT4: u32 = 8u;
var<workgroup> red4: array<vec4<f32>, 512>; // [KT4][64]

@compute @workgroup_size(64)
fn grad_weight4(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    let otiles_g = (p.cout_g + 3u) / 4u;
    let otiles = otiles_g * (p.cout / p.cout_g);
    if (wid >= p.ntiles * otiles * p.chunks) { return; }
    let tile = wid % p.ntiles;
    let ot = (wid / p.ntiles) % otiles;
    let chunk = wid / (p.ntiles * otiles);
    let g = ot / otiles_g;
    let o0 = g * p.cout_g + (ot % otiles_g) * 4u;
    let nv = min(4u, (g + 1u) * p.cout_g - o0);
    let k0 = tile * KT4;
    let kn = min(KT4, p.kp - k0);
    let K = p.kp - 1u;
    let ksz = p.kh * p.kw;
    let oplane = p.ho * p.wo;
    let qpr = (oplane + 3u) / 4u;
    let ys = (oplane + 3u) & ~3u;
    let xs = (p.h * p.w + 3u) & ~3u;
    let reflect = p.reflect != 0u;
    let q_begin = chunk * p.chunk_quads;
    let q_end = min(q_begin + p.chunk_quads, qpr * p.n);
    // Weight coordinates of the tile's first weight; later ones step from it.
    let i_first = k0 / ksz;
    let ky_first = (k0 % ksz) / p.kw;
    let kx_first = k0 % p.kw;
    var acc: array<vec4<f32>, 8>;
    for (var fq = q_begin + lid; fq < q_end; fq += WG) {
        let n = fq / qpr;
        let q = fq % qpr;
        let pos = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
        let live = pos < vec4<u32>(oplane);
        let yq = (n * p.cout + o0) * ys / 4u + q;
        let zero = vec4<f32>(0.0);
        let g0 = select(zero, dy_ld4(yq), live);
        let g1 = select(zero, dy_ld4(yq + min(1u, nv - 1u) * ys / 4u), live);
        let g2 = select(zero, dy_ld4(yq + min(2u, nv - 1u) * ys / 4u), live);
        let g3 = select(zero, dy_ld4(yq + min(3u, nv - 1u) * ys / 4u), live);
        let oy = pos / vec4<u32>(p.wo);
        let ox = pos - oy * vec4<u32>(p.wo);
        let by = vec4<i32>(oy * p.sy) - vec4<i32>(i32(p.py));
        let bx = vec4<i32>(ox * p.sx) - vec4<i32>(i32(p.px));
        var i = i_first;
        var ky = ky_first;
        var kx = kx_first;
        for (var j = 0u; j < kn; j++) {
            if (k0 + j == K) {
                let one = vec4<f32>(1.0);
                acc[j] += vec4<f32>(dot(g0, one), dot(g1, one), dot(g2, one), dot(g3, one));
                continue;
            }
            let xb = (n * p.cin + g * p.cin_g + i) * xs;
            let xv = gather_x(xb, by, bx, ky, kx, live, reflect);
            acc[j] += vec4<f32>(dot(g0, xv), dot(g1, xv), dot(g2, xv), dot(g3, xv));
            kx += 1u;
            if (kx == p.kw) { kx = 0u; ky += 1u; if (ky == p.kh) { ky = 0u; i += 1u; } }
        }
    }
    for (var j = 0u; j < KT4; j++) { red4[j * WG + lid] = acc[j]; }
    workgroupBarrier();
    if (lid < kn) {
        var s = vec4<f32>(0.0);
        for (var l = 0u; l < WG; l++) { s += red4[lid * WG + l]; }
        for (var c = 0u; c < nv; c++) {
            part[(chunk * p.cout + o0 + c) * p.kp + k0 + lid] = s[c];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dW, pass 1, for small outputs (the injection network's 4×4 and 7×7 maps: a few dY quads in all):
// one invocation per (output channel, weight) walks every position in order, so no lane idles and
// no workgroup reduction is needed. One chunk: partials are [cout, K + 1].

@compute @workgroup_size(64)
fn grad_weight_small(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_id(gid, nwg);
    if (idx >= p.cout * p.kp) { return; }
    let o = idx / p.kp;
    let k = idx % p.kp;
    let g = o / p.cout_g;
    let K = p.kp - 1u;
    let ksz = p.kh * p.kw;
    let i = k / ksz;
    let ky = (k % ksz) / p.kw;
    let kx = k % p.kw;
    let oplane = p.ho * p.wo;
    let qpr = (oplane + 3u) / 4u;
    let ys = (oplane + 3u) & ~3u;
    let xs = (p.h * p.w + 3u) & ~3u;
    let reflect = p.reflect != 0u;
    var acc = 0.0;
    for (var fq = 0u; fq < qpr * p.n; fq++) {
        let n = fq / qpr;
        let q = fq % qpr;
        let pos = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
        let live = pos < vec4<u32>(oplane);
        let gy = select(vec4<f32>(0.0), dy_ld4((n * p.cout + o) * ys / 4u + q), live);
        if (k == K) {
            acc += dot(gy, vec4<f32>(1.0));
            continue;
        }
        let oy = pos / vec4<u32>(p.wo);
        let ox = pos - oy * vec4<u32>(p.wo);
        let by = vec4<i32>(oy * p.sy) - vec4<i32>(i32(p.py));
        let bx = vec4<i32>(ox * p.sx) - vec4<i32>(i32(p.px));
        let xb = (n * p.cin + g * p.cin_g + i) * xs;
        acc += dot(gy, gather_x(xb, by, bx, ky, kx, live, reflect));
    }
    part[o * p.kp + k] = acc;
}

// ---------------------------------------------------------------------------------------------
// dW, pass 1, row-quad path for one output channel whose K + 1 ≤ KT sums fit one tile (depthwise
// k ≤ 3): zero padding, x stride and dilation 1, W and Wo multiples of 4. The 4 dY positions of a
// quad are consecutive in one row, so per (input channel, kernel row) the x values all kx taps
// need are a few aligned quads of one x row, loaded as vectors once. Same partials layout.

override WKW: u32 = 3u; // kernel width
override WPX: u32 = 1u; // x padding
override WROFF: u32 = (3u * WPX) % 4u;                     // (−px) mod 4: window index of the first value
override WQOFF: i32 = -(i32(WPX) + i32(WROFF)) / 4;          // first window quad, relative to the dY quad
override WNQ: u32 = (WROFF + WKW + 6u) / 4u;                // quads in the window (host checks ≤ 6)

@compute @workgroup_size(64)
fn grad_weight_rows(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    if (wid >= p.cout * p.chunks) { return; }
    let o = wid % p.cout;
    let chunk = wid / p.cout;
    let g = o / p.cout_g;
    let K = p.kp - 1u;
    let woq = p.wo / 4u;
    let qpr = p.ho * woq;
    let wq = p.w / 4u;
    let q_begin = chunk * p.chunk_quads;
    let q_end = min(q_begin + p.chunk_quads, qpr * p.n);
    var acc: array<f32, 16>;
    for (var fq = q_begin + lid; fq < q_end; fq += WG) {
        let n = fq / qpr;
        let q = fq % qpr;
        let gy = dy_ld4((n * p.cout + o) * qpr + q);
        acc[K] += gy.x + gy.y + gy.z + gy.w;
        let oy = q / woq;
        let xq0 = i32(q % woq) + WQOFF;
        for (var i = 0u; i < p.cin_g; i++) {
            let plane_q = (n * p.cin + g * p.cin_g + i) * p.h * wq;
            for (var ky = 0u; ky < p.kh; ky++) {
                let iy = i32(oy * p.sy + ky * p.dy) - i32(p.py);
                if (iy < 0 || iy >= i32(p.h)) { continue; }
                let row_q = plane_q + u32(iy) * wq;
                var win: array<vec4<f32>, 6>;
                for (var k = 0u; k < WNQ; k++) {
                    let xq = xq0 + i32(k);
                    win[k] = select(vec4<f32>(0.0), x_ld4(row_q + u32(clamp(xq, 0, i32(wq) - 1))), xq >= 0 && xq < i32(wq));
                }
                let kb = (i * p.kh + ky) * WKW;
                for (var kx = 0u; kx < WKW; kx++) {
                    let b = WROFF + kx;
                    let v = vec4<f32>(gwin(&win, b), gwin(&win, b + 1u), gwin(&win, b + 2u), gwin(&win, b + 3u));
                    acc[kb + kx] += dot(gy, v);
                }
            }
        }
    }
    for (var j = 0u; j < KT; j++) { red[j * WG + lid] = acc[j]; }
    workgroupBarrier();
    if (lid < p.kp) {
        var s = 0.0;
        for (var l = 0u; l < WG; l++) { s += red[lid * WG + l]; }
        part[(chunk * p.cout + o) * p.kp + lid] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// dW, pass 1, four output channels per workgroup with row windows: zero padding, x stride and
// dilation 1, W and Wo multiples of 4, kw ≤ 8. A tile is `rows_per_tile` whole kernel rows
// (i, ky) of WKW weights (≤ KT4 weights); the last tile (index ntiles − 1) holds dBias alone. Per
// dY quad and kernel row the x values of all kx taps are one vector window, shared by the 4
// channels.

@compute @workgroup_size(64)
fn grad_weight4_rows(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let wid = wid3.x + wid3.y * nwg.x;
    let otiles_g = (p.cout_g + 3u) / 4u;
    let otiles = otiles_g * (p.cout / p.cout_g);
    if (wid >= p.ntiles * otiles * p.chunks) { return; }
    let tile = wid % p.ntiles;
    let ot = (wid / p.ntiles) % otiles;
    let chunk = wid / (p.ntiles * otiles);
    let g = ot / otiles_g;
    let o0 = g * p.cout_g + (ot % otiles_g) * 4u;
    let nv = min(4u, (g + 1u) * p.cout_g - o0);
    let K = p.kp - 1u;
    let bias = tile == p.ntiles - 1u;
    let rows = p.cin_g * p.kh;
    let r0 = tile * p.rows_per_tile;
    let rn = select(min(p.rows_per_tile, rows - min(r0, rows)), 0u, bias);
    let k0 = select(r0 * WKW, K, bias);
    let kn = select(rn * WKW, 1u, bias);
    let woq = p.wo / 4u;
    let qpr = p.ho * woq;
    let wq = p.w / 4u;
    let q_begin = chunk * p.chunk_quads;
    let q_end = min(q_begin + p.chunk_quads, qpr * p.n);
    let cq = p.ho * woq; // dY plane in quads
    var acc: array<vec4<f32>, 8>;
    for (var fq = q_begin + lid; fq < q_end; fq += WG) {
        let n = fq / qpr;
        let q = fq % qpr;
        let yq = (n * p.cout + o0) * cq + q;
        let g0 = dy_ld4(yq);
        let g1 = dy_ld4(yq + min(1u, nv - 1u) * cq);
        let g2 = dy_ld4(yq + min(2u, nv - 1u) * cq);
        let g3 = dy_ld4(yq + min(3u, nv - 1u) * cq);
        if (bias) {
            let one = vec4<f32>(1.0);
            acc[0] += vec4<f32>(dot(g0, one), dot(g1, one), dot(g2, one), dot(g3, one));
            continue;
        }
        let oy = q / woq;
        let xq0 = i32(q % woq) + WQOFF;
        for (var rr = 0u; rr < rn; rr++) {
            let r = r0 + rr;
            let i = r / p.kh;
            let ky = r % p.kh;
            let iy = i32(oy * p.sy + ky * p.dy) - i32(p.py);
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            let row_q = ((n * p.cin + g * p.cin_g + i) * p.h + u32(iy)) * wq;
            var win: array<vec4<f32>, 6>;
            for (var k = 0u; k < WNQ; k++) {
                let xq = xq0 + i32(k);
                win[k] = select(vec4<f32>(0.0), x_ld4(row_q + u32(clamp(xq, 0, i32(wq) - 1))), xq >= 0 && xq < i32(wq));
            }
            for (var kx = 0u; kx < WKW; kx++) {
                let b = WROFF + kx;
                let v = vec4<f32>(gwin(&win, b), gwin(&win, b + 1u), gwin(&win, b + 2u), gwin(&win, b + 3u));
                acc[rr * WKW + kx] += vec4<f32>(dot(g0, v), dot(g1, v), dot(g2, v), dot(g3, v));
            }
        }
    }
    for (var j = 0u; j < KT4; j++) { red4[j * WG + lid] = acc[j]; }
    workgroupBarrier();
    if (lid < kn) {
        var s = vec4<f32>(0.0);
        for (var l = 0u; l < WG; l++) { s += red4[lid * WG + l]; }
        for (var c = 0u; c < nv; c++) {
            part[(chunk * p.cout + o0 + c) * p.kp + k0 + lid] = s[c];
        }
    }
}

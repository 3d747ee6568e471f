// StyleGAN2 weight modulation and demodulation on the GPU, for pointwise weights:
//   W'[n, o, i] = W[o, i]·(s[n, i] + bias)          (bias = 1 gives the (1 + s) convention)
//   W'[n, o, i] *= 1/sqrt(Σ_i W'[n, o, i]² + eps)   (demodulation, optional)
// Weights in and out use the pointwise kernel's transposed layout, rows of output channels per input
// channel, so the result feeds `pointwise` directly. One invocation owns a quad of output channels of
// one sample: it sums their squares down the input channels, then writes the scaled quads.

#include common
#storage w 0 read
#storage s 1 read
#storage y 2 read_write

struct Params {
    n: u32, cin: u32, cout: u32, s_stride: u32,
    s_offset: u32, demod: u32, s_bias: f32, eps: f32,
}
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn modulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    let ws = ((p.cout + 3u) & ~3u) / 4u; // quads per weight row
    if (t >= ws * p.n) { return; }
    let oq = t % ws;
    let n = t / ws;
    let sb = n * p.s_stride + p.s_offset;
    var d = vec4<f32>(1.0);
    if (p.demod != 0u) {
        var sum = vec4<f32>(0.0);
        for (var i = 0u; i < p.cin; i++) {
            let v = w_ld4(i * ws + oq) * (s_ld(sb + i) + p.s_bias);
            sum += v * v;
        }
        d = inverseSqrt(sum + p.eps);
    }
    for (var i = 0u; i < p.cin; i++) {
        let v = w_ld4(i * ws + oq) * (s_ld(sb + i) + p.s_bias) * d;
        y_st4((n * p.cin + i) * ws + oq, v);
    }
}

// The fused epilogue of convolution-like kernels, pasted by `#include epilogue` after the includer
// declares `ep` ([scale(C) | shift(C) | prelu(C)] f32), the fp16 tensors `res` and `y`, and a uniform
// `p` with fields cout, act, res_mode, prelu_pc and slope:
//   y = act(acc·scale[o] + shift[o] (+ r)) (+ r), pad lanes stored as zeros.

fn epilogue_store(acc: vec4<f32>, n: u32, o: u32, q: u32, plane: u32) {
    let yq = ((n * p.cout + o) * ((plane + 3u) & ~3u)) / 4u + q;
    var v = acc * ep[o] + ep[p.cout + o];
    var r = vec4<f32>(0.0);
    if (p.res_mode != RES_NONE) { r = res_ld4(yq); }
    if (p.res_mode == RES_BEFORE_ACT) { v += r; }
    var slope = p.slope;
    if (p.prelu_pc != 0u) { slope = ep[2u * p.cout + o]; }
    v = activate(v, p.act, slope);
    if (p.res_mode == RES_AFTER_ACT) { v += r; }
    y_st4(yq, select(vec4<f32>(0.0), v, lane_mask(q, plane)));
}

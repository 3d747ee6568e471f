// Shared helpers, pasted by `#include common`. No bindings here.

// Invocations per workgroup of every one-dimensional kernel (gpu::WORKGROUP on the host).
const WG: u32 = 64u;

// Flat invocation index over a grid spread across x and y (gpu::grid on the host).
fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// Activation kinds, as kernels::Activation::code on the host.
const ACT_NONE: u32 = 0u;
const ACT_RELU: u32 = 1u;
const ACT_LEAKY: u32 = 2u; // leaky ReLU and PReLU: the slope is passed in
const ACT_RELU6: u32 = 3u;
const ACT_SIGMOID: u32 = 4u;
const ACT_TANH: u32 = 5u;

fn activate(v: vec4<f32>, kind: u32, slope: f32) -> vec4<f32> {
    switch kind {
        case 1u: { return max(v, vec4<f32>(0.0)); }
        case 2u: { return select(v * slope, v, v >= vec4<f32>(0.0)); }
        case 3u: { return clamp(v, vec4<f32>(0.0), vec4<f32>(6.0)); }
        case 4u: { return 1.0 / (1.0 + exp(-clamp(v, vec4<f32>(-80.0), vec4<f32>(80.0)))); }
        // tanh of a large argument is inf/inf on some drivers: it is ±1 to f32 precision past 15.
        case 5u: { return tanh(clamp(v, vec4<f32>(-15.0), vec4<f32>(15.0))); }
        default: { return v; }
    }
}

// Residual modes of the fused epilogue.
const RES_NONE: u32 = 0u;
const RES_AFTER_ACT: u32 = 1u;  // y = act(acc) + r   (MobileNetV2, IR blocks)
const RES_BEFORE_ACT: u32 = 2u; // y = act(acc + r)   (classic ResNet)

// Lanes of quad `q` that fall inside a row of `plane` elements.
fn lane_mask(q: u32, plane: u32) -> vec4<bool> {
    let p = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    return p < vec4<u32>(plane);
}

// Index of a padded coordinate, or -1 where zero padding applies. Reflection mirrors about the
// edge without repeating it (PyTorch ReflectionPad2d); the host checks pad < size.
fn pad_index(v: i32, size: i32, reflect: bool) -> i32 {
    if (v >= 0 && v < size) { return v; }
    if (!reflect) { return -1; }
    var r = abs(v);
    if (r >= size) { r = 2 * size - 2 - r; }
    return clamp(r, 0, size - 1);
}

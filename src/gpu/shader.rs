//! One WGSL source, two storage paths.
//!
//! WGSL has no preprocessor, so kernels use two directives that this module expands, in the spirit
//! of ncnn's injected GLSL preamble:
//!
//! - `#include NAME` pastes `shaders/NAME.wgsl` (shared helpers such as activations);
//! - `#storage NAME BINDING read|read_write` declares an fp16 tensor binding and its accessors:
//!   `NAME_ld(i) -> f32` (element `i`), `NAME_ld4(q) -> vec4<f32>` (elements `4q..4q+3`) and, for
//!   `read_write`, `NAME_st4(q, v)`.
//!
//! Buffers are arrays of 8-byte words holding four halves: `vec4<f16>` on the native path,
//! `vec2<u32>` (two `pack2x16float` pairs) on the packed path. Stores are whole quads only, so on
//! the packed path each invocation owns its words and no two invocations ever share one. Values are
//! clamped to ±65504 before packing: `pack2x16float` of an out-of-range value is indeterminate.

use super::StoragePath;
use crate::error::{Error, Result};

/// Every WGSL file in `shaders/`, by stem: kernel families and the shared include.
pub const SOURCES: &[(&str, &str)] = &[
    ("common", include_str!("../../shaders/common.wgsl")),
    ("epilogue", include_str!("../../shaders/epilogue.wgsl")),
    ("conv", include_str!("../../shaders/conv.wgsl")),
    ("conv_grad", include_str!("../../shaders/conv_grad.wgsl")),
    ("pointwise", include_str!("../../shaders/pointwise.wgsl")),
    ("linear", include_str!("../../shaders/linear.wgsl")),
    ("modulate", include_str!("../../shaders/modulate.wgsl")),
    ("norm", include_str!("../../shaders/norm.wgsl")),
    ("fusion", include_str!("../../shaders/fusion.wgsl")),
    ("resample", include_str!("../../shaders/resample.wgsl")),
    ("pool", include_str!("../../shaders/pool.wgsl")),
    ("eltwise", include_str!("../../shaders/eltwise.wgsl")),
    ("concat", include_str!("../../shaders/concat.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("warp", include_str!("../../shaders/warp.wgsl")),
    ("morph", include_str!("../../shaders/morph.wgsl")),
    ("texture", include_str!("../../shaders/texture.wgsl")),
    ("colour", include_str!("../../shaders/colour.wgsl")),
    ("norm_grad", include_str!("../../shaders/norm_grad.wgsl")),
    (
        "resample_grad",
        include_str!("../../shaders/resample_grad.wgsl"),
    ),
    ("pool_grad", include_str!("../../shaders/pool_grad.wgsl")),
    (
        "linear_grad",
        include_str!("../../shaders/linear_grad.wgsl"),
    ),
    (
        "modulate_grad",
        include_str!("../../shaders/modulate_grad.wgsl"),
    ),
    (
        "reduce_grad",
        include_str!("../../shaders/reduce_grad.wgsl"),
    ),
    (
        "eltwise_grad",
        include_str!("../../shaders/eltwise_grad.wgsl"),
    ),
    (
        "fusion_grad",
        include_str!("../../shaders/fusion_grad.wgsl"),
    ),
    ("optim", include_str!("../../shaders/optim.wgsl")),
    ("cast", include_str!("../../shaders/cast.wgsl")),
    ("loss", include_str!("../../shaders/loss.wgsl")),
];

/// Files that are only included by others and have no entry point of their own.
pub const INCLUDES: &[&str] = &["common", "epilogue"];

/// The raw text of `shaders/NAME.wgsl`.
pub fn source(name: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

fn shader_err(name: &str, path: StoragePath, message: impl Into<String>) -> Error {
    Error::Shader {
        name: name.to_string(),
        path: path.name().to_string(),
        message: message.into(),
    }
}

/// Declarations and accessors for one `#storage` binding.
fn storage_decl(name: &str, binding: u32, writable: bool, path: StoragePath) -> String {
    let access = if writable { "read_write" } else { "read" };
    let mut s = String::new();
    match path {
        StoragePath::F16 => {
            s += &format!(
                "@group(0) @binding({binding}) var<storage, {access}> {name}: array<vec4<f16>>;\n\
                 fn {name}_ld(i: u32) -> f32 {{ return f32({name}[i >> 2u][i & 3u]); }}\n\
                 fn {name}_ld4(q: u32) -> vec4<f32> {{ return vec4<f32>({name}[q]); }}\n"
            );
            if writable {
                s += &format!(
                    "fn {name}_st4(q: u32, v: vec4<f32>) {{ {name}[q] = vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0))); }}\n"
                );
            }
        }
        StoragePath::Packed => {
            s += &format!(
                "@group(0) @binding({binding}) var<storage, {access}> {name}: array<vec2<u32>>;\n\
                 fn {name}_ld(i: u32) -> f32 {{ return unpack2x16float({name}[i >> 2u][(i >> 1u) & 1u])[i & 1u]; }}\n\
                 fn {name}_ld4(q: u32) -> vec4<f32> {{ let w = {name}[q]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }}\n"
            );
            if writable {
                s += &format!(
                    "fn {name}_st4(q: u32, v: vec4<f32>) {{ let c = clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)); {name}[q] = vec2<u32>(pack2x16float(c.xy), pack2x16float(c.zw)); }}\n"
                );
            }
        }
    }
    s
}

/// Expands `#include` and `#storage` for the given storage path.
pub fn preprocess(name: &str, path: StoragePath) -> Result<String> {
    let src = source(name).ok_or_else(|| shader_err(name, path, "no such shader in shaders/"))?;
    let mut out = String::new();
    if path == StoragePath::F16 {
        out += "enable f16;\n";
    }
    expand(name, src, path, &mut out, 0)?;
    Ok(out)
}

fn expand(name: &str, src: &str, path: StoragePath, out: &mut String, depth: u32) -> Result<()> {
    if depth > 4 {
        return Err(shader_err(name, path, "#include nested too deep"));
    }
    for (lineno, line) in src.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#include") {
            let inc = rest.trim();
            let text = source(inc).ok_or_else(|| {
                shader_err(
                    name,
                    path,
                    format!("line {}: unknown include '{inc}'", lineno + 1),
                )
            })?;
            expand(name, text, path, out, depth + 1)?;
        } else if let Some(rest) = t.strip_prefix("#storage") {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let bad = || {
                shader_err(
                    name,
                    path,
                    format!(
                        "line {}: expected '#storage NAME BINDING read|read_write'",
                        lineno + 1
                    ),
                )
            };
            if parts.len() != 3 {
                return Err(bad());
            }
            let binding: u32 = parts[1].parse().map_err(|_| bad())?;
            let writable = match parts[2] {
                "read" => false,
                "read_write" => true,
                _ => return Err(bad()),
            };
            out.push_str(&storage_decl(parts[0], binding, writable, path));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(())
}

/// Parses and validates the preprocessed shader with naga, as wgpu will.
pub fn validate(name: &str, path: StoragePath) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let text = preprocess(name, path)?;
    let module = naga::front::wgsl::parse_str(&text)
        .map_err(|e| shader_err(name, path, e.emit_to_string(&text)))?;
    // The packed path must validate without f16 support: that is the whole point of it.
    // pack2x16float/unpack2x16float need only SHADER_FLOAT16_IN_FLOAT32, which every wgpu backend has.
    let caps = match path {
        StoragePath::F16 => {
            naga::valid::Capabilities::SHADER_FLOAT16
                | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
        }
        StoragePath::Packed => naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
    };
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| shader_err(name, path, e.emit_to_string(&text)))?;
    Ok((module, info))
}

/// Number of storage buffers bound by the most demanding entry point's module.
pub fn storage_buffer_count(module: &naga::Module) -> usize {
    module
        .global_variables
        .iter()
        .filter(|(_, v)| matches!(v.space, naga::AddressSpace::Storage { .. }))
        .count()
}

/// Translates a shader to SPIR-V (Vulkan), MSL (Metal) and HLSL SM 6.2 (DX12), so a construct one
/// back end rejects fails here rather than on a user's machine.
pub fn translate_all(name: &str, path: StoragePath) -> Result<()> {
    let (module, info) = validate(name, path)?;
    let err = |backend: &str, e: String| shader_err(name, path, format!("{backend}: {e}"));
    // Back ends take modules with overrides resolved, as wgpu does at pipeline creation: use the
    // declared defaults (kernels' fast paths get other values per layer).
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        None,
        &Default::default(),
    )
    .map_err(|e| err("overrides", e.to_string()))?;
    let (module, info) = (module.into_owned(), info.into_owned());
    naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
        .map_err(|e| err("SPIR-V", e.to_string()))?;
    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    for ep in &module.entry_points {
        let pipe = naga::back::msl::PipelineOptions {
            entry_point: Some((ep.stage, ep.name.clone())),
            ..Default::default()
        };
        naga::back::msl::write_string(&module, &info, &msl_opts, &pipe)
            .map_err(|e| err("MSL", e.to_string()))?;
    }
    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        ..Default::default()
    };
    let hlsl_pipe = naga::back::hlsl::PipelineOptions::default();
    let mut out = String::new();
    naga::back::hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl_pipe)
        .write(&module, &info, None)
        .map_err(|e| err("HLSL", e.to_string()))?;
    Ok(())
}

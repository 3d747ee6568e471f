//! `shaders/texture.wgsl`: a host's frame textures in and out of the engine's tensors.

use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, Context, Dispatch, DispatchStats, WORKGROUP};
use crate::tensor::{Shape, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    h: u32,
    w: u32,
    _pad: [u32; 2],
}

fn check(op: &str, tex: &wgpu::Texture, t: &Tensor) -> Result<Params> {
    let s = t.shape();
    if s != Shape::new(1, 3, tex.height() as usize, tex.width() as usize) {
        return Err(Error::shape(
            op,
            format!(
                "texture {}x{} vs tensor {:?}",
                tex.width(),
                tex.height(),
                s.dims()
            ),
        ));
    }
    Ok(Params {
        h: s.h as u32,
        w: s.w as u32,
        _pad: [0; 2],
    })
}

/// Reads an `rgba8unorm` / `bgra8unorm` texture (TEXTURE_BINDING) into `t` `[1, 3, H, W]` in [0, 1].
pub fn from_texture(ctx: &Context, tex: &wgpu::Texture, t: &Tensor) -> Result<Dispatch> {
    if !matches!(
        tex.format(),
        wgpu::TextureFormat::Rgba8Unorm | wgpu::TextureFormat::Bgra8Unorm
    ) {
        return Err(Error::param(
            "from_texture",
            format!(
                "texture format {:?}; rgba8unorm or bgra8unorm expected",
                tex.format()
            ),
        ));
    }
    if !tex.usage().contains(wgpu::TextureUsages::TEXTURE_BINDING) {
        return Err(Error::param(
            "from_texture",
            "the input texture needs TEXTURE_BINDING usage",
        ));
    }
    let params = check("from_texture", tex, t)?;
    let view = tex.create_view(&Default::default());
    let s = t.shape();
    Ok(ctx.dispatch_at(
        "from_texture",
        ctx.pipeline("texture", "from_texture", &[])?,
        &[(0, &Binding::from(t)), (1, &Binding::from(&view))],
        (3, &params),
        grid((3 * s.row_stride() / 4) as u64, WORKGROUP),
        DispatchStats {
            flops: 0,
            bytes: (s.plane() * 4 + s.numel() * 2) as u64,
        },
    ))
}

/// Writes `t` `[1, 3, H, W]` into an `rgba8unorm` texture with STORAGE_BINDING (alpha 1).
pub fn to_texture(ctx: &Context, t: &Tensor, tex: &wgpu::Texture) -> Result<Dispatch> {
    if tex.format() != wgpu::TextureFormat::Rgba8Unorm
        || !tex.usage().contains(wgpu::TextureUsages::STORAGE_BINDING)
    {
        return Err(Error::param(
            "to_texture",
            "the output texture must be rgba8unorm with STORAGE_BINDING",
        ));
    }
    let params = check("to_texture", tex, t)?;
    let view = tex.create_view(&Default::default());
    let s = t.shape();
    Ok(ctx.dispatch_at(
        "to_texture",
        ctx.pipeline("texture", "to_texture", &[])?,
        &[(0, &Binding::from(t)), (2, &Binding::from(&view))],
        (3, &params),
        grid(s.plane() as u64, WORKGROUP),
        DispatchStats {
            flops: 0,
            bytes: (s.plane() * 4 + s.numel() * 2) as u64,
        },
    ))
}

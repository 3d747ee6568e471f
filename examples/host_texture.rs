//! A host engine's view of fswap, headless: the host owns the device, the input texture and the
//! command encoder; fswap records its work into that encoder and writes an output texture.
//!
//! `cargo run --release --example host_texture -- [IDENTITY.safetensors] [OUT.png]`
//! Without an identity file it bakes one from seeded random MobileFaceSwap weights (no trained
//! weights ship with the engine). The input frame is `../shared/data/photos/JianzhuGuo.jpg` when
//! present, else a synthetic gradient; the face's landmarks stand in for the host's tracker.

use std::collections::HashMap;

use fswap::face::swapper::Swapper;
use fswap::models::random::random_weights;
use fswap::weights::{HostTensor, Manifest, Weights};
use fswap::{Context, ContextOptions, Result};

fn identity(path: Option<&String>) -> Result<Weights> {
    if let Some(p) = path {
        return Weights::open(p);
    }
    let ctx = Context::new(&ContextOptions::from_env()?)?;
    let mfs = random_weights(&Manifest::builtin("mobilefaceswap")?, 1);
    let emb: Vec<f32> = (0..512)
        .map(|i| if i % 2 == 0 { 0.0442 } else { -0.0442 })
        .collect();
    let map: Vec<f32> = (0..512 * 49)
        .map(|i| ((i % 11) as f32 - 5.0) / 5.0)
        .collect();
    let baked = fswap::eval::bake_identity(
        &ctx,
        &mfs,
        &HostTensor::new(vec![1, 512], emb),
        &HostTensor::new(vec![1, 512, 7, 7], map),
    )?;
    Ok(Weights::from_tensors(
        "random identity",
        baked,
        HashMap::new(),
    ))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let id = identity(args.first().filter(|a| a.ends_with(".safetensors")))?;
    let out_path = args
        .iter()
        .find(|a| a.ends_with(".png"))
        .cloned()
        .unwrap_or_else(|| "host_texture.png".into());

    // --- The host's side: its own instance, device, texture. ---
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    let instance = wgpu::Instance::new(desc);
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .map_err(|e| fswap::Error::NoAdapter(e.to_string()))?;
    let features =
        adapter.features() & (wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: features,
        ..Default::default()
    }))
    .map_err(|e| fswap::Error::RequestDevice {
        adapter: adapter.get_info().name,
        reason: e.to_string(),
    })?;
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/photos/JianzhuGuo.jpg");
    let (rgba, w, h, landmarks) = match image::open(&photo) {
        Ok(img) => {
            let img = img.to_rgba8();
            // The face of this photo (box 119.6, 93.5 – 290.7, 312.4): eyes, nose, mouth corners.
            let pts = [
                [170.0, 180.0],
                [240.0, 178.0],
                [205.0, 220.0],
                [178.0, 262.0],
                [236.0, 260.0],
            ];
            (img.clone().into_raw(), img.width(), img.height(), pts)
        }
        Err(_) => {
            let (w, h) = (320u32, 240u32);
            let px: Vec<u8> = (0..w * h)
                .flat_map(|i| [(i % w) as u8, (i / w) as u8, 128, 255])
                .collect();
            (
                px,
                w,
                h,
                [
                    [130.0, 100.0],
                    [190.0, 100.0],
                    [160.0, 135.0],
                    [135.0, 165.0],
                    [185.0, 165.0],
                ],
            )
        }
    };
    let input = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("host frame"),
        size: wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        input.as_image_copy(),
        &rgba,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * w),
            rows_per_image: Some(h),
        },
        input.size(),
    );

    // --- fswap inside the host's frame. ---
    let swapper = Swapper::new(device.clone(), queue.clone(), &id, &input)?;
    println!(
        "{} — {} dispatches per frame",
        swapper.context().describe(),
        swapper.dispatches()
    );
    for frame in 0..3 {
        swapper.set_landmarks(&landmarks)?; // from the host's tracker, every frame
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("host frame"),
        });
        let t0 = std::time::Instant::now();
        swapper.record(&mut encoder);
        queue.submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| fswap::Error::Gpu {
                during: "frame".into(),
                message: e.to_string(),
            })?;
        println!(
            "frame {frame}: {:.1} ms (wall, submit to idle)",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    swapper.context().check("host frames")?;

    // --- The host reads its output texture (for this example only). ---
    let row = (4 * w).div_ceil(256) * 256;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (row * h) as u64,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        swapper.output().as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &staging,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row),
                rows_per_image: Some(h),
            },
        },
        input.size(),
    );
    queue.submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device
        .poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: None,
        })
        .map_err(|e| fswap::Error::Gpu {
            during: "readback".into(),
            message: e.to_string(),
        })?;
    let data = staging
        .slice(..)
        .get_mapped_range()
        .map_err(|e| fswap::Error::Readback(e.to_string()))?
        .to_vec();
    let mut px = Vec::with_capacity((4 * w * h) as usize);
    for y in 0..h as usize {
        px.extend_from_slice(&data[y * row as usize..y * row as usize + 4 * w as usize]);
    }
    let img = image::RgbaImage::from_raw(w, h, px).expect("size");
    let changed = img
        .pixels()
        .zip(rgba.chunks(4))
        .filter(|(a, b)| a.0[..3] != b[..3])
        .count();
    image::DynamicImage::ImageRgba8(img)
        .to_rgb8()
        .save(&out_path)
        .map_err(|e| fswap::Error::Format {
            path: out_path.clone(),
            detail: e.to_string(),
        })?;
    println!("wrote {out_path}: {changed} pixels changed by the swap");
    if changed == 0 {
        return Err(fswap::Error::param(
            "host_texture",
            "the swap changed no pixel",
        ));
    }
    Ok(())
}

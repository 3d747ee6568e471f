//! A host application's device: the engine adopts it with whatever features it was created with,
//! and records into the host's own command encoder. Also: a steady-state chain allocates nothing.
mod common;

use common::reference::conv2d;
use common::{assert_close, contexts, Rng};
use fswap::kernels::conv::{Conv2d, ConvSpec};
use fswap::kernels::pointwise::Pointwise;
use fswap::kernels::{Activation, Epilogue};
use fswap::{Context, StoragePath, Tensor};

/// A device created the way a host engine would, without asking for SHADER_F16.
fn host_device() -> (wgpu::Device, wgpu::Queue, wgpu::AdapterInfo) {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    let instance = wgpu::Instance::new(desc);
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("a Vulkan adapter (install mesa-vulkan-drivers)");
    let info = adapter.get_info();
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("device");
    (device, queue, info)
}

#[test]
fn adopts_a_host_device_without_f16_and_records_into_its_encoder() {
    let (device, queue, info) = host_device();
    let ctx = Context::from_device(device.clone(), queue.clone(), Some(info)).unwrap();
    assert_eq!(
        ctx.storage(),
        StoragePath::Packed,
        "no SHADER_F16 on the host device: packed path"
    );

    let mut rng = Rng::new(5);
    let (n, c, h, w) = (2, 5, 9, 7);
    let spec = ConvSpec::depthwise(c, 3, 1, 1);
    let x = rng.vec(n * c * h * w, -1.0, 1.0);
    let wt = rng.vec(spec.weight_len(), -1.0, 1.0);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let wd: Vec<f64> = wt.iter().map(|&v| v as f64).collect();
    let (want, _, _) = conv2d(
        &xd,
        n,
        c,
        h,
        w,
        &wd,
        c,
        3,
        3,
        (1, 1),
        (1, 1),
        (1, 1),
        c,
        false,
    );
    let want: Vec<f64> = want.into_iter().map(|v| v.max(0.0)).collect();

    let conv = Conv2d::new(
        &ctx,
        spec,
        &wt,
        &Epilogue::none().with_act(Activation::Relu),
    )
    .unwrap();
    let xt = Tensor::from_f32(&ctx, [n, c, h, w], &x, "x").unwrap();
    let yt = Tensor::new(&ctx, [n, c, h, w], "y").unwrap();
    let d = conv.bind(&ctx, &xt, &yt, None).unwrap();
    // The host's encoder and pass: the engine only records.
    let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("host frame"),
    });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("host pass"),
            timestamp_writes: None,
        });
        d.record(&mut pass);
    }
    queue.submit([enc.finish()]);
    assert_close(
        &yt.to_f32(&ctx).unwrap(),
        &want,
        1e-3,
        1e-3,
        "host-device depthwise",
    );
}

#[test]
fn rebuilding_a_chain_reuses_pooled_buffers() {
    let ctx = &contexts()[0];
    let mut rng = Rng::new(6);
    let wt = rng.vec(16 * 8, -0.5, 0.5);
    let pw = Pointwise::new(ctx, 8, 16, &wt, &Epilogue::none()).unwrap();
    let x = Tensor::from_f32(ctx, [1, 8, 12, 12], &rng.vec(8 * 144, -1.0, 1.0), "x").unwrap();
    let frame = || {
        let y = Tensor::new(ctx, [1, 16, 12, 12], "y").unwrap();
        let d = pw.bind(ctx, &x, &y, None).unwrap();
        ctx.run(&[&d]).unwrap();
        ctx.wait().unwrap();
    };
    frame();
    let warm = ctx.pool().stats();
    for _ in 0..5 {
        frame();
    }
    let after = ctx.pool().stats();
    assert_eq!(
        after.created, warm.created,
        "a warm chain must not create buffers"
    );
    assert!(after.reused >= warm.reused + 5);
}

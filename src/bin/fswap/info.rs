//! `fswap info`: the adapters wgpu finds, then the device the options choose.

use fswap::gpu::AdapterSummary;
use fswap::{Context, ContextOptions, Result, StoragePath};
use serde::Serialize;

/// Options of `fswap info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// One adapter of the list.
#[derive(Serialize)]
struct AdapterRow {
    index: usize,
    name: String,
    backend: String,
    device_type: String,
    driver: String,
    driver_info: String,
    vendor: u32,
    device: u32,
    shader_f16: bool,
    subgroup: bool,
    timestamp_query: bool,
}

impl From<&AdapterSummary> for AdapterRow {
    fn from(a: &AdapterSummary) -> Self {
        AdapterRow {
            index: a.index,
            name: a.info.name.clone(),
            backend: a.info.backend.to_str().to_string(),
            device_type: format!("{:?}", a.info.device_type),
            driver: a.info.driver.clone(),
            driver_info: a.info.driver_info.clone(),
            vendor: a.info.vendor,
            device: a.info.device,
            shader_f16: a.shader_f16,
            subgroup: a.subgroup,
            timestamp_query: a.timestamp_query,
        }
    }
}

/// The limits the engine relies on.
#[derive(Serialize)]
struct Limits {
    max_storage_buffer_binding_size: u64,
    max_buffer_size: u64,
    max_storage_buffers_per_shader_stage: u32,
    max_compute_workgroup_storage_size: u32,
    max_compute_invocations_per_workgroup: u32,
    max_compute_workgroups_per_dimension: u32,
}

/// The device the options chose.
#[derive(Serialize)]
struct Device {
    /// Index in the (backend-filtered) adapter list.
    adapter: usize,
    name: String,
    backend: String,
    device_type: String,
    driver: String,
    driver_info: String,
    storage: &'static str,
    storage_reason: String,
    timestamps: bool,
    features: Vec<String>,
    limits: Limits,
}

#[derive(Serialize)]
struct Info {
    adapters: Vec<AdapterRow>,
    device: Device,
}

/// Why the context uses the storage path it does.
fn storage_reason(options: &ContextOptions, ctx: &Context) -> String {
    let has_f16 = ctx.features().contains(wgpu::Features::SHADER_F16);
    match (options.storage, ctx.storage()) {
        (Some(p), _) => format!("forced by --storage / FSWAP_STORAGE={p}"),
        (None, StoragePath::F16) => "the adapter has SHADER_F16: native f16 storage".into(),
        (None, StoragePath::Packed) if !has_f16 => {
            "the adapter lacks SHADER_F16: halves packed in u32".into()
        }
        (None, StoragePath::Packed) => "packed chosen by the context".into(),
    }
}

fn device(options: &ContextOptions, ctx: &Context) -> Device {
    let info = ctx
        .adapter_info
        .clone()
        .unwrap_or_else(|| wgpu::AdapterInfo {
            name: "host device".into(),
            ..wgpu::AdapterInfo::new(wgpu::DeviceType::Other, wgpu::Backend::Noop)
        });
    let l = ctx.limits();
    Device {
        adapter: options.adapter.unwrap_or(0),
        name: info.name,
        backend: info.backend.to_str().to_string(),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver,
        driver_info: info.driver_info,
        storage: ctx.storage().name(),
        storage_reason: storage_reason(options, ctx),
        timestamps: ctx.has_timestamps(),
        features: ctx
            .features()
            .iter_names()
            .map(|(name, _)| name.to_string())
            .collect(),
        limits: Limits {
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
        },
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn print_adapters(adapters: &[AdapterRow]) {
    println!("adapters:");
    if adapters.is_empty() {
        println!("  (none)");
    }
    for a in adapters {
        println!(
            "  [{}] {} ({}, {}) driver: {} {}",
            a.index, a.name, a.backend, a.device_type, a.driver, a.driver_info
        );
        println!(
            "      shader_f16: {}  subgroup: {}  timestamp_query: {}",
            yes(a.shader_f16),
            yes(a.subgroup),
            yes(a.timestamp_query)
        );
    }
}

fn print_device(d: &Device) {
    println!("device:");
    println!("  adapter:  [{}] {}", d.adapter, d.name);
    println!("  backend:  {} ({})", d.backend, d.device_type);
    println!("  driver:   {} {}", d.driver, d.driver_info);
    println!("  storage:  {} ({})", d.storage, d.storage_reason);
    println!(
        "  timing:   {}",
        if d.timestamps {
            "GPU timestamp queries"
        } else {
            "wall clock (no TIMESTAMP_QUERY)"
        }
    );
    println!(
        "  features: {}",
        if d.features.is_empty() {
            "(none)".to_string()
        } else {
            d.features.join(" ")
        }
    );
    let l = &d.limits;
    println!("  limits:");
    let rows: [(&str, u64); 6] = [
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size", l.max_buffer_size),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage as u64,
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension as u64,
        ),
    ];
    for (name, v) in rows {
        println!("    {name:<38} {v}");
    }
}

/// Runs `fswap info`.
pub fn run(options: &ContextOptions, args: &Args) -> Result<()> {
    let adapters: Vec<AdapterRow> = Context::adapters(options.backend)
        .iter()
        .map(AdapterRow::from)
        .collect();
    if !args.json {
        // The list first: it is what a user needs when the device below cannot be created.
        print_adapters(&adapters);
    }
    let ctx = Context::new(options)?;
    let device = device(options, &ctx);
    if args.json {
        let info = Info { adapters, device };
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| fswap::Error::param("info --json", e.to_string()))?;
        println!("{text}");
    } else {
        print_device(&device);
    }
    Ok(())
}

//! Adapter choice and the device context: an engine-owned device, or a host application's.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::pipelines::PipelineCache;
use super::pool::BufferPool;
use crate::error::{Error, Result};

/// How tensors are stored in GPU buffers. Both hold IEEE half floats; arithmetic is f32 on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoragePath {
    /// Native `f16` arrays (`vec4<f16>` words); needs `SHADER_F16`.
    F16,
    /// Two halves per `u32` (`pack2x16float` / `unpack2x16float`); runs everywhere.
    Packed,
}

impl StoragePath {
    /// Short name used in logs, cache keys and `fswap info`.
    pub fn name(self) -> &'static str {
        match self {
            StoragePath::F16 => "f16",
            StoragePath::Packed => "packed",
        }
    }
    /// Parses `f16` or `packed`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "native" => Ok(StoragePath::F16),
            "packed" | "u32" => Ok(StoragePath::Packed),
            other => Err(Error::param(
                "storage path",
                format!("'{other}' (expected f16 or packed)"),
            )),
        }
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A graphics API to restrict adapter choice to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Vulkan (Linux, Windows, Android).
    Vulkan,
    /// Metal (macOS, iOS).
    Metal,
    /// Direct3D 12 (Windows).
    Dx12,
    /// OpenGL / GLES (through EGL on Linux).
    Gl,
}

impl BackendChoice {
    /// Parses a backend name as given to `--backend` or `FSWAP_BACKEND`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => Ok(BackendChoice::Vulkan),
            "metal" | "mtl" => Ok(BackendChoice::Metal),
            "dx12" | "d3d12" => Ok(BackendChoice::Dx12),
            "gl" | "gles" | "opengl" => Ok(BackendChoice::Gl),
            other => Err(Error::UnknownBackend(other.to_string())),
        }
    }
    fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }
}

/// How [`Context::new`] picks and sets up its device.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Restrict to one backend (`--backend`, `FSWAP_BACKEND`).
    pub backend: Option<BackendChoice>,
    /// Take the N-th adapter of the (filtered) list instead of the preferred one (`--adapter`).
    pub adapter: Option<usize>,
    /// Force a storage path; `Packed` works everywhere, `F16` fails where the adapter lacks it.
    pub storage: Option<StoragePath>,
}

impl ContextOptions {
    /// Options from the environment: `FSWAP_BACKEND`, `FSWAP_ADAPTER`, `FSWAP_STORAGE`.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(ContextOptions {
            backend: var("FSWAP_BACKEND")
                .map(|b| BackendChoice::parse(&b))
                .transpose()?,
            adapter: var("FSWAP_ADAPTER")
                .map(|a| {
                    a.parse::<usize>().map_err(|_| {
                        Error::param("FSWAP_ADAPTER", format!("'{a}' is not an index"))
                    })
                })
                .transpose()?,
            storage: var("FSWAP_STORAGE")
                .map(|s| StoragePath::parse(&s))
                .transpose()?,
        })
    }
}

/// What `fswap info` shows of one adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Index in the enumerated list (what `--adapter` takes).
    pub index: usize,
    /// wgpu's adapter info.
    pub info: wgpu::AdapterInfo,
    /// Whether it has native f16 storage and arithmetic.
    pub shader_f16: bool,
    /// Whether it has subgroup operations.
    pub subgroup: bool,
    /// Whether it has timestamp queries.
    pub timestamp_query: bool,
}

/// The device and everything the engine caches on it. Cheap to share by reference; holds no frame state.
pub struct Context {
    /// The wgpu device (the engine's own, or the host's).
    pub device: wgpu::Device,
    /// The queue work is submitted to.
    pub queue: wgpu::Queue,
    /// Adapter information, when known (a host device may not tell it).
    pub adapter_info: Option<wgpu::AdapterInfo>,
    storage: StoragePath,
    pipelines: PipelineCache,
    pool: BufferPool,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    dummy: wgpu::Buffer,
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The instance used for enumeration: all native backends, or the one asked for.
fn instance(backend: Option<BackendChoice>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backend
        .map(|b| b.backends())
        .unwrap_or(wgpu::Backends::all() & !wgpu::Backends::BROWSER_WEBGPU);
    wgpu::Instance::new(desc)
}

/// Adapters in preference order: discrete, integrated, virtual, other, software; stable within a class.
fn sorted_adapters(
    instance: &wgpu::Instance,
    backend: Option<BackendChoice>,
) -> Vec<wgpu::Adapter> {
    let backends = backend
        .map(|b| b.backends())
        .unwrap_or(wgpu::Backends::all() & !wgpu::Backends::BROWSER_WEBGPU);
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        // Among equals prefer Vulkan/Metal/DX12 over GL: compute on GL is the slowest path.
        let gl = (info.backend == wgpu::Backend::Gl) as u32;
        (type_rank(info.device_type), gl)
    });
    adapters
}

/// Features the engine uses when the adapter has them; none is required.
fn wanted_features(available: wgpu::Features) -> wgpu::Features {
    let wanted =
        wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
    wanted & available
}

impl Context {
    /// Lists the adapters wgpu finds, in the order [`Context::new`] prefers them.
    pub fn adapters(backend: Option<BackendChoice>) -> Vec<AdapterSummary> {
        let inst = instance(backend);
        sorted_adapters(&inst, backend)
            .into_iter()
            .enumerate()
            .map(|(index, a)| {
                let f = a.features();
                AdapterSummary {
                    index,
                    info: a.get_info(),
                    shader_f16: f.contains(wgpu::Features::SHADER_F16),
                    subgroup: f.contains(wgpu::Features::SUBGROUP),
                    timestamp_query: f.contains(wgpu::Features::TIMESTAMP_QUERY),
                }
            })
            .collect()
    }

    /// Creates an engine-owned device on the preferred (or requested) adapter.
    pub fn new(options: &ContextOptions) -> Result<Self> {
        let inst = instance(options.backend);
        let mut adapters = sorted_adapters(&inst, options.backend);
        let what = match options.backend {
            Some(b) => format!("backend {b:?}"),
            None => "any backend".to_string(),
        };
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "none found on {what} (on Linux without a GPU install Mesa: mesa-vulkan-drivers for lavapipe)"
            )));
        }
        let index = options.adapter.unwrap_or(0);
        if index >= adapters.len() {
            return Err(Error::NoAdapter(format!(
                "adapter index {index} requested but only {} found on {what} (see `fswap info`)",
                adapters.len()
            )));
        }
        let adapter = adapters.swap_remove(index);
        let info = adapter.get_info();
        let features = wanted_features(adapter.features());
        if options.storage == Some(StoragePath::F16)
            && !features.contains(wgpu::Features::SHADER_F16)
        {
            return Err(Error::MissingFeature {
                feature: "SHADER_F16",
                why: format!("native f16 storage was requested on '{}'", info.name),
            });
        }
        // The packed path needs pack2x16float/unpack2x16float, which wgpu gates on this downlevel
        // flag (cleared e.g. on some Mesa Vulkan drivers without f16 support).
        let packs = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        let wants_packed = options.storage == Some(StoragePath::Packed)
            || (options.storage.is_none() && !features.contains(wgpu::Features::SHADER_F16));
        if wants_packed && !packs {
            return Err(Error::MissingFeature {
                feature: "SHADER_F16_IN_F32",
                why: format!(
                    "the packed storage path needs pack2x16float on '{}'{}",
                    info.name,
                    if features.contains(wgpu::Features::SHADER_F16) {
                        "; use --storage f16"
                    } else {
                        ", and it has no SHADER_F16 either: no fp16 storage path is possible"
                    }
                ),
            });
        }
        // Ask for the adapter's own limits: storage-buffer binding size matters for batched tensors.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fswap"),
            required_features: features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
        Self::build(device, queue, Some(info), options.storage)
    }

    /// Adopts a host application's device and queue. The engine uses whatever features the host
    /// created it with: native f16 storage only if `SHADER_F16` is enabled, timestamps only if
    /// `TIMESTAMP_QUERY` is. Ask for those when creating the device to get the fast paths.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
    ) -> Result<Self> {
        Self::build(device, queue, adapter_info, None)
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
        storage: Option<StoragePath>,
    ) -> Result<Self> {
        let has_f16 = device.features().contains(wgpu::Features::SHADER_F16);
        let storage = match storage {
            Some(StoragePath::F16) if !has_f16 => {
                return Err(Error::MissingFeature {
                    feature: "SHADER_F16",
                    why: "native f16 storage was requested on a device created without it".into(),
                })
            }
            Some(s) => s,
            None if has_f16 => StoragePath::F16,
            None => StoragePath::Packed,
        };
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string());
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lost_sink.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("{reason:?}: {msg}"));
        });
        // Bound in place of an absent optional input (residual, gamma): never read when absent.
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fswap dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Context {
            pipelines: PipelineCache::default(),
            pool: BufferPool::default(),
            device,
            queue,
            adapter_info,
            storage,
            errors,
            lost,
            dummy,
        })
    }

    /// The storage path every kernel of this context is compiled for.
    pub fn storage(&self) -> StoragePath {
        self.storage
    }

    /// The device's limits.
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// The device's enabled features.
    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    /// Whether per-dispatch GPU timestamps can be taken.
    pub fn has_timestamps(&self) -> bool {
        self.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// The compiled-pipeline cache.
    pub fn pipelines(&self) -> &PipelineCache {
        &self.pipelines
    }

    /// The buffer pool tensors draw from.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// A tiny storage buffer bound where an optional input is absent.
    pub fn dummy(&self) -> &wgpu::Buffer {
        &self.dummy
    }

    /// A one-line description: adapter, backend, storage path.
    pub fn describe(&self) -> String {
        match &self.adapter_info {
            Some(i) => format!(
                "{} ({:?}, {:?}, driver {} {}) storage={}",
                i.name, i.backend, i.device_type, i.driver, i.driver_info, self.storage
            ),
            None => format!("host device, storage={}", self.storage),
        }
    }

    /// Fails if the device was lost or wgpu reported an error since the last check.
    pub fn check(&self, during: &str) -> Result<()> {
        if let Some(reason) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Error::DeviceLost(reason));
        }
        let mut errs = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if !errs.is_empty() {
            let message = errs.join("; ");
            errs.clear();
            return Err(Error::Gpu {
                during: during.to_string(),
                message,
            });
        }
        Ok(())
    }

    /// Blocks until the queue is idle, then reports any GPU error.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| Error::Gpu {
                during: "wait".into(),
                message: e.to_string(),
            })?;
        self.check("wait")
    }
}

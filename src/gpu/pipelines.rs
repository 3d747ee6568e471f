//! Compiled compute pipelines, cached by (shader, storage path, entry point, constants).

use std::collections::HashMap;
use std::sync::Mutex;

use super::{shader, Context};
use crate::error::{Error, Result};

type Key = (
    &'static str,
    &'static str,
    super::StoragePath,
    Vec<(&'static str, u64)>,
);

/// Pipelines are created once per key and shared: creating one costs milliseconds on desktop and far
/// more on phones (engines.md P12), so models build theirs at load time, never per frame.
#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<Key, wgpu::ComputePipeline>>,
}

impl PipelineCache {
    /// Number of distinct pipelines compiled so far.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
    /// Whether nothing has been compiled yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Context {
    /// The pipeline for `entry` of `shaders/<shader>.wgsl` on this context's storage path, with the
    /// given `override` constants, compiled on first use.
    pub fn pipeline(
        &self,
        shader_name: &'static str,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> Result<wgpu::ComputePipeline> {
        let key: Key = (
            shader_name,
            entry,
            self.storage(),
            constants.iter().map(|(k, v)| (*k, v.to_bits())).collect(),
        );
        let mut map = self
            .pipelines()
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(&key) {
            return Ok(p.clone());
        }
        let path = self.storage();
        let text = shader::preprocess(shader_name, path)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader_name),
                source: wgpu::ShaderSource::Wgsl(text.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    // Every kernel writes its workgroup memory before reading it; zero-init only costs
                    // (5x slower pipeline creation on some phones, engines.md P12).
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                name: format!("{shader_name}::{entry}"),
                path: path.name().into(),
                message: e.to_string(),
            });
        }
        map.insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

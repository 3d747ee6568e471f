//! Reuse of GPU buffers: a dropped tensor's buffer goes back to a free list keyed by size class, so a
//! model that re-creates the same intermediate shapes allocates nothing once warm.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

type FreeLists = HashMap<(u64, u32), Vec<wgpu::Buffer>>;

/// A pool of storage buffers by size class.
#[derive(Default)]
pub struct BufferPool {
    free: Arc<Mutex<FreeLists>>,
    stats: Arc<Mutex<PoolStats>>,
}

/// Counters for checking that a steady-state path allocates nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created with the device.
    pub created: u64,
    /// Requests served from a free list.
    pub reused: u64,
}

/// Size class: multiples of 256 bytes up to 64 KiB, then eighths of a power of two (≤12.5% waste).
pub fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(16);
    if b <= 65536 {
        return b.div_ceil(256) * 256;
    }
    let pow = 63 - b.leading_zeros() as u64; // floor(log2 b)
    let step = 1u64 << (pow - 3);
    b.div_ceil(step) * step
}

/// A buffer on loan from the pool; it returns there when the last clone is dropped.
#[derive(Clone)]
pub struct PooledBuffer {
    inner: Arc<Loan>,
}

struct Loan {
    buffer: Option<wgpu::Buffer>,
    key: (u64, u32),
    home: Arc<Mutex<FreeLists>>,
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            if let Ok(mut free) = self.home.lock() {
                free.entry(self.key).or_default().push(b);
            }
        }
    }
}

impl Deref for PooledBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        self.inner
            .buffer
            .as_ref()
            .expect("a loaned buffer is present until dropped")
    }
}

impl BufferPool {
    /// A buffer of at least `bytes` bytes with `usage`; its contents are unspecified.
    pub fn take(
        &self,
        device: &wgpu::Device,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> PooledBuffer {
        let key = (size_class(bytes), usage.bits());
        let reused = self
            .free
            .lock()
            .ok()
            .and_then(|mut f| f.get_mut(&key).and_then(|v| v.pop()));
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let buffer = match reused {
            Some(b) => {
                stats.reused += 1;
                b
            }
            None => {
                stats.created += 1;
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fswap tensor"),
                    size: key.0,
                    usage,
                    mapped_at_creation: false,
                })
            }
        };
        PooledBuffer {
            inner: Arc::new(Loan {
                buffer: Some(buffer),
                key,
                home: self.free.clone(),
            }),
        }
    }

    /// Allocation counters since the context was made.
    pub fn stats(&self) -> PoolStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frees every idle buffer (e.g. after loading a model).
    pub fn trim(&self) {
        if let Ok(mut f) = self.free.lock() {
            f.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_and_bound_waste() {
        for b in [
            1u64,
            255,
            256,
            257,
            65536,
            65537,
            1 << 20,
            (1 << 20) + 1,
            3_000_000,
        ] {
            let c = size_class(b);
            assert!(c >= b, "{b} -> {c}");
            assert!(c as f64 <= (b.max(16) as f64) * 1.125 + 256.0, "{b} -> {c}");
        }
    }
}

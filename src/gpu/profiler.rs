//! GPU time per dispatch from timestamp queries.
//!
//! Each dispatch gets its own compute pass with pass-level timestamps (`TIMESTAMP_QUERY` only;
//! `TIMESTAMP_QUERY_INSIDE_PASSES` is missing on Apple GPUs and costly on lavapipe, engines.md
//! P11 and E). Splitting passes adds a little overhead, so per-frame totals come from the normal
//! single-pass path timed with a pass-level pair around everything.

use std::time::Instant;

use super::{Context, Dispatch, DispatchStats};
use crate::error::{Error, Result};

/// One kernel's share of a profiled run.
#[derive(Clone, Debug)]
pub struct ProfileEntry {
    /// Dispatch label.
    pub label: String,
    /// GPU microseconds (mean over iterations).
    pub micros: f64,
    /// Work done.
    pub stats: DispatchStats,
}

/// Result of [`Context::profile`].
#[derive(Clone, Debug)]
pub struct Profile {
    /// Per-dispatch times; empty when the device has no timestamps.
    pub entries: Vec<ProfileEntry>,
    /// Mean microseconds for the whole list recorded in one pass.
    pub total_micros: f64,
    /// `"gpu"` when timestamps were used, `"wall"` when the total is submit-to-idle wall time.
    pub timing: &'static str,
}

impl Profile {
    /// Total FLOPs and bytes of the profiled list.
    pub fn stats(&self) -> DispatchStats {
        self.entries
            .iter()
            .fold(DispatchStats::default(), |a, e| DispatchStats {
                flops: a.flops + e.stats.flops,
                bytes: a.bytes + e.stats.bytes,
            })
    }
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    count: u32,
}

impl Context {
    fn timestamps(&self, count: u32) -> Timestamps {
        let bytes = count as u64 * 8;
        Timestamps {
            set: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("fswap timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            read: self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp read"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            count,
        }
    }

    fn read_timestamps(&self, ts: &Timestamps) -> Result<Vec<u64>> {
        let bytes = self.map_read(&ts.read, ts.count as u64 * 8)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Maps `buffer` (MAP_READ) after the queue drains and returns its first `len` bytes.
    pub(crate) fn map_read(&self, buffer: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        let slice = buffer.slice(..len);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Readback(e.to_string())),
            Err(_) => return Err(Error::Readback("map callback never ran".into())),
        }
        let out = slice
            .get_mapped_range()
            .map_err(|e| Error::Readback(e.to_string()))?
            .to_vec();
        buffer.unmap();
        Ok(out)
    }

    /// Runs `dispatches` `warmup + iters` times and reports mean GPU time per dispatch and for the
    /// whole list, from timestamp queries where the device has them, else from wall time.
    pub fn profile(&self, dispatches: &[&Dispatch], warmup: u32, iters: u32) -> Result<Profile> {
        self.measure(dispatches, warmup, iters, true)
    }

    /// Like [`Context::profile`] but times only the whole list in one pass (no per-dispatch
    /// passes): half the work per iteration, for whole-model figures.
    pub fn time(&self, dispatches: &[&Dispatch], warmup: u32, iters: u32) -> Result<Profile> {
        self.measure(dispatches, warmup, iters, false)
    }

    fn measure(
        &self,
        dispatches: &[&Dispatch],
        warmup: u32,
        iters: u32,
        per_dispatch: bool,
    ) -> Result<Profile> {
        let iters = iters.max(1);
        for _ in 0..warmup {
            self.run(dispatches)?;
        }
        self.wait()?;
        if !self.has_timestamps() {
            let t0 = Instant::now();
            for _ in 0..iters {
                self.run(dispatches)?;
            }
            self.wait()?;
            let total = t0.elapsed().as_secs_f64() * 1e6 / iters as f64;
            return Ok(Profile {
                entries: dispatches
                    .iter()
                    .map(|d| ProfileEntry {
                        label: d.label.clone(),
                        micros: f64::NAN,
                        stats: d.stats,
                    })
                    .collect(),
                total_micros: total,
                timing: "wall",
            });
        }
        let n = dispatches.len() as u32;
        let ts = self.timestamps(2 * n + 2);
        let period = self.queue.get_timestamp_period() as f64; // ns per tick
        let mut per = vec![0f64; n as usize];
        let mut total = 0f64;
        for _ in 0..iters {
            let mut enc = self.device.create_command_encoder(&Default::default());
            for (i, d) in dispatches.iter().enumerate().filter(|_| per_dispatch) {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&d.label),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &ts.set,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                d.record(&mut pass);
            }
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("fswap frame"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &ts.set,
                        beginning_of_pass_write_index: Some(2 * n),
                        end_of_pass_write_index: Some(2 * n + 1),
                    }),
                });
                super::record(&mut pass, dispatches);
            }
            enc.resolve_query_set(&ts.set, 0..ts.count, &ts.resolve, 0);
            enc.copy_buffer_to_buffer(&ts.resolve, 0, &ts.read, 0, ts.count as u64 * 8);
            self.queue.submit([enc.finish()]);
            let t = self.read_timestamps(&ts)?;
            let us = |a: u64, b: u64| b.saturating_sub(a) as f64 * period / 1000.0;
            for (i, p) in per.iter_mut().enumerate().filter(|_| per_dispatch) {
                *p += us(t[2 * i], t[2 * i + 1]);
            }
            total += us(t[2 * n as usize], t[2 * n as usize + 1]);
        }
        if !per_dispatch {
            per.iter_mut().for_each(|p| *p = f64::NAN);
        }
        Ok(Profile {
            entries: dispatches
                .iter()
                .zip(per)
                .map(|(d, p)| ProfileEntry {
                    label: d.label.clone(),
                    micros: p / iters as f64,
                    stats: d.stats,
                })
                .collect(),
            total_micros: total / iters as f64,
            timing: "gpu",
        })
    }
}

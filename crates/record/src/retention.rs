//! Retention: deletes the oldest unpinned recordings so that per-camera age limits, the global
//! size cap and the free-space floor all hold, counting bytes still being written.
//!
//! Deletion removes the index row first and the file second: a crash in between leaves an
//! orphan file that the next reconciliation re-indexes, so retention can never lose more than
//! it meant to. Pinned (alarm) footage is never deleted; when only pinned footage is left and
//! the floor is reached, a storage fault is raised and recording goes on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, Error, ErrorKind, Timestamp};
use xueliang_store::{Segment, Store};

use crate::metrics::RecordMetrics;

/// Bytes that open files are still expected to grow by, per camera.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<Mutex<HashMap<String, u64>>>);

impl InFlight {
    pub fn set(&self, camera: &str, bytes: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(camera.to_owned(), bytes);
    }

    pub fn total(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// Free bytes of the file system holding `path`, for unprivileged writers (statvfs f_bavail).
pub trait FreeSpace: Send + Sync + std::fmt::Debug {
    fn free_bytes(&self, path: &Path) -> std::io::Result<u64>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct Statvfs;

impl FreeSpace for Statvfs {
    fn free_bytes(&self, path: &Path) -> std::io::Result<u64> {
        let s = rustix::fs::statvfs(path)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }
}

#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    pub storage_dir: PathBuf,
    pub default_days: u32,
    pub camera_days: HashMap<String, u32>,
    pub max_bytes: Option<u64>,
    pub min_free_bytes: u64,
    /// Footage attached to an incident stays this long after the incident is resolved.
    pub clip_hold_ms: i64,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub deleted: usize,
    pub deleted_bytes: u64,
    /// The floor or cap could not be met because only pinned footage is left.
    pub fault: Option<String>,
}

/// Shared storage state for the API and health checks.
#[derive(Clone, Debug, Default)]
pub struct StorageStatus(Arc<Mutex<Option<String>>>);

impl StorageStatus {
    pub fn fault(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, f: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }
}

pub struct Retention {
    pub store: Arc<dyn Store>,
    pub policy: RetentionPolicy,
    pub in_flight: InFlight,
    pub free: Arc<dyn FreeSpace>,
    pub metrics: RecordMetrics,
    pub clock: Arc<dyn Clock>,
    pub status: StorageStatus,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Retention {
    async fn delete(&self, seg: &Segment, why: &str, report: &mut PassReport) -> Result<(), Error> {
        self.store.delete_segment(seg.id).await?;
        let full = self.policy.storage_dir.join(&seg.path);
        match tokio::fs::remove_file(&full).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::with_source(
                    ErrorKind::Unavailable,
                    format!("remove {}", seg.path),
                    e,
                ));
            }
        }
        tracing::info!(camera = %seg.camera_id, path = %seg.path, start = %seg.start, reason = why, "retention removed a segment");
        self.metrics
            .deleted
            .with_label_values(&[seg.camera_id.as_str()])
            .inc();
        report.deleted += 1;
        report.deleted_bytes += seg.bytes.max(0) as u64;
        Ok(())
    }

    fn free_after_reserve(&self) -> Result<i128, Error> {
        let dir = self.policy.storage_dir.clone();
        let free = self.free.free_bytes(&dir).map_err(|e| {
            Error::with_source(
                ErrorKind::Unavailable,
                format!("statvfs {}", dir.display()),
                e,
            )
        })?;
        self.metrics
            .free_bytes
            .set(free.min(i64::MAX as u64) as i64);
        Ok(i128::from(free) - i128::from(self.in_flight.total()))
    }

    /// One pass over all three limits. Safe to call at any time; never deletes pinned footage.
    pub async fn pass(&self) -> Result<PassReport, Error> {
        let now = self.clock.now();
        let mut report = PassReport::default();
        // 1. Age, per camera.
        let usage = self.store.storage_usage().await?;
        for u in &usage {
            let days = self
                .policy
                .camera_days
                .get(&u.camera_id)
                .copied()
                .unwrap_or(self.policy.default_days);
            let before = Timestamp::from_millis(now.as_millis() - i64::from(days) * 86_400_000);
            loop {
                let old = self
                    .store
                    .oldest_unpinned_segments(
                        Some(&u.camera_id),
                        Some(before),
                        now,
                        self.policy.clip_hold_ms,
                        100,
                    )
                    .await?;
                if old.is_empty() {
                    break;
                }
                for s in &old {
                    // Only segments that ended before the horizon; one straddling it stays.
                    if s.end <= before {
                        self.delete(s, "older than retention_days", &mut report)
                            .await?;
                    }
                }
                if old.iter().all(|s| s.end > before) || old.len() < 100 {
                    break;
                }
            }
        }
        // 2. Size cap and 3. free-space floor, oldest first across cameras.
        let mut total: i128 = self
            .store
            .storage_usage()
            .await?
            .iter()
            .map(|u| i128::from(u.bytes))
            .sum::<i128>()
            + i128::from(self.in_flight.total());
        let mut fault = None;
        loop {
            let over_cap = self.policy.max_bytes.is_some_and(|m| total > i128::from(m));
            let below_floor = self.free_after_reserve()? < i128::from(self.policy.min_free_bytes);
            if !over_cap && !below_floor {
                break;
            }
            let oldest = self
                .store
                .oldest_unpinned_segments(None, None, now, self.policy.clip_hold_ms, 1)
                .await?;
            let Some(seg) = oldest.into_iter().next() else {
                let what = if below_floor {
                    "free space is below min_free_bytes"
                } else {
                    "recordings exceed max_bytes"
                };
                fault = Some(format!(
                    "{what} and only alarm-pinned recordings are left to delete"
                ));
                break;
            };
            let why = if below_floor {
                "free space below min_free_bytes"
            } else {
                "over max_bytes"
            };
            self.delete(&seg, why, &mut report).await?;
            total -= i128::from(seg.bytes);
        }
        if let Some(f) = &fault {
            if self.status.fault().is_none() {
                tracing::error!(fault = %f, "storage fault: recording continues but cannot keep the floor");
            }
        } else if self.status.fault().is_some() {
            tracing::info!("storage fault cleared");
        }
        self.metrics.fault.set(i64::from(fault.is_some()));
        self.status.set(fault.clone());
        report.fault = fault;
        for u in self.store.storage_usage().await? {
            if let Some(oldest) = u.oldest {
                let age = (now.as_millis() - oldest.as_millis()) / 1000;
                self.metrics
                    .horizon
                    .with_label_values(&[u.camera_id.as_str()])
                    .set(age);
            }
        }
        Ok(report)
    }

    /// Runs a pass every `every`, and whenever `wake` is notified, until shutdown.
    pub async fn run(self, every: Duration, wake: Arc<tokio::sync::Notify>, shutdown: Shutdown) {
        loop {
            match self.pass().await {
                Ok(r) if r.deleted > 0 => {
                    tracing::info!(
                        deleted = r.deleted,
                        bytes = r.deleted_bytes,
                        "retention pass"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::error!(err = %e.chain(), "retention pass failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = wake.notified() => {}
            }
        }
    }
}

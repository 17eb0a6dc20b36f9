//! Recording metrics, registered in main's registry. Labels: camera id (bounded by configuration).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use xueliang_core::{Error, ErrorKind, ResultExt};

#[derive(Clone, Debug)]
pub struct RecordMetrics {
    dropped: IntCounterVec,
    write_errors: IntCounterVec,
    segments: IntCounterVec,
    bytes: IntCounterVec,
    frames: IntCounterVec,
    sync_seconds: Histogram,
    pub(crate) deleted: IntCounterVec,
    pub(crate) horizon: IntGaugeVec,
    pub(crate) free_bytes: IntGauge,
    pub(crate) fault: IntGauge,
}

fn per_camera(name: &str, help: &str) -> Result<IntCounterVec, Error> {
    IntCounterVec::new(Opts::new(name, help), &["camera"])
        .err_kind(ErrorKind::Internal, || format!("define {name}"))
}

impl RecordMetrics {
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let m = RecordMetrics {
            dropped: per_camera(
                "xueliang_record_dropped_frames_total",
                "Frames dropped because the writer queue was full (disk too slow)",
            )?,
            write_errors: per_camera("xueliang_record_write_errors_total", "Failed writes to recording files")?,
            segments: per_camera("xueliang_record_segments_total", "Recording files closed and indexed")?,
            bytes: per_camera("xueliang_record_bytes_total", "Bytes written to recording files")?,
            frames: per_camera("xueliang_record_frames_total", "Frames written to recording files")?,
            sync_seconds: Histogram::with_opts(
                HistogramOpts::new("xueliang_record_fragment_sync_seconds", "Time to write and fsync one fragment")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .err_kind(ErrorKind::Internal, || "define sync histogram".into())?,
            deleted: per_camera("xueliang_retention_deleted_segments_total", "Segments removed by retention")?,
            horizon: IntGaugeVec::new(
                Opts::new("xueliang_retention_horizon_seconds", "Age of the oldest recording kept, per camera"),
                &["camera"],
            )
            .err_kind(ErrorKind::Internal, || "define horizon".into())?,
            free_bytes: IntGauge::new("xueliang_storage_free_bytes", "Free bytes on the recordings file system")
                .err_kind(ErrorKind::Internal, || "define free bytes".into())?,
            fault: IntGauge::new(
                "xueliang_storage_fault",
                "1 when the free-space floor is reached and only pinned recordings are left to delete",
            )
            .err_kind(ErrorKind::Internal, || "define storage fault".into())?,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.dropped.clone()),
            Box::new(m.write_errors.clone()),
            Box::new(m.segments.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.frames.clone()),
            Box::new(m.sync_seconds.clone()),
            Box::new(m.deleted.clone()),
            Box::new(m.horizon.clone()),
            Box::new(m.free_bytes.clone()),
            Box::new(m.fault.clone()),
        ];
        for c in collectors {
            registry
                .register(c)
                .err_kind(ErrorKind::Internal, || "register recording metric".into())?;
        }
        Ok(m)
    }

    /// Metrics registered nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry")
    }

    pub(crate) fn dropped_n(&self, camera: &str, frames: u64) {
        self.dropped.with_label_values(&[camera]).inc_by(frames);
    }

    pub(crate) fn write_error(&self, camera: &str) {
        self.write_errors.with_label_values(&[camera]).inc();
    }

    pub(crate) fn segment_closed(&self, camera: &str) {
        self.segments.with_label_values(&[camera]).inc();
    }

    pub(crate) fn fragment(&self, camera: &str, bytes: usize, frames: u32, took: Duration) {
        self.bytes.with_label_values(&[camera]).inc_by(bytes as u64);
        self.frames
            .with_label_values(&[camera])
            .inc_by(u64::from(frames));
        self.sync_seconds.observe(took.as_secs_f64());
    }
}

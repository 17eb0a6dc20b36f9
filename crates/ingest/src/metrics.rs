//! Ingest metrics. Labels: camera id and stream (bounded by configuration), state (3 values).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use xueliang_core::health::StreamKind;
use xueliang_core::model::CameraState;
use xueliang_core::{Error, ErrorKind, ResultExt};

#[derive(Clone, Debug)]
pub struct IngestMetrics {
    state: IntGaugeVec,
    frames: IntCounterVec,
    bytes: IntCounterVec,
    reconnects: IntCounterVec,
    rtp_loss: IntCounterVec,
    last_frame: IntGaugeVec,
    clock_jumps: IntCounterVec,
}

fn counter(name: &str, help: &str) -> Result<IntCounterVec, Error> {
    IntCounterVec::new(Opts::new(name, help), &["camera", "stream"])
        .err_kind(ErrorKind::Internal, || format!("define metric {name}"))
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let m = IngestMetrics {
            state: IntGaugeVec::new(
                Opts::new(
                    "xueliang_camera_state",
                    "1 for the stream's current state, 0 for the others",
                ),
                &["camera", "stream", "state"],
            )
            .err_kind(ErrorKind::Internal, || {
                "define xueliang_camera_state".into()
            })?,
            frames: counter("xueliang_camera_frames_total", "Video frames received")?,
            bytes: counter(
                "xueliang_camera_bytes_total",
                "Encoded video bytes received",
            )?,
            reconnects: counter(
                "xueliang_camera_reconnects_total",
                "Sessions that ended and were retried",
            )?,
            rtp_loss: counter(
                "xueliang_camera_rtp_loss_total",
                "RTP packets lost, from sequence number gaps",
            )?,
            last_frame: IntGaugeVec::new(
                Opts::new(
                    "xueliang_camera_last_frame_timestamp_seconds",
                    "Wall time of the last frame; its age is time() minus this",
                ),
                &["camera", "stream"],
            )
            .err_kind(ErrorKind::Internal, || "define last frame metric".into())?,
            clock_jumps: counter(
                "xueliang_camera_clock_jumps_total",
                "Times the camera's media clock disagreed with wall time and was re-anchored",
            )?,
        };
        for c in [
            &m.frames,
            &m.bytes,
            &m.reconnects,
            &m.rtp_loss,
            &m.clock_jumps,
        ] {
            registry
                .register(Box::new(c.clone()))
                .err_kind(ErrorKind::Internal, || "register ingest metric".into())?;
        }
        for g in [&m.state, &m.last_frame] {
            registry
                .register(Box::new(g.clone()))
                .err_kind(ErrorKind::Internal, || "register ingest metric".into())?;
        }
        Ok(m)
    }

    pub(crate) fn set_state(&self, camera: &str, kind: StreamKind, state: CameraState) {
        for s in CameraState::ALL {
            self.state
                .with_label_values(&[camera, kind.as_str(), s.as_str()])
                .set(i64::from(*s == state));
        }
    }

    pub(crate) fn frame(
        &self,
        camera: &str,
        kind: StreamKind,
        bytes: usize,
        loss: u32,
        wall_secs: i64,
    ) {
        let l = [camera, kind.as_str()];
        self.frames.with_label_values(&l).inc();
        self.bytes.with_label_values(&l).inc_by(bytes as u64);
        if loss > 0 {
            self.rtp_loss.with_label_values(&l).inc_by(u64::from(loss));
        }
        self.last_frame.with_label_values(&l).set(wall_secs);
    }

    pub(crate) fn reconnect(&self, camera: &str, kind: StreamKind) {
        self.reconnects
            .with_label_values(&[camera, kind.as_str()])
            .inc();
    }

    pub(crate) fn clock_jump(&self, camera: &str, kind: StreamKind) {
        self.clock_jumps
            .with_label_values(&[camera, kind.as_str()])
            .inc();
    }
}

//! RTSP ingest: one supervised retina session per camera stream, with reconnects, a stall
//! watchdog, health reporting and metrics. Frames go to sinks that never block ingest.

mod backoff;
mod metrics;
mod stream;
mod wall;

use std::sync::Arc;
use std::time::Duration;

use xueliang_core::Timestamp;
use xueliang_core::config::{Secret, Transport};
use xueliang_core::health::StreamKind;
use xueliang_core::media::{VideoFrame, VideoParams};
use xueliang_core::model::CameraState;

pub use backoff::{Backoff, BackoffConfig};
pub use metrics::IngestMetrics;
pub use stream::{StreamContext, run_stream};
pub use wall::{Mapped, WallMapper};

/// What one ingest task connects to.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub camera_id: String,
    pub kind: StreamKind,
    /// Without credentials: they travel separately and are never logged.
    pub url: url::Url,
    pub transport: Transport,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// No frame for this long counts as a failure even if the connection stays open.
    pub stall_timeout: Duration,
    /// Limit on each of DESCRIBE, SETUP and PLAY.
    pub request_timeout: Duration,
    pub backoff: BackoffConfig,
}

/// What a consumer (recorder, motion detector, live view) is told about a stream.
#[derive(Debug)]
pub enum IngestEvent<'a> {
    /// A new session delivers frames with these parameters; media time restarts.
    SessionStarted {
        at: Timestamp,
        params: &'a Arc<VideoParams>,
    },
    Frame(&'a VideoFrame),
    /// The session ended; nothing more comes from it.
    SessionEnded {
        at: Timestamp,
        error: Option<&'a str>,
    },
}

/// A consumer of frames. `on_event` must return quickly and never block: a consumer that
/// cannot keep up queues, drops and counts on its own side.
pub trait FrameSink: Send + Sync {
    fn on_event(&self, camera_id: &str, kind: StreamKind, event: IngestEvent<'_>);
}

/// Told about every state change, e.g. to persist it in the store.
pub trait StateSink: Send + Sync {
    fn on_state(
        &self,
        camera_id: &str,
        kind: StreamKind,
        state: CameraState,
        error: Option<&str>,
        at: Timestamp,
    );
}

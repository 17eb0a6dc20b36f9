//! Live health of every camera stream: written by ingest, read by the API and metrics.
//!
//! The store keeps state transitions durably; this board keeps what changes every second
//! (frame rate, bit rate, last frame) and needs no database round trip to read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::Timestamp;
use crate::model::CameraState;

/// Which of a camera's streams.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Main,
    Sub,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Main => "main",
            StreamKind::Sub => "sub",
        }
    }
}

/// One stream's current health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamHealth {
    pub state: CameraState,
    pub last_error: Option<String>,
    pub since: Timestamp,
    pub last_frame: Option<Timestamp>,
    /// Frames per second over the last few seconds.
    pub fps: Option<f64>,
    /// Bits per second over the last few seconds.
    pub bitrate_bps: Option<u64>,
    pub codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub reconnects: u64,
}

impl StreamHealth {
    pub fn connecting(at: Timestamp) -> Self {
        StreamHealth {
            state: CameraState::Connecting,
            last_error: None,
            since: at,
            last_frame: None,
            fps: None,
            bitrate_bps: None,
            codec: None,
            width: None,
            height: None,
            reconnects: 0,
        }
    }
}

/// Shared map `(camera id, stream) -> health`. Cheap to clone; never held across an await.
#[derive(Clone, Debug, Default)]
pub struct HealthBoard(Arc<RwLock<BTreeMap<(String, StreamKind), StreamHealth>>>);

impl HealthBoard {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, camera: &str, stream: StreamKind) -> Option<StreamHealth> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(camera.to_owned(), stream))
            .cloned()
    }

    /// Applies `f` to the stream's entry, creating it as `connecting` at `at` if absent.
    pub fn update(
        &self,
        camera: &str,
        stream: StreamKind,
        at: Timestamp,
        f: impl FnOnce(&mut StreamHealth),
    ) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry((camera.to_owned(), stream))
            .or_insert_with(|| StreamHealth::connecting(at));
        f(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_creates_then_modifies() {
        let b = HealthBoard::new();
        assert!(b.get("gate", StreamKind::Main).is_none());
        b.update("gate", StreamKind::Main, Timestamp::from_millis(5), |h| {
            h.fps = Some(25.0)
        });
        let h = b.get("gate", StreamKind::Main).unwrap();
        assert_eq!(
            (h.state, h.since, h.fps),
            (
                CameraState::Connecting,
                Timestamp::from_millis(5),
                Some(25.0)
            )
        );
        assert!(b.get("gate", StreamKind::Sub).is_none());
    }
}

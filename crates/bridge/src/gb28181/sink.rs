//! The outbox sink that delivers alarm notifications to the upper platform: NOTIFYs in its
//! alarm subscription when it holds one, MESSAGEs otherwise.

use async_trait::async_trait;
use tokio::sync::watch;
use xueliang_store::OutboxEntry;

use super::platform::PlatformHandle;
use crate::outbox::{DeliveryError, Sink};

/// Delivers outbox entries whose payload is an Alarm notify body built by
/// [`alarm_body`](super::manscdp::alarm_body). Delivered means a 2xx to the NOTIFY or MESSAGE (the upper's
/// business `Response` MESSAGE is optional: wvp never sends it).
#[derive(Clone, Debug)]
pub struct GbAlarmSink {
    name: String,
    platform: PlatformHandle,
}

impl GbAlarmSink {
    pub const DEFAULT_NAME: &'static str = "gb28181";

    pub fn new(platform: PlatformHandle) -> Self {
        Self::named(Self::DEFAULT_NAME, platform)
    }

    pub fn named(name: impl Into<String>, platform: PlatformHandle) -> Self {
        GbAlarmSink {
            name: name.into(),
            platform,
        }
    }
}

#[async_trait]
impl Sink for GbAlarmSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn link(&self) -> Option<watch::Receiver<bool>> {
        Some(self.platform.watch_registered())
    }

    async fn deliver(&self, entry: &OutboxEntry) -> Result<(), DeliveryError> {
        // One transaction per call and no retry here: the outbox owns retry timing and back-off,
        // so a failing upper sees one request (plus UDP retransmissions) per scheduled attempt.
        match self.platform.send_alarm(entry.payload.clone()).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(DeliveryError::Retryable(format!(
                "upper platform answered {} {}",
                r.status, r.reason
            ))),
            // Not registered, timed out, link down, shutting down: all pass with time.
            Err(e) => Err(DeliveryError::Retryable(e.to_string())),
        }
    }
}

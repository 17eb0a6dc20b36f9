//! Graceful shutdown: one token every long-lived task races its awaits against.

use tokio_util::sync::CancellationToken;

/// Cloneable handle: `trigger` once, every `cancelled().await` wakes.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Shutdown(CancellationToken::new())
    }

    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.0.cancelled().await
    }
}

//! Simulated cameras and the faults they inject on a schedule.
//!
//! Play-time faults (`Drop`, `Stall`, `NewSsrc`) are measured from the start of each session's
//! PLAY, so every reconnecting client meets them again at the same point of its own session:
//! that is what makes reconnect and watchdog behaviour testable in a few seconds. `RefuseAuth`
//! is measured from the moment the server was bound (it models a camera whose account is locked
//! for a while, whoever asks); `SlowStart` delays every DESCRIBE.

use std::sync::Arc;
use std::time::Duration;

use crate::Clip;

/// One simulated camera: `rtsp://HOST:PORT/cam/{n}` (main) and `/cam/{n}/sub`.
#[derive(Clone, Debug)]
pub struct SimCamera {
    pub main: Arc<Clip>,
    pub sub: Option<Arc<Clip>>,
    pub faults: Vec<Fault>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the RTSP connection (and so the session) `at` after PLAY.
    Drop { at: Duration },
    /// Send no RTP for `for_` from `at` after PLAY while RTSP keeps answering; then resume at
    /// the next key frame on the real-time line (the skipped pictures are never sent, like an
    /// encoder that froze; sequence numbers have no gap, timestamps jump).
    Stall { at: Duration, for_: Duration },
    /// `at` after PLAY, restart the stream as a rebooted encoder would: new SSRC, new sequence
    /// and timestamp bases, from the clip's first (key) picture.
    NewSsrc { at: Duration },
    /// From `from` until `until` after the server was bound, answer 401 to every request that
    /// needs authentication, right credentials or not.
    RefuseAuth { from: Duration, until: Duration },
    /// Answer DESCRIBE only after `delay`.
    SlowStart { delay: Duration },
}

impl SimCamera {
    pub(crate) fn slow_start(&self) -> Option<Duration> {
        self.faults.iter().find_map(|f| match f {
            Fault::SlowStart { delay } => Some(*delay),
            _ => None,
        })
    }

    pub(crate) fn refuses_auth(&self, since_bind: Duration) -> bool {
        self.faults.iter().any(|f| match f {
            Fault::RefuseAuth { from, until } => (*from..*until).contains(&since_bind),
            _ => false,
        })
    }
}

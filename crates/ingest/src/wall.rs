//! Maps a session's 90 kHz media time to UTC wall time.
//!
//! The first frame anchors media time to the wall clock. Cameras' clocks drift against ours and
//! sometimes jump (NTP steps, a reboot without a new SSRC); when the mapping and the wall clock
//! disagree by more than `max_skew`, the mapping re-anchors and says so. Media time itself is
//! never altered, so recordings keep the camera's frame spacing.

use xueliang_core::Timestamp;
use xueliang_core::media::VIDEO_CLOCK_RATE;

#[derive(Debug)]
pub struct WallMapper {
    anchor: Option<(i64, Timestamp)>,
    max_skew_ms: i64,
    reanchors: u64,
}

/// What mapping one frame found.
#[derive(Debug, PartialEq, Eq)]
pub enum Mapped {
    Ok(Timestamp),
    /// The mapping was off by `skew_ms` (mapped minus now) and has been re-anchored.
    Reanchored {
        at: Timestamp,
        skew_ms: i64,
    },
}

impl WallMapper {
    pub fn new(max_skew_ms: i64) -> Self {
        WallMapper {
            anchor: None,
            max_skew_ms,
            reanchors: 0,
        }
    }

    pub fn map(&mut self, pts: i64, now: Timestamp) -> Mapped {
        let Some((pts0, wall0)) = self.anchor else {
            self.anchor = Some((pts, now));
            return Mapped::Ok(now);
        };
        let ms = (pts - pts0).saturating_mul(1000) / i64::from(VIDEO_CLOCK_RATE);
        let mapped = wall0.saturating_add_millis(ms);
        let skew = mapped.as_millis() - now.as_millis();
        if skew.abs() > self.max_skew_ms {
            self.anchor = Some((pts, now));
            self.reanchors += 1;
            Mapped::Reanchored {
                at: now,
                skew_ms: skew,
            }
        } else {
            Mapped::Ok(mapped)
        }
    }

    pub fn reanchors(&self) -> u64 {
        self.reanchors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn follows_media_time_and_reanchors_on_a_jump() {
        let mut m = WallMapper::new(5000);
        assert_eq!(m.map(900_000, t(1_000)), Mapped::Ok(t(1_000)));
        // 40 ms of media later, arriving a little late: media time wins.
        assert_eq!(m.map(903_600, t(1_070)), Mapped::Ok(t(1_040)));
        // A B-frame with an earlier pts maps earlier.
        assert_eq!(m.map(901_800, t(1_080)), Mapped::Ok(t(1_020)));
        // The camera's clock jumps an hour ahead.
        let jump = 900_000 + 3600 * 90_000;
        assert_eq!(
            m.map(jump, t(1_120)),
            Mapped::Reanchored {
                at: t(1_120),
                skew_ms: 3_600_000 - 120
            }
        );
        assert_eq!(m.map(jump + 3600, t(1_160)), Mapped::Ok(t(1_160)));
        assert_eq!(m.reanchors(), 1);
    }
}

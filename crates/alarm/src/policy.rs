//! Tunable rules of the engine, with the defaults a duty desk starts from.

use std::time::Duration;

/// Grouping, escalation, supervision and footage rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// A press within this time of the last signal of a device's open incident joins it.
    pub join_window: Duration,
    /// This many presses within `burst_window` raise the incident's priority by one.
    pub burst_presses: usize,
    pub burst_window: Duration,
    /// Not acknowledged within this time: escalated and re-notified, again every period.
    pub ack_timeout: Duration,
    /// Devices send a heartbeat this often; `missed_heartbeats` missed ones mean offline.
    pub heartbeat_interval: Duration,
    pub missed_heartbeats: u32,
    /// Battery at or below this raises a maintenance incident.
    pub low_battery_percent: u8,
    /// Footage pinned around a press: from `pre_roll` before it to `post_roll` after the last
    /// signal, extended while the incident is open, never longer than `max_footage` in all.
    pub pre_roll: Duration,
    pub post_roll: Duration,
    pub max_footage: Duration,
    /// A camera offline this long raises an incident; `None`: camera faults raise none.
    pub camera_offline_after: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            join_window: Duration::from_secs(120),
            burst_presses: 3,
            burst_window: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(60),
            missed_heartbeats: 3,
            low_battery_percent: 20,
            pre_roll: Duration::from_secs(60),
            post_roll: Duration::from_secs(180),
            max_footage: Duration::from_secs(15 * 60),
            camera_offline_after: Some(Duration::from_secs(300)),
        }
    }
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

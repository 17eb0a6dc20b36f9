//! GB/T 28181 lower platform: this node registers with the city "Skynet" platform, keeps the
//! registration alive, answers its queries and pushes alarms to it.
//!
//! Layers: [`sip`] and [`digest`] (message syntax and auth), [`manscdp`] (XML bodies),
//! `transport` (UDP/TCP), [`platform`] (the user agent task), [`sink`] (outbox delivery).

pub mod digest;
pub mod manscdp;
pub mod platform;
pub mod sink;
pub mod sip;
mod transport;

pub use manscdp::{DeviceInfo, alarm_body, alarm_method};
pub use platform::{
    PlatformConfig, PlatformConfigError, PlatformHandle, PlatformStatus, SendError,
    SubscriptionInfo, SubscriptionKind, spawn,
};
pub use sink::GbAlarmSink;

/// GB/T 28181 device type of a catalog channel (digits 11–13 of its id).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// Type 132: IP camera.
    Camera,
    /// Type 134: alarm input device, here a one-key panic button.
    AlarmInput,
}

impl ChannelKind {
    pub fn type_code(self) -> u16 {
        match self {
            ChannelKind::Camera => 132,
            ChannelKind::AlarmInput => 134,
        }
    }
}

/// One catalog item the upper platform sees.
#[derive(Clone, Debug, PartialEq)]
pub struct Channel {
    /// 20-digit GB/T 28181 id.
    pub id: String,
    pub name: String,
    pub kind: ChannelKind,
    pub online: bool,
    /// `(lat, lon)` in decimal degrees.
    pub location: Option<(f64, f64)>,
    pub address: Option<String>,
}

/// The channels this node exposes, as of one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub channels: Vec<Channel>,
}

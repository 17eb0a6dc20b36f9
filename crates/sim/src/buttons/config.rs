//! `[buttons]`: the simulated panic-button fleet's typed configuration and its validation.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::SimError;

/// Largest duration in seconds, rate or drain the section accepts.
const MAX_VALUE: f64 = 1e6;

/// What a press reports in its `type` field.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PressType {
    #[default]
    Panic,
    Tamper,
    Test,
}

impl PressType {
    pub fn as_str(self) -> &'static str {
        match self {
            PressType::Panic => "panic",
            PressType::Tamper => "tamper",
            PressType::Test => "test",
        }
    }
}

/// How the fleet-wide `rate_per_second` spaces presses.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateMode {
    /// Exponential gaps and a random device per press: independent people pressing.
    #[default]
    Poisson,
    /// Even gaps, devices in turn: a steady load whose arithmetic is easy to check.
    Fixed,
}

/// One scheduled press: `[[buttons.presses]] device = 1, at_seconds = 60, type = "panic"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PressAt {
    /// Device number, from 1: device `n` is `{id_prefix}{n}`.
    pub device: usize,
    /// Seconds after the fleet started.
    pub at_seconds: f64,
    #[serde(rename = "type", default)]
    pub kind: PressType,
}

/// `[buttons]`. Every key is optional; unknown keys are an error.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ButtonsConfig {
    /// `host:port` of the broker (an `mqtt://` or `tcp://` prefix is accepted).
    pub broker: String,
    pub count: usize,
    /// Devices are `{id_prefix}1` .. `{id_prefix}{count}`.
    pub id_prefix: String,
    /// MQTT username; each device's own id when unset. Sent only when `password` is set.
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT keepalive; 0 turns pings off.
    pub keepalive_seconds: u64,
    /// Gap between heartbeats; 0 sends none.
    pub heartbeat_seconds: f64,
    /// Fleet-wide presses per second, spread over the devices; 0 sends none.
    pub rate_per_second: f64,
    pub rate_mode: RateMode,
    /// `type` of the presses the rate produces.
    pub rate_type: PressType,
    /// Share of scheduled presses (rate and `presses`) published a second time, byte for byte.
    pub duplicate_ratio: f64,
    /// Share of scheduled presses held back and published right after the device's next press,
    /// so the broker sees their sequence numbers out of order.
    pub reorder_ratio: f64,
    /// A held press goes out alone after this long if no later press came to overtake it.
    pub reorder_hold_seconds: f64,
    /// Every device's first `seq`.
    pub seq_start: u64,
    /// Battery percentage at start.
    pub battery_start: u8,
    /// Percentage points lost per hour, linearly, down to 0.
    pub battery_drain_per_hour: f64,
    /// Signal strength in heartbeats (dBm).
    pub rssi: i32,
    /// Location of device 1; device `n` sits `(n - 1) * 0.001` degrees further north.
    pub lat: f64,
    pub lon: f64,
    /// Seed for the random choices (rate gaps, duplicates, reordering); random when unset.
    pub seed: Option<u64>,
    pub presses: Vec<PressAt>,
}

impl Default for ButtonsConfig {
    fn default() -> Self {
        ButtonsConfig {
            broker: "127.0.0.1:1883".into(),
            count: 8,
            id_prefix: "btn-".into(),
            username: None,
            password: None,
            keepalive_seconds: 30,
            heartbeat_seconds: 30.0,
            rate_per_second: 0.0,
            rate_mode: RateMode::Poisson,
            rate_type: PressType::Panic,
            duplicate_ratio: 0.0,
            reorder_ratio: 0.0,
            reorder_hold_seconds: 5.0,
            seq_start: 1,
            battery_start: 100,
            battery_drain_per_hour: 0.0,
            rssi: -70,
            lat: 29.3398,
            lon: 104.7784,
            seed: None,
            presses: Vec::new(),
        }
    }
}

// The password must not reach logs through `{:?}`.
impl fmt::Debug for ButtonsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ButtonsConfig")
            .field("broker", &self.broker)
            .field("count", &self.count)
            .field("id_prefix", &self.id_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keepalive_seconds", &self.keepalive_seconds)
            .field("heartbeat_seconds", &self.heartbeat_seconds)
            .field("rate_per_second", &self.rate_per_second)
            .field("rate_mode", &self.rate_mode)
            .field("rate_type", &self.rate_type)
            .field("duplicate_ratio", &self.duplicate_ratio)
            .field("reorder_ratio", &self.reorder_ratio)
            .field("reorder_hold_seconds", &self.reorder_hold_seconds)
            .field("seq_start", &self.seq_start)
            .field("battery_start", &self.battery_start)
            .field("battery_drain_per_hour", &self.battery_drain_per_hour)
            .field("rssi", &self.rssi)
            .field("lat", &self.lat)
            .field("lon", &self.lon)
            .field("seed", &self.seed)
            .field("presses", &self.presses)
            .finish()
    }
}

impl ButtonsConfig {
    /// The devices' ids, device 1 first; the service's `[[devices]]` must list the same ids.
    pub fn device_ids(&self) -> Vec<String> {
        (1..=self.count)
            .map(|n| format!("{}{n}", self.id_prefix))
            .collect()
    }

    /// The broker's host and port.
    pub fn broker_addr(&self) -> Result<(String, u16), String> {
        let s = self.broker.trim();
        let s = s
            .strip_prefix("mqtt://")
            .or_else(|| s.strip_prefix("tcp://"))
            .unwrap_or(s)
            .trim_end_matches('/');
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("broker {:?} is not host:port", self.broker));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("broker {:?}: port {port:?} is not a number", self.broker))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("broker {:?} is not host:port", self.broker));
        }
        Ok((host.to_owned(), port))
    }

    /// Checks the whole section and reports every problem at once.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut errors = Vec::new();
        if let Err(e) = self.broker_addr() {
            errors.push(e);
        }
        // The prefix alone may end in '-', so check the shortest and the longest real id.
        for id in [1, self.count.max(1)].map(|n| format!("{}{n}", self.id_prefix)) {
            if let Err(e) = xueliang_core::id::check_slug(&id) {
                errors.push(format!("device id {e}"));
                break;
            }
        }
        // The upper bound keeps durations representable and the rate loop from spinning.
        let mut non_negative = |key: &str, v: f64| {
            if !(v.is_finite() && (0.0..=MAX_VALUE).contains(&v)) {
                errors.push(format!("{key} = {v} must be between 0 and {MAX_VALUE}"));
            }
        };
        non_negative("heartbeat_seconds", self.heartbeat_seconds);
        non_negative("rate_per_second", self.rate_per_second);
        non_negative("reorder_hold_seconds", self.reorder_hold_seconds);
        non_negative("battery_drain_per_hour", self.battery_drain_per_hour);
        for (key, v) in [
            ("duplicate_ratio", self.duplicate_ratio),
            ("reorder_ratio", self.reorder_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                errors.push(format!("{key} = {v} must be between 0 and 1"));
            }
        }
        if self.battery_start > 100 {
            errors.push(format!(
                "battery_start = {} must be at most 100",
                self.battery_start
            ));
        }
        if !((-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.lon)) {
            errors.push(format!(
                "lat = {} / lon = {} is not a location",
                self.lat, self.lon
            ));
        }
        if self.rate_per_second > 0.0 && self.count == 0 {
            errors.push("rate_per_second needs at least one device (count = 0)".into());
        }
        for (i, p) in self.presses.iter().enumerate() {
            if !(1..=self.count).contains(&p.device) {
                errors.push(format!(
                    "presses[{i}].device = {} is not between 1 and count = {}",
                    p.device, self.count
                ));
            }
            if !(p.at_seconds.is_finite() && (0.0..=MAX_VALUE).contains(&p.at_seconds)) {
                errors.push(format!(
                    "presses[{i}].at_seconds = {} must be between 0 and {MAX_VALUE}",
                    p.at_seconds
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SimError::ButtonsConfig(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_keys_and_unknown_keys_are_refused() {
        let c: ButtonsConfig = serde_json::from_str(
            r#"{"count": 3, "heartbeat_seconds": 1, "presses": [{"device": 2, "at_seconds": 60, "type": "tamper"}]}"#,
        )
        .unwrap();
        assert_eq!(c.count, 3);
        assert_eq!(c.heartbeat_seconds, 1.0);
        assert_eq!(c.broker, "127.0.0.1:1883");
        assert_eq!(c.presses[0].kind, PressType::Tamper);
        assert_eq!(c.device_ids(), ["btn-1", "btn-2", "btn-3"]);
        c.validate().unwrap();

        let e = serde_json::from_str::<ButtonsConfig>(r#"{"cout": 3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `cout`"), "{e}");
        let e = serde_json::from_str::<PressAt>(r#"{"device": 1, "at_seconds": 1, "when": 2}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `when`"), "{e}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let c = ButtonsConfig {
            broker: "localhost".into(),
            id_prefix: "Btn ".into(),
            duplicate_ratio: 1.5,
            heartbeat_seconds: f64::NAN,
            presses: vec![PressAt {
                device: 9,
                at_seconds: -1.0,
                kind: PressType::Test,
            }],
            ..ButtonsConfig::default()
        };
        let SimError::ButtonsConfig(errors) = c.validate().unwrap_err() else {
            panic!("wrong error kind");
        };
        assert_eq!(errors.len(), 6, "{errors:#?}");
        let all = errors.join("\n");
        for needle in [
            "broker \"localhost\"",
            "device id",
            "duplicate_ratio",
            "heartbeat_seconds",
            "presses[0].device = 9",
            "presses[0].at_seconds",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn broker_addresses_parse() {
        let mut c = ButtonsConfig::default();
        assert_eq!(c.broker_addr().unwrap(), ("127.0.0.1".into(), 1883));
        c.broker = "mqtt://broker.local:18830/".into();
        assert_eq!(c.broker_addr().unwrap(), ("broker.local".into(), 18830));
        c.broker = "[::1]:1883".into();
        assert_eq!(c.broker_addr().unwrap(), ("::1".into(), 1883));
        c.broker = "host:http".into();
        assert!(c.broker_addr().is_err());
    }

    #[test]
    fn the_password_stays_out_of_debug_output() {
        let c = ButtonsConfig {
            password: Some("hunter2".into()),
            ..ButtonsConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

//! Device topics and payloads: parsing and validation, no I/O.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use xueliang_core::Timestamp;

/// Topic prefix of the device contract.
pub const PREFIX: &str = "xueliang/v1/devices/";
/// Larger payloads are refused before parsing: real ones are a few hundred bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// Device clocks may be off by this much into the future...
pub const MAX_FUTURE_MS: i64 = 5 * 60_000;
/// ...and messages may be this old (a press queued in the broker while the service was down).
pub const MAX_AGE_MS: i64 = 7 * 86_400_000;

/// What a device sent, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceMessage {
    Alarm {
        device: String,
        alarm: Alarm,
    },
    Heartbeat {
        device: String,
        heartbeat: Heartbeat,
    },
    Status {
        device: String,
        online: bool,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmType {
    Panic,
    Tamper,
    Test,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmRaw {
    seq: u64,
    ts: String,
    #[serde(rename = "type")]
    kind: AlarmType,
    battery: Option<u8>,
    lat: Option<f64>,
    lon: Option<f64>,
}

/// A press as the device reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct Alarm {
    /// The device's own counter; with the device id, the deduplication key.
    pub seq: u64,
    pub ts: Timestamp,
    pub kind: AlarmType,
    pub battery: Option<u8>,
    pub location: Option<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatRaw {
    ts: String,
    battery: Option<u8>,
    rssi: Option<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub ts: Timestamp,
    pub battery: Option<u8>,
    pub rssi: Option<i32>,
}

/// Why a message was refused. The set is closed so it can label a metric.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    UnknownTopic,
    UnknownDevice,
    Oversized,
    NotUtf8,
    MalformedJson,
    WrongFields,
    BadTimestamp,
    FutureTimestamp,
    StaleTimestamp,
    BadLocation,
    BadStatus,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnknownTopic => "unknown_topic",
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::Oversized => "oversized",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::WrongFields => "wrong_fields",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::StaleTimestamp => "stale_timestamp",
            RejectReason::BadLocation => "bad_location",
            RejectReason::BadStatus => "bad_status",
        }
    }
}

/// A refused message: the reason for the metric, the detail for the log line.
#[derive(Clone, Debug, PartialEq)]
pub struct Reject {
    pub reason: RejectReason,
    /// The device named by the topic, when there was one.
    pub device: Option<String>,
    pub detail: String,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

impl std::error::Error for Reject {}

/// Splits `xueliang/v1/devices/{id}/{kind}`.
pub fn split_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(PREFIX)?;
    let (device, kind) = rest.split_once('/')?;
    if device.is_empty() || kind.contains('/') {
        return None;
    }
    Some((device, kind))
}

fn time(ts: &str, now: Timestamp, device: &str) -> Result<Timestamp, Reject> {
    let reject = |reason, detail: String| Reject {
        reason,
        device: Some(device.to_owned()),
        detail,
    };
    let t = Timestamp::parse_rfc3339(ts).map_err(|e| {
        reject(
            RejectReason::BadTimestamp,
            format!("`ts` {ts:?} is not an RFC 3339 time: {e}"),
        )
    })?;
    let skew = t.as_millis() - now.as_millis();
    if skew > MAX_FUTURE_MS {
        return Err(reject(
            RejectReason::FutureTimestamp,
            format!("`ts` {ts} is {} s ahead of the server clock", skew / 1000),
        ));
    }
    if -skew > MAX_AGE_MS {
        return Err(reject(
            RejectReason::StaleTimestamp,
            format!(
                "`ts` {ts} is more than {} days old",
                MAX_AGE_MS / 86_400_000
            ),
        ));
    }
    Ok(t)
}

/// Validates one message from the broker. `devices` are the configured device ids.
pub fn parse(
    topic: &str,
    payload: &[u8],
    devices: &HashSet<String>,
    now: Timestamp,
) -> Result<DeviceMessage, Reject> {
    let Some((device, kind)) = split_topic(topic) else {
        return Err(Reject {
            reason: RejectReason::UnknownTopic,
            device: None,
            detail: format!("topic {topic:?}"),
        });
    };
    let reject = |reason, detail: String| Reject {
        reason,
        device: Some(device.to_owned()),
        detail,
    };
    if !devices.contains(device) {
        return Err(reject(
            RejectReason::UnknownDevice,
            format!("device {device:?} is not configured"),
        ));
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(reject(
            RejectReason::Oversized,
            format!("{} bytes, at most {MAX_PAYLOAD}", payload.len()),
        ));
    }
    let text =
        std::str::from_utf8(payload).map_err(|e| reject(RejectReason::NotUtf8, e.to_string()))?;
    let json_err = |e: serde_json::Error| {
        let reason = if e.is_syntax() || e.is_eof() {
            RejectReason::MalformedJson
        } else {
            RejectReason::WrongFields
        };
        reject(reason, e.to_string())
    };
    match kind {
        "alarm" => {
            let raw: AlarmRaw = serde_json::from_str(text).map_err(json_err)?;
            let ts = time(&raw.ts, now, device)?;
            let location = match (raw.lat, raw.lon) {
                (Some(lat), Some(lon))
                    if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
                {
                    Some((lat, lon))
                }
                (None, None) => None,
                (lat, lon) => {
                    return Err(reject(
                        RejectReason::BadLocation,
                        format!("lat {lat:?} / lon {lon:?} is not a location"),
                    ));
                }
            };
            Ok(DeviceMessage::Alarm {
                device: device.to_owned(),
                alarm: Alarm {
                    seq: raw.seq,
                    ts,
                    kind: raw.kind,
                    battery: raw.battery.map(|b| b.min(100)),
                    location,
                },
            })
        }
        "heartbeat" => {
            let raw: HeartbeatRaw = serde_json::from_str(text).map_err(json_err)?;
            let ts = time(&raw.ts, now, device)?;
            Ok(DeviceMessage::Heartbeat {
                device: device.to_owned(),
                heartbeat: Heartbeat {
                    ts,
                    battery: raw.battery.map(|b| b.min(100)),
                    rssi: raw.rssi,
                },
            })
        }
        "status" => match text.trim() {
            "online" => Ok(DeviceMessage::Status {
                device: device.to_owned(),
                online: true,
            }),
            "offline" => Ok(DeviceMessage::Status {
                device: device.to_owned(),
                online: false,
            }),
            other => Err(reject(
                RejectReason::BadStatus,
                format!("status {other:?} is neither online nor offline"),
            )),
        },
        _ => Err(reject(
            RejectReason::UnknownTopic,
            format!("topic {topic:?}"),
        )),
    }
}

/// The acknowledgement the service publishes to `{PREFIX}{device}/ack`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ack<'a> {
    pub alarm_id: &'a str,
    pub state: &'a str,
}

pub fn ack_topic(device: &str) -> String {
    format!("{PREFIX}{device}/ack")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devs() -> HashSet<String> {
        ["btn-1".to_owned()].into_iter().collect()
    }

    fn now() -> Timestamp {
        Timestamp::parse_rfc3339("2026-11-24T08:00:30Z").unwrap()
    }

    fn p(topic: &str, payload: &str) -> Result<DeviceMessage, Reject> {
        parse(topic, payload.as_bytes(), &devs(), now())
    }

    fn reason(topic: &str, payload: &str) -> RejectReason {
        p(topic, payload).unwrap_err().reason
    }

    const ALARM: &str = "xueliang/v1/devices/btn-1/alarm";

    #[test]
    fn the_contract_example_parses() {
        let m = p(ALARM, r#"{"seq": 42, "ts": "2026-11-24T08:00:00Z", "type": "panic", "battery": 87, "lat": 29.3, "lon": 104.7}"#).unwrap();
        assert_eq!(
            m,
            DeviceMessage::Alarm {
                device: "btn-1".into(),
                alarm: Alarm {
                    seq: 42,
                    ts: Timestamp::parse_rfc3339("2026-11-24T08:00:00Z").unwrap(),
                    kind: AlarmType::Panic,
                    battery: Some(87),
                    location: Some((29.3, 104.7)),
                },
            }
        );
        let hb = p(
            "xueliang/v1/devices/btn-1/heartbeat",
            r#"{"ts": "2026-11-24T08:00:00Z", "battery": 87, "rssi": -70}"#,
        )
        .unwrap();
        assert!(matches!(
            hb,
            DeviceMessage::Heartbeat {
                heartbeat: Heartbeat {
                    rssi: Some(-70),
                    ..
                },
                ..
            }
        ));
        assert_eq!(
            p("xueliang/v1/devices/btn-1/status", "offline").unwrap(),
            DeviceMessage::Status {
                device: "btn-1".into(),
                online: false
            }
        );
    }

    #[test]
    fn every_kind_of_bad_message_has_its_reason() {
        let ts = "2026-11-24T08:00:00Z";
        assert_eq!(
            reason("xueliang/v1/devices/btn-1/alarm/extra", "{}"),
            RejectReason::UnknownTopic
        );
        assert_eq!(
            reason("other/btn-1/alarm", "{}"),
            RejectReason::UnknownTopic
        );
        assert_eq!(
            reason("xueliang/v1/devices/ghost/alarm", "{}"),
            RejectReason::UnknownDevice
        );
        assert_eq!(
            reason(ALARM, &"x".repeat(MAX_PAYLOAD + 1)),
            RejectReason::Oversized
        );
        assert_eq!(
            parse(ALARM, &[0xff, 0xfe], &devs(), now())
                .unwrap_err()
                .reason,
            RejectReason::NotUtf8
        );
        assert_eq!(reason(ALARM, r#"{"seq": 1,"#), RejectReason::MalformedJson);
        assert_eq!(
            reason(
                ALARM,
                &format!(r#"{{"seq": "one", "ts": "{ts}", "type": "panic"}}"#)
            ),
            RejectReason::WrongFields
        );
        assert_eq!(
            reason(
                ALARM,
                &format!(r#"{{"seq": 1, "ts": "{ts}", "type": "fire"}}"#)
            ),
            RejectReason::WrongFields
        );
        assert_eq!(
            reason(
                ALARM,
                &format!(r#"{{"seq": 1, "ts": "{ts}", "type": "panic", "colour": 1}}"#)
            ),
            RejectReason::WrongFields
        );
        assert_eq!(
            reason(ALARM, r#"{"seq": 1, "ts": "now", "type": "panic"}"#),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            reason(
                ALARM,
                r#"{"seq": 1, "ts": "2026-11-24T09:00:00Z", "type": "panic"}"#
            ),
            RejectReason::FutureTimestamp
        );
        assert_eq!(
            reason(
                ALARM,
                r#"{"seq": 1, "ts": "2026-10-01T00:00:00Z", "type": "panic"}"#
            ),
            RejectReason::StaleTimestamp
        );
        assert_eq!(
            reason(
                ALARM,
                &format!(r#"{{"seq": 1, "ts": "{ts}", "type": "panic", "lat": 95.0, "lon": 1.0}}"#)
            ),
            RejectReason::BadLocation
        );
        assert_eq!(
            reason(
                ALARM,
                &format!(r#"{{"seq": 1, "ts": "{ts}", "type": "panic", "lat": 29.0}}"#)
            ),
            RejectReason::BadLocation
        );
        assert_eq!(
            reason("xueliang/v1/devices/btn-1/status", "maybe"),
            RejectReason::BadStatus
        );
        // The log line names the device and says what was wrong.
        let r = p(
            ALARM,
            r#"{"seq": 1, "ts": "2026-11-24T09:00:00Z", "type": "panic"}"#,
        )
        .unwrap_err();
        assert_eq!(r.device.as_deref(), Some("btn-1"));
        assert_eq!(
            r.to_string(),
            "future_timestamp: `ts` 2026-11-24T09:00:00Z is 3570 s ahead of the server clock"
        );
    }

    #[test]
    fn ack_payloads_follow_the_contract() {
        let a = Ack {
            alarm_id: "01a2",
            state: "received",
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"alarm_id":"01a2","state":"received"}"#
        );
        assert_eq!(ack_topic("btn-1"), "xueliang/v1/devices/btn-1/ack");
    }
}

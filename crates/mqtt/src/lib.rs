//! The panic-button device protocol over MQTT (topics and payloads in ARCHITECTURE.md).
//!
//! [`protocol`] is the pure part: it turns a topic and payload into a typed message or a
//! [`protocol::Reject`] with a bounded reason, so that every rejection can be counted by reason
//! and logged with the device and topic, and nothing malformed reaches the alarm engine.

pub mod protocol;

//! The panic-button device protocol over MQTT (topics and payloads in ARCHITECTURE.md).
//!
//! [`protocol`] is the pure part: it turns a topic and payload into a typed message or a
//! [`protocol::Reject`] with a bounded reason, so that every rejection can be counted by reason
//! and logged with the device and topic, and nothing malformed reaches the alarm engine.
//! [`client`] is the connection to a broker: persistent session, QoS 1, manual acks sent only
//! once the message is safely stored. [`broker`] is the embedded broker of an edge box.

pub mod broker;
pub mod client;
pub mod protocol;

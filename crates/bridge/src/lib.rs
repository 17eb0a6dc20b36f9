//! Federation: the durable outbox drained to the city platform, one drainer per sink.
//!
//! The alarm pipeline writes an outbox entry for every sink in the same transaction as the
//! change it reports ([`payload::alarm_entry`] freezes its bytes then). A [`outbox::Drainer`]
//! per sink delivers the entries at least once, keeping each channel (incident) in order,
//! retrying with backoff and expiring by age and bytes. Sinks: [`mqtt_uplink::MqttUplink`]
//! (JSON over MQTT to a city broker) and [`gb28181`] (SIP lower platform).
//!
//! Guarantees: at least once per sink while an entry is inside the age and byte budget;
//! per-channel FIFO; a retransmission carries the same bytes (the same `event_id`), so the
//! receiver deduplicates; every expiry is counted and logged.

pub mod gb28181;
pub mod mqtt_uplink;
pub mod outbox;
pub mod payload;

pub use mqtt_uplink::{MqttUplink, UplinkConfig};
pub use outbox::{DeliveryError, DrainPolicy, Drainer, OutboxMetrics, RoundReport, Sink};
pub use payload::{AlarmEventKind, alarm_entry};

//! Helpers shared by the bridge's integration tests: a store, entries, sinks, metrics and a
//! Mosquitto standing in for the city broker.

#![allow(dead_code)]

pub mod broker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use xueliang_bridge::{DeliveryError, Sink};
use xueliang_core::{EntityId, Timestamp};
use xueliang_store::OutboxEntry;

pub const NODE: &str = "yantan-01";
pub const T0: i64 = 1_795_000_000_000;

pub fn t(offset_ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + offset_ms)
}

/// An entry whose body names its channel and sequence number.
pub fn entry(sink: &str, channel: &str, seq: u32, priority: i64, at: Timestamp) -> OutboxEntry {
    OutboxEntry {
        id: EntityId::new_ordered(at),
        node_id: NODE.into(),
        sink: sink.into(),
        channel: channel.into(),
        priority,
        created_at: at,
        payload: format!(r#"{{"channel":"{channel}","seq":{seq}}}"#).into_bytes(),
        attempts: 0,
        next_attempt: at,
        last_error: None,
        delivered_at: None,
        expired_at: None,
    }
}

/// Parses the body [`entry`] writes.
pub fn channel_seq(payload: &[u8]) -> (String, u32) {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("test body is JSON");
    (
        v["channel"].as_str().unwrap().to_owned(),
        v["seq"].as_u64().unwrap() as u32,
    )
}

/// A sink that records what it was given, optionally slowly, failing the first `fail_first`
/// calls retryably.
#[derive(Debug, Default)]
pub struct RecordingSink {
    pub name: String,
    pub delay: Duration,
    pub fail_first: usize,
    pub always_fail: bool,
    pub calls: Mutex<usize>,
    pub seen: Mutex<Vec<(EntityId, Vec<u8>)>>,
}

impl RecordingSink {
    pub fn new(name: &str) -> Self {
        RecordingSink {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn seen(&self) -> Vec<(EntityId, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }

    pub fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }
}

#[async_trait]
impl Sink for RecordingSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, e: &OutboxEntry) -> Result<(), DeliveryError> {
        let call = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.always_fail || call <= self.fail_first {
            return Err(DeliveryError::retryable(format!(
                "city answered 503 (call {call})"
            )));
        }
        self.seen.lock().unwrap().push((e.id, e.payload.clone()));
        Ok(())
    }
}

/// A metric's value from a registry: the sample whose labels include all of `labels`.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for fam in registry.gather() {
        if fam.name() != name {
            continue;
        }
        for m in fam.get_metric() {
            let ok = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if ok {
                use prometheus::proto::MetricType;
                return match fam.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                    _ => 0.0,
                };
            }
        }
    }
    0.0
}

pub fn shared<T>(v: T) -> Arc<T> {
    Arc::new(v)
}

//! One simulated button's behaviour without I/O: payloads, battery drain, sequence numbers,
//! duplicates and reordering, and the latency summary.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use xueliang_core::Timestamp;

use super::config::PressType;

pub(crate) const PREFIX: &str = "xueliang/v1/devices/";

pub(crate) fn topic(device: &str, kind: &str) -> String {
    format!("{PREFIX}{device}/{kind}")
}

#[derive(Serialize)]
struct PressBody<'a> {
    seq: u64,
    ts: &'a str,
    #[serde(rename = "type")]
    kind: PressType,
    battery: u8,
    lat: f64,
    lon: f64,
}

#[derive(Serialize)]
struct HeartbeatBody<'a> {
    ts: &'a str,
    battery: u8,
    rssi: i32,
}

/// What the device contract says a press looks like; `ts` is RFC 3339 UTC.
pub(crate) fn press_payload(
    seq: u64,
    ts: &str,
    kind: PressType,
    battery: u8,
    (lat, lon): (f64, f64),
) -> Vec<u8> {
    let body = PressBody {
        seq,
        ts,
        kind,
        battery,
        lat,
        lon,
    };
    // Serialising plain numbers and strings cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

pub(crate) fn heartbeat_payload(ts: &str, battery: u8, rssi: i32) -> Vec<u8> {
    serde_json::to_vec(&HeartbeatBody { ts, battery, rssi }).unwrap_or_default()
}

/// Battery percentage after `elapsed`, draining linearly from `start`, never below 0.
pub(crate) fn battery_at(start: u8, drain_per_hour: f64, elapsed: Duration) -> u8 {
    let left = f64::from(start) - drain_per_hour * elapsed.as_secs_f64() / 3600.0;
    // Rounded up, so a fresh device reports its full start value.
    left.ceil().clamp(0.0, 100.0) as u8
}

/// The acknowledgement the service publishes; fields it may add later are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct AckBody {
    pub alarm_id: String,
    pub state: String,
}

/// A press ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Outgoing {
    pub seq: u64,
    /// The `ts` inside the payload.
    pub ts: Timestamp,
    pub payload: Vec<u8>,
    /// A byte-identical re-publication of a press already sent.
    pub duplicate: bool,
}

/// What a scheduled press should suffer, decided by the caller's dice.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mischief {
    pub duplicate: bool,
    pub reorder: bool,
}

/// A device's sequence counter and the press it is holding back, if any.
#[derive(Debug)]
pub(crate) struct Sequencer {
    next_seq: u64,
    held: Option<Outgoing>,
    last: Option<Outgoing>,
}

impl Sequencer {
    pub fn new(seq_start: u64) -> Self {
        Sequencer {
            next_seq: seq_start,
            held: None,
            last: None,
        }
    }

    /// Takes the next sequence number.
    pub fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// A scheduled press, and what to publish now, in order. A held press follows the next
    /// scheduled one out, so the broker sees `n + 1` before `n`; a press is never held while
    /// another is, so every hold ends at the next scheduled press (or its deadline).
    pub fn press(&mut self, out: Outgoing, m: Mischief) -> Vec<Outgoing> {
        let out = Outgoing {
            duplicate: false,
            ..out
        };
        if m.reorder && self.held.is_none() {
            self.held = Some(out);
            return Vec::new();
        }
        let mut v = vec![out];
        if m.duplicate {
            v.push(Outgoing {
                duplicate: true,
                ..v[0].clone()
            });
        }
        v.extend(self.held.take());
        v
    }

    /// The held press, to publish now (hold expired, or the device is stopping).
    pub fn release(&mut self) -> Option<Outgoing> {
        self.held.take()
    }

    /// Notes a press as published, for [`Sequencer::duplicate_last`].
    pub fn published(&mut self, out: &Outgoing) {
        if !out.duplicate {
            self.last = Some(out.clone());
        }
    }

    /// The last press published, again, byte for byte.
    pub fn duplicate_last(&self) -> Option<Outgoing> {
        self.last.as_ref().map(|o| Outgoing {
            duplicate: true,
            ..o.clone()
        })
    }
}

/// Latency percentiles in milliseconds; `None` without samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl LatencySummary {
    /// Nearest-rank percentiles of `samples_us` (microseconds), which it sorts.
    pub(crate) fn from_micros(samples_us: &mut [u64]) -> Self {
        samples_us.sort_unstable();
        let n = samples_us.len();
        let pick = |q: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            Some(samples_us[rank - 1] as f64 / 1000.0)
        };
        LatencySummary {
            samples: n as u64,
            p50_ms: pick(0.50),
            p95_ms: pick(0.95),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(v: &[Outgoing]) -> Vec<(u64, bool)> {
        v.iter().map(|o| (o.seq, o.duplicate)).collect()
    }

    fn press(s: &mut Sequencer, m: Mischief) -> Vec<Outgoing> {
        let seq = s.next_seq();
        let out = Outgoing {
            seq,
            ts: Timestamp::from_millis(seq as i64),
            payload: format!("p{seq}").into_bytes(),
            duplicate: false,
        };
        s.press(out, m)
    }

    #[test]
    fn payloads_follow_the_device_contract() {
        let p = press_payload(
            42,
            "2026-11-24T08:00:00.000Z",
            PressType::Panic,
            87,
            (29.3, 104.7),
        );
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            r#"{"seq":42,"ts":"2026-11-24T08:00:00.000Z","type":"panic","battery":87,"lat":29.3,"lon":104.7}"#
        );
        let h = heartbeat_payload("2026-11-24T08:00:00.000Z", 87, -70);
        assert_eq!(
            std::str::from_utf8(&h).unwrap(),
            r#"{"ts":"2026-11-24T08:00:00.000Z","battery":87,"rssi":-70}"#
        );
    }

    #[test]
    fn battery_drains_linearly_to_zero() {
        let h = |s: f64| Duration::from_secs_f64(s * 3600.0);
        assert_eq!(battery_at(100, 0.0, h(100.0)), 100);
        assert_eq!(battery_at(100, 10.0, h(0.0)), 100);
        assert_eq!(battery_at(100, 10.0, h(1.0)), 90);
        assert_eq!(battery_at(100, 10.0, h(1.05)), 90);
        assert_eq!(battery_at(50, 10.0, h(4.5)), 5);
        assert_eq!(battery_at(50, 10.0, h(50.0)), 0);
    }

    #[test]
    fn sequence_numbers_count_up_from_the_start() {
        let mut s = Sequencer::new(7);
        assert_eq!(seqs(&press(&mut s, Mischief::default())), [(7, false)]);
        assert_eq!(seqs(&press(&mut s, Mischief::default())), [(8, false)]);
    }

    #[test]
    fn a_held_press_follows_the_next_one() {
        let mut s = Sequencer::new(1);
        let hold = Mischief {
            reorder: true,
            duplicate: false,
        };
        assert!(press(&mut s, hold).is_empty());
        assert!(s.is_holding());
        // A second hold is refused while one is pending: it releases the first instead.
        assert_eq!(seqs(&press(&mut s, hold)), [(2, false), (1, false)]);
        assert!(!s.is_holding());
        assert!(press(&mut s, hold).is_empty());
        let out = s.release().unwrap();
        assert_eq!(out.seq, 3);
        assert_eq!(s.release(), None);
    }

    #[test]
    fn duplicates_repeat_the_bytes() {
        let mut s = Sequencer::new(1);
        let out = press(
            &mut s,
            Mischief {
                duplicate: true,
                reorder: false,
            },
        );
        assert_eq!(seqs(&out), [(1, false), (1, true)]);
        assert_eq!(out[0].payload, out[1].payload);
        assert_eq!(s.duplicate_last(), None, "nothing published yet");
        for o in &out {
            s.published(o);
        }
        let again = s.duplicate_last().unwrap();
        assert_eq!((again.seq, again.duplicate), (1, true));
        assert_eq!(again.payload, out[0].payload);
        assert_eq!(Sequencer::new(1).duplicate_last(), None);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let s = LatencySummary::from_micros(&mut v);
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50_ms, Some(50.0));
        assert_eq!(s.p95_ms, Some(95.0));
        assert_eq!(s.p99_ms, Some(99.0));
        assert_eq!(s.max_ms, Some(100.0));
        let one = LatencySummary::from_micros(&mut [1500]);
        assert_eq!((one.p50_ms, one.max_ms), (Some(1.5), Some(1.5)));
        assert_eq!(
            LatencySummary::from_micros(&mut []),
            LatencySummary::default()
        );
    }
}

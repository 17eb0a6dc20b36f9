//! The JSON body of alarm events sent upstream, built once when the entry is enqueued.
//!
//! The bytes are frozen in the outbox row, so every retransmission is byte-identical and
//! carries the same `event_id`, whatever changes to the incident or to this code come later.
//!
//! ```json
//! {"event_id": "0193…", "node_id": "zigong-yantan-01", "type": "new",
//!  "at": "2026-11-24T08:00:00.000Z", "incident": {"id": "0193…", "kind": "panic", …}}
//! ```
//!
//! `event_id` is the id of the incident change (or event) being reported: unique per
//! message, the receiver's deduplication key. `type` is `new` for an incident's first
//! report, `update` for later changes and `end` for the one that resolves it.

use serde::Serialize;
use xueliang_core::{EntityId, Timestamp};
use xueliang_store::{Incident, OutboxEntry};

/// What an alarm event says about its incident.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmEventKind {
    New,
    Update,
    End,
}

#[derive(Serialize)]
struct Envelope<'a> {
    event_id: EntityId,
    node_id: &'a str,
    #[serde(rename = "type")]
    kind: AlarmEventKind,
    at: Timestamp,
    incident: &'a Incident,
}

/// The body for one alarm event.
pub fn alarm_body(
    node: &str,
    event_id: EntityId,
    incident: &Incident,
    kind: AlarmEventKind,
    at: Timestamp,
) -> Vec<u8> {
    let env = Envelope {
        event_id,
        node_id: node,
        kind,
        at,
        incident,
    };
    // Plain structs with string keys; serde_json writes non-finite floats as null, so this
    // cannot fail.
    serde_json::to_vec(&env).expect("alarm envelope serialises")
}

/// An outbox entry for `sink` reporting a change of `incident`: its channel is the incident
/// (so one incident's reports arrive in order) and its priority the incident's. Write it in the
/// transaction that commits the change.
pub fn alarm_entry(
    sink: &str,
    node: &str,
    event_id: EntityId,
    incident: &Incident,
    kind: AlarmEventKind,
    created_at: Timestamp,
) -> OutboxEntry {
    OutboxEntry {
        // Ordered ids: two reports of one incident made in the same millisecond still leave in
        // the order they were made (the channel is ordered by id).
        id: EntityId::new_ordered(created_at),
        node_id: node.to_owned(),
        sink: sink.to_owned(),
        channel: incident.id.to_string(),
        priority: incident.priority,
        created_at,
        payload: alarm_body(node, event_id, incident, kind, created_at),
        attempts: 0,
        next_attempt: created_at,
        last_error: None,
        delivered_at: None,
        expired_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xueliang_core::model::{Condition, IncidentState};

    fn incident() -> Incident {
        let at = Timestamp::from_millis(1_795_000_000_000);
        Incident {
            id: EntityId::new_at(at),
            node_id: "yantan-01".into(),
            kind: "panic".into(),
            source_id: "btn-7".into(),
            priority: 1,
            condition: Condition::Active,
            state: IncidentState::Raised,
            outcome: None,
            title: "一键报警 btn-7 & <gate>".into(),
            lat: Some(29.3),
            lon: Some(f64::NAN),
            opened_at: at,
            updated_at: at,
            resolved_at: None,
            escalation_level: 0,
            signal_count: 1,
            version: 1,
        }
    }

    #[test]
    fn entry_carries_channel_priority_and_a_stable_body() {
        let inc = incident();
        let at = inc.opened_at;
        let ev = EntityId::new_at(at);
        let e = alarm_entry(
            "skynet-mqtt",
            "yantan-01",
            ev,
            &inc,
            AlarmEventKind::New,
            at,
        );
        assert_eq!(e.channel, inc.id.to_string());
        assert_eq!((e.priority, e.next_attempt, e.attempts), (1, at, 0));
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["event_id"], ev.to_string());
        assert_eq!(v["node_id"], "yantan-01");
        assert_eq!(v["type"], "new");
        assert_eq!(v["at"], "2026-11-18T11:06:40.000Z");
        assert_eq!(v["incident"]["id"], inc.id.to_string());
        assert_eq!(v["incident"]["title"], "一键报警 btn-7 & <gate>");
        assert!(
            v["incident"]["lon"].is_null(),
            "NaN becomes null, not an error"
        );
        // Same inputs, same bytes; a second entry for the same event differs only in its id.
        let again = alarm_entry(
            "skynet-mqtt",
            "yantan-01",
            ev,
            &inc,
            AlarmEventKind::New,
            at,
        );
        assert_eq!(again.payload, e.payload);
        assert!(again.id > e.id);
        let end = alarm_body("yantan-01", ev, &inc, AlarmEventKind::End, at);
        assert!(String::from_utf8(end).unwrap().contains(r#""type":"end""#));
    }
}

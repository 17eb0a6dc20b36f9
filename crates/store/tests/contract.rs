//! The store contract: every case runs on SQLite and on a fresh PostgreSQL database.

use std::sync::Arc;

use xueliang_core::config::Role;
use xueliang_core::model::{CameraState, Condition, IncidentState, Outcome, SignalSource};
use xueliang_core::{EntityId, ErrorKind, Timestamp};
use xueliang_store::testing::TestDb;
use xueliang_store::*;

const NODE: &str = "node-a";
const T0: i64 = 1_795_000_000_000; // 2026-11-18

fn t(offset_ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + offset_ms)
}

fn eid(offset_ms: i64) -> EntityId {
    EntityId::new_at(t(offset_ms))
}

macro_rules! contract {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = xueliang_store::testing::TestDb::sqlite();
                    let store = db.open(super::NODE).await.expect("open sqlite");
                    super::$name(store.clone(), &db).await;
                    store.close().await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = xueliang_store::testing::TestDb::postgres().await.expect("create postgres test database");
                    let store = db.open(super::NODE).await.expect("open postgres");
                    super::$name(store.clone(), &db).await;
                    store.close().await;
                }
            )+
        }
    };
}

contract!(
    migrations_are_idempotent,
    second_node_sees_same_schema,
    cameras_sync_and_state,
    segments_and_gaps_by_overlap,
    devices_sync_status_and_links,
    signals_deduplicate_on_device_seq,
    incidents_lifecycle_with_outbox_in_one_transaction,
    incident_updates_are_optimistic,
    incident_list_filters_and_order,
    outbox_order_retry_and_delivery,
    audit_log_is_append_only,
    api_tokens_sync_hashed,
    retention_queries_respect_pins,
    runs_merge_back_to_back_segments,
    device_batch_deduplicates_and_keeps_device_news,
    alarm_commit_rolls_back_entirely_on_version_conflict,
    alarm_commit_chains_updates_of_one_incident,
    motion_events_upsert_and_list_by_overlap,
    incident_clips_only_widen,
    retention_holds_incident_clips,
    events_page_in_id_order_and_prune_by_age,
    outbox_due_keeps_each_channel_in_order,
    outbox_expires_by_age_and_budget_and_prunes,
    outbox_is_drained_per_node,
    outbox_retry_now_makes_waiting_entries_due,
    users_create_update_disable,
    sessions_live_touch_and_die_with_their_user,
);

async fn migrations_are_idempotent(s: Arc<dyn Store>, _db: &TestDb) {
    let latest = MIGRATIONS_SQLITE.iter().map(|m| m.version).max().unwrap();
    assert_eq!(s.schema_version().await.unwrap(), latest);
    assert!(
        s.migrate().await.unwrap().is_empty(),
        "second migrate applies nothing"
    );
    s.ping().await.unwrap();
}

async fn second_node_sees_same_schema(s: Arc<dyn Store>, db: &TestDb) {
    // Two nodes on one database: both migrate (concurrently), one applies, both work.
    let other = xueliang_store::open(&db.options(), "node-b".parse().unwrap())
        .await
        .unwrap();
    let (a, b) = tokio::join!(s.migrate(), other.migrate());
    assert!(a.unwrap().is_empty() && b.unwrap().is_empty());
    s.sync_cameras(&[cam("gate")], t(0)).await.unwrap();
    assert_eq!(other.list_cameras().await.unwrap().len(), 1);
    assert_eq!(other.node_id().as_str(), "node-b");
    other.close().await;
}

fn cam(id: &str) -> CameraUpsert {
    CameraUpsert {
        id: id.into(),
        name: Some(format!("camera {id}")),
    }
}

async fn cameras_sync_and_state(s: Arc<dyn Store>, _db: &TestDb) {
    s.sync_cameras(&[cam("b"), cam("a")], t(0)).await.unwrap();
    let list = s.list_cameras().await.unwrap();
    assert_eq!(
        list.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(list[0].state, CameraState::Connecting);
    assert_eq!(list[0].node_id, NODE);

    let change = |state, err: Option<&str>, at| CameraStateChange {
        camera_id: "a".into(),
        state,
        last_error: err.map(str::to_owned),
        at: t(at),
    };
    s.set_camera_state(&change(
        CameraState::Offline,
        Some("401 Unauthorized"),
        1000,
    ))
    .await
    .unwrap();
    s.set_camera_state(&change(
        CameraState::Offline,
        Some("connection refused"),
        5000,
    ))
    .await
    .unwrap();
    let a = s.get_camera("a").await.unwrap().unwrap();
    assert_eq!(a.state, CameraState::Offline);
    assert_eq!(a.last_error.as_deref(), Some("connection refused"));
    assert_eq!(
        a.state_since,
        t(1000),
        "state_since moves only when the state changes"
    );
    assert_eq!(a.updated_at, t(5000));

    // Renaming through sync keeps the state.
    s.sync_cameras(
        &[CameraUpsert {
            id: "a".into(),
            name: Some("Gate".into()),
        }],
        t(6000),
    )
    .await
    .unwrap();
    let a = s.get_camera("a").await.unwrap().unwrap();
    assert_eq!(
        (a.name.as_deref(), a.state),
        (Some("Gate"), CameraState::Offline)
    );

    assert!(s.get_camera("zz").await.unwrap().is_none());
    let e = s
        .set_camera_state(&CameraStateChange {
            camera_id: "zz".into(),
            ..change(CameraState::Online, None, 1)
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

fn seg(camera: &str, start: i64, end: i64, path: &str) -> Segment {
    Segment {
        id: eid(start),
        node_id: NODE.into(),
        camera_id: camera.into(),
        stream: "main".into(),
        start: t(start),
        end: t(end),
        bytes: 1_000_000,
        frames: 1500,
        path: path.into(),
        sha256: Some("ab".repeat(32)),
        pinned_until: None,
        created_at: t(end),
    }
}

async fn segments_and_gaps_by_overlap(s: Arc<dyn Store>, _db: &TestDb) {
    s.sync_cameras(&[cam("gate"), cam("yard")], t(0))
        .await
        .unwrap();
    let first = seg("gate", 0, 60_000, "gate/0.mp4");
    s.insert_segment(&first).await.unwrap();
    for (i, start) in [60_000, 120_000].iter().enumerate() {
        s.insert_segment(&seg(
            "gate",
            *start,
            start + 60_000,
            &format!("gate/{}.mp4", i + 1),
        ))
        .await
        .unwrap();
    }
    s.insert_segment(&seg("yard", 0, 60_000, "yard/0.mp4"))
        .await
        .unwrap();

    let got = s.list_segments("gate", t(59_999), t(60_001)).await.unwrap();
    assert_eq!(
        got.iter().map(|g| g.path.as_str()).collect::<Vec<_>>(),
        ["gate/0.mp4", "gate/1.mp4"]
    );
    assert_eq!(got[0], first, "round trip keeps every field");
    // Half-open: a span ending where a segment starts does not include it.
    assert_eq!(
        s.list_segments("gate", t(-10_000), t(0))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        s.list_segments("gate", t(0), t(180_000))
            .await
            .unwrap()
            .len(),
        3
    );

    // Same path twice is refused; so is an unknown camera and a backwards segment.
    let dup = s
        .insert_segment(&seg("gate", 500_000, 560_000, "gate/0.mp4"))
        .await
        .unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::AlreadyExists);
    let orphan = s
        .insert_segment(&seg("nope", 0, 1, "nope/0.mp4"))
        .await
        .unwrap_err();
    assert_eq!(orphan.kind(), ErrorKind::FailedPrecondition);
    let backwards = s
        .insert_segment(&seg("gate", 10, 5, "gate/x.mp4"))
        .await
        .unwrap_err();
    assert_eq!(backwards.kind(), ErrorKind::InvalidArgument);

    let gap = |start, end: Option<i64>, reason: &str| Gap {
        id: eid(start),
        node_id: NODE.into(),
        camera_id: "gate".into(),
        start: t(start),
        end: end.map(t),
        reason: reason.into(),
        created_at: t(start),
    };
    s.insert_gap(&gap(180_000, Some(200_000), "camera offline"))
        .await
        .unwrap();
    s.insert_gap(&gap(300_000, None, "service stopped"))
        .await
        .unwrap();
    let gaps = s
        .list_gaps("gate", t(190_000), t(10_000_000))
        .await
        .unwrap();
    assert_eq!(gaps.len(), 2);
    assert_eq!(gaps[1].end, None);
    assert_eq!(
        s.list_gaps("gate", t(200_000), t(250_000))
            .await
            .unwrap()
            .len(),
        0
    );
}

async fn devices_sync_status_and_links(s: Arc<dyn Store>, _db: &TestDb) {
    s.sync_cameras(&[cam("gate"), cam("yard")], t(0))
        .await
        .unwrap();
    let dev = |cams: &[&str]| DeviceUpsert {
        id: "btn-school".into(),
        name: Some("小学门口".into()),
        lat: Some(29.3),
        lon: Some(104.7),
        cameras: cams.iter().map(|c| c.to_string()).collect(),
    };
    s.sync_devices(&[dev(&["gate", "yard"])], t(0))
        .await
        .unwrap();
    s.sync_devices(&[dev(&["yard"])], t(1)).await.unwrap();
    let d = &s.list_devices().await.unwrap()[0];
    assert_eq!(d.name.as_deref(), Some("小学门口"));
    assert_eq!(d.cameras, ["yard"]);
    assert_eq!(d.online, None);

    let status = |at, online, battery| DeviceStatus {
        device_id: "btn-school".into(),
        at: t(at),
        online,
        battery,
        rssi: Some(-70),
    };
    s.record_device_status(&status(1000, Some(true), Some(87)))
        .await
        .unwrap();
    s.record_device_status(&status(2000, None, Some(86)))
        .await
        .unwrap();
    // A late, older heartbeat does not move the device back in time.
    s.record_device_status(&status(1500, Some(false), Some(99)))
        .await
        .unwrap();
    let d = &s.list_devices().await.unwrap()[0];
    assert_eq!(
        (d.online, d.battery, d.rssi),
        (Some(true), Some(86), Some(-70))
    );
    assert_eq!(d.last_seen, Some(t(2000)));
    let e = s
        .record_device_status(&DeviceStatus {
            device_id: "ghost".into(),
            ..status(1, None, None)
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

fn press(seq: i64, received: i64) -> Signal {
    Signal {
        id: eid(received),
        node_id: NODE.into(),
        source: SignalSource::Device,
        source_id: "btn-1".into(),
        seq: Some(seq),
        kind: "panic".into(),
        device_ts: Some(t(received - 50)),
        received_at: t(received),
        payload: format!(r#"{{"seq":{seq},"type":"panic"}}"#),
    }
}

async fn signals_deduplicate_on_device_seq(s: Arc<dyn Store>, _db: &TestDb) {
    let first = press(42, 0);
    assert_eq!(
        s.insert_signal(&first).await.unwrap(),
        SignalInsert::Inserted
    );
    // The device retransmits seq 42 (QoS 1 redelivery): stored once, first id returned.
    let again = press(42, 300);
    assert_eq!(
        s.insert_signal(&again).await.unwrap(),
        SignalInsert::Duplicate(first.id)
    );
    assert!(s.get_signal(again.id).await.unwrap().is_none());
    assert_eq!(s.get_signal(first.id).await.unwrap().unwrap(), first);
    assert_eq!(
        s.incident_of_signal(first.id).await.unwrap(),
        None,
        "not linked yet"
    );
    let inc = new_incident(1, 1, vec![first.id], vec![]);
    s.create_incident(&inc).await.unwrap();
    assert_eq!(
        s.incident_of_signal(first.id).await.unwrap(),
        Some(inc.incident.id)
    );
    // Same seq from another device is a different signal; signals without seq never collide.
    let other = Signal {
        source_id: "btn-2".into(),
        id: eid(400),
        ..press(42, 400)
    };
    assert_eq!(
        s.insert_signal(&other).await.unwrap(),
        SignalInsert::Inserted
    );
    for i in 0..2 {
        let motion = Signal {
            id: eid(500 + i),
            source: SignalSource::Motion,
            source_id: "gate".into(),
            seq: None,
            kind: "motion".into(),
            ..press(0, 500 + i)
        };
        assert_eq!(
            s.insert_signal(&motion).await.unwrap(),
            SignalInsert::Inserted
        );
    }
}

fn new_incident(
    at: i64,
    priority: i64,
    signals: Vec<EntityId>,
    outbox: Vec<OutboxEntry>,
) -> NewIncident {
    let id = eid(at);
    NewIncident {
        incident: Incident {
            id,
            node_id: NODE.into(),
            kind: "panic".into(),
            source_id: "btn-1".into(),
            priority,
            condition: Condition::Active,
            state: IncidentState::Raised,
            outcome: None,
            title: "一键报警 school gate".into(),
            lat: Some(29.3),
            lon: Some(104.7),
            opened_at: t(at),
            updated_at: t(at),
            resolved_at: None,
            escalation_level: 0,
            signal_count: signals.len() as i64,
            version: 1,
        },
        change: IncidentChange {
            id: eid(at),
            node_id: NODE.into(),
            incident_id: id,
            at: t(at),
            actor: "system".into(),
            from_state: None,
            to_state: IncidentState::Raised,
            outcome: None,
            note: None,
        },
        signals,
        outbox,
    }
}

fn ob(sink: &str, channel: &str, priority: i64, at: i64, body: &str) -> OutboxEntry {
    OutboxEntry {
        id: eid(at),
        node_id: NODE.into(),
        sink: sink.into(),
        channel: channel.into(),
        priority,
        created_at: t(at),
        payload: body.as_bytes().to_vec(),
        attempts: 0,
        next_attempt: t(at),
        last_error: None,
        delivered_at: None,
        expired_at: None,
    }
}

fn step(
    inc: &Incident,
    at: i64,
    to: IncidentState,
    outcome: Option<Outcome>,
    outbox: Vec<OutboxEntry>,
) -> IncidentUpdate {
    IncidentUpdate {
        id: inc.id,
        expected_version: inc.version,
        at: t(at),
        state: to,
        condition: inc.condition,
        outcome,
        priority: inc.priority,
        escalation_level: inc.escalation_level,
        add_signals: vec![],
        change: Some(IncidentChange {
            id: eid(at),
            node_id: NODE.into(),
            incident_id: inc.id,
            at: t(at),
            actor: "token:duty-desk".into(),
            from_state: Some(inc.state),
            to_state: to,
            outcome,
            note: Some("on my way".into()),
        }),
        outbox,
    }
}

async fn incidents_lifecycle_with_outbox_in_one_transaction(s: Arc<dyn Store>, _db: &TestDb) {
    let sig = press(1, 0);
    s.insert_signal(&sig).await.unwrap();
    let new = new_incident(
        10,
        1,
        vec![sig.id],
        vec![ob("skynet-mqtt", "inc", 1, 10, "raised")],
    );
    s.create_incident(&new).await.unwrap();
    let inc = s.get_incident(new.incident.id).await.unwrap().unwrap();
    assert_eq!(inc, new.incident);

    // A second press joins it.
    let sig2 = press(2, 20_000);
    s.insert_signal(&sig2).await.unwrap();
    let mut join = step(&inc, 20_000, IncidentState::Raised, None, vec![]);
    join.change = None;
    join.add_signals = vec![sig2.id];
    let inc = s.update_incident(&join).await.unwrap();
    assert_eq!((inc.signal_count, inc.version), (2, 2));
    assert_eq!(
        s.incident_signals(inc.id).await.unwrap(),
        vec![sig.clone(), sig2]
    );

    let inc = s
        .update_incident(&step(
            &inc,
            30_000,
            IncidentState::Acknowledged,
            None,
            vec![],
        ))
        .await
        .unwrap();
    let inc = s
        .update_incident(&step(&inc, 40_000, IncidentState::Dispatched, None, vec![]))
        .await
        .unwrap();
    let done = step(
        &inc,
        50_000,
        IncidentState::Resolved,
        Some(Outcome::Genuine),
        vec![ob("skynet-mqtt", "inc", 1, 50_000, "resolved")],
    );
    let inc = s.update_incident(&done).await.unwrap();
    assert_eq!(inc.state, IncidentState::Resolved);
    assert_eq!(inc.outcome, Some(Outcome::Genuine));
    assert_eq!(inc.resolved_at, Some(t(50_000)));
    assert_eq!(inc.version, 5);

    let history = s.incident_changes(inc.id).await.unwrap();
    let states: Vec<_> = history.iter().map(|c| c.to_state).collect();
    assert_eq!(
        states,
        [
            IncidentState::Raised,
            IncidentState::Acknowledged,
            IncidentState::Dispatched,
            IncidentState::Resolved
        ]
    );
    assert_eq!(history[3].from_state, Some(IncidentState::Dispatched));
    let pending = s
        .pending_outbox("skynet-mqtt", t(60_000), 10)
        .await
        .unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|e| e.payload.as_slice())
            .collect::<Vec<_>>(),
        [b"raised".as_slice(), b"resolved"]
    );

    // A failing part rolls the whole change back: the outbox id collides, so no incident row,
    // no change row and no outbox row may remain.
    let clash = new_incident(70_000, 2, vec![], vec![pending[0].clone()]);
    let e = s.create_incident(&clash).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(s.get_incident(clash.incident.id).await.unwrap().is_none());
    assert!(
        s.incident_changes(clash.incident.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.pending_outbox("skynet-mqtt", t(100_000), 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn incident_updates_are_optimistic(s: Arc<dyn Store>, _db: &TestDb) {
    let new = new_incident(0, 1, vec![], vec![]);
    s.create_incident(&new).await.unwrap();
    let inc = new.incident.clone();
    // Two duty desks acknowledge the same version; one wins, the other is told to reload.
    let a = s
        .update_incident(&step(&inc, 1000, IncidentState::Acknowledged, None, vec![]))
        .await;
    let b = s
        .update_incident(&step(&inc, 1001, IncidentState::Dispatched, None, vec![]))
        .await;
    assert!(a.is_ok());
    let e = b.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(
        e.message().contains("version 2, expected 1"),
        "{}",
        e.message()
    );
    assert_eq!(
        s.incident_changes(inc.id).await.unwrap().len(),
        2,
        "the loser wrote nothing"
    );
    let ghost = IncidentUpdate {
        id: eid(99),
        ..step(&inc, 1, IncidentState::Acknowledged, None, vec![])
    };
    assert_eq!(
        s.update_incident(&ghost).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

async fn incident_list_filters_and_order(s: Arc<dyn Store>, _db: &TestDb) {
    let low_old = new_incident(0, 3, vec![], vec![]);
    let high_new = new_incident(5000, 1, vec![], vec![]);
    let mut high_old = new_incident(1000, 1, vec![], vec![]);
    high_old.incident.source_id = "btn-2".into();
    for n in [&low_old, &high_new, &high_old] {
        s.create_incident(n).await.unwrap();
    }
    s.commit_alarms(&AlarmCommit {
        clips: vec![IncidentClip {
            incident_id: high_new.incident.id,
            camera_id: "gate".into(),
            from: t(0),
            to: t(9000),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let by = |f: IncidentFilter| {
        let s = s.clone();
        async move {
            s.list_incidents(&f)
                .await
                .unwrap()
                .iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by(IncidentFilter {
            priority: Some(3),
            ..Default::default()
        })
        .await,
        [low_old.incident.id]
    );
    assert_eq!(
        by(IncidentFilter {
            device: Some("btn-2".into()),
            ..Default::default()
        })
        .await,
        [high_old.incident.id]
    );
    assert_eq!(
        by(IncidentFilter {
            camera: Some("gate".into()),
            ..Default::default()
        })
        .await,
        [high_new.incident.id]
    );
    assert!(
        by(IncidentFilter {
            camera: Some("yard".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    s.update_incident(&step(
        &low_old.incident,
        6000,
        IncidentState::Resolved,
        Some(Outcome::False),
        vec![],
    ))
    .await
    .unwrap();
    let all = s.list_incidents(&IncidentFilter::default()).await.unwrap();
    let ids: Vec<_> = all.iter().map(|i| i.id).collect();
    assert_eq!(
        ids,
        [
            high_old.incident.id,
            high_new.incident.id,
            low_old.incident.id
        ]
    );
    let open = s
        .list_incidents(&IncidentFilter {
            open_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open.len(), 2);
    let resolved = s
        .list_incidents(&IncidentFilter {
            state: Some(IncidentState::Resolved),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        resolved.iter().map(|i| i.id).collect::<Vec<_>>(),
        [low_old.incident.id]
    );
    let since = s
        .list_incidents(&IncidentFilter {
            since: Some(t(1000)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 2);
    let one = s
        .list_incidents(&IncidentFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
}

async fn outbox_order_retry_and_delivery(s: Arc<dyn Store>, _db: &TestDb) {
    let backlog: Vec<_> = (0..3)
        .map(|i| ob("gb28181", "cam", 5, i * 10, &format!("motion {i}")))
        .collect();
    s.enqueue_outbox(&backlog).await.unwrap();
    let urgent = ob("gb28181", "btn", 1, 100, "panic");
    let other_sink = ob("skynet-mqtt", "btn", 1, 100, "panic");
    s.enqueue_outbox(&[
        urgent.clone(),
        OutboxEntry {
            id: eid(101),
            ..other_sink
        },
    ])
    .await
    .unwrap();

    // Priority 1 overtakes the backlog; within a priority, oldest first.
    let due = s.pending_outbox("gb28181", t(1000), 10).await.unwrap();
    let bodies: Vec<_> = due
        .iter()
        .map(|e| String::from_utf8(e.payload.clone()).unwrap())
        .collect();
    assert_eq!(bodies, ["panic", "motion 0", "motion 1", "motion 2"]);
    assert_eq!(
        due[0], urgent,
        "stored bytes and fields come back unchanged"
    );

    // A failed attempt is retried later, not now.
    s.mark_outbox_failed(urgent.id, t(5000), "408 timeout")
        .await
        .unwrap();
    let due = s.pending_outbox("gb28181", t(1000), 10).await.unwrap();
    assert_eq!(due.len(), 3);
    let later = s.pending_outbox("gb28181", t(5000), 1).await.unwrap();
    assert_eq!((later[0].id, later[0].attempts), (urgent.id, 1));
    assert_eq!(later[0].last_error.as_deref(), Some("408 timeout"));

    s.mark_outbox_delivered(urgent.id, t(5001)).await.unwrap();
    let e = s
        .mark_outbox_delivered(urgent.id, t(5002))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        s.pending_outbox("gb28181", t(10_000), 10)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        s.pending_outbox("skynet-mqtt", t(10_000), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

fn bodies(entries: &[OutboxEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.payload.clone()).unwrap())
        .collect()
}

async fn outbox_due_keeps_each_channel_in_order(s: Arc<dyn Store>, _db: &TestDb) {
    let a0 = ob("up", "a", 5, 0, "a0");
    let a1 = ob("up", "a", 5, 10, "a1");
    // Escalated within its incident: still behind a0 and a1, its channel's order wins.
    let a2 = ob("up", "a", 1, 20, "a2");
    let b0 = ob("up", "b", 5, 5, "b0");
    let b1 = ob("up", "b", 5, 15, "b1");
    let u0 = ob("up", "u", 1, 100, "u0");
    let elsewhere = ob("other", "a", 1, 1, "x");
    s.enqueue_outbox(&[
        a0.clone(),
        a1.clone(),
        a2,
        b0.clone(),
        b1,
        u0.clone(),
        elsewhere,
    ])
    .await
    .unwrap();

    let due = s.due_outbox("up", t(1000), 10, 100).await.unwrap();
    assert_eq!(bodies(&due), ["u0", "a0", "a1", "a2", "b0", "b1"]);
    assert_eq!(due[0], u0, "entries come back unchanged");
    let due = s.due_outbox("up", t(1000), 2, 100).await.unwrap();
    assert_eq!(bodies(&due), ["u0", "a0", "a1", "b0", "b1"]);
    let due = s.due_outbox("up", t(1000), 10, 3).await.unwrap();
    assert_eq!(bodies(&due), ["u0", "a0", "a1"]);
    // Heads not yet due: nothing.
    assert!(s.due_outbox("up", t(-1), 10, 100).await.unwrap().is_empty());

    // A failed head holds back its own channel only, until its retry time.
    let n = s
        .record_outbox_results(&[
            OutboxResult::Failed {
                id: a0.id,
                next_attempt: t(5000),
                error: "500 from the city".into(),
            },
            OutboxResult::Delivered {
                id: u0.id,
                at: t(1000),
            },
            OutboxResult::Delivered {
                id: b0.id,
                at: t(1001),
            },
        ])
        .await
        .unwrap();
    assert_eq!(n, 3);
    let due = s.due_outbox("up", t(1000), 10, 100).await.unwrap();
    assert_eq!(bodies(&due), ["b1"]);
    let due = s.due_outbox("up", t(5000), 10, 100).await.unwrap();
    assert_eq!(bodies(&due), ["a0", "a1", "a2", "b1"]);
    assert_eq!(
        (due[0].attempts, due[0].last_error.as_deref()),
        (1, Some("500 from the city"))
    );

    // Results for what is already delivered are skipped, not errors: a restarted drainer may
    // resend what its predecessor delivered but did not record.
    let n = s
        .record_outbox_results(&[
            OutboxResult::Delivered {
                id: u0.id,
                at: t(2000),
            },
            OutboxResult::Failed {
                id: b0.id,
                next_attempt: t(9000),
                error: "late".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(n, 0);

    // A refused entry is expired and unblocks the rest of its channel.
    s.record_outbox_results(&[OutboxResult::Rejected {
        id: a0.id,
        at: t(1100),
        error: "payload too large".into(),
    }])
    .await
    .unwrap();
    let due = s.due_outbox("up", t(1100), 10, 100).await.unwrap();
    assert_eq!(bodies(&due), ["a1", "a2", "b1"]);
    assert_eq!(due[0].id, a1.id);
    let stats = s.outbox_stats("up").await.unwrap();
    assert_eq!((stats.pending, stats.oldest), (3, Some(t(10))));
    assert_eq!(stats.next_due, Some(t(10)), "a1's own schedule");
}

async fn outbox_expires_by_age_and_budget_and_prunes(s: Arc<dyn Store>, _db: &TestDb) {
    let body = "x".repeat(100);
    let e = |ch: &str, prio, at| ob("up", ch, prio, at, &body);
    let (old, p5a, p3, p1, p5b) = (
        e("c0", 5, 0),
        e("c1", 5, 10),
        e("c2", 3, 20),
        e("c3", 1, 30),
        e("c4", 5, 40),
    );
    let other = ob("other", "c0", 5, 0, &body);
    s.enqueue_outbox(&[
        old.clone(),
        p5a.clone(),
        p3.clone(),
        p1.clone(),
        p5b.clone(),
        other,
    ])
    .await
    .unwrap();
    let stats = s.outbox_stats("up").await.unwrap();
    assert_eq!(
        stats,
        OutboxStats {
            pending: 5,
            bytes: 500,
            oldest: Some(t(0)),
            next_due: Some(t(0)),
        }
    );
    assert_eq!(
        s.outbox_stats("nobody").await.unwrap(),
        OutboxStats::default()
    );

    // By age: everything created before the horizon, whatever its priority.
    let gone = s
        .expire_outbox("up", t(5), t(1000), "expired: older than max_age")
        .await
        .unwrap();
    assert_eq!(
        gone,
        [ExpiredOutbox {
            id: old.id,
            channel: "c0".into(),
            priority: 5,
            created_at: t(0),
            attempts: 0,
            bytes: 100,
        }]
    );
    assert!(
        s.expire_outbox("up", t(5), t(1000), "again")
            .await
            .unwrap()
            .is_empty()
    );

    // By bytes: lowest priority first, oldest first within it, until under the budget.
    let gone = s
        .expire_outbox_over_budget("up", 150, 1, t(1000), "expired: over max_bytes")
        .await
        .unwrap();
    assert_eq!(
        gone.iter().map(|g| g.id).collect::<Vec<_>>(),
        [p5a.id, p5b.id, p3.id]
    );
    // Priority 1 is never expired by the budget, even when over it.
    assert!(
        s.expire_outbox_over_budget("up", 0, 1, t(1000), "over")
            .await
            .unwrap()
            .is_empty()
    );
    let due = s.due_outbox("up", t(1000), 10, 100).await.unwrap();
    assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), [p1.id]);
    assert!(s.pending_outbox("up", t(1000), 10).await.unwrap().len() == 1);
    assert_eq!(s.outbox_stats("up").await.unwrap().bytes, 100);
    assert_eq!(s.outbox_stats("other").await.unwrap().pending, 1);

    // Delivered and expired rows go once older than the horizon; pending ones stay.
    s.record_outbox_results(&[OutboxResult::Delivered {
        id: p1.id,
        at: t(1500),
    }])
    .await
    .unwrap();
    assert_eq!(s.prune_outbox(t(1200)).await.unwrap(), 4);
    assert_eq!(s.prune_outbox(t(2000)).await.unwrap(), 1);
    assert_eq!(s.outbox_stats("other").await.unwrap().pending, 1);
}

async fn audit_log_is_append_only(s: Arc<dyn Store>, db: &TestDb) {
    let entry = |at, action: &str| AuditEntry {
        id: eid(at),
        node_id: NODE.into(),
        at: t(at),
        actor: "ops".into(),
        actor_kind: ActorKind::Token,
        action: action.into(),
        target: Some("camera:gate".into()),
        detail: r#"{"from":"2026-11-18T00:00:00Z"}"#.into(),
        remote_addr: Some("127.0.0.1".into()),
    };
    let written = vec![entry(0, "export"), entry(10, "alarm.ack")];
    for e in &written {
        s.append_audit(e).await.unwrap();
    }
    assert_eq!(s.list_audit(t(0), 10).await.unwrap(), written);
    assert_eq!(s.list_audit(t(5), 10).await.unwrap().len(), 1);

    // Not even a direct SQL connection may rewrite history.
    let opts = db.options();
    let raw = xueliang_store::testing::raw_execute(&opts, "DELETE FROM audit_log").await;
    let msg = raw.unwrap_err();
    assert!(msg.contains("append-only"), "{msg}");
    // Row triggers fire only on existing rows: store a signal, then try to rewrite it.
    s.insert_signal(&press(7, 0)).await.unwrap();
    let raw =
        xueliang_store::testing::raw_execute(&opts, "UPDATE alarm_signals SET kind = 'test'").await;
    assert!(raw.unwrap_err().contains("append-only"));
    assert_eq!(s.list_audit(t(0), 10).await.unwrap().len(), 2);
}

async fn api_tokens_sync_hashed(s: Arc<dyn Store>, _db: &TestDb) {
    let tok = |name: &str, secret: &str, role| ApiToken {
        name: name.into(),
        token_sha256: hash_token(secret),
        role,
        cameras: vec!["*".into()],
        devices: vec!["btn-1".into()],
        last_used: None,
    };
    s.sync_api_tokens(
        &[
            tok("ops", "s3cret-ops-0123456789", Role::Operator),
            tok("wall", "s3cret-wall-012345678", Role::Viewer),
        ],
        t(0),
    )
    .await
    .unwrap();
    s.sync_api_tokens(&[tok("ops", "rotated-ops-0123456789", Role::Admin)], t(1))
        .await
        .unwrap();
    let got = s.list_api_tokens().await.unwrap();
    assert_eq!(got, vec![tok("ops", "rotated-ops-0123456789", Role::Admin)]);
    assert_eq!(got[0].token_sha256.len(), 64);
    assert!(!got[0].token_sha256.contains("rotated"));
    s.touch_api_token("ops", t(99)).await.unwrap();
    assert_eq!(s.list_api_tokens().await.unwrap()[0].last_used, Some(t(99)));
}

async fn retention_queries_respect_pins(s: Arc<dyn Store>, _db: &TestDb) {
    s.sync_cameras(&[cam("gate"), cam("yard")], t(0))
        .await
        .unwrap();
    let mut all = Vec::new();
    for (cam_id, start) in [
        ("gate", 0),
        ("yard", 30_000),
        ("gate", 60_000),
        ("gate", 120_000),
    ] {
        let sg = seg(
            cam_id,
            start,
            start + 60_000,
            &format!("{cam_id}/{start}.mp4"),
        );
        s.insert_segment(&sg).await.unwrap();
        all.push(sg);
    }
    let usage = s.storage_usage().await.unwrap();
    assert_eq!(usage.len(), 2);
    assert_eq!(
        (
            usage[0].camera_id.as_str(),
            usage[0].bytes,
            usage[0].segments
        ),
        ("gate", 3_000_000, 3)
    );
    assert_eq!(usage[0].oldest, Some(t(0)));

    // Alarm footage around 70 s on the gate camera is pinned for a day.
    let pinned = s
        .pin_segments("gate", t(70_000), t(80_000), t(86_400_000))
        .await
        .unwrap();
    assert_eq!(pinned, 1);
    // A shorter pin never shortens a longer one.
    assert_eq!(
        s.pin_segments("gate", t(70_000), t(80_000), t(1000))
            .await
            .unwrap(),
        0
    );

    let oldest = s
        .oldest_unpinned_segments(None, None, t(200_000), 0, 10)
        .await
        .unwrap();
    let starts: Vec<_> = oldest
        .iter()
        .map(|x| (x.camera_id.as_str(), x.start))
        .collect();
    assert_eq!(
        starts,
        [("gate", t(0)), ("yard", t(30_000)), ("gate", t(120_000))]
    );
    let gate_old = s
        .oldest_unpinned_segments(Some("gate"), Some(t(100_000)), t(200_000), 0, 10)
        .await
        .unwrap();
    assert_eq!(gate_old.len(), 1);
    // Once the pin expires, the segment is fair game again.
    let later = s
        .oldest_unpinned_segments(Some("gate"), None, t(86_400_001), 0, 10)
        .await
        .unwrap();
    assert_eq!(later.len(), 3);

    s.delete_segment(all[0].id).await.unwrap();
    assert_eq!(
        s.list_segments("gate", t(0), t(1_000_000))
            .await
            .unwrap()
            .len(),
        2
    );

    let g = Gap {
        id: eid(200_000),
        node_id: NODE.into(),
        camera_id: "gate".into(),
        start: t(200_000),
        end: None,
        reason: "camera offline".into(),
        created_at: t(200_000),
    };
    s.insert_gap(&g).await.unwrap();
    s.close_gap(g.id, t(260_000)).await.unwrap();
    assert_eq!(
        s.list_gaps("gate", t(0), t(1_000_000)).await.unwrap()[0].end,
        Some(t(260_000))
    );
    assert_eq!(
        s.close_gap(g.id, t(270_000)).await.unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
}

async fn runs_merge_back_to_back_segments(s: Arc<dyn Store>, _db: &TestDb) {
    s.sync_cameras(&[cam("gate")], t(0)).await.unwrap();
    let runs_of = |s: Arc<dyn Store>| async move {
        s.recording_runs("gate", t(0), t(3_600_000))
            .await
            .unwrap()
            .iter()
            .map(|r| (r.start.as_millis() - T0, r.end.as_millis() - T0, r.segments))
            .collect::<Vec<_>>()
    };
    // Two runs of one-minute segments with a five-minute outage between them.
    let mut segs = Vec::new();
    for i in 0..10 {
        segs.push(seg(
            "gate",
            i * 60_000,
            (i + 1) * 60_000,
            &format!("gate/a{i}.mp4"),
        ));
    }
    for i in 15..20 {
        segs.push(seg(
            "gate",
            i * 60_000 + 40,
            (i + 1) * 60_000,
            &format!("gate/b{i}.mp4"),
        ));
    }
    s.insert_segments(&segs).await.unwrap();
    assert_eq!(
        runs_of(s.clone()).await,
        [(0, 600_000, 10), (900_040, 1_200_000, 5)]
    );
    let runs = s.recording_runs("gate", t(0), t(3_600_000)).await.unwrap();
    assert_eq!(runs[0].bytes, 10_000_000);
    assert_eq!(runs[1].frames, 5 * 1500);
    // A window inside the second run returns the whole run.
    let inner = s
        .recording_runs("gate", t(1_000_000), t(1_100_000))
        .await
        .unwrap();
    assert_eq!(inner.len(), 1);
    assert_eq!(inner[0].segments, 5);

    // Filling the outage (a crash-recovered file indexed late, say) joins the two runs.
    let mut fill = Vec::new();
    for i in 10..15 {
        fill.push(seg(
            "gate",
            i * 60_000,
            (i + 1) * 60_000 + if i == 14 { 40 } else { 0 },
            &format!("gate/f{i}.mp4"),
        ));
    }
    s.insert_segments(&fill).await.unwrap();
    assert_eq!(runs_of(s.clone()).await, [(0, 1_200_000, 20)]);
    let all = s.recording_runs("gate", t(0), t(3_600_000)).await.unwrap();
    assert_eq!((all[0].bytes, all[0].frames), (20_000_000, 20 * 1500));

    // Retention from the head shrinks the run; a deletion in the middle splits it.
    s.delete_segment(segs[0].id).await.unwrap();
    assert_eq!(runs_of(s.clone()).await, [(60_000, 1_200_000, 19)]);
    s.delete_segment(fill[2].id).await.unwrap();
    assert_eq!(
        runs_of(s.clone()).await,
        [(60_000, 720_000, 11), (780_000, 1_200_000, 7)]
    );
    // Deleting every segment of a run removes it.
    for sg in segs.iter().skip(1).take(9).chain(fill.iter().take(2)) {
        s.delete_segment(sg.id).await.unwrap();
    }
    assert_eq!(runs_of(s.clone()).await, [(780_000, 1_200_000, 7)]);
    // The segments left still belong to runs that a later delete can find.
    let left = s.list_segments("gate", t(0), t(3_600_000)).await.unwrap();
    assert_eq!(left.len(), 7);
    s.delete_segment(left[6].id).await.unwrap();
    assert_eq!(runs_of(s.clone()).await, [(780_000, 1_140_000, 6)]);

    // A batch with one bad segment stores nothing.
    let bad = vec![
        seg("gate", 5_000_000, 5_060_000, "gate/c0.mp4"),
        seg("gate", 10, 5, "gate/c1.mp4"),
    ];
    assert!(s.insert_segments(&bad).await.is_err());
    assert!(
        s.list_segments("gate", t(4_000_000), t(6_000_000))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(runs_of(s.clone()).await.len(), 1);
}

fn device(id: &str) -> DeviceUpsert {
    DeviceUpsert {
        id: id.into(),
        name: None,
        lat: None,
        lon: None,
        cameras: vec![],
    }
}

fn report(device: &str, at: i64, online: Option<bool>, battery: Option<i64>) -> DeviceStatus {
    DeviceStatus {
        device_id: device.into(),
        at: t(at),
        online,
        battery,
        rssi: None,
    }
}

fn device_state(list: &[DeviceRecord], id: &str) -> (Option<bool>, Option<i64>, Option<Timestamp>) {
    let d = list.iter().find(|d| d.id == id).expect("device listed");
    (d.online, d.battery, d.last_seen)
}

async fn device_batch_deduplicates_and_keeps_device_news(s: Arc<dyn Store>, _db: &TestDb) {
    s.sync_devices(&[device("btn-1"), device("btn-2")], t(0))
        .await
        .unwrap();
    let stored = press(1, 0);
    s.insert_signal(&stored).await.unwrap();

    let redelivered = press(1, 100);
    let two = press(2, 200);
    let two_again = press(2, 300);
    let three = press(3, 400);
    let motion = |at| Signal {
        source: SignalSource::Motion,
        source_id: "gate".into(),
        seq: None,
        kind: "motion".into(),
        ..press(0, at)
    };
    let (m1, m2) = (motion(500), motion(501));
    let statuses = [
        report("btn-1", 2000, Some(true), Some(80)),
        report("ghost", 2000, Some(true), Some(1)),
        // Older than the report before it in the same batch: ignored.
        report("btn-1", 1500, Some(false), Some(10)),
        report("btn-2", 1000, Some(true), None),
    ];
    let got = s
        .ingest_device_batch(
            &statuses,
            &[
                redelivered.clone(),
                two.clone(),
                two_again.clone(),
                three.clone(),
                m1.clone(),
                m2.clone(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        [
            SignalInsert::Duplicate(stored.id),
            SignalInsert::Inserted,
            SignalInsert::Duplicate(two.id),
            SignalInsert::Inserted,
            SignalInsert::Inserted,
            SignalInsert::Inserted,
        ]
    );
    assert!(s.get_signal(redelivered.id).await.unwrap().is_none());
    assert!(s.get_signal(two_again.id).await.unwrap().is_none());
    for sig in [&stored, &two, &three, &m1, &m2] {
        assert_eq!(s.get_signal(sig.id).await.unwrap().as_ref(), Some(sig));
    }
    let devices = s.list_devices().await.unwrap();
    assert_eq!(devices.len(), 2, "an unknown device is not created");
    assert_eq!(
        device_state(&devices, "btn-1"),
        (Some(true), Some(80), Some(t(2000)))
    );
    assert_eq!(
        device_state(&devices, "btn-2"),
        (Some(true), None, Some(t(1000)))
    );

    // A later batch: a late report is ignored, a newer one without `online` keeps it.
    let got = s
        .ingest_device_batch(
            &[
                report("btn-1", 1800, Some(false), Some(5)),
                report("btn-2", 3000, None, Some(60)),
            ],
            &[press(3, 3000)],
        )
        .await
        .unwrap();
    assert_eq!(got, [SignalInsert::Duplicate(three.id)]);
    let devices = s.list_devices().await.unwrap();
    assert_eq!(
        device_state(&devices, "btn-1"),
        (Some(true), Some(80), Some(t(2000)))
    );
    assert_eq!(
        device_state(&devices, "btn-2"),
        (Some(true), Some(60), Some(t(3000)))
    );

    // One transaction: a failing signal (its id is taken) leaves neither the statuses nor the
    // signals before it.
    let fresh = press(10, 4000);
    let clash = Signal {
        seq: Some(11),
        ..fresh.clone()
    };
    assert!(
        s.ingest_device_batch(
            &[report("btn-2", 5000, Some(false), Some(1))],
            &[fresh.clone(), clash],
        )
        .await
        .is_err()
    );
    assert!(s.get_signal(fresh.id).await.unwrap().is_none());
    let devices = s.list_devices().await.unwrap();
    assert_eq!(
        device_state(&devices, "btn-2"),
        (Some(true), Some(60), Some(t(3000)))
    );
    assert_eq!(
        s.ingest_device_batch(&[], std::slice::from_ref(&fresh))
            .await
            .unwrap(),
        [SignalInsert::Inserted]
    );
}

fn nil_id() -> EntityId {
    "00000000-0000-0000-0000-000000000000".parse().unwrap()
}

fn ev(at: i64, topic: &str, subject: &str, body: &str) -> EventRecord {
    EventRecord {
        id: EntityId::new_ordered(t(at)),
        node_id: NODE.into(),
        at: t(at),
        topic: topic.into(),
        subject: subject.into(),
        payload: format!(r#"{{"what":"{body}"}}"#),
    }
}

fn clip(inc: &Incident, camera: &str, from: i64, to: i64) -> IncidentClip {
    IncidentClip {
        incident_id: inc.id,
        camera_id: camera.into(),
        from: t(from),
        to: t(to),
    }
}

/// The incident as a successful `update` leaves it (for chaining the next update).
fn applied(inc: &Incident, update: &IncidentUpdate) -> Incident {
    Incident {
        version: inc.version + 1,
        state: update.state,
        outcome: update.outcome,
        ..inc.clone()
    }
}

async fn all_events(s: &Arc<dyn Store>) -> Vec<EventRecord> {
    s.events_after(nil_id(), 1000).await.unwrap()
}

async fn alarm_commit_rolls_back_entirely_on_version_conflict(s: Arc<dyn Store>, _db: &TestDb) {
    s.sync_cameras(&[cam("gate")], t(0)).await.unwrap();
    let x = new_incident(0, 1, vec![], vec![]);
    let z = new_incident(1, 2, vec![], vec![]);
    s.commit_alarms(&AlarmCommit {
        creates: vec![x.clone(), z.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    // Another writer moves z on: our copy of it is now stale.
    let z_ack = step(&z.incident, 500, IncidentState::Acknowledged, None, vec![]);
    s.update_incident(&z_ack).await.unwrap();

    let sig = press(5, 1000);
    s.insert_signal(&sig).await.unwrap();
    let y = new_incident(
        1000,
        1,
        vec![sig.id],
        vec![ob("skynet-mqtt", "inc", 1, 1000, "raised")],
    );
    let x_ack = step(&x.incident, 1001, IncidentState::Acknowledged, None, vec![]);
    let z_stale = step(&z.incident, 1002, IncidentState::Dispatched, None, vec![]);
    let doomed = AlarmCommit {
        creates: vec![y.clone()],
        updates: vec![x_ack.clone(), z_stale],
        clips: vec![
            clip(&y.incident, "gate", 0, 60_000),
            clip(&x.incident, "gate", 0, 60_000),
        ],
        motion: vec![motion_rec("gate", 500, None, 0.5)],
        events: vec![
            ev(1000, "alarm", "y", "raised"),
            ev(1001, "alarm", "x", "ack"),
        ],
    };
    let e = s.commit_alarms(&doomed).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", e.message());

    assert!(s.get_incident(y.incident.id).await.unwrap().is_none());
    assert!(s.incident_changes(y.incident.id).await.unwrap().is_empty());
    assert!(s.incident_clips(y.incident.id).await.unwrap().is_empty());
    assert!(
        s.list_motion("gate", t(0), t(100_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.incident_of_signal(sig.id).await.unwrap(), None);
    assert!(
        s.pending_outbox("skynet-mqtt", t(10_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The update that did apply before the conflict is undone too.
    let x_now = s.get_incident(x.incident.id).await.unwrap().unwrap();
    assert_eq!((x_now.version, x_now.state), (1, IncidentState::Raised));
    assert_eq!(s.incident_changes(x.incident.id).await.unwrap().len(), 1);
    assert!(s.incident_clips(x.incident.id).await.unwrap().is_empty());
    let z_now = s.get_incident(z.incident.id).await.unwrap().unwrap();
    assert_eq!(
        (z_now.version, z_now.state),
        (2, IncidentState::Acknowledged)
    );
    assert!(all_events(&s).await.is_empty());
    assert_eq!(s.latest_event_id().await.unwrap(), None);

    // A stale update of an incident created in the same commit is a conflict as well.
    let w = new_incident(2000, 1, vec![], vec![]);
    let skipped = IncidentUpdate {
        expected_version: 2,
        ..step(&w.incident, 2001, IncidentState::Acknowledged, None, vec![])
    };
    let e = s
        .commit_alarms(&AlarmCommit {
            creates: vec![w.clone()],
            updates: vec![skipped],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", e.message());
    assert!(s.get_incident(w.incident.id).await.unwrap().is_none());

    // The same commit without the stale update goes through whole.
    let retry = AlarmCommit {
        updates: vec![x_ack],
        ..doomed
    };
    s.commit_alarms(&retry).await.unwrap();
    assert_eq!(
        s.get_incident(y.incident.id).await.unwrap().unwrap(),
        y.incident
    );
    assert_eq!(
        s.incident_of_signal(sig.id).await.unwrap(),
        Some(y.incident.id)
    );
    assert_eq!(
        s.get_incident(x.incident.id)
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        s.incident_clips(y.incident.id).await.unwrap(),
        retry.clips[..1]
    );
    assert_eq!(all_events(&s).await, retry.events);
    assert_eq!(
        s.pending_outbox("skynet-mqtt", t(10_000), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn alarm_commit_chains_updates_of_one_incident(s: Arc<dyn Store>, _db: &TestDb) {
    // Created and moved on in one commit: the update expects the version the create made.
    let a = new_incident(0, 1, vec![], vec![]);
    let a_ack = step(&a.incident, 10, IncidentState::Acknowledged, None, vec![]);
    s.commit_alarms(&AlarmCommit {
        creates: vec![a.clone()],
        updates: vec![a_ack.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let got = s.get_incident(a.incident.id).await.unwrap().unwrap();
    assert_eq!((got.version, got.state), (2, IncidentState::Acknowledged));

    // Three steps of one incident in one commit: versions v, v+1, v+2.
    let inc = applied(&a.incident, &a_ack);
    let sig = press(9, 1000);
    s.insert_signal(&sig).await.unwrap();
    let mut join = step(&inc, 1000, IncidentState::Acknowledged, None, vec![]);
    join.change = None;
    join.add_signals = vec![sig.id];
    let inc = applied(&inc, &join);
    let dispatch = step(
        &inc,
        2000,
        IncidentState::Dispatched,
        None,
        vec![ob("skynet-mqtt", "inc", 1, 2000, "dispatched")],
    );
    let inc = applied(&inc, &dispatch);
    let resolve = step(
        &inc,
        3000,
        IncidentState::Resolved,
        Some(Outcome::Genuine),
        vec![],
    );
    assert_eq!(
        (
            join.expected_version,
            dispatch.expected_version,
            resolve.expected_version
        ),
        (2, 3, 4)
    );
    s.commit_alarms(&AlarmCommit {
        updates: vec![join, dispatch, resolve],
        events: vec![ev(3000, "alarm", "a", "resolved")],
        ..Default::default()
    })
    .await
    .unwrap();
    let got = s.get_incident(a.incident.id).await.unwrap().unwrap();
    assert_eq!(got.version, 5);
    assert_eq!(got.state, IncidentState::Resolved);
    assert_eq!(got.outcome, Some(Outcome::Genuine));
    assert_eq!(got.resolved_at, Some(t(3000)));
    assert_eq!(got.updated_at, t(3000));
    assert_eq!(got.signal_count, 1);
    assert_eq!(
        s.incident_changes(a.incident.id)
            .await
            .unwrap()
            .iter()
            .map(|c| c.to_state)
            .collect::<Vec<_>>(),
        [
            IncidentState::Raised,
            IncidentState::Acknowledged,
            IncidentState::Dispatched,
            IncidentState::Resolved
        ]
    );
    assert_eq!(
        s.incident_of_signal(sig.id).await.unwrap(),
        Some(a.incident.id)
    );
    assert_eq!(
        s.pending_outbox("skynet-mqtt", t(10_000), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(all_events(&s).await.len(), 1);

    // Replaying an update that already applied is a conflict, and reports the current version.
    let e = s
        .commit_alarms(&AlarmCommit {
            updates: vec![step(&inc, 4000, IncidentState::Resolved, None, vec![])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(
        e.message().contains("version 5, expected 4"),
        "{}",
        e.message()
    );
    // An update of an incident that does not exist is not a conflict.
    let ghost = IncidentUpdate {
        id: eid(99),
        ..step(&a.incident, 5000, IncidentState::Acknowledged, None, vec![])
    };
    let e = s
        .commit_alarms(&AlarmCommit {
            updates: vec![ghost],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(s.commit_alarms(&AlarmCommit::default()).await.is_ok());
}

async fn incident_clips_only_widen(s: Arc<dyn Store>, _db: &TestDb) {
    s.sync_cameras(&[cam("gate"), cam("yard")], t(0))
        .await
        .unwrap();
    let a = new_incident(0, 1, vec![], vec![]);
    let b = new_incident(1, 1, vec![], vec![]);
    let inc = a.incident.clone();
    s.commit_alarms(&AlarmCommit {
        creates: vec![a.clone(), b.clone()],
        clips: vec![
            clip(&inc, "yard", 100_000, 200_000),
            clip(&inc, "gate", 100_000, 200_000),
            clip(&b.incident, "gate", 0, 10),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let clips_of = |s: Arc<dyn Store>, id| async move { s.incident_clips(id).await.unwrap() };
    assert_eq!(
        clips_of(s.clone(), inc.id).await,
        [
            clip(&inc, "gate", 100_000, 200_000),
            clip(&inc, "yard", 100_000, 200_000)
        ]
    );

    let attach = |clips: Vec<IncidentClip>| AlarmCommit {
        clips,
        ..Default::default()
    };
    // Narrower: nothing shrinks.
    s.commit_alarms(&attach(vec![clip(&inc, "gate", 120_000, 180_000)]))
        .await
        .unwrap();
    assert_eq!(
        clips_of(s.clone(), inc.id).await[0],
        clip(&inc, "gate", 100_000, 200_000)
    );
    // Overlapping on one side: only that end moves.
    s.commit_alarms(&attach(vec![clip(&inc, "gate", 90_000, 150_000)]))
        .await
        .unwrap();
    assert_eq!(
        clips_of(s.clone(), inc.id).await[0],
        clip(&inc, "gate", 90_000, 200_000)
    );
    s.commit_alarms(&attach(vec![clip(&inc, "gate", 150_000, 230_000)]))
        .await
        .unwrap();
    assert_eq!(
        clips_of(s.clone(), inc.id).await[0],
        clip(&inc, "gate", 90_000, 230_000)
    );
    // Wider on both sides, twice in one commit: both ends move, to the widest.
    s.commit_alarms(&attach(vec![
        clip(&inc, "gate", 50_000, 300_000),
        clip(&inc, "gate", 60_000, 400_000),
    ]))
    .await
    .unwrap();
    assert_eq!(
        clips_of(s.clone(), inc.id).await,
        [
            clip(&inc, "gate", 50_000, 400_000),
            clip(&inc, "yard", 100_000, 200_000)
        ]
    );
    // Other incidents' clips of the same camera are their own.
    assert_eq!(
        clips_of(s.clone(), b.incident.id).await,
        [clip(&b.incident, "gate", 0, 10)]
    );
    // A clip of an unknown incident is refused, and takes its commit with it.
    let ghost = Incident {
        id: eid(77),
        ..inc.clone()
    };
    assert!(
        s.commit_alarms(&AlarmCommit {
            clips: vec![clip(&inc, "yard", 0, 500_000), clip(&ghost, "gate", 0, 1)],
            ..Default::default()
        })
        .await
        .is_err()
    );
    assert_eq!(
        clips_of(s.clone(), inc.id).await[1],
        clip(&inc, "yard", 100_000, 200_000)
    );
}

async fn retention_holds_incident_clips(s: Arc<dyn Store>, _db: &TestDb) {
    const HOLD: i64 = 600_000;
    s.sync_cameras(&[cam("gate"), cam("yard")], t(0))
        .await
        .unwrap();
    s.insert_segments(&[
        seg("gate", 0, 60_000, "gate/0.mp4"),
        seg("gate", 60_000, 120_000, "gate/1.mp4"),
        seg("yard", 60_000, 120_000, "yard/1.mp4"),
    ])
    .await
    .unwrap();
    let paths = |segs: Vec<Segment>| segs.into_iter().map(|x| x.path).collect::<Vec<_>>();
    let oldest = |s: Arc<dyn Store>, camera: Option<&'static str>, now: i64| async move {
        paths(
            s.oldest_unpinned_segments(camera, None, t(now), HOLD, 100)
                .await
                .unwrap(),
        )
    };

    // An alarm at 100 s attaches gate footage from 90 s to 200 s (post-roll still recording).
    let a = new_incident(100_000, 1, vec![], vec![]);
    s.commit_alarms(&AlarmCommit {
        creates: vec![a.clone()],
        clips: vec![clip(&a.incident, "gate", 90_000, 200_000)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        oldest(s.clone(), None, 130_000).await,
        ["gate/0.mp4", "yard/1.mp4"]
    );
    // Post-roll recorded after the clip was attached is held as well; a segment starting where
    // the clip ends is not.
    s.insert_segments(&[
        seg("gate", 120_000, 180_000, "gate/2.mp4"),
        seg("gate", 180_000, 200_000, "gate/3.mp4"),
        seg("gate", 200_000, 260_000, "gate/4.mp4"),
        seg("yard", 120_000, 180_000, "yard/2.mp4"),
    ])
    .await
    .unwrap();
    assert_eq!(
        oldest(s.clone(), None, 300_000).await,
        ["gate/0.mp4", "yard/1.mp4", "yard/2.mp4", "gate/4.mp4"]
    );
    assert_eq!(
        oldest(s.clone(), Some("gate"), 300_000).await,
        ["gate/0.mp4", "gate/4.mp4"]
    );
    assert_eq!(
        oldest(s.clone(), Some("yard"), 300_000).await,
        ["yard/1.mp4", "yard/2.mp4"]
    );
    // However long it stays open.
    assert_eq!(
        oldest(s.clone(), Some("gate"), 100_000_000).await,
        ["gate/0.mp4", "gate/4.mp4"]
    );
    // Without a hold, an open incident still holds its footage.
    assert_eq!(
        paths(
            s.oldest_unpinned_segments(Some("gate"), None, t(300_000), 0, 100)
                .await
                .unwrap()
        ),
        ["gate/0.mp4", "gate/4.mp4"]
    );

    // Resolved at 400 s: held until 400 s + HOLD, then released.
    let resolve = step(
        &a.incident,
        400_000,
        IncidentState::Resolved,
        Some(Outcome::Genuine),
        vec![],
    );
    s.commit_alarms(&AlarmCommit {
        updates: vec![resolve],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        oldest(s.clone(), Some("gate"), 500_000).await,
        ["gate/0.mp4", "gate/4.mp4"]
    );
    assert_eq!(
        oldest(s.clone(), Some("gate"), 400_000 + HOLD - 1).await,
        ["gate/0.mp4", "gate/4.mp4"]
    );
    assert_eq!(
        oldest(s.clone(), Some("gate"), 400_000 + HOLD).await,
        [
            "gate/0.mp4",
            "gate/1.mp4",
            "gate/2.mp4",
            "gate/3.mp4",
            "gate/4.mp4"
        ]
    );

    // Yard footage of an incident resolved at 20 s is held only until 20 s + HOLD, while an
    // open incident's overlapping clip keeps holding it after that.
    let b = new_incident(10_000, 2, vec![], vec![]);
    let b_done = step(
        &b.incident,
        20_000,
        IncidentState::Resolved,
        Some(Outcome::False),
        vec![],
    );
    s.commit_alarms(&AlarmCommit {
        creates: vec![b.clone()],
        updates: vec![b_done],
        clips: vec![clip(&b.incident, "yard", 60_000, 180_000)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        oldest(s.clone(), Some("yard"), 600_000).await,
        Vec::<String>::new()
    );
    assert_eq!(
        oldest(s.clone(), Some("yard"), 20_000 + HOLD).await,
        ["yard/1.mp4", "yard/2.mp4"]
    );
    let c = new_incident(150_000, 1, vec![], vec![]);
    s.commit_alarms(&AlarmCommit {
        creates: vec![c.clone()],
        clips: vec![clip(&c.incident, "yard", 150_000, 160_000)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        oldest(s.clone(), Some("yard"), 20_000 + HOLD).await,
        ["yard/1.mp4"]
    );
    // Reopening the resolved gate incident holds its footage again.
    let a_now = s.get_incident(a.incident.id).await.unwrap().unwrap();
    s.commit_alarms(&AlarmCommit {
        updates: vec![step(
            &a_now,
            2_000_000,
            IncidentState::Acknowledged,
            None,
            vec![],
        )],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        oldest(s.clone(), Some("gate"), 5_000_000).await,
        ["gate/0.mp4", "gate/4.mp4"]
    );
}

async fn events_page_in_id_order_and_prune_by_age(s: Arc<dyn Store>, _db: &TestDb) {
    assert_eq!(s.latest_event_id().await.unwrap(), None);
    assert!(all_events(&s).await.is_empty());

    // Several events in one millisecond keep the order they were made in.
    let first: Vec<_> = (0..4)
        .map(|i| ev(0, "camera", "gate", &format!("state {i}")))
        .collect();
    let later: Vec<_> = (0..3)
        .map(|i| ev(1000 + i, "camera", "yard", &format!("state {i}")))
        .collect();
    // Stored out of order; read back in id order.
    let mut shuffled = later.clone();
    shuffled.reverse();
    s.append_events(&first).await.unwrap();
    s.append_events(&shuffled).await.unwrap();
    let a = new_incident(2000, 1, vec![], vec![]);
    let alarm = vec![
        ev(2000, "alarm", &a.incident.id.to_string(), "raised"),
        ev(2000, "alarm", &a.incident.id.to_string(), "clip"),
    ];
    s.commit_alarms(&AlarmCommit {
        creates: vec![a],
        events: alarm.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let expected: Vec<EventRecord> = first.iter().chain(&later).chain(&alarm).cloned().collect();
    assert_eq!(all_events(&s).await, expected, "every field round-trips");
    assert_eq!(
        s.latest_event_id().await.unwrap(),
        Some(expected.last().unwrap().id)
    );

    // Paging with the last id seen visits every event once, in order.
    let mut seen = Vec::new();
    let mut cursor = nil_id();
    loop {
        let page = s.events_after(cursor, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        cursor = last.id;
        seen.extend(page);
    }
    assert_eq!(seen, expected);
    assert_eq!(
        s.events_after(expected[1].id, 2).await.unwrap(),
        expected[2..4]
    );
    assert!(
        s.events_after(expected.last().unwrap().id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A duplicate id is refused (the stream never shows one event twice).
    assert!(s.append_events(&first[..1]).await.is_err());

    // Pruning goes by age: strictly older than `before`.
    assert_eq!(s.prune_events(t(0)).await.unwrap(), 0);
    assert_eq!(s.prune_events(t(1001)).await.unwrap(), 5);
    assert_eq!(all_events(&s).await, expected[5..]);
    assert_eq!(s.prune_events(t(1001)).await.unwrap(), 0);
    // A reader resuming from a pruned id gets what is left after it.
    assert_eq!(
        s.events_after(expected[0].id, 10).await.unwrap(),
        expected[5..]
    );
    assert_eq!(
        s.latest_event_id().await.unwrap(),
        Some(expected.last().unwrap().id)
    );
    assert_eq!(s.prune_events(t(1_000_000)).await.unwrap(), 4);
    assert_eq!(s.latest_event_id().await.unwrap(), None);
}

fn motion_rec(camera: &str, start: i64, end: Option<i64>, score: f64) -> MotionRecord {
    MotionRecord {
        id: eid(start),
        node_id: NODE.into(),
        camera_id: camera.into(),
        zone: "yard".into(),
        start: t(start),
        end: end.map(t),
        score,
        boxes: "[[0.1,0.2,0.05,0.1]]".into(),
    }
}

async fn motion_events_upsert_and_list_by_overlap(s: Arc<dyn Store>, _db: &TestDb) {
    let done = motion_rec("gate", 1000, Some(5000), 0.4);
    let open = motion_rec("gate", 9000, None, 0.2);
    let other = motion_rec("yard", 2000, Some(3000), 0.9);
    s.commit_alarms(&AlarmCommit {
        motion: vec![done.clone(), open.clone(), other.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let ids = |v: Vec<MotionRecord>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_motion("gate", t(0), t(100_000), 100).await.unwrap()),
        [done.id, open.id]
    );
    // Overlap, not containment: [4000, 8000) meets the first only; an open event overlaps
    // everything after its start.
    assert_eq!(
        ids(s.list_motion("gate", t(4000), t(8000), 100).await.unwrap()),
        [done.id]
    );
    assert_eq!(
        ids(s
            .list_motion("gate", t(50_000), t(60_000), 100)
            .await
            .unwrap()),
        [open.id]
    );
    assert!(
        s.list_motion("gate", t(5000), t(9000), 100)
            .await
            .unwrap()
            .is_empty()
    );
    // The event ends: the same id is updated, not added.
    let ended = MotionRecord {
        end: Some(t(12_000)),
        score: 0.7,
        ..open.clone()
    };
    s.commit_alarms(&AlarmCommit {
        motion: vec![ended.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let all = s.list_motion("gate", t(0), t(100_000), 100).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1], ended);
    assert!(
        s.list_motion("gate", t(50_000), t(60_000), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_motion("gate", t(0), t(100_000), 1)
            .await
            .unwrap()
            .len(),
        1
    );
}

fn user_rec(name: &str, at: i64) -> UserRecord {
    UserRecord {
        id: eid(at),
        username: name.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        role: Role::Duty,
        cameras: vec!["gate".into()],
        devices: vec!["*".into()],
        disabled: false,
        created_at: t(at),
        updated_at: t(at),
    }
}

async fn users_create_update_disable(s: Arc<dyn Store>, _db: &TestDb) {
    let wang = user_rec("wang", 0);
    s.create_user(&wang).await.unwrap();
    s.create_user(&user_rec("li", 1)).await.unwrap();
    let dup = s.create_user(&user_rec("wang", 2)).await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::AlreadyExists);
    assert!(dup.message().contains("wang"), "{}", dup.message());

    assert_eq!(s.get_user_by_name("wang").await.unwrap().unwrap(), wang);
    assert_eq!(s.get_user(wang.id).await.unwrap().unwrap(), wang);
    assert!(s.get_user_by_name("nobody").await.unwrap().is_none());
    let names: Vec<_> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["li", "wang"]);

    let after = s
        .update_user(
            "wang",
            &UserUpdate {
                role: Some(Role::Operator),
                cameras: Some(vec!["*".into()]),
                devices: None,
            },
            t(10),
        )
        .await
        .unwrap();
    assert_eq!(after.role, Role::Operator);
    assert_eq!(after.cameras, ["*"]);
    assert_eq!(after.devices, ["*"]);
    assert_eq!(s.get_user_by_name("wang").await.unwrap().unwrap(), after);

    s.update_user_password("wang", "$argon2id$new", t(20))
        .await
        .unwrap();
    let u = s.get_user_by_name("wang").await.unwrap().unwrap();
    assert_eq!(u.password_hash, "$argon2id$new");
    assert_eq!(u.updated_at, t(20));

    s.set_user_disabled("wang", true, t(30)).await.unwrap();
    assert!(s.get_user_by_name("wang").await.unwrap().unwrap().disabled);
    s.set_user_disabled("wang", false, t(31)).await.unwrap();
    assert!(!s.get_user_by_name("wang").await.unwrap().unwrap().disabled);

    for e in [
        s.update_user("ghost", &UserUpdate::default(), t(40))
            .await
            .unwrap_err(),
        s.update_user_password("ghost", "x", t(40))
            .await
            .unwrap_err(),
        s.set_user_disabled("ghost", true, t(40)).await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}

async fn sessions_live_touch_and_die_with_their_user(s: Arc<dyn Store>, _db: &TestDb) {
    let wang = user_rec("wang", 0);
    let li = user_rec("li", 1);
    s.create_user(&wang).await.unwrap();
    s.create_user(&li).await.unwrap();
    let sess = |id: &str, user: &UserRecord, expires: i64| SessionRecord {
        id: id.into(),
        user_id: user.id,
        csrf: format!("csrf-{id}"),
        created_at: t(0),
        expires_at: t(expires),
        last_seen: t(0),
        remote_addr: Some("192.0.2.7".into()),
    };
    let a = sess("aa", &wang, 100);
    s.create_session(&a).await.unwrap();
    s.create_session(&sess("bb", &wang, 50)).await.unwrap();
    s.create_session(&sess("cc", &li, 1000)).await.unwrap();
    assert_eq!(s.get_session("aa").await.unwrap().unwrap(), a);
    assert!(s.get_session("zz").await.unwrap().is_none());

    s.touch_session("aa", t(60), t(160)).await.unwrap();
    let touched = s.get_session("aa").await.unwrap().unwrap();
    assert_eq!((touched.last_seen, touched.expires_at), (t(60), t(160)));

    // Expired before 120: only "bb" (50).
    assert_eq!(s.prune_sessions(t(120)).await.unwrap(), 1);
    assert!(s.get_session("bb").await.unwrap().is_none());

    s.delete_session("cc").await.unwrap();
    assert!(s.get_session("cc").await.unwrap().is_none());
    s.delete_session("cc").await.unwrap();

    // A new password or a disabled account ends the user's sessions.
    s.create_session(&sess("dd", &li, 1000)).await.unwrap();
    s.update_user_password("wang", "$argon2id$other", t(200))
        .await
        .unwrap();
    assert!(s.get_session("aa").await.unwrap().is_none());
    assert!(s.get_session("dd").await.unwrap().is_some());
    s.set_user_disabled("li", true, t(210)).await.unwrap();
    assert!(s.get_session("dd").await.unwrap().is_none());
}

async fn outbox_is_drained_per_node(s: Arc<dyn Store>, db: &TestDb) {
    // Two nodes on one database, each with a city uplink of the same sink name: each node
    // sees, sends, counts and expires only its own entries.
    let other = xueliang_store::open(&db.options(), "node-b".parse().unwrap())
        .await
        .unwrap();
    let mine = ob("skynet-mqtt", "inc-a", 3, 100, "a");
    let mut theirs = ob("skynet-mqtt", "inc-b", 1, 200, "b");
    theirs.node_id = "node-b".into();
    s.enqueue_outbox(&[mine.clone(), theirs.clone()])
        .await
        .unwrap();
    let ids = |v: Vec<OutboxEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.due_outbox("skynet-mqtt", t(1000), 10, 10).await.unwrap()),
        vec![mine.id]
    );
    assert_eq!(
        ids(other
            .due_outbox("skynet-mqtt", t(1000), 10, 10)
            .await
            .unwrap()),
        vec![theirs.id]
    );
    assert_eq!(
        ids(s.pending_outbox("skynet-mqtt", t(1000), 10).await.unwrap()),
        vec![mine.id]
    );
    assert_eq!(s.outbox_stats("skynet-mqtt").await.unwrap().pending, 1);
    assert_eq!(
        other.outbox_stats("skynet-mqtt").await.unwrap().oldest,
        Some(t(200))
    );
    let gone = s
        .expire_outbox("skynet-mqtt", t(10_000), t(10_000), "too old")
        .await
        .unwrap();
    assert_eq!(gone.iter().map(|e| e.id).collect::<Vec<_>>(), vec![mine.id]);
    let gone = s
        .expire_outbox_over_budget("skynet-mqtt", 0, 0, t(10_000), "over budget")
        .await
        .unwrap();
    assert!(
        gone.is_empty(),
        "node-b's entry is not this node's to expire"
    );
    assert_eq!(other.outbox_stats("skynet-mqtt").await.unwrap().pending, 1);
    other.close().await;
}

async fn outbox_retry_now_makes_waiting_entries_due(s: Arc<dyn Store>, db: &TestDb) {
    // Once a sink accepts deliveries again, channels held back by earlier failures are due at
    // once: only this node's, this sink's, undelivered and unexpired entries waiting past now.
    let other = xueliang_store::open(&db.options(), "node-b".parse().unwrap())
        .await
        .unwrap();
    let failed = ob("gb28181", "inc-a", 2, 100, "a");
    let fresh = ob("gb28181", "inc-b", 2, 200, "b");
    let done = ob("gb28181", "inc-c", 2, 300, "c");
    let elsewhere = ob("skynet-mqtt", "inc-a", 2, 400, "d");
    let mut theirs = ob("gb28181", "inc-e", 2, 500, "e");
    theirs.node_id = "node-b".into();
    s.enqueue_outbox(&[
        failed.clone(),
        fresh.clone(),
        done.clone(),
        elsewhere.clone(),
        theirs.clone(),
    ])
    .await
    .unwrap();
    for e in [&failed, &done, &elsewhere] {
        s.mark_outbox_failed(e.id, t(60_000), "503").await.unwrap();
    }
    other
        .mark_outbox_failed(theirs.id, t(60_000), "503")
        .await
        .unwrap();
    s.mark_outbox_delivered(done.id, t(2_000)).await.unwrap();
    let ids = |v: Vec<OutboxEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.due_outbox("gb28181", t(1_000), 10, 10).await.unwrap()),
        vec![fresh.id],
        "the failed channel waits for its retry"
    );
    assert_eq!(s.retry_outbox_now("gb28181", t(1_000)).await.unwrap(), 1);
    let due = s.due_outbox("gb28181", t(1_000), 10, 10).await.unwrap();
    assert_eq!(ids(due.clone()), vec![failed.id, fresh.id]);
    assert_eq!(due[0].next_attempt, t(1_000));
    assert_eq!(due[0].attempts, 1, "the attempt still counts");
    assert_eq!(due[0].last_error.as_deref(), Some("503"));
    assert!(
        s.due_outbox("skynet-mqtt", t(1_000), 10, 10)
            .await
            .unwrap()
            .is_empty(),
        "another sink's entries keep their schedule"
    );
    assert!(
        other
            .due_outbox("gb28181", t(1_000), 10, 10)
            .await
            .unwrap()
            .is_empty(),
        "another node's entries keep their schedule"
    );
    assert_eq!(
        s.retry_outbox_now("gb28181", t(1_000)).await.unwrap(),
        0,
        "nothing left waiting"
    );
    other.close().await;
}

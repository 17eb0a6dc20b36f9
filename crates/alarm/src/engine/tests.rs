use std::collections::HashMap;

use super::*;

const T0: i64 = 1_795_000_000_000;

fn t(s: i64) -> Timestamp {
    Timestamp::from_millis(T0 + s * 1000)
}

fn engine() -> Engine {
    let mut devices = HashMap::new();
    devices.insert(
        "btn-school".to_owned(),
        DeviceInfo {
            name: Some("小学传达室".into()),
            cameras: vec!["gate".into(), "yard".into()],
        },
    );
    devices.insert(
        "btn-elder".to_owned(),
        DeviceInfo {
            name: None,
            cameras: vec![],
        },
    );
    Engine::new(Policy::default(), devices, t(0))
}

fn press(e: &mut Engine, device: &str, at: i64) -> Vec<Effect> {
    e.handle(Input::Press {
        signal: EntityId::new_at(t(at)),
        device: device.into(),
        kind: PressKind::Panic,
        at: t(at),
        battery: Some(90),
    })
    .unwrap()
}

fn tick(e: &mut Engine, at: i64) -> Vec<Effect> {
    e.handle(Input::Tick { now: t(at) }).unwrap()
}

fn raised(effects: &[Effect]) -> Vec<(EntityId, IncidentKind, i64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Raised {
                incident,
                kind,
                priority,
                ..
            } => Some((*incident, *kind, *priority)),
            _ => None,
        })
        .collect()
}

fn act(e: &mut Engine, id: EntityId, action: Action, at: i64) -> Result<Vec<Effect>, ActionError> {
    e.handle(Input::Act {
        incident: id,
        action,
        actor: "token:desk".into(),
        note: Some("on my way".into()),
        at: t(at),
    })
}

#[test]
fn a_press_raises_a_panic_incident_and_pins_the_linked_cameras() {
    let mut e = engine();
    let fx = press(&mut e, "btn-school", 100);
    let r = raised(&fx);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].1, r[0].2), (IncidentKind::Panic, 2));
    match &fx[0] {
        Effect::Raised { title, source, .. } => {
            assert_eq!(title, "一键报警 panic: 小学传达室");
            assert_eq!(source, "btn-school");
        }
        other => panic!("{other:?}"),
    }
    let footage: Vec<_> = fx
        .iter()
        .filter_map(|f| match f {
            Effect::Footage {
                camera, from, to, ..
            } => Some((camera.as_str(), *from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(footage, [("gate", t(40), t(280)), ("yard", t(40), t(280))]);
}

#[test]
fn repeat_presses_join_within_the_window_and_a_burst_raises_priority() {
    let mut e = engine();
    let id = raised(&press(&mut e, "btn-school", 0))[0].0;
    let fx = press(&mut e, "btn-school", 20);
    assert!(matches!(fx[0], Effect::Joined { incident, priority: 2, .. } if incident == id));
    // The join pushes the footage out to 180 s after this press.
    assert!(
        fx.iter()
            .any(|f| matches!(f, Effect::Footage { to, .. } if *to == t(200)))
    );
    let fx = press(&mut e, "btn-school", 50);
    assert!(
        matches!(fx[0], Effect::Joined { priority: 1, .. }),
        "third press within 60 s: {fx:?}"
    );
    // Joining is measured from the last signal: 150 s after the first press still joins.
    let fx = press(&mut e, "btn-school", 150);
    assert!(matches!(fx[0], Effect::Joined { incident, priority: 1, .. } if incident == id));
    // More than 120 s after the last signal: a new incident.
    let fx = press(&mut e, "btn-school", 300);
    let r = raised(&fx);
    assert_eq!(r.len(), 1);
    assert_ne!(r[0].0, id);
    // Presses from another device never join.
    assert_eq!(raised(&press(&mut e, "btn-elder", 301)).len(), 1);
}

#[test]
fn unacknowledged_incidents_escalate_every_ack_timeout_until_acknowledged() {
    let mut e = engine();
    let id = raised(&press(&mut e, "btn-school", 0))[0].0;
    assert_eq!(e.next_deadline(), Some(t(30)));
    assert!(
        tick(&mut e, 29)
            .iter()
            .all(|f| !matches!(f, Effect::Escalated { .. }))
    );
    let fx = tick(&mut e, 30);
    assert!(
        fx.contains(&Effect::Escalated {
            incident: id,
            level: 1,
            at: t(30)
        }),
        "{fx:?}"
    );
    // A late tick catches up one escalation per period.
    let fx = tick(&mut e, 95);
    let levels: Vec<_> = fx
        .iter()
        .filter_map(|f| match f {
            Effect::Escalated { level, at, .. } => Some((*level, *at)),
            _ => None,
        })
        .collect();
    assert_eq!(levels, [(2, t(60)), (3, t(90))]);
    act(&mut e, id, Action::Acknowledge, 96).unwrap();
    assert!(
        tick(&mut e, 500)
            .iter()
            .all(|f| !matches!(f, Effect::Escalated { .. }))
    );
}

#[test]
fn the_workflow_moves_forward_only_and_names_who_was_first() {
    let mut e = engine();
    let id = raised(&press(&mut e, "btn-school", 0))[0].0;
    let fx = act(&mut e, id, Action::Acknowledge, 5).unwrap();
    assert!(matches!(
        &fx[0],
        Effect::Transitioned { from: IncidentState::Raised, to: IncidentState::Acknowledged, actor, .. } if actor == "token:desk"
    ));
    let err = act(&mut e, id, Action::Acknowledge, 6).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot acknowledge an incident that is already acknowledged (by token:desk)"
    );
    act(&mut e, id, Action::Dispatch, 7).unwrap();
    let err = act(&mut e, id, Action::Acknowledge, 8).unwrap_err();
    assert!(matches!(
        err,
        ActionError::Illegal {
            state: IncidentState::Dispatched,
            ..
        }
    ));
    let fx = act(&mut e, id, Action::Resolve(Outcome::Genuine), 9).unwrap();
    assert!(matches!(
        &fx[0],
        Effect::Transitioned {
            to: IncidentState::Resolved,
            outcome: Some(Outcome::Genuine),
            ..
        }
    ));
    // Panic is latched: its condition clears only now, and the footage is released.
    assert!(fx.contains(&Effect::ConditionCleared {
        incident: id,
        at: t(9)
    }));
    assert!(fx.contains(&Effect::Released {
        incident: id,
        at: t(9)
    }));
    assert_eq!(
        act(&mut e, id, Action::Dispatch, 10).unwrap_err(),
        ActionError::NotOpen(id)
    );
    // A raised incident may be resolved at once (a false alarm) and a later press starts anew.
    let id2 = raised(&press(&mut e, "btn-school", 20))[0].0;
    assert_ne!(id2, id);
    act(&mut e, id2, Action::Resolve(Outcome::False), 21).unwrap();
    assert!(
        e.open_incidents()
            .iter()
            .all(|(_, k, ..)| *k != IncidentKind::Panic)
    );
}

#[test]
fn silent_devices_go_offline_and_come_back() {
    let mut e = engine();
    // Heartbeats every minute keep btn-school online; btn-elder says nothing.
    for m in 1..=3 {
        e.handle(Input::Heartbeat {
            device: "btn-school".into(),
            at: t(m * 60),
            battery: Some(80),
        })
        .unwrap();
    }
    assert_eq!(
        e.next_deadline(),
        Some(t(180)),
        "btn-elder is due at 3 missed heartbeats"
    );
    let fx = tick(&mut e, 180);
    let r = raised(&fx);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].1, r[0].2), (IncidentKind::DeviceOffline, 4));
    assert!(
        matches!(&fx[0], Effect::Raised { source, at, .. } if source == "btn-elder" && *at == t(180))
    );
    // No second incident while it stays silent.
    assert!(raised(&tick(&mut e, 200)).is_empty());
    // It comes back: the condition clears, the incident stays for the duty desk.
    let fx = e
        .handle(Input::Heartbeat {
            device: "btn-elder".into(),
            at: t(401),
            battery: None,
        })
        .unwrap();
    assert_eq!(
        fx,
        [Effect::ConditionCleared {
            incident: r[0].0,
            at: t(401)
        }]
    );
    assert!(e.open_incidents().iter().any(|i| i.0 == r[0].0));
}

#[test]
fn a_last_will_means_offline_at_once_and_online_clears_it() {
    let mut e = engine();
    let fx = e
        .handle(Input::Status {
            device: "btn-school".into(),
            online: false,
            at: t(10),
        })
        .unwrap();
    let id = raised(&fx)[0].0;
    assert_eq!(
        e.handle(Input::Status {
            device: "btn-school".into(),
            online: false,
            at: t(11)
        })
        .unwrap(),
        []
    );
    let fx = e
        .handle(Input::Status {
            device: "btn-school".into(),
            online: true,
            at: t(20),
        })
        .unwrap();
    assert_eq!(
        fx,
        [Effect::ConditionCleared {
            incident: id,
            at: t(20)
        }]
    );
    // A press also proves the device is alive, and is handled as a press.
    e.handle(Input::Status {
        device: "btn-elder".into(),
        online: false,
        at: t(30),
    })
    .unwrap();
    let fx = press(&mut e, "btn-elder", 31);
    assert!(matches!(fx[0], Effect::ConditionCleared { .. }));
    assert_eq!(raised(&fx)[0].1, IncidentKind::Panic);
}

#[test]
fn low_battery_opens_one_maintenance_incident_without_flapping() {
    let mut e = engine();
    let hb = |e: &mut Engine, at: i64, b: u8| {
        e.handle(Input::Heartbeat {
            device: "btn-school".into(),
            at: t(at),
            battery: Some(b),
        })
        .unwrap()
    };
    assert!(hb(&mut e, 1, 50).is_empty());
    let fx = hb(&mut e, 2, 20);
    let r = raised(&fx);
    assert_eq!((r[0].1, r[0].2), (IncidentKind::LowBattery, 5));
    assert!(hb(&mut e, 3, 19).is_empty());
    assert!(hb(&mut e, 4, 23).is_empty(), "within the margin: still low");
    assert_eq!(
        hb(&mut e, 5, 90),
        [Effect::ConditionCleared {
            incident: r[0].0,
            at: t(5)
        }]
    );
    // Maintenance incidents do not escalate.
    assert!(
        tick(&mut e, 100)
            .iter()
            .all(|f| !matches!(f, Effect::Escalated { .. }))
    );
}

#[test]
fn footage_follows_an_open_incident_up_to_the_cap() {
    let mut e = engine();
    let id = raised(&press(&mut e, "btn-school", 0))[0].0;
    act(&mut e, id, Action::Acknowledge, 1).unwrap();
    // Still open when the post-roll runs out: extended.
    let fx = tick(&mut e, 180);
    assert!(
        fx.contains(&Effect::Footage {
            incident: id,
            camera: "gate".into(),
            from: t(-60),
            to: t(360)
        }),
        "{fx:?}"
    );
    // Never more than 15 minutes in all (from 60 s before the press).
    let fx = tick(&mut e, 720);
    assert!(
        fx.contains(&Effect::Footage {
            incident: id,
            camera: "gate".into(),
            from: t(-60),
            to: t(840)
        }),
        "{fx:?}"
    );
    assert!(
        tick(&mut e, 2000)
            .iter()
            .all(|f| !matches!(f, Effect::Footage { .. }))
    );
}

#[test]
fn a_restored_incident_takes_presses_and_escalates_again() {
    let mut e = engine();
    let id = EntityId::new_at(t(0));
    e.restore(
        id,
        IncidentKind::Panic,
        "btn-school",
        2,
        IncidentState::Raised,
        Condition::Active,
        t(0),
        t(10),
        1,
    );
    let fx = press(&mut e, "btn-school", 100);
    assert!(
        matches!(fx[0], Effect::Joined { incident, .. } if incident == id),
        "{fx:?}"
    );
    // Level 1 was reached before the stop; level 2 is due a period later.
    assert_eq!(e.next_deadline(), Some(t(60)));
    assert!(tick(&mut e, 60).contains(&Effect::Escalated {
        incident: id,
        level: 2,
        at: t(60)
    }));
    // Resolved incidents are not taken back.
    let done = EntityId::new_at(t(1));
    e.restore(
        done,
        IncidentKind::Panic,
        "btn-elder",
        2,
        IncidentState::Resolved,
        Condition::Cleared,
        t(0),
        t(0),
        0,
    );
    assert_eq!(raised(&press(&mut e, "btn-elder", 101)).len(), 1);
}

fn camera(e: &mut Engine, cam: &str, online: bool, at: i64) -> Vec<Effect> {
    e.handle(Input::Camera {
        camera: cam.into(),
        online,
        at: t(at),
    })
    .unwrap()
}

#[test]
fn a_camera_offline_past_the_policy_time_raises_one_incident() {
    let mut e = Engine::new(Policy::default(), HashMap::new(), t(0));
    assert!(camera(&mut e, "gate", false, 0).is_empty());
    // A reconnect within the five minutes pages nobody.
    assert!(camera(&mut e, "gate", true, 100).is_empty());
    assert!(
        tick(&mut e, 400)
            .iter()
            .all(|fx| !matches!(fx, Effect::Raised { .. }))
    );
    camera(&mut e, "gate", false, 500);
    assert_eq!(e.next_deadline(), Some(t(800)));
    assert!(raised(&tick(&mut e, 799)).is_empty());
    let r = raised(&tick(&mut e, 800));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1, IncidentKind::CameraOffline);
    let id = r[0].0;
    // Further failures of the same outage add nothing.
    assert!(camera(&mut e, "gate", false, 810).is_empty());
    assert!(raised(&tick(&mut e, 2000)).is_empty());
    // Back: the condition clears, the incident stays for a person.
    let fx = camera(&mut e, "gate", true, 2100);
    assert_eq!(
        fx,
        vec![Effect::ConditionCleared {
            incident: id,
            at: t(2100)
        }]
    );
    assert!(e.open_incidents().iter().any(|(i, ..)| *i == id));
    // Lost again while still open: the same incident becomes active again.
    camera(&mut e, "gate", false, 2200);
    let fx = tick(&mut e, 2500);
    assert!(fx.contains(&Effect::ConditionRaised {
        incident: id,
        at: t(2500)
    }));
    assert!(raised(&fx).is_empty());
}

#[test]
fn camera_faults_raise_nothing_when_the_policy_says_so() {
    let mut e = Engine::new(
        Policy {
            camera_offline_after: None,
            ..Policy::default()
        },
        HashMap::new(),
        t(0),
    );
    camera(&mut e, "gate", false, 0);
    assert_eq!(e.next_deadline(), None);
    assert!(raised(&tick(&mut e, 100_000)).is_empty());
}

#[test]
fn motion_raises_one_incident_with_the_cameras_footage_and_clears_when_it_ends() {
    let mut e = Engine::new(Policy::default(), HashMap::new(), t(0));
    let motion = |e: &mut Engine, at: i64| {
        e.handle(Input::Motion {
            signal: EntityId::new_at(t(at)),
            camera: "yard".into(),
            at: t(at),
        })
        .unwrap()
    };
    let fx = motion(&mut e, 10);
    let r = raised(&fx);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1, IncidentKind::Motion);
    let id = r[0].0;
    assert!(fx.contains(&Effect::Footage {
        incident: id,
        camera: "yard".into(),
        from: t(10 - 60),
        to: t(10 + 180),
    }));
    // Motion again soon after joins it; its end clears the condition, the incident stays.
    assert!(raised(&motion(&mut e, 50)).is_empty());
    let fx = e
        .handle(Input::MotionEnded {
            camera: "yard".into(),
            at: t(70),
        })
        .unwrap();
    assert_eq!(
        fx,
        vec![Effect::ConditionCleared {
            incident: id,
            at: t(70)
        }]
    );
    // Motion is not paged like a panic: no escalation.
    assert!(
        tick(&mut e, 1000)
            .iter()
            .all(|fx| !matches!(fx, Effect::Escalated { .. }))
    );
}

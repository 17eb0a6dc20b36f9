//! The engine: open incidents in memory, rules from [`Policy`], effects out.

use std::collections::{HashMap, VecDeque};

use xueliang_core::model::{Condition, IncidentState, Outcome};
use xueliang_core::{EntityId, Timestamp};

use crate::Policy;
use crate::policy::ms;

/// What a button press says it is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PressKind {
    Panic,
    Tamper,
    Test,
}

/// What an incident is about. Lower priority numbers are more urgent.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IncidentKind {
    Panic,
    Tamper,
    /// A panic button that cannot be reached is a safety problem of its own.
    DeviceOffline,
    /// A maintenance ticket.
    LowBattery,
    Test,
    /// A camera that stayed offline longer than the policy allows.
    CameraOffline,
    /// Motion on a camera whose policy makes motion an alarm (e.g. a school yard at night).
    Motion,
}

impl IncidentKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "panic" => IncidentKind::Panic,
            "tamper" => IncidentKind::Tamper,
            "device_offline" => IncidentKind::DeviceOffline,
            "low_battery" => IncidentKind::LowBattery,
            "test" => IncidentKind::Test,
            "camera_offline" => IncidentKind::CameraOffline,
            "motion" => IncidentKind::Motion,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Panic => "panic",
            IncidentKind::Tamper => "tamper",
            IncidentKind::DeviceOffline => "device_offline",
            IncidentKind::LowBattery => "low_battery",
            IncidentKind::Test => "test",
            IncidentKind::CameraOffline => "camera_offline",
            IncidentKind::Motion => "motion",
        }
    }

    pub fn base_priority(self) -> i64 {
        match self {
            IncidentKind::Panic => 2,
            IncidentKind::Tamper => 3,
            IncidentKind::DeviceOffline => 4,
            IncidentKind::LowBattery => 5,
            IncidentKind::Test => 6,
            IncidentKind::CameraOffline => 4,
            IncidentKind::Motion => 3,
        }
    }

    /// Whether an unacknowledged incident of this kind escalates.
    fn escalates(self) -> bool {
        matches!(
            self,
            IncidentKind::Panic | IncidentKind::Tamper | IncidentKind::DeviceOffline
        )
    }

    fn of_press(k: PressKind) -> Self {
        match k {
            PressKind::Panic => IncidentKind::Panic,
            PressKind::Tamper => IncidentKind::Tamper,
            PressKind::Test => IncidentKind::Test,
        }
    }
}

/// What the engine knows of a device from the configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceInfo {
    pub name: Option<String>,
    /// Cameras whose footage a press from this device pins.
    pub cameras: Vec<String>,
}

/// An operator's step in an incident's workflow.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Acknowledge,
    Dispatch,
    Resolve(Outcome),
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Acknowledge => "acknowledge",
            Action::Dispatch => "dispatch",
            Action::Resolve(_) => "resolve",
        }
    }

    fn target(self) -> IncidentState {
        match self {
            Action::Acknowledge => IncidentState::Acknowledged,
            Action::Dispatch => IncidentState::Dispatched,
            Action::Resolve(_) => IncidentState::Resolved,
        }
    }
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A stored (deduplicated) press.
    Press {
        signal: EntityId,
        device: String,
        kind: PressKind,
        at: Timestamp,
        battery: Option<u8>,
    },
    Heartbeat {
        device: String,
        at: Timestamp,
        battery: Option<u8>,
    },
    /// `online` / `offline` on the device's status topic (its last will says offline).
    Status {
        device: String,
        online: bool,
        at: Timestamp,
    },
    Act {
        incident: EntityId,
        action: Action,
        actor: String,
        note: Option<String>,
        at: Timestamp,
    },
    /// Motion began on a camera whose policy makes it an alarm (a stored signal).
    Motion {
        signal: EntityId,
        camera: String,
        at: Timestamp,
    },
    /// That motion ended.
    MotionEnded { camera: String, at: Timestamp },
    /// A camera went offline (its stream failed) or came back.
    Camera {
        camera: String,
        online: bool,
        at: Timestamp,
    },
    /// Time has passed; escalations and supervision deadlines are due up to `now`.
    Tick { now: Timestamp },
}

/// A change for the shell to commit (in order) and announce.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Raised {
        incident: EntityId,
        kind: IncidentKind,
        source: String,
        priority: i64,
        title: String,
        signal: Option<EntityId>,
        at: Timestamp,
    },
    Joined {
        incident: EntityId,
        signal: EntityId,
        priority: i64,
        at: Timestamp,
    },
    Transitioned {
        incident: EntityId,
        from: IncidentState,
        to: IncidentState,
        outcome: Option<Outcome>,
        actor: String,
        note: Option<String>,
        at: Timestamp,
    },
    /// Still not acknowledged: tell more people, louder.
    Escalated {
        incident: EntityId,
        level: i64,
        at: Timestamp,
    },
    /// The cause is gone (the device is back); the workflow goes on.
    ConditionCleared { incident: EntityId, at: Timestamp },
    /// The cause is back while its incident is still open (the device or camera was lost again).
    ConditionRaised { incident: EntityId, at: Timestamp },
    /// Keep this camera's recordings of `[from, to)` for the incident (a later one for the same
    /// camera supersedes an earlier one).
    Footage {
        incident: EntityId,
        camera: String,
        from: Timestamp,
        to: Timestamp,
    },
    /// The incident is over: its footage may go after the configured hold.
    Released { incident: EntityId, at: Timestamp },
}

/// Why an operator's action was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ActionError {
    #[error("incident {0} is not open")]
    NotOpen(EntityId),
    #[error("cannot {action} an incident that is already {state}{}", by.as_ref().map(|b| format!(" (by {b})")).unwrap_or_default())]
    Illegal {
        action: &'static str,
        state: IncidentState,
        by: Option<String>,
    },
}

#[derive(Debug)]
struct Open {
    kind: IncidentKind,
    source: String,
    priority: i64,
    state: IncidentState,
    condition: Condition,
    last_signal: Timestamp,
    presses: VecDeque<Timestamp>,
    boosted: bool,
    escalation: i64,
    next_escalation: Option<Timestamp>,
    /// Pinned window: (from, to, cap).
    footage: Option<(Timestamp, Timestamp, Timestamp)>,
    last_actor: Option<String>,
}

#[derive(Debug, Default)]
struct DeviceSeen {
    last_seen: Option<Timestamp>,
    offline: bool,
    battery_low: bool,
}

/// The engine. Feed it [`Input`]s in order; commit the [`Effect`]s it returns in order.
#[derive(Debug)]
pub struct Engine {
    policy: Policy,
    devices: HashMap<String, DeviceInfo>,
    seen: HashMap<String, DeviceSeen>,
    open: HashMap<EntityId, Open>,
    by_source: HashMap<(IncidentKind, String), EntityId>,
    /// Cameras offline since then, not yet raised.
    cameras_down: HashMap<String, Timestamp>,
}

impl Engine {
    /// `devices` are the configured ones; supervision starts for each at `now`.
    pub fn new(policy: Policy, devices: HashMap<String, DeviceInfo>, now: Timestamp) -> Self {
        let seen = devices
            .keys()
            .map(|d| {
                (
                    d.clone(),
                    DeviceSeen {
                        last_seen: Some(now),
                        ..Default::default()
                    },
                )
            })
            .collect();
        Engine {
            policy,
            devices,
            seen,
            open: HashMap::new(),
            by_source: HashMap::new(),
            cameras_down: HashMap::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Takes back an incident that was open when the service stopped, so that presses join it
    /// and escalation resumes where it was.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        id: EntityId,
        kind: IncidentKind,
        source: &str,
        priority: i64,
        state: IncidentState,
        condition: Condition,
        opened: Timestamp,
        last_signal: Timestamp,
        escalation: i64,
    ) {
        if state == IncidentState::Resolved {
            return;
        }
        let period = ms(self.policy.ack_timeout);
        let next_escalation = (kind.escalates() && state == IncidentState::Raised)
            .then(|| opened.saturating_add_millis(period * (escalation + 1)));
        let footage = matches!(
            kind,
            IncidentKind::Panic | IncidentKind::Tamper | IncidentKind::Test | IncidentKind::Motion
        )
        .then(|| {
            let from = Timestamp::from_millis(opened.as_millis() - ms(self.policy.pre_roll));
            let cap = from.saturating_add_millis(ms(self.policy.max_footage));
            (
                from,
                last_signal
                    .saturating_add_millis(ms(self.policy.post_roll))
                    .min(cap),
                cap,
            )
        });
        self.open.insert(
            id,
            Open {
                kind,
                source: source.to_owned(),
                priority,
                state,
                condition,
                last_signal,
                presses: VecDeque::from([last_signal]),
                boosted: priority < kind.base_priority(),
                escalation,
                next_escalation,
                footage,
                last_actor: None,
            },
        );
        self.by_source.insert((kind, source.to_owned()), id);
        if kind == IncidentKind::DeviceOffline && condition == Condition::Active {
            self.seen.entry(source.to_owned()).or_default().offline = true;
        }
        if kind == IncidentKind::LowBattery && condition == Condition::Active {
            self.seen.entry(source.to_owned()).or_default().battery_low = true;
        }
    }

    pub fn handle(&mut self, input: Input) -> Result<Vec<Effect>, ActionError> {
        let mut out = Vec::new();
        match input {
            Input::Press {
                signal,
                device,
                kind,
                at,
                battery,
            } => {
                self.device_alive(&device, at, &mut out);
                self.battery(&device, battery, at, &mut out);
                self.press(signal, &device, kind, at, &mut out);
            }
            Input::Heartbeat {
                device,
                at,
                battery,
            } => {
                self.device_alive(&device, at, &mut out);
                self.battery(&device, battery, at, &mut out);
            }
            Input::Status {
                device,
                online: true,
                at,
            } => self.device_alive(&device, at, &mut out),
            Input::Status {
                device,
                online: false,
                at,
            } => self.device_lost(&device, at, &mut out),
            Input::Act {
                incident,
                action,
                actor,
                note,
                at,
            } => self.act(incident, action, actor, note, at, &mut out)?,
            Input::Camera { camera, online, at } => self.camera(&camera, online, at, &mut out),
            Input::Motion { signal, camera, at } => {
                self.signal(signal, IncidentKind::Motion, &camera, at, &mut out)
            }
            Input::MotionEnded { camera, at } => {
                self.clear(IncidentKind::Motion, &camera, at, &mut out)
            }
            Input::Tick { now } => self.tick(now, &mut out),
        }
        Ok(out)
    }

    /// The next time a [`Input::Tick`] would change anything.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let supervision = self.supervision_ms();
        let esc = self.open.values().filter_map(|o| o.next_escalation);
        let footage = self.open.values().filter_map(|o| {
            let (_, to, cap) = o.footage?;
            (to < cap).then_some(to)
        });
        let offline = self
            .seen
            .values()
            .filter(|s| !s.offline)
            .filter_map(|s| s.last_seen.map(|t| t.saturating_add_millis(supervision)));
        let cameras = self.policy.camera_offline_after.and_then(|after| {
            let after = ms(after);
            self.cameras_down
                .values()
                .map(|t| t.saturating_add_millis(after))
                .min()
        });
        esc.chain(footage).chain(offline).chain(cameras).min()
    }

    /// Open incidents as (id, kind, state, priority), for inspection.
    pub fn open_incidents(&self) -> Vec<(EntityId, IncidentKind, IncidentState, i64)> {
        let mut v: Vec<_> = self
            .open
            .iter()
            .map(|(id, o)| (*id, o.kind, o.state, o.priority))
            .collect();
        v.sort_by_key(|(id, ..)| *id);
        v
    }

    fn supervision_ms(&self) -> i64 {
        ms(self.policy.heartbeat_interval) * i64::from(self.policy.missed_heartbeats)
    }

    fn title(&self, kind: IncidentKind, device: &str) -> String {
        let name = self
            .devices
            .get(device)
            .and_then(|d| d.name.clone())
            .unwrap_or_else(|| device.to_owned());
        match kind {
            IncidentKind::Panic => format!("一键报警 panic: {name}"),
            IncidentKind::Tamper => format!("防拆报警 tamper: {name}"),
            IncidentKind::Test => format!("测试 test press: {name}"),
            IncidentKind::DeviceOffline => format!("设备离线 device offline: {name}"),
            IncidentKind::LowBattery => format!("电量低 low battery: {name}"),
            IncidentKind::CameraOffline => format!("摄像机离线 camera offline: {device}"),
            IncidentKind::Motion => format!("移动侦测 motion: {device}"),
        }
    }

    fn raise(
        &mut self,
        kind: IncidentKind,
        source: &str,
        signal: Option<EntityId>,
        at: Timestamp,
        out: &mut Vec<Effect>,
    ) -> EntityId {
        let id = EntityId::new_at(at);
        let priority = kind.base_priority();
        let next_escalation = kind
            .escalates()
            .then(|| at.saturating_add_millis(ms(self.policy.ack_timeout)));
        out.push(Effect::Raised {
            incident: id,
            kind,
            source: source.to_owned(),
            priority,
            title: self.title(kind, source),
            signal,
            at,
        });
        let mut open = Open {
            kind,
            source: source.to_owned(),
            priority,
            state: IncidentState::Raised,
            condition: Condition::Active,
            last_signal: at,
            presses: VecDeque::from([at]),
            boosted: false,
            escalation: 0,
            next_escalation,
            footage: None,
            last_actor: None,
        };
        if matches!(
            kind,
            IncidentKind::Panic | IncidentKind::Tamper | IncidentKind::Test | IncidentKind::Motion
        ) {
            let from = Timestamp::from_millis(at.as_millis() - ms(self.policy.pre_roll));
            let cap = from.saturating_add_millis(ms(self.policy.max_footage));
            let to = at.saturating_add_millis(ms(self.policy.post_roll)).min(cap);
            for camera in self.footage_cameras(kind, source) {
                out.push(Effect::Footage {
                    incident: id,
                    camera,
                    from,
                    to,
                });
            }
            open.footage = Some((from, to, cap));
        }
        self.open.insert(id, open);
        self.by_source.insert((kind, source.to_owned()), id);
        id
    }

    fn press(
        &mut self,
        signal: EntityId,
        device: &str,
        kind: PressKind,
        at: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        self.signal(signal, IncidentKind::of_press(kind), device, at, out);
    }

    /// Cameras whose footage an incident of `kind` from `source` keeps.
    fn footage_cameras(&self, kind: IncidentKind, source: &str) -> Vec<String> {
        match kind {
            IncidentKind::Panic | IncidentKind::Tamper | IncidentKind::Test => self
                .devices
                .get(source)
                .map(|d| d.cameras.clone())
                .unwrap_or_default(),
            IncidentKind::Motion => vec![source.to_owned()],
            _ => Vec::new(),
        }
    }

    /// A press or a motion start: joins the source's open incident of that kind if it is
    /// recent enough, else raises one.
    fn signal(
        &mut self,
        signal: EntityId,
        kind: IncidentKind,
        device: &str,
        at: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let join = ms(self.policy.join_window);
        let existing = self
            .by_source
            .get(&(kind, device.to_owned()))
            .copied()
            .filter(|id| {
                self.open
                    .get(id)
                    .is_some_and(|o| at.as_millis() - o.last_signal.as_millis() <= join)
            });
        let Some(id) = existing else {
            self.raise(kind, device, Some(signal), at, out);
            return;
        };
        let burst = ms(self.policy.burst_window);
        let (burst_presses, post) = (self.policy.burst_presses, ms(self.policy.post_roll));
        let cameras = self.footage_cameras(kind, device);
        let o = self.open.get_mut(&id).expect("indexed incident is open");
        o.last_signal = o.last_signal.max(at);
        o.presses.push_back(at);
        while o
            .presses
            .front()
            .is_some_and(|t| at.as_millis() - t.as_millis() > burst)
        {
            o.presses.pop_front();
        }
        if !o.boosted && o.presses.len() >= burst_presses {
            o.boosted = true;
            o.priority = (o.priority - 1).max(1);
        }
        out.push(Effect::Joined {
            incident: id,
            signal,
            priority: o.priority,
            at,
        });
        if let Some((from, to, cap)) = o.footage {
            let new_to = at.saturating_add_millis(post).min(cap);
            if new_to > to {
                o.footage = Some((from, new_to, cap));
                for camera in cameras {
                    out.push(Effect::Footage {
                        incident: id,
                        camera,
                        from,
                        to: new_to,
                    });
                }
            }
        }
    }

    fn device_alive(&mut self, device: &str, at: Timestamp, out: &mut Vec<Effect>) {
        let s = self.seen.entry(device.to_owned()).or_default();
        s.last_seen = Some(s.last_seen.map_or(at, |t| t.max(at)));
        if s.offline {
            s.offline = false;
            self.clear(IncidentKind::DeviceOffline, device, at, out);
        }
    }

    /// A camera fault becomes an incident only once it has lasted the policy's time, so that a
    /// reconnect does not page anyone; its return clears the condition (the incident stays for
    /// a person to resolve).
    fn camera(&mut self, camera: &str, online: bool, at: Timestamp, out: &mut Vec<Effect>) {
        if online {
            self.cameras_down.remove(camera);
            self.clear(IncidentKind::CameraOffline, camera, at, out);
        } else if self.policy.camera_offline_after.is_some()
            && !self
                .by_source
                .get(&(IncidentKind::CameraOffline, camera.to_owned()))
                .and_then(|id| self.open.get(id))
                .is_some_and(|o| o.condition == Condition::Active)
        {
            self.cameras_down.entry(camera.to_owned()).or_insert(at);
        }
    }

    fn device_lost(&mut self, device: &str, at: Timestamp, out: &mut Vec<Effect>) {
        let s = self.seen.entry(device.to_owned()).or_default();
        if s.offline {
            return;
        }
        s.offline = true;
        match self
            .by_source
            .get(&(IncidentKind::DeviceOffline, device.to_owned()))
            .copied()
        {
            Some(id) => {
                if let Some(o) = self.open.get_mut(&id)
                    && o.condition == Condition::Cleared
                {
                    o.condition = Condition::Active;
                    out.push(Effect::ConditionRaised { incident: id, at });
                }
            }
            None => {
                self.raise(IncidentKind::DeviceOffline, device, None, at, out);
            }
        }
    }

    fn battery(&mut self, device: &str, battery: Option<u8>, at: Timestamp, out: &mut Vec<Effect>) {
        let Some(level) = battery else { return };
        let threshold = self.policy.low_battery_percent;
        let s = self.seen.entry(device.to_owned()).or_default();
        if level <= threshold && !s.battery_low {
            s.battery_low = true;
            if !self
                .by_source
                .contains_key(&(IncidentKind::LowBattery, device.to_owned()))
            {
                self.raise(IncidentKind::LowBattery, device, None, at, out);
            }
        } else if level > threshold.saturating_add(5) && s.battery_low {
            // A margin above the threshold keeps a battery hovering at it from flapping.
            s.battery_low = false;
            self.clear(IncidentKind::LowBattery, device, at, out);
        }
    }

    /// Clears the condition of an open, non-latched incident.
    fn clear(&mut self, kind: IncidentKind, source: &str, at: Timestamp, out: &mut Vec<Effect>) {
        if let Some(id) = self.by_source.get(&(kind, source.to_owned()))
            && let Some(o) = self.open.get_mut(id)
            && o.condition == Condition::Active
        {
            o.condition = Condition::Cleared;
            out.push(Effect::ConditionCleared { incident: *id, at });
        }
    }

    fn act(
        &mut self,
        id: EntityId,
        action: Action,
        actor: String,
        note: Option<String>,
        at: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Result<(), ActionError> {
        let o = self.open.get_mut(&id).ok_or(ActionError::NotOpen(id))?;
        let from = o.state;
        let to = action.target();
        let allowed = matches!(
            (from, to),
            (IncidentState::Raised, _)
                | (
                    IncidentState::Acknowledged,
                    IncidentState::Dispatched | IncidentState::Resolved
                )
                | (IncidentState::Dispatched, IncidentState::Resolved)
        );
        if !allowed {
            return Err(ActionError::Illegal {
                action: action.verb(),
                state: from,
                by: o.last_actor.clone(),
            });
        }
        o.state = to;
        o.last_actor = Some(actor.clone());
        o.next_escalation = None;
        let outcome = match action {
            Action::Resolve(outcome) => Some(outcome),
            _ => None,
        };
        out.push(Effect::Transitioned {
            incident: id,
            from,
            to,
            outcome,
            actor,
            note,
            at,
        });
        if to == IncidentState::Resolved {
            let o = self.open.remove(&id).expect("present");
            self.by_source.remove(&(o.kind, o.source));
            if o.condition == Condition::Active
                && matches!(
                    o.kind,
                    IncidentKind::Panic | IncidentKind::Tamper | IncidentKind::Test
                )
            {
                // A latched press is over once a person says so.
                out.push(Effect::ConditionCleared { incident: id, at });
            }
            out.push(Effect::Released { incident: id, at });
        }
        Ok(())
    }

    fn tick(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let period = ms(self.policy.ack_timeout);
        let mut ids: Vec<EntityId> = self.open.keys().copied().collect();
        ids.sort();
        for id in &ids {
            let o = self.open.get_mut(id).expect("listed");
            while let Some(due) = o.next_escalation.filter(|d| *d <= now) {
                o.escalation += 1;
                o.next_escalation = Some(due.saturating_add_millis(period));
                out.push(Effect::Escalated {
                    incident: *id,
                    level: o.escalation,
                    at: due,
                });
            }
        }
        // Footage follows an open incident until the cap.
        let post = ms(self.policy.post_roll);
        for id in &ids {
            let o = self.open.get_mut(id).expect("listed");
            let Some((from, to, cap)) = o.footage else {
                continue;
            };
            if now >= to && to < cap {
                let new_to = now.saturating_add_millis(post).min(cap);
                o.footage = Some((from, new_to, cap));
                for camera in self
                    .devices
                    .get(&o.source)
                    .map(|d| d.cameras.clone())
                    .unwrap_or_default()
                {
                    out.push(Effect::Footage {
                        incident: *id,
                        camera,
                        from,
                        to: new_to,
                    });
                }
            }
        }
        let limit = self.supervision_ms();
        let mut silent: Vec<(String, Timestamp)> = self
            .seen
            .iter()
            .filter(|(_, s)| !s.offline)
            .filter_map(|(d, s)| {
                let due = s.last_seen?.saturating_add_millis(limit);
                (due <= now).then(|| (d.clone(), due))
            })
            .collect();
        silent.sort();
        for (device, due) in silent {
            self.device_lost(&device, due, out);
        }
        if let Some(after) = self.policy.camera_offline_after {
            let after = ms(after);
            let mut due: Vec<(String, Timestamp)> = self
                .cameras_down
                .iter()
                .map(|(c, t)| (c.clone(), t.saturating_add_millis(after)))
                .filter(|(_, t)| *t <= now)
                .collect();
            due.sort();
            for (camera, at) in due {
                self.cameras_down.remove(&camera);
                match self
                    .by_source
                    .get(&(IncidentKind::CameraOffline, camera.clone()))
                    .copied()
                {
                    // Down again while its last incident is still open: that incident is the one.
                    Some(id) => {
                        if let Some(o) = self.open.get_mut(&id) {
                            o.condition = Condition::Active;
                            out.push(Effect::ConditionRaised { incident: id, at });
                        }
                    }
                    None => {
                        self.raise(IncidentKind::CameraOffline, &camera, None, at, out);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

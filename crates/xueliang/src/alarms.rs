//! The alarm shell: device messages from the broker go through the pure engine, its effects
//! are committed to the store, and only then is the message acknowledged to the broker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use xueliang_alarm::{DeviceInfo, Effect, Engine, IncidentKind, Input, Policy, PressKind};
use xueliang_core::config::{AlarmsConfig, Config, MotionIncidents, MqttMode};
use xueliang_core::model::{CameraState, Condition, IncidentState, SignalSource};
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, EntityId, Error, ErrorKind, ResultExt, Timestamp};
use xueliang_mqtt::broker::{self, DeviceLogin};
use xueliang_mqtt::client::{self, ClientConfig, Delivery, DeviceLink};
use xueliang_mqtt::protocol::{AlarmType, DeviceMessage};
use xueliang_store::{
    AlarmCommit, CameraStateChange, DeviceStatus, EventRecord, Incident, IncidentChange,
    IncidentClip, IncidentUpdate, MotionRecord, NewIncident, Signal, SignalInsert, Store,
};

#[derive(Clone, Debug)]
struct Metrics {
    messages: IntCounterVec,
    rejected: IntCounterVec,
    incidents: IntCounterVec,
}

impl Metrics {
    fn register(r: &Registry) -> Result<Self, Error> {
        let new = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
                .err_kind(ErrorKind::Internal, || format!("define {name}"))
        };
        let m = Metrics {
            messages: new(
                "xueliang_mqtt_messages_total",
                "Device messages accepted, by kind",
                "kind",
            )?,
            rejected: new(
                "xueliang_mqtt_rejected_total",
                "Device messages refused, by reason",
                "reason",
            )?,
            incidents: new(
                "xueliang_alarm_incidents_total",
                "Incidents raised, by kind",
                "kind",
            )?,
        };
        for c in [&m.messages, &m.rejected, &m.incidents] {
            r.register(Box::new(c.clone()))
                .err_kind(ErrorKind::Internal, || "register alarm metrics".into())?;
        }
        Ok(m)
    }
}

type DeskRequest = (
    EntityId,
    xueliang_api::DeskAction,
    String,
    Option<String>,
    oneshot::Sender<Result<(), Error>>,
);

/// The API's way into the engine: requests queue behind device messages, in order.
#[derive(Debug)]
struct DeskHandle(mpsc::Sender<DeskRequest>);

#[async_trait::async_trait]
impl xueliang_api::AlarmDesk for DeskHandle {
    async fn act(
        &self,
        incident: EntityId,
        action: xueliang_api::DeskAction,
        actor: String,
        note: Option<String>,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((incident, action, actor, note, tx))
            .await
            .map_err(|_| Error::new(ErrorKind::Unavailable, "the alarm engine is stopping"))?;
        rx.await
            .map_err(|_| Error::new(ErrorKind::Unavailable, "the alarm engine is stopping"))?
    }
}

/// The running alarm pipeline.
pub struct Alarms {
    mqtt: JoinHandle<()>,
    handler: JoinHandle<()>,
    pub desk: Arc<dyn xueliang_api::AlarmDesk>,
}

impl std::fmt::Debug for Alarms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alarms")
    }
}

impl Alarms {
    pub async fn stop(self) {
        let _ = self.handler.await;
        let _ = self.mqtt.await;
    }
}

/// Starts the broker connection and the handler; `None` when this node takes no device messages.
pub fn start(
    cfg: &Config,
    store: Arc<dyn Store>,
    registry: &Registry,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
    wiring: Wiring,
) -> Result<Option<Alarms>, Error> {
    let metrics = Metrics::register(registry)?;
    let client_id = cfg
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("xueliang-{}", cfg.node.id));
    let mut ccfg = match cfg.mqtt.mode {
        MqttMode::External => {
            let url =
                cfg.mqtt.url.as_deref().ok_or_else(|| {
                    Error::new(ErrorKind::InvalidArgument, "mqtt.url is required")
                })?;
            let mut c = ClientConfig::from_url(url, client_id, cfg.node.id.clone())?;
            c.username = cfg.mqtt.username.clone();
            c.password = cfg.mqtt.password.as_ref().map(|p| p.expose().to_owned());
            c
        }
        MqttMode::Embedded => {
            let listen = cfg.mqtt.listen_addr();
            let logins: Vec<DeviceLogin> = cfg
                .devices
                .iter()
                .map(|d| DeviceLogin {
                    device_id: d.id.clone(),
                    username: d.username.clone(),
                    password: d.password.as_ref().map(|p| p.expose().to_owned()),
                })
                .collect();
            let b = broker::start(listen, &logins, &cfg.node.id)?;
            ClientConfig {
                host: b.connect.ip().to_string(),
                port: b.connect.port(),
                client_id,
                username: Some(b.username),
                password: Some(b.password),
                keepalive: Duration::from_secs(30),
                node_id: cfg.node.id.clone(),
            }
        }
    };
    ccfg.keepalive = Duration::from_secs(cfg.mqtt.keepalive_seconds.into());
    let devices: Arc<HashSet<String>> =
        Arc::new(cfg.devices.iter().map(|d| d.id.clone()).collect());
    let infos: HashMap<String, DeviceInfo> = cfg
        .devices
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                DeviceInfo {
                    name: d.name.clone(),
                    cameras: d.cameras.clone(),
                },
            )
        })
        .collect();
    let locations: HashMap<String, (f64, f64)> = cfg
        .devices
        .iter()
        .filter_map(|d| Some((d.id.clone(), (d.location?.lat, d.location?.lon))))
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let (link, mqtt) = client::start(ccfg, devices, tx, clock.clone(), shutdown.clone());
    let engine = Engine::new(policy(&cfg.alarms), infos, clock.now());
    let shell = Shell {
        store,
        link,
        clock,
        metrics,
        engine,
        node: cfg.node.id.clone(),
        locations,
        events: wiring.events,
        events_keep_ms: i64::from(cfg.alarms.events_keep_days) * 86_400_000,
        motion_policy: cfg
            .cameras
            .iter()
            .map(|c| (c.id.clone(), c.motion.incidents))
            .collect(),
        alarms_cfg: cfg.alarms.clone(),
        motion_ids: HashMap::new(),
        pending_motion: Vec::new(),
        boost: wiring.boost,
        outbound: wiring.outbound,
        cache: HashMap::new(),
    };
    let shutdown = shutdown.clone();
    let (desk_tx, desk_rx) = mpsc::channel(64);
    let cameras = wiring.cameras;
    let motion = wiring.motion;
    let handler = tokio::spawn(async move {
        let mut shell = shell;
        if let Err(e) = shell.restore().await {
            tracing::error!(err = %e.chain(), "cannot reload open incidents; new presses will open new ones");
        }
        shell.run(rx, desk_rx, cameras, motion, shutdown).await
    });
    Ok(Some(Alarms {
        mqtt,
        handler,
        desk: Arc::new(DeskHandle(desk_tx)),
    }))
}

/// Asks a camera's motion detector to analyse at full rate until then.
pub type Booster = Arc<dyn Fn(&str, Timestamp) + Send + Sync>;

/// What the alarm shell shares with the rest of the node.
pub struct Wiring {
    /// Called for each camera whose footage an alarm keeps.
    pub boost: Booster,
    /// What goes upstream (the outbox), written with each change.
    pub outbound: crate::bridge::Outbound,
    /// Bumped after every commit that wrote events (the API's event streams wait on it).
    pub events: Arc<watch::Sender<u64>>,
    /// Camera state changes from ingest, after they were stored.
    pub cameras: mpsc::UnboundedReceiver<CameraStateChange>,
    /// Motion detectors' events.
    pub motion: mpsc::UnboundedReceiver<MotionNotice>,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring").finish_non_exhaustive()
    }
}

/// Where a motion event is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MotionPhase {
    Start,
    Update,
    End,
}

/// A motion detector's event, in wall time.
#[derive(Clone, Debug)]
pub struct MotionNotice {
    pub camera: String,
    pub zone: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub score: f64,
    pub boxes: Vec<[f32; 4]>,
    pub phase: MotionPhase,
}

/// Whether motion at `at` raises an incident under `policy` (`night`: local hours from
/// `night_start_hour` to `night_end_hour`, which may wrap past midnight).
pub fn motion_raises(policy: MotionIncidents, at: Timestamp, a: &AlarmsConfig) -> bool {
    match policy {
        MotionIncidents::Off => false,
        MotionIncidents::Always => true,
        MotionIncidents::Night => {
            let minutes = at.as_millis().div_euclid(60_000) + i64::from(a.utc_offset_minutes);
            let hour = minutes.rem_euclid(1440) / 60;
            let (start, end) = (i64::from(a.night_start_hour), i64::from(a.night_end_hour));
            if start == end {
                true
            } else if start < end {
                (start..end).contains(&hour)
            } else {
                hour >= start || hour < end
            }
        }
    }
}

fn policy(a: &AlarmsConfig) -> Policy {
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    Policy {
        join_window: secs(a.join_seconds),
        burst_presses: a.burst_presses as usize,
        burst_window: secs(a.burst_seconds),
        ack_timeout: secs(a.ack_timeout_seconds),
        heartbeat_interval: secs(a.heartbeat_seconds),
        missed_heartbeats: a.missed_heartbeats,
        low_battery_percent: a.low_battery_percent,
        pre_roll: secs(a.footage_pre_seconds),
        post_roll: secs(a.footage_post_seconds),
        max_footage: secs(a.footage_max_seconds),
        camera_offline_after: (a.camera_offline_seconds > 0)
            .then(|| secs(a.camera_offline_seconds)),
    }
}

/// Device messages committed together at most: one transaction for their signals and one for
/// what the engine made of them, so a storm costs two fsyncs per batch, not several per press.
const MAX_BATCH: usize = 512;

/// The topic of Frigate-style change events for local integrations (Home Assistant).
pub const EVENTS_TOPIC: &str = "xueliang/v1/events";

struct Shell {
    store: Arc<dyn Store>,
    link: DeviceLink,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    engine: Engine,
    node: String,
    locations: HashMap<String, (f64, f64)>,
    events: Arc<watch::Sender<u64>>,
    events_keep_ms: i64,
    motion_policy: HashMap<String, MotionIncidents>,
    alarms_cfg: AlarmsConfig,
    /// Stored ids of motion events still going, by (camera, zone, start).
    motion_ids: HashMap<(String, String, Timestamp), EntityId>,
    /// Motion rows for the next commit.
    pending_motion: Vec<MotionRecord>,
    boost: Booster,
    outbound: crate::bridge::Outbound,
    /// Open incidents as this node last committed them: only this node changes its incidents
    /// (operator actions come through it too), so a batch need not read them back. Cleared
    /// whenever a commit fails.
    cache: HashMap<EntityId, Incident>,
}

/// Said after a commit: to a device on its ack topic, or to the log.
enum Notice {
    Device {
        device: String,
        incident: EntityId,
        state: &'static str,
    },
    Raised(Incident),
    Joined(Incident),
    Escalated(EntityId, i64),
    Moved {
        incident: EntityId,
        from: IncidentState,
        to: IncidentState,
        actor: String,
    },
}

/// A group commit being built: incidents as they stand after each effect.
#[derive(Default)]
struct Draft {
    commit: AlarmCommit,
    current: HashMap<EntityId, Incident>,
    /// As stored before this commit; `None` for incidents it creates.
    before: HashMap<EntityId, Option<Incident>>,
    order: Vec<EntityId>,
    notices: Vec<Notice>,
}

impl Shell {
    /// Hands the engine the incidents this node left open, so presses keep joining them.
    async fn restore(&mut self) -> Result<(), Error> {
        let open = self
            .store
            .list_incidents(&xueliang_store::IncidentFilter {
                open_only: true,
                limit: 10_000,
                ..Default::default()
            })
            .await?;
        let mut n = 0;
        for i in open.iter().filter(|i| i.node_id == self.node) {
            let Some(kind) = IncidentKind::parse(&i.kind) else {
                continue;
            };
            let last = self
                .store
                .incident_signals(i.id)
                .await?
                .iter()
                .map(|s| s.received_at)
                .max()
                .unwrap_or(i.updated_at);
            self.engine.restore(
                i.id,
                kind,
                &i.source_id,
                i.priority,
                i.state,
                i.condition,
                i.opened_at,
                last,
                i.escalation_level,
            );
            n += 1;
        }
        if n > 0 {
            tracing::info!(incidents = n, "open incidents reloaded");
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Delivery>,
        mut desk: mpsc::Receiver<DeskRequest>,
        mut cameras: mpsc::UnboundedReceiver<CameraStateChange>,
        mut motion: mpsc::UnboundedReceiver<MotionNotice>,
        shutdown: Shutdown,
    ) {
        let mut prune = tokio::time::interval(Duration::from_secs(3600));
        loop {
            let deadline = self.engine.next_deadline();
            let sleep = deadline.map(|d| {
                Duration::from_millis((d.as_millis() - self.clock.now().as_millis()).max(0) as u64)
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                d = rx.recv() => match d {
                    None => break,
                    Some(d) => {
                        let mut batch = vec![d];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(d) => batch.push(d),
                                Err(_) => break,
                            }
                        }
                        self.deliveries(batch, &shutdown).await;
                    }
                },
                Some((id, action, actor, note, reply)) = desk.recv() => {
                    let r = self.desk_action(id, action, actor, note).await;
                    let _ = reply.send(r);
                }
                Some(c) = cameras.recv() => {
                    let mut batch = vec![c];
                    while let Ok(c) = cameras.try_recv() {
                        batch.push(c);
                    }
                    self.cameras(batch, &shutdown).await;
                }
                Some(m) = motion.recv() => {
                    let mut batch = vec![m];
                    while let Ok(m) = motion.try_recv() {
                        batch.push(m);
                    }
                    self.motion(batch, &shutdown).await;
                }
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))) => {
                    let now = self.clock.now();
                    self.steps(vec![Input::Tick { now }], vec![], &shutdown).await;
                }
                _ = prune.tick() => {
                    let before = Timestamp::from_millis(self.clock.now().as_millis() - self.events_keep_ms);
                    match self.store.prune_events(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(events = n, "old events pruned"),
                        Err(e) => tracing::warn!(err = %e.chain(), "cannot prune old events"),
                    }
                }
            }
        }
    }

    /// Stores a batch of device messages, runs them through the engine, commits what it
    /// decided, and only then acknowledges them to the broker.
    async fn deliveries(&mut self, batch: Vec<Delivery>, shutdown: &Shutdown) {
        let mut accepted: Vec<(DeviceMessage, Delivery)> = Vec::with_capacity(batch.len());
        for d in batch {
            match &d.message {
                Err(r) => {
                    self.metrics
                        .rejected
                        .with_label_values(&[r.reason.as_str()])
                        .inc();
                    tracing::warn!(device = r.device.as_deref().unwrap_or("-"), topic = %d.topic, reason = r.reason.as_str(), detail = %r.detail, "device message refused");
                    let _ = self.link.ack(&d).await;
                }
                Ok(m) => accepted.push((m.clone(), d)),
            }
        }
        if accepted.is_empty() {
            return;
        }
        let now = self.clock.now();
        let mut statuses = Vec::with_capacity(accepted.len());
        let mut signals = Vec::new();
        for (m, d) in &accepted {
            let (device, online, battery, rssi) = match m {
                DeviceMessage::Alarm { device, alarm } => {
                    signals.push(Signal {
                        id: EntityId::new_at(now),
                        node_id: self.node.clone(),
                        source: SignalSource::Device,
                        source_id: device.clone(),
                        seq: Some(alarm.seq as i64),
                        kind: format!("{:?}", alarm.kind).to_lowercase(),
                        device_ts: Some(alarm.ts),
                        received_at: now,
                        payload: String::from_utf8_lossy(d.payload()).into_owned(),
                    });
                    (device, true, alarm.battery, None)
                }
                DeviceMessage::Heartbeat { device, heartbeat } => {
                    (device, true, heartbeat.battery, heartbeat.rssi)
                }
                DeviceMessage::Status { device, online } => (device, *online, None, None),
            };
            statuses.push(DeviceStatus {
                device_id: device.clone(),
                at: now,
                online: Some(online),
                battery: battery.map(i64::from),
                rssi: rssi.map(i64::from),
            });
        }
        let mut delay = Duration::from_millis(100);
        let inserted = loop {
            match self.store.ingest_device_batch(&statuses, &signals).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::error!(messages = accepted.len(), err = %e.chain(), retry_in_ms = delay.as_millis() as u64, "cannot store device messages; they stay unacknowledged");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut inputs = Vec::with_capacity(accepted.len());
        let mut pressed: HashSet<EntityId> = HashSet::new();
        let mut next_signal = 0;
        for (m, _) in &accepted {
            match m {
                DeviceMessage::Alarm { device, alarm } => {
                    self.metrics.messages.with_label_values(&["alarm"]).inc();
                    let i = next_signal;
                    next_signal += 1;
                    let signal = match &inserted[i] {
                        SignalInsert::Inserted => signals[i].id,
                        SignalInsert::Duplicate(first) => {
                            // Handled already (in this batch, or linked before)? Then ignore.
                            // Stored before a crash but never linked: finish the job.
                            let linked = pressed.contains(first)
                                || matches!(
                                    self.store.incident_of_signal(*first).await,
                                    Ok(Some(_))
                                );
                            if linked {
                                tracing::info!(device = %device, seq = alarm.seq, first = %first, "duplicate press ignored");
                                continue;
                            }
                            tracing::warn!(device = %device, seq = alarm.seq, signal = %first, "redelivered press was stored but not handled; handling it now");
                            *first
                        }
                    };
                    pressed.insert(signal);
                    inputs.push(Input::Press {
                        signal,
                        device: device.clone(),
                        kind: match alarm.kind {
                            AlarmType::Panic => PressKind::Panic,
                            AlarmType::Tamper => PressKind::Tamper,
                            AlarmType::Test => PressKind::Test,
                        },
                        at: now,
                        battery: alarm.battery,
                    });
                }
                DeviceMessage::Heartbeat { device, heartbeat } => {
                    self.metrics
                        .messages
                        .with_label_values(&["heartbeat"])
                        .inc();
                    inputs.push(Input::Heartbeat {
                        device: device.clone(),
                        at: now,
                        battery: heartbeat.battery,
                    });
                }
                DeviceMessage::Status { device, online } => {
                    self.metrics.messages.with_label_values(&["status"]).inc();
                    inputs.push(Input::Status {
                        device: device.clone(),
                        online: *online,
                        at: now,
                    });
                }
            }
        }
        if !self.steps(inputs, vec![], shutdown).await {
            // Not committed (stopping): leave the messages unacknowledged for redelivery.
            return;
        }
        for (_, d) in &accepted {
            if let Err(e) = self.link.ack(d).await {
                tracing::warn!(err = %e.chain(), "PUBACK not sent; the broker will deliver the message again");
            }
        }
    }

    /// Camera state changes: events for the stream, and online/offline for the engine.
    async fn cameras(&mut self, batch: Vec<CameraStateChange>, shutdown: &Shutdown) {
        let mut inputs = Vec::new();
        let mut events = Vec::new();
        for c in batch {
            let payload = serde_json::json!({
                "type": "camera",
                "camera": c.camera_id,
                "state": c.state.as_str(),
                "last_error": c.last_error,
                "at": c.at,
            });
            events.push(EventRecord {
                id: EntityId::new_ordered(self.clock.now()),
                node_id: self.node.clone(),
                at: c.at,
                topic: "camera".into(),
                subject: c.camera_id.clone(),
                payload: payload.to_string(),
            });
            let online = match c.state {
                CameraState::Online => true,
                CameraState::Offline => false,
                _ => continue,
            };
            inputs.push(Input::Camera {
                camera: c.camera_id,
                online,
                at: c.at,
            });
        }
        self.steps(inputs, events, shutdown).await;
    }

    /// Motion events: stored and streamed; those the camera's policy makes alarms also become
    /// signals for the engine.
    async fn motion(&mut self, batch: Vec<MotionNotice>, shutdown: &Shutdown) {
        let now = self.clock.now();
        let mut records = Vec::new();
        let mut events = Vec::new();
        let mut signals = Vec::new();
        let mut ends = Vec::new();
        for m in batch {
            let key = (m.camera.clone(), m.zone.clone(), m.start);
            let id = match m.phase {
                MotionPhase::End => self.motion_ids.remove(&key),
                _ => self.motion_ids.get(&key).copied(),
            };
            let id = id.unwrap_or_else(|| {
                let id = EntityId::new_at(m.start);
                if m.phase != MotionPhase::End {
                    self.motion_ids.insert(key, id);
                }
                id
            });
            let boxes = serde_json::to_string(&m.boxes).unwrap_or_else(|_| "[]".into());
            let record = MotionRecord {
                id,
                node_id: self.node.clone(),
                camera_id: m.camera.clone(),
                zone: m.zone.clone(),
                start: m.start,
                end: m.end,
                score: m.score,
                boxes,
            };
            if m.phase != MotionPhase::Update {
                events.push(EventRecord {
                    id: EntityId::new_ordered(now),
                    node_id: self.node.clone(),
                    at: now,
                    topic: "motion".into(),
                    subject: m.camera.clone(),
                    payload: serde_json::json!({
                        "type": if m.phase == MotionPhase::Start { "start" } else { "end" },
                        "motion": &record,
                    })
                    .to_string(),
                });
            }
            records.push(record);
            let policy = self
                .motion_policy
                .get(&m.camera)
                .copied()
                .unwrap_or(MotionIncidents::Off);
            match m.phase {
                MotionPhase::Start if motion_raises(policy, m.start, &self.alarms_cfg) => {
                    signals.push(Signal {
                        id: EntityId::new_at(now),
                        node_id: self.node.clone(),
                        source: SignalSource::Motion,
                        source_id: m.camera.clone(),
                        seq: None,
                        kind: "motion".into(),
                        device_ts: Some(m.start),
                        received_at: now,
                        payload:
                            serde_json::json!({"zone": m.zone, "score": m.score, "boxes": m.boxes})
                                .to_string(),
                    });
                }
                MotionPhase::End if policy != MotionIncidents::Off => {
                    ends.push((m.camera.clone(), m.end.unwrap_or(now)));
                }
                _ => {}
            }
        }
        if !signals.is_empty()
            && let Err(e) = self.store.ingest_device_batch(&[], &signals).await
        {
            tracing::error!(err = %e.chain(), "cannot store motion signals; no incident raised for them");
            signals.clear();
        }
        let mut inputs: Vec<Input> = signals
            .iter()
            .map(|s| Input::Motion {
                signal: s.id,
                camera: s.source_id.clone(),
                at: now,
            })
            .collect();
        inputs.extend(
            ends.into_iter()
                .map(|(camera, at)| Input::MotionEnded { camera, at }),
        );
        self.pending_motion = records;
        self.steps(inputs, events, shutdown).await;
    }

    /// Runs inputs through the engine and commits the effects (with `extra` events), retrying
    /// while the store is unavailable. `false` when stopping before the commit.
    async fn steps(
        &mut self,
        inputs: Vec<Input>,
        extra: Vec<EventRecord>,
        shutdown: &Shutdown,
    ) -> bool {
        let mut effects = Vec::new();
        for input in inputs {
            match self.engine.handle(input) {
                Ok(fx) => effects.extend(fx),
                Err(e) => tracing::warn!(err = %e, "alarm engine refused an input"),
            }
        }
        if effects.is_empty() && extra.is_empty() && self.pending_motion.is_empty() {
            return true;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.commit(&effects, &extra).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(effects = effects.len(), err = %e.chain(), retry_in_ms = delay.as_millis() as u64, "alarm changes not stored yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn desk_action(
        &mut self,
        id: EntityId,
        action: xueliang_api::DeskAction,
        actor: String,
        note: Option<String>,
    ) -> Result<(), Error> {
        let action = match action {
            xueliang_api::DeskAction::Acknowledge => xueliang_alarm::Action::Acknowledge,
            xueliang_api::DeskAction::Dispatch => xueliang_alarm::Action::Dispatch,
            xueliang_api::DeskAction::Resolve(o) => xueliang_alarm::Action::Resolve(o),
        };
        let at = self.clock.now();
        match self.engine.handle(Input::Act {
            incident: id,
            action,
            actor,
            note,
            at,
        }) {
            Ok(effects) => {
                // A person waits on this: a few tries, then the error goes back to them.
                let mut last = None;
                for attempt in 0..3u32 {
                    match self.commit(&effects, &[]).await {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            tracing::warn!(incident = %id, attempt, err = %e.chain(), "operator action not stored yet");
                            last = Some(e);
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                    }
                }
                Err(last.unwrap_or_else(|| Error::new(ErrorKind::Internal, "no attempt made")))
            }
            Err(xueliang_alarm::ActionError::NotOpen(_)) => {
                match self.store.get_incident(id).await? {
                    None => Err(Error::new(ErrorKind::NotFound, format!("no alarm {id}"))),
                    Some(i) if i.state == IncidentState::Resolved => Err(Error::new(
                        ErrorKind::FailedPrecondition,
                        format!("alarm {id} is already resolved"),
                    )),
                    Some(i) => Err(Error::new(
                        ErrorKind::FailedPrecondition,
                        format!("alarm {id} is handled by node {}, not this one", i.node_id),
                    )),
                }
            }
            Err(e) => Err(Error::new(ErrorKind::FailedPrecondition, e.to_string())),
        }
    }

    /// Writes effects as one group commit, then announces them: the event stream, the MQTT
    /// events topic, the devices' ack topics and the log.
    async fn commit(&mut self, effects: &[Effect], extra: &[EventRecord]) -> Result<(), Error> {
        let mut draft = Draft::default();
        for fx in effects {
            self.draft(&mut draft, fx).await?;
        }
        let now = self.clock.now();
        let mut published = Vec::new();
        for id in &draft.order {
            let after = &draft.current[id];
            let before = draft.before.get(id).cloned().flatten();
            let kind = match (&before, after.state) {
                (None, _) => "new",
                (_, IncidentState::Resolved) => "end",
                _ => "update",
            };
            let payload =
                serde_json::json!({"type": kind, "before": before, "after": after}).to_string();
            published.push(payload.clone());
            let event_id = EntityId::new_ordered(now);
            let upstream = self.outbound.entries(event_id, after, kind, now);
            if !upstream.is_empty() {
                // In the transaction of the change itself, on its incident's row.
                if let Some(c) = draft
                    .commit
                    .creates
                    .iter_mut()
                    .find(|c| c.incident.id == *id)
                {
                    c.outbox.extend(upstream);
                } else if let Some(u) = draft.commit.updates.iter_mut().rev().find(|u| u.id == *id)
                {
                    u.outbox.extend(upstream);
                }
            }
            draft.commit.events.push(EventRecord {
                id: event_id,
                node_id: self.node.clone(),
                at: now,
                topic: "alarm".into(),
                subject: id.to_string(),
                payload,
            });
        }
        draft.commit.events.extend(extra.iter().cloned());
        draft.commit.motion = self.pending_motion.clone();
        if draft.commit.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.commit_alarms(&draft.commit).await {
            self.cache.clear();
            return Err(e);
        }
        self.pending_motion.clear();
        if !draft.order.is_empty() {
            self.outbound.wake();
        }
        for id in &draft.order {
            let i = &draft.current[id];
            if i.state == IncidentState::Resolved {
                self.cache.remove(id);
            } else {
                self.cache.insert(*id, i.clone());
            }
        }
        if !draft.commit.events.is_empty() {
            self.events.send_modify(|n| *n = n.wrapping_add(1));
        }
        for payload in published {
            if let Err(e) = self
                .link
                .publish_event(EVENTS_TOPIC, payload.into_bytes())
                .await
            {
                tracing::warn!(err = %e.chain(), "cannot publish an alarm event");
            }
        }
        for n in draft.notices {
            match n {
                Notice::Device {
                    device,
                    incident,
                    state,
                } => self.tell_device(&device, incident, state).await,
                Notice::Raised(i) => {
                    self.metrics.incidents.with_label_values(&[&i.kind]).inc();
                    tracing::warn!(incident = %i.id, kind = %i.kind, source = %i.source_id, priority = i.priority, title = %i.title, "incident raised");
                }
                Notice::Joined(i) => {
                    tracing::info!(incident = %i.id, presses = i.signal_count, priority = i.priority, "press joined an open incident");
                }
                Notice::Escalated(id, level) => {
                    tracing::warn!(incident = %id, level, "incident not acknowledged in time: escalated");
                }
                Notice::Moved {
                    incident,
                    from,
                    to,
                    actor,
                } => {
                    tracing::info!(incident = %incident, from = from.as_str(), to = to.as_str(), actor = %actor, "incident moved on");
                }
            }
        }
        Ok(())
    }

    /// Adds one effect to the draft.
    async fn draft(&self, d: &mut Draft, fx: &Effect) -> Result<(), Error> {
        match fx {
            Effect::Raised {
                incident,
                kind,
                source,
                priority,
                title,
                signal,
                at,
            } => {
                let loc = self.locations.get(source).copied();
                let i = Incident {
                    id: *incident,
                    node_id: self.node.clone(),
                    kind: kind.as_str().into(),
                    source_id: source.clone(),
                    priority: *priority,
                    condition: Condition::Active,
                    state: IncidentState::Raised,
                    outcome: None,
                    title: title.clone(),
                    lat: loc.map(|l| l.0),
                    lon: loc.map(|l| l.1),
                    opened_at: *at,
                    updated_at: *at,
                    resolved_at: None,
                    escalation_level: 0,
                    signal_count: i64::from(signal.is_some()),
                    version: 1,
                };
                d.commit.creates.push(NewIncident {
                    incident: i.clone(),
                    change: IncidentChange {
                        id: EntityId::new_at(*at),
                        node_id: self.node.clone(),
                        incident_id: *incident,
                        at: *at,
                        actor: "system".into(),
                        from_state: None,
                        to_state: IncidentState::Raised,
                        outcome: None,
                        note: None,
                    },
                    signals: signal.iter().copied().collect(),
                    outbox: vec![],
                });
                if is_press(kind.as_str()) {
                    d.notices.push(Notice::Device {
                        device: source.clone(),
                        incident: *incident,
                        state: "received",
                    });
                }
                d.notices.push(Notice::Raised(i.clone()));
                d.before.insert(*incident, None);
                d.order.push(*incident);
                d.current.insert(*incident, i);
            }
            Effect::Joined {
                incident,
                signal,
                priority,
                at,
            } => {
                let i = self
                    .patch(d, *incident, *at, |u| {
                        u.add_signals.push(*signal);
                        u.priority = *priority;
                    })
                    .await?;
                d.notices.push(Notice::Device {
                    device: i.source_id.clone(),
                    incident: *incident,
                    state: "received",
                });
                d.notices.push(Notice::Joined(i));
            }
            Effect::Escalated {
                incident,
                level,
                at,
                ..
            } => {
                self.patch(d, *incident, *at, |u| u.escalation_level = *level)
                    .await?;
                d.notices.push(Notice::Escalated(*incident, *level));
            }
            Effect::ConditionCleared { incident, at } => {
                self.patch(d, *incident, *at, |u| u.condition = Condition::Cleared)
                    .await?;
            }
            Effect::ConditionRaised { incident, at } => {
                self.patch(d, *incident, *at, |u| u.condition = Condition::Active)
                    .await?;
            }
            Effect::Transitioned {
                incident,
                to,
                outcome,
                actor,
                note,
                at,
                from,
            } => {
                let node = self.node.clone();
                let i = self
                    .patch(d, *incident, *at, |u| {
                        u.state = *to;
                        u.outcome = *outcome;
                        u.change = Some(IncidentChange {
                            id: EntityId::new_at(*at),
                            node_id: node.clone(),
                            incident_id: *incident,
                            at: *at,
                            actor: actor.clone(),
                            from_state: Some(*from),
                            to_state: *to,
                            outcome: *outcome,
                            note: note.clone(),
                        });
                    })
                    .await?;
                if is_press(&i.kind) {
                    d.notices.push(Notice::Device {
                        device: i.source_id.clone(),
                        incident: *incident,
                        state: to.as_str(),
                    });
                }
                d.notices.push(Notice::Moved {
                    incident: *incident,
                    from: *from,
                    to: *to,
                    actor: actor.clone(),
                });
            }
            Effect::Footage {
                camera,
                from,
                to,
                incident,
            } => {
                // While the alarm's footage runs, that camera's motion is analysed at full rate.
                (self.boost)(camera, *to);
                d.commit.clips.push(IncidentClip {
                    incident_id: *incident,
                    camera_id: camera.clone(),
                    from: *from,
                    to: *to,
                });
            }
            // Retention keeps a resolved incident's clips for the hold on its own (the store
            // compares their incident's resolution time), so there is nothing to write.
            Effect::Released { .. } => {}
        }
        Ok(())
    }

    /// Adds an update of `id` to the draft, chained on the draft's version of it.
    async fn patch(
        &self,
        d: &mut Draft,
        id: EntityId,
        at: Timestamp,
        f: impl FnOnce(&mut IncidentUpdate),
    ) -> Result<Incident, Error> {
        let cur = match d.current.get(&id) {
            Some(c) => c.clone(),
            None => {
                let c = match self.cache.get(&id) {
                    Some(c) => c.clone(),
                    None => self.store.get_incident(id).await?.ok_or_else(|| {
                        Error::new(ErrorKind::NotFound, format!("incident {id} is not stored"))
                    })?,
                };
                d.before.insert(id, Some(c.clone()));
                d.order.push(id);
                c
            }
        };
        let mut u = IncidentUpdate {
            id,
            expected_version: cur.version,
            at,
            state: cur.state,
            condition: cur.condition,
            outcome: cur.outcome,
            priority: cur.priority,
            escalation_level: cur.escalation_level,
            add_signals: vec![],
            change: None,
            outbox: vec![],
        };
        f(&mut u);
        // The row as the store's UPDATE will leave it.
        let mut next = cur;
        next.state = u.state;
        next.condition = u.condition;
        next.outcome = u.outcome;
        next.priority = u.priority;
        next.escalation_level = u.escalation_level;
        next.updated_at = at;
        next.resolved_at = if u.state == IncidentState::Resolved {
            next.resolved_at.or(Some(at))
        } else {
            None
        };
        next.signal_count += u.add_signals.len() as i64;
        // Back-to-back changes of one incident without a history row (presses joining,
        // escalation, condition) go out as one UPDATE: a storm then costs a statement per
        // incident and batch, not per press.
        match d.commit.updates.last_mut() {
            Some(last) if last.id == id && u.change.is_none() => {
                last.at = u.at;
                last.state = u.state;
                last.condition = u.condition;
                last.outcome = u.outcome;
                last.priority = u.priority;
                last.escalation_level = u.escalation_level;
                last.add_signals.extend(u.add_signals);
                last.outbox.extend(u.outbox);
            }
            _ => {
                next.version += 1;
                d.commit.updates.push(u);
            }
        }
        d.current.insert(id, next.clone());
        Ok(next)
    }

    async fn tell_device(&self, device: &str, incident: EntityId, state: &str) {
        if let Err(e) = self
            .link
            .publish_ack(device, &incident.to_string(), state)
            .await
        {
            tracing::warn!(device = %device, err = %e.chain(), "cannot send the device its acknowledgement");
        }
    }
}

fn is_press(kind: &str) -> bool {
    matches!(kind, "panic" | "tamper" | "test")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hour_local: i64, minute: i64) -> Timestamp {
        // 2026-11-25 00:00 local (UTC+8) is 2026-11-24 16:00 UTC.
        let midnight_local_utc_ms = 1_795_564_800_000 - 8 * 3_600_000;
        Timestamp::from_millis(midnight_local_utc_ms + (hour_local * 60 + minute) * 60_000)
    }

    #[test]
    fn night_policy_follows_local_hours_across_midnight() {
        let a = AlarmsConfig::default();
        assert!(motion_raises(MotionIncidents::Always, at(12, 0), &a));
        assert!(!motion_raises(MotionIncidents::Off, at(23, 0), &a));
        assert!(motion_raises(MotionIncidents::Night, at(23, 0), &a));
        assert!(motion_raises(MotionIncidents::Night, at(19, 0), &a));
        assert!(motion_raises(MotionIncidents::Night, at(3, 30), &a));
        assert!(motion_raises(MotionIncidents::Night, at(6, 59), &a));
        assert!(!motion_raises(MotionIncidents::Night, at(7, 0), &a));
        assert!(!motion_raises(MotionIncidents::Night, at(12, 0), &a));
        assert!(!motion_raises(MotionIncidents::Night, at(18, 59), &a));
        let day_shift = AlarmsConfig {
            night_start_hour: 1,
            night_end_hour: 5,
            utc_offset_minutes: 0,
            ..AlarmsConfig::default()
        };
        // Local 03:00 at UTC+8 is 19:00 UTC: outside 01-05 UTC.
        assert!(!motion_raises(MotionIncidents::Night, at(3, 0), &day_shift));
        assert!(motion_raises(MotionIncidents::Night, at(10, 0), &day_shift));
    }
}

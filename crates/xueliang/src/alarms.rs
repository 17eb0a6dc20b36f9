//! The alarm shell: device messages from the broker go through the pure engine, its effects
//! are committed to the store, and only then is the message acknowledged to the broker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use xueliang_alarm::{DeviceInfo, Effect, Engine, IncidentKind, Input, Policy, PressKind};
use xueliang_core::config::{Config, MqttMode};
use xueliang_core::model::{Condition, IncidentState, SignalSource};
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, EntityId, Error, ErrorKind, ResultExt, Timestamp};
use xueliang_mqtt::client::{self, ClientConfig, Delivery, DeviceLink};
use xueliang_mqtt::protocol::{AlarmType, DeviceMessage};
use xueliang_store::{
    DeviceStatus, Incident, IncidentChange, IncidentUpdate, NewIncident, Signal, SignalInsert,
    Store,
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
) -> Result<Option<Alarms>, Error> {
    let url = match (cfg.mqtt.mode, &cfg.mqtt.url) {
        (MqttMode::External, Some(u)) => u.clone(),
        (MqttMode::External, None) => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "mqtt.url is required",
            ));
        }
        (MqttMode::Embedded, _) => {
            tracing::warn!(
                "the embedded MQTT broker is not part of this build yet; panic buttons need mqtt.mode = \"external\""
            );
            return Ok(None);
        }
    };
    let metrics = Metrics::register(registry)?;
    let client_id = cfg
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("xueliang-{}", cfg.node.id));
    let mut ccfg = ClientConfig::from_url(&url, client_id, cfg.node.id.clone())?;
    ccfg.username = cfg.mqtt.username.clone();
    ccfg.password = cfg.mqtt.password.as_ref().map(|p| p.expose().to_owned());
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
    let engine = Engine::new(Policy::default(), infos, clock.now());
    let shell = Shell {
        store,
        link,
        clock,
        metrics,
        engine,
        node: cfg.node.id.clone(),
        locations,
    };
    let shutdown = shutdown.clone();
    let (desk_tx, desk_rx) = mpsc::channel(64);
    let handler = tokio::spawn(async move {
        let mut shell = shell;
        if let Err(e) = shell.restore().await {
            tracing::error!(err = %e.chain(), "cannot reload open incidents; new presses will open new ones");
        }
        shell.run(rx, desk_rx, shutdown).await
    });
    Ok(Some(Alarms {
        mqtt,
        handler,
        desk: Arc::new(DeskHandle(desk_tx)),
    }))
}

struct Shell {
    store: Arc<dyn Store>,
    link: DeviceLink,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    engine: Engine,
    node: String,
    locations: HashMap<String, (f64, f64)>,
}

/// Far enough ahead to mean "while the incident is open".
const PIN_OPEN: Timestamp = Timestamp::from_millis(i64::MAX / 4);

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
        shutdown: Shutdown,
    ) {
        loop {
            let deadline = self.engine.next_deadline();
            let sleep = deadline.map(|d| {
                Duration::from_millis((d.as_millis() - self.clock.now().as_millis()).max(0) as u64)
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                d = rx.recv() => match d {
                    None => break,
                    Some(d) => self.delivery(d, &shutdown).await,
                },
                Some((id, action, actor, note, reply)) = desk.recv() => {
                    let r = self.desk_action(id, action, actor, note).await;
                    let _ = reply.send(r);
                }
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))) => {
                    let now = self.clock.now();
                    self.input(Input::Tick { now }, &shutdown).await;
                }
            }
        }
    }

    /// Commits a delivery, retrying while the store is unavailable, then acknowledges it.
    async fn delivery(&mut self, d: Delivery, shutdown: &Shutdown) {
        let msg = match &d.message {
            Err(r) => {
                self.metrics
                    .rejected
                    .with_label_values(&[r.reason.as_str()])
                    .inc();
                tracing::warn!(device = r.device.as_deref().unwrap_or("-"), topic = %d.topic, reason = r.reason.as_str(), detail = %r.detail, "device message refused");
                let _ = self.link.ack(&d).await;
                return;
            }
            Ok(m) => m.clone(),
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match self.commit(&msg, &d, shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(topic = %d.topic, err = %e.chain(), retry_in_ms = delay.as_millis() as u64, "cannot store a device message; it stays unacknowledged");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Err(e) = self.link.ack(&d).await {
            tracing::warn!(err = %e.chain(), "PUBACK not sent; the broker will deliver the message again");
        }
    }

    async fn commit(
        &mut self,
        msg: &DeviceMessage,
        d: &Delivery,
        shutdown: &Shutdown,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        match msg {
            DeviceMessage::Alarm { device, alarm } => {
                self.metrics.messages.with_label_values(&["alarm"]).inc();
                let kind = match alarm.kind {
                    AlarmType::Panic => PressKind::Panic,
                    AlarmType::Tamper => PressKind::Tamper,
                    AlarmType::Test => PressKind::Test,
                };
                let signal = Signal {
                    id: EntityId::new_at(now),
                    node_id: self.node.clone(),
                    source: SignalSource::Device,
                    source_id: device.clone(),
                    seq: Some(alarm.seq as i64),
                    kind: format!("{:?}", alarm.kind).to_lowercase(),
                    device_ts: Some(alarm.ts),
                    received_at: now,
                    payload: String::from_utf8_lossy(d.payload()).into_owned(),
                };
                self.store
                    .record_device_status(&DeviceStatus {
                        device_id: device.clone(),
                        at: now,
                        online: Some(true),
                        battery: alarm.battery.map(i64::from),
                        rssi: None,
                    })
                    .await?;
                match self.store.insert_signal(&signal).await? {
                    SignalInsert::Duplicate(first)
                        if self.store.incident_of_signal(first).await?.is_some() =>
                    {
                        tracing::info!(device = %device, seq = alarm.seq, first = %first, "duplicate press ignored");
                        Ok(())
                    }
                    SignalInsert::Duplicate(first) => {
                        // Stored before a crash but never joined to an incident: finish the job.
                        tracing::warn!(device = %device, seq = alarm.seq, signal = %first, "redelivered press was stored but not handled; handling it now");
                        let input = Input::Press {
                            signal: first,
                            device: device.clone(),
                            kind,
                            at: now,
                            battery: alarm.battery,
                        };
                        self.input_checked(input, shutdown).await
                    }
                    SignalInsert::Inserted => {
                        let input = Input::Press {
                            signal: signal.id,
                            device: device.clone(),
                            kind,
                            at: now,
                            battery: alarm.battery,
                        };
                        self.input_checked(input, shutdown).await
                    }
                }
            }
            DeviceMessage::Heartbeat { device, heartbeat } => {
                self.metrics
                    .messages
                    .with_label_values(&["heartbeat"])
                    .inc();
                self.store
                    .record_device_status(&DeviceStatus {
                        device_id: device.clone(),
                        at: now,
                        online: Some(true),
                        battery: heartbeat.battery.map(i64::from),
                        rssi: heartbeat.rssi.map(i64::from),
                    })
                    .await?;
                self.input_checked(
                    Input::Heartbeat {
                        device: device.clone(),
                        at: now,
                        battery: heartbeat.battery,
                    },
                    shutdown,
                )
                .await
            }
            DeviceMessage::Status { device, online } => {
                self.metrics.messages.with_label_values(&["status"]).inc();
                self.store
                    .record_device_status(&DeviceStatus {
                        device_id: device.clone(),
                        at: now,
                        online: Some(*online),
                        battery: None,
                        rssi: None,
                    })
                    .await?;
                self.input_checked(
                    Input::Status {
                        device: device.clone(),
                        online: *online,
                        at: now,
                    },
                    shutdown,
                )
                .await
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
                for fx in effects {
                    self.apply(fx).await?;
                }
                Ok(())
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

    async fn input(&mut self, input: Input, shutdown: &Shutdown) {
        if let Err(e) = self.input_checked(input, shutdown).await {
            tracing::error!(err = %e.chain(), "alarm engine step not stored");
        }
    }

    async fn input_checked(&mut self, input: Input, _shutdown: &Shutdown) -> Result<(), Error> {
        let effects = self
            .engine
            .handle(input)
            .map_err(|e| Error::new(ErrorKind::FailedPrecondition, e.to_string()))?;
        for fx in effects {
            self.apply(fx).await?;
        }
        Ok(())
    }

    async fn update(
        &self,
        id: EntityId,
        f: impl Fn(&Incident, &mut IncidentUpdate),
    ) -> Result<Incident, Error> {
        // The store's version check guards against another node; reread and retry once.
        for _ in 0..3 {
            let cur = self.store.get_incident(id).await?.ok_or_else(|| {
                Error::new(ErrorKind::NotFound, format!("incident {id} is not stored"))
            })?;
            let mut u = IncidentUpdate {
                id,
                expected_version: cur.version,
                at: self.clock.now(),
                state: cur.state,
                condition: cur.condition,
                outcome: cur.outcome,
                priority: cur.priority,
                escalation_level: cur.escalation_level,
                add_signals: vec![],
                change: None,
                outbox: vec![],
            };
            f(&cur, &mut u);
            match self.store.update_incident(&u).await {
                Err(e) if e.kind() == ErrorKind::FailedPrecondition => continue,
                r => return r,
            }
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            format!("incident {id} keeps changing under us"),
        ))
    }

    async fn apply(&mut self, fx: Effect) -> Result<(), Error> {
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
                let loc = self.locations.get(&source).copied();
                self.store
                    .create_incident(&NewIncident {
                        incident: Incident {
                            id: incident,
                            node_id: self.node.clone(),
                            kind: kind.as_str().into(),
                            source_id: source.clone(),
                            priority,
                            condition: Condition::Active,
                            state: IncidentState::Raised,
                            outcome: None,
                            title: title.clone(),
                            lat: loc.map(|l| l.0),
                            lon: loc.map(|l| l.1),
                            opened_at: at,
                            updated_at: at,
                            resolved_at: None,
                            escalation_level: 0,
                            signal_count: i64::from(signal.is_some()),
                            version: 1,
                        },
                        change: IncidentChange {
                            id: EntityId::new_at(at),
                            node_id: self.node.clone(),
                            incident_id: incident,
                            at,
                            actor: "system".into(),
                            from_state: None,
                            to_state: IncidentState::Raised,
                            outcome: None,
                            note: None,
                        },
                        signals: signal.into_iter().collect(),
                        outbox: vec![],
                    })
                    .await?;
                self.metrics
                    .incidents
                    .with_label_values(&[kind.as_str()])
                    .inc();
                tracing::warn!(incident = %incident, kind = kind.as_str(), device = %source, priority, title = %title, "incident raised");
                if matches!(
                    kind,
                    IncidentKind::Panic | IncidentKind::Tamper | IncidentKind::Test
                ) {
                    self.tell_device(&source, incident, "received").await;
                }
            }
            Effect::Joined {
                incident,
                signal,
                priority,
                ..
            } => {
                let inc = self
                    .update(incident, |_, u| {
                        u.add_signals = vec![signal];
                        u.priority = priority;
                    })
                    .await?;
                tracing::info!(incident = %incident, presses = inc.signal_count, priority, "press joined an open incident");
                self.tell_device(&inc.source_id, incident, "received").await;
            }
            Effect::Escalated {
                incident, level, ..
            } => {
                self.update(incident, |_, u| u.escalation_level = level)
                    .await?;
                tracing::warn!(incident = %incident, level, "incident not acknowledged in time: escalated");
            }
            Effect::ConditionCleared { incident, .. } => {
                self.update(incident, |_, u| u.condition = Condition::Cleared)
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
                let inc = self
                    .update(incident, |_, u| {
                        u.state = to;
                        u.outcome = outcome;
                        u.change = Some(IncidentChange {
                            id: EntityId::new_at(at),
                            node_id: self.node.clone(),
                            incident_id: incident,
                            at,
                            actor: actor.clone(),
                            from_state: Some(from),
                            to_state: to,
                            outcome,
                            note: note.clone(),
                        });
                    })
                    .await?;
                tracing::info!(incident = %incident, from = from.as_str(), to = to.as_str(), actor = %actor, "incident moved on");
                if matches!(inc.kind.as_str(), "panic" | "tamper" | "test") {
                    self.tell_device(&inc.source_id, incident, to.as_str())
                        .await;
                }
            }
            Effect::Footage {
                camera,
                from,
                to,
                incident,
            } => {
                let n = self.store.pin_segments(&camera, from, to, PIN_OPEN).await?;
                tracing::debug!(incident = %incident, camera = %camera, segments = n, "footage pinned");
            }
            // Releasing pins after the hold needs per-incident pin records; pins stay meanwhile.
            Effect::Released { .. } => {}
        }
        Ok(())
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

//! The Skynet bridge as this node runs it: one outbox drainer per configured sink (the city's
//! MQTT broker, the GB/T 28181 upper platform), and the outbox entries the alarm shell writes in
//! the same transaction as each alarm change.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use xueliang_bridge::gb28181::{self, Catalog, Channel, ChannelKind, GbAlarmSink, alarm_method};
use xueliang_bridge::mqtt_uplink::{self, MqttUplink, UplinkConfig};
use xueliang_bridge::outbox::{DrainPolicy, Drainer, OutboxMetrics, Sink};
use xueliang_bridge::payload::{AlarmEventKind, alarm_entry};
use xueliang_core::config::{Charset, Config};
use xueliang_core::health::{HealthBoard, StreamKind};
use xueliang_core::model::CameraState;
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, EntityId, Error, ErrorKind, ResultExt, Timestamp};
use xueliang_store::{Incident, OutboxEntry, Store};

/// The name GB/T 28181 alarm entries are queued under.
pub const GB_SINK: &str = "gb28181";

/// Turns committed alarm changes into outbox entries for the configured sinks.
#[derive(Clone, Debug, Default)]
pub struct Outbound {
    node: String,
    mqtt: bool,
    gb: Option<GbIds>,
    /// Poked after a commit that queued entries.
    wake: Vec<Arc<Notify>>,
}

/// How catalog ids are made and alarms encoded for the upper platform.
#[derive(Clone, Debug)]
struct GbIds {
    /// The first ten digits of this node's id: its domain (centre code + industry code).
    prefix: String,
    cameras: Vec<String>,
    devices: Vec<String>,
    charset: Charset,
}

impl GbIds {
    /// A source's 20-digit channel id: the node's domain, the GB/T 28181 type (132 camera,
    /// 134 alarm input) and its 1-based position in the configuration as a 7-digit serial.
    fn channel(&self, source: &str) -> Option<String> {
        let (kind, pos) = if let Some(i) = self.cameras.iter().position(|c| c == source) {
            (ChannelKind::Camera, i)
        } else {
            (
                ChannelKind::AlarmInput,
                self.devices.iter().position(|d| d == source)?,
            )
        };
        Some(format!(
            "{}{:03}{:07}",
            self.prefix,
            kind.type_code(),
            pos + 1
        ))
    }
}

impl Outbound {
    /// Entries for one alarm change: every change to the MQTT uplink; a new panic, tamper or
    /// motion incident to the upper platform as an Alarm notification.
    pub fn entries(
        &self,
        event_id: EntityId,
        incident: &Incident,
        kind: &str,
        at: Timestamp,
    ) -> Vec<OutboxEntry> {
        let mut out = Vec::new();
        let kind_enum = match kind {
            "new" => AlarmEventKind::New,
            "end" => AlarmEventKind::End,
            _ => AlarmEventKind::Update,
        };
        if self.mqtt {
            out.push(alarm_entry(
                mqtt_uplink::SINK,
                &self.node,
                event_id,
                incident,
                kind_enum,
                at,
            ));
        }
        if let Some(gb) = &self.gb
            && kind_enum == AlarmEventKind::New
            && let Some(device) = gb.channel(&incident.source_id)
        {
            let (priority, method, alarm_type) = match incident.kind.as_str() {
                "panic" | "tamper" => (1, alarm_method::DEVICE, None),
                "motion" => (2, alarm_method::VIDEO, Some(2)),
                _ => return out,
            };
            // The SN is part of what the platform deduplicates on: fixed per event, so a
            // retransmit is the same message.
            let sn = u32::from_be_bytes(
                event_id.as_uuid().as_bytes()[12..16]
                    .try_into()
                    .unwrap_or([0; 4]),
            ) % 1_000_000_000;
            let time = chrono::DateTime::from_timestamp_millis(incident.opened_at.as_millis())
                .unwrap_or_default()
                .with_timezone(&gb28181::manscdp::china_standard_time());
            let body = gb28181::alarm_body(
                sn,
                &device,
                priority,
                method,
                alarm_type,
                time,
                incident.lat,
                incident.lon,
                &incident.title,
                gb.charset,
            );
            let mut e = alarm_entry(GB_SINK, &self.node, event_id, incident, kind_enum, at);
            e.payload = body;
            out.push(e);
        }
        out
    }

    pub fn wake(&self) {
        for w in &self.wake {
            w.notify_one();
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.mqtt && self.gb.is_none()
    }
}

/// The running bridge.
pub struct Bridge {
    tasks: Vec<JoinHandle<()>>,
    pub outbound: Outbound,
    /// Keeps the catalog the upper platform reads.
    _catalog: Option<watch::Sender<Catalog>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

impl Bridge {
    pub async fn stop(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// How often the GB/T 28181 catalog's on/off states are brought up to date.
const CATALOG_TRACK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// What a catalog channel stands for, in catalog order (cameras, then devices).
#[derive(Clone, Debug)]
enum Source {
    Camera { id: String, enabled: bool },
    Device(String),
}

/// Whether a channel is on: a camera while its main stream delivers frames, off once it
/// failed or when disabled (reconnecting keeps the last state, so a short reconnect is not
/// an OFF and ON for the city); a button as its last heartbeat or last will said. `None`:
/// nothing known, keep the state.
fn channel_online(
    source: &Source,
    health: &HealthBoard,
    devices: &HashMap<&str, Option<bool>>,
) -> Option<bool> {
    match source {
        Source::Camera { enabled: false, .. } => Some(false),
        Source::Camera { id, .. } => match health.get(id, StreamKind::Main)?.state {
            CameraState::Online => Some(true),
            CameraState::Offline => Some(false),
            CameraState::Connecting => None,
        },
        Source::Device(id) => devices.get(id.as_str()).copied().flatten(),
    }
}

/// Keeps the catalog the upper platform sees (its queries and its catalog subscription's
/// ON/OFF NOTIFYs) in step with the cameras' health and the buttons' status.
async fn track_catalog(
    tx: watch::Sender<Catalog>,
    sources: Vec<Source>,
    health: HealthBoard,
    store: Arc<dyn Store>,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CATALOG_TRACK_INTERVAL) => {}
        }
        let devices = match store.list_devices().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "catalog tracking: devices not read");
                continue;
            }
        };
        let by_id: HashMap<&str, Option<bool>> =
            devices.iter().map(|d| (d.id.as_str(), d.online)).collect();
        tx.send_if_modified(|cat| {
            let mut changed = false;
            for (ch, source) in cat.channels.iter_mut().zip(&sources) {
                if let Some(online) = channel_online(source, &health, &by_id)
                    && online != ch.online
                {
                    tracing::info!(channel = %ch.id, online, "gb28181 catalog channel changed");
                    ch.online = online;
                    changed = true;
                }
            }
            changed
        });
    }
}

/// Starts the configured sinks and their drainers (nothing when `[bridge]` is empty).
pub async fn start(
    cfg: &Config,
    store: Arc<dyn Store>,
    registry: &prometheus::Registry,
    clock: Arc<dyn Clock>,
    health: HealthBoard,
    shutdown: &Shutdown,
) -> Result<Bridge, Error> {
    let mut outbound = Outbound {
        node: cfg.node.id.clone(),
        ..Default::default()
    };
    let mut tasks = Vec::new();
    let mut catalog_tx = None;
    if cfg.bridge.mqtt.is_none() && cfg.bridge.gb28181.is_none() {
        return Ok(Bridge {
            tasks,
            outbound,
            _catalog: None,
        });
    }
    let metrics = OutboxMetrics::register(registry)?;
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(m) = &cfg.bridge.mqtt {
        let up = UplinkConfig::from_config(m, &cfg.node.id)?;
        let (uplink, task): (MqttUplink, _) = MqttUplink::start(up, shutdown.clone());
        tasks.push(task);
        sinks.push(Arc::new(uplink));
        outbound.mqtt = true;
    }
    if let Some(g) = &cfg.bridge.gb28181 {
        let pc = gb28181::PlatformConfig::from_config(g)
            .err_kind(ErrorKind::InvalidArgument, || "bridge.gb28181".into())?;
        let ids = GbIds {
            prefix: g.local_id.chars().take(10).collect(),
            cameras: cfg.cameras.iter().map(|c| c.id.clone()).collect(),
            devices: cfg.devices.iter().map(|d| d.id.clone()).collect(),
            charset: g.charset,
        };
        let mut channels = Vec::new();
        for c in &cfg.cameras {
            channels.push(Channel {
                id: ids.channel(&c.id).unwrap_or_default(),
                name: c.name.clone().unwrap_or_else(|| c.id.clone()),
                kind: ChannelKind::Camera,
                online: c.enabled,
                location: None,
                address: None,
            });
        }
        for d in &cfg.devices {
            channels.push(Channel {
                id: ids.channel(&d.id).unwrap_or_default(),
                name: d.name.clone().unwrap_or_else(|| d.id.clone()),
                kind: ChannelKind::AlarmInput,
                online: true,
                location: d.location.map(|l| (l.lat, l.lon)),
                address: None,
            });
        }
        let (tx, rx) = watch::channel(Catalog { channels });
        let (handle, task) = gb28181::spawn(pc, rx, shutdown.clone())
            .await
            .err_kind(ErrorKind::Unavailable, || {
                format!("bridge.gb28181: cannot start SIP on {}", g.local_listen)
            })?;
        tasks.push(task);
        let sources = cfg
            .cameras
            .iter()
            .map(|c| Source::Camera {
                id: c.id.clone(),
                enabled: c.enabled,
            })
            .chain(cfg.devices.iter().map(|d| Source::Device(d.id.clone())))
            .collect();
        tasks.push(tokio::spawn(track_catalog(
            tx.clone(),
            sources,
            health,
            store.clone(),
            shutdown.clone(),
        )));
        catalog_tx = Some(tx);
        sinks.push(Arc::new(GbAlarmSink::named(GB_SINK, handle)));
        outbound.gb = Some(ids);
    }
    for sink in sinks {
        let name = sink.name().to_owned();
        let drainer = Drainer::new(
            store.clone(),
            sink,
            DrainPolicy::default(),
            &metrics,
            clock.clone(),
        );
        outbound.wake.push(drainer.notifier());
        tracing::info!(sink = %name, "outbox drainer started");
        tasks.push(tokio::spawn(drainer.run(shutdown.clone())));
    }
    Ok(Bridge {
        tasks,
        outbound,
        _catalog: catalog_tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_stream_health_and_button_status() {
        let health = HealthBoard::new();
        let t = Timestamp::from_millis(1);
        let cam = |id: &str, enabled| Source::Camera {
            id: id.into(),
            enabled,
        };
        let devices: HashMap<&str, Option<bool>> = [
            ("btn-1", Some(false)),
            ("btn-2", Some(true)),
            ("btn-3", None),
        ]
        .into();
        // Nothing known yet, then connecting: keep what the catalog says.
        assert_eq!(channel_online(&cam("gate", true), &health, &devices), None);
        health.update("gate", StreamKind::Main, t, |_| {});
        assert_eq!(channel_online(&cam("gate", true), &health, &devices), None);
        health.update("gate", StreamKind::Main, t, |h| {
            h.state = CameraState::Online
        });
        assert_eq!(
            channel_online(&cam("gate", true), &health, &devices),
            Some(true)
        );
        // A sub stream's failure does not take the camera off.
        health.update("gate", StreamKind::Sub, t, |h| {
            h.state = CameraState::Offline
        });
        assert_eq!(
            channel_online(&cam("gate", true), &health, &devices),
            Some(true)
        );
        health.update("gate", StreamKind::Main, t, |h| {
            h.state = CameraState::Offline
        });
        assert_eq!(
            channel_online(&cam("gate", true), &health, &devices),
            Some(false)
        );
        assert_eq!(
            channel_online(&cam("yard", false), &health, &devices),
            Some(false)
        );
        let dev = |id: &str| channel_online(&Source::Device(id.into()), &health, &devices);
        assert_eq!(
            (dev("btn-1"), dev("btn-2"), dev("btn-3"), dev("btn-9")),
            (Some(false), Some(true), None, None)
        );
    }
}

//! The MQTT uplink: a [`Sink`] publishing outbox entries to the city's broker.
//!
//! Topics (with `topic_prefix` from `[bridge.mqtt]`, default `skynet/v1`):
//! * `{topic_prefix}/{node_id}/alarms` — every outbox payload unchanged (the JSON of
//!   [`crate::payload`]), QoS 1, not retained. Deduplicate by `event_id`.
//! * `{topic_prefix}/{node_id}/status` — `online`, retained; the last will says `offline`.
//!
//! The session is persistent (clean session off, stable client id `xueliang-uplink-{node}`
//! unless configured). A delivery counts only when the broker's PUBACK for that very publish
//! arrives. The outbox, not the MQTT session, is what survives: each connection gets a fresh
//! client, and whatever was unacknowledged when a connection dropped fails back to the drainer,
//! which sends it again with the same bytes. (Resuming rumqttc's own queue across reconnects
//! would make it impossible to tell which PUBACK belongs to which entry.)
//!
//! TLS: `mqtts://` (or `ssl://`, default port 8883) connects with rustls, TLS 1.2 or 1.3,
//! checking the broker's certificate against `ca_file` (else the system's roots) and the URL's
//! host name; `client_cert_file` and `client_key_file` answer a broker that asks for a client
//! certificate. A certificate the node does not trust fails the connection (retried with the
//! usual backoff, logged with rustls's reason); nothing is sent in the clear instead.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{oneshot, watch};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use xueliang_core::config::{BridgeMqttConfig, Secret};
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Error, ErrorKind, ResultExt};
use xueliang_store::OutboxEntry;

use crate::outbox::{DeliveryError, Sink};

/// The sink name outbox entries for the MQTT uplink carry.
pub const SINK: &str = "skynet-mqtt";

/// Where and how the uplink connects.
#[derive(Clone, Debug)]
pub struct UplinkConfig {
    /// Stored in `outbox.sink`; [`SINK`] unless several uplinks run.
    pub sink: String,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub node_id: String,
    pub topic_prefix: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keepalive: Duration,
    /// A publish without PUBACK after this fails (retryably).
    pub ack_timeout: Duration,
    /// Unacknowledged publishes at once; also the client's request queue.
    pub max_in_flight: u16,
    /// Larger payloads are refused for good (the broker would drop the connection).
    pub max_payload: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// TLS to the broker (`mqtts://`); `None` is plain TCP.
    pub tls: Option<Arc<ClientConfig>>,
}

impl UplinkConfig {
    /// Defaults for a broker at `host:port`.
    pub fn new(host: impl Into<String>, port: u16, node_id: impl Into<String>) -> Self {
        let node_id = node_id.into();
        UplinkConfig {
            sink: SINK.to_owned(),
            host: host.into(),
            port,
            client_id: format!("xueliang-uplink-{node_id}"),
            node_id,
            topic_prefix: "skynet/v1".to_owned(),
            username: None,
            password: None,
            keepalive: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            max_payload: 256 * 1024,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            tls: None,
        }
    }

    /// From a validated `[bridge.mqtt]` section (secrets already read from their files).
    pub fn from_config(cfg: &BridgeMqttConfig, node_id: &str) -> Result<Self, Error> {
        let u = url::Url::parse(&cfg.url).err_kind(ErrorKind::InvalidArgument, || {
            "bridge.mqtt.url is not a URL".into()
        })?;
        let tls = match u.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "bridge.mqtt.url: unsupported scheme {other:?}; expected mqtt:// or \
                         mqtts://"
                    ),
                ));
            }
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "bridge.mqtt.url has no host"))?;
        let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
        let mut c = UplinkConfig::new(host, port, node_id);
        if tls {
            c.tls = Some(Arc::new(client_tls(cfg)?));
        }
        c.topic_prefix = cfg.topic_prefix.clone();
        if let Some(id) = &cfg.client_id {
            c.client_id = id.clone();
        }
        c.username = cfg.username.clone();
        c.password = cfg.password.clone();
        Ok(c)
    }

    pub fn alarm_topic(&self) -> String {
        format!("{}/{}/alarms", self.topic_prefix, self.node_id)
    }

    pub fn status_topic(&self) -> String {
        format!("{}/{}/status", self.topic_prefix, self.node_id)
    }
}

/// The rustls client side for `[bridge.mqtt]`: roots from `ca_file` or the system, an
/// optional client certificate, TLS 1.2 and 1.3 on the ring provider.
fn client_tls(cfg: &BridgeMqttConfig) -> Result<ClientConfig, Error> {
    let invalid = |key: &str, file: &Path, e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("bridge.mqtt.{key} {}: {e}", file.display()),
        )
    };
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid("ca_file", file, &e))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(invalid("ca_file", file, &"no usable CA certificate in it"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "bridge.mqtt: mqtts:// without ca_file needs the system's CA \
                         certificates, and none were found ({} error(s)); install \
                         ca-certificates or set ca_file",
                        found.errors.len()
                    ),
                ));
            }
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("bridge.mqtt TLS: {e}")))?
        .with_root_certificates(roots);
    match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid("client_cert_file", cert_file, &e))?;
            if chain.is_empty() {
                return Err(invalid(
                    "client_cert_file",
                    cert_file,
                    &"no certificate in it",
                ));
            }
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| invalid("client_key_file", key_file, &e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "bridge.mqtt.client_cert_file and client_key_file do not make a TLS \
                         client: {e}"
                    ),
                )
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(Error::new(
            ErrorKind::InvalidArgument,
            "bridge.mqtt: client_cert_file and client_key_file go together",
        )),
    }
}

/// Publishes awaiting their PUBACK, for the current connection only.
#[derive(Debug, Default)]
struct Link {
    /// Set between CONNACK and the connection's end.
    client: Option<AsyncClient>,
    /// Publishes handed to the client, not yet given a packet id, in submission order. rumqttc
    /// assigns ids in that order and reports each as `Outgoing::Publish(pkid)`. `None` marks
    /// the uplink's own status message.
    unsent: VecDeque<Option<oneshot::Sender<()>>>,
    /// Packet id → waiter, until its PUBACK.
    inflight: HashMap<u16, Option<oneshot::Sender<()>>>,
}

impl Link {
    /// Ends a connection: dropping the waiters fails their deliveries (retryably).
    fn reset(&mut self) {
        self.client = None;
        self.unsent.clear();
        self.inflight.clear();
    }
}

/// The uplink's handle: a [`Sink`] whose connection task was started by
/// [`MqttUplink::start`].
#[derive(Clone, Debug)]
pub struct MqttUplink {
    cfg: Arc<UplinkConfig>,
    topic: String,
    link: Arc<Mutex<Link>>,
    /// `true` from CONNACK to the connection's end.
    up: watch::Receiver<bool>,
}

impl MqttUplink {
    /// Starts the connection task; it reconnects with jittered backoff until `shutdown`, then
    /// says `offline` and disconnects.
    pub fn start(
        cfg: UplinkConfig,
        shutdown: Shutdown,
    ) -> (MqttUplink, tokio::task::JoinHandle<()>) {
        let cfg = Arc::new(cfg);
        let link = Arc::new(Mutex::new(Link::default()));
        let (up_tx, up_rx) = watch::channel(false);
        let up = MqttUplink {
            topic: cfg.alarm_topic(),
            cfg: cfg.clone(),
            link: link.clone(),
            up: up_rx,
        };
        let span =
            tracing::info_span!("mqtt_uplink", sink = %cfg.sink, host = %cfg.host, port = cfg.port);
        let task = tokio::spawn(tracing::Instrument::instrument(
            connection_task(cfg, link, up_tx, shutdown),
            span,
        ));
        (up, task)
    }

    /// Whether a connection to the city broker is up now.
    pub fn is_connected(&self) -> bool {
        lock(&self.link).client.is_some()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

fn lock(link: &Mutex<Link>) -> std::sync::MutexGuard<'_, Link> {
    // The guarded data stays consistent at every unlock, so a panic elsewhere does not taint it.
    link.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Sink for MqttUplink {
    fn name(&self) -> &str {
        &self.cfg.sink
    }

    fn link(&self) -> Option<watch::Receiver<bool>> {
        Some(self.up.clone())
    }

    async fn deliver(&self, entry: &OutboxEntry) -> Result<(), DeliveryError> {
        if entry.payload.len() > self.cfg.max_payload {
            return Err(DeliveryError::permanent(format!(
                "payload of {} bytes exceeds the uplink's max_payload of {}",
                entry.payload.len(),
                self.cfg.max_payload
            )));
        }
        let rx = {
            let mut link = lock(&self.link);
            let Some(client) = link.client.as_ref() else {
                return Err(DeliveryError::retryable("city broker not connected"));
            };
            // Submitted and queued under one lock, so the queue order is the client's order.
            client
                .try_publish(
                    self.topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    entry.payload.clone(),
                )
                .map_err(|e| {
                    DeliveryError::retryable(format!("uplink request queue refused publish: {e}"))
                })?;
            let (tx, rx) = oneshot::channel();
            link.unsent.push_back(Some(tx));
            rx
        };
        match tokio::time::timeout(self.cfg.ack_timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(DeliveryError::retryable(
                "connection to the city broker ended before PUBACK",
            )),
            Err(_) => Err(DeliveryError::retryable(format!(
                "no PUBACK from the city broker within {} ms",
                self.cfg.ack_timeout.as_millis()
            ))),
        }
    }
}

fn mqtt_options(cfg: &UplinkConfig) -> MqttOptions {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    let max_packet = cfg.max_payload + 1024;
    opts.set_clean_session(false)
        .set_keep_alive(cfg.keepalive)
        .set_inflight(cfg.max_in_flight.max(1))
        .set_max_packet_size(max_packet, max_packet)
        .set_last_will(LastWill::new(
            cfg.status_topic(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(u) = &cfg.username {
        let p = cfg.password.as_ref().map(|p| p.expose().to_owned());
        opts.set_credentials(u.clone(), p.unwrap_or_default());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    opts
}

enum ConnectionEnd {
    Shutdown,
    Lost {
        connected: bool,
        err: rumqttc::ConnectionError,
    },
}

async fn connection_task(
    cfg: Arc<UplinkConfig>,
    link: Arc<Mutex<Link>>,
    up: watch::Sender<bool>,
    shutdown: Shutdown,
) {
    let opts = mqtt_options(&cfg);
    let mut failures = 0u32;
    loop {
        let (client, mut eventloop) =
            AsyncClient::new(opts.clone(), usize::from(cfg.max_in_flight.max(1)));
        let end = run_connection(&cfg, &link, &up, &client, &mut eventloop, &shutdown).await;
        lock(&link).reset();
        up.send_if_modified(|u| std::mem::replace(u, false));
        match end {
            ConnectionEnd::Shutdown => break,
            ConnectionEnd::Lost { connected, err } => {
                if connected {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                let cap = cfg
                    .reconnect_min
                    .saturating_mul(1u32 << failures.min(16))
                    .min(cfg.reconnect_max);
                let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
                let delay = Duration::from_millis(rand::random_range(cap_ms / 2..=cap_ms));
                tracing::warn!(
                    err = %err,
                    was_connected = connected,
                    retry_in_ms = delay.as_millis() as u64,
                    "city broker connection failed"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!("mqtt uplink stopped");
}

async fn run_connection(
    cfg: &UplinkConfig,
    link: &Mutex<Link>,
    up: &watch::Sender<bool>,
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    shutdown: &Shutdown,
) -> ConnectionEnd {
    let mut connected = false;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => {
                if connected {
                    goodbye(cfg, link, client, eventloop).await;
                }
                return ConnectionEnd::Shutdown;
            }
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                let mut l = lock(link);
                l.client = Some(client.clone());
                if client
                    .try_publish(cfg.status_topic(), QoS::AtLeastOnce, true, "online")
                    .is_ok()
                {
                    l.unsent.push_back(None);
                }
                drop(l);
                tracing::info!(
                    session_present = ack.session_present,
                    tls = cfg.tls.is_some(),
                    topic = %cfg.alarm_topic(),
                    "connected to the city broker"
                );
                up.send_replace(true);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut l = lock(link);
                match l.unsent.pop_front() {
                    Some(waiter) => {
                        if l.inflight.insert(pkid, waiter).is_some() {
                            // rumqttc holds a reused id back until its PUBACK; seeing it twice
                            // would be a bug there, so the older waiter just fails (retry).
                            tracing::warn!(pkid, "packet id reused before its PUBACK");
                        }
                    }
                    None => tracing::warn!(pkid, "publish with no waiter"),
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(Some(tx)) = lock(link).inflight.remove(&ack.pkid) {
                    let _ = tx.send(());
                }
            }
            Ok(_) => {}
            Err(err) => return ConnectionEnd::Lost { connected, err },
        }
    }
}

/// A clean goodbye: the broker sends no will then, so say `offline` ourselves.
async fn goodbye(
    cfg: &UplinkConfig,
    link: &Mutex<Link>,
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
) {
    {
        let mut l = lock(link);
        l.client = None;
        if client
            .try_publish(cfg.status_topic(), QoS::AtLeastOnce, true, "offline")
            .is_ok()
        {
            l.unsent.push_back(None);
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> BridgeMqttConfig {
        BridgeMqttConfig {
            url: url.into(),
            topic_prefix: "city/zigong".into(),
            client_id: None,
            username: Some("yantan".into()),
            password: Some(Secret::new("s3cret")),
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }

    #[test]
    fn config_maps_url_topics_and_client_id() {
        let c =
            UplinkConfig::from_config(&section("mqtt://city.example:11883"), "yantan-01").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("city.example", 11883));
        assert_eq!(c.client_id, "xueliang-uplink-yantan-01");
        assert_eq!(c.alarm_topic(), "city/zigong/yantan-01/alarms");
        assert_eq!(c.status_topic(), "city/zigong/yantan-01/status");
        assert_eq!(c.sink, SINK);
        assert!(!format!("{c:?}").contains("s3cret"), "no secrets in Debug");
        let d = UplinkConfig::from_config(&section("tcp://10.0.0.1"), "n").unwrap();
        assert_eq!(d.port, 1883);
    }

    #[test]
    fn tls_urls_take_port_8883_and_system_roots_or_the_ca_file() {
        for url in ["mqtts://city.example", "ssl://city.example"] {
            let c = UplinkConfig::from_config(&section(url), "n").unwrap();
            assert_eq!(c.port, 8883);
            assert!(c.tls.is_some(), "{url}");
        }
        let c = UplinkConfig::from_config(&section("mqtt://city.example"), "n").unwrap();
        assert!(c.tls.is_none());

        let mut s = section("mqtts://city.example:18883");
        s.ca_file = Some("/nonexistent/ca.pem".into());
        let e = UplinkConfig::from_config(&s, "n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.message()
                .contains("bridge.mqtt.ca_file /nonexistent/ca.pem"),
            "{e}"
        );
        let e = UplinkConfig::from_config(&section("http://x"), "n").unwrap_err();
        assert!(e.message().contains("unsupported scheme"), "{e}");
    }
}

//! The service's connection to the device broker (Mosquitto, EMQX).
//!
//! A persistent session (clean session off, stable client id) makes the broker keep QoS 1
//! presses published while the service was down; manual acks mean a press is acknowledged to
//! the broker only after the caller has committed it, so a crash between receipt and commit
//! gets it redelivered instead of lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, Error, ErrorKind, ResultExt};

use crate::protocol::{self, DeviceMessage, Reject};

/// Where and who to connect as.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: Duration,
    /// Announced on `xueliang/v1/nodes/{node_id}/status` (`online`, last will `offline`).
    pub node_id: String,
}

impl ClientConfig {
    /// From an `mqtt://host:port` URL.
    pub fn from_url(url: &str, client_id: String, node_id: String) -> Result<Self, Error> {
        let u = url::Url::parse(url).err_kind(ErrorKind::InvalidArgument, || {
            "mqtt.url is not a URL".into()
        })?;
        if !matches!(u.scheme(), "mqtt" | "tcp") {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "mqtt.url scheme {:?}: this build speaks plain MQTT (mqtt://) only",
                    u.scheme()
                ),
            ));
        }
        Ok(ClientConfig {
            host: u.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: u.port().unwrap_or(1883),
            client_id,
            username: None,
            password: None,
            keepalive: Duration::from_secs(30),
            node_id,
        })
    }
}

/// A message from a device, validated or refused, to be acknowledged with [`DeviceLink::ack`]
/// once handled.
#[derive(Debug)]
pub struct Delivery {
    pub topic: String,
    pub message: Result<DeviceMessage, Reject>,
    publish: Publish,
}

impl Delivery {
    pub fn payload(&self) -> &[u8] {
        &self.publish.payload
    }
}

/// Handle for acknowledging deliveries and publishing to devices.
#[derive(Clone, Debug)]
pub struct DeviceLink {
    client: AsyncClient,
}

impl DeviceLink {
    /// Acknowledges a delivery to the broker: it will not be delivered again.
    pub async fn ack(&self, d: &Delivery) -> Result<(), Error> {
        self.client
            .ack(&d.publish)
            .await
            .err_kind(ErrorKind::Unavailable, || "send PUBACK".into())
    }

    /// Publishes a change event for local integrations (QoS 0, not retained, as Frigate
    /// does: the store and the event stream are where nothing is lost; this is a notice).
    pub async fn publish_event(&self, topic: &str, body: Vec<u8>) -> Result<(), Error> {
        self.client
            .publish(topic, QoS::AtMostOnce, false, body)
            .await
            .err_kind(ErrorKind::Unavailable, || "publish event".into())
    }

    /// Tells a device what became of its alarm (`received`, `acknowledged`, ...).
    pub async fn publish_ack(
        &self,
        device: &str,
        alarm_id: &str,
        state: &str,
    ) -> Result<(), Error> {
        let body = serde_json::to_vec(&protocol::Ack { alarm_id, state })
            .err_kind(ErrorKind::Internal, || "encode ack".into())?;
        self.client
            .publish(protocol::ack_topic(device), QoS::AtLeastOnce, false, body)
            .await
            .err_kind(ErrorKind::Unavailable, || "publish device ack".into())
    }
}

fn node_topic(node: &str) -> String {
    format!("xueliang/v1/nodes/{node}/status")
}

/// Connects and returns the link plus a task that runs the connection until shutdown,
/// reconnecting with backoff, and sends every device message to `tx` in arrival order.
///
/// `tx` is unbounded on purpose: the event loop must never wait for the handler, because the
/// handler's acks travel through this same event loop (waiting would deadlock both). The queue
/// is bounded in practice by the broker, which sends at most its in-flight window of
/// unacknowledged QoS 1 messages.
pub fn start(
    cfg: ClientConfig,
    devices: Arc<HashSet<String>>,
    tx: mpsc::UnboundedSender<Delivery>,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) -> (DeviceLink, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(cfg.keepalive)
        .set_max_packet_size(protocol::MAX_PAYLOAD * 4, protocol::MAX_PAYLOAD * 4)
        .set_last_will(LastWill::new(
            node_topic(&cfg.node_id),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u.clone(), p.clone());
    }
    // Room for the acks and notices of a whole storm batch: the handler must not wait on this
    // queue while the event loop waits for in-flight publishes to be acknowledged.
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    // A PUBACK is a few bytes sent only after a commit; Nagle would hold it back until the
    // broker's delayed ACK fires, adding tens of milliseconds to every press.
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let link = DeviceLink {
        client: client.clone(),
    };
    let task = tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    tracing::info!(host = %cfg.host, port = cfg.port, session_present = ack.session_present, "connected to the device broker");
                    let topics = ["alarm", "heartbeat", "status"].map(|k| {
                        rumqttc::SubscribeFilter::new(
                            format!("{}+/{k}", protocol::PREFIX),
                            QoS::AtLeastOnce,
                        )
                    });
                    // Never await the request queue here: this task is the one that drains it,
                    // and a queue filled by the handler during a storm would block it for good.
                    if let Err(e) = client.try_subscribe_many(topics) {
                        tracing::error!(err = %e, "cannot subscribe to device topics");
                    }
                    let _ = client.try_publish(
                        node_topic(&cfg.node_id),
                        QoS::AtLeastOnce,
                        true,
                        "online",
                    );
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = p.topic.clone();
                    let message = protocol::parse(&topic, &p.payload, &devices, clock.now());
                    if tx
                        .send(Delivery {
                            topic,
                            message,
                            publish: p,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    let cap = 500u64.saturating_mul(1 << failures.min(6)).min(30_000);
                    let delay = Duration::from_millis(rand::random_range(cap / 2..=cap));
                    tracing::warn!(err = %e, retry_in_ms = delay.as_millis() as u64, "device broker connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // A clean goodbye: the broker publishes no will, so say offline ourselves.
        let _ = client.try_publish(node_topic(&cfg.node_id), QoS::AtLeastOnce, true, "offline");
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    });
    (link, task)
}

//! The embedded broker (rumqttd) an edge box runs when there is no Mosquitto: devices log in
//! with their configured credentials, the service's own client with a password made per start.
//!
//! rumqttd keeps sessions, retained messages and queued QoS 1 messages in memory only: they
//! survive a device's or the service client's reconnect, not a restart of the service. Devices
//! keep an unacknowledged press and publish it again when they reconnect, so nothing is lost,
//! but a site that needs presses queued across service restarts runs Mosquitto instead
//! (`mqtt.mode = "external"`). rumqttd has no per-topic ACL: an authenticated device could
//! publish on another device's topics.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use subtle::ConstantTimeEq;
use xueliang_core::{Error, ErrorKind, ResultExt};

/// Credentials of one device on the embedded broker.
#[derive(Clone)]
pub struct DeviceLogin {
    pub device_id: String,
    /// Defaults to the device id.
    pub username: Option<String>,
    /// `None`: the device may connect without a password, as itself (client id = device id).
    /// It must still send a username (any, e.g. its id): rumqttd refuses a CONNECT without
    /// one once logins are checked.
    pub password: Option<String>,
}

impl std::fmt::Debug for DeviceLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLogin")
            .field("device_id", &self.device_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A running embedded broker and the login the service's own client uses on it.
#[derive(Clone)]
pub struct EmbeddedBroker {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where the service's client connects (loopback when listening on all addresses).
    pub connect: SocketAddr,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("listen", &self.listen)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Who may log in: one entry per username.
#[derive(Default)]
struct Logins {
    by_user: HashMap<String, Login>,
}

struct Login {
    /// The client id the login must use when it has no password.
    client_id: Option<String>,
    password: Option<String>,
}

impl Logins {
    fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        // No username: a device without a password connects under its own id.
        let user = if username.is_empty() {
            client_id
        } else {
            username
        };
        match self.by_user.get(user) {
            Some(Login {
                password: Some(p), ..
            }) => bool::from(p.as_bytes().ct_eq(password.as_bytes())),
            Some(Login {
                password: None,
                client_id: Some(id),
            }) => id == client_id && password.is_empty(),
            _ => false,
        }
    }
}

/// Starts the broker on `listen` in its own threads and waits until it accepts connections.
///
/// rumqttd has no way to stop; it ends with the process. The port is probed first so that a
/// port already in use is reported here, by address, rather than lost in a broker thread.
pub fn start(
    listen: SocketAddr,
    devices: &[DeviceLogin],
    node_id: &str,
) -> Result<EmbeddedBroker, Error> {
    let probe = TcpListener::bind(listen).err_kind(ErrorKind::Unavailable, || {
        format!("mqtt.listen: cannot listen on {listen} for the embedded broker")
    })?;
    // Port 0 (tests, ad-hoc runs): take the port the system just gave, so the broker binds a
    // concrete address that the service's own client can reach.
    let listen = probe.local_addr().unwrap_or(listen);
    drop(probe);
    let username = format!("xueliang-{node_id}");
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let mut logins = Logins::default();
    for d in devices {
        let user = d.username.clone().unwrap_or_else(|| d.device_id.clone());
        logins.by_user.insert(
            user,
            Login {
                client_id: Some(d.device_id.clone()),
                password: d.password.clone(),
            },
        );
    }
    logins.by_user.insert(
        username.clone(),
        Login {
            client_id: None,
            password: Some(password.clone()),
        },
    );
    let logins = Arc::new(logins);
    let mut server = ServerSettings {
        name: "xueliang".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: crate::protocol::MAX_PAYLOAD * 4,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    server.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let ok = logins.check(&client_id, &user, &pass);
        if !ok {
            tracing::warn!(client_id = %client_id, username = %user, "embedded broker refused a login");
        }
        async move { ok }
    });
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            // Queued messages per connection: a storm of presses waits here for the service.
            max_outgoing_packet_count: 10_000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("xueliang".to_owned(), server)])),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(err = %e, "the embedded MQTT broker stopped");
            }
        })
        .err_kind(ErrorKind::Internal, || {
            "cannot start the broker thread".into()
        })?;
    let connect = if listen.ip().is_unspecified() {
        SocketAddr::new(
            match listen {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            },
            listen.port(),
        )
    } else {
        listen
    };
    // rumqttd binds in its own thread and says nothing when ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&connect, Duration::from_millis(200)) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::with_source(
                    ErrorKind::Unavailable,
                    format!("the embedded broker did not start listening on {listen}"),
                    e,
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    tracing::info!(listen = %listen, devices = devices.len(), "embedded MQTT broker listening");
    Ok(EmbeddedBroker {
        listen,
        connect,
        username,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins() -> Logins {
        let mut l = Logins::default();
        l.by_user.insert(
            "btn-1".into(),
            Login {
                client_id: Some("btn-1".into()),
                password: Some("s3cret".into()),
            },
        );
        l.by_user.insert(
            "btn-2".into(),
            Login {
                client_id: Some("btn-2".into()),
                password: None,
            },
        );
        l
    }

    #[test]
    fn passwords_are_checked() {
        let l = logins();
        assert!(l.check("btn-1", "btn-1", "s3cret"));
        assert!(!l.check("btn-1", "btn-1", "wrong"));
        assert!(!l.check("btn-1", "btn-1", ""));
        assert!(!l.check("x", "nobody", "s3cret"));
    }

    #[test]
    fn a_device_without_password_connects_only_as_itself() {
        let l = logins();
        assert!(l.check("btn-2", "", ""));
        assert!(l.check("btn-2", "btn-2", ""));
        assert!(!l.check("btn-3", "btn-2", ""));
        assert!(!l.check("btn-2", "btn-2", "guess"));
    }
}

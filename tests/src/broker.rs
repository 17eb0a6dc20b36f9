//! A Mosquitto of the test's own, for what the shared one on 1883 must not be used for.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Mosquitto on a free loopback port with the queue limits a monitoring centre should use:
/// Debian's default `max_queued_messages 1000` drops presses queued for a service that is down
/// during a storm (Mosquitto logs "Outgoing messages are being dropped").
#[derive(Debug)]
pub struct TestBroker {
    child: Child,
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        Self::start_with(false)
    }

    /// A broker that keeps sessions and queued QoS 1 messages in a database in its own
    /// directory, written when it stops, so they survive [`TestBroker::restart`].
    pub fn start_persistent() -> TestBroker {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf: PathBuf = dir.path().join("mosquitto.conf");
        let persistence = if persistent {
            // Mosquitto started as root drops to its own user before it writes the database.
            use std::os::unix::fs::PermissionsExt;
            let data = dir.path().join("data");
            std::fs::create_dir(&data).expect("data dir");
            for d in [dir.path(), data.as_path()] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777))
                    .expect("chmod data dir");
            }
            format!(
                "persistence true\npersistence_location {}/\npersistence_file mosquitto.db\n",
                data.display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
                 max_queued_messages 100000\nmax_inflight_messages 100\nset_tcp_nodelay true\n\
                 log_dest stderr\n"
            ),
        )
        .unwrap();
        let child = spawn(&conf, port);
        TestBroker {
            child,
            port,
            conf,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops Mosquitto with SIGTERM, as [`TestBroker::restart`] does, and leaves it down until
    /// [`TestBroker::resume`]: its port refuses connections meanwhile.
    pub fn stop(&mut self) {
        if self.child.try_wait().expect("try_wait").is_some() {
            return;
        }
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM mosquitto failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a stopped broker again on its port, with its configuration and data directory.
    pub fn resume(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_some(),
            "mosquitto is still running"
        );
        self.child = spawn(&self.conf, self.port);
    }

    /// Stops Mosquitto with SIGTERM (it saves its database when persistent) and starts it
    /// again on the same port with the same configuration and data directory.
    pub fn restart(&mut self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM mosquitto failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait().expect("try_wait").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = spawn(&self.conf, self.port);
    }
}

/// Starts Mosquitto with `conf` and waits until it accepts connections on `port`.
fn spawn(conf: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto (Debian package mosquitto)");
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a persistent session from a broker: connecting with a clean session drops it, so
/// a finished test's subscription does not collect every later test's messages.
pub fn forget_session(port: u16, client_id: &str) {
    let _ = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-i",
            client_id,
            "-t",
            "xueliang/forget",
            "-W",
            "1",
            "-C",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A subscriber on its own thread: every message on `topic`, raw, in arrival order.
/// Returns once subscribed; with `persistent`, what the broker queued for the session arrives
/// too.
pub fn watch_topic(
    port: u16,
    client_id: &str,
    topic: &str,
    persistent: bool,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (topic, client_id) = (topic.to_owned(), client_id.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("subscriber runtime")
            .block_on(async move {
                let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(5))
                    .set_clean_session(!persistent);
                let (client, mut ev) = AsyncClient::new(o, 10);
                loop {
                    match ev.poll().await {
                        // Queued messages may come before the SUBACK: every publish counts.
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            client.try_subscribe(&topic, QoS::AtLeastOnce).unwrap();
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if tx.send(p.payload.to_vec()).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("subscriber ready");
    rx
}

//! The panic-button fleet against a real Mosquitto of each test's own (retained messages and
//! wills must not leak between tests or into the shared broker), observed with rumqttc and
//! checked with the service's own device-protocol parser.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, SystemClock};
use xueliang_mqtt::protocol::{self, AlarmType, DeviceMessage};
use xueliang_sim::SimError;
use xueliang_sim::buttons::{ButtonsConfig, Fleet, FleetStats, PressAt, PressType, RateMode};

/// Mosquitto on a free loopback port, killed on drop.
struct Broker {
    child: Child,
    port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"),
        )
        .unwrap();
        let child = spawn_mosquitto(&conf, port);
        Broker {
            child,
            port,
            conf,
            _dir: dir,
        }
    }

    /// Kills the broker (retained messages are lost: persistence is off) and starts it again
    /// on the same port.
    fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn_mosquitto(&self.conf, self.port);
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn spawn_mosquitto(conf: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto (Debian package mosquitto)");
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Debug)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

impl Msg {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap()
    }
}

/// A subscriber recording everything under `filter`, subscribed when `observe` returns.
struct Observer {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
}

async fn observe(port: u16, id: &str, filter: &str) -> Observer {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed = Some(subscribed);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let m = Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    };
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    timeout(Duration::from_secs(5), is_subscribed)
        .await
        .expect("observer subscribed in time")
        .unwrap();
    Observer { client, rx }
}

impl Observer {
    /// The first message satisfying `pred`, skipping others.
    async fn until(&mut self, limit: Duration, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + limit;
        loop {
            match timeout(deadline - Instant::now(), self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return m,
                Ok(Some(_)) => {}
                Ok(None) => panic!("observer ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {limit:?}"),
            }
        }
    }

    /// Everything that arrives within `d`.
    async fn collect_for(&mut self, d: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + d;
        let mut v = Vec::new();
        while let Ok(Some(m)) = timeout(deadline - Instant::now(), self.rx.recv()).await {
            v.push(m);
        }
        v
    }
}

fn config(broker: &Broker, count: usize) -> ButtonsConfig {
    ButtonsConfig {
        broker: broker.addr(),
        count,
        keepalive_seconds: 5,
        heartbeat_seconds: 0.0,
        seed: Some(7),
        ..ButtonsConfig::default()
    }
}

/// Parses with the service's own parser; a rejection fails the test.
fn parse(m: &Msg, ids: &[String]) -> DeviceMessage {
    let devices: HashSet<String> = ids.iter().cloned().collect();
    protocol::parse(&m.topic, &m.payload, &devices, SystemClock.now())
        .unwrap_or_else(|r| panic!("the service refuses {} {:?}: {r}", m.topic, m.text()))
}

fn alarm(m: &Msg, ids: &[String]) -> (String, protocol::Alarm) {
    match parse(m, ids) {
        DeviceMessage::Alarm { device, alarm } => (device, alarm),
        other => panic!("expected an alarm, got {other:?}"),
    }
}

async fn wait_stats(
    fleet: &Fleet,
    limit: Duration,
    what: &str,
    pred: impl Fn(&FleetStats) -> bool,
) -> FleetStats {
    let deadline = Instant::now() + limit;
    loop {
        let s = fleet.stats();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_announce_online_beat_with_a_draining_battery_and_press_on_schedule() {
    let broker = Broker::start();
    let cfg = ButtonsConfig {
        heartbeat_seconds: 0.25,
        battery_start: 90,
        // 10 points a second, so a few heartbeats show the drain.
        battery_drain_per_hour: 36_000.0,
        presses: vec![
            PressAt {
                device: 2,
                at_seconds: 1.0,
                kind: PressType::Tamper,
            },
            PressAt {
                device: 1,
                at_seconds: 1.2,
                kind: PressType::Test,
            },
        ],
        ..config(&broker, 2)
    };
    let fleet = Fleet::start(cfg, Shutdown::new()).unwrap();
    let ids = fleet.device_ids().to_vec();
    assert_eq!(ids, ["btn-1", "btn-2"]);
    assert!(fleet.wait_connected(Duration::from_secs(5)).await);
    let mut obs = observe(broker.port, "observer-1", "xueliang/v1/devices/#").await;
    let msgs = obs.collect_for(Duration::from_millis(1800)).await;

    for id in &ids {
        let online = msgs
            .iter()
            .find(|m| m.topic == format!("xueliang/v1/devices/{id}/status"))
            .unwrap_or_else(|| panic!("no status for {id}"));
        assert!(online.retain, "{id}'s online status is not retained");
        assert_eq!(
            parse(online, &ids),
            DeviceMessage::Status {
                device: id.clone(),
                online: true
            }
        );
    }

    let mut batteries: HashMap<String, Vec<u8>> = HashMap::new();
    let mut presses = Vec::new();
    for m in &msgs {
        match parse(m, &ids) {
            DeviceMessage::Heartbeat { device, heartbeat } => {
                assert_eq!(heartbeat.rssi, Some(-70));
                batteries
                    .entry(device)
                    .or_default()
                    .push(heartbeat.battery.unwrap());
            }
            DeviceMessage::Alarm { device, alarm } => presses.push((device, alarm)),
            DeviceMessage::Status { .. } => {}
        }
    }
    for id in &ids {
        let b = &batteries[id];
        assert!(b.len() >= 4, "{id}: only {} heartbeats: {b:?}", b.len());
        assert!(
            b.windows(2).all(|w| w[1] <= w[0]),
            "{id}: battery rose: {b:?}"
        );
        assert!(b[0] <= 90 && *b.last().unwrap() < b[0] - 5, "{id}: {b:?}");
    }
    let got: Vec<(&str, u64, AlarmType)> = presses
        .iter()
        .map(|(d, a)| (d.as_str(), a.seq, a.kind))
        .collect();
    assert_eq!(
        got,
        [
            ("btn-2", 1, AlarmType::Tamper),
            ("btn-1", 1, AlarmType::Test)
        ]
    );
    assert!(presses.iter().all(|(_, a)| a.location.is_some()));

    let receipt = fleet.press(0, PressType::Panic).await.unwrap();
    assert_eq!((receipt.device.as_str(), receipt.seq), ("btn-1", 2));
    let m = obs
        .until(Duration::from_secs(3), "the imperative press", |m| {
            m.topic.ends_with("/alarm")
        })
        .await;
    let (device, a) = alarm(&m, &ids);
    assert_eq!(
        (device.as_str(), a.seq, a.kind),
        ("btn-1", 2, AlarmType::Panic)
    );
    assert_eq!(a.ts, receipt.ts);

    let stats = fleet.stop().await;
    assert_eq!(stats.presses_sent, 3);
    assert!(stats.heartbeats_sent >= 8, "{stats:#?}");
    assert_eq!(stats.connected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_device_leaves_its_will_and_a_stopped_one_says_offline() {
    let broker = Broker::start();
    let fleet = Fleet::start(config(&broker, 2), Shutdown::new()).unwrap();
    let ids = fleet.device_ids().to_vec();
    assert!(fleet.wait_connected(Duration::from_secs(5)).await);
    let mut obs = observe(broker.port, "observer-2", "xueliang/v1/devices/+/status").await;
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let m = obs
            .until(Duration::from_secs(3), "online", |m| m.text() == "online")
            .await;
        seen.insert(m.topic);
    }

    fleet.kill(0).await.unwrap();
    let will = obs
        .until(Duration::from_secs(3), "btn-1's will", |m| {
            m.topic == "xueliang/v1/devices/btn-1/status"
        })
        .await;
    assert_eq!(will.text(), "offline");
    let e = fleet.press(0, PressType::Panic).await.unwrap_err();
    assert!(matches!(e, SimError::Button { .. }), "{e}");
    assert_eq!(fleet.stats().connected, 1);

    let stats = fleet.stop().await;
    assert_eq!(stats.connected, 0);
    let bye = obs
        .until(Duration::from_secs(3), "btn-2's offline", |m| {
            m.topic == "xueliang/v1/devices/btn-2/status"
        })
        .await;
    assert_eq!(bye.text(), "offline");

    // Whoever subscribes later learns both are offline from the retained messages.
    let mut late = observe(broker.port, "observer-2b", "xueliang/v1/devices/+/status").await;
    let retained = late.collect_for(Duration::from_millis(500)).await;
    let mut states: Vec<(String, String, bool)> = retained
        .iter()
        .map(|m| (m.topic.clone(), m.text().to_owned(), m.retain))
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            (
                "xueliang/v1/devices/btn-1/status".into(),
                "offline".into(),
                true
            ),
            (
                "xueliang/v1/devices/btn-2/status".into(),
                "offline".into(),
                true
            ),
        ]
    );
    for m in &retained {
        assert!(matches!(
            parse(m, &ids),
            DeviceMessage::Status { online: false, .. }
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_on_demand_are_byte_identical_and_pairs_arrive_out_of_order() {
    let broker = Broker::start();
    let cfg = ButtonsConfig {
        seq_start: 41,
        ..config(&broker, 2)
    };
    let fleet = Fleet::start(cfg, Shutdown::new()).unwrap();
    let ids = fleet.device_ids().to_vec();
    let mut obs = observe(broker.port, "observer-3", "xueliang/v1/devices/+/alarm").await;

    let e = fleet.duplicate(1).await.unwrap_err();
    assert!(e.to_string().contains("nothing pressed yet"), "{e}");
    assert!(fleet.press(5, PressType::Panic).await.is_err());

    let first = fleet.press(0, PressType::Panic).await.unwrap();
    let dup = fleet.duplicate(0).await.unwrap();
    assert_eq!((first.seq, dup.seq), (41, 41));
    let pair = fleet.press_out_of_order(0, PressType::Panic).await.unwrap();
    assert_eq!([pair[0].seq, pair[1].seq], [43, 42]);

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(obs.until(Duration::from_secs(3), "a press", |_| true).await);
    }
    let seqs: Vec<u64> = got.iter().map(|m| alarm(m, &ids).1.seq).collect();
    assert_eq!(seqs, [41, 41, 43, 42]);
    assert_eq!(got[0].payload, got[1].payload);
    let stats = fleet.stop().await;
    assert_eq!((stats.presses_sent, stats.duplicates_sent), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_presses_are_duplicated_and_reordered_at_the_configured_ratios() {
    let broker = Broker::start();
    let mut obs = observe(broker.port, "observer-4", "xueliang/v1/devices/+/alarm").await;
    let cfg = ButtonsConfig {
        rate_per_second: 20.0,
        rate_mode: RateMode::Fixed,
        duplicate_ratio: 0.3,
        reorder_ratio: 0.3,
        reorder_hold_seconds: 0.5,
        seed: Some(11),
        ..config(&broker, 2)
    };
    let fleet = Fleet::start(cfg, Shutdown::new()).unwrap();
    let ids = fleet.device_ids().to_vec();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = fleet.stop().await;
    let msgs = obs.collect_for(Duration::from_millis(500)).await;

    assert!(
        (20..=40).contains(&stats.presses_sent),
        "fixed 20/s for 1.5 s: {stats:#?}"
    );
    assert_eq!(stats.schedule_dropped, 0);
    let mut per_device: HashMap<String, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for m in &msgs {
        let (device, a) = alarm(m, &ids);
        per_device
            .entry(device)
            .or_default()
            .push((a.seq, m.payload.clone()));
    }
    let mut distinct = 0;
    let mut duplicates = 0;
    let mut out_of_order = 0;
    for (device, arrivals) in &per_device {
        let mut first: HashMap<u64, &Vec<u8>> = HashMap::new();
        let mut highest = 0;
        for (seq, payload) in arrivals {
            match first.get(seq) {
                Some(earlier) => {
                    duplicates += 1;
                    assert_eq!(*earlier, payload, "{device} seq {seq}: duplicate differs");
                }
                None => {
                    first.insert(*seq, payload);
                    if *seq < highest {
                        out_of_order += 1;
                    }
                }
            }
            highest = highest.max(*seq);
        }
        // Every seq arrived, none skipped: the held presses were flushed on stop.
        let mut seqs: Vec<u64> = first.keys().copied().collect();
        seqs.sort();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{device}"
        );
        distinct += seqs.len() as u64;
    }
    assert_eq!(per_device.len(), 2);
    assert_eq!(distinct, stats.presses_sent);
    assert_eq!(duplicates, stats.duplicates_sent);
    assert!(duplicates >= 2, "{duplicates} duplicates of {distinct}");
    assert!(
        out_of_order >= 2,
        "{out_of_order} out of order of {distinct}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_counted_by_state_and_timed_from_the_press() {
    let broker = Broker::start();
    let fleet = Fleet::start(config(&broker, 2), Shutdown::new()).unwrap();
    let ids = fleet.device_ids().to_vec();
    assert!(fleet.wait_connected(Duration::from_secs(5)).await);
    let mut obs = observe(broker.port, "observer-5", "xueliang/v1/devices/+/alarm").await;

    fleet.press(0, PressType::Panic).await.unwrap();
    fleet.press(1, PressType::Panic).await.unwrap();
    let m = obs
        .until(Duration::from_secs(3), "btn-1's press", |m| {
            m.topic.contains("btn-1")
        })
        .await;
    alarm(&m, &ids);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ack = |state: &str| {
        format!(
            r#"{{"alarm_id": "0197a0c2-7f3e-7000-8000-000000000001", "state": "{state}", "node": "n1"}}"#
        )
    };
    for body in [ack("received"), ack("acknowledged"), "not json".to_owned()] {
        obs.client
            .publish(protocol::ack_topic("btn-1"), QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    let s = wait_stats(&fleet, Duration::from_secs(3), "three acks", |s| {
        s.acks.received + s.acks.acknowledged + s.acks.malformed == 3
    })
    .await;
    assert_eq!(
        (s.acks.received, s.acks.acknowledged, s.acks.malformed),
        (1, 1, 1)
    );
    assert_eq!(s.latency.samples, 1);
    let p50 = s.latency.p50_ms.unwrap();
    assert!((100.0..3000.0).contains(&p50), "latency {p50} ms");
    assert_eq!(s.latency.max_ms, Some(p50));
    // btn-2's press was never acknowledged.
    assert_eq!(s.presses_awaiting_ack, 1);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["latency"]["samples"], 1);
    assert_eq!(json["acks"]["received"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisson_rate_sends_about_rate_times_duration() {
    let broker = Broker::start();
    let mut obs = observe(broker.port, "observer-6", "xueliang/v1/devices/+/alarm").await;
    let cfg = ButtonsConfig {
        rate_per_second: 40.0,
        rate_type: PressType::Test,
        seed: Some(3),
        ..config(&broker, 4)
    };
    let fleet = Fleet::start(cfg, Shutdown::new()).unwrap();
    let ids = fleet.device_ids().to_vec();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = fleet.stop().await;
    let msgs = obs.collect_for(Duration::from_millis(500)).await;
    // 60 expected; a Poisson count's standard deviation is about 8.
    assert!(
        (30..=95).contains(&msgs.len()),
        "{} presses in 1.5 s at 40/s",
        msgs.len()
    );
    assert_eq!(msgs.len() as u64, stats.presses_sent);
    assert_eq!(stats.duplicates_sent, 0);
    let devices: HashSet<String> = msgs
        .iter()
        .map(|m| {
            let (d, a) = alarm(m, &ids);
            assert_eq!(a.kind, AlarmType::Test);
            d
        })
        .collect();
    assert_eq!(devices.len(), 4, "presses are spread over the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reconnect_after_the_broker_restarts() {
    let mut broker = Broker::start();
    let fleet = Fleet::start(config(&broker, 2), Shutdown::new()).unwrap();
    let ids = fleet.device_ids().to_vec();
    assert!(fleet.wait_connected(Duration::from_secs(5)).await);
    broker.restart(Duration::from_millis(300));
    wait_stats(&fleet, Duration::from_secs(10), "reconnects", |s| {
        s.connects >= 4 && s.connected == 2
    })
    .await;
    // Persistence is off, so these retained `online`s were announced again on reconnect.
    let mut obs = observe(broker.port, "observer-7", "xueliang/v1/devices/#").await;
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let m = obs
            .until(Duration::from_secs(3), "retained online", |m| {
                m.topic.ends_with("/status")
            })
            .await;
        assert!(m.retain && m.text() == "online", "{m:?}");
        seen.insert(m.topic);
    }
    fleet.press(1, PressType::Panic).await.unwrap();
    let m = obs
        .until(Duration::from_secs(3), "a press after the restart", |m| {
            m.topic.ends_with("/alarm")
        })
        .await;
    assert_eq!(alarm(&m, &ids).0, "btn-2");
    let stats = fleet.stop().await;
    assert!(stats.connection_errors >= 2, "{stats:#?}");
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_with_every_reason() {
    let cfg = ButtonsConfig {
        count: 2,
        reorder_ratio: 2.0,
        presses: vec![PressAt {
            device: 3,
            at_seconds: 1.0,
            kind: PressType::Panic,
        }],
        ..ButtonsConfig::default()
    };
    let e = Fleet::start(cfg, Shutdown::new()).unwrap_err().to_string();
    assert!(e.contains("reorder_ratio = 2"), "{e}");
    assert!(e.contains("presses[0].device = 3"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_shutdown_stops_the_fleet_gracefully() {
    let broker = Broker::start();
    let shutdown = Shutdown::new();
    let fleet = Fleet::start(config(&broker, 1), shutdown.clone()).unwrap();
    assert!(fleet.wait_connected(Duration::from_secs(5)).await);
    let mut obs = observe(broker.port, "observer-8", "xueliang/v1/devices/+/status").await;
    obs.until(Duration::from_secs(3), "online", |m| m.text() == "online")
        .await;
    shutdown.trigger();
    obs.until(Duration::from_secs(3), "offline", |m| m.text() == "offline")
        .await;
    wait_stats(&fleet, Duration::from_secs(3), "disconnected", |s| {
        s.connected == 0
    })
    .await;
}

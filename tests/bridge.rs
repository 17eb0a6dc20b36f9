//! The Skynet bridge through the real binary: alarm changes reach the city's broker in order,
//! survive the city being down and a kill -9 in the middle of the drain, and a panic press
//! reaches a GB/T 28181 upper platform (SIPp) as an Alarm notification.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use xueliang_tests::broker::{TestBroker, watch_topic};
use xueliang_tests::*;

const TOKEN: &str = "bridge-admin-token-0123456789";

fn uniq() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:08x}", std::process::id() ^ t.subsec_nanos())
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node whose devices report to `devices_url`; `bridge` is appended as is.
fn config(dir: &Path, node: &str, devices_url: &str, devices: &[String], bridge: &str) -> PathBuf {
    let mut text = format!(
        r#"[node]
id = "{node}"
data_dir = {dir:?}
[mqtt]
mode = "external"
url = "{devices_url}"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "admin"
token = "{TOKEN}"
role = "admin"
[storage]
min_free_bytes = "1 MiB"
"#,
        dir = dir.display().to_string()
    );
    for d in devices {
        text.push_str(&format!(
            "[[devices]]\nid = \"{d}\"\nname = \"button {d}\"\n\
             location = {{ lat = 29.3, lon = 104.7 }}\n"
        ));
    }
    text.push_str(bridge);
    write_file(dir, "node.toml", &text)
}

/// Starts the service and returns once it listens to its devices: it says `online` on its
/// node topic right after subscribing (same connection, so the broker has the subscription by
/// then), and a press published earlier would go unheard.
fn start_service(cfg: &Path, env: &[(&str, &str)], devices_port: u16, node: &str) -> Service {
    let svc = Service::start(cfg, env);
    let topic = format!("xueliang/v1/nodes/{node}/status");
    rt().block_on(async {
        let mut o = MqttOptions::new(format!("probe-{}", uniq()), "127.0.0.1", devices_port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut ev) = AsyncClient::new(o, 10);
        client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, ev.poll()).await {
                Err(_) => panic!("the service never said online on {topic}"),
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) if &p.payload[..] == b"online" => {
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("device broker: {e}"),
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
    });
    svc
}

fn press_payload(seq: u64) -> String {
    let ts = xueliang_core::Clock::now(&xueliang_core::SystemClock).to_rfc3339();
    format!(
        r#"{{"seq": {seq}, "ts": "{ts}", "type": "panic", "battery": 87, "lat": 29.3, "lon": 104.7}}"#
    )
}

/// Each device publishes its presses in order from its own client (QoS 1), as buttons do, all
/// devices at once; returns when the device broker has acknowledged every press.
fn press(port: u16, presses: &[(String, u64)]) {
    let mut by_device: Vec<(String, Vec<u64>)> = Vec::new();
    for (d, seq) in presses {
        match by_device.iter_mut().find(|(x, _)| x == d) {
            Some((_, v)) => v.push(*seq),
            None => by_device.push((d.clone(), vec![*seq])),
        }
    }
    rt().block_on(async move {
        let buttons: Vec<_> = by_device
            .into_iter()
            .map(|(device, seqs)| tokio::spawn(button(port, device, seqs)))
            .collect();
        for b in buttons {
            b.await.unwrap();
        }
    });
}

async fn button(port: u16, device: String, seqs: Vec<u64>) {
    let mut o = MqttOptions::new(device.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut ev) = AsyncClient::new(o, 10);
    let n = seqs.len();
    let topic = format!("xueliang/v1/devices/{device}/alarm");
    let publisher = tokio::spawn(async move {
        for seq in seqs {
            client
                .publish(&topic, QoS::AtLeastOnce, false, press_payload(seq))
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked < n {
        match tokio::time::timeout_at(deadline, ev.poll()).await {
            Err(_) => panic!("{device}: {acked} of {n} presses acknowledged by the broker"),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{device}: device broker connection failed: {e}"),
        }
    }
    let client = publisher.await.unwrap();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
}

fn act(svc: &Service, alarm: &str, what: &str, body: &str) -> Value {
    let r = post_json(
        svc.addr(),
        &format!("/api/v1/alarms/{alarm}/{what}"),
        Some(TOKEN),
        body,
    );
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    r.json()
}

// ---------------------------------------------------------------------------------------------
// The store: what the city must get

struct Stored {
    incidents: Vec<xueliang_store::Incident>,
    signals: usize,
    /// Every alarm change, in commit order: each has an outbox entry for the uplink.
    events: Vec<xueliang_store::EventRecord>,
}

fn stored(dir: &Path, node: &str) -> Stored {
    rt().block_on(async {
        let opts = xueliang_store::OpenOptions::sqlite(&dir.join("xueliang.db"));
        let store = xueliang_store::open(&opts, node.parse().unwrap())
            .await
            .unwrap();
        let incidents = store
            .list_incidents(&xueliang_store::IncidentFilter {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut signals = 0;
        for i in &incidents {
            signals += store.incident_signals(i.id).await.unwrap().len();
        }
        let events = store
            .events_after(
                "00000000-0000-0000-0000-000000000000".parse().unwrap(),
                100_000,
            )
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.topic == "alarm")
            .collect();
        store.close().await;
        Stored {
            incidents,
            signals,
            events,
        }
    })
}

fn wait_for_signals(svc: &mut Service, dir: &Path, node: &str, n: usize) -> Stored {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metric(svc, r#"xueliang_mqtt_messages_total{kind="alarm"}"#).unwrap_or(0.0);
        if m as usize >= n {
            std::thread::sleep(Duration::from_millis(500));
            let s = stored(dir, node);
            if s.signals >= n {
                return s;
            }
        }
        if Instant::now() > deadline {
            let metrics = get(svc.addr(), "/metrics", None).body;
            eprintln!("{metrics}");
            svc.kill9();
            svc.wait(Duration::from_secs(5));
            let s = stored(dir, node);
            panic!(
                "{} of {n} presses stored; log:\n{}",
                s.signals,
                svc.log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// The city's side

fn alarms_topic(prefix: &str, node: &str) -> String {
    format!("{prefix}/{node}/alarms")
}

/// Leaves a persistent QoS 1 subscription on the city broker, so that it queues what the
/// uplink publishes before anyone listens.
fn city_session(port: u16, client_id: &str, topic: &str) {
    rt().block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false);
        let (client, mut ev) = AsyncClient::new(o, 10);
        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, ev.poll()).await {
                Err(_) => panic!("no SUBACK from the city broker"),
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("city broker: {e}"),
            }
        }
        client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
    });
}

/// One message as the city got it.
#[derive(Clone, Debug)]
struct CityEvent {
    raw: Vec<u8>,
    json: Value,
}

impl CityEvent {
    fn parse(raw: Vec<u8>) -> CityEvent {
        let json = serde_json::from_slice(&raw).unwrap_or_else(|e| {
            panic!(
                "city message is not JSON ({e}): {}",
                String::from_utf8_lossy(&raw)
            )
        });
        CityEvent { raw, json }
    }

    fn event_id(&self) -> &str {
        self.json["event_id"].as_str().expect("event_id")
    }

    fn incident(&self) -> &str {
        self.json["incident"]["id"].as_str().expect("incident.id")
    }

    fn kind(&self) -> &str {
        self.json["type"].as_str().expect("type")
    }

    fn version(&self) -> i64 {
        self.json["incident"]["version"]
            .as_i64()
            .expect("incident.version")
    }
}

fn drain(rx: &mpsc::Receiver<Vec<u8>>, into: &mut Vec<CityEvent>) {
    while let Ok(raw) = rx.try_recv() {
        into.push(CityEvent::parse(raw));
    }
}

/// Receives until every stored alarm change has arrived at least once, then a little longer
/// for anything sent twice.
fn receive_everything(
    rx: &mpsc::Receiver<Vec<u8>>,
    got: &mut Vec<CityEvent>,
    dir: &Path,
    node: &str,
    timeout: Duration,
) -> Stored {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        drain(rx, got);
        let s = stored(dir, node);
        let ids: HashSet<&str> = got.iter().map(CityEvent::event_id).collect();
        let missing = s
            .events
            .iter()
            .filter(|e| !ids.contains(e.id.to_string().as_str()))
            .count();
        if missing == 0 {
            // Anything sent twice arrives now; a change committed meanwhile (an escalation)
            // means another round.
            std::thread::sleep(Duration::from_millis(1000));
            drain(rx, got);
            let again = stored(dir, node);
            let ids: HashSet<&str> = got.iter().map(CityEvent::event_id).collect();
            if again
                .events
                .iter()
                .all(|e| ids.contains(e.id.to_string().as_str()))
            {
                return again;
            }
            continue;
        }
        if last_report.elapsed() > Duration::from_secs(3) {
            last_report = Instant::now();
            eprintln!(
                "{} of {} alarm changes at the city ({} messages)",
                s.events.len() - missing,
                s.events.len(),
                got.len()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} alarm changes never reached the city ({} messages arrived)",
            s.events.len(),
            got.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every stored change arrived, nothing else did, copies are byte-identical, and each
/// incident's changes arrived in commit order. Returns how many messages were copies.
fn assert_city_has_everything(got: &[CityEvent], s: &Stored, node: &str) -> usize {
    let mut first: HashMap<&str, &CityEvent> = HashMap::new();
    let mut order: HashMap<&str, Vec<&CityEvent>> = HashMap::new();
    let mut copies = 0;
    for e in got {
        assert_eq!(e.json["node_id"], node, "{}", e.json);
        match first.get(e.event_id()) {
            Some(f) => {
                copies += 1;
                assert!(
                    f.raw == e.raw,
                    "a copy differs from the first delivery:\n{}\n{}",
                    String::from_utf8_lossy(&f.raw),
                    String::from_utf8_lossy(&e.raw)
                );
            }
            None => {
                first.insert(e.event_id(), e);
                order.entry(e.incident()).or_default().push(e);
            }
        }
    }
    let stored_ids: HashSet<String> = s.events.iter().map(|e| e.id.to_string()).collect();
    for id in first.keys() {
        assert!(
            stored_ids.contains(*id),
            "the city got event {id}, which the node never committed"
        );
    }
    for id in &stored_ids {
        assert!(
            first.contains_key(id.as_str()),
            "alarm change {id} never reached the city"
        );
    }
    let mut per_incident: HashMap<&str, Vec<String>> = HashMap::new();
    for e in &s.events {
        per_incident
            .entry(e.subject.as_str())
            .or_default()
            .push(e.id.to_string());
    }
    for i in &s.incidents {
        let key = i.id.to_string();
        let arrived = order.get(key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let ids: Vec<&str> = arrived.iter().map(|e| e.event_id()).collect();
        let committed: Vec<&str> = per_incident
            .get(key.as_str())
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(ids, committed, "incident {key}: changes out of order");
        assert!(!arrived.is_empty(), "incident {key}: nothing arrived");
        assert_eq!(arrived[0].kind(), "new", "{}", arrived[0].json);
        for w in arrived.windows(2) {
            assert!(
                w[0].version() < w[1].version(),
                "incident {key}: version {} after {}",
                w[1].version(),
                w[0].version()
            );
            assert_ne!(w[1].kind(), "new", "{}", w[1].json);
        }
        let last = arrived.last().unwrap();
        assert_eq!(
            last.version(),
            i.version,
            "incident {key}: the city's last word is not the stored state"
        );
        assert_eq!(last.json["incident"]["state"], i.state.as_str());
        assert_eq!(
            last.kind() == "end",
            i.state.as_str() == "resolved",
            "{}",
            last.json
        );
    }
    copies
}

/// A TCP relay to `upstream` that passes what the broker says back slowly (one 4-byte read,
/// a CONNACK or PUBACK, per 10 ms), so a drain takes long enough to be interrupted. While the
/// upstream is down, connections are closed at once.
fn slow_relay(upstream: u16) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_in.shutdown(Shutdown::Both);
                let _ = s_out.shutdown(Shutdown::Both);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4];
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = s_in.shutdown(Shutdown::Both);
                let _ = c_out.shutdown(Shutdown::Both);
            });
        }
    });
    port
}

fn metric(svc: &Service, line_start: &str) -> Option<f64> {
    get(svc.addr(), "/metrics", None)
        .body
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn alarms_reach_the_city_broker_in_order() {
    let id = uniq();
    let (node, device) = (format!("city-{id}"), format!("btn-{id}"));
    let dir = tempfile::tempdir().unwrap();
    let devices = TestBroker::start();
    let city = TestBroker::start();
    let topic = alarms_topic("skynet/v1", &node);
    let rx = watch_topic(city.port, &format!("city-{id}"), &topic, false);
    let cfg = config(
        dir.path(),
        &node,
        &devices.url(),
        std::slice::from_ref(&device),
        &format!("[bridge.mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n", city.port),
    );
    let mut svc = start_service(&cfg, &[], devices.port, &node);
    let next = |svc: &mut Service, what: &str| match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(raw) => CityEvent::parse(raw),
        Err(_) => {
            svc.kill9();
            svc.wait(Duration::from_secs(5));
            panic!(
                "no message at the city for {what} within 20 s; log:\n{}",
                svc.log.join("\n")
            )
        }
    };

    press(devices.port, &[(device.clone(), 1)]);
    let mut got = vec![next(&mut svc, "the press")];
    let new = got[0].clone();
    assert_eq!(new.kind(), "new", "{}", new.json);
    assert_eq!(new.json["node_id"], node.as_str());
    assert_eq!(new.json["incident"]["source_id"], device.as_str());
    assert_eq!(new.json["incident"]["kind"], "panic");
    assert_eq!(new.json["incident"]["state"], "raised");
    assert!(new.json["at"].as_str().is_some(), "{}", new.json);
    let alarm = new.incident().to_owned();

    act(&svc, &alarm, "ack", "");
    got.push(next(&mut svc, "the acknowledgement"));
    act(&svc, &alarm, "resolve", r#"{"outcome": "test"}"#);
    while got.last().unwrap().kind() != "end" {
        got.push(next(&mut svc, "the resolution"));
    }
    std::thread::sleep(Duration::from_millis(500));
    drain(&rx, &mut got);

    let kinds: Vec<&str> = got.iter().map(CityEvent::kind).collect();
    assert_eq!(kinds.first(), Some(&"new"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|k| *k == "update") && kinds.len() >= 3,
        "new, update(s), end: {kinds:?}"
    );
    assert!(got.iter().all(|e| e.incident() == alarm), "one incident");
    let ids: HashSet<&str> = got.iter().map(CityEvent::event_id).collect();
    assert_eq!(ids.len(), got.len(), "each change has its own event_id");
    assert!(
        got.iter()
            .any(|e| e.kind() == "update" && e.json["incident"]["state"] == "acknowledged"),
        "the acknowledgement is reported: {kinds:?}"
    );
    let end = got.last().unwrap();
    assert_eq!(end.json["incident"]["state"], "resolved", "{}", end.json);
    assert_eq!(end.json["incident"]["outcome"], "test", "{}", end.json);
    // Stable: the event ids are the node's own records of those changes, in commit order.
    let s = stored(dir.path(), &node);
    let copies = assert_city_has_everything(&got, &s, &node);
    assert_eq!(copies, 0, "nothing sent twice on a healthy link");
}

#[test]
fn the_city_down_then_back_gets_everything() {
    const BUTTONS: usize = 20;
    const PRESSES: u64 = 10;
    let id = uniq();
    let node = format!("down-{id}");
    let names: Vec<String> = (0..BUTTONS).map(|i| format!("d{id}-{i:02}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let devices = TestBroker::start();
    let mut city = TestBroker::start_persistent();
    let topic = alarms_topic("city/zigong", &node);
    let watcher = format!("city-{id}");
    city_session(city.port, &watcher, &topic);
    city.stop();
    let cfg = config(
        dir.path(),
        &node,
        &devices.url(),
        &names,
        &format!(
            "[bridge.mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\ntopic_prefix = \"city/zigong\"\n",
            city.port
        ),
    );
    let mut svc = start_service(&cfg, &[], devices.port, &node);

    let presses: Vec<(String, u64)> = (1..=PRESSES)
        .flat_map(|seq| names.iter().map(move |d| (d.clone(), seq)))
        .collect();
    press(devices.port, &presses);
    let s = wait_for_signals(&mut svc, dir.path(), &node, presses.len());
    assert_eq!(s.incidents.len(), BUTTONS, "one incident per button");
    for (n, i) in s.incidents.iter().take(6).enumerate() {
        act(&svc, &i.id.to_string(), "ack", "");
        if n % 2 == 0 {
            act(
                &svc,
                &i.id.to_string(),
                "resolve",
                r#"{"outcome": "genuine"}"#,
            );
        }
    }
    let queued = stored(dir.path(), &node).events.len();
    eprintln!("{queued} alarm changes queued while the city was down");
    assert!(
        metric(
            &svc,
            r#"xueliang_outbox_delivered_total{sink="skynet-mqtt"}"#
        )
        .unwrap_or(0.0)
            == 0.0,
        "nothing can be delivered while the city is down"
    );

    city.resume();
    let rx = watch_topic(city.port, &watcher, &topic, true);
    let mut got = Vec::new();
    let s = receive_everything(&rx, &mut got, dir.path(), &node, Duration::from_secs(50));
    let copies = assert_city_has_everything(&got, &s, &node);
    eprintln!(
        "{} alarm changes arrived ({} messages, {copies} copies)",
        s.events.len(),
        got.len()
    );
    assert!(s.events.len() >= queued);
    wait_for(Duration::from_secs(15), "an empty uplink backlog", || {
        (metric(&svc, r#"xueliang_outbox_backlog{sink="skynet-mqtt"}"#) == Some(0.0)).then_some(())
    });
}

#[test]
fn kill_9_during_the_drain_loses_nothing() {
    const BUTTONS: usize = 60;
    const PRESSES: u64 = 5;
    let id = uniq();
    let node = format!("kill-{id}");
    let names: Vec<String> = (0..BUTTONS).map(|i| format!("k{id}-{i:02}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let devices = TestBroker::start();
    let mut city = TestBroker::start_persistent();
    let topic = alarms_topic("skynet/v1", &node);
    let watcher = format!("city-{id}");
    city_session(city.port, &watcher, &topic);
    city.stop();
    let relay = slow_relay(city.port);
    let cfg = config(
        dir.path(),
        &node,
        &devices.url(),
        &names,
        &format!("[bridge.mqtt]\nurl = \"mqtt://127.0.0.1:{relay}\"\n"),
    );
    let mut svc = start_service(&cfg, &[], devices.port, &node);

    let presses: Vec<(String, u64)> = (1..=PRESSES)
        .flat_map(|seq| names.iter().map(move |d| (d.clone(), seq)))
        .collect();
    press(devices.port, &presses);
    wait_for_signals(&mut svc, dir.path(), &node, presses.len());
    let queued = stored(dir.path(), &node).events.len();
    eprintln!("{queued} alarm changes queued while the city was down");

    city.resume();
    let rx = watch_topic(city.port, &watcher, &topic, true);
    let mut got = Vec::new();
    wait_for(Duration::from_secs(45), "the drain to get going", || {
        drain(&rx, &mut got);
        (got.len() >= queued / 4).then_some(())
    });
    svc.kill9();
    let distinct: HashSet<&str> = got.iter().map(CityEvent::event_id).collect();
    eprintln!(
        "killed with {} of {queued} alarm changes at the city",
        distinct.len()
    );
    assert!(
        distinct.len() < queued,
        "the drain was over before the kill; nothing was interrupted"
    );

    let _svc = start_service(&cfg, &[], devices.port, &node);
    let s = receive_everything(&rx, &mut got, dir.path(), &node, Duration::from_secs(50));
    let copies = assert_city_has_everything(&got, &s, &node);
    eprintln!(
        "{} alarm changes arrived ({} messages, {copies} copies after the kill)",
        s.events.len(),
        got.len()
    );
}

// ---------------------------------------------------------------------------------------------
// GB/T 28181

const GB_LOCAL_ID: &str = "51030000002000000001";
const GB_SERVER_ID: &str = "51000000002000000001";
const GB_PASSWORD: &str = "gb-e2e-secret";

fn have_sipp() -> bool {
    Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// SIPp as the upper platform (tests/fixtures/sipp/upper_platform.xml), killed on drop.
struct Sipp {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sipp {
    fn start() -> Sipp {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let scenario = repo_root().join("tests/fixtures/sipp/upper_platform.xml");
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(scenario)
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1"])
            .args(["-nostdin", "-trace_msg", "-trace_err"])
            .arg("-message_file")
            .arg(dir.path().join("messages.log"))
            .arg("-error_file")
            .arg(dir.path().join("errors.log"))
            // A backstop: SIPp never outlives a crashed test by more than this.
            .args(["-timeout", "60s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sipp");
        Sipp { child, dir, port }
    }

    /// (direction, message) in log order; direction is "received" or "sent". Bodies are
    /// GB18030, whose ASCII part (tags, ids) reads the same in UTF-8.
    fn messages(&self) -> Vec<(&'static str, String)> {
        let raw = std::fs::read(self.dir.path().join("messages.log")).unwrap_or_default();
        String::from_utf8_lossy(&raw)
            .split("\n----------------------------------------------- ")
            .filter_map(|block| {
                let (_, msg) = block.split_once('\n')?;
                let (kind, rest) = msg.split_once('\n')?;
                let dir = if kind.contains("message received") {
                    "received"
                } else if kind.contains("message sent") {
                    "sent"
                } else {
                    return None;
                };
                Some((dir, rest.trim().to_owned()))
            })
            .collect()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sip_header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn a_panic_press_reaches_the_upper_platform_over_gb28181() {
    if !have_sipp() {
        eprintln!("sipp not installed (Debian package sip-tester); skipping");
        return;
    }
    let id = uniq();
    let node = format!("gb-{id}");
    // The second button: its channel's serial is its 1-based position, 2.
    let names = vec![format!("gb{id}-a"), format!("gb{id}-b")];
    let channel = format!("{}1340000002", &GB_LOCAL_ID[..10]);
    let dir = tempfile::tempdir().unwrap();
    let devices = TestBroker::start();
    let sipp = Sipp::start();
    let cfg = config(
        dir.path(),
        &node,
        &devices.url(),
        &names,
        &format!(
            r#"[bridge.gb28181]
local_id = "{GB_LOCAL_ID}"
local_listen = "127.0.0.1:{}"
server_id = "{GB_SERVER_ID}"
server_domain = "{}"
server_addr = "127.0.0.1:{}"
transport = "udp"
keepalive_seconds = 5
"#,
            free_udp_port(),
            &GB_SERVER_ID[..10],
            sipp.port
        ),
    );
    let mut svc = start_service(
        &cfg,
        &[("XUELIANG_GB28181_PASSWORD", GB_PASSWORD)],
        devices.port,
        &node,
    );
    if !svc.log.iter().any(|l| l.contains("gb28181 registered")) {
        svc.wait_for_log("gb28181 registered", Duration::from_secs(20));
    }

    press(devices.port, &[(names[1].clone(), 1)]);
    let alarm = wait_for(
        Duration::from_secs(20),
        "an Alarm MESSAGE answered 200 at the upper platform",
        || {
            let msgs = sipp.messages();
            let alarm = msgs
                .iter()
                .find(|(d, m)| {
                    *d == "received"
                        && m.starts_with("MESSAGE ")
                        && m.contains("<CmdType>Alarm</CmdType>")
                })?
                .1
                .clone();
            let call = sip_header(&alarm, "Call-ID")?.to_owned();
            msgs.iter()
                .any(|(d, m)| {
                    *d == "sent"
                        && m.starts_with("SIP/2.0 200")
                        && sip_header(m, "Call-ID") == Some(call.as_str())
                })
                .then_some(alarm)
        },
    );
    assert!(alarm.contains("<Notify>"), "{alarm}");
    assert!(alarm.contains("<AlarmMethod>2</AlarmMethod>"), "{alarm}");
    assert!(
        alarm.contains(&format!("<DeviceID>{channel}</DeviceID>")),
        "the alarm names the button's channel {channel}: {alarm}"
    );
    assert!(
        alarm.contains("<AlarmPriority>1</AlarmPriority>"),
        "{alarm}"
    );
    assert_eq!(
        sip_header(&alarm, "Content-Type"),
        Some("Application/MANSCDP+xml")
    );
    let from = sip_header(&alarm, "From").unwrap_or_default();
    assert!(from.contains(GB_LOCAL_ID), "{from}");

    let msgs = sipp.messages();
    let registers: Vec<_> = msgs
        .iter()
        .filter(|(d, m)| *d == "received" && m.starts_with("REGISTER "))
        .collect();
    assert!(
        registers
            .iter()
            .any(|(_, m)| sip_header(m, "Authorization").is_some()),
        "registered with a digest answer: {registers:#?}"
    );
    assert!(
        !msgs
            .iter()
            .any(|(d, m)| *d == "sent" && m.starts_with("SIP/2.0 403")),
        "the digest answer was refused"
    );
    let alarms = msgs
        .iter()
        .filter(|(d, m)| *d == "received" && m.contains("<CmdType>Alarm</CmdType>"))
        .count();
    assert_eq!(alarms, 1, "one Alarm for one new incident");
    let s = stored(dir.path(), &node);
    assert_eq!(s.incidents.len(), 1);
    assert_eq!(s.incidents[0].source_id, names[1]);
}

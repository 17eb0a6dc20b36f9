//! Panic buttons end to end through the real Mosquitto on 127.0.0.1:1883: presses stored once,
//! grouped into incidents, acknowledged to the device, kept by the broker while the service is
//! down.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xueliang_tests::*;

const TOKEN: &str = "alarm-test-token-0123456789";

fn uniq() -> String {
    format!(
        "{:08x}",
        std::process::id() ^ (Instant::now().elapsed().as_nanos() as u32) ^ rand_u32()
    )
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos()
}

fn config(dir: &Path, node: &str, device: &str, broker: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[node]
id = "{node}"
data_dir = {dir:?}
[mqtt]
mode = "external"
url = "{broker}"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "t"
token = "{TOKEN}"
role = "admin"
[storage]
min_free_bytes = "1 MiB"
[[devices]]
id = "{device}"
name = "test button"
location = {{ lat = 29.3, lon = 104.7 }}
"#,
        dir = dir.display().to_string()
    );
    write_file(dir, "node.toml", &text)
}

fn publish(topic: &str, payload: &str) {
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .status()
        .expect("mosquitto_pub");
    assert!(st.success(), "publish to {topic}");
}

fn press_payload(seq: u64) -> String {
    let ts = xueliang_core::Clock::now(&xueliang_core::SystemClock).to_rfc3339();
    format!(
        r#"{{"seq": {seq}, "ts": "{ts}", "type": "panic", "battery": 87, "lat": 29.3, "lon": 104.7}}"#
    )
}

/// Collects what the service publishes to the device's ack topic.
fn watch_acks(device: &str, count: usize) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-q",
            "1",
            "-W",
            "30",
            "-C",
            &count.to_string(),
        ])
        .args(["-t", &format!("xueliang/v1/devices/{device}/ack")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub")
}

fn store_state(dir: &Path, node: &str, device: &str) -> (usize, Vec<xueliang_store::Incident>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = xueliang_store::OpenOptions::sqlite(&dir.join("xueliang.db"));
        let store = xueliang_store::open(&opts, node.parse().unwrap())
            .await
            .unwrap();
        let incidents = store.list_incidents(&Default::default()).await.unwrap();
        let mut signals = 0;
        for i in &incidents {
            signals += store
                .incident_signals(i.id)
                .await
                .unwrap()
                .iter()
                .filter(|s| s.source_id == device)
                .count();
        }
        store.close().await;
        (signals, incidents)
    })
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn presses_are_stored_once_grouped_acknowledged_and_survive_downtime() {
    let id = uniq();
    let (node, device) = (format!("alarm-node-{id}"), format!("btn-{id}"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &node, &device, "mqtt://127.0.0.1:1883");
    let mut svc = Service::start(&cfg, &[]);
    svc.wait_for_log_seen("connected to the device broker", Duration::from_secs(15));
    let acks = watch_acks(&device, 2);
    std::thread::sleep(Duration::from_millis(300));
    let topic = format!("xueliang/v1/devices/{device}/alarm");
    // Seq 1 twice (a QoS 1 redelivery or a device retry), seq 2, and junk.
    publish(&topic, &press_payload(1));
    publish(&topic, &press_payload(1));
    publish(&topic, &press_payload(2));
    publish(&topic, "{not json");
    publish(
        &format!("xueliang/v1/devices/ghost-{id}/alarm"),
        &press_payload(1),
    );
    svc.wait_for_log("press joined an open incident", Duration::from_secs(15));
    assert!(
        svc.log
            .iter()
            .any(|l| l.contains("duplicate press ignored")),
        "{}",
        svc.log.join("\n")
    );
    let out = acks.wait_with_output().unwrap();
    let acks: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("ack json"))
        .collect();
    assert_eq!(acks.len(), 2, "one ack per unique press");
    assert!(acks.iter().all(|a| a["state"] == "received"));
    assert_eq!(
        acks[0]["alarm_id"], acks[1]["alarm_id"],
        "both presses are one incident"
    );
    // The junk may be handled in a later batch than the presses: wait for it to be counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = get(svc.addr(), "/metrics", None).body;
        if m.contains(r#"reason="unknown_device""#) && m.contains(r#"reason="malformed_json""#)
            || std::time::Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains(r#"xueliang_mqtt_rejected_total{reason="malformed_json"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"xueliang_mqtt_rejected_total{reason="unknown_device"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"xueliang_alarm_incidents_total{kind="panic"} 1"#),
        "{metrics}"
    );

    // Down for a while: the broker keeps the press for our persistent session.
    svc.signal("TERM");
    assert!(
        svc.wait(Duration::from_secs(20)).success(),
        "{}",
        svc.log.join("\n")
    );
    publish(&topic, &press_payload(3));
    let (signals, _) = store_state(dir.path(), &node, &device);
    assert_eq!(signals, 2, "seq 3 is not stored before the service is back");
    let mut svc = Service::start(&cfg, &[]);
    wait_for(Duration::from_secs(15), "the queued press", || {
        let (n, inc) = store_state(dir.path(), &node, &device);
        (n == 3).then_some((n, inc))
    });
    // Read again once nothing is being written, so incident and links are read at one state.
    std::thread::sleep(Duration::from_millis(300));
    let (signals, incidents) = store_state(dir.path(), &node, &device);
    assert_eq!(signals, 3);
    let panic: Vec<_> = incidents.iter().filter(|i| i.kind == "panic").collect();
    assert_eq!(panic.len(), 1, "{incidents:?}");
    assert_eq!(panic[0].signal_count, 3);
    assert_eq!((panic[0].lat, panic[0].lon), (Some(29.3), Some(104.7)));

    // The duty desk works the incident through the API; the button hears each step.
    let acks = watch_acks(&device, 3);
    std::thread::sleep(Duration::from_millis(300));
    let id = panic[0].id.to_string();
    let list = get(svc.addr(), "/api/v1/alarms?state=open", Some(TOKEN)).json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id.as_str()),
        "{list}"
    );
    let detail = get(svc.addr(), &format!("/api/v1/alarms/{id}"), Some(TOKEN)).json();
    assert_eq!(detail["signals"].as_array().unwrap().len(), 3);
    assert_eq!(detail["history"][0]["to_state"], "raised");
    let act = |what: &str, body: &str| {
        post_json(
            svc.addr(),
            &format!("/api/v1/alarms/{id}/{what}"),
            Some(TOKEN),
            body,
        )
    };
    let r = act("ack", r#"{"note": "on my way"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "acknowledged");
    let again = act("ack", "");
    assert_eq!(again.status, 409);
    assert!(
        again.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already acknowledged (by token:t)"),
        "{}",
        again.body
    );
    let r = act("resolve", r#"{"note": "cat on the button"}"#);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("outcome"), "{}", r.body);
    assert_eq!(act("dispatch", "").status, 200);
    let r = act("resolve", r#"{"note": "handled", "outcome": "genuine"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["outcome"].as_str()),
        (Some("resolved"), Some("genuine"))
    );
    let r = act("dispatch", "");
    assert_eq!(r.status, 409);
    assert!(r.body.contains("already resolved"), "{}", r.body);
    let out = acks.wait_with_output().unwrap();
    let states: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(states, ["acknowledged", "dispatched", "resolved"]);
    let history =
        get(svc.addr(), &format!("/api/v1/alarms/{id}"), Some(TOKEN)).json()["history"].clone();
    assert_eq!(history.as_array().unwrap().len(), 4, "{history}");
    assert_eq!(history[1]["note"], "on my way");
    let devices = get(svc.addr(), "/api/v1/devices", Some(TOKEN)).json();
    assert_eq!(devices[0]["battery"], 87);
    assert_eq!(devices[0]["online"], true);
    svc.signal("TERM");
    assert!(svc.wait(Duration::from_secs(20)).success());
    xueliang_tests::broker::forget_session(1883, &format!("xueliang-{node}"));
}

/// Publishes every message with QoS 1 and waits until the broker has acknowledged them all.
fn storm(port: u16, messages: Vec<(String, String)>, client_id: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut ev) = rumqttc::AsyncClient::new(opts, 1000);
        let total = messages.len();
        let pub_task = tokio::spawn(async move {
            for (topic, payload) in messages {
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
            client
        });
        let mut acked = 0;
        while acked < total {
            match tokio::time::timeout(Duration::from_secs(30), ev.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher: {e}"),
                Err(_) => panic!("publisher stalled after {acked} of {total} acks"),
            }
        }
        let client = pub_task.await.unwrap();
        let _ = client.disconnect().await;
    });
}

/// 10 000 presses from 100 buttons, 10 % sent twice and each button's out of order, with the
/// service killed with SIGKILL in the middle: every unique press is stored exactly once.
/// It runs against a Mosquitto of its own with a large queue (see `TestBroker`): with Debian's
/// default of 1000 queued messages the broker itself drops presses for a service that is down.
#[test]
fn a_storm_with_duplicates_reordering_and_a_kill_loses_nothing() {
    let id = uniq();
    let node = format!("storm-{id}");
    let n_devices: usize = std::env::var("XUELIANG_STORM_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let devices: Vec<String> = (0..n_devices).map(|i| format!("s{id}-{i:03}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let broker = xueliang_tests::broker::TestBroker::start();
    let mut text = format!(
        r#"[node]
id = "{node}"
data_dir = {dir:?}
[mqtt]
mode = "external"
url = "{broker}"
[api]
listen = "127.0.0.1:0"
[storage]
min_free_bytes = "1 MiB"
"#,
        dir = dir.path().display().to_string(),
        broker = broker.url()
    );
    for d in &devices {
        text.push_str(&format!("[[devices]]\nid = \"{d}\"\n"));
    }
    let cfg = write_file(dir.path(), "node.toml", &text);
    let mut messages = Vec::new();
    let mut unique = 0;
    for (di, d) in devices.iter().enumerate() {
        let mut seqs: Vec<u64> = (1..=100).collect();
        // Each button's presses arrive out of order: reversed in blocks of seven.
        for chunk in seqs.chunks_mut(7) {
            chunk.reverse();
        }
        for (k, seq) in seqs.iter().enumerate() {
            messages.push((
                format!("xueliang/v1/devices/{d}/alarm"),
                press_payload(*seq),
            ));
            unique += 1;
            if (k + di) % 10 == 0 {
                messages.push((
                    format!("xueliang/v1/devices/{d}/alarm"),
                    press_payload(*seq),
                ));
            }
        }
    }
    // Interleave the buttons as a real storm would.
    let mut interleaved = Vec::with_capacity(messages.len());
    let per: Vec<Vec<(String, String)>> = devices
        .iter()
        .map(|d| {
            messages
                .iter()
                .filter(|(t, _)| t.contains(&format!("/{d}/")))
                .cloned()
                .collect()
        })
        .collect();
    let longest = per.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for p in &per {
            if let Some(m) = p.get(i) {
                interleaved.push(m.clone());
            }
        }
    }
    let (first, second) = interleaved.split_at(interleaved.len() / 2);

    let mut svc = Service::start(&cfg, &[]);
    svc.wait_for_log_seen("connected to the device broker", Duration::from_secs(15));
    storm(broker.port, first.to_vec(), &format!("storm-pub-a-{id}"));
    // Kill while it is still working through the first half.
    svc.kill9();
    drop(svc);
    storm(broker.port, second.to_vec(), &format!("storm-pub-b-{id}"));
    let svc = Service::start(&cfg, &[]);
    let count = |dir: &Path| stored_alarms(dir, &node);
    let started = Instant::now();
    let mut seen = 0;
    wait_for(Duration::from_secs(240), "every unique press", || {
        let (inc, sig) = count(dir.path());
        if sig.len() != seen {
            seen = sig.len();
            eprintln!(
                "storm: {seen} of {unique} stored after {:?}",
                started.elapsed()
            );
        }
        (sig.len() >= unique).then_some((inc, sig))
    });
    // Incidents and their links were read by separate queries while joins were still being
    // committed: read once more now that everything is in.
    std::thread::sleep(Duration::from_millis(500));
    let (incidents, signals) = count(dir.path());
    eprintln!(
        "storm: {} presses ({} with duplicates) stored in {:?} after the restart",
        unique,
        interleaved.len(),
        started.elapsed()
    );
    assert_eq!(signals.len(), unique, "each unique press exactly once");
    let keys: std::collections::HashSet<_> = signals
        .iter()
        .map(|s| (s.source_id.clone(), s.seq))
        .collect();
    assert_eq!(keys.len(), unique);
    // Each button's presses came within two minutes of each other: one incident per button.
    let panic: Vec<_> = incidents.iter().filter(|i| i.kind == "panic").collect();
    assert_eq!(panic.len(), devices.len(), "one incident per button");
    assert!(
        panic
            .iter()
            .all(|i| i.signal_count == 100 && i.priority == 1),
        "{panic:?}"
    );
    drop(svc);
}

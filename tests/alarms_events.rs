//! Alarm changes leaving the service: device logins on the embedded broker, the SSE event
//! stream (live, resumed with `Last-Event-ID`, scoped per token), the MQTT events topic, and
//! presses that survive a Mosquitto restart in the middle of a storm.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use xueliang_tests::broker::TestBroker;
use xueliang_tests::*;

const TOKEN: &str = "events-admin-token-0123456789";
const OTHER_TOKEN: &str = "events-other-token-0123456789";

fn uniq() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:08x}", std::process::id() ^ t.subsec_nanos())
}

fn press_payload(seq: u64) -> String {
    let ts = xueliang_core::Clock::now(&xueliang_core::SystemClock).to_rfc3339();
    format!(
        r#"{{"seq": {seq}, "ts": "{ts}", "type": "panic", "battery": 87, "lat": 29.3, "lon": 104.7}}"#
    )
}

fn alarm_topic(device: &str) -> String {
    format!("xueliang/v1/devices/{device}/alarm")
}

fn ack_topic(device: &str) -> String {
    format!("xueliang/v1/devices/{device}/ack")
}

/// A node config: `mqtt` is the body of the `[mqtt]` table, `rest` is appended as is.
fn config(dir: &Path, node: &str, mqtt: &str, rest: &str) -> PathBuf {
    let text = format!(
        r#"[node]
id = "{node}"
data_dir = {dir:?}
[mqtt]
{mqtt}
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "admin"
token = "{TOKEN}"
role = "admin"
[storage]
min_free_bytes = "1 MiB"
{rest}
"#,
        dir = dir.display().to_string()
    );
    write_file(dir, "node.toml", &text)
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

/// Waits until the log holds `n` lines with `needle`, counting those already read (the
/// service may say it is connected before it says the API is listening).
fn wait_for_nth_log(svc: &mut Service, needle: &str, n: usize) {
    while svc.log.iter().filter(|l| l.contains(needle)).count() < n {
        svc.wait_for_log(needle, Duration::from_secs(15));
    }
}

fn connected(svc: &mut Service) {
    wait_for_nth_log(svc, "connected to the device broker", 1);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// MQTT clients

/// Connects and waits for the broker's verdict: the client on a successful CONNACK, else the
/// error the connection ended with.
async fn mqtt_connect(
    port: u16,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (client, mut ev) = AsyncClient::new(o, 100);
    loop {
        let Ok(polled) = tokio::time::timeout(Duration::from_secs(10), ev.poll()).await else {
            panic!("{client_id}: no answer from the broker");
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
                return Ok((client, ev));
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Polls until `done` says so; panics on a connection error or after `timeout`.
async fn pump(
    ev: &mut EventLoop,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Packet) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ev.poll()).await {
            Err(_) => panic!("timed out waiting for {what}"),
            Ok(Err(e)) => panic!("connection failed while waiting for {what}: {e}"),
            Ok(Ok(Event::Incoming(p))) => {
                if done(&p) {
                    return;
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Subscribes and waits for the SUBACK.
async fn subscribe(client: &AsyncClient, ev: &mut EventLoop, topic: &str) {
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    pump(ev, Duration::from_secs(10), "SUBACK", |p| {
        matches!(p, Packet::SubAck(_))
    })
    .await;
}

/// Publishes a press and waits for both the broker's PUBACK and the service's answer on the
/// device's ack topic (the client must be subscribed to it).
async fn press_and_hear_back(
    client: &AsyncClient,
    ev: &mut EventLoop,
    device: &str,
    seq: u64,
) -> Value {
    client
        .publish(
            alarm_topic(device),
            QoS::AtLeastOnce,
            false,
            press_payload(seq),
        )
        .await
        .unwrap();
    let (mut puback, mut ack) = (false, None);
    let topic = ack_topic(device);
    pump(ev, Duration::from_secs(15), "PUBACK and device ack", |p| {
        match p {
            Packet::PubAck(_) => puback = true,
            Packet::Publish(p) if p.topic == topic => {
                ack = Some(serde_json::from_slice::<Value>(&p.payload).expect("ack json"))
            }
            _ => {}
        }
        puback && ack.is_some()
    })
    .await;
    ack.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

#[derive(Clone, Debug)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
}

/// `GET /api/v1/events` held open; events are parsed on a thread as they arrive.
struct EventStream {
    sock: TcpStream,
    rx: mpsc::Receiver<SseEvent>,
}

impl EventStream {
    fn open(addr: SocketAddr, token: &str, last_event_id: Option<&str>) -> EventStream {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        let mut req = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Accept: text/event-stream\r\n"
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).expect("write request");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut r = BufReader::new(sock.try_clone().unwrap());
        let mut status = String::new();
        r.read_line(&mut status).expect("status line");
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).expect("header line");
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        assert!(status.contains(" 200 "), "event stream: {status}");
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        assert!(
            header("content-type").starts_with("text/event-stream"),
            "{headers:?}"
        );
        let chunked = header("transfer-encoding").contains("chunked");
        // The stream only ever pauses between events; keep-alives come every 15 s.
        sock.set_read_timeout(None).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            loop {
                let bytes = if chunked {
                    match read_chunk(&mut r) {
                        Some(b) if !b.is_empty() => b,
                        _ => return,
                    }
                } else {
                    let mut b = vec![0; 4096];
                    match r.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            b.truncate(n);
                            b
                        }
                    }
                };
                text.push_str(&String::from_utf8_lossy(&bytes));
                text = text.replace("\r\n", "\n");
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    if let Some(e) = parse_sse_block(&block)
                        && tx.send(e).is_err()
                    {
                        return;
                    }
                }
            }
        });
        EventStream { sock, rx }
    }

    /// The next event, or `None` when none comes within `timeout`.
    fn next(&self, timeout: Duration) -> Option<SseEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    fn expect(&self, what: &str) -> SseEvent {
        self.next(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("no event for {what} within 15 s"))
    }

    fn close(self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut size = String::new();
    r.read_line(&mut size).ok()?;
    let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
    let mut b = vec![0; n + 2];
    r.read_exact(&mut b).ok()?;
    b.truncate(n);
    Some(b)
}

/// One SSE event block; `None` for comments (keep-alives) and blocks without data.
fn parse_sse_block(block: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (String::new(), "message".to_owned(), Vec::new());
    for line in block.lines() {
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        let v = v.strip_prefix(' ').unwrap_or(v);
        match k {
            "id" => id = v.to_owned(),
            "event" => event = v.to_owned(),
            "data" => data.push(v.to_owned()),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    let data = serde_json::from_str(&data)
        .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
    Some(SseEvent { id, event, data })
}

/// Asserts an alarm event of `kind` about `source`, with the incident now in `state`.
fn assert_alarm(e: &SseEvent, kind: &str, source: &str, state: &str) {
    assert_eq!(e.event, "alarm", "{e:?}");
    assert!(!e.id.is_empty(), "an alarm event carries an id: {e:?}");
    assert_eq!(e.data["type"], kind, "{e:?}");
    assert_eq!(e.data["after"]["source_id"], source, "{e:?}");
    assert_eq!(e.data["after"]["state"], state, "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Tests

/// rumqttd answers a refused login without any CONNACK: it closes the connection, so the
/// client sees the connection end instead of `ConnectionRefused`. Either way, no session.
fn assert_refused(
    svc: &mut Service,
    r: Result<(AsyncClient, EventLoop), ConnectionError>,
    client_id: &str,
) {
    match r {
        Ok(_) => panic!("{client_id}: the embedded broker let a bad login in"),
        Err(e) => eprintln!("{client_id}: refused: {e}"),
    }
    let line = svc.wait_for_log("embedded broker refused a login", Duration::from_secs(5));
    assert!(line.contains(client_id), "{line}");
}

fn embedded_node(dir: &Path, node: &str, port: u16, with_pw: &str, no_pw: &str) -> PathBuf {
    config(
        dir,
        node,
        &format!("mode = \"embedded\"\nlisten = \"127.0.0.1:{port}\""),
        &format!(
            r#"[[devices]]
id = "{with_pw}"
username = "user-{with_pw}"
password = "s3cret-{with_pw}"
[[devices]]
id = "{no_pw}"
"#
        ),
    )
}

#[test]
fn embedded_broker_checks_device_passwords() {
    let id = uniq();
    let (node, with_pw, no_pw) = (format!("emb-{id}"), format!("pw-{id}"), format!("np-{id}"));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = embedded_node(dir.path(), &node, port, &with_pw, &no_pw);
    let mut svc = Service::start(&cfg, &[]);
    connected(&mut svc);
    let user = format!("user-{with_pw}");
    let good = format!("s3cret-{with_pw}");
    let rt = rt();

    // Wrong password, no password, and someone else's password: all refused.
    for pass in ["wrong", "", "s3cret-someone-else"] {
        let r = rt.block_on(mqtt_connect(port, &with_pw, Some((&user, pass))));
        assert_refused(&mut svc, r, &with_pw);
    }
    // The device id as the user name does not bypass the configured user name.
    let r = rt.block_on(mqtt_connect(port, &with_pw, Some((&with_pw, ""))));
    assert_refused(&mut svc, r, &with_pw);

    // The right password: the press is stored and acknowledged to the device.
    let ack = rt.block_on(async {
        let (client, mut ev) = mqtt_connect(port, &with_pw, Some((&user, &good)))
            .await
            .expect("the right password is accepted");
        subscribe(&client, &mut ev, &ack_topic(&with_pw)).await;
        let ack = press_and_hear_back(&client, &mut ev, &with_pw, 1).await;
        let _ = client.disconnect().await;
        ack
    });
    assert_eq!(ack["state"], "received", "{ack}");
    let alarm_id = ack["alarm_id"].as_str().expect("alarm_id").to_owned();
    let list = get(svc.addr(), "/api/v1/alarms", Some(TOKEN)).json();
    let incident = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == alarm_id.as_str())
        .unwrap_or_else(|| panic!("{alarm_id} not in {list}"));
    assert_eq!(incident["source_id"], with_pw.as_str());
    assert_eq!(incident["state"], "raised");

    // A device without a password gets in only under its own client id.
    let intruder = format!("intruder-{id}");
    let r = rt.block_on(mqtt_connect(port, &intruder, Some((&no_pw, ""))));
    assert_refused(&mut svc, r, &intruder);
    let r = rt.block_on(mqtt_connect(port, &with_pw, Some((&no_pw, ""))));
    assert_refused(&mut svc, r, &with_pw);
    let ack = rt.block_on(async {
        let (client, mut ev) = mqtt_connect(port, &no_pw, Some((&no_pw, "")))
            .await
            .expect("a device without a password connects as itself");
        subscribe(&client, &mut ev, &ack_topic(&no_pw)).await;
        let ack = press_and_hear_back(&client, &mut ev, &no_pw, 1).await;
        let _ = client.disconnect().await;
        ack
    });
    assert_eq!(ack["state"], "received", "{ack}");
    let list = get(svc.addr(), "/api/v1/alarms", Some(TOKEN)).json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == ack["alarm_id"] && a["source_id"] == no_pw.as_str()),
        "{list}"
    );
}

/// A node on its own Mosquitto with two buttons, a disabled camera, and a second token that
/// sees only `other` and that camera.
fn external_node(
    dir: &Path,
    node: &str,
    broker: &TestBroker,
    device: &str,
    other: &str,
) -> PathBuf {
    config(
        dir,
        node,
        &format!("mode = \"external\"\nurl = \"{}\"", broker.url()),
        &format!(
            r#"[[api.tokens]]
name = "other"
token = "{OTHER_TOKEN}"
role = "admin"
devices = ["{other}"]
cameras = ["cam-{node}"]
[[cameras]]
id = "cam-{node}"
url = "rtsp://127.0.0.1:9/none"
enabled = false
[[devices]]
id = "{device}"
[[devices]]
id = "{other}"
"#
        ),
    )
}

fn publish(port: u16, topic: &str, payload: &str) {
    let st = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .status()
        .expect("mosquitto_pub");
    assert!(st.success(), "publish to {topic}");
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

#[test]
fn event_stream_delivers_and_resumes() {
    let id = uniq();
    let (node, device, other) = (
        format!("sse-{id}"),
        format!("btn-{id}"),
        format!("other-{id}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start();
    let cfg = external_node(dir.path(), &node, &broker, &device, &other);
    let mut svc = Service::start(&cfg, &[]);
    connected(&mut svc);

    // A malformed cursor is refused with a JSON error, not silently restarted.
    let r = get_raw(
        svc.addr(),
        "/api/v1/events",
        Some(TOKEN),
        &[("Last-Event-ID", "not-an-event-id")],
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let err: Value = serde_json::from_slice(&r.body).expect("JSON error body");
    assert_eq!(err["error"]["kind"], "invalid_argument", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Last-Event-ID"),
        "{err}"
    );

    let admin = EventStream::open(svc.addr(), TOKEN, None);
    let scoped = EventStream::open(svc.addr(), OTHER_TOKEN, None);

    publish(broker.port, &alarm_topic(&device), &press_payload(1));
    let e1 = admin.expect("the press");
    assert_alarm(&e1, "new", &device, "raised");
    assert!(e1.data["before"].is_null(), "{e1:?}");
    let alarm = e1.data["after"]["id"].as_str().unwrap().to_owned();

    act(&svc, &alarm, "ack", r#"{"note": "seen"}"#);
    let e2 = admin.expect("the acknowledgement");
    assert_alarm(&e2, "update", &device, "acknowledged");
    assert_eq!(e2.data["before"]["state"], "raised", "{e2:?}");
    assert_eq!(e2.data["after"]["id"], alarm.as_str());
    admin.close();

    // Missed while disconnected: dispatch, resolve, and a new press (a new incident).
    act(&svc, &alarm, "dispatch", "");
    act(
        &svc,
        &alarm,
        "resolve",
        r#"{"note": "handled", "outcome": "genuine"}"#,
    );
    publish(broker.port, &alarm_topic(&device), &press_payload(2));
    let second = wait_for(Duration::from_secs(15), "the second incident", || {
        let list = get(svc.addr(), "/api/v1/alarms?state=open", Some(TOKEN)).json();
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["source_id"] == device.as_str())
            .map(|a| a["id"].as_str().unwrap().to_owned())
    });
    assert_ne!(second, alarm);

    let resumed = EventStream::open(svc.addr(), TOKEN, Some(&e2.id));
    let e3 = resumed.expect("the dispatch");
    assert_alarm(&e3, "update", &device, "dispatched");
    assert_eq!(e3.data["before"]["state"], "acknowledged", "{e3:?}");
    let e4 = resumed.expect("the resolution");
    assert_alarm(&e4, "end", &device, "resolved");
    assert_eq!(e4.data["after"]["outcome"], "genuine", "{e4:?}");
    assert_eq!(e4.data["before"]["state"], "dispatched", "{e4:?}");
    let e5 = resumed.expect("the second press");
    assert_alarm(&e5, "new", &device, "raised");
    assert_eq!(e5.data["after"]["id"], second.as_str());
    if let Some(extra) = resumed.next(Duration::from_millis(1500)) {
        panic!("nothing more happened, yet the stream sent {extra:?}");
    }
    let ids = [&e1.id, &e2.id, &e3.id, &e4.id, &e5.id];
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "{ids:?}"
    );
    resumed.close();

    // Resuming from further back replays the same events in the same order.
    let replay = EventStream::open(svc.addr(), TOKEN, Some(&e1.id));
    let got: Vec<SseEvent> = (0..4).map(|_| replay.expect("a replayed event")).collect();
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [&e2.id, &e3.id, &e4.id, &e5.id],
        "{got:?}"
    );
    assert_eq!(got[0].data, e2.data);
    if let Some(extra) = replay.next(Duration::from_millis(500)) {
        panic!("replayed past the end: {extra:?}");
    }
    replay.close();

    // The token for `other` saw nothing of the above; its first event is its own device's.
    publish(broker.port, &alarm_topic(&other), &press_payload(1));
    let first = scoped.expect("the other device's press");
    assert_alarm(&first, "new", &other, "raised");
    if let Some(extra) = scoped.next(Duration::from_millis(500)) {
        panic!("the scoped stream sent {extra:?}");
    }
    scoped.close();
    // Resuming does not widen the scope either.
    let scoped = EventStream::open(svc.addr(), OTHER_TOKEN, Some(&e1.id));
    let replayed = scoped.expect("the other device's press, replayed");
    assert_eq!(replayed.id, first.id, "{replayed:?}");
    assert_alarm(&replayed, "new", &other, "raised");
    if let Some(extra) = scoped.next(Duration::from_millis(500)) {
        panic!("the scoped stream sent {extra:?}");
    }
    scoped.close();
}

/// Tokens default to all cameras (`cameras = ["*"]`); one scoped only to `devices = [other]`
/// must still not see another device's alarms: a device's incidents follow the device scope.
#[test]
fn a_token_scoped_to_one_device_sees_no_other_device_alarms() {
    let id = uniq();
    let (node, device, other) = (
        format!("scope-{id}"),
        format!("btn-{id}"),
        format!("other-{id}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start();
    let cfg = config(
        dir.path(),
        &node,
        &format!("mode = \"external\"\nurl = \"{}\"", broker.url()),
        &format!(
            r#"[[api.tokens]]
name = "other"
token = "{OTHER_TOKEN}"
role = "duty"
devices = ["{other}"]
[[devices]]
id = "{device}"
[[devices]]
id = "{other}"
"#
        ),
    );
    let mut svc = Service::start(&cfg, &[]);
    connected(&mut svc);
    let scoped = EventStream::open(svc.addr(), OTHER_TOKEN, None);
    publish(broker.port, &alarm_topic(&device), &press_payload(1));
    publish(broker.port, &alarm_topic(&other), &press_payload(1));
    let first = scoped.expect("the other device's press");
    assert_alarm(&first, "new", &other, "raised");
    scoped.close();
    let list = get(svc.addr(), "/api/v1/alarms", Some(OTHER_TOKEN)).json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|a| a["source_id"] == other.as_str()),
        "{list}"
    );
}

#[test]
fn alarm_events_are_published_on_mqtt() {
    let id = uniq();
    let (node, device, other) = (
        format!("evt-{id}"),
        format!("btn-{id}"),
        format!("other-{id}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start();
    let cfg = external_node(dir.path(), &node, &broker, &device, &other);
    let mut svc = Service::start(&cfg, &[]);
    connected(&mut svc);
    let events = xueliang_tests::broker::watch_topic(
        broker.port,
        &format!("watch-{id}"),
        "xueliang/v1/events",
        false,
    );
    let next = |what: &str| {
        let raw = events
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no MQTT event for {what} within 15 s"));
        serde_json::from_slice::<Value>(&raw)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&raw)))
    };

    publish(broker.port, &alarm_topic(&device), &press_payload(1));
    let new = next("the press");
    assert_eq!(new["type"], "new", "{new}");
    assert!(new["before"].is_null(), "{new}");
    assert_eq!(new["after"]["state"], "raised", "{new}");
    assert_eq!(new["after"]["source_id"], device.as_str(), "{new}");
    assert_eq!(new["after"]["signal_count"], 1, "{new}");
    let alarm = new["after"]["id"].as_str().unwrap().to_owned();

    let acked = act(&svc, &alarm, "ack", "");
    let update = next("the acknowledgement");
    assert_eq!(update["type"], "update", "{update}");
    assert_eq!(update["before"]["state"], "raised", "{update}");
    assert_eq!(update["after"]["state"], "acknowledged", "{update}");
    assert_eq!(update["after"]["id"], alarm.as_str());
    assert_eq!(
        update["before"], new["after"],
        "before is the incident as it was"
    );
    assert_eq!(
        update["after"]["version"], acked["version"],
        "after is the incident as stored: {update} vs {acked}"
    );

    act(&svc, &alarm, "resolve", r#"{"outcome": "test"}"#);
    let end = next("the resolution");
    assert_eq!(end["type"], "end", "{end}");
    assert_eq!(end["before"]["state"], "acknowledged", "{end}");
    assert_eq!(end["after"]["state"], "resolved", "{end}");
    assert_eq!(end["after"]["outcome"], "test", "{end}");
    assert_eq!(end["after"]["id"], alarm.as_str());
    assert!(!end["after"]["resolved_at"].is_null(), "{end}");
    if let Ok(extra) = events.recv_timeout(Duration::from_millis(500)) {
        panic!(
            "one event per change, yet also {}",
            String::from_utf8_lossy(&extra)
        );
    }
}

/// One button's presses, paced, from a client with a persistent session: unacknowledged
/// presses are sent again once the broker is back.
async fn button(port: u16, device: String, presses: u64, acked: Arc<AtomicUsize>) {
    let mut o = MqttOptions::new(device.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_clean_session(false)
        .set_inflight(20);
    let (client, mut ev) = AsyncClient::new(o, 10);
    let topic = alarm_topic(&device);
    let publisher = tokio::spawn(async move {
        for seq in 1..=presses {
            client
                .publish(&topic, QoS::AtLeastOnce, false, press_payload(seq))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        client
    });
    let mut mine = 0;
    let mut connects = 0;
    while mine < presses {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                mine += 1;
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                connects += 1;
                // Without the session the client drops what it had not got acknowledged.
                assert!(
                    connects == 1 || a.session_present,
                    "{device}: the broker forgot the session across its restart"
                );
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let client = publisher.await.unwrap();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
}

#[test]
fn mosquitto_restart_mid_storm_loses_nothing() {
    const BUTTONS: usize = 20;
    const PRESSES: u64 = 100;
    let unique = BUTTONS * PRESSES as usize;
    let id = uniq();
    let node = format!("restart-{id}");
    let devices: Vec<String> = (0..BUTTONS).map(|i| format!("r{id}-{i:02}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start_persistent();
    let mut rest = String::new();
    for d in &devices {
        rest.push_str(&format!("[[devices]]\nid = \"{d}\"\n"));
    }
    let cfg = config(
        dir.path(),
        &node,
        &format!("mode = \"external\"\nurl = \"{}\"", broker.url()),
        &rest,
    );
    let mut svc = Service::start(&cfg, &[]);
    connected(&mut svc);

    let acked = Arc::new(AtomicUsize::new(0));
    let storm = {
        let (acked, devices, port) = (acked.clone(), devices.clone(), broker.port);
        std::thread::spawn(move || {
            rt().block_on(async move {
                let tasks: Vec<_> = devices
                    .into_iter()
                    .map(|d| tokio::spawn(button(port, d, PRESSES, acked.clone())))
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    };
    wait_for(Duration::from_secs(20), "the storm to get going", || {
        (acked.load(Ordering::SeqCst) >= unique / 3).then_some(())
    });
    broker.restart();
    let at_restart = acked.load(Ordering::SeqCst);
    eprintln!("mosquitto restarted after {at_restart} of {unique} presses were acknowledged");
    assert!(at_restart < unique, "the storm was over before the restart");
    let deadline = Instant::now() + Duration::from_secs(25);
    while !storm.is_finished() {
        assert!(
            Instant::now() < deadline,
            "buttons stalled at {} of {unique} acknowledged presses",
            acked.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    storm
        .join()
        .expect("every button got every press acknowledged");
    // The service's own session came back too.
    wait_for_nth_log(&mut svc, "connected to the device broker", 2);
    let again = svc
        .log
        .iter()
        .filter(|l| l.contains("connected to the device broker"))
        .nth(1)
        .unwrap();
    assert!(again.contains(r#""session_present":true"#), "{again}");

    let mut seen = 0;
    wait_for(Duration::from_secs(20), "every unique press", || {
        let (_, sig) = stored_alarms(dir.path(), &node);
        if sig.len() != seen {
            seen = sig.len();
            eprintln!("{seen} of {unique} presses stored");
        }
        (sig.len() >= unique).then_some(())
    });
    // Let anything redelivered late arrive, then read once more at one state.
    std::thread::sleep(Duration::from_millis(1000));
    let (incidents, signals) = stored_alarms(dir.path(), &node);
    assert_eq!(signals.len(), unique, "each unique press exactly once");
    let keys: HashSet<_> = signals
        .iter()
        .map(|s| (s.source_id.clone(), s.seq))
        .collect();
    assert_eq!(keys.len(), unique, "no press stored twice");
    for d in &devices {
        for seq in 1..=PRESSES as i64 {
            assert!(
                keys.contains(&(d.clone(), Some(seq))),
                "{d} press {seq} lost"
            );
        }
    }
    let counted: i64 = incidents.iter().map(|i| i.signal_count).sum();
    assert_eq!(
        counted, unique as i64,
        "incidents count each press once: {incidents:?}"
    );
    let metrics = get(svc.addr(), "/metrics", None).body;
    assert!(
        metrics.contains(&format!(
            r#"xueliang_alarm_incidents_total{{kind="panic"}} {BUTTONS}"#
        )),
        "one incident per button: {metrics}"
    );
}

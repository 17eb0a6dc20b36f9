//! GB/T 28181 lower platform against SIPp playing the city upper platform (scenarios in
//! tests/sipp/): digest registration, keepalives, a catalog query, alarm delivery, and an upper
//! that fails (500, 408, silence) without the platform storming it.
//!
//! Needs `sipp` (Debian `sip-tester`); the tests are skipped with a note when it is missing.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::watch;
use xueliang_bridge::Sink;
use xueliang_bridge::gb28181::{
    self, Catalog, Channel, ChannelKind, DeviceInfo, GbAlarmSink, PlatformConfig, PlatformHandle,
    SubscriptionKind, alarm_method, digest, manscdp,
};
use xueliang_core::config::{Charset, SipTransport};
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{EntityId, Timestamp};
use xueliang_store::OutboxEntry;

const LOCAL_ID: &str = "51012400012000000001";
const SERVER_ID: &str = "51010000002000000001";
const PASSWORD: &str = "gb-secret-1";

fn have_sipp() -> bool {
    Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_port(tcp: bool) -> u16 {
    if tcp {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// One SIPp process acting as the upper platform, killed on drop.
struct Sipp {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sipp {
    /// `globals` set the scenario's `<Global variables>`.
    fn start(scenario: &str, tcp: bool, globals: &[(&str, &str)]) -> Sipp {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(tcp);
        let sf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/sipp")
            .join(scenario);
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf")
            .arg(sf)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", if tcp { "t1" } else { "u1" }])
            .args(["-nostdin", "-trace_msg", "-trace_err"])
            .arg("-message_file")
            .arg(dir.path().join("messages.log"))
            .arg("-error_file")
            .arg(dir.path().join("errors.log"))
            // A backstop: SIPp never outlives a crashed test by more than this.
            .args(["-timeout", "60s"]);
        for (k, v) in globals {
            cmd.args(["-set", k, v]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sipp");
        // SIPp binds within a few ms; the platform retries anyway.
        std::thread::sleep(Duration::from_millis(300));
        Sipp { child, dir, port }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("messages.log")
    }

    /// Messages SIPp received, in order, as text (GB18030 bodies decoded).
    fn received(&self) -> Vec<String> {
        let raw = std::fs::read(self.log_path()).unwrap_or_default();
        let text = manscdp::decode(&raw);
        text.split("\n----------------------------------------------- ")
            .filter_map(|block| {
                let (head, msg) = block.split_once('\n')?;
                let _ = head;
                let (kind, rest) = msg.split_once('\n')?;
                kind.contains("message received")
                    .then(|| rest.trim().to_owned())
            })
            .collect()
    }

    fn requests(&self, method: &str) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|m| m.starts_with(&format!("{method} ")))
            .collect()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn catalog() -> Catalog {
    Catalog {
        channels: vec![
            Channel {
                id: "51012400011320000001".into(),
                name: "村口东 <入口>".into(),
                kind: ChannelKind::Camera,
                online: true,
                location: Some((30.8, 103.9)),
                address: Some("村口".into()),
            },
            Channel {
                id: "51012400011320000002".into(),
                name: "祠堂 & 广场".into(),
                kind: ChannelKind::Camera,
                online: false,
                location: None,
                address: None,
            },
            Channel {
                id: "51012400011340000001".into(),
                name: "一键报警 1".into(),
                kind: ChannelKind::AlarmInput,
                online: true,
                location: Some((30.81, 103.91)),
                address: None,
            },
        ],
    }
}

fn config(sipp: &Sipp, tcp: bool) -> PlatformConfig {
    PlatformConfig {
        local_id: LOCAL_ID.into(),
        local_listen: "127.0.0.1:0".parse().unwrap(),
        server_id: SERVER_ID.into(),
        server_domain: "5101000000".into(),
        server_addr: format!("127.0.0.1:{}", sipp.port),
        transport: if tcp {
            SipTransport::Tcp
        } else {
            SipTransport::Udp
        },
        password: PASSWORD.into(),
        register_expires: Duration::from_secs(3600),
        keepalive_interval: Duration::from_secs(2),
        keepalive_max_misses: 3,
        charset: Charset::Gb18030,
        gb2022: false,
        t1: Duration::from_millis(500),
        transaction_timeout: Duration::from_secs(3),
        retry_base: Duration::from_millis(500),
        retry_cap: Duration::from_secs(4),
        catalog_page_size: 2,
        device_info: DeviceInfo {
            name: "test".into(),
            manufacturer: "test".into(),
            model: "test".into(),
            firmware: "0".into(),
        },
        user_agent: "xueliang-test".into(),
        shutdown_grace: Duration::from_secs(2),
    }
}

fn entry(payload: Vec<u8>) -> OutboxEntry {
    let now = Timestamp::from_millis(1_780_000_000_000);
    OutboxEntry {
        id: EntityId::new_ordered(now),
        node_id: "test-node".into(),
        sink: "gb28181".into(),
        channel: "incident-1".into(),
        priority: 1,
        created_at: now,
        payload,
        attempts: 0,
        next_attempt: now,
        last_error: None,
        delivered_at: None,
        expired_at: None,
    }
}

fn panic_alarm(sn: u32) -> Vec<u8> {
    let t = chrono::DateTime::parse_from_rfc3339("2026-05-01T21:14:03+08:00").unwrap();
    gb28181::alarm_body(
        sn,
        "51012400011340000001",
        1,
        alarm_method::DEVICE,
        None,
        t,
        Some(30.81),
        Some(103.91),
        "一键报警 <村口>",
        Charset::Gb18030,
    )
}

async fn start(
    sipp: &Sipp,
    cfg: PlatformConfig,
) -> (PlatformHandle, Shutdown, tokio::task::JoinHandle<()>) {
    let (h, shutdown, task, _tx) = start_with_catalog(sipp, cfg).await;
    (h, shutdown, task)
}

/// [`start`], keeping the catalog's sender so the test can change the catalog.
async fn start_with_catalog(
    sipp: &Sipp,
    cfg: PlatformConfig,
) -> (
    PlatformHandle,
    Shutdown,
    tokio::task::JoinHandle<()>,
    watch::Sender<Catalog>,
) {
    let (tx, rx) = watch::channel(catalog());
    let shutdown = Shutdown::new();
    let (h, task) = gb28181::spawn(cfg, rx, shutdown.clone()).await.unwrap();
    let _ = sipp;
    tokio::time::timeout(Duration::from_secs(10), h.registered())
        .await
        .expect("registered in time")
        .unwrap();
    (h, shutdown, task, tx)
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn full_flow(tcp: bool) {
    if !have_sipp() {
        eprintln!("sipp not installed; skipping");
        return;
    }
    let sipp = Sipp::start("uas_upper.xml", tcp, &[]);
    let (h, shutdown, task) = start(&sipp, config(&sipp, tcp)).await;

    // (d) an alarm notify is answered 200 → delivered.
    let sink = GbAlarmSink::new(h.clone());
    let alarm = panic_alarm(271_828);
    sink.deliver(&entry(alarm.clone()))
        .await
        .expect("alarm delivered");

    // (b) keepalives every 2 s, answered, so no misses.
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    assert_eq!(h.status().keepalive_misses, 0);
    assert!(h.status().registered);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();

    let msgs = sipp.requests("REGISTER");
    // (a) REGISTER, 401, REGISTER with Authorization (SIPp's verifyauth accepted it, else 403
    // and no registration), then the Expires: 0 unregister pair at shutdown.
    assert!(msgs.len() >= 2, "{msgs:#?}");
    assert!(header(&msgs[0], "Authorization").is_none());
    let auth = header(&msgs[1], "Authorization").expect("digest answer");
    let f = digest::parse_authorization(auth).unwrap();
    let get = |k: &str| {
        f.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("username"), LOCAL_ID);
    assert_eq!(get("realm"), "5101000000");
    assert_eq!(get("qop"), "auth");
    let expected = digest::response(
        LOCAL_ID,
        "5101000000",
        PASSWORD,
        "REGISTER",
        &get("uri"),
        &get("nonce"),
        Some((&get("nc"), &get("cnonce"))),
    );
    assert_eq!(get("response"), expected);
    assert_eq!(header(&msgs[1], "Expires"), Some("3600"));
    assert!(
        msgs.iter().any(|m| header(m, "Expires") == Some("0")),
        "unregister on shutdown"
    );

    let messages = sipp.requests("MESSAGE");
    // (b) keepalives: one per 2 s over ~5 s.
    let keepalives: Vec<_> = messages
        .iter()
        .filter(|m| m.contains("<CmdType>Keepalive</CmdType>"))
        .collect();
    assert!(
        (2..=3).contains(&keepalives.len()),
        "keepalives: {}",
        keepalives.len()
    );
    assert!(keepalives[0].contains(&format!("<DeviceID>{LOCAL_ID}</DeviceID>")));
    assert_eq!(
        header(keepalives[0], "Content-Type"),
        Some("Application/MANSCDP+xml")
    );

    // (c) catalog: SN echoed, SumNum exact, pages add up to it with unique ids.
    let pages: Vec<_> = messages
        .iter()
        .filter(|m| m.contains("<CmdType>Catalog</CmdType>"))
        .collect();
    assert_eq!(pages.len(), 2, "3 channels at 2 per page");
    let mut ids = Vec::new();
    for p in &pages {
        assert!(p.contains("<SN>17</SN>"));
        assert!(p.contains("<SumNum>3</SumNum>"));
        assert!(p.contains("encoding=\"GB18030\""));
        for (i, _) in p.match_indices("<Item>") {
            ids.push(manscdp::element(&p[i..], "DeviceID").unwrap());
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!(
        pages
            .iter()
            .any(|p| p.contains("<Name>村口东 &lt;入口&gt;</Name>"))
    );
    assert!(
        pages
            .iter()
            .any(|p| p.contains("<Name>祠堂 &amp; 广场</Name>"))
    );

    // (d) the alarm arrived once (answered at once, so no retransmission), byte for byte.
    let alarms: Vec<_> = messages
        .iter()
        .filter(|m| m.contains("<CmdType>Alarm</CmdType>"))
        .collect();
    assert_eq!(alarms.len(), 1);
    let text = manscdp::decode(&alarm);
    assert!(alarms[0].contains(text.trim()));
}

#[tokio::test]
async fn udp_register_keepalive_catalog_and_alarm_against_sipp() {
    full_flow(false).await;
}

#[tokio::test]
async fn tcp_register_keepalive_catalog_and_alarm_against_sipp() {
    full_flow(true).await;
}

#[tokio::test]
async fn upper_answering_500_or_408_gives_retryable_errors_without_a_storm() {
    if !have_sipp() {
        eprintln!("sipp not installed; skipping");
        return;
    }
    for code in ["500", "408"] {
        let sipp = Sipp::start(&format!("uas_reject_{code}.xml"), false, &[]);
        let mut cfg = config(&sipp, false);
        // No keepalive inside the window: every MESSAGE SIPp sees is an alarm attempt.
        cfg.keepalive_interval = Duration::from_secs(60);
        let (h, shutdown, task) = start(&sipp, cfg).await;
        let sink = GbAlarmSink::new(h);
        for sn in 1..=3 {
            let began = std::time::Instant::now();
            let err = sink.deliver(&entry(panic_alarm(sn))).await.unwrap_err();
            assert!(err.is_retryable(), "{err}");
            assert!(err.message().contains(code), "{err}");
            assert!(began.elapsed() < Duration::from_secs(1));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        shutdown.trigger();
        task.await.unwrap();
        // One request per deliver(): the final answer stops retransmission, and the sink
        // leaves retrying to the outbox's back-off.
        let alarms = sipp.requests("MESSAGE");
        assert_eq!(alarms.len(), 3, "{code}: {alarms:#?}");
    }
}

#[tokio::test]
async fn silent_upper_times_out_and_missed_keepalives_reregister_without_a_storm() {
    if !have_sipp() {
        eprintln!("sipp not installed; skipping");
        return;
    }
    let sipp = Sipp::start("uas_silent.xml", false, &[]);
    let mut cfg = config(&sipp, false);
    cfg.keepalive_interval = Duration::from_secs(1);
    let (h, shutdown, task) = start(&sipp, cfg).await;
    let sink = GbAlarmSink::new(h.clone());

    let began = std::time::Instant::now();
    let err = sink.deliver(&entry(panic_alarm(99))).await.unwrap_err();
    assert!(err.is_retryable());
    assert!(err.message().contains("no final response"), "{err}");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(2_900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Three unanswered keepalives (1 s apart) → registration lost → re-registered after a
    // jittered back-off (0.25–0.5 s here).
    tokio::time::timeout(Duration::from_secs(6), async {
        let mut rx = h.watch_status();
        rx.wait_for(|s| s.registrations >= 2 && s.registered)
            .await
            .unwrap();
    })
    .await
    .expect("re-registered after missed keepalives");
    shutdown.trigger();
    task.await.unwrap();

    let registers = sipp.requests("REGISTER");
    let messages = sipp.requests("MESSAGE");
    // UDP retransmissions of the alarm: sent at 0, 0.5, 1.5 s then the 3 s timeout.
    let alarm_sends = messages
        .iter()
        .filter(|m| m.contains("<CmdType>Alarm</CmdType>"))
        .count();
    assert!((2..=4).contains(&alarm_sends), "alarm sends {alarm_sends}");
    // Two registrations plus the unregister: no storm. The silent upper's SIPp call for the
    // first Call-ID has ended, so the unregister is retransmitted unanswered until the grace
    // period; count transactions (Call-ID, CSeq), not datagrams.
    let transactions: std::collections::HashSet<_> = registers
        .iter()
        .map(|m| (header(m, "Call-ID"), header(m, "CSeq")))
        .collect();
    assert_eq!(transactions.len(), 3, "{transactions:?}");
    assert!(
        registers.len() <= 8,
        "REGISTER datagrams: {}",
        registers.len()
    );
    // A keepalive is never retransmitted past its own interval: at most 3 sends each.
    let call_ids: std::collections::HashSet<_> = messages
        .iter()
        .filter(|m| m.contains("Keepalive"))
        .filter_map(|m| header(m, "Call-ID"))
        .collect();
    let ka_sends = messages.iter().filter(|m| m.contains("Keepalive")).count();
    assert!(
        ka_sends <= call_ids.len() * 2,
        "{ka_sends} sends / {} keepalives",
        call_ids.len()
    );
}

fn motion_alarm(sn: u32) -> Vec<u8> {
    let t = chrono::DateTime::parse_from_rfc3339("2026-05-01T21:15:00+08:00").unwrap();
    gb28181::alarm_body(
        sn,
        "51012400011320000001",
        3,
        alarm_method::VIDEO,
        Some(2),
        t,
        None,
        None,
        "村口东 移动侦测",
        Charset::Gb18030,
    )
}

async fn alarm_subscription(tcp: bool) {
    if !have_sipp() {
        eprintln!("sipp not installed; skipping");
        return;
    }
    let sipp = Sipp::start(
        "uas_upper_subscribe.xml",
        tcp,
        &[
            ("notify_answer", "200"),
            ("subscribe_event", "presence"),
            ("subscribe_cmd", "Alarm"),
        ],
    );
    let mut cfg = config(&sipp, tcp);
    cfg.keepalive_interval = Duration::from_secs(60);
    let (h, shutdown, task) = start(&sipp, cfg).await;
    let mut status = h.watch_status();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| {
            s.subscriptions
                .iter()
                .any(|x| x.kind == SubscriptionKind::Alarm)
        }),
    )
    .await
    .expect("the upper subscribed to alarms")
    .unwrap();

    // Priority 1 passes the subscription's filter: a NOTIFY in its dialog. The motion alarm
    // (priority 3) does not: the unsolicited MESSAGE.
    let sink = GbAlarmSink::new(h.clone());
    let panic = panic_alarm(31_415);
    sink.deliver(&entry(panic.clone()))
        .await
        .expect("panic alarm delivered by NOTIFY");
    let motion = motion_alarm(31_416);
    sink.deliver(&entry(motion.clone()))
        .await
        .expect("motion alarm delivered by MESSAGE");
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();

    let registers = sipp.requests("REGISTER");
    let reg_call = header(&registers[0], "Call-ID").unwrap().to_owned();
    let notifies = sipp.requests("NOTIFY");
    assert_eq!(notifies.len(), 1, "{notifies:#?}");
    let n = &notifies[0];
    assert!(
        n.starts_with("NOTIFY sip:51010000002000000001@127.0.0.1:"),
        "{n}"
    );
    assert_eq!(
        header(n, "Call-ID"),
        Some(reg_call.as_str()),
        "in the dialog"
    );
    assert_eq!(header(n, "Event"), Some("presence"));
    let state = header(n, "Subscription-State").unwrap();
    assert!(state.starts_with("active;expires="), "{state}");
    let to = header(n, "To").unwrap();
    assert!(
        to.contains("<sip:51010000002000000001@5101000000>;tag="),
        "{to}"
    );
    assert!(
        header(n, "From").unwrap().contains(";tag="),
        "our tag from the 200"
    );
    assert_eq!(header(n, "CSeq"), Some("1 NOTIFY"));
    assert!(n.contains(manscdp::decode(&panic).trim()), "{n}");

    let alarms: Vec<_> = sipp
        .requests("MESSAGE")
        .into_iter()
        .filter(|m| m.contains("<CmdType>Alarm</CmdType>"))
        .collect();
    assert_eq!(alarms.len(), 1, "{alarms:#?}");
    assert!(alarms[0].contains(manscdp::decode(&motion).trim()));
    assert!(
        registers.iter().any(|m| header(m, "Expires") == Some("0")),
        "unregister answered in the subscription's call"
    );
}

#[tokio::test]
async fn alarms_the_upper_subscribed_to_go_as_notify_in_its_dialog_over_udp() {
    alarm_subscription(false).await;
}

#[tokio::test]
async fn alarms_the_upper_subscribed_to_go_as_notify_in_its_dialog_over_tcp() {
    alarm_subscription(true).await;
}

#[tokio::test]
async fn a_notify_the_upper_no_longer_knows_drops_the_subscription_and_the_retry_is_a_message() {
    if !have_sipp() {
        eprintln!("sipp not installed; skipping");
        return;
    }
    let sipp = Sipp::start(
        "uas_upper_subscribe.xml",
        false,
        &[
            ("notify_answer", "481"),
            ("subscribe_event", "presence"),
            ("subscribe_cmd", "Alarm"),
        ],
    );
    let mut cfg = config(&sipp, false);
    cfg.keepalive_interval = Duration::from_secs(60);
    let (h, shutdown, task) = start(&sipp, cfg).await;
    let mut status = h.watch_status();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| !s.subscriptions.is_empty()),
    )
    .await
    .expect("the upper subscribed to alarms")
    .unwrap();
    let sink = GbAlarmSink::new(h.clone());
    let panic = entry(panic_alarm(27));
    let err = sink.deliver(&panic).await.unwrap_err();
    assert!(err.is_retryable() && err.message().contains("481"), "{err}");
    assert!(h.status().subscriptions.is_empty(), "subscription dropped");
    sink.deliver(&panic)
        .await
        .expect("the retry goes as MESSAGE");
    shutdown.trigger();
    task.await.unwrap();
    assert_eq!(sipp.requests("NOTIFY").len(), 1);
    let text = manscdp::decode(&panic.payload);
    let alarms: Vec<_> = sipp
        .requests("MESSAGE")
        .into_iter()
        .filter(|m| m.contains(text.trim()))
        .collect();
    assert_eq!(alarms.len(), 1, "{alarms:#?}");
}

#[tokio::test]
async fn catalog_subscribers_hear_of_channels_going_off_and_on() {
    if !have_sipp() {
        eprintln!("sipp not installed; skipping");
        return;
    }
    let sipp = Sipp::start(
        "uas_upper_subscribe.xml",
        false,
        &[
            ("notify_answer", "200"),
            ("subscribe_event", "Catalog"),
            ("subscribe_cmd", "Catalog"),
        ],
    );
    let mut cfg = config(&sipp, false);
    cfg.keepalive_interval = Duration::from_secs(60);
    let (h, shutdown, task, catalog_tx) = start_with_catalog(&sipp, cfg).await;
    let mut status = h.watch_status();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| {
            s.subscriptions
                .iter()
                .any(|x| x.kind == SubscriptionKind::Catalog)
        }),
    )
    .await
    .expect("the upper subscribed to the catalog")
    .unwrap();

    // The first camera goes offline, then back; a redundant update changes nothing.
    let camera = catalog().channels[0].id.clone();
    catalog_tx.send_modify(|c| c.channels[0].online = false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    catalog_tx.send_modify(|c| c.channels[0].online = true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    catalog_tx.send_modify(|c| c.channels[2].name = "一键报警 1".into());
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.trigger();
    task.await.unwrap();

    let notifies = sipp.requests("NOTIFY");
    assert_eq!(notifies.len(), 2, "{notifies:#?}");
    for (n, event) in notifies.iter().zip(["OFF", "ON"]) {
        assert_eq!(header(n, "Event"), Some("Catalog"));
        assert!(n.contains("<CmdType>Catalog</CmdType>"), "{n}");
        assert!(n.contains("<SumNum>1</SumNum>"), "{n}");
        let item = &n[n.find("<Item>").expect("an item")..];
        assert_eq!(
            manscdp::element(item, "DeviceID").as_deref(),
            Some(camera.as_str())
        );
        assert_eq!(manscdp::element(item, "Event").as_deref(), Some(event));
        assert_eq!(manscdp::element(item, "Status").as_deref(), Some(event));
    }
    assert_eq!(header(&notifies[0], "CSeq"), Some("1 NOTIFY"));
    assert_eq!(header(&notifies[1], "CSeq"), Some("2 NOTIFY"));
}

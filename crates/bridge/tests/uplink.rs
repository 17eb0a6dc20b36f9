//! The MQTT uplink and a drainer against a real Mosquitto standing in for the city broker.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::broker::{CityBroker, Pki};
use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio_rustls::rustls::ClientConfig;
use xueliang_bridge::mqtt_uplink::SINK;
use xueliang_bridge::{
    AlarmEventKind, DrainPolicy, Drainer, MqttUplink, OutboxMetrics, Sink, UplinkConfig,
    alarm_entry,
};
use xueliang_core::config::{BridgeMqttConfig, Secret};
use xueliang_core::model::{Condition, IncidentState};
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, EntityId, SystemClock, Timestamp};
use xueliang_store::testing::TestDb;
use xueliang_store::{Incident, Store};

const CONSUMER: &str = "city-consumer";

fn incident(id: EntityId, version: i64, at: Timestamp) -> Incident {
    Incident {
        id,
        node_id: NODE.into(),
        kind: "panic".into(),
        source_id: "btn".into(),
        priority: 1,
        condition: Condition::Active,
        state: IncidentState::Raised,
        outcome: None,
        title: "一键报警".into(),
        lat: None,
        lon: None,
        opened_at: at,
        updated_at: at,
        resolved_at: None,
        escalation_level: 0,
        signal_count: version,
        version,
    }
}

fn consumer_options(port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(CONSUMER, "127.0.0.1", port);
    o.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5));
    o
}

/// Connects the city's consumer once so the broker keeps its subscription (and queues for
/// it) while it is away.
async fn register_consumer(opts: MqttOptions) {
    let (c, mut el) = AsyncClient::new(opts, 10);
    c.subscribe("city/v1/+/alarms", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match el.poll().await.expect("consumer connects") {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// Collects `(event_id, body)` of alarm messages until `want` distinct events arrived.
async fn consume(opts: MqttOptions, want: usize, limit: Duration) -> Vec<(String, Vec<u8>)> {
    consume_counting(opts, want, limit, Arc::default()).await
}

/// [`consume`], counting messages into `progress` as they arrive.
async fn consume_counting(
    opts: MqttOptions,
    want: usize,
    limit: Duration,
    progress: Arc<AtomicUsize>,
) -> Vec<(String, Vec<u8>)> {
    let (_c, mut el) = AsyncClient::new(opts, 10);
    let mut got = Vec::new();
    let mut distinct = HashSet::new();
    let deadline = tokio::time::Instant::now() + limit;
    while distinct.len() < want {
        let Ok(ev) = tokio::time::timeout_at(deadline, el.poll()).await else {
            panic!("only {} of {want} events arrived", distinct.len());
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/alarms") => {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                let id = v["event_id"].as_str().unwrap().to_owned();
                distinct.insert(id.clone());
                got.push((id, p.payload.to_vec()));
                progress.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("consumer connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    got
}

fn uplink_config(port: u16) -> UplinkConfig {
    let mut c = UplinkConfig::new("127.0.0.1", port, NODE);
    c.topic_prefix = "city/v1".into();
    c.reconnect_min = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(400);
    c.ack_timeout = Duration::from_secs(5);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_alarms_raised_while_the_city_is_down_all_arrive_in_channel_order() {
    let mut city = CityBroker::configure();
    city.start();
    register_consumer(consumer_options(city.port)).await;
    city.stop();

    let db = TestDb::sqlite();
    let store: Arc<dyn Store> = db.open(NODE).await.unwrap();
    let stop = Shutdown::new();
    let (uplink, uplink_task) = MqttUplink::start(uplink_config(city.port), stop.clone());
    let reg = prometheus::Registry::new();
    let metrics = OutboxMetrics::register(&reg).unwrap();
    let policy = DrainPolicy {
        batch: 512,
        per_channel: 16,
        concurrency: 32,
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        stats_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let drainer = Drainer::new(
        store.clone(),
        Arc::new(uplink.clone()),
        policy,
        &metrics,
        Arc::new(SystemClock),
    );
    let notify = drainer.notifier();
    let drain_task = tokio::spawn(drainer.run(stop.clone()));

    // 10,000 alarm reports over 100 incidents, committed in 100 transactions while the city
    // is unreachable; incident.version is each report's place in its incident.
    let incidents: Vec<EntityId> = (0..100)
        .map(|_| EntityId::new_ordered(SystemClock.now()))
        .collect();
    let mut sent: HashMap<String, Vec<u8>> = HashMap::new();
    for version in 1..=100 {
        let now = SystemClock.now();
        let batch: Vec<_> = incidents
            .iter()
            .map(|id| {
                let kind = if version == 1 {
                    AlarmEventKind::New
                } else {
                    AlarmEventKind::Update
                };
                let event = EntityId::new_ordered(now);
                let e = alarm_entry(SINK, NODE, event, &incident(*id, version, now), kind, now);
                sent.insert(event.to_string(), e.payload.clone());
                e
            })
            .collect();
        store.enqueue_outbox(&batch).await.unwrap();
        notify.notify_one();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!uplink.is_connected());
    assert_eq!(store.outbox_stats(SINK).await.unwrap().pending, 10_000);
    let attempts = metric(&reg, "xueliang_outbox_attempts_total", &[("sink", SINK)]);
    assert!(attempts <= 40.0, "{attempts} attempts against a dead city");
    assert!(metric(&reg, "xueliang_outbox_backlog", &[("sink", SINK)]) > 9_000.0);

    // The city comes back.
    city.start();
    let got = consume(consumer_options(city.port), 10_000, Duration::from_secs(40)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.outbox_stats(SINK).await.unwrap().pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.trigger();
    drain_task.await.unwrap();
    uplink_task.await.unwrap();

    let mut first = HashSet::new();
    let mut last_version: HashMap<String, i64> = HashMap::new();
    let mut dups = 0;
    for (event, body) in &got {
        assert_eq!(&sent[event], body, "duplicates are byte-identical");
        if !first.insert(event.clone()) {
            dups += 1;
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let inc = v["incident"]["id"].as_str().unwrap().to_owned();
        let version = v["incident"]["version"].as_i64().unwrap();
        let prev = last_version.insert(inc.clone(), version).unwrap_or(0);
        assert_eq!(version, prev + 1, "incident {inc}: {version} after {prev}");
    }
    assert_eq!(first.len(), 10_000, "no loss");
    assert_eq!(last_version.len(), 100);
    assert!(dups < 1_000, "{dups} duplicates");
    eprintln!("{dups} duplicates after the outage");
    let l = [("sink", SINK)];
    assert_eq!(
        metric(&reg, "xueliang_outbox_delivered_total", &l),
        10_000.0
    );
    assert_eq!(
        metric(&reg, "xueliang_outbox_delivery_latency_seconds", &l),
        10_000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_city_gets_a_trickle_of_attempts_not_a_storm() {
    // Accepts TCP and never says a word: no CONNACK, ever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            conns.push(c);
        }
    });

    let db = TestDb::sqlite();
    let store: Arc<dyn Store> = db.open(NODE).await.unwrap();
    let now = SystemClock.now();
    let backlog: Vec<_> = (0..500)
        .map(|i| entry(SINK, &format!("ch-{}", i % 50), i / 50, 5, now))
        .collect();
    store.enqueue_outbox(&backlog).await.unwrap();
    let stop = Shutdown::new();
    let (uplink, uplink_task) = MqttUplink::start(uplink_config(port), stop.clone());
    let reg = prometheus::Registry::new();
    let metrics = OutboxMetrics::register(&reg).unwrap();
    let drainer = Drainer::new(
        store.clone(),
        Arc::new(uplink.clone()),
        DrainPolicy {
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            ..Default::default()
        },
        &metrics,
        Arc::new(SystemClock),
    );
    let drain_task = tokio::spawn(drainer.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.trigger();
    drain_task.await.unwrap();
    uplink_task.await.unwrap();
    hold.abort();

    assert!(!uplink.is_connected());
    let attempts = metric(&reg, "xueliang_outbox_attempts_total", &[("sink", SINK)]);
    assert!((1.0..=40.0).contains(&attempts), "{attempts} attempts");
    let conns = accepted.load(Ordering::SeqCst);
    assert!((1..=3).contains(&conns), "{conns} connections in 3 s");
    let stats = store.outbox_stats(SINK).await.unwrap();
    assert_eq!(stats.pending, 500, "nothing lost, nothing marked delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_drain_the_successor_loses_nothing_and_repeats_only_identical_bytes() {
    let mut city = CityBroker::configure();
    city.start();
    register_consumer(consumer_options(city.port)).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let collector = tokio::spawn(consume_counting(
        consumer_options(city.port),
        3_000,
        Duration::from_secs(40),
        progress.clone(),
    ));

    let db = TestDb::sqlite();
    let store: Arc<dyn Store> = db.open(NODE).await.unwrap();
    let now = SystemClock.now();
    let mut sent = HashMap::new();
    let mut backlog = Vec::new();
    let ids: Vec<EntityId> = (0..30).map(|_| EntityId::new_ordered(now)).collect();
    for seq in 0..100 {
        for id in &ids {
            let inc = incident(*id, seq + 1, now);
            let event = EntityId::new_ordered(now);
            let e = alarm_entry(SINK, NODE, event, &inc, AlarmEventKind::Update, now);
            sent.insert(event.to_string(), e.payload.clone());
            backlog.push(e);
        }
    }
    store.enqueue_outbox(&backlog).await.unwrap();
    let policy = DrainPolicy {
        batch: 512,
        per_channel: 16,
        concurrency: 32,
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        ..Default::default()
    };
    let start = |policy: DrainPolicy| {
        let stop = Shutdown::new();
        let (uplink, up_task) = MqttUplink::start(uplink_config(city.port), stop.clone());
        let reg = prometheus::Registry::new();
        let m = OutboxMetrics::register(&reg).unwrap();
        let d = Drainer::new(
            store.clone(),
            Arc::new(uplink),
            policy,
            &m,
            Arc::new(SystemClock),
        );
        (stop.clone(), up_task, tokio::spawn(d.run(stop)))
    };

    let (_stop, up_task, drain_task) = start(policy.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Mid-round: the city has acknowledged entries the store does not know are delivered.
    while progress.load(Ordering::SeqCst) < 1_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "drain did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // kill -9: neither the drainer nor the connection gets to say goodbye or record anything.
    drain_task.abort();
    up_task.abort();
    let _ = (drain_task.await, up_task.await);

    let (stop, up_task, drain_task) = start(policy);
    let got = collector.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.outbox_stats(SINK).await.unwrap().pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.trigger();
    drain_task.await.unwrap();
    up_task.await.unwrap();

    let mut first = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut dups = 0;
    for (event, body) in &got {
        assert_eq!(&sent[event], body, "duplicates are byte-identical");
        if !first.insert(event.clone()) {
            dups += 1;
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let inc = v["incident"]["id"].as_str().unwrap().to_owned();
        let version = v["incident"]["version"].as_i64().unwrap();
        let prev = last.insert(inc.clone(), version).unwrap_or(0);
        assert!(version > prev, "incident {inc}: {version} after {prev}");
    }
    assert_eq!(first.len(), 3_000, "no loss");
    eprintln!("{dups} duplicates after the kill");
    assert!(
        dups > 0,
        "the kill left nothing unrecorded; the test did not test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_broker_restarting_mid_drain_costs_retries_not_alarms() {
    let mut city = CityBroker::configure();
    city.start();
    register_consumer(consumer_options(city.port)).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let collector = tokio::spawn(consume_counting(
        consumer_options(city.port),
        3_000,
        Duration::from_secs(40),
        progress.clone(),
    ));

    let db = TestDb::sqlite();
    let store: Arc<dyn Store> = db.open(NODE).await.unwrap();
    let now = SystemClock.now();
    let ids: Vec<EntityId> = (0..30).map(|_| EntityId::new_ordered(now)).collect();
    let mut sent = HashMap::new();
    let mut backlog = Vec::new();
    for seq in 0..100 {
        for id in &ids {
            let event = EntityId::new_ordered(now);
            let e = alarm_entry(
                SINK,
                NODE,
                event,
                &incident(*id, seq + 1, now),
                AlarmEventKind::Update,
                now,
            );
            sent.insert(event.to_string(), e.payload.clone());
            backlog.push(e);
        }
    }
    store.enqueue_outbox(&backlog).await.unwrap();
    let stop = Shutdown::new();
    let (uplink, up_task) = MqttUplink::start(uplink_config(city.port), stop.clone());
    let reg = prometheus::Registry::new();
    let m = OutboxMetrics::register(&reg).unwrap();
    let d = Drainer::new(
        store.clone(),
        Arc::new(uplink),
        DrainPolicy {
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            ..Default::default()
        },
        &m,
        Arc::new(SystemClock),
    );
    let drain_task = tokio::spawn(d.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while progress.load(Ordering::SeqCst) < 800 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "drain did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    city.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    city.start();

    let got = collector.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.outbox_stats(SINK).await.unwrap().pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.trigger();
    drain_task.await.unwrap();
    up_task.await.unwrap();

    let mut first = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (event, body) in &got {
        assert_eq!(&sent[event], body, "duplicates are byte-identical");
        if !first.insert(event.clone()) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let inc = v["incident"]["id"].as_str().unwrap().to_owned();
        let version = v["incident"]["version"].as_i64().unwrap();
        let prev = last.insert(inc.clone(), version).unwrap_or(0);
        assert!(version > prev, "incident {inc}: {version} after {prev}");
    }
    assert_eq!(first.len(), 3_000, "no loss");
    assert!(metric(&reg, "xueliang_outbox_retries_total", &[("sink", SINK)]) >= 1.0);
}

/// The city's consumer over TLS with the node's own client certificate (the broker asks for
/// one), trusting what the uplink trusts.
fn tls_consumer_options(port: u16, tls: &Arc<ClientConfig>) -> MqttOptions {
    let mut o = consumer_options(port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls.clone(),
    )));
    o
}

fn tls_section(pki: &Pki, port: u16, ca: &str, client_cert: bool) -> BridgeMqttConfig {
    BridgeMqttConfig {
        url: format!("mqtts://127.0.0.1:{port}"),
        topic_prefix: "city/v1".into(),
        client_id: None,
        username: Some("yantan".into()),
        password: Some(Secret::new("uplink-pass")),
        password_file: None,
        ca_file: Some(pki.file(ca)),
        client_cert_file: client_cert.then(|| pki.file("client.pem")),
        client_key_file: client_cert.then(|| pki.file("client.key")),
    }
}

fn tls_uplink_config(section: &BridgeMqttConfig) -> UplinkConfig {
    let mut c = UplinkConfig::from_config(section, NODE).expect("uplink config");
    c.reconnect_min = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(400);
    c.ack_timeout = Duration::from_secs(5);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_reach_a_tls_city_broker_that_checks_the_node_certificate() {
    let pki = Pki::generate();
    let mut city = CityBroker::configure_tls(&pki, true);
    city.start();
    let section = tls_section(&pki, city.port, "ca.pem", true);
    let cfg = tls_uplink_config(&section);
    let tls = cfg.tls.clone().expect("mqtts:// gives a TLS config");
    register_consumer(tls_consumer_options(city.port, &tls)).await;

    let stop = Shutdown::new();
    let (uplink, task) = MqttUplink::start(cfg, stop.clone());
    let mut sent = HashMap::new();
    for seq in 0..50u32 {
        let at = t(i64::from(seq));
        let event = EntityId::new_ordered(at);
        let mut e = alarm_entry(
            SINK,
            NODE,
            event,
            &incident(EntityId::new_ordered(at), 1, at),
            AlarmEventKind::New,
            at,
        );
        e.channel = format!("ch-{seq}");
        // The first deliveries may find the handshake still under way: retry those.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match uplink.deliver(&e).await {
                Ok(()) => break,
                Err(err) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no TLS delivery: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        sent.insert(event.to_string(), e.payload);
    }
    let got = consume(
        tls_consumer_options(city.port, &tls),
        50,
        Duration::from_secs(20),
    )
    .await;
    for (event, body) in &got {
        assert_eq!(&sent[event], body, "the city got what was sent");
    }
    stop.trigger();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_the_node_cannot_verify_or_that_refuses_its_certificate_gets_nothing() {
    let pki = Pki::generate();
    let mut city = CityBroker::configure_tls(&pki, true);
    city.start();
    let at = t(0);
    let e = alarm_entry(
        SINK,
        NODE,
        EntityId::new_ordered(at),
        &incident(EntityId::new_ordered(at), 1, at),
        AlarmEventKind::New,
        at,
    );
    // A broker certificate from a CA the node was not told to trust; then no client
    // certificate for a broker that requires one; then plain MQTT to the TLS port.
    let untrusted = tls_uplink_config(&tls_section(&pki, city.port, "other-ca.pem", true));
    let anonymous = tls_uplink_config(&tls_section(&pki, city.port, "ca.pem", false));
    let mut plain = UplinkConfig::new("127.0.0.1", city.port, NODE);
    plain.reconnect_min = Duration::from_millis(100);
    plain.reconnect_max = Duration::from_millis(400);
    for (what, cfg) in [
        ("untrusted broker certificate", untrusted),
        ("no client certificate", anonymous),
        ("plain MQTT to a TLS port", plain),
    ] {
        let stop = Shutdown::new();
        let (uplink, task) = MqttUplink::start(cfg, stop.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            assert!(!uplink.is_connected(), "{what}: connected");
            let err = uplink.deliver(&e).await.expect_err(what);
            assert!(err.is_retryable(), "{what}: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.trigger();
        task.await.unwrap();
    }
    // What the city's consumer can see: nothing arrived.
    let pass = tls_uplink_config(&tls_section(&pki, city.port, "ca.pem", true));
    let tls = pass.tls.clone().unwrap();
    let (c, mut el) = AsyncClient::new(tls_consumer_options(city.port, &tls), 10);
    c.subscribe("city/v1/+/alarms", QoS::AtLeastOnce)
        .await
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
                return p;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "an alarm reached the city: {quiet:?}");
}

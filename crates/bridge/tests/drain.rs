//! The drainer against a real SQLite store and test sinks: backoff without storms, restart
//! mid-drain, priority overtaking, expiry, and recovery as soon as the sink's link is back.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use tokio::sync::watch;
use xueliang_bridge::{DeliveryError, DrainPolicy, Drainer, OutboxMetrics, Sink};
use xueliang_core::Clock;
use xueliang_core::shutdown::Shutdown;
use xueliang_core::time::{ManualClock, SystemClock};
use xueliang_store::testing::TestDb;
use xueliang_store::{OutboxEntry, Store};

async fn store() -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::sqlite();
    let s = db.open(NODE).await.expect("open sqlite");
    (db, s)
}

fn drainer(
    s: &Arc<dyn Store>,
    sink: Arc<dyn Sink>,
    policy: DrainPolicy,
    clock: Arc<dyn Clock>,
) -> (Drainer, prometheus::Registry) {
    let reg = prometheus::Registry::new();
    let m = OutboxMetrics::register(&reg).unwrap();
    (Drainer::new(s.clone(), sink, policy, &m, clock), reg)
}

/// The stored row, whatever its schedule.
async fn row(s: &Arc<dyn Store>, sink: &str, id: xueliang_core::EntityId) -> OutboxEntry {
    s.pending_outbox(sink, t(1_000_000_000), 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.id == id)
        .expect("entry still pending")
}

#[tokio::test]
async fn retries_back_off_exponentially_and_a_failing_sink_gets_one_probe_per_round() {
    let (_db, s) = store().await;
    let clock = Arc::new(ManualClock::new(t(0)));
    let sink = Arc::new(RecordingSink {
        fail_first: 5,
        ..RecordingSink::new("city")
    });
    let policy = DrainPolicy {
        base_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(8),
        jitter: false,
        concurrency: 1,
        ..Default::default()
    };
    let (mut d, reg) = drainer(&s, sink.clone(), policy, clock.clone());
    let e = entry("city", "btn-1", 0, 1, t(0));
    s.enqueue_outbox(std::slice::from_ref(&e)).await.unwrap();

    let mut spacing = Vec::new();
    for attempt in 1..=5 {
        let r = d.drain_once().await.unwrap();
        assert_eq!((r.attempted, r.retried), (1, 1), "attempt {attempt}");
        let now = clock.now();
        let stored = row(&s, "city", e.id).await;
        assert_eq!(stored.attempts, attempt);
        assert!(stored.last_error.as_deref().unwrap().contains("503"));
        spacing.push(stored.next_attempt.as_millis() - now.as_millis());
        // Not due yet: nothing is sent however often the drainer looks.
        for _ in 0..3 {
            clock.advance_millis(100);
            assert_eq!(d.drain_once().await.unwrap().attempted, 0);
        }
        clock.advance_millis(stored.next_attempt.as_millis() - clock.now().as_millis());
    }
    assert_eq!(spacing, [1000, 2000, 4000, 8000, 8000]);
    assert_eq!(d.drain_once().await.unwrap().delivered, 1);
    assert_eq!(sink.calls(), 6);
    assert_eq!(d.failing_rounds(), 0);
    let sink_l = [("sink", "city")];
    assert_eq!(metric(&reg, "xueliang_outbox_attempts_total", &sink_l), 6.0);
    assert_eq!(metric(&reg, "xueliang_outbox_retries_total", &sink_l), 5.0);
    assert_eq!(
        metric(&reg, "xueliang_outbox_delivered_total", &sink_l),
        1.0
    );
    assert_eq!(
        metric(&reg, "xueliang_outbox_delivery_latency_seconds", &sink_l),
        1.0
    );

    // A sink that is down: after the first failure each round sends a single probe, however
    // many channels wait.
    let down = Arc::new(RecordingSink {
        always_fail: true,
        ..RecordingSink::new("down")
    });
    let (mut d, _reg) = drainer(
        &s,
        down.clone(),
        DrainPolicy {
            jitter: false,
            ..Default::default()
        },
        clock.clone(),
    );
    let backlog: Vec<_> = (0..100)
        .map(|i| entry("down", &format!("ch-{i}"), 0, 5, clock.now()))
        .collect();
    s.enqueue_outbox(&backlog).await.unwrap();
    for round in 0..10 {
        let r = d.drain_once().await.unwrap();
        assert_eq!(r.attempted, 1, "round {round}");
        assert_eq!(r.probe, round > 0);
    }
    assert_eq!(down.calls(), 10);
}

#[tokio::test]
async fn a_running_drainer_does_not_storm_a_dead_sink() {
    let (_db, s) = store().await;
    let down = Arc::new(RecordingSink {
        always_fail: true,
        ..RecordingSink::new("down")
    });
    let policy = DrainPolicy {
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        stats_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let (d, reg) = drainer(&s, down.clone(), policy, Arc::new(SystemClock));
    let now = SystemClock.now();
    let backlog: Vec<_> = (0..200)
        .map(|i| entry("down", &format!("ch-{i}"), 0, 5, now))
        .collect();
    s.enqueue_outbox(&backlog).await.unwrap();
    let notify = d.notifier();
    let stop = Shutdown::new();
    let task = tokio::spawn(d.run(stop.clone()));
    // New alarms during the outage poke the drainer; they must not add attempts.
    for i in 0..50 {
        s.enqueue_outbox(&[entry("down", "live", i, 1, SystemClock.now())])
            .await
            .unwrap();
        notify.notify_one();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The backlog gauge is refreshed during the outage (every 50 ms here), not only after
    // deliveries: it reaches all 250 while the sink is still down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let gauge = metric(&reg, "xueliang_outbox_backlog", &[("sink", "down")]);
        if gauge == 250.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog gauge {gauge}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    task.await.unwrap();
    // Some 1.5 s against pauses averaging up to 100 ms: tens of attempts, not thousands.
    let calls = down.calls();
    assert!((3..=60).contains(&calls), "{calls} attempts");
    assert_eq!(
        metric(&reg, "xueliang_outbox_attempts_total", &[("sink", "down")]) as usize,
        calls
    );
    assert_eq!(s.outbox_stats("down").await.unwrap().pending, 250);
}

#[tokio::test]
async fn a_drainer_killed_mid_drain_is_succeeded_without_loss_and_with_identical_duplicates() {
    let (_db, s) = store().await;
    let sink = Arc::new(RecordingSink {
        delay: Duration::from_millis(1),
        ..RecordingSink::new("city")
    });
    let now = SystemClock.now();
    let mut all = Vec::new();
    for seq in 0..100 {
        for ch in 0..20 {
            all.push(entry("city", &format!("ch-{ch:02}"), seq, 5, now));
        }
    }
    s.enqueue_outbox(&all).await.unwrap();
    let policy = DrainPolicy {
        batch: 256,
        per_channel: 16,
        concurrency: 8,
        ..Default::default()
    };
    let (d, _reg) = drainer(&s, sink.clone(), policy.clone(), Arc::new(SystemClock));
    let first = tokio::spawn(d.run(Shutdown::new()));
    while sink.seen().len() < 300 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // What `kill -9` does to the drainer: no chance to record the round in flight.
    first.abort();
    let _ = first.await;
    let before_restart = sink.seen().len();

    let (d, _reg) = drainer(&s, sink.clone(), policy, Arc::new(SystemClock));
    let stop = Shutdown::new();
    let second = tokio::spawn(d.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.outbox_stats("city").await.unwrap().pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "drain stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    second.await.unwrap();

    let seen = sink.seen();
    let sent: HashMap<_, _> = all.iter().map(|e| (e.id, e.payload.clone())).collect();
    let mut first_seen = HashSet::new();
    let mut last_seq: HashMap<String, u32> = HashMap::new();
    let mut dups = 0;
    for (id, body) in &seen {
        assert_eq!(&sent[id], body, "a retransmission has the same bytes");
        if !first_seen.insert(*id) {
            dups += 1;
            continue;
        }
        let (ch, seq) = channel_seq(body);
        if let Some(prev) = last_seq.insert(ch.clone(), seq) {
            assert!(seq > prev, "{ch}: {seq} after {prev}");
        }
    }
    assert_eq!(first_seen.len(), all.len(), "every entry arrived");
    assert!(
        dups > 0,
        "the kill after {before_restart} deliveries left some unrecorded"
    );
}

#[tokio::test]
async fn a_priority_one_alarm_overtakes_a_backlog_of_other_channels() {
    let (_db, s) = store().await;
    let clock = Arc::new(ManualClock::new(t(0)));
    let sink = Arc::new(RecordingSink::new("city"));
    let mut backlog = Vec::new();
    for seq in 0..100 {
        for ch in ["cam-1", "cam-2", "cam-3"] {
            backlog.push(entry("city", ch, seq, 5, t(i64::from(seq))));
        }
    }
    s.enqueue_outbox(&backlog).await.unwrap();
    let panic = entry("city", "btn-9", 0, 1, t(500));
    s.enqueue_outbox(std::slice::from_ref(&panic))
        .await
        .unwrap();
    clock.advance_millis(1000);
    let policy = DrainPolicy {
        batch: 16,
        per_channel: 4,
        concurrency: 1,
        ..Default::default()
    };
    let (mut d, _reg) = drainer(&s, sink.clone(), policy.clone(), clock.clone());
    let r = d.drain_once().await.unwrap();
    assert_eq!(r.delivered, 13);
    let seen = sink.seen();
    assert_eq!(seen[0].0, panic.id, "the panic alarm leaves first");
    let order: Vec<_> = seen[1..].iter().map(|(_, b)| channel_seq(b)).collect();
    let expect: Vec<_> = ["cam-1", "cam-2", "cam-3"]
        .iter()
        .flat_map(|c| (0..4).map(move |q| (c.to_string(), q)))
        .collect();
    assert_eq!(order, expect);

    // While a running drainer works through the backlog, a new panic alarm goes out within
    // the next round or two, not behind the whole backlog.
    let slow = Arc::new(RecordingSink {
        delay: Duration::from_millis(2),
        ..RecordingSink::new("slow")
    });
    let now = SystemClock.now();
    let backlog: Vec<_> = (0..300)
        .flat_map(|seq| (0..4).map(move |ch| entry("slow", &format!("cam-{ch}"), seq, 5, now)))
        .collect();
    s.enqueue_outbox(&backlog).await.unwrap();
    let (d, _reg) = drainer(&s, slow.clone(), policy, Arc::new(SystemClock));
    let notify = d.notifier();
    let stop = Shutdown::new();
    let task = tokio::spawn(d.run(stop.clone()));
    while slow.seen().len() < 100 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let urgent = entry("slow", "btn-1", 0, 1, SystemClock.now());
    s.enqueue_outbox(std::slice::from_ref(&urgent))
        .await
        .unwrap();
    notify.notify_one();
    let enqueued_at = slow.seen().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pos = loop {
        if let Some(p) = slow.seen().iter().position(|(id, _)| *id == urgent.id) {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "urgent never sent");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    stop.trigger();
    task.await.unwrap();
    assert!(
        pos <= enqueued_at + 2 * 16,
        "sent at {pos}, enqueued when {enqueued_at} of 1200 were out"
    );
}

#[tokio::test]
async fn expiry_by_age_then_bytes_takes_the_oldest_lowest_priority_first_and_counts() {
    let (_db, s) = store().await;
    let clock = Arc::new(ManualClock::new(t(10 * 3_600_000)));
    let now = clock.now();
    let old = now.saturating_add_millis(-2 * 3_600_000);
    let body = |e: OutboxEntry| OutboxEntry {
        payload: vec![b'x'; 200],
        ..e
    };
    let mut entries = Vec::new();
    for i in 0..3 {
        entries.push(body(entry("city", &format!("old-{i}"), 0, 1, old)));
    }
    // Fresh: five priority 5, three priority 3, two priority 1, 200 bytes each.
    let mut fresh = Vec::new();
    for (i, prio) in [5, 3, 1, 5, 5, 3, 1, 5, 3, 5].into_iter().enumerate() {
        let at = now.saturating_add_millis(-(1000 - i as i64));
        fresh.push(body(entry("city", &format!("ch-{i}"), 0, prio, at)));
    }
    entries.extend(fresh.iter().cloned());
    s.enqueue_outbox(&entries).await.unwrap();

    let sink = Arc::new(RecordingSink::new("city"));
    let policy = DrainPolicy {
        max_age: Some(Duration::from_secs(3600)),
        max_bytes: Some(1000),
        keep_priority: 1,
        ..Default::default()
    };
    let (mut d, reg) = drainer(&s, sink.clone(), policy, clock.clone());
    assert_eq!(d.housekeep().await.unwrap(), 3 + 5);
    let count = |reason| {
        metric(
            &reg,
            "xueliang_outbox_expired_total",
            &[("sink", "city"), ("reason", reason)],
        )
    };
    assert_eq!((count("age"), count("bytes")), (3.0, 5.0));
    let l = [("sink", "city")];
    assert_eq!(metric(&reg, "xueliang_outbox_backlog", &l), 5.0);
    assert_eq!(metric(&reg, "xueliang_outbox_backlog_bytes", &l), 1000.0);
    let age = metric(&reg, "xueliang_outbox_oldest_age_seconds", &l);
    assert!((0.9..=1.0).contains(&age), "{age}");
    // Within budget now: a second pass expires nothing.
    assert_eq!(d.housekeep().await.unwrap(), 0);

    // What is left goes out, priority 1 first, and none of the expired.
    d.drain_once().await.unwrap();
    let got: Vec<_> = sink.seen().iter().map(|(id, _)| *id).collect();
    let prio = |id| fresh.iter().find(|e| e.id == id).unwrap().priority;
    assert_eq!(
        got.iter().map(|id| prio(*id)).collect::<Vec<_>>(),
        [1, 1, 3, 3, 3]
    );
    assert_eq!(metric(&reg, "xueliang_outbox_delivered_total", &l), 5.0);
}

/// A sink with a link the test flips: while the link is down, or while `refuse` is set, every
/// delivery fails retryably.
struct LinkedSink {
    inner: RecordingSink,
    up: watch::Sender<bool>,
    refuse: AtomicBool,
}

#[async_trait]
impl Sink for LinkedSink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn deliver(&self, e: &OutboxEntry) -> Result<(), DeliveryError> {
        if !*self.up.borrow() || self.refuse.load(Ordering::SeqCst) {
            *self.inner.calls.lock().unwrap() += 1;
            return Err(DeliveryError::retryable("city broker not connected"));
        }
        self.inner.deliver(e).await
    }

    fn link(&self) -> Option<watch::Receiver<bool>> {
        Some(self.up.subscribe())
    }
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_link_coming_back_ends_the_pause_and_every_waiting_channel_goes_at_once() {
    let (_db, s) = store().await;
    let sink = Arc::new(LinkedSink {
        inner: RecordingSink::new("city"),
        up: watch::channel(false).0,
        refuse: AtomicBool::new(false),
    });
    // Pauses and per-entry retries of a minute: anything delivered within seconds of the link
    // coming back was woken by it.
    let policy = DrainPolicy {
        base_backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(60),
        jitter: false,
        concurrency: 4,
        ..Default::default()
    };
    let (d, reg) = drainer(&s, sink.clone(), policy, Arc::new(SystemClock));
    let now = SystemClock.now();
    let entries: Vec<_> = (0..2)
        .flat_map(|seq| (0..4).map(move |ch| entry("city", &format!("btn-{ch}"), seq, 1, now)))
        .collect();
    s.enqueue_outbox(&entries).await.unwrap();
    let notify = d.notifier();
    let stop = Shutdown::new();
    let task = tokio::spawn(d.run(stop.clone()));
    let retries = || metric(&reg, "xueliang_outbox_retries_total", &[("sink", "city")]);
    wait_for("a failed round", Duration::from_secs(10), || {
        retries() > 0.0
    })
    .await;
    let failed_calls = sink.inner.calls();
    // Every channel's head failed and waits a minute; the sink pauses a minute.
    let waiting = s
        .pending_outbox("city", SystemClock.now(), 100)
        .await
        .unwrap();
    assert!(
        waiting
            .iter()
            .all(|e| e.attempts == 0 || e.next_attempt > SystemClock.now()),
        "failed heads wait for their retry"
    );

    sink.up.send_replace(true);
    wait_for(
        "all 8 delivered within 10 s of the link coming back",
        Duration::from_secs(10),
        || sink.inner.seen().len() == 8,
    )
    .await;
    let mut order: HashMap<String, Vec<u32>> = HashMap::new();
    for (_, body) in sink.inner.seen() {
        let (ch, seq) = channel_seq(&body);
        order.entry(ch).or_default().push(seq);
    }
    assert!(order.values().all(|v| v == &[0, 1]), "{order:?}");
    assert_eq!(
        sink.inner.calls(),
        failed_calls + 8,
        "one probe, then each entry once: no extra attempts"
    );

    // The link staying up is no reason to retry early: a peer refusing while connected is
    // waited out (here a minute), not hammered.
    sink.refuse.store(true, Ordering::SeqCst);
    s.enqueue_outbox(&[entry("city", "btn-9", 0, 1, SystemClock.now())])
        .await
        .unwrap();
    let calls = sink.inner.calls();
    let retried = retries();
    notify.notify_one();
    wait_for("the refusal", Duration::from_secs(10), || {
        retries() > retried
    })
    .await;
    sink.refuse.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.inner.calls(), calls + 1, "one attempt, then the pause");
    assert_eq!(sink.inner.seen().len(), 8);
    // A reconnect (down, up) ends that pause too.
    sink.up.send_replace(false);
    sink.up.send_replace(true);
    wait_for(
        "delivered after the reconnect",
        Duration::from_secs(10),
        || sink.inner.seen().len() == 9,
    )
    .await;
    stop.trigger();
    task.await.unwrap();
    assert_eq!(s.outbox_stats("city").await.unwrap().pending, 0);
}

//! The outbox's delivery side: one [`Drainer`] per sink moves that sink's entries from the
//! store to the [`Sink`], at least once and in order per channel.
//!
//! * Order: a round sends only what [`Store::due_outbox`] returns — for each channel whose
//!   head is due, a run of entries from the head on — and sends each channel's run one entry
//!   at a time, stopping at its first failure. A failed entry therefore holds back the rest of
//!   its channel (until its retry time) and nothing else. Channels are taken by their head's
//!   priority, so a priority-1 alarm overtakes a backlog of other channels.
//! * Retries: a failed entry waits `backoff(attempts)` (exponential, full jitter, capped).
//!   A retryable failure also pauses the whole sink for `backoff(consecutive failed rounds)`,
//!   and while the sink is failing each round sends a single probe entry: an unreachable city
//!   sees one attempt per pause, not one per queued alarm.
//! * Recovery: a sink that reports its link ([`Sink::link`]) cuts the pause short when the
//!   link comes back up (connected, registered), and once a probe is accepted every entry still
//!   waiting for its own retry is made due ([`Store::retry_outbox_now`]): alarms resume as soon
//!   as the city is back, not a back-off later.
//! * Results of a round are written in one transaction. A drainer killed before that resends
//!   those entries later with the same bytes; receivers deduplicate by `event_id`.
//! * Budget: entries older than `max_age` expire, and while the sink's undelivered bytes exceed
//!   `max_bytes` the lowest-priority, oldest entries expire (never those at or above
//!   `keep_priority`). Every expiry is counted and logged.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, Error, ErrorKind, ResultExt, Timestamp};
use xueliang_store::{ExpiredOutbox, OutboxEntry, OutboxResult, Store};

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The peer is unreachable, slow or overloaded (timeouts, 408, 5xx, no PUBACK): retried
    /// with backoff.
    #[error("retryable delivery failure: {0}")]
    Retryable(String),
    /// The peer refused this entry for good (malformed, too large, 4xx other than 408/429):
    /// the entry is expired with this reason so its channel can move on.
    #[error("permanent delivery failure: {0}")]
    Permanent(String),
}

impl DeliveryError {
    pub fn retryable(msg: impl Into<String>) -> Self {
        DeliveryError::Retryable(msg.into())
    }

    pub fn permanent(msg: impl Into<String>) -> Self {
        DeliveryError::Permanent(msg.into())
    }

    /// For sinks whose peer answers with an HTTP-style status (SIP, HTTP): a timeout (408),
    /// throttling (429) or a server error (5xx) is worth retrying, any other refusal is not.
    /// `what` says what was refused, e.g. `"MESSAGE Alarm"`.
    pub fn from_status(status: u16, what: &str) -> Self {
        let msg = format!("{what}: peer answered {status}");
        if status == 408 || status == 429 || status >= 500 {
            DeliveryError::Retryable(msg)
        } else {
            DeliveryError::Permanent(msg)
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable(_))
    }

    pub fn message(&self) -> &str {
        match self {
            DeliveryError::Retryable(m) | DeliveryError::Permanent(m) => m,
        }
    }
}

/// Where a drainer sends entries: the MQTT uplink, the GB/T 28181 platform, a test double.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name as stored in `outbox.sink` and used as the metrics label.
    fn name(&self) -> &str;

    /// Sends one entry's payload unchanged; resolves `Ok` only once the peer has acknowledged
    /// it (PUBACK, SIP 200, HTTP 2xx). Must not retry on its own: the drainer does.
    async fn deliver(&self, entry: &OutboxEntry) -> Result<(), DeliveryError>;

    /// Whether the sink's link to its peer is up (connected, registered), for sinks that know.
    /// A drainer pausing after failures retries as soon as it turns `true`; the link's own
    /// reconnect back-off bounds how often that can happen. `None`: every pause is waited out.
    fn link(&self) -> Option<watch::Receiver<bool>> {
        None
    }
}

/// How a drainer paces itself and what it keeps.
#[derive(Clone, Debug)]
pub struct DrainPolicy {
    /// Entries read per round.
    pub batch: u32,
    /// Entries of one channel per round (sent one after another).
    pub per_channel: u32,
    /// Channels delivered at the same time.
    pub concurrency: usize,
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Full jitter (a uniform delay up to the exponential cap). Off only in tests that check
    /// exact schedules.
    pub jitter: bool,
    /// Longest sleep without a wake-up from the writer.
    pub idle_poll: Duration,
    /// Entries older than this expire, whatever their priority.
    pub max_age: Option<Duration>,
    /// Undelivered payload bytes kept for the sink.
    pub max_bytes: Option<u64>,
    /// Entries with a priority number at or below this never expire by `max_bytes`.
    pub keep_priority: i64,
    /// How often expiry and pruning run.
    pub housekeeping_interval: Duration,
    /// How often the backlog gauges are refreshed while busy (always when idle).
    pub stats_interval: Duration,
    /// Delivered and expired rows are deleted this long after.
    pub keep_done: Duration,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy {
            batch: 256,
            per_channel: 16,
            concurrency: 16,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            jitter: true,
            idle_poll: Duration::from_secs(30),
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            max_bytes: Some(1 << 30),
            keep_priority: 1,
            housekeeping_interval: Duration::from_secs(60),
            stats_interval: Duration::from_secs(5),
            keep_done: Duration::from_secs(24 * 3600),
        }
    }
}

impl DrainPolicy {
    /// The exponential cap for the `attempt`-th consecutive failure (1-based).
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff)
    }

    /// The delay after the `attempt`-th consecutive failure: with jitter, uniform in
    /// `[0, cap]` ("full jitter"), so retries of many entries or nodes spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.backoff_cap(attempt);
        if !self.jitter {
            return cap;
        }
        let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=ms))
    }
}

/// Outbox metrics of every sink, registered once; each drainer uses its `sink` label.
#[derive(Clone, Debug)]
pub struct OutboxMetrics {
    backlog: IntGaugeVec,
    backlog_bytes: IntGaugeVec,
    oldest_age: GaugeVec,
    latency: HistogramVec,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    delivered: IntCounterVec,
    expired: IntCounterVec,
}

impl OutboxMetrics {
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let def = || "define outbox metrics".to_owned();
        let m = OutboxMetrics {
            backlog: IntGaugeVec::new(
                Opts::new(
                    "xueliang_outbox_backlog",
                    "Undelivered, unexpired outbox entries",
                ),
                &["sink"],
            )
            .err_kind(ErrorKind::Internal, def)?,
            backlog_bytes: IntGaugeVec::new(
                Opts::new(
                    "xueliang_outbox_backlog_bytes",
                    "Payload bytes of undelivered, unexpired outbox entries",
                ),
                &["sink"],
            )
            .err_kind(ErrorKind::Internal, def)?,
            oldest_age: GaugeVec::new(
                Opts::new(
                    "xueliang_outbox_oldest_age_seconds",
                    "Age of the oldest undelivered outbox entry (0 when empty)",
                ),
                &["sink"],
            )
            .err_kind(ErrorKind::Internal, def)?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "xueliang_outbox_delivery_latency_seconds",
                    "Time from enqueue to acknowledged delivery",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 86400.0,
                ]),
                &["sink"],
            )
            .err_kind(ErrorKind::Internal, def)?,
            attempts: IntCounterVec::new(
                Opts::new(
                    "xueliang_outbox_attempts_total",
                    "Delivery attempts, successful or not",
                ),
                &["sink"],
            )
            .err_kind(ErrorKind::Internal, def)?,
            retries: IntCounterVec::new(
                Opts::new(
                    "xueliang_outbox_retries_total",
                    "Delivery attempts that failed and will be retried",
                ),
                &["sink"],
            )
            .err_kind(ErrorKind::Internal, def)?,
            delivered: IntCounterVec::new(
                Opts::new(
                    "xueliang_outbox_delivered_total",
                    "Entries acknowledged by the sink",
                ),
                &["sink"],
            )
            .err_kind(ErrorKind::Internal, def)?,
            expired: IntCounterVec::new(
                Opts::new(
                    "xueliang_outbox_expired_total",
                    "Entries given up on, by reason (age, bytes, rejected)",
                ),
                &["sink", "reason"],
            )
            .err_kind(ErrorKind::Internal, def)?,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 8] = [
            Box::new(m.backlog.clone()),
            Box::new(m.backlog_bytes.clone()),
            Box::new(m.oldest_age.clone()),
            Box::new(m.latency.clone()),
            Box::new(m.attempts.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.delivered.clone()),
            Box::new(m.expired.clone()),
        ];
        for c in collectors {
            registry
                .register(c)
                .err_kind(ErrorKind::Internal, || "register outbox metrics".into())?;
        }
        Ok(m)
    }
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Deliveries tried (each entry at most once per round).
    pub attempted: usize,
    pub delivered: usize,
    /// Retryable failures: those entries wait for their backoff.
    pub retried: usize,
    /// Refused for good and expired.
    pub rejected: usize,
    /// The round sent at most one entry because the sink had been failing.
    pub probe: bool,
}

/// Resolves once `link` turns up after it was last marked seen; never without a link.
async fn link_back(link: Option<&mut watch::Receiver<bool>>) {
    let Some(rx) = link else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            // The sink is gone; its pause is waited out.
            return std::future::pending().await;
        }
        if *rx.borrow_and_update() {
            return;
        }
    }
}

/// Delivers one sink's outbox; see the module docs.
pub struct Drainer {
    store: Arc<dyn Store>,
    sink: Arc<dyn Sink>,
    name: String,
    policy: DrainPolicy,
    metrics: OutboxMetrics,
    clock: Arc<dyn Clock>,
    notify: Arc<Notify>,
    /// The sink's link state, marked seen at the start of each round.
    link: Option<watch::Receiver<bool>>,
    /// Consecutive rounds with a retryable failure (or a store error).
    failing_rounds: u32,
}

impl fmt::Debug for Drainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drainer")
            .field("sink", &self.name)
            .field("policy", &self.policy)
            .field("failing_rounds", &self.failing_rounds)
            .finish_non_exhaustive()
    }
}

/// One attempt's outcome, before it is written.
struct Attempt {
    id: xueliang_core::EntityId,
    created_at: Timestamp,
    attempts_before: i64,
    at: Timestamp,
    result: Result<(), DeliveryError>,
}

impl Drainer {
    pub fn new(
        store: Arc<dyn Store>,
        sink: Arc<dyn Sink>,
        policy: DrainPolicy,
        metrics: &OutboxMetrics,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let name = sink.name().to_owned();
        let link = sink.link();
        Drainer {
            link,
            store,
            sink,
            name,
            policy,
            metrics: metrics.clone(),
            clock,
            notify: Arc::new(Notify::new()),
            failing_rounds: 0,
        }
    }

    /// The handle a writer pokes (`notify_one`) after committing entries for this sink, so
    /// they leave at once instead of at the next poll. A poke while the drainer is busy is
    /// kept for its next wait.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    pub fn sink_name(&self) -> &str {
        &self.name
    }

    /// Consecutive failing rounds; above 0 each round sends one probe entry.
    pub fn failing_rounds(&self) -> u32 {
        self.failing_rounds
    }

    /// Drains until `shutdown`. Deliveries in flight at shutdown are abandoned unrecorded and
    /// sent again by the next drainer, with the same bytes.
    pub async fn run(mut self, shutdown: Shutdown) {
        let span = tracing::info_span!("outbox_drain", sink = %self.name);
        async move {
            tracing::info!("outbox drainer started");
            self.run_loop(&shutdown).await;
            tracing::info!("outbox drainer stopped");
        }
        .instrument(span)
        .await
    }

    async fn run_loop(&mut self, shutdown: &Shutdown) {
        let mut next_housekeeping = tokio::time::Instant::now();
        let mut next_stats = tokio::time::Instant::now();
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= next_housekeeping {
                next_housekeeping = now + self.policy.housekeeping_interval;
                if let Err(e) = self.housekeep().await {
                    tracing::warn!(err = %e.chain(), "outbox housekeeping failed");
                }
            }
            if let Some(link) = self.link.as_mut() {
                // A link that comes up from here on, even during the round, ends its pause.
                link.borrow_and_update();
            }
            let round = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.drain_once() => r,
            };
            let idle = matches!(&round, Ok(r) if r.attempted == 0);
            // The idle path refreshes the gauges anyway; busy and failing ones (an outage is
            // when the backlog matters) do it every `stats_interval`.
            if !idle && tokio::time::Instant::now() >= next_stats {
                next_stats = tokio::time::Instant::now() + self.policy.stats_interval;
                self.refresh_stats_logged().await;
            }
            let pause = match round {
                Err(e) => {
                    self.failing_rounds = self.failing_rounds.saturating_add(1);
                    tracing::warn!(err = %e.chain(), "outbox round failed");
                    Some(self.policy.backoff(self.failing_rounds))
                }
                Ok(r) if r.retried > 0 => Some(self.policy.backoff(self.failing_rounds)),
                // More may be due right away.
                Ok(r) if r.attempted > 0 => continue,
                Ok(_) => None,
            };
            if let Some(pause) = pause {
                // Deliberately not cut short by the writer's notify: during an outage every
                // new alarm would otherwise trigger another attempt. The link coming back is
                // worth trying at once.
                let back = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => false,
                    () = link_back(self.link.as_mut()) => true,
                };
                if back {
                    // The probe needs a due entry: the heads that failed wait for their retry.
                    match self
                        .store
                        .retry_outbox_now(&self.name, self.clock.now())
                        .await
                    {
                        Ok(rescheduled) => tracing::info!(
                            failing_rounds = self.failing_rounds,
                            rescheduled,
                            "sink link is back; retrying now"
                        ),
                        Err(e) => tracing::warn!(err = %e.chain(), "outbox reschedule failed"),
                    }
                }
                continue;
            }
            // Idle: sleep until the earliest retry, the next housekeeping, a poke or the poll.
            next_stats = tokio::time::Instant::now() + self.policy.stats_interval;
            let next_due = self.refresh_stats_logged().await;
            let mut wait = self.policy.idle_poll;
            if let Some(due) = next_due {
                let ms = (due.as_millis() - self.clock.now().as_millis()).max(0);
                wait = wait.min(Duration::from_millis(ms as u64));
            }
            wait = wait
                .min(next_housekeeping.saturating_duration_since(tokio::time::Instant::now()))
                .max(Duration::from_millis(5));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: reads what is due, delivers it (channels concurrently, each channel's
    /// entries in order) and records the results in one transaction.
    pub async fn drain_once(&mut self) -> Result<RoundReport, Error> {
        let probe = self.failing_rounds > 0;
        let (per_channel, limit) = if probe {
            (1, 1)
        } else {
            (self.policy.per_channel, self.policy.batch)
        };
        let due = self
            .store
            .due_outbox(&self.name, self.clock.now(), per_channel, limit)
            .await?;
        if due.is_empty() {
            return Ok(RoundReport {
                probe,
                ..Default::default()
            });
        }
        // Runs per channel, in the order the store gave (head priority, then age).
        let mut runs: Vec<Vec<OutboxEntry>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for e in due {
            match index.get(&e.channel) {
                Some(&i) => runs[i].push(e),
                None => {
                    index.insert(e.channel.clone(), runs.len());
                    runs.push(vec![e]);
                }
            }
        }
        let stop = AtomicBool::new(false);
        let attempts: Vec<Attempt> = futures::stream::iter(runs)
            .map(|run| self.deliver_run(run, &stop))
            .buffered(self.policy.concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect();
        let report = self.record(&attempts).await?;
        if report.retried > 0 {
            self.failing_rounds = self.failing_rounds.saturating_add(1);
        } else if report.delivered > 0 {
            if self.failing_rounds > 0 {
                // Channels whose heads failed during the outage would otherwise each wait out
                // their own back-off, up to `max_backoff`, behind a working sink.
                let rescheduled = self
                    .store
                    .retry_outbox_now(&self.name, self.clock.now())
                    .await?;
                tracing::info!(
                    failing_rounds = self.failing_rounds,
                    rescheduled,
                    "sink accepts deliveries again"
                );
            }
            self.failing_rounds = 0;
        }
        Ok(RoundReport { probe, ..report })
    }

    /// Sends one channel's entries in order, stopping at the first retryable failure (the
    /// rest must not overtake it) or once another run saw the sink failing.
    async fn deliver_run(&self, run: Vec<OutboxEntry>, stop: &AtomicBool) -> Vec<Attempt> {
        let mut out = Vec::with_capacity(run.len());
        for e in run {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let result = self.sink.deliver(&e).await;
            let retry = matches!(result, Err(DeliveryError::Retryable(_)));
            out.push(Attempt {
                id: e.id,
                created_at: e.created_at,
                attempts_before: e.attempts,
                at: self.clock.now(),
                result,
            });
            if retry {
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        out
    }

    async fn record(&self, attempts: &[Attempt]) -> Result<RoundReport, Error> {
        let sink = [self.name.as_str()];
        let mut report = RoundReport {
            attempted: attempts.len(),
            ..Default::default()
        };
        let mut results = Vec::with_capacity(attempts.len());
        let mut first_retry: Option<&str> = None;
        for a in attempts {
            match &a.result {
                Ok(()) => {
                    report.delivered += 1;
                    results.push(OutboxResult::Delivered { id: a.id, at: a.at });
                }
                Err(DeliveryError::Retryable(msg)) => {
                    report.retried += 1;
                    first_retry.get_or_insert(msg);
                    let n = u32::try_from(a.attempts_before + 1).unwrap_or(u32::MAX);
                    let delay = self.policy.backoff(n);
                    results.push(OutboxResult::Failed {
                        id: a.id,
                        next_attempt: a
                            .at
                            .saturating_add_millis(i64::try_from(delay.as_millis()).unwrap_or(0)),
                        error: msg.clone(),
                    });
                }
                Err(DeliveryError::Permanent(msg)) => {
                    report.rejected += 1;
                    tracing::error!(
                        id = %a.id,
                        attempts = a.attempts_before + 1,
                        reason = %msg,
                        "outbox entry refused by the sink; expired"
                    );
                    results.push(OutboxResult::Rejected {
                        id: a.id,
                        at: a.at,
                        error: format!("rejected: {msg}"),
                    });
                }
            }
        }
        self.store.record_outbox_results(&results).await?;
        // Counted only once recorded, so a crash here does not count twice.
        self.metrics
            .attempts
            .with_label_values(&sink)
            .inc_by(attempts.len() as u64);
        self.metrics
            .retries
            .with_label_values(&sink)
            .inc_by(report.retried as u64);
        self.metrics
            .delivered
            .with_label_values(&sink)
            .inc_by(report.delivered as u64);
        self.metrics
            .expired
            .with_label_values(&[self.name.as_str(), "rejected"])
            .inc_by(report.rejected as u64);
        let latency = self.metrics.latency.with_label_values(&sink);
        for a in attempts.iter().filter(|a| a.result.is_ok()) {
            latency.observe((a.at.as_millis() - a.created_at.as_millis()).max(0) as f64 / 1000.0);
        }
        if let Some(msg) = first_retry {
            // One line per round, not per entry: an outage must not flood the log.
            tracing::warn!(
                failed = report.retried,
                delivered = report.delivered,
                failing_rounds = self.failing_rounds + 1,
                err = %msg,
                "outbox deliveries failed; retrying with backoff"
            );
        }
        Ok(report)
    }

    /// Expires what is past the age or byte budget, prunes finished rows and refreshes the
    /// gauges. Returns how many entries expired.
    pub async fn housekeep(&self) -> Result<usize, Error> {
        let now = self.clock.now();
        let mut expired = 0;
        if let Some(age) = self.policy.max_age {
            let before =
                now.saturating_add_millis(-i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            let gone = self
                .store
                .expire_outbox(&self.name, before, now, "expired: older than max_age")
                .await?;
            expired += self.report_expired(&gone, "age", now);
        }
        if let Some(max) = self.policy.max_bytes {
            let gone = self
                .store
                .expire_outbox_over_budget(
                    &self.name,
                    i64::try_from(max).unwrap_or(i64::MAX),
                    self.policy.keep_priority,
                    now,
                    "expired: outbox over max_bytes",
                )
                .await?;
            expired += self.report_expired(&gone, "bytes", now);
        }
        let keep = i64::try_from(self.policy.keep_done.as_millis()).unwrap_or(i64::MAX);
        let pruned = self
            .store
            .prune_outbox(now.saturating_add_millis(-keep))
            .await?;
        if pruned > 0 {
            tracing::debug!(pruned, "pruned finished outbox entries");
        }
        self.refresh_stats().await?;
        Ok(expired)
    }

    fn report_expired(
        &self,
        gone: &[ExpiredOutbox],
        reason: &'static str,
        now: Timestamp,
    ) -> usize {
        if gone.is_empty() {
            return 0;
        }
        self.metrics
            .expired
            .with_label_values(&[self.name.as_str(), reason])
            .inc_by(gone.len() as u64);
        // Each expiry is an alarm the city will never get: one line each, for the audit trail.
        for g in gone {
            tracing::warn!(
                id = %g.id,
                channel = %g.channel,
                priority = g.priority,
                attempts = g.attempts,
                bytes = g.bytes,
                age_s = (now.as_millis() - g.created_at.as_millis()) / 1000,
                reason,
                "outbox entry expired undelivered"
            );
        }
        tracing::warn!(count = gone.len(), reason, "outbox entries expired");
        gone.len()
    }

    async fn refresh_stats_logged(&self) -> Option<Timestamp> {
        match self.refresh_stats().await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(err = %e.chain(), "cannot read outbox stats");
                None
            }
        }
    }

    /// Updates the backlog gauges; returns when the earliest channel head is due.
    async fn refresh_stats(&self) -> Result<Option<Timestamp>, Error> {
        let s = self.store.outbox_stats(&self.name).await?;
        let sink = [self.name.as_str()];
        self.metrics.backlog.with_label_values(&sink).set(s.pending);
        self.metrics
            .backlog_bytes
            .with_label_values(&sink)
            .set(s.bytes);
        let age = s.oldest.map_or(0.0, |o| {
            (self.clock.now().as_millis() - o.as_millis()).max(0) as f64 / 1000.0
        });
        self.metrics.oldest_age.with_label_values(&sink).set(age);
        Ok(s.next_due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_stays_below_it() {
        let p = DrainPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            jitter: false,
            ..Default::default()
        };
        let caps: Vec<u64> = (1..=6).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(1000));
        let j = DrainPolicy { jitter: true, ..p };
        let mut seen_low = false;
        for n in 1..=8 {
            for _ in 0..200 {
                let d = j.backoff(n);
                assert!(d <= j.backoff_cap(n));
                seen_low |= d < j.backoff_cap(n) / 2;
            }
        }
        assert!(seen_low, "full jitter spreads over the whole range");
    }

    #[test]
    fn delivery_errors_say_whether_to_retry() {
        let r = DeliveryError::retryable("no PUBACK within 10s");
        assert!(r.is_retryable());
        assert_eq!(
            r.to_string(),
            "retryable delivery failure: no PUBACK within 10s"
        );
        for (code, retry) in [
            (408, true),
            (429, true),
            (500, true),
            (503, true),
            (400, false),
        ] {
            assert_eq!(
                DeliveryError::from_status(code, "MESSAGE Alarm").is_retryable(),
                retry,
                "{code}"
            );
        }
        assert_eq!(
            DeliveryError::from_status(403, "MESSAGE Alarm").message(),
            "MESSAGE Alarm: peer answered 403"
        );
        let p = DeliveryError::permanent("payload too large");
        assert!(!p.is_retryable());
        assert_eq!(p.message(), "payload too large");
    }
}

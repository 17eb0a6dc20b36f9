//! Panic-button fleet simulator: M devices, each its own MQTT connection, speaking the device
//! contract (`xueliang/v1/devices/{id}/...`) to a real broker, for the demo, load benchmarks and
//! end-to-end tests.
//!
//! Every device connects with client id = device id and a retained `offline` last will on its
//! `status` topic, announces a retained `online`, subscribes to its `ack` topic, sends
//! heartbeats with a linearly draining battery and publishes presses (QoS 1) with its own
//! sequence counter. Presses come from three sources:
//! * the explicit schedule (`[[buttons.presses]]`, seconds after start),
//! * the fleet-wide rate (`rate_per_second`, Poisson or fixed gaps, spread over the devices),
//! * the imperative handle ([`Fleet::press`], [`Fleet::duplicate`], [`Fleet::press_out_of_order`]).
//!
//! `duplicate_ratio` and `reorder_ratio` apply to the scheduled sources only, so a test driving
//! the handle gets exactly what it asked for.
//!
//! [`Fleet::kill`] drops a device's TCP connection without DISCONNECT, so the broker publishes
//! its will; [`Fleet::stop`] says `offline` (retained) and disconnects every device cleanly,
//! because a clean DISCONNECT makes the broker discard the will.
//!
//! Latency: an ack names the service's alarm id, not the device's `seq`, so acks are matched
//! by device: each `received` ack on a device's ack topic completes that device's oldest press
//! still waiting for one, and its latency runs from when the press was handed to the MQTT
//! client to when the ack arrived. Duplicates wait for nothing (the service acknowledges a
//! press once). A press the service never acknowledges (lost in a broker restart, refused)
//! shifts later matches onto older presses; [`FleetStats::presses_awaiting_ack`] shows it.

mod config;
mod device;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, SystemClock, Timestamp};

pub use config::{ButtonsConfig, PressAt, PressType, RateMode};
pub use device::LatencySummary;

use device::{Mischief, Sequencer};

use crate::SimError;

/// Requests a device's MQTT client may queue while its connection is down.
const CLIENT_QUEUE: usize = 1024;
/// Commands a device may queue; the rate scheduler drops (and counts) presses beyond this.
const COMMAND_QUEUE: usize = 256;
/// Presses a device remembers while waiting for their acks; older ones are forgotten.
const MAX_AWAITING: usize = 100_000;
/// How long a graceful stop waits for a device's goodbye to reach the broker.
const GOODBYE_DEADLINE: Duration = Duration::from_secs(2);

/// What [`Fleet::press`] and friends sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PressReceipt {
    pub device: String,
    pub seq: u64,
    /// The `ts` in the payload.
    pub ts: Timestamp,
    /// When the press was handed to the device's MQTT client.
    pub sent_at: Instant,
}

/// Acks received, by `state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AckCounts {
    pub received: u64,
    pub acknowledged: u64,
    pub dispatched: u64,
    pub resolved: u64,
    /// A state this contract version does not name.
    pub other: u64,
    /// Not JSON, or without `alarm_id` / `state`.
    pub malformed: u64,
}

/// A snapshot of the fleet's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FleetStats {
    pub devices: usize,
    /// Devices whose connection is up right now.
    pub connected: usize,
    /// Successful CONNACKs, reconnects included.
    pub connects: u64,
    pub connection_errors: u64,
    /// Distinct presses published (each `seq` once).
    pub presses_sent: u64,
    /// Extra byte-identical publications of presses already sent.
    pub duplicates_sent: u64,
    pub heartbeats_sent: u64,
    /// Rate-scheduled presses dropped because their device was gone or too far behind.
    pub schedule_dropped: u64,
    pub acks: AckCounts,
    /// Presses sent but not yet matched to a `received` ack.
    pub presses_awaiting_ack: u64,
    /// From a press to its `received` ack.
    pub latency: LatencySummary,
}

#[derive(Debug, Default)]
struct DeviceCounters {
    connected: bool,
    awaiting: VecDeque<Instant>,
}

#[derive(Debug, Default)]
struct Counters {
    devices: Vec<DeviceCounters>,
    connects: u64,
    connection_errors: u64,
    presses_sent: u64,
    duplicates_sent: u64,
    heartbeats_sent: u64,
    schedule_dropped: u64,
    acks: AckCounts,
    latencies_us: Vec<u64>,
}

#[derive(Debug)]
struct Shared {
    counters: Mutex<Counters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Counters> {
        // Counters stay consistent even if a holder panicked: every update is a single step.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
enum Command {
    Press {
        kind: PressType,
        reply: oneshot::Sender<Result<PressReceipt, SimError>>,
    },
    Duplicate {
        reply: oneshot::Sender<Result<PressReceipt, SimError>>,
    },
    OutOfOrder {
        kind: PressType,
        reply: oneshot::Sender<Result<[PressReceipt; 2], SimError>>,
    },
    /// From the rate scheduler: subject to the duplicate and reorder ratios.
    Scheduled { kind: PressType },
}

#[derive(Debug)]
struct DeviceHandle {
    id: String,
    commands: mpsc::Sender<Command>,
    connection: Option<JoinHandle<()>>,
    driver: Option<JoinHandle<()>>,
}

/// A running fleet of simulated panic buttons. Dropping it stops the devices gracefully in
/// the background; [`Fleet::stop`] does so and waits.
#[derive(Debug)]
pub struct Fleet {
    devices: Vec<Mutex<DeviceHandle>>,
    ids: Vec<String>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    scheduler: Mutex<Option<JoinHandle<()>>>,
}

impl Fleet {
    /// Validates `cfg` and starts every device; returns at once (connections come up in the
    /// background, see [`Fleet::wait_connected`]). Must run inside a tokio runtime.
    pub fn start(cfg: ButtonsConfig, shutdown: Shutdown) -> Result<Fleet, SimError> {
        Fleet::start_with_clock(cfg, Arc::new(SystemClock), shutdown)
    }

    /// [`Fleet::start`] with the wall clock that stamps `ts`.
    pub fn start_with_clock(
        cfg: ButtonsConfig,
        clock: Arc<dyn Clock>,
        shutdown: Shutdown,
    ) -> Result<Fleet, SimError> {
        cfg.validate()?;
        let (host, port) = cfg
            .broker_addr()
            .map_err(|e| SimError::ButtonsConfig(vec![e]))?;
        let ids = cfg.device_ids();
        let started = Instant::now();
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            counters: Mutex::new(Counters {
                devices: ids.iter().map(|_| DeviceCounters::default()).collect(),
                ..Counters::default()
            }),
        });
        // One token inside the fleet: the caller's shutdown and `stop` both end up cancelling it.
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            });
        }
        let mut seeds = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let mut devices = Vec::with_capacity(ids.len());
        for (idx, id) in ids.iter().enumerate() {
            let mut opts = MqttOptions::new(id.clone(), host.clone(), port);
            opts.set_clean_session(true)
                .set_keep_alive(Duration::from_secs(cfg.keepalive_seconds))
                .set_last_will(LastWill::new(
                    device::topic(id, "status"),
                    "offline",
                    QoS::AtLeastOnce,
                    true,
                ));
            // Always a username: brokers that check logins (the service's embedded one
            // included) refuse a CONNECT without one, even for a device with no password.
            let username = cfg.username.clone().unwrap_or_else(|| id.clone());
            opts.set_credentials(username, cfg.password.clone().unwrap_or_default());
            let (client, eventloop) = AsyncClient::new(opts, CLIENT_QUEUE);
            let span = tracing::info_span!("button", device = %id);
            let connection = tokio::spawn(
                run_connection(
                    idx,
                    id.clone(),
                    client.clone(),
                    eventloop,
                    shared.clone(),
                    stop.clone(),
                )
                .instrument(span.clone()),
            );
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let mut schedule: Vec<(Duration, PressType)> = cfg
                .presses
                .iter()
                .filter(|p| p.device == idx + 1)
                .map(|p| (Duration::from_secs_f64(p.at_seconds), p.kind))
                .collect();
            schedule.sort_by_key(|p| p.0);
            let driver = Driver {
                idx,
                id: id.clone(),
                client,
                shared: shared.clone(),
                clock: clock.clone(),
                started,
                seq: Sequencer::new(cfg.seq_start),
                held_since: None,
                schedule: schedule.into(),
                rng: StdRng::seed_from_u64(seeds.random()),
                location: (cfg.lat + idx as f64 * 0.001, cfg.lon),
                battery_start: cfg.battery_start,
                drain_per_hour: cfg.battery_drain_per_hour,
                rssi: cfg.rssi,
                heartbeat: Duration::from_secs_f64(cfg.heartbeat_seconds),
                reorder_hold: Duration::from_secs_f64(cfg.reorder_hold_seconds),
                duplicate_ratio: cfg.duplicate_ratio,
                reorder_ratio: cfg.reorder_ratio,
            };
            let driver = tokio::spawn(driver.run(rx, stop.clone()).instrument(span));
            devices.push(Mutex::new(DeviceHandle {
                id: id.clone(),
                commands: tx,
                connection: Some(connection),
                driver: Some(driver),
            }));
        }
        let scheduler = (cfg.rate_per_second > 0.0).then(|| {
            let senders = devices
                .iter()
                .map(|d| lock(d).commands.clone())
                .collect::<Vec<_>>();
            tokio::spawn(
                run_rate(
                    senders,
                    cfg.rate_per_second,
                    cfg.rate_mode,
                    cfg.rate_type,
                    StdRng::seed_from_u64(seeds.random()),
                    shared.clone(),
                    stop.clone(),
                )
                .instrument(tracing::info_span!("button_rate")),
            )
        });
        tracing::info!(devices = ids.len(), broker = %format_args!("{host}:{port}"), rate_per_second = cfg.rate_per_second, "button fleet started");
        Ok(Fleet {
            devices,
            ids,
            shared,
            stop,
            scheduler: Mutex::new(scheduler),
        })
    }

    /// The devices' ids; a device's index here is its `device_idx`.
    pub fn device_ids(&self) -> &[String] {
        &self.ids
    }

    /// Waits until every live device is connected; `false` if `timeout` passed first.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let all = {
                let c = self.shared.lock();
                self.devices
                    .iter()
                    .zip(&c.devices)
                    .all(|(d, c)| c.connected || lock(d).driver.is_none())
            };
            if all {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Presses device `device_idx` now: the next `seq`, no duplicate, no reordering.
    pub async fn press(
        &self,
        device_idx: usize,
        kind: PressType,
    ) -> Result<PressReceipt, SimError> {
        let (reply, rx) = oneshot::channel();
        self.ask(device_idx, Command::Press { kind, reply }, rx)
            .await?
    }

    /// Publishes device `device_idx`'s last press again, byte for byte.
    pub async fn duplicate(&self, device_idx: usize) -> Result<PressReceipt, SimError> {
        let (reply, rx) = oneshot::channel();
        self.ask(device_idx, Command::Duplicate { reply }, rx)
            .await?
    }

    /// Takes two sequence numbers `n` and `n + 1` and publishes `n + 1` first.
    /// The receipts are in publication order.
    pub async fn press_out_of_order(
        &self,
        device_idx: usize,
        kind: PressType,
    ) -> Result<[PressReceipt; 2], SimError> {
        let (reply, rx) = oneshot::channel();
        self.ask(device_idx, Command::OutOfOrder { kind, reply }, rx)
            .await?
    }

    async fn ask<T>(
        &self,
        device_idx: usize,
        cmd: Command,
        rx: oneshot::Receiver<T>,
    ) -> Result<T, SimError> {
        let (id, tx) = {
            let d = self.device(device_idx)?;
            (d.id.clone(), d.commands.clone())
        };
        let gone = || SimError::Button {
            device: id.clone(),
            reason: "the device was killed or stopped",
        };
        tx.send(cmd).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    fn device(&self, device_idx: usize) -> Result<MutexGuard<'_, DeviceHandle>, SimError> {
        self.devices
            .get(device_idx)
            .map(lock)
            .ok_or_else(|| SimError::Button {
                device: format!("#{device_idx}"),
                reason: "no such device index",
            })
    }

    /// Drops device `device_idx`'s connection without DISCONNECT, as a button losing power
    /// would: the broker then publishes its retained `offline` will. The device stays dead.
    pub async fn kill(&self, device_idx: usize) -> Result<(), SimError> {
        let (id, tasks) = {
            let mut d = self.device(device_idx)?;
            (d.id.clone(), [d.connection.take(), d.driver.take()])
        };
        for task in tasks.into_iter().flatten() {
            task.abort();
            // Awaited so the socket is closed when this returns.
            let _ = task.await;
        }
        self.shared.lock().devices[device_idx].connected = false;
        tracing::info!(device = %id, "button killed: connection dropped without DISCONNECT");
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> FleetStats {
        let c = self.shared.lock();
        let mut samples = c.latencies_us.clone();
        let mut stats = FleetStats {
            devices: c.devices.len(),
            connected: c.devices.iter().filter(|d| d.connected).count(),
            connects: c.connects,
            connection_errors: c.connection_errors,
            presses_sent: c.presses_sent,
            duplicates_sent: c.duplicates_sent,
            heartbeats_sent: c.heartbeats_sent,
            schedule_dropped: c.schedule_dropped,
            acks: c.acks.clone(),
            presses_awaiting_ack: c.devices.iter().map(|d| d.awaiting.len() as u64).sum(),
            latency: LatencySummary::default(),
        };
        // Sorting happens outside the lock: acks keep arriving meanwhile.
        drop(c);
        stats.latency = LatencySummary::from_micros(&mut samples);
        stats
    }

    /// Stops every device gracefully: each releases a held press, publishes a retained
    /// `offline` and disconnects. Returns the final counters. Calling it again only returns them.
    pub async fn stop(&self) -> FleetStats {
        self.stop.cancel();
        let mut tasks: Vec<JoinHandle<()>> = lock(&self.scheduler).take().into_iter().collect();
        for d in &self.devices {
            let mut d = lock(d);
            tasks.extend(d.driver.take());
            tasks.extend(d.connection.take());
        }
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!(devices = self.ids.len(), "button fleet stopped");
        self.stats()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one device's MQTT connection until the fleet stops: (re)connects with backoff,
/// announces `online`, subscribes to the ack topic and counts acks.
async fn run_connection(
    idx: usize,
    id: String,
    client: AsyncClient,
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let status = device::topic(&id, "status");
    let ack_topic = device::topic(&id, "ack");
    let mut failures = 0u32;
    let mut goodbye_deadline: Option<Instant> = None;
    loop {
        let deadline = goodbye_deadline.unwrap_or_else(|| Instant::now() + GOODBYE_DEADLINE);
        let ev = tokio::select! {
            // The driver sends the goodbye; this loop keeps polling so that it reaches the wire.
            _ = stop.cancelled(), if goodbye_deadline.is_none() => {
                goodbye_deadline = Some(Instant::now() + GOODBYE_DEADLINE);
                continue;
            }
            _ = tokio::time::sleep_until(deadline), if goodbye_deadline.is_some() => {
                tracing::warn!("goodbye not flushed in time; closing anyway");
                break;
            }
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                {
                    let mut c = shared.lock();
                    c.connects += 1;
                    c.devices[idx].connected = true;
                }
                tracing::info!("button connected");
                // try_*: this task is the one that drains the queue, so it must never wait on it.
                if let Err(e) =
                    client.try_publish(status.as_str(), QoS::AtLeastOnce, true, "online")
                {
                    tracing::warn!(err = %e, "cannot announce online");
                }
                if let Err(e) = client.try_subscribe(ack_topic.as_str(), QoS::AtLeastOnce) {
                    tracing::warn!(err = %e, "cannot subscribe to acks");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                count_ack(&shared, idx, &p.payload);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => break,
            Err(e) => {
                shared.lock().devices[idx].connected = false;
                if goodbye_deadline.is_some() {
                    break;
                }
                shared.lock().connection_errors += 1;
                failures += 1;
                let cap = 100u64.saturating_mul(1 << failures.min(5)).min(3_000);
                let delay = Duration::from_millis(rand::random_range(cap / 2..=cap));
                tracing::warn!(err = %e, retry_in_ms = delay.as_millis() as u64, "button connection failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    shared.lock().devices[idx].connected = false;
}

fn count_ack(shared: &Shared, idx: usize, payload: &[u8]) {
    let now = Instant::now();
    let ack: device::AckBody = match serde_json::from_slice(payload) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(err = %e, "malformed ack");
            shared.lock().acks.malformed += 1;
            return;
        }
    };
    tracing::debug!(alarm_id = %ack.alarm_id, state = %ack.state, "ack received");
    let mut c = shared.lock();
    match ack.state.as_str() {
        "received" => {
            c.acks.received += 1;
            if let Some(sent) = c.devices[idx].awaiting.pop_front() {
                let us = now.saturating_duration_since(sent).as_micros();
                c.latencies_us.push(u64::try_from(us).unwrap_or(u64::MAX));
            }
        }
        "acknowledged" => c.acks.acknowledged += 1,
        "dispatched" => c.acks.dispatched += 1,
        "resolved" => c.acks.resolved += 1,
        _ => c.acks.other += 1,
    }
}

/// One device's behaviour: heartbeats, scheduled and commanded presses, and the goodbye.
struct Driver {
    idx: usize,
    id: String,
    client: AsyncClient,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    started: Instant,
    seq: Sequencer,
    held_since: Option<Instant>,
    schedule: VecDeque<(Duration, PressType)>,
    rng: StdRng,
    location: (f64, f64),
    battery_start: u8,
    drain_per_hour: f64,
    rssi: i32,
    heartbeat: Duration,
    reorder_hold: Duration,
    duplicate_ratio: f64,
    reorder_ratio: f64,
}

/// The device stopped while a publish waited for room in the client's queue.
#[derive(Debug)]
struct Stopped;

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
        let mut heartbeat = tokio::time::interval_at(
            self.started + self.heartbeat,
            self.heartbeat.max(Duration::from_millis(1)),
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let far = Duration::from_secs(86_400 * 365);
        loop {
            let next_press = self
                .schedule
                .front()
                .map_or(self.started + far, |p| self.started + p.0);
            let release_at = self
                .held_since
                .map_or(self.started + far, |t| t + self.reorder_hold);
            let step = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd, &stop).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(next_press), if !self.schedule.is_empty() => {
                    match self.schedule.pop_front() {
                        Some((_, kind)) => self.scheduled(kind, &stop).await,
                        None => Ok(()),
                    }
                }
                _ = tokio::time::sleep_until(release_at), if self.held_since.is_some() => {
                    self.held_since = None;
                    match self.seq.release() {
                        Some(out) => self.send_presses(vec![out], &stop).await,
                        None => Ok(()),
                    }
                }
                _ = heartbeat.tick(), if !self.heartbeat.is_zero() => self.beat(&stop).await,
            };
            if step.is_err() {
                break;
            }
        }
        self.goodbye();
    }

    fn battery(&self) -> u8 {
        device::battery_at(
            self.battery_start,
            self.drain_per_hour,
            self.started.elapsed(),
        )
    }

    async fn publish(
        &self,
        kind: &str,
        retain: bool,
        payload: Vec<u8>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let topic = device::topic(&self.id, kind);
        tokio::select! {
            _ = stop.cancelled() => Err(Stopped),
            r = self.client.publish(topic, QoS::AtLeastOnce, retain, payload) => {
                // Only fails once the event loop is gone, i.e. the device is shutting down.
                r.map_err(|_| Stopped)
            }
        }
    }

    async fn beat(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        // A real button does not queue heartbeats while offline; it just skips them.
        if !self.shared.lock().devices[self.idx].connected {
            return Ok(());
        }
        let battery = self.battery();
        let ts = self.clock.now().to_rfc3339();
        let body = device::heartbeat_payload(&ts, battery, self.rssi);
        self.publish("heartbeat", false, body, stop).await?;
        self.shared.lock().heartbeats_sent += 1;
        tracing::debug!(battery, "heartbeat sent");
        Ok(())
    }

    /// Builds the next press.
    fn make_press(&mut self, kind: PressType) -> device::Outgoing {
        let seq = self.seq.next_seq();
        let ts = self.clock.now();
        let payload =
            device::press_payload(seq, &ts.to_rfc3339(), kind, self.battery(), self.location);
        device::Outgoing {
            seq,
            ts,
            payload,
            duplicate: false,
        }
    }

    async fn scheduled(
        &mut self,
        kind: PressType,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let m = Mischief {
            duplicate: self.rng.random_bool(self.duplicate_ratio),
            reorder: self.rng.random_bool(self.reorder_ratio),
        };
        let press = self.make_press(kind);
        let seq = press.seq;
        let was_holding = self.seq.is_holding();
        let out = self.seq.press(press, m);
        if !was_holding && self.seq.is_holding() {
            self.held_since = Some(Instant::now());
            tracing::debug!(seq, "press held back to go out after the next one");
        } else if !self.seq.is_holding() {
            self.held_since = None;
        }
        self.send_presses(out, stop).await
    }

    async fn send_presses(
        &mut self,
        out: Vec<device::Outgoing>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        self.send_with_receipts(out, stop).await.map(|_| ())
    }

    /// Publishes presses in order and returns their receipts.
    async fn send_with_receipts(
        &mut self,
        out: Vec<device::Outgoing>,
        stop: &CancellationToken,
    ) -> Result<Vec<PressReceipt>, Stopped> {
        let mut receipts = Vec::with_capacity(out.len());
        for o in out {
            let sent_at = Instant::now();
            // Recorded before publishing so that an ack racing back cannot find nothing to match.
            if !o.duplicate {
                let mut c = self.shared.lock();
                let awaiting = &mut c.devices[self.idx].awaiting;
                if awaiting.len() >= MAX_AWAITING {
                    awaiting.pop_front();
                }
                awaiting.push_back(sent_at);
            }
            self.seq.published(&o);
            self.publish("alarm", false, o.payload.clone(), stop)
                .await?;
            {
                let mut c = self.shared.lock();
                if o.duplicate {
                    c.duplicates_sent += 1;
                } else {
                    c.presses_sent += 1;
                }
            }
            if o.duplicate {
                tracing::info!(device = %self.id, seq = o.seq, "duplicate press sent");
            } else {
                tracing::info!(device = %self.id, seq = o.seq, "press sent");
            }
            receipts.push(PressReceipt {
                device: self.id.clone(),
                seq: o.seq,
                ts: o.ts,
                sent_at,
            });
        }
        Ok(receipts)
    }

    async fn command(&mut self, cmd: Command, stop: &CancellationToken) -> Result<(), Stopped> {
        match cmd {
            Command::Press { kind, reply } => {
                let out = self.make_press(kind);
                let r = self.send_with_receipts(vec![out], stop).await?;
                let _ = reply.send(one(r, &self.id));
            }
            Command::Duplicate { reply } => {
                let r = match self.seq.duplicate_last() {
                    Some(out) => one(self.send_with_receipts(vec![out], stop).await?, &self.id),
                    None => Err(SimError::Button {
                        device: self.id.clone(),
                        reason: "nothing pressed yet to duplicate",
                    }),
                };
                let _ = reply.send(r);
            }
            Command::OutOfOrder { kind, reply } => {
                let first = self.make_press(kind);
                let second = self.make_press(kind);
                let r = self.send_with_receipts(vec![second, first], stop).await?;
                let r = <[PressReceipt; 2]>::try_from(r).map_err(|_| SimError::Button {
                    device: self.id.clone(),
                    reason: "out-of-order pair not sent",
                });
                let _ = reply.send(r);
            }
            Command::Scheduled { kind } => self.scheduled(kind, stop).await?,
        }
        Ok(())
    }

    /// A graceful stop: the held press, a retained `offline`, then DISCONNECT (which makes the
    /// broker drop the will, hence the explicit `offline`). `try_*` because waiting for queue
    /// room could outlive the connection task that drains it.
    fn goodbye(&mut self) {
        if let Some(held) = self.seq.release() {
            let topic = device::topic(&self.id, "alarm");
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, held.payload)
                .is_ok()
            {
                self.shared.lock().presses_sent += 1;
                tracing::info!(device = %self.id, seq = held.seq, "held press sent on stop");
            }
        }
        let status = device::topic(&self.id, "status");
        if let Err(e) = self
            .client
            .try_publish(status, QoS::AtLeastOnce, true, "offline")
        {
            tracing::warn!(err = %e, "cannot announce offline");
        }
        if let Err(e) = self.client.try_disconnect() {
            tracing::warn!(err = %e, "cannot disconnect");
        }
    }
}

fn one(r: Vec<PressReceipt>, id: &str) -> Result<PressReceipt, SimError> {
    r.into_iter().next().ok_or_else(|| SimError::Button {
        device: id.to_owned(),
        reason: "press not sent",
    })
}

/// Spreads `rate` presses per second over the devices until the fleet stops.
async fn run_rate(
    devices: Vec<mpsc::Sender<Command>>,
    rate: f64,
    mode: RateMode,
    kind: PressType,
    mut rng: StdRng,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut next = Instant::now();
    let mut turn = 0usize;
    loop {
        let gap = match mode {
            RateMode::Fixed => 1.0 / rate,
            // Inverse transform of the exponential distribution; 1 - u avoids ln(0).
            RateMode::Poisson => -(1.0 - rng.random::<f64>()).ln() / rate,
        };
        next += Duration::from_secs_f64(gap.min(86_400.0));
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let target = match mode {
            RateMode::Fixed => {
                turn = turn.wrapping_add(1);
                (turn - 1) % devices.len()
            }
            RateMode::Poisson => rng.random_range(0..devices.len()),
        };
        // Never wait for a slow device: the rate is the fleet's, not the slowest button's.
        if devices[target]
            .try_send(Command::Scheduled { kind })
            .is_err()
        {
            // A device that went away because the fleet is stopping dropped nothing.
            if stop.is_cancelled() {
                break;
            }
            shared.lock().schedule_dropped += 1;
        }
    }
}

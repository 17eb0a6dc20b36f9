//! One camera's motion worker: a dedicated thread that decodes the camera's frames and feeds
//! the [`Detector`], choosing per frame how much to decode.
//!
//! The ingest pushes every frame of the stream chosen for analysis (the camera's sub-stream
//! when it has one, else the main stream) with [`WorkerHandle::push`], which never blocks:
//! when the queue is full the frame is dropped, and so is everything after it up to the next
//! key frame, because nothing in between could be decoded anyway. Drops are counted.
//!
//! Decode policy, per frame:
//! * Idle, key frame interval short enough: only key frames are decoded and analysed; the
//!   frames between them are kept (as shared `Arc`s) but never reach libavcodec.
//! * The detector wants full rate (candidate, active, cooldown), or a linked panic alarm
//!   boosted the camera ([`WorkerHandle::boost`]): every frame is decoded, since each one is a
//!   reference for the next, and analysed at `analysis_fps` by wall time. The kept frames
//!   since the last key frame are decoded first, so switching costs no waiting for a key frame.
//! * Idle with a key frame interval over `keyframe_idle_max_gop_ms`: key frames alone would
//!   leave motion unseen for too long, so every frame is decoded and analysed at `idle_fps`.
//!
//! A worker that stops ends the events it has open, so every `Start` reaches the alarm side
//! with its `End`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus::{Histogram, IntGauge, Registry};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use xueliang_core::Timestamp;
use xueliang_core::media::{VIDEO_CLOCK_RATE, VideoFrame, VideoParams};

use crate::decode::{Decoder, Luma};
use crate::detector::{Detector, DetectorConfig, MotionEvent, MotionState, Phase};

/// Where a worker's motion events go. Called on the worker thread: hand the event on (to a
/// bounded channel, say) rather than doing I/O here.
pub trait MotionSink: Send + Sync {
    fn on_event(&self, camera: &str, ev: &MotionEvent);
}

/// How a worker decodes and analyses.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub detector: DetectorConfig,
    /// Analysis rate while the detector wants full rate or the camera is boosted.
    pub analysis_fps: f64,
    /// Frames the queue holds before dropping to the next key frame: about two GOPs, so a
    /// key frame decode that overlaps a burst of the ingest does not drop.
    pub queue: usize,
    /// Longest key frame interval at which idling decodes key frames only. Longer intervals
    /// (4-8 s on some camera configurations) would delay noticing motion too much.
    pub keyframe_idle_max_gop_ms: i64,
    /// Analysis rate while idle on a camera whose key frame interval is too long.
    pub idle_fps: f64,
    /// Most frames kept since the last key frame for catching up when switching to full
    /// rate; past it, a switch waits for the next key frame.
    pub catch_up_max_frames: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            detector: DetectorConfig::default(),
            analysis_fps: 5.0,
            queue: 100,
            keyframe_idle_max_gop_ms: 2_500,
            idle_fps: 1.0,
            catch_up_max_frames: 250,
        }
    }
}

/// The motion workers' metrics, registered once and shared by all cameras.
#[derive(Clone, Debug)]
pub struct MotionMetrics {
    analysed: IntCounterVec,
    decoded: IntCounterVec,
    decode_seconds: HistogramVec,
    detect_seconds: HistogramVec,
    events: IntCounterVec,
    dropped: IntCounterVec,
    decode_errors: IntCounterVec,
    state: IntGaugeVec,
    full_rate: IntGaugeVec,
}

impl MotionMetrics {
    /// Creates the metrics without registering them (tests, or a caller that registers later).
    pub fn new() -> MotionMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["camera"]).expect("valid metric definition")
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["camera"])
                .expect("valid metric definition")
        };
        MotionMetrics {
            analysed: counter(
                "xueliang_motion_frames_analysed_total",
                "Frames the motion detector analysed; its rate is the analysed fps.",
                &["camera"],
            ),
            decoded: counter(
                "xueliang_motion_frames_decoded_total",
                "Frames handed to the decoder for motion analysis.",
                &["camera"],
            ),
            decode_seconds: histogram(
                "xueliang_motion_decode_seconds",
                "Time to decode one frame for motion analysis (the sum's rate is the share of \
                 a core spent decoding).",
                vec![
                    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128,
                ],
            ),
            detect_seconds: histogram(
                "xueliang_motion_detect_seconds",
                "Time to analyse one decoded frame.",
                vec![0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02],
            ),
            events: counter(
                "xueliang_motion_events_total",
                "Motion events emitted, by phase (start, update, end).",
                &["camera", "phase"],
            ),
            dropped: counter(
                "xueliang_motion_dropped_frames_total",
                "Frames dropped because the motion queue was full, up to the next key frame.",
                &["camera"],
            ),
            decode_errors: counter(
                "xueliang_motion_decode_errors_total",
                "Frames the decoder rejected, and failed decoder opens.",
                &["camera"],
            ),
            state: gauge(
                "xueliang_motion_state",
                "Detector state: 0 idle, 1 candidate, 2 active, 3 cooldown.",
            ),
            full_rate: gauge(
                "xueliang_motion_full_rate",
                "1 while every frame is decoded (motion, boost or a long key frame interval), \
                 0 while only key frames are.",
            ),
        }
    }

    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> Result<MotionMetrics, prometheus::Error> {
        let m = MotionMetrics::new();
        registry.register(Box::new(m.analysed.clone()))?;
        registry.register(Box::new(m.decoded.clone()))?;
        registry.register(Box::new(m.decode_seconds.clone()))?;
        registry.register(Box::new(m.detect_seconds.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.decode_errors.clone()))?;
        registry.register(Box::new(m.state.clone()))?;
        registry.register(Box::new(m.full_rate.clone()))?;
        Ok(m)
    }

    /// Forgets a camera's series, for a camera removed from the configuration.
    pub fn remove_camera(&self, camera: &str) {
        let _ = self.analysed.remove_label_values(&[camera]);
        let _ = self.decoded.remove_label_values(&[camera]);
        let _ = self.decode_seconds.remove_label_values(&[camera]);
        let _ = self.detect_seconds.remove_label_values(&[camera]);
        for phase in ["start", "update", "end"] {
            let _ = self.events.remove_label_values(&[camera, phase]);
        }
        let _ = self.dropped.remove_label_values(&[camera]);
        let _ = self.decode_errors.remove_label_values(&[camera]);
        let _ = self.state.remove_label_values(&[camera]);
        let _ = self.full_rate.remove_label_values(&[camera]);
    }

    fn camera(&self, camera: &str) -> CameraMetrics {
        CameraMetrics {
            analysed: self.analysed.with_label_values(&[camera]),
            decoded: self.decoded.with_label_values(&[camera]),
            decode_seconds: self.decode_seconds.with_label_values(&[camera]),
            detect_seconds: self.detect_seconds.with_label_values(&[camera]),
            events: [
                self.events.with_label_values(&[camera, "start"]),
                self.events.with_label_values(&[camera, "update"]),
                self.events.with_label_values(&[camera, "end"]),
            ],
            dropped: self.dropped.with_label_values(&[camera]),
            decode_errors: self.decode_errors.with_label_values(&[camera]),
            state: self.state.with_label_values(&[camera]),
            full_rate: self.full_rate.with_label_values(&[camera]),
        }
    }
}

impl Default for MotionMetrics {
    fn default() -> Self {
        MotionMetrics::new()
    }
}

/// One camera's series, looked up once.
#[derive(Clone)]
struct CameraMetrics {
    analysed: IntCounter,
    decoded: IntCounter,
    decode_seconds: Histogram,
    detect_seconds: Histogram,
    events: [IntCounter; 3],
    dropped: IntCounter,
    decode_errors: IntCounter,
    state: IntGauge,
    full_rate: IntGauge,
}

/// What [`WorkerHandle::push`] did with a frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full, or is being skipped up to the next key frame; counted.
    Dropped,
    /// The worker has stopped (or its thread died); nothing is counted.
    Closed,
}

/// State shared between the handle and the worker thread.
#[derive(Debug)]
struct Shared {
    /// Wall time (ms) until which the camera decodes and analyses at full rate.
    boost_until_ms: AtomicI64,
    /// Set by `stop`: the thread leaves without draining the queue.
    stopping: AtomicBool,
}

/// A running worker. Dropping it stops the thread without waiting for it; [`stop`] waits.
///
/// [`stop`]: WorkerHandle::stop
pub struct WorkerHandle {
    camera: String,
    tx: Option<SyncSender<Arc<VideoFrame>>>,
    /// Dropping up to the next key frame. A mutex, not an atomic, so that concurrent pushes
    /// cannot interleave the check and the send and let a non-key frame in after a gap.
    skipping: Mutex<bool>,
    shared: Arc<Shared>,
    dropped: IntCounter,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("camera", &self.camera)
            .field("running", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// Queues a frame for the worker without ever blocking.
    pub fn push(&self, frame: Arc<VideoFrame>) -> Pushed {
        let Some(tx) = &self.tx else {
            return Pushed::Closed;
        };
        let mut skipping = self.skipping.lock().unwrap_or_else(|p| p.into_inner());
        if *skipping && !frame.is_key {
            self.dropped.inc();
            return Pushed::Dropped;
        }
        match tx.try_send(frame) {
            Ok(()) => {
                *skipping = false;
                Pushed::Queued
            }
            Err(TrySendError::Full(_)) => {
                *skipping = true;
                self.dropped.inc();
                Pushed::Dropped
            }
            Err(TrySendError::Disconnected(_)) => Pushed::Closed,
        }
    }

    /// Decodes and analyses at full rate until `until` (wall time), e.g. while a linked panic
    /// alarm is open. A later call replaces an earlier one, so a shorter `until` shortens it.
    pub fn boost(&self, until: Timestamp) {
        self.shared
            .boost_until_ms
            .store(until.as_millis(), Ordering::Relaxed);
    }

    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// Stops the worker, abandoning queued frames, and waits for its thread to leave. Events
    /// still open are ended at the last analysed frame's time.
    pub fn stop(mut self) {
        self.shutdown();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(camera = %self.camera, "motion worker thread panicked");
        }
    }

    /// Closes the queue, lets the worker analyse what is queued, and waits for its thread to
    /// leave: the end of a finite stream. Events still open are ended at the last analysed
    /// frame's time.
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(camera = %self.camera, "motion worker thread panicked");
        }
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Closing the channel wakes a thread waiting for frames.
        self.tx = None;
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts camera `camera`'s worker on its own thread, `motion-{camera}`.
pub fn spawn(
    camera: impl Into<String>,
    cfg: WorkerConfig,
    sink: Arc<dyn MotionSink>,
    metrics: MotionMetrics,
) -> std::io::Result<WorkerHandle> {
    let camera = camera.into();
    let metrics = metrics.camera(&camera);
    let (tx, rx) = mpsc::sync_channel(cfg.queue.max(1));
    let shared = Arc::new(Shared {
        boost_until_ms: AtomicI64::new(i64::MIN),
        stopping: AtomicBool::new(false),
    });
    let dropped = metrics.dropped.clone();
    let worker = Worker::new(camera.clone(), cfg, sink, metrics, Arc::clone(&shared));
    let thread = std::thread::Builder::new()
        // The kernel keeps 15 bytes of it; a NUL would make the spawn panic.
        .name(format!("motion-{}", camera.replace('\0', "")))
        .spawn(move || worker.run(rx))?;
    Ok(WorkerHandle {
        camera,
        tx: Some(tx),
        skipping: Mutex::new(false),
        shared,
        dropped,
        thread: Some(thread),
    })
}

/// The thread's state.
struct Worker {
    camera: String,
    cfg: WorkerConfig,
    sink: Arc<dyn MotionSink>,
    metrics: CameraMetrics,
    shared: Arc<Shared>,
    decoder: Option<Decoder>,
    /// Parameters a decoder could not be opened for: not retried until they change.
    failed_params: Option<Arc<VideoParams>>,
    /// Whether the last decode failed, so that a broken stream logs once, not per frame.
    failing: bool,
    analyser: Analyser,
    /// Frames since the last key frame not yet decoded, in decode order.
    pending: Vec<Arc<VideoFrame>>,
    /// The decoder has seen every frame up to `pending`: decoding `pending` continues it.
    in_sync: bool,
    last_key_ms: Option<i64>,
    /// Wall time between the last two key frames.
    gop_ms: Option<i64>,
    /// Wall time (ms) at which the next full-rate analysis is due.
    next_due_ms: i64,
}

/// How the current frame is handled.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Mode {
    KeyframesOnly,
    /// Every frame decoded, analysed every `period_ms`.
    Full {
        period_ms: i64,
    },
}

impl Worker {
    fn new(
        camera: String,
        cfg: WorkerConfig,
        sink: Arc<dyn MotionSink>,
        metrics: CameraMetrics,
        shared: Arc<Shared>,
    ) -> Worker {
        let analyser = Analyser::new(cfg.detector.clone());
        Worker {
            camera,
            cfg,
            sink,
            metrics,
            shared,
            decoder: None,
            failed_params: None,
            failing: false,
            analyser,
            pending: Vec::new(),
            in_sync: false,
            last_key_ms: None,
            gop_ms: None,
            next_due_ms: i64::MIN,
        }
    }

    fn run(mut self, rx: Receiver<Arc<VideoFrame>>) {
        let span = tracing::info_span!("motion", camera = %self.camera);
        let _enter = span.enter();
        tracing::debug!("motion worker started");
        while let Ok(frame) = rx.recv() {
            if self.shared.stopping.load(Ordering::Relaxed) {
                break;
            }
            self.on_frame(frame);
        }
        self.analyser
            .close(&self.camera, &*self.sink, &self.metrics);
        tracing::debug!("motion worker stopped");
    }

    fn on_frame(&mut self, frame: Arc<VideoFrame>) {
        let t = frame.wall.as_millis();
        if frame.is_key {
            if let Some(last) = self.last_key_ms {
                self.gop_ms = Some(t - last);
            }
            self.last_key_ms = Some(t);
            self.pending.clear();
            self.in_sync = true;
        } else if !self.in_sync {
            // Nothing since the last key frame was kept (start, overflow, decode error).
            return;
        }
        let mode = self.mode(t);
        self.metrics
            .full_rate
            .set(i64::from(matches!(mode, Mode::Full { .. })));
        match mode {
            Mode::KeyframesOnly => {
                if frame.is_key {
                    self.decode_and_analyse(&frame, true, None);
                } else if self.pending.len() >= self.cfg.catch_up_max_frames {
                    // Too far from the key frame to catch up quickly: wait for the next one.
                    self.pending.clear();
                    self.in_sync = false;
                } else {
                    self.pending.push(frame);
                }
            }
            Mode::Full { period_ms } => {
                // After a switch the kept frames are decoded in one burst, each analysed (when
                // due) at its own time.
                let mut frames = std::mem::take(&mut self.pending);
                frames.push(frame);
                for f in frames.drain(..) {
                    if !self.in_sync {
                        break;
                    }
                    self.decode_and_analyse(&f, false, Some(period_ms));
                }
                self.pending = frames;
            }
        }
    }

    /// Picks the mode for a frame at wall time `t_ms`.
    fn mode(&self, t_ms: i64) -> Mode {
        let period = |fps: f64| (1000.0 / fps.max(0.01)).round() as i64;
        let hot = self.analyser.wants_full_rate()
            || t_ms < self.shared.boost_until_ms.load(Ordering::Relaxed);
        if hot {
            return Mode::Full {
                period_ms: period(self.cfg.analysis_fps),
            };
        }
        let max_gop = self.cfg.keyframe_idle_max_gop_ms;
        let long_gop = self.gop_ms.is_some_and(|g| g > max_gop)
            || self.last_key_ms.is_some_and(|k| t_ms - k > max_gop);
        if long_gop {
            Mode::Full {
                period_ms: period(self.cfg.idle_fps),
            }
        } else {
            Mode::KeyframesOnly
        }
    }

    /// Decodes `frame` and analyses the picture if it is due: always for key-frame-only
    /// decoding, else every `period_ms` of wall time.
    fn decode_and_analyse(
        &mut self,
        frame: &VideoFrame,
        keyframes_only: bool,
        period: Option<i64>,
    ) {
        if !self.ensure_decoder(frame) {
            self.in_sync = false;
            return;
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        decoder.set_keyframes_only(keyframes_only);
        if !decoder.would_decode(frame) {
            return;
        }
        let started = Instant::now();
        let result = decoder.decode(frame);
        self.metrics
            .decode_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.decoded.inc();
        let luma = match result {
            Ok(Some(luma)) => {
                self.failing = false;
                luma
            }
            Ok(None) => return,
            Err(e) => {
                self.metrics.decode_errors.inc();
                if !self.failing {
                    tracing::warn!(error = %e, kind = %e.kind(), "motion decode failed; waiting for the next key frame");
                }
                self.failing = true;
                self.in_sync = false;
                return;
            }
        };
        // With reordering the picture is not the frame just sent: its own time is the frame's
        // wall time shifted by the pts difference.
        let t_ms = match luma.pts {
            Some(pts) if pts != frame.pts => {
                frame.wall.as_millis() + (pts - frame.pts) * 1000 / i64::from(VIDEO_CLOCK_RATE)
            }
            _ => frame.wall.as_millis(),
        };
        if let Some(period) = period {
            if t_ms < self.next_due_ms {
                return;
            }
            // Catch up without bursts after a gap, stay on the grid otherwise.
            self.next_due_ms = if t_ms.saturating_sub(self.next_due_ms) > period {
                t_ms + period
            } else {
                self.next_due_ms + period
            };
        }
        self.analyser
            .analyse(&self.camera, &*self.sink, &self.metrics, &luma, t_ms);
    }

    /// Makes sure a decoder exists for `frame`'s parameters unless they are known to fail;
    /// the decoder re-opens itself when they change.
    fn ensure_decoder(&mut self, frame: &VideoFrame) -> bool {
        if self.decoder.is_some() {
            return true;
        }
        if self
            .failed_params
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &frame.params) || **p == *frame.params)
        {
            return false;
        }
        match Decoder::new(&frame.params) {
            Ok(d) => {
                self.decoder = Some(d);
                self.failed_params = None;
                true
            }
            Err(e) => {
                self.metrics.decode_errors.inc();
                tracing::warn!(error = %e, kind = %e.kind(), params = ?frame.params, "cannot open the motion decoder");
                self.failed_params = Some(Arc::clone(&frame.params));
                false
            }
        }
    }
}

/// The detector and the events it has started but not ended.
struct Analyser {
    cfg: DetectorConfig,
    /// The detector and the picture size it was made for.
    detector: Option<(Detector, (u32, u32))>,
    /// Started, not yet ended: ended by the worker itself when the detector goes away (the
    /// worker stops, or the picture size changes), so every `Start` gets its `End`.
    open: Vec<MotionEvent>,
    last_t_ms: Option<i64>,
}

impl Analyser {
    fn new(cfg: DetectorConfig) -> Analyser {
        Analyser {
            cfg,
            detector: None,
            open: Vec::new(),
            last_t_ms: None,
        }
    }

    fn wants_full_rate(&self) -> bool {
        self.detector
            .as_ref()
            .is_some_and(|(d, _)| d.wants_full_rate())
    }

    /// Runs the detector on one picture, re-creating it when the picture size changes, and
    /// hands its events on.
    fn analyse(
        &mut self,
        camera: &str,
        sink: &dyn MotionSink,
        metrics: &CameraMetrics,
        luma: &Luma<'_>,
        t_ms: i64,
    ) {
        let size = (luma.width, luma.height);
        if self.detector.as_ref().is_some_and(|(_, s)| *s != size) {
            self.close(camera, sink, metrics);
            self.detector = None;
        }
        let (detector, _) = self.detector.get_or_insert_with(|| {
            (
                Detector::new(self.cfg.clone(), luma.width, luma.height),
                size,
            )
        });
        let started = Instant::now();
        let analysis = detector.analyse(luma.data, luma.stride, t_ms);
        metrics
            .detect_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.analysed.inc();
        metrics.state.set(state_value(detector.state()));
        self.last_t_ms = Some(t_ms);
        for ev in &analysis.events {
            match ev.phase {
                Phase::Start => self.open.push(ev.clone()),
                Phase::Update => {}
                Phase::End => self
                    .open
                    .retain(|o| !(o.zone == ev.zone && o.start_ms == ev.start_ms)),
            }
            emit(camera, sink, metrics, ev);
        }
    }

    /// Ends every open event at the last analysed time.
    fn close(&mut self, camera: &str, sink: &dyn MotionSink, metrics: &CameraMetrics) {
        for open in std::mem::take(&mut self.open) {
            let end_ms = self.last_t_ms.unwrap_or(open.start_ms).max(open.start_ms);
            let ev = MotionEvent {
                end_ms: Some(end_ms),
                boxes: Vec::new(),
                phase: Phase::End,
                ..open
            };
            emit(camera, sink, metrics, &ev);
        }
        metrics.state.set(state_value(MotionState::Idle));
    }
}

fn state_value(state: MotionState) -> i64 {
    match state {
        MotionState::Idle => 0,
        MotionState::Candidate => 1,
        MotionState::Active => 2,
        MotionState::Cooldown => 3,
    }
}

fn emit(camera: &str, sink: &dyn MotionSink, metrics: &CameraMetrics, ev: &MotionEvent) {
    let i = match ev.phase {
        Phase::Start => 0,
        Phase::Update => 1,
        Phase::End => 2,
    };
    metrics.events[i].inc();
    sink.on_event(camera, ev);
}

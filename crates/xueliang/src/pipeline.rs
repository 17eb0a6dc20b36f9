//! The media half of the topology: ingest tasks feeding per-camera writers, the indexer and
//! retention. Only this module knows that ingest output goes to the recorder.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use retina::client::SessionGroup;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use xueliang_core::config::Config;
use xueliang_core::health::{HealthBoard, StreamKind};
use xueliang_core::model::CameraState;
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, Error, ErrorKind, ResultExt, Timestamp};
use xueliang_ingest::{
    FrameSink, IngestEvent, IngestMetrics, StateSink, StreamContext, StreamSpec,
};
use xueliang_record::retention::{InFlight, Retention, RetentionPolicy, Statvfs, StorageStatus};
use xueliang_record::writer::{self, WriterConfig, WriterHandle};
use xueliang_record::{RecordMetrics, indexer, reconcile};
use xueliang_store::{CameraStateChange, Store};

/// Forwards a stream's events to its writer.
struct RecorderSink(WriterHandle);

impl FrameSink for RecorderSink {
    fn on_event(&self, _camera: &str, _kind: StreamKind, event: IngestEvent<'_>) {
        match event {
            IngestEvent::SessionStarted { .. } => self.0.session_started(),
            IngestEvent::Frame(f) => self.0.frame(f),
            // Ingest ends a session without an error only when the service stops.
            IngestEvent::SessionEnded { at, error } => {
                self.0.session_ended(at, error.unwrap_or("service stopped"))
            }
        }
    }
}

/// Hands a stream's frames to its camera's motion worker (which never blocks the caller).
struct MotionFrameSink(Arc<xueliang_motion::worker::WorkerHandle>);

impl FrameSink for MotionFrameSink {
    fn on_event(&self, _camera: &str, _kind: StreamKind, event: IngestEvent<'_>) {
        if let IngestEvent::Frame(f) = event {
            self.0.push(Arc::new(f.clone()));
        }
    }
}

/// Feeds a camera's main stream to live view, whether or not it records.
struct LiveSink(xueliang_api::LiveHub);

impl FrameSink for LiveSink {
    fn on_event(&self, camera: &str, _kind: StreamKind, event: IngestEvent<'_>) {
        match event {
            IngestEvent::Frame(f) => self.0.frame(camera, f),
            IngestEvent::SessionStarted { .. } | IngestEvent::SessionEnded { .. } => {
                self.0.restart(camera)
            }
        }
    }
}

/// Motion events on to the alarm shell, in wall time.
struct MotionToAlarms(mpsc::UnboundedSender<crate::alarms::MotionNotice>);

impl xueliang_motion::worker::MotionSink for MotionToAlarms {
    fn on_event(&self, camera: &str, ev: &xueliang_motion::detector::MotionEvent) {
        use xueliang_motion::detector::Phase;
        let _ = self.0.send(crate::alarms::MotionNotice {
            camera: camera.to_owned(),
            zone: ev.zone.clone(),
            start: Timestamp::from_millis(ev.start_ms),
            end: ev.end_ms.map(Timestamp::from_millis),
            score: f64::from(ev.score),
            boxes: ev.boxes.clone(),
            phase: match ev.phase {
                Phase::Start => crate::alarms::MotionPhase::Start,
                Phase::Update => crate::alarms::MotionPhase::Update,
                Phase::End => crate::alarms::MotionPhase::End,
            },
        });
    }
}

/// The detector settings of a camera's `motion` table.
fn detector_config(
    m: &xueliang_core::config::MotionConfig,
) -> xueliang_motion::worker::WorkerConfig {
    use xueliang_motion::detector::{DetectorConfig, Zone};
    xueliang_motion::worker::WorkerConfig {
        detector: DetectorConfig {
            zones: m
                .zones
                .iter()
                .map(|z| Zone {
                    name: z.name.clone(),
                    polygon: z.polygon.clone(),
                    sensitivity: z.sensitivity,
                })
                .collect(),
            masks: m.masks.clone(),
            cooldown_ms: i64::from(m.cooldown_seconds) * 1000,
            ..DetectorConfig::default()
        },
        analysis_fps: f64::from(m.analysis_fps),
        ..Default::default()
    }
}

/// Persists main-stream state changes through a queue, so ingest never waits on the database.
struct StoreStateSink(mpsc::UnboundedSender<CameraStateChange>);

impl StateSink for StoreStateSink {
    fn on_state(
        &self,
        camera: &str,
        kind: StreamKind,
        state: CameraState,
        error: Option<&str>,
        at: Timestamp,
    ) {
        if kind == StreamKind::Main {
            let _ = self.0.send(CameraStateChange {
                camera_id: camera.to_owned(),
                state,
                last_error: error.map(str::to_owned),
                at,
            });
        }
    }
}

/// Everything the media pipeline runs, for an orderly stop.
pub struct Pipeline {
    ingest: Vec<JoinHandle<()>>,
    writers: Vec<(WriterHandle, std::thread::JoinHandle<()>)>,
    indexer: JoinHandle<()>,
    states: JoinHandle<()>,
    retention: JoinHandle<()>,
    ingest_shutdown: Shutdown,
    motion_workers: HashMap<String, Arc<xueliang_motion::worker::WorkerHandle>>,
    pub health: HealthBoard,
    pub storage: StorageStatus,
    pub live: xueliang_api::LiveHub,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("streams", &self.ingest.len())
            .field("writers", &self.writers.len())
            .finish()
    }
}

/// Reconciles the recordings, then starts writers, ingest and retention.
pub async fn start(
    cfg: &Config,
    store: Arc<dyn Store>,
    registry: &prometheus::Registry,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
    camera_changes: mpsc::UnboundedSender<CameraStateChange>,
    motion: mpsc::UnboundedSender<crate::alarms::MotionNotice>,
) -> Result<Pipeline, Error> {
    let storage_dir = cfg.recordings_dir();
    let node = cfg.node.id.clone();
    let ingest_metrics = IngestMetrics::register(registry)?;
    let record_metrics = RecordMetrics::register(registry)?;
    let recorded: Vec<String> = cfg
        .cameras
        .iter()
        .filter(|c| c.enabled && c.record)
        .map(|c| c.id.clone())
        .collect();

    let report = reconcile::reconcile(
        store.as_ref(),
        &storage_dir,
        &recorded,
        &node,
        clock.now(),
        true,
    )
    .await?;
    tracing::info!(
        ok = report.segments_ok,
        indexed = report.indexed.len(),
        truncated = report.truncated.len(),
        removed_empty = report.removed_empty.len(),
        missing = report.missing_files.len(),
        "recordings reconciled"
    );
    let mut gaps =
        reconcile::open_downtime_gaps(store.as_ref(), &recorded, &node, clock.now()).await?;

    let (index_tx, index_rx) = mpsc::unbounded_channel();
    let segment_closed = Arc::new(tokio::sync::Notify::new());
    let indexer = tokio::spawn(indexer::run_indexer(
        store.clone(),
        index_rx,
        segment_closed.clone(),
    ));
    let in_flight = InFlight::default();
    let segment = Duration::from_secs(cfg.storage.segment_seconds.into());
    let mut writer_of: HashMap<String, WriterHandle> = HashMap::new();
    let mut writers = Vec::new();
    for id in &recorded {
        let wc = WriterConfig {
            camera_id: id.clone(),
            node_id: node.clone(),
            storage_dir: storage_dir.clone(),
            segment,
            rpo: Duration::from_secs(cfg.storage.rpo_seconds.into()),
            first_segment: WriterConfig::staggered(segment, id),
            queue_frames: 1500,
            open_gap: gaps.remove(id),
            in_flight: in_flight.clone(),
        };
        let (h, j) = writer::spawn(wc, index_tx.clone(), record_metrics.clone())
            .err_kind(ErrorKind::Internal, || {
                format!("start the writer thread of camera {id}")
            })?;
        writer_of.insert(id.clone(), h.clone());
        writers.push((h, j));
    }
    drop(index_tx);

    let (state_tx, mut state_rx) = mpsc::unbounded_channel::<CameraStateChange>();
    let state_store = store.clone();
    let states = tokio::spawn(async move {
        while let Some(c) = state_rx.recv().await {
            if let Err(e) = state_store.set_camera_state(&c).await {
                tracing::warn!(camera = %c.camera_id, err = %e.chain(), "cannot persist camera state");
            }
            // On to the alarm engine and the event stream; gone when alarms have stopped.
            let _ = camera_changes.send(c);
        }
    });

    let health = HealthBoard::new();
    let live = xueliang_api::LiveHub::default();
    let ingest_shutdown = Shutdown::new();
    let state_sink: Arc<dyn StateSink> = Arc::new(StoreStateSink(state_tx));
    let motion_metrics = xueliang_motion::worker::MotionMetrics::register(registry)
        .err_kind(ErrorKind::Internal, || "register motion metrics".into())?;
    let motion_sink: Arc<dyn xueliang_motion::worker::MotionSink> =
        Arc::new(MotionToAlarms(motion));
    let mut motion_workers = HashMap::new();
    let mut ingest = Vec::new();
    for cam in cfg.cameras.iter().filter(|c| c.enabled) {
        if cam.motion.enabled {
            let w = xueliang_motion::worker::spawn(
                cam.id.clone(),
                detector_config(&cam.motion),
                motion_sink.clone(),
                motion_metrics.clone(),
            )
            .err_kind(ErrorKind::Internal, || {
                format!("start the motion worker of {}", cam.id)
            })?;
            motion_workers.insert(cam.id.clone(), Arc::new(w));
        }
        // Motion reads the sub stream when there is one: a quarter of the pixels to decode.
        let motion_kind = if cam.sub_url.is_some() {
            StreamKind::Sub
        } else {
            StreamKind::Main
        };
        // One group per camera: a reconnect of either stream waits out the camera's stale sessions.
        let group = Arc::new(SessionGroup::default().named(cam.id.clone()));
        let mut streams = vec![(StreamKind::Main, cam.url.as_str())];
        if let Some(sub) = &cam.sub_url {
            streams.push((StreamKind::Sub, sub.as_str()));
        }
        for (kind, url) in streams {
            let url = url::Url::parse(url).err_kind(ErrorKind::InvalidArgument, || {
                format!("camera {} {} url", cam.id, kind.as_str())
            })?;
            let mut sinks: Vec<Arc<dyn FrameSink>> = Vec::new();
            if let Some(w) = writer_of.get(&cam.id).filter(|_| kind == StreamKind::Main) {
                sinks.push(Arc::new(RecorderSink(w.clone())));
            }
            if kind == StreamKind::Main {
                sinks.push(Arc::new(LiveSink(live.clone())));
            }
            if let Some(m) = motion_workers.get(&cam.id).filter(|_| kind == motion_kind) {
                sinks.push(Arc::new(MotionFrameSink(m.clone())));
            }
            let spec = StreamSpec {
                camera_id: cam.id.clone(),
                kind,
                url,
                transport: cam.transport,
                username: cam.username.clone(),
                password: cam.password.clone(),
                stall_timeout: Duration::from_secs(cam.stall_seconds.into()),
                request_timeout: Duration::from_secs(15),
                backoff: Default::default(),
            };
            let ctx = StreamContext {
                spec,
                sinks,
                state: state_sink.clone(),
                health: health.clone(),
                metrics: ingest_metrics.clone(),
                clock: clock.clone(),
                group: group.clone(),
                shutdown: ingest_shutdown.clone(),
            };
            ingest.push(tokio::spawn(xueliang_ingest::run_stream(ctx)));
        }
    }

    let storage = StorageStatus::default();
    let retention = Retention {
        store: store.clone(),
        policy: RetentionPolicy {
            storage_dir: storage_dir.clone(),
            default_days: cfg.storage.retention_days,
            camera_days: cfg
                .cameras
                .iter()
                .filter_map(|c| Some((c.id.clone(), c.retention_days?)))
                .collect(),
            max_bytes: cfg.storage.max_bytes.map(|b| b.0),
            min_free_bytes: cfg.storage.min_free_bytes.0,
            clip_hold_ms: i64::from(cfg.alarms.footage_hold_days) * 86_400_000,
        },
        in_flight,
        free: Arc::new(Statvfs),
        metrics: record_metrics,
        clock,
        status: storage.clone(),
    };
    let retention =
        tokio::spawn(retention.run(Duration::from_secs(5), segment_closed, shutdown.clone()));
    Ok(Pipeline {
        ingest,
        writers,
        indexer,
        states,
        retention,
        ingest_shutdown,
        motion_workers,
        health,
        storage,
        live,
    })
}

impl Pipeline {
    /// Stops ingest, lets the writers close their files, and waits until the index has them.
    /// Analyse this camera at full rate until `until` (a linked alarm is open).
    pub fn motion_booster(&self) -> crate::alarms::Booster {
        let workers = self.motion_workers.clone();
        Arc::new(move |camera: &str, until: Timestamp| {
            if let Some(w) = workers.get(camera) {
                w.boost(until);
            }
        })
    }

    pub async fn stop(self) {
        self.ingest_shutdown.trigger();
        for t in self.ingest {
            let _ = t.await;
        }
        // Ingest has stopped feeding them; each worker ends its open events on the way out.
        let workers: Vec<_> = self.motion_workers.into_values().collect();
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                if let Ok(w) = Arc::try_unwrap(w) {
                    w.finish();
                }
            }
        })
        .await;
        for (h, _) in &self.writers {
            h.stop();
        }
        let joins: Vec<_> = self.writers.into_iter().map(|(_, j)| j).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for j in joins {
                let _ = j.join();
            }
        })
        .await;
        let _ = self.indexer.await;
        let _ = self.states.await;
        self.retention.abort();
    }
}

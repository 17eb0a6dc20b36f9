//! The segment writer: one dedicated thread per recorded stream, so a slow disk never stalls
//! ingest or the async executor.
//!
//! Durability protocol (the stated recovery point): every fragment (one GOP, or at most
//! `rpo` of video) is written and `fdatasync`ed as soon as it is complete; a new file and its
//! directory are synced when created; a closed file is synced, then its directory, and only
//! then is its index row sent for commit. A crash therefore loses at most the fragment being
//! assembled, and start-up reconciliation indexes whatever complete fragments reached the disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;
use xueliang_core::media::{VIDEO_CLOCK_RATE, VideoFrame, VideoParams};
use xueliang_core::{EntityId, Timestamp};
use xueliang_store::{Gap, Segment};

use crate::layout::segment_path;
use crate::metrics::RecordMetrics;
use crate::mp4::{self, FragmentBuilder};

/// Settings of one stream's writer.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub camera_id: String,
    pub node_id: String,
    pub storage_dir: PathBuf,
    pub segment: Duration,
    /// Largest span of video a fragment may hold before it is written and synced.
    pub rpo: Duration,
    /// Length of the first segment: shorter by a per-camera offset so that cameras rotate
    /// files at different moments instead of all at once.
    pub first_segment: Duration,
    /// Frames the queue holds before new ones are dropped (and counted).
    pub queue_frames: usize,
    /// A gap already open in the index (e.g. for the time the service was down), closed when
    /// the first file opens.
    pub open_gap: Option<EntityId>,
    /// Bytes the open file may still grow by, shared with retention.
    pub in_flight: crate::retention::InFlight,
}

impl WriterConfig {
    /// First-segment length staggered by a stable hash of the camera id.
    pub fn staggered(segment: Duration, camera_id: &str) -> Duration {
        let h = camera_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let secs = segment.as_secs().max(1);
        let offset = h % secs;
        Duration::from_secs((secs - offset).max(secs / 4).max(1))
    }
}

/// What the writer tells the indexer (the task that commits to the store).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexEvent {
    /// A file was closed and synced; commit its row.
    Segment(Segment),
    /// Recording stopped at `gap.start`; `gap.end` is `None` until it resumes.
    GapOpened(Gap),
    GapClosed {
        id: EntityId,
        end: Timestamp,
    },
}

enum Msg {
    Started,
    /// Frames were dropped (queue full) right here in the sequence.
    Dropped(u64),
    /// Frames in order: sent a batch at a time so the writer thread wakes a few times a second
    /// per camera instead of once per frame.
    Frames(Vec<VideoFrame>),
    Ended {
        at: Timestamp,
        reason: String,
    },
    Stop,
}

/// Frames wait this long at most in a batch before they go to the writer thread (the recovery
/// point grows by at most this much).
const BATCH_MAX_AGE: Duration = Duration::from_millis(250);
/// ...and a batch holds at most this many.
const BATCH_MAX_FRAMES: usize = 32;

#[derive(Debug, Default)]
struct Batch {
    frames: Vec<VideoFrame>,
    since: Option<Instant>,
}

/// The ingest side of a writer: every call returns at once.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    camera: String,
    metrics: RecordMetrics,
    batch: Arc<std::sync::Mutex<Batch>>,
}

impl WriterHandle {
    pub fn session_started(&self) {
        self.flush();
        self.send(Msg::Started, 0);
    }

    /// Queues a frame. A key frame goes out at once with the frames before it (the writer
    /// closes the previous fragment on it); other frames wait in a batch for at most
    /// `BATCH_MAX_AGE` (a quarter second).
    pub fn frame(&self, f: &VideoFrame) {
        let full = {
            let mut b = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            b.since.get_or_insert_with(Instant::now);
            b.frames.push(f.clone());
            f.is_key
                || b.frames.len() >= BATCH_MAX_FRAMES
                || b.since.is_some_and(|s| s.elapsed() >= BATCH_MAX_AGE)
        };
        if full {
            self.flush();
        }
    }

    fn flush(&self) {
        let frames = {
            let mut b = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            b.since = None;
            std::mem::take(&mut b.frames)
        };
        if !frames.is_empty() {
            let n = frames.len() as u64;
            self.send(Msg::Frames(frames), n);
        }
    }

    pub fn session_ended(&self, at: Timestamp, reason: &str) {
        self.flush();
        self.send(
            Msg::Ended {
                at,
                reason: reason.to_owned(),
            },
            0,
        );
    }

    /// Asks the writer to close its file and exit; does not wait.
    pub fn stop(&self) {
        self.flush();
        // Stop must get through even when the queue is full.
        let _ = self.tx.send(Msg::Stop);
    }

    /// `frames`: how many frames `m` carries, counted as dropped if it does not fit.
    fn send(&self, m: Msg, frames: u64) {
        // Drops are reported in sequence, before the next message that gets through, so the
        // writer cuts its file and opens the gap exactly where frames went missing.
        let pending = self.dropped.load(Ordering::Relaxed);
        if pending > 0 {
            match self.tx.try_send(Msg::Dropped(pending)) {
                Ok(()) => {
                    self.dropped.fetch_sub(pending, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(frames.max(1), Ordering::Relaxed);
                    self.metrics.dropped_n(&self.camera, frames.max(1));
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        match self.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(frames.max(1), Ordering::Relaxed);
                self.metrics.dropped_n(&self.camera, frames.max(1));
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Starts the writer thread for one stream.
pub fn spawn(
    cfg: WriterConfig,
    index: UnboundedSender<IndexEvent>,
    metrics: RecordMetrics,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    // Counted in messages, most of which carry a batch of a few frames (a quarter of a second,
    // or up to a key frame): a quarter as many messages hold about as many frames.
    let (tx, rx) = std::sync::mpsc::sync_channel((cfg.queue_frames / 4).max(8));
    let handle = WriterHandle {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
        camera: cfg.camera_id.clone(),
        metrics: metrics.clone(),
        batch: Arc::default(),
    };
    let name = format!("rec-{}", cfg.camera_id);
    let join = std::thread::Builder::new().name(name).spawn(move || {
        let span = tracing::info_span!("record", camera = %cfg.camera_id);
        let _enter = span.enter();
        Writer::new(cfg, index, metrics).run(rx);
    })?;
    Ok((handle, join))
}

struct OpenFile {
    file: File,
    rel: PathBuf,
    id: EntityId,
    start: Timestamp,
    first_pts: i64,
    end_pts: i64,
    bytes: u64,
    frames: u64,
    hasher: Sha256,
    params: Arc<VideoParams>,
    /// Decode time of the file's first fragment: each file's timeline starts at zero.
    first_dts: Option<i64>,
    next_sequence: u32,
}

pub(crate) struct Writer {
    cfg: WriterConfig,
    index: UnboundedSender<IndexEvent>,
    metrics: RecordMetrics,
    file: Option<OpenFile>,
    builder: FragmentBuilder,
    builder_first_pts: Option<i64>,
    sequence: u32,
    /// Frames are skipped until a key frame: at start, after a session change, a drop or an error.
    need_key: bool,
    last_pts: Option<i64>,
    frame_ticks: i64,
    /// Wall time up to which video is on disk, for the next gap's start.
    recorded_until: Option<Timestamp>,
    open_gap: Option<EntityId>,
    segments_closed: u64,
}

impl Writer {
    pub(crate) fn new(
        cfg: WriterConfig,
        index: UnboundedSender<IndexEvent>,
        metrics: RecordMetrics,
    ) -> Self {
        Writer {
            index,
            metrics,
            file: None,
            builder: FragmentBuilder::new(),
            builder_first_pts: None,
            sequence: 1,
            need_key: true,
            last_pts: None,
            frame_ticks: i64::from(VIDEO_CLOCK_RATE) / 25,
            recorded_until: None,
            open_gap: cfg.open_gap,
            segments_closed: 0,
            cfg,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let msg = rx.recv().unwrap_or(Msg::Stop);
            match msg {
                Msg::Stop => {
                    self.end_recording(None, "service stopped");
                    return;
                }
                Msg::Started => {
                    // Media time restarts with a new session: a fresh builder keeps dts sane.
                    self.end_recording(None, "camera session restarted");
                }
                Msg::Ended { at, reason } => self.end_recording(Some(at), &reason),
                Msg::Dropped(n) => {
                    tracing::warn!(
                        frames = n,
                        "recording queue overflowed (disk too slow); skipping to the next key frame"
                    );
                    self.end_recording(None, &format!("disk too slow: {n} frames dropped"));
                }
                Msg::Frames(frames) => {
                    for f in frames {
                        self.frame(f);
                    }
                }
            }
        }
    }

    /// Closes the file (if any) and opens a gap starting where recording stopped.
    pub(crate) fn end_recording(&mut self, at: Option<Timestamp>, reason: &str) {
        if let Err(e) = self.close_file() {
            tracing::error!(err = %e, "closing segment failed");
        }
        self.builder = FragmentBuilder::new();
        self.builder_first_pts = None;
        self.last_pts = None;
        self.need_key = true;
        if self.open_gap.is_none()
            && let Some(start) = self.recorded_until.or(at)
        {
            let id = EntityId::new_at(start);
            self.open_gap = Some(id);
            self.send(IndexEvent::GapOpened(Gap {
                id,
                node_id: self.cfg.node_id.clone(),
                camera_id: self.cfg.camera_id.clone(),
                start,
                end: None,
                reason: reason.to_owned(),
                created_at: start,
            }));
        }
    }

    fn send(&self, ev: IndexEvent) {
        if self.index.send(ev).is_err() {
            tracing::error!("indexer is gone; this segment is recovered at the next start-up");
        }
    }

    pub(crate) fn frame(&mut self, f: VideoFrame) {
        if self.need_key && !f.is_key {
            return;
        }
        if let Some(prev) = self.last_pts {
            let d = f.pts - prev;
            if d > 0 && d < i64::from(VIDEO_CLOCK_RATE) {
                self.frame_ticks = d;
            }
        }
        if let Err(e) = self.frame_inner(&f) {
            self.metrics.write_error(&self.cfg.camera_id);
            tracing::error!(err = %e, "recording write failed; retrying at the next key frame");
            self.end_recording(Some(f.wall), &format!("write failed: {e}"));
            return;
        }
        self.need_key = false;
        self.last_pts = Some(f.pts);
    }

    fn frame_inner(&mut self, f: &VideoFrame) -> std::io::Result<()> {
        let rotate = match &self.file {
            None => true,
            Some(open) => {
                let target = if self.segments_closed == 0 {
                    self.cfg.first_segment
                } else {
                    self.cfg.segment
                };
                f.is_key
                    && (!Arc::ptr_eq(&open.params, &f.params) && *open.params != *f.params
                        || f.wall.as_millis() - open.start.as_millis() >= target.as_millis() as i64)
            }
        };
        if rotate && !f.is_key {
            // A parameter change mid-GOP cannot start a file; wait for the key frame.
            return Ok(());
        }
        let rpo_ticks = (self.cfg.rpo.as_millis() as i64) * i64::from(VIDEO_CLOCK_RATE) / 1000;
        let fragment_full = self
            .builder_first_pts
            .is_some_and(|p| f.pts - p + self.frame_ticks > rpo_ticks);
        if !self.builder.is_empty() && (f.is_key || fragment_full) {
            self.flush_fragment(Some(f.pts))?;
        }
        if rotate {
            self.close_file()?;
            self.open_file(f)?;
        }
        self.builder.push(f);
        if self.builder_first_pts.is_none() {
            self.builder_first_pts = Some(f.pts);
        }
        if let Some(open) = self.file.as_mut() {
            open.end_pts = open.end_pts.max(f.pts + self.frame_ticks);
        }
        Ok(())
    }

    fn open_file(&mut self, f: &VideoFrame) -> std::io::Result<()> {
        let id = EntityId::new_at(f.wall);
        let rel = segment_path(&self.cfg.camera_id, f.wall, id);
        let full = self.cfg.storage_dir.join(&rel);
        let dir = full.parent().expect("segment path has a directory");
        let created_dir = !dir.exists();
        std::fs::create_dir_all(dir)?;
        let init = mp4::init_segment(&f.params).map_err(std::io::Error::other)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&full)?;
        file.write_all(&init)?;
        file.sync_all()?;
        sync_dir(dir)?;
        if created_dir && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut hasher = Sha256::new();
        hasher.update(&init);
        if let Some(gap) = self.open_gap.take() {
            self.send(IndexEvent::GapClosed {
                id: gap,
                end: f.wall,
            });
        }
        tracing::debug!(path = %rel.display(), "segment opened");
        self.file = Some(OpenFile {
            file,
            rel,
            id,
            start: f.wall,
            first_pts: f.pts,
            end_pts: f.pts,
            bytes: init.len() as u64,
            frames: 0,
            hasher,
            params: f.params.clone(),
            first_dts: None,
            next_sequence: 1,
        });
        Ok(())
    }

    fn flush_fragment(&mut self, next_pts: Option<i64>) -> std::io::Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let mut frag = self.builder.finish(self.sequence, next_pts);
        self.sequence = self.sequence.wrapping_add(1);
        self.builder_first_pts = None;
        let Some(open) = self.file.as_mut() else {
            return Ok(());
        };
        // The builder's decode times run on across files; MP4 has no start offset, so each
        // file's timeline is rebased to begin at zero.
        let first_dts = *open.first_dts.get_or_insert(frag.base_dts);
        frag.rebase(open.next_sequence, frag.base_dts - first_dts)
            .map_err(std::io::Error::other)?;
        open.next_sequence += 1;
        let t = Instant::now();
        open.file.write_all(&frag.bytes)?;
        open.file.sync_data()?;
        self.metrics.fragment(
            &self.cfg.camera_id,
            frag.bytes.len(),
            frag.frames,
            t.elapsed(),
        );
        open.hasher.update(&frag.bytes);
        open.bytes += frag.bytes.len() as u64;
        open.frames += u64::from(frag.frames);
        let end = wall_at(open.start, open.first_pts, open.end_pts);
        self.recorded_until = Some(end);
        // Reserve what this file will still grow by at its current bit rate, so retention keeps
        // room for it before the disk fills.
        let elapsed_ms = (end.as_millis() - open.start.as_millis()).max(1) as u64;
        let expected = open
            .bytes
            .saturating_mul(self.cfg.segment.as_millis() as u64)
            / elapsed_ms;
        self.cfg.in_flight.set(
            &self.cfg.camera_id,
            expected.saturating_sub(open.bytes).max(open.bytes / 4),
        );
        Ok(())
    }

    fn close_file(&mut self) -> std::io::Result<()> {
        self.flush_fragment(None)?;
        let Some(open) = self.file.take() else {
            return Ok(());
        };
        self.cfg.in_flight.set(&self.cfg.camera_id, 0);
        open.file.sync_all()?;
        let full = self.cfg.storage_dir.join(&open.rel);
        if let Some(dir) = full.parent() {
            sync_dir(dir)?;
        }
        if open.frames == 0 {
            // Only an init segment: nothing worth indexing.
            std::fs::remove_file(&full)?;
            return Ok(());
        }
        let end = wall_at(open.start, open.first_pts, open.end_pts);
        self.segments_closed += 1;
        self.metrics.segment_closed(&self.cfg.camera_id);
        tracing::debug!(path = %open.rel.display(), frames = open.frames, bytes = open.bytes, "segment closed");
        self.send(IndexEvent::Segment(Segment {
            id: open.id,
            node_id: self.cfg.node_id.clone(),
            camera_id: self.cfg.camera_id.clone(),
            stream: "main".into(),
            start: open.start,
            end,
            bytes: open.bytes as i64,
            frames: open.frames as i64,
            path: open.rel.to_string_lossy().into_owned(),
            sha256: Some(hex::encode(open.hasher.finalize())),
            pinned_until: None,
            created_at: end,
        }));
        Ok(())
    }
}

/// Wall time of media time `pts` in a file that started at `start` with `first_pts`.
pub(crate) fn wall_at(start: Timestamp, first_pts: i64, pts: i64) -> Timestamp {
    start.saturating_add_millis((pts - first_pts) * 1000 / i64::from(VIDEO_CLOCK_RATE))
}

/// Makes a directory entry (a created or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mp4::testutil::{frame, h264_params};

    const FPS: i64 = 10;
    const TICK: i64 = 90_000 / FPS;

    struct Rig {
        w: Writer,
        rx: tokio::sync::mpsc::UnboundedReceiver<IndexEvent>,
        dir: tempfile::TempDir,
    }

    fn rig(rpo_s: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = WriterConfig {
            camera_id: "cam".into(),
            node_id: "n".into(),
            storage_dir: dir.path().to_owned(),
            segment: Duration::from_secs(10),
            rpo: Duration::from_secs(rpo_s),
            first_segment: Duration::from_secs(4),
            queue_frames: 16,
            open_gap: None,
            in_flight: Default::default(),
        };
        let w = Writer::new(cfg, tx, RecordMetrics::unregistered());
        Rig { w, rx, dir }
    }

    fn events(rx: &mut tokio::sync::mpsc::UnboundedReceiver<IndexEvent>) -> Vec<IndexEvent> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e);
        }
        v
    }

    fn segments(ev: &[IndexEvent]) -> Vec<Segment> {
        ev.iter()
            .filter_map(|e| match e {
                IndexEvent::Segment(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Feeds `secs` seconds of frames starting at media second `from_s`, GOP of `gop` frames.
    fn feed(w: &mut Writer, from_s: i64, secs: i64, gop: i64) {
        let p = h264_params();
        let base = 1_000_000_i64 * 90; // an arbitrary session start
        for i in from_s * FPS..(from_s + secs) * FPS {
            w.frame(frame(&p, base + i * TICK, i % gop == 0, 200, i as u8));
        }
    }

    #[test]
    fn rotates_on_key_frames_staggered_then_every_segment() {
        let mut r = rig(2);
        feed(&mut r.w, 0, 25, 10);
        r.w.end_recording(None, "service stopped");
        let ev = events(&mut r.rx);
        let segs = segments(&ev);
        let lens: Vec<i64> = segs
            .iter()
            .map(|s| s.end.as_millis() - s.start.as_millis())
            .collect();
        assert_eq!(
            lens,
            [4_000, 10_000, 10_000, 1_000],
            "first staggered, then 10 s; the last closes at stop"
        );
        let frames: Vec<i64> = segs.iter().map(|s| s.frames).collect();
        assert_eq!(frames, [40, 100, 100, 10]);
        for w in segs.windows(2) {
            assert_eq!(
                w[0].end, w[1].start,
                "no hole between segments of one session"
            );
        }
        // Each file: every fragment a GOP starting with a key frame, timeline from zero, and the
        // index row's size and hash match the file.
        for s in &segs {
            let path = r.dir.path().join(&s.path);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as i64, s.bytes);
            assert_eq!(Some(hex::encode(Sha256::digest(&bytes))), s.sha256);
            let idx = mp4::scan(&mut std::io::Cursor::new(&bytes)).unwrap();
            assert!(idx.is_clean());
            assert_eq!(idx.fragments[0].base_dts, 0);
            assert!(
                idx.fragments
                    .iter()
                    .all(|f| f.starts_with_key && f.frames == 10)
            );
            assert_eq!(
                idx.fragments
                    .iter()
                    .map(|f| i64::from(f.frames))
                    .sum::<i64>(),
                s.frames
            );
        }
        // The stop opened a gap at the end of the recording.
        match ev.last().unwrap() {
            IndexEvent::GapOpened(g) => assert_eq!((g.start, g.end), (segs[3].end, None)),
            e => panic!("expected a gap, got {e:?}"),
        }
    }

    #[test]
    fn long_gops_are_cut_into_fragments_within_the_recovery_point() {
        let mut r = rig(2);
        // One key frame every 8 s: fragments must still be written at least every 2 s.
        feed(&mut r.w, 0, 7, 80);
        let path = {
            let open = r.w.file.as_ref().unwrap();
            r.dir.path().join(&open.rel)
        };
        // Without closing: what a kill -9 would leave on disk.
        let idx = mp4::scan(&mut std::fs::File::open(&path).unwrap()).unwrap();
        assert!(
            idx.fragments.len() >= 3,
            "{} fragments: {idx:?}",
            idx.fragments.len()
        );
        assert!(
            idx.fragments.iter().all(|f| f.duration <= 2 * 90_000),
            "{:?}",
            idx.fragments
        );
        let on_disk: i64 = idx.fragments.iter().map(|f| f.duration).sum();
        // At most one recovery point of the 7 s fed is still in memory.
        assert!(
            7 * 90_000 - on_disk <= 2 * 90_000,
            "{on_disk} ticks on disk"
        );
    }

    #[test]
    fn a_session_end_opens_a_gap_that_the_next_file_closes() {
        let mut r = rig(2);
        feed(&mut r.w, 0, 3, 10);
        r.w.end_recording(Some(Timestamp::from_millis(1)), "camera unreachable");
        // The gap starts where the flushed recording ends, not at the reported time.
        let at = r.w.recorded_until.unwrap();
        assert_eq!(at.as_millis(), 1_000_000 + 3_000);
        // Frames without a key frame first are skipped.
        let p = h264_params();
        r.w.frame(frame(&p, 500 * 90_000 + TICK, false, 100, 1));
        assert!(r.w.file.is_none());
        feed(&mut r.w, 500, 2, 10);
        let ev = events(&mut r.rx);
        let gap_id = match &ev[1] {
            IndexEvent::GapOpened(g) => {
                assert_eq!((g.start, g.reason.as_str()), (at, "camera unreachable"));
                g.id
            }
            e => panic!("{e:?}"),
        };
        match &ev[2] {
            IndexEvent::GapClosed { id, end } => {
                assert_eq!(*id, gap_id);
                assert_eq!(end.as_millis(), 1_000_000 + 500_000);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_full_queue_drops_frames_counts_them_and_records_a_gap_where_they_were_lost() {
        let r = rig(2);
        let (msg_tx, msg_rx) = std::sync::mpsc::sync_channel(8);
        let metrics = RecordMetrics::unregistered();
        let handle = WriterHandle {
            tx: msg_tx,
            dropped: Arc::new(AtomicU64::new(0)),
            camera: "cam".into(),
            metrics,
            batch: Arc::default(),
        };
        let p = h264_params();
        let base = 1_000_000_i64 * 90;
        // A key frame every other frame: each key frame sends a batch of two.
        let frame_at = |i: i64| frame(&p, base + i * TICK, i % 2 == 0, 200, 0);
        // The disk is stuck: 8 messages fit (the session start, frame 0, then frames 1 to 12
        // in pairs); the pairs 13-14, 15-16 and 17-18 are dropped; 19 waits in its batch.
        handle.session_started();
        for i in 0..20 {
            handle.frame(&frame_at(i));
        }
        assert_eq!(handle.dropped.load(Ordering::Relaxed), 6);
        let Rig {
            w,
            mut rx,
            dir: _dir,
        } = r;
        let writer = std::thread::spawn(move || w.run(msg_rx));
        std::thread::sleep(Duration::from_millis(100));
        // The disk is back: the drop marker goes first, then recording resumes at a key frame.
        for i in 25..45 {
            handle.frame(&frame_at(i));
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.stop();
        writer.join().unwrap();
        let ev = events(&mut rx);
        let kinds: Vec<String> = ev
            .iter()
            .map(|e| match e {
                IndexEvent::Segment(s) => format!("segment {}", s.frames),
                IndexEvent::GapOpened(g) => format!("gap {}", g.reason),
                IndexEvent::GapClosed { end, .. } => {
                    format!("resume {}", end.as_millis() - 1_000_000)
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "segment 13",
                "gap disk too slow: 6 frames dropped",
                "resume 2600",
                "segment 19",
                "gap service stopped"
            ]
        );
    }

    #[test]
    fn a_changed_resolution_starts_a_new_file_at_the_key_frame() {
        let mut r = rig(2);
        feed(&mut r.w, 0, 2, 10);
        let mut p2 = (*h264_params()).clone();
        p2.width = 640;
        let p2 = Arc::new(p2);
        let base = 1_000_000_i64 * 90;
        for i in 20..30 {
            r.w.frame(frame(&p2, base + i * TICK, i % 10 == 0, 200, 0));
        }
        r.w.end_recording(None, "stop");
        let segs = segments(&events(&mut r.rx));
        assert_eq!(segs.len(), 2);
        assert_eq!(segs.iter().map(|s| s.frames).collect::<Vec<_>>(), [20, 10]);
    }
}

//! Recording costs, each against the obvious alternative measured in the same run:
//!
//! * `index/runs_30_days`: the timeline of one camera over 30 days of one-minute segments
//!   (4 cameras, 172 800 rows in SQLite), merged into runs by the database, against
//!   `index/segments_1_day`, listing one day's 1 440 segments row by row.
//! * `export/xueliang` against `export/ffmpeg_concat_copy`: one MP4 of 10 minutes of real
//!   H.264 recorded by the writer, built from the index and streamed, versus what Frigate does
//!   for an export (ffmpeg's concat demuxer with `-c copy` over the same files).

#[path = "../crates/record/tests/support/mod.rs"]
#[allow(dead_code, clippy::all)]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use xueliang_core::media::{VideoCodec, VideoFrame};
use xueliang_core::{EntityId, Timestamp};
use xueliang_record::RecordMetrics;
use xueliang_record::writer::{self, IndexEvent, WriterConfig};
use xueliang_store::testing::TestDb;
use xueliang_store::{CameraUpsert, Segment};

const DAY_MS: i64 = 86_400_000;
const T0: i64 = 1_790_000_000_000;

fn index(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::sqlite();
    let store = rt.block_on(db.open("bench")).unwrap();
    let cams: Vec<String> = (0..4).map(|i| format!("cam-{i}")).collect();
    rt.block_on(
        store.sync_cameras(
            &cams
                .iter()
                .map(|c| CameraUpsert {
                    id: c.clone(),
                    name: None,
                })
                .collect::<Vec<_>>(),
            Timestamp::from_millis(T0),
        ),
    )
    .unwrap();
    for cam in &cams {
        for day in 0..30 {
            let segs: Vec<Segment> = (0..1440)
                .map(|m| {
                    let start = T0 + day * DAY_MS + m * 60_000;
                    Segment {
                        id: EntityId::new_at(Timestamp::from_millis(start)),
                        node_id: "bench".into(),
                        camera_id: cam.clone(),
                        stream: "main".into(),
                        start: Timestamp::from_millis(start),
                        end: Timestamp::from_millis(start + 60_000),
                        bytes: 30_000_000,
                        frames: 1500,
                        path: format!("{cam}/{day}/{m}.mp4"),
                        sha256: None,
                        pinned_until: None,
                        created_at: Timestamp::from_millis(start + 60_000),
                    }
                })
                .collect();
            rt.block_on(store.insert_segments(&segs)).unwrap();
        }
    }
    let from = Timestamp::from_millis(T0);
    let to = Timestamp::from_millis(T0 + 30 * DAY_MS);
    let runs = rt
        .block_on(store.recording_runs("cam-1", from, to))
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].segments, 43_200);
    let mut g = c.benchmark_group("index");
    g.bench_function("runs_30_days", |b| {
        b.iter(|| {
            rt.block_on(store.recording_runs("cam-1", from, to))
                .unwrap()
        })
    });
    let day_end = Timestamp::from_millis(T0 + DAY_MS);
    g.bench_function("segments_1_day", |b| {
        b.iter(|| {
            rt.block_on(store.list_segments("cam-1", from, day_end))
                .unwrap()
        })
    });
    g.finish();
    rt.block_on(store.close());
}

/// Records `minutes` of real H.264 (a 4 s encode, repeated with running timestamps) into
/// one-minute segments with the production writer. Returns the segments.
fn record(dir: &Path, minutes: i64) -> Vec<Segment> {
    let src = support::encode(dir, VideoCodec::H264, 0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = WriterConfig {
        camera_id: "cam".into(),
        node_id: "bench".into(),
        storage_dir: dir.join("rec"),
        segment: Duration::from_secs(60),
        rpo: Duration::from_secs(2),
        first_segment: Duration::from_secs(60),
        queue_frames: 1 << 20,
        open_gap: None,
        in_flight: Default::default(),
    };
    let (h, join) = writer::spawn(cfg, tx, RecordMetrics::unregistered()).unwrap();
    let span = src.frames.len() as i64 * src.frame_ticks;
    let loops = minutes * 60 * 90_000 / span;
    h.session_started();
    for l in 0..loops {
        for f in &src.frames {
            let pts = f.pts + l * span;
            h.frame(&VideoFrame {
                pts,
                wall: Timestamp::from_millis(T0 + pts / 90),
                ..f.clone()
            });
        }
    }
    h.stop();
    join.join().unwrap();
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let IndexEvent::Segment(s) = ev {
            out.push(s);
        }
    }
    out
}

fn export(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let segs = record(dir.path(), 10);
    let storage = dir.path().join("rec");
    let bytes: u64 = segs.iter().map(|s| s.bytes as u64).sum();
    let from = segs.first().unwrap().start;
    let to = segs.last().unwrap().end;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out: PathBuf = dir.path().join("out.mp4");
    let list = dir.path().join("list.txt");
    let lines: String = segs
        .iter()
        .map(|s| format!("file '{}'\n", storage.join(&s.path).display()))
        .collect();
    std::fs::write(&list, lines).unwrap();

    let mut g = c.benchmark_group("export");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("xueliang", |b| {
        b.iter(|| {
            let plan = xueliang_record::export::plan(&storage, &segs, from, to).unwrap();
            rt.block_on(async {
                use tokio::io::AsyncWriteExt;
                let mut f = tokio::fs::File::create(&out).await.unwrap();
                let mut s = Box::pin(plan.stream(0..plan.len));
                while let Some(chunk) = s.next().await {
                    f.write_all(&chunk.unwrap()).await.unwrap();
                }
                f.flush().await.unwrap();
            });
        })
    });
    g.bench_function("ffmpeg_concat_copy", |b| {
        b.iter(|| {
            let st = std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-f", "concat", "-safe", "0", "-i"])
                .arg(&list)
                .args(["-c", "copy"])
                .arg(&out)
                .status()
                .unwrap();
            assert!(st.success());
        })
    });
    g.finish();
    let _ = Arc::new(());
}

criterion_group!(benches, index, export);
criterion_main!(benches);

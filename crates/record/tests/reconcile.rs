//! Crash reconciliation on real files written by the production writer from a real H.264
//! encode, against a real SQLite index.

#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::Duration;

use xueliang_core::Timestamp;
use xueliang_core::media::{VideoCodec, VideoFrame};
use xueliang_record::RecordMetrics;
use xueliang_record::reconcile::reconcile;
use xueliang_record::writer::{self, IndexEvent, WriterConfig};
use xueliang_store::testing::TestDb;
use xueliang_store::{CameraUpsert, Segment};

const T0: i64 = 1_795_000_000_000;

/// Records `src` twice (two camera sessions), returning the two closed segments.
fn record_two_files(dir: &Path, src: &support::Source) -> Vec<Segment> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = WriterConfig {
        camera_id: "cam".into(),
        node_id: "n".into(),
        storage_dir: dir.to_owned(),
        segment: Duration::from_secs(60),
        rpo: Duration::from_secs(2),
        first_segment: Duration::from_secs(60),
        queue_frames: 10_000,
        open_gap: None,
        in_flight: Default::default(),
    };
    let (h, join) = writer::spawn(cfg, tx, RecordMetrics::unregistered()).unwrap();
    let span = src.frames.len() as i64 * src.frame_ticks;
    for session in 0..2 {
        h.session_started();
        for f in &src.frames {
            let pts = f.pts + session * 2 * span;
            h.frame(&VideoFrame {
                pts,
                wall: Timestamp::from_millis(T0 + pts / 90),
                ..f.clone()
            });
        }
        h.session_ended(
            Timestamp::from_millis(T0 + (session * 2 + 1) * span / 90),
            "camera went away",
        );
    }
    h.stop();
    join.join().unwrap();
    let mut segs = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let IndexEvent::Segment(s) = ev {
            segs.push(s);
        }
    }
    segs
}

#[tokio::test]
async fn reports_then_repairs_missing_cut_and_empty_files() {
    let work = tempfile::tempdir().unwrap();
    let src = support::encode(work.path(), VideoCodec::H264, 0);
    let storage = work.path().join("rec");
    let segs = record_two_files(&storage, &src);
    assert_eq!(segs.len(), 2);
    let db = TestDb::sqlite();
    let store = db.open("n").await.unwrap();
    store
        .sync_cameras(
            &[CameraUpsert {
                id: "cam".into(),
                name: None,
            }],
            Timestamp::from_millis(T0),
        )
        .await
        .unwrap();

    // File 1 was indexed, then lost from the disk.
    store.insert_segment(&segs[0]).await.unwrap();
    std::fs::remove_file(storage.join(&segs[0].path)).unwrap();
    // File 2 never reached the index, and the crash cut its last fragment short.
    let cut = storage.join(&segs[1].path);
    let full_len = std::fs::metadata(&cut).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(full_len - 300).unwrap();
    drop(f);
    // File 3 got no further than its init segment.
    let empty_rel = xueliang_record::layout::segment_path(
        "cam",
        Timestamp::from_millis(T0 + 3_600_000),
        xueliang_core::EntityId::new_at(Timestamp::from_millis(T0 + 3_600_000)),
    );
    let empty = storage.join(&empty_rel);
    std::fs::create_dir_all(empty.parent().unwrap()).unwrap();
    std::fs::write(
        &empty,
        xueliang_record::mp4::init_segment(&src.params).unwrap(),
    )
    .unwrap();
    std::fs::write(storage.join("cam").join("notes.txt"), "not a segment").unwrap();

    let cams = vec!["cam".to_owned()];
    let now = Timestamp::from_millis(T0 + 7_200_000);
    // Report only: everything is found, nothing is touched.
    let rep = reconcile(store.as_ref(), &storage, &cams, "n", now, false)
        .await
        .unwrap();
    assert_eq!(rep.missing_files, [segs[0].path.clone()]);
    assert_eq!(rep.indexed, [segs[1].path.clone()]);
    assert_eq!(rep.truncated.len(), 1);
    assert_eq!(rep.truncated[0].1, full_len - 300);
    assert!(rep.truncated[0].2 < full_len - 300);
    assert_eq!(
        rep.removed_empty,
        [empty_rel.to_string_lossy().into_owned()]
    );
    assert_eq!(rep.foreign_files.len(), 1);
    assert!(!rep.is_clean());
    assert_eq!(std::fs::metadata(&cut).unwrap().len(), full_len - 300);
    assert!(empty.exists());

    // Repair.
    let rep = reconcile(store.as_ref(), &storage, &cams, "n", now, true)
        .await
        .unwrap();
    assert!(rep.repaired);
    let kept_len = rep.truncated[0].2;
    assert_eq!(std::fs::metadata(&cut).unwrap().len(), kept_len);
    assert!(!empty.exists());
    let rows = store
        .list_segments(
            "cam",
            Timestamp::from_millis(0),
            Timestamp::from_millis(i64::MAX / 4),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.id, r.start, r.path.as_str()),
        (segs[1].id, segs[1].start, segs[1].path.as_str())
    );
    assert_eq!(r.bytes as u64, kept_len);
    // Only whole fragments (GOPs of 25 frames) survive the cut, and the file says so.
    assert!(
        r.frames < segs[1].frames && r.frames % 25 == 0,
        "{} of {}",
        r.frames,
        segs[1].frames
    );
    let probe = support::ffprobe_json(&cut, &["-count_frames", "-show_streams"]);
    assert_eq!(
        probe["streams"][0]["nb_read_frames"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        r.frames
    );
    let gaps = store
        .list_gaps(
            "cam",
            Timestamp::from_millis(0),
            Timestamp::from_millis(i64::MAX / 4),
        )
        .await
        .unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].start, gaps[0].end, gaps[0].reason.as_str()),
        (segs[0].start, Some(segs[0].end), "recording file missing")
    );

    // And then it is clean.
    let rep = reconcile(store.as_ref(), &storage, &cams, "n", now, false)
        .await
        .unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.segments_ok, 1);
}

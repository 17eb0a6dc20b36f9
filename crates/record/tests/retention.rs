//! Retention against a real SQLite index and real files, with the clock and free space injected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xueliang_core::time::ManualClock;
use xueliang_core::{EntityId, Timestamp};
use xueliang_record::RecordMetrics;
use xueliang_record::retention::{FreeSpace, InFlight, Retention, RetentionPolicy, StorageStatus};
use xueliang_store::testing::TestDb;
use xueliang_store::{CameraUpsert, Segment, Store};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_795_000_000_000;
const MB: i64 = 1_000_000;

/// A disk whose free space is `capacity` minus the bytes of the files under `dir`.
#[derive(Debug)]
struct FakeDisk {
    dir: PathBuf,
    capacity: u64,
}

impl FakeDisk {
    fn used(&self) -> u64 {
        fn walk(d: &Path) -> u64 {
            std::fs::read_dir(d)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            let p = e.path();
                            if p.is_dir() {
                                walk(&p)
                            } else {
                                e.metadata().map(|m| m.len()).unwrap_or(0)
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.dir)
    }
}

impl FreeSpace for FakeDisk {
    fn free_bytes(&self, _: &Path) -> std::io::Result<u64> {
        Ok(self.capacity.saturating_sub(self.used()))
    }
}

struct Rig {
    _db: TestDb,
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    disk: Arc<FakeDisk>,
    in_flight: InFlight,
    status: StorageStatus,
}

async fn rig(capacity: u64) -> Rig {
    let db = TestDb::sqlite();
    let store = db.open("n").await.unwrap();
    store
        .sync_cameras(
            &[
                CameraUpsert {
                    id: "a".into(),
                    name: None,
                },
                CameraUpsert {
                    id: "b".into(),
                    name: None,
                },
            ],
            Timestamp::from_millis(T0),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FakeDisk {
        dir: dir.path().to_owned(),
        capacity,
    });
    Rig {
        _db: db,
        store,
        dir,
        clock: Arc::new(ManualClock::new(Timestamp::from_millis(T0))),
        disk,
        in_flight: InFlight::default(),
        status: StorageStatus::default(),
    }
}

impl Rig {
    fn retention(
        &self,
        days: u32,
        camera_days: &[(&str, u32)],
        max_bytes: Option<u64>,
        min_free: u64,
    ) -> Retention {
        Retention {
            store: self.store.clone(),
            policy: RetentionPolicy {
                storage_dir: self.dir.path().to_owned(),
                default_days: days,
                camera_days: camera_days
                    .iter()
                    .map(|(c, d)| (c.to_string(), *d))
                    .collect::<HashMap<_, _>>(),
                max_bytes,
                min_free_bytes: min_free,
                clip_hold_ms: 86_400_000,
            },
            in_flight: self.in_flight.clone(),
            free: self.disk.clone(),
            metrics: RecordMetrics::unregistered(),
            clock: self.clock.clone(),
            status: self.status.clone(),
        }
    }

    /// A one-hour segment of `bytes` starting `start_h` hours after T0, with its file.
    async fn segment(&self, cam: &str, start_h: i64, bytes: i64) -> Segment {
        let start = Timestamp::from_millis(T0 + start_h * 3_600_000);
        let path = format!("{cam}/{start_h}.mp4");
        let full = self.dir.path().join(&path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, vec![0u8; bytes as usize]).unwrap();
        let s = Segment {
            id: EntityId::new_at(start),
            node_id: "n".into(),
            camera_id: cam.into(),
            stream: "main".into(),
            start,
            end: start.saturating_add_millis(3_600_000),
            bytes,
            frames: 90_000,
            path,
            sha256: None,
            pinned_until: None,
            created_at: start,
        };
        self.store.insert_segment(&s).await.unwrap();
        s
    }

    async fn kept(&self, cam: &str) -> Vec<i64> {
        self.store
            .list_segments(
                cam,
                Timestamp::from_millis(0),
                Timestamp::from_millis(i64::MAX / 4),
            )
            .await
            .unwrap()
            .iter()
            .map(|s| (s.start.as_millis() - T0) / 3_600_000)
            .collect()
    }
}

#[tokio::test]
async fn age_limits_apply_per_camera_and_files_go_with_their_rows() {
    let r = rig(1 << 40).await;
    for h in [0, 24, 48, 72] {
        r.segment("a", h, MB).await;
        r.segment("b", h, MB).await;
    }
    // Four days later: camera a keeps 2 days, b the default 30.
    r.clock.advance_millis(4 * DAY);
    let rep = r.retention(30, &[("a", 2)], None, 0).pass().await.unwrap();
    assert_eq!(rep.deleted, 2);
    assert_eq!(r.kept("a").await, [48, 72]);
    assert_eq!(r.kept("b").await, [0, 24, 48, 72]);
    assert!(!r.dir.path().join("a/0.mp4").exists() && !r.dir.path().join("a/24.mp4").exists());
    assert!(
        r.dir.path().join("a/48.mp4").exists(),
        "a segment starting at the horizon stays"
    );
    assert_eq!(rep.fault, None);
}

#[tokio::test]
async fn the_size_cap_removes_the_oldest_first_across_cameras() {
    let r = rig(1 << 40).await;
    for h in 0..6 {
        r.segment(if h % 2 == 0 { "a" } else { "b" }, h, 10 * MB)
            .await;
    }
    // 60 MB indexed plus 15 MB an open file will still write, capped at 50 MB.
    r.in_flight.set("a", 15 * MB as u64);
    let rep = r
        .retention(30, &[], Some(50 * MB as u64), 0)
        .pass()
        .await
        .unwrap();
    assert_eq!(rep.deleted, 3);
    assert_eq!(r.kept("a").await, [4]);
    assert_eq!(r.kept("b").await, [3, 5]);
}

#[tokio::test]
async fn the_floor_holds_pins_are_spared_and_a_fault_is_raised_when_only_pins_are_left() {
    // 100 MB disk, 30 MB floor.
    let r = rig(100 * MB as u64).await;
    for h in 0..6 {
        r.segment("a", h, 10 * MB).await;
    }
    // Alarm footage in hour 1.
    let until = Timestamp::from_millis(T0 + 10 * DAY);
    let n = r
        .store
        .pin_segments(
            "a",
            Timestamp::from_millis(T0 + 3_600_000),
            Timestamp::from_millis(T0 + 7_200_000 - 1),
            until,
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    r.segment("b", 6, 10 * MB).await;
    // 70 MB used, 30 MB free; an open file will grow by 15 MB: 25 MB must go.
    r.in_flight.set("b", 15 * MB as u64);
    let ret = r.retention(30, &[], None, 30 * MB as u64);
    let rep = ret.pass().await.unwrap();
    assert_eq!(rep.fault, None);
    assert_eq!(rep.deleted, 2, "{rep:?}");
    assert_eq!(
        r.kept("a").await,
        [1, 3, 4, 5],
        "hour 0 and 2 went, the pinned hour 1 stayed"
    );
    assert!(r.disk.free_bytes(r.dir.path()).unwrap() >= 45 * MB as u64);

    // Everything unpinned goes before the floor gives up; then the fault is raised.
    r.in_flight.set("b", 80 * MB as u64);
    let rep = ret.pass().await.unwrap();
    assert_eq!(r.kept("a").await, [1]);
    assert_eq!(r.kept("b").await, Vec::<i64>::new());
    let fault = rep.fault.expect("a storage fault");
    assert!(fault.contains("pinned"), "{fault}");
    assert_eq!(r.status.fault(), Some(fault));
    // Once the pin expires and space is needed, the pinned footage may go too.
    r.clock.advance_millis(11 * DAY);
    let rep = ret.pass().await.unwrap();
    assert!(r.kept("a").await.is_empty());
    assert!(
        rep.fault.is_some(),
        "the in-flight reservation alone is still above the free space"
    );
    r.in_flight.set("b", 0);
    assert_eq!(ret.pass().await.unwrap().fault, None);
    assert_eq!(r.status.fault(), None);
}

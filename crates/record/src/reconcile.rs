//! Start-up reconciliation of disk and index (also `xueliang fsck`).
//!
//! After a crash the disk can hold a segment the index never heard of, possibly cut mid-fragment;
//! and the index can name files that are gone. Files win where they hold video: a cut file is
//! truncated to its last complete fragment and indexed. Rows whose files are gone are removed
//! and replaced by a gap, so the timeline says footage is missing instead of failing to play.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use xueliang_core::media::VIDEO_CLOCK_RATE;
use xueliang_core::{EntityId, Error, ErrorKind, ResultExt, Timestamp};
use xueliang_store::{Gap, Segment, Store};

use crate::layout::parse_segment_path;
use crate::mp4;
use crate::writer::sync_dir;

/// What reconciliation found (and, when repairing, fixed).
#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub segments_ok: usize,
    /// Files on disk the index did not know, now indexed.
    pub indexed: Vec<String>,
    /// Files cut mid-fragment: (path, bytes before, bytes after).
    pub truncated: Vec<(String, u64, u64)>,
    /// Files without a single complete fragment, removed.
    pub removed_empty: Vec<String>,
    /// Index rows whose file is gone, replaced by gaps.
    pub missing_files: Vec<String>,
    /// Files whose size differs from their index row.
    pub size_mismatch: Vec<(String, i64, u64)>,
    /// Files in the storage directory that are not segments.
    pub foreign_files: Vec<String>,
    /// Whether changes were made (`repair`) or only reported.
    pub repaired: bool,
}

impl ReconcileReport {
    pub fn is_clean(&self) -> bool {
        self.indexed.is_empty()
            && self.truncated.is_empty()
            && self.removed_empty.is_empty()
            && self.missing_files.is_empty()
            && self.size_mismatch.is_empty()
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// What scanning a file found, ready to become a row.
struct Recovered {
    complete_len: u64,
    file_len: u64,
    frames: i64,
    duration_ms: i64,
}

fn inspect(path: &Path) -> Result<Option<Recovered>, Error> {
    let mut f = std::fs::File::open(path).err_kind(ErrorKind::Unavailable, || {
        format!("open {}", path.display())
    })?;
    let idx = match mp4::scan(&mut f) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(path = %path.display(), err = %e, "unreadable segment file");
            return Ok(None);
        }
    };
    let (Some(first), Some(last)) = (idx.fragments.first(), idx.fragments.last()) else {
        return Ok(Some(Recovered {
            complete_len: idx.complete_len,
            file_len: idx.file_len,
            frames: 0,
            duration_ms: 0,
        }));
    };
    let ticks = last.base_dts + last.duration - first.base_dts;
    Ok(Some(Recovered {
        complete_len: idx.complete_len,
        file_len: idx.file_len,
        frames: idx.fragments.iter().map(|f| i64::from(f.frames)).sum(),
        duration_ms: ticks * 1000 / i64::from(VIDEO_CLOCK_RATE),
    }))
}

fn sha256_prefix(path: &Path, len: u64) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

/// Compares `storage_dir` with the index for `cameras`; with `repair`, fixes what it finds.
pub async fn reconcile(
    store: &dyn Store,
    storage_dir: &Path,
    cameras: &[String],
    node_id: &str,
    now: Timestamp,
    repair: bool,
) -> Result<ReconcileReport, Error> {
    let mut report = ReconcileReport {
        repaired: repair,
        ..Default::default()
    };
    let dir = storage_dir.to_owned();
    let files = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        walk(&dir, &mut v).map(|()| v)
    })
    .await
    .map_err(|e| Error::with_source(ErrorKind::Internal, "walk task", e))?
    .err_kind(ErrorKind::Unavailable, || {
        format!("cannot list {}", storage_dir.display())
    })?;

    let mut by_camera: HashMap<String, Vec<(PathBuf, crate::layout::ParsedName)>> = HashMap::new();
    for f in files {
        let rel = f.strip_prefix(storage_dir).unwrap_or(&f).to_owned();
        match parse_segment_path(&rel) {
            Some(p) => by_camera
                .entry(p.camera.clone())
                .or_default()
                .push((rel, p)),
            None => report.foreign_files.push(rel.display().to_string()),
        }
    }

    for camera in cameras {
        let rows = store
            .list_segments(
                camera,
                Timestamp::from_millis(i64::MIN / 2),
                Timestamp::from_millis(i64::MAX / 2),
            )
            .await?;
        let on_disk = by_camera.remove(camera).unwrap_or_default();
        let known: HashMap<&str, &Segment> = rows.iter().map(|r| (r.path.as_str(), r)).collect();
        for row in &rows {
            let full = storage_dir.join(&row.path);
            match std::fs::metadata(&full) {
                Ok(m) => {
                    if m.len() as i64 != row.bytes {
                        report
                            .size_mismatch
                            .push((row.path.clone(), row.bytes, m.len()));
                    } else {
                        report.segments_ok += 1;
                    }
                }
                Err(_) => {
                    report.missing_files.push(row.path.clone());
                    if repair {
                        tracing::error!(path = %row.path, "indexed recording file is missing; replacing its row by a gap");
                        store.delete_segment(row.id).await?;
                        store
                            .insert_gap(&Gap {
                                id: EntityId::new_at(row.start),
                                node_id: node_id.to_owned(),
                                camera_id: camera.clone(),
                                start: row.start,
                                end: Some(row.end),
                                reason: "recording file missing".into(),
                                created_at: now,
                            })
                            .await?;
                    }
                }
            }
        }
        for (rel, name) in on_disk {
            let rel_s = rel.to_string_lossy().into_owned();
            if known.contains_key(rel_s.as_str()) {
                continue;
            }
            let full = storage_dir.join(&rel);
            let full2 = full.clone();
            let found = tokio::task::spawn_blocking(move || inspect(&full2))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Internal, "scan task", e))??;
            let Some(rec) = found else { continue };
            if rec.frames == 0 {
                report.removed_empty.push(rel_s.clone());
                if repair {
                    tracing::warn!(path = %rel_s, "removing a recording file without a complete fragment");
                    std::fs::remove_file(&full)
                        .err_kind(ErrorKind::Unavailable, || format!("remove {rel_s}"))?;
                }
                continue;
            }
            if rec.complete_len < rec.file_len {
                report
                    .truncated
                    .push((rel_s.clone(), rec.file_len, rec.complete_len));
            }
            report.indexed.push(rel_s.clone());
            if !repair {
                continue;
            }
            if rec.complete_len < rec.file_len {
                tracing::warn!(path = %rel_s, from = rec.file_len, to = rec.complete_len, "truncating a segment cut short by a crash to its last complete fragment");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&full)
                    .err_kind(ErrorKind::Unavailable, || format!("open {rel_s}"))?;
                f.set_len(rec.complete_len)
                    .err_kind(ErrorKind::Unavailable, || format!("truncate {rel_s}"))?;
                f.sync_all()
                    .err_kind(ErrorKind::Unavailable, || format!("sync {rel_s}"))?;
                if let Some(d) = full.parent() {
                    sync_dir(d).err_kind(ErrorKind::Unavailable, || "sync directory".into())?;
                }
            }
            let full3 = full.clone();
            let len = rec.complete_len;
            let hash = tokio::task::spawn_blocking(move || sha256_prefix(&full3, len))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Internal, "hash task", e))?
                .err_kind(ErrorKind::Unavailable, || format!("hash {rel_s}"))?;
            let end = name.start.saturating_add_millis(rec.duration_ms);
            tracing::info!(path = %rel_s, frames = rec.frames, "indexed a recording file found on disk");
            store
                .insert_segment(&Segment {
                    id: name.id,
                    node_id: node_id.to_owned(),
                    camera_id: camera.clone(),
                    stream: "main".into(),
                    start: name.start,
                    end,
                    bytes: rec.complete_len as i64,
                    frames: rec.frames,
                    path: rel_s.clone(),
                    sha256: Some(hash),
                    pinned_until: None,
                    created_at: now,
                })
                .await?;
        }
    }
    for (camera, files) in by_camera {
        for (rel, _) in files {
            tracing::warn!(camera = %camera, path = %rel.display(), "recording of a camera no longer configured; left alone");
            report.foreign_files.push(rel.display().to_string());
        }
    }
    Ok(report)
}

/// Opens a gap per camera from the end of its last recording until recording resumes,
/// for the time the service was not running. Returns camera id → open gap id.
pub async fn open_downtime_gaps(
    store: &dyn Store,
    cameras: &[String],
    node_id: &str,
    now: Timestamp,
) -> Result<HashMap<String, EntityId>, Error> {
    let mut out = HashMap::new();
    for camera in cameras {
        let last = store
            .list_segments(
                camera,
                Timestamp::from_millis(now.as_millis() - 366 * 86_400_000),
                now,
            )
            .await?
            .into_iter()
            .map(|s| s.end)
            .max();
        let open_gaps = store
            .list_gaps(camera, now, Timestamp::from_millis(i64::MAX / 2))
            .await?;
        // A gap the previous run left open (the camera was offline when it stopped) simply
        // goes on until recording resumes.
        if let Some(g) = open_gaps.iter().find(|g| g.end.is_none()) {
            out.insert(camera.clone(), g.id);
            continue;
        }
        if let Some(start) = last {
            let id = EntityId::new_at(start);
            store
                .insert_gap(&Gap {
                    id,
                    node_id: node_id.to_owned(),
                    camera_id: camera.clone(),
                    start,
                    end: None,
                    reason: "service was not recording".into(),
                    created_at: now,
                })
                .await?;
            out.insert(camera.clone(), id);
        }
    }
    Ok(out)
}

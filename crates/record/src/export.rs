//! Export: one playable MP4 of a span, assembled from the index without transcoding.
//!
//! The result is the init segment of the first file followed by the fragments that cover the
//! span, starting at the key frame at or before `from`. Only each fragment's small `moof` is
//! rewritten (sequence number and decode time, so the timeline runs on across files and shows
//! gaps as gaps); sample data is streamed straight from the recording files.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use xueliang_core::media::VIDEO_CLOCK_RATE;
use xueliang_core::{Error, ErrorKind, ResultExt, Timestamp};
use xueliang_store::Segment;

use crate::mp4;

/// A piece of the export: bytes built in memory or a byte range of a recording file.
#[derive(Debug, Clone)]
pub enum Part {
    Memory(Bytes),
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Part {
    pub fn len(&self) -> u64 {
        match self {
            Part::Memory(b) => b.len() as u64,
            Part::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The export, ready to stream (whole or by byte range).
#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub parts: Vec<Part>,
    pub len: u64,
    /// Wall time of the first frame served (the key frame at or before `from`).
    pub start: Timestamp,
    pub end: Timestamp,
    pub frames: u64,
    pub fragments: usize,
}

fn ticks_to_ms(t: i64) -> i64 {
    t * 1000 / i64::from(VIDEO_CLOCK_RATE)
}

/// Builds the plan. Blocking (reads file headers): run it on a blocking thread.
pub fn plan(
    storage_dir: &Path,
    segments: &[Segment],
    from: Timestamp,
    to: Timestamp,
) -> Result<ExportPlan, Error> {
    if to <= from {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "`to` must be after `from`",
        ));
    }
    let mut segs: Vec<&Segment> = segments.iter().collect();
    segs.sort_by_key(|s| (s.start, s.id));

    struct Chosen {
        path: PathBuf,
        info: mp4::FragmentInfo,
        wall: Timestamp,
        file_index: usize,
    }
    let mut init: Option<Vec<u8>> = None;
    let mut chosen: Vec<Chosen> = Vec::new();
    for (file_index, seg) in segs.iter().enumerate() {
        let path = storage_dir.join(&seg.path);
        let mut f = std::fs::File::open(&path).err_kind(ErrorKind::DataLoss, || {
            format!("recording {} is indexed but cannot be opened", seg.path)
        })?;
        let idx = mp4::scan(&mut f).map_err(|e| {
            Error::with_source(
                ErrorKind::DataLoss,
                format!("recording {} is unreadable", seg.path),
                e,
            )
        })?;
        let Some(first) = idx.fragments.first() else {
            continue;
        };
        let first_dts = first.base_dts;
        let mut candidates: Vec<Chosen> = Vec::new();
        for info in &idx.fragments {
            let wall = seg
                .start
                .saturating_add_millis(ticks_to_ms(info.base_dts - first_dts));
            let wall_end = wall.saturating_add_millis(ticks_to_ms(info.duration));
            if wall_end <= from || wall >= to {
                if wall < from {
                    // Before the span: remembered in case the span starts mid-GOP.
                    candidates.push(Chosen {
                        path: path.clone(),
                        info: info.clone(),
                        wall,
                        file_index,
                    });
                }
                continue;
            }
            candidates.push(Chosen {
                path: path.clone(),
                info: info.clone(),
                wall,
                file_index,
            });
        }
        // Drop leading fragments before the last key fragment that starts at or before `from`.
        if chosen.is_empty() {
            let key_at = candidates
                .iter()
                .rposition(|c| c.wall <= from && c.info.starts_with_key);
            let lead = match key_at {
                Some(i) => i,
                None => candidates
                    .iter()
                    .position(|c| c.wall.saturating_add_millis(ticks_to_ms(c.info.duration)) > from)
                    .unwrap_or(candidates.len()),
            };
            candidates.drain(..lead);
            // A span starting mid-file without a key fragment in it must start at a key frame.
            while candidates.first().is_some_and(|c| !c.info.starts_with_key) {
                candidates.remove(0);
            }
        } else {
            candidates
                .retain(|c| c.wall.saturating_add_millis(ticks_to_ms(c.info.duration)) > from);
        }
        if candidates.is_empty() {
            continue;
        }
        let mut head = vec![0u8; idx.init_len as usize];
        f.seek(SeekFrom::Start(0))
            .err_kind(ErrorKind::DataLoss, || format!("read {}", seg.path))?;
        f.read_exact(&mut head)
            .err_kind(ErrorKind::DataLoss, || format!("read {}", seg.path))?;
        match &init {
            None => init = Some(head),
            Some(i) if *i != head => {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "the camera changed its stream settings at {}; export up to that time and from it separately",
                        seg.start
                    ),
                ));
            }
            Some(_) => {}
        }
        chosen.extend(candidates);
    }
    let Some(init) = init else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no recording between {from} and {to}"),
        ));
    };
    let t0 = chosen[0].wall;
    let mut parts = vec![Part::Memory(Bytes::from(init))];
    let mut next_free: i64 = 0;
    let mut prev: Option<(usize, i64, i64)> = None; // (file, original dts, new dts)
    let mut frames = 0u64;
    let mut end = t0;
    for (seq, c) in chosen.iter().enumerate() {
        let new_dts = match prev {
            Some((file, odts, ndts)) if file == c.file_index => ndts + (c.info.base_dts - odts),
            _ => ((c.wall.as_millis() - t0.as_millis()) * i64::from(VIDEO_CLOCK_RATE) / 1000)
                .max(next_free),
        };
        prev = Some((c.file_index, c.info.base_dts, new_dts));
        next_free = new_dts + c.info.duration;
        let mut f = std::fs::File::open(&c.path)
            .err_kind(ErrorKind::DataLoss, || format!("open {}", c.path.display()))?;
        let mut moof = vec![0u8; c.info.moof_len as usize];
        f.seek(SeekFrom::Start(c.info.offset))
            .err_kind(ErrorKind::DataLoss, || "seek".into())?;
        f.read_exact(&mut moof)
            .err_kind(ErrorKind::DataLoss, || format!("read {}", c.path.display()))?;
        mp4::rewrite_moof(&mut moof, seq as u32 + 1, new_dts).map_err(|e| {
            Error::with_source(
                ErrorKind::DataLoss,
                format!("fragment in {}", c.path.display()),
                e,
            )
        })?;
        parts.push(Part::Memory(Bytes::from(moof)));
        parts.push(Part::File {
            path: c.path.clone(),
            offset: c.info.offset + u64::from(c.info.moof_len),
            len: c.info.len - u64::from(c.info.moof_len),
        });
        frames += u64::from(c.info.frames);
        end = c.wall.saturating_add_millis(ticks_to_ms(c.info.duration));
    }
    let len = parts.iter().map(Part::len).sum();
    Ok(ExportPlan {
        parts,
        len,
        start: t0,
        end,
        frames,
        fragments: chosen.len(),
    })
}

impl ExportPlan {
    /// Streams bytes `range` of the export in chunks of at most 256 KiB.
    pub fn stream(
        &self,
        range: Range<u64>,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let mut pieces: Vec<(Part, u64, u64)> = Vec::new(); // part, start within part, len
        let mut pos = 0u64;
        for p in &self.parts {
            let (a, b) = (pos, pos + p.len());
            pos = b;
            let s = range.start.max(a);
            let e = range.end.min(b);
            if s < e {
                pieces.push((p.clone(), s - a, e - s));
            }
        }
        futures::stream::unfold((pieces, 0usize, 0u64), |(pieces, i, done)| async move {
            const CHUNK: u64 = 256 * 1024;
            let (part, start, len) = pieces.get(i)?.clone();
            let take = (len - done).min(CHUNK);
            let item = match &part {
                Part::Memory(b) => {
                    Ok(b.slice((start + done) as usize..(start + done + take) as usize))
                }
                Part::File { path, offset, .. } => read_at(path, offset + start + done, take).await,
            };
            let failed = item.is_err();
            let (ni, nd) = if done + take >= len {
                (i + 1, 0)
            } else {
                (i, done + take)
            };
            let next = if failed {
                (Vec::new(), 0, 0)
            } else {
                (pieces, ni, nd)
            };
            Some((item, next))
        })
    }
}

async fn read_at(path: &Path, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

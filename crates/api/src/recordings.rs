//! `GET /api/v1/cameras/{id}/recordings` and `/export.mp4`: the index, and playable spans of it.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use xueliang_core::{ErrorKind, Timestamp};

use crate::{ApiError, AppState, Principal};

/// Longest span one recordings query may cover.
const MAX_LIST_DAYS: i64 = 366;
/// Longest span one export may cover.
const MAX_EXPORT_HOURS: i64 = 24;

pub(crate) fn check_camera(st: &AppState, who: &Principal, id: &str) -> Result<(), ApiError> {
    if !st.config.cameras.iter().any(|c| c.id == id) {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no camera {id:?}"),
        ));
    }
    if !who.cameras.allows(id) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("{} may not see camera {id:?}", who.actor),
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct RecordingView {
    id: String,
    start: Timestamp,
    end: Timestamp,
    stream: String,
    bytes: i64,
    frames: i64,
    pinned_until: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
struct GapView {
    start: Timestamp,
    end: Option<Timestamp>,
    reason: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct RecordingsView {
    camera: String,
    from: Timestamp,
    to: Timestamp,
    /// Back-to-back recording merged: what a timeline draws. Whole runs, possibly reaching
    /// past `from` and `to`.
    runs: Vec<xueliang_store::RecordingRun>,
    /// Every segment, when `detail=segments` or the span is at most a day.
    detail: &'static str,
    recordings: Vec<RecordingView>,
    gaps: Vec<GapView>,
}

/// `from` and `to` of a listing: the last day by default, at most [`MAX_LIST_DAYS`].
fn span(st: &AppState, q: &HashMap<String, String>) -> Result<(Timestamp, Timestamp), ApiError> {
    let to = crate::params::time(q, "to")?.unwrap_or_else(|| st.clock.now());
    let from = crate::params::time(q, "from")?
        .unwrap_or(Timestamp::from_millis(to.as_millis() - 86_400_000));
    if to <= from {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            "`to` must be after `from`",
        ));
    }
    if to.as_millis() - from.as_millis() > MAX_LIST_DAYS * 86_400_000 {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("a query may cover at most {MAX_LIST_DAYS} days"),
        ));
    }
    Ok((from, to))
}

/// Spans up to this long list their segments unless asked not to.
const SEGMENT_DETAIL_MS: i64 = 86_400_000;

pub(crate) async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<RecordingsView>, ApiError> {
    check_camera(&st, &who, &id)?;
    let (from, to) = span(&st, &q)?;
    let detail = match q.get("detail").map(String::as_str) {
        Some("segments") => true,
        Some("runs") => false,
        None => to.as_millis() - from.as_millis() <= SEGMENT_DETAIL_MS,
        Some(other) => {
            return Err(ApiError::new(
                ErrorKind::InvalidArgument,
                format!("query parameter `detail`: {other:?} is not one of runs, segments"),
            ));
        }
    };
    let runs = st.store.recording_runs(&id, from, to).await?;
    let segs = if detail {
        st.store.list_segments(&id, from, to).await?
    } else {
        Vec::new()
    };
    let gaps = st.store.list_gaps(&id, from, to).await?;
    Ok(Json(RecordingsView {
        camera: id,
        from,
        to,
        runs,
        detail: if detail { "segments" } else { "runs" },
        recordings: segs
            .into_iter()
            .map(|s| RecordingView {
                id: s.id.to_string(),
                start: s.start,
                end: s.end,
                stream: s.stream,
                bytes: s.bytes,
                frames: s.frames,
                pinned_until: s.pinned_until,
            })
            .collect(),
        gaps: gaps
            .into_iter()
            .map(|g| GapView {
                start: g.start,
                end: g.end,
                reason: g.reason,
            })
            .collect(),
    }))
}

/// Parses a single `bytes=` range against `len`. `Ok(None)`: serve the whole body.
/// One motion event as the API shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct MotionView {
    id: xueliang_core::EntityId,
    zone: String,
    start: Timestamp,
    end: Option<Timestamp>,
    score: f64,
    boxes: serde_json::Value,
}

/// `GET /api/v1/cameras/{id}/motion?from=T&to=T`: motion events overlapping the span (default:
/// the last day), oldest first.
pub(crate) async fn motion(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<MotionView>>, ApiError> {
    check_camera(&st, &who, &id)?;
    let (from, to) = span(&st, &q)?;
    let rows = st.store.list_motion(&id, from, to, 10_000).await?;
    Ok(Json(
        rows.into_iter()
            .map(|m| MotionView {
                boxes: serde_json::from_str(&m.boxes).unwrap_or(serde_json::Value::Null),
                id: m.id,
                zone: m.zone,
                start: m.start,
                end: m.end,
                score: m.score,
            })
            .collect(),
    ))
}

fn parse_range(h: Option<&HeaderValue>, len: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multipart ranges are rarely used by players; the whole body is a valid answer.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let range = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            len.saturating_sub(n)..len
        }
        (s, "") => s.parse::<u64>().map_err(|_| ())?..len,
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            if e < s {
                return Err(());
            }
            s..(e + 1).min(len)
        }
    };
    if range.start >= len || range.start >= range.end {
        return Err(());
    }
    Ok(Some(range))
}

pub(crate) async fn export(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    who.require(xueliang_core::config::Role::Operator, "export recordings")?;
    check_camera(&st, &who, &id)?;
    let missing = |n: &str| {
        ApiError::new(
            ErrorKind::InvalidArgument,
            format!("query parameter `{n}` is required"),
        )
    };
    let from = crate::params::time(&q, "from")?.ok_or_else(|| missing("from"))?;
    let to = crate::params::time(&q, "to")?.ok_or_else(|| missing("to"))?;
    if to <= from {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            "`to` must be after `from`",
        ));
    }
    if to.as_millis() - from.as_millis() > MAX_EXPORT_HOURS * 3_600_000 {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("an export may cover at most {MAX_EXPORT_HOURS} hours"),
        ));
    }
    // Include the segment holding the key frame before `from`.
    let lookback = Timestamp::from_millis(from.as_millis() - 10 * 60_000);
    let segs = st.store.list_segments(&id, lookback, to).await?;
    let dir = st.storage_dir.clone();
    let plan =
        tokio::task::spawn_blocking(move || xueliang_record::export::plan(&dir, &segs, from, to))
            .await
            .map_err(|e| {
                ApiError(xueliang_core::Error::with_source(
                    ErrorKind::Internal,
                    "export task",
                    e,
                ))
            })??;
    let len = plan.len;
    let range = match parse_range(headers.get(header::RANGE), len) {
        Ok(r) => r,
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                crate::error::body(
                    ErrorKind::InvalidArgument,
                    "the Range header is not satisfiable",
                ),
            )
                .into_response());
        }
    };
    tracing::info!(camera = %id, actor = %who.actor, from = %from, to = %to, bytes = len, frames = plan.frames, ranged = range.is_some(), "export");
    let (status, r) = match range.clone() {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r),
        None => (StatusCode::OK, 0..len),
    };
    let filename = format!(
        "{id}_{}.mp4",
        plan.start.to_datetime().format("%Y%m%dT%H%M%SZ")
    );
    let mut res = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "video/mp4")
        .header(header::CONTENT_LENGTH, r.end - r.start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        )
        .header("x-xueliang-export-start", plan.start.to_rfc3339())
        .header("x-xueliang-export-end", plan.end.to_rfc3339());
    if range.is_some() {
        res = res.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{len}", r.start, r.end - 1),
        );
    }
    // Who took which footage is evidence too: the row names the span and the SHA-256 of the
    // bytes served, so it is written when the body ends. Range requests of one download are
    // recorded once, at their first byte.
    let body = if range.as_ref().is_none_or(|r| r.start == 0) {
        let now = st.clock.now();
        let audit = ExportAudit {
            store: st.store.clone(),
            entry: xueliang_store::AuditEntry {
                id: xueliang_core::EntityId::new_at(now),
                node_id: st.config.node.id.clone(),
                at: now,
                actor: who.actor.clone(),
                actor_kind: who.kind,
                action: "export".into(),
                target: Some(format!("camera:{id}")),
                detail: String::new(),
                remote_addr: who.remote_addr.clone(),
            },
            detail: serde_json::json!({
                "from": from, "to": to, "served_from": plan.start, "served_to": plan.end,
                "length": len, "frames": plan.frames, "range": [r.start, r.end],
            }),
            hasher: Sha256::new(),
            bytes: 0,
            done: false,
        };
        Body::from_stream(audited(plan.stream(r.clone()), audit))
    } else {
        Body::from_stream(plan.stream(r.clone()))
    };
    res.body(body).map_err(|e| {
        ApiError(xueliang_core::Error::with_source(
            ErrorKind::Internal,
            "build response",
            e,
        ))
    })
}

/// The audit row of one export, finished when its body has been served (or abandoned).
struct ExportAudit {
    store: std::sync::Arc<dyn xueliang_store::Store>,
    entry: xueliang_store::AuditEntry,
    detail: serde_json::Value,
    hasher: Sha256,
    bytes: u64,
    done: bool,
}

impl ExportAudit {
    fn finish(&mut self, complete: bool) -> xueliang_store::AuditEntry {
        self.done = true;
        let digest = std::mem::take(&mut self.hasher).finalize();
        let mut detail = std::mem::take(&mut self.detail);
        detail["sha256"] = hex::encode(digest).into();
        detail["bytes"] = self.bytes.into();
        detail["complete"] = complete.into();
        let mut entry = self.entry.clone();
        entry.detail = detail.to_string();
        entry
    }
}

impl Drop for ExportAudit {
    /// A client that went away mid-download still took what it got.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let entry = self.finish(false);
        let store = self.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.append_audit(&entry).await {
                    tracing::error!(err = %e.chain(), "cannot record an interrupted export in the audit log");
                }
            });
        }
    }
}

/// Passes the export's bytes through, hashing them; the audit row is committed before the
/// body's end is reported, so a finished download is always on record.
fn audited<S>(
    inner: S,
    audit: ExportAudit,
) -> impl futures::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + 'static
where
    S: futures::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + 'static,
{
    use futures::StreamExt;
    futures::stream::unfold(
        (Box::pin(inner), audit),
        |(mut inner, mut audit)| async move {
            match inner.next().await {
                Some(Ok(chunk)) => {
                    audit.hasher.update(&chunk);
                    audit.bytes += chunk.len() as u64;
                    Some((Ok(chunk), (inner, audit)))
                }
                Some(Err(e)) => {
                    let entry = audit.finish(false);
                    if let Err(ae) = audit.store.append_audit(&entry).await {
                        tracing::error!(err = %ae.chain(), "cannot record a failed export in the audit log");
                    }
                    Some((Err(e), (inner, audit)))
                }
                None if audit.done => None,
                None => {
                    let entry = audit.finish(true);
                    match audit.store.append_audit(&entry).await {
                        Ok(()) => None,
                        Err(e) => {
                            tracing::error!(err = %e.chain(), "cannot record an export in the audit log");
                            Some((
                                Err(std::io::Error::other("export could not be recorded")),
                                (inner, audit),
                            ))
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use axum::http::HeaderValue;

    fn r(s: &str, len: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
        parse_range(Some(&HeaderValue::from_str(s).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(r("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(r("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(r("bytes=-10", 100), Ok(Some(90..100)));
        assert_eq!(r("bytes=50-500", 100), Ok(Some(50..100)));
        assert_eq!(r("bytes=100-", 100), Err(()));
        assert_eq!(r("bytes=9-3", 100), Err(()));
        assert_eq!(r("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(r("items=0-1", 100), Ok(None));
    }
}

//! `GET /api/v1/cameras` and `/cameras/{id}`: configured cameras with their stored state.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use xueliang_core::config::CameraConfig;
use xueliang_core::health::{StreamHealth, StreamKind};
use xueliang_core::model::CameraState;
use xueliang_core::{ErrorKind, Timestamp};
use xueliang_store::CameraRecord;

use crate::{ApiError, AppState, Principal};

/// A camera as operators see it. URLs carry no credentials (configuration refuses them).
#[derive(Debug, Serialize)]
pub struct CameraView {
    pub id: String,
    pub name: Option<String>,
    pub enabled: bool,
    pub record: bool,
    pub motion: bool,
    pub url: String,
    pub sub_url: Option<String>,
    pub state: CameraState,
    pub last_error: Option<String>,
    pub state_since: Option<Timestamp>,
    pub last_frame: Option<Timestamp>,
    pub fps: Option<f64>,
    pub bitrate_bps: Option<u64>,
    pub codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub reconnects: u64,
    /// The sub stream's health, when one is configured.
    pub sub: Option<StreamHealth>,
}

fn view(
    c: &CameraConfig,
    rec: Option<&CameraRecord>,
    live: Option<StreamHealth>,
    sub: Option<StreamHealth>,
) -> CameraView {
    // The live board is fresher than the store; the store covers the time before ingest ran.
    let (state, last_error, since) = match &live {
        _ if !c.enabled => (
            CameraState::Offline,
            Some("disabled in the configuration".to_owned()),
            None,
        ),
        Some(h) => (h.state, h.last_error.clone(), Some(h.since)),
        None => (
            rec.map_or(CameraState::Connecting, |r| r.state),
            rec.and_then(|r| r.last_error.clone()),
            rec.map(|r| r.state_since),
        ),
    };
    let live = live.as_ref();
    CameraView {
        state,
        last_error,
        state_since: since,
        last_frame: live.and_then(|h| h.last_frame),
        fps: live.and_then(|h| h.fps),
        bitrate_bps: live.and_then(|h| h.bitrate_bps),
        codec: live.and_then(|h| h.codec.clone()),
        width: live.and_then(|h| h.width),
        height: live.and_then(|h| h.height),
        reconnects: live.map_or(0, |h| h.reconnects),
        sub: sub.or_else(|| {
            c.sub_url
                .as_ref()
                .map(|_| StreamHealth::connecting(since.unwrap_or(Timestamp::from_millis(0))))
        }),
        id: c.id.clone(),
        name: c.name.clone(),
        enabled: c.enabled,
        record: c.record,
        motion: c.motion.enabled,
        url: c.url.clone(),
        sub_url: c.sub_url.clone(),
    }
}

pub(crate) async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<CameraView>>, ApiError> {
    let stored = st.store.list_cameras().await?;
    let out = st
        .config
        .cameras
        .iter()
        .filter(|c| who.cameras.allows(&c.id))
        .map(|c| {
            view(
                c,
                stored.iter().find(|r| r.id == c.id),
                st.health.get(&c.id, StreamKind::Main),
                st.health.get(&c.id, StreamKind::Sub),
            )
        })
        .collect();
    Ok(Json(out))
}

pub(crate) async fn get_one(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<CameraView>, ApiError> {
    let cfg = st
        .config
        .cameras
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no camera {id:?}")))?;
    if !who.cameras.allows(&id) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("{} may not see camera {id:?}", who.actor),
        ));
    }
    let rec = st.store.get_camera(&id).await?;
    Ok(Json(view(
        cfg,
        rec.as_ref(),
        st.health.get(&id, StreamKind::Main),
        st.health.get(&id, StreamKind::Sub),
    )))
}

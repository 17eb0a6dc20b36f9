//! `GET /api/v1/cameras` and `/cameras/{id}`: configured cameras with their stored state.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use xueliang_core::config::CameraConfig;
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
}

fn view(c: &CameraConfig, rec: Option<&CameraRecord>) -> CameraView {
    CameraView {
        id: c.id.clone(),
        name: c.name.clone(),
        enabled: c.enabled,
        record: c.record,
        motion: c.motion.enabled,
        url: c.url.clone(),
        sub_url: c.sub_url.clone(),
        state: rec.map_or(CameraState::Connecting, |r| r.state),
        last_error: rec.and_then(|r| r.last_error.clone()),
        state_since: rec.map(|r| r.state_since),
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
        .map(|c| view(c, stored.iter().find(|r| r.id == c.id)))
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
    Ok(Json(view(cfg, rec.as_ref())))
}

//! `/api/v1/alarms` and `/api/v1/devices`: incidents for the duty desk, and the buttons.
//!
//! Reads come from the store. Actions go to the alarm engine through [`AlarmDesk`], which
//! checks the workflow and commits; the handler then returns the stored incident.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use xueliang_core::config::Role;
use xueliang_core::model::{IncidentState, Outcome};
use xueliang_core::{EntityId, Error, ErrorKind, Timestamp};
use xueliang_store::{DeviceRecord, Incident, IncidentChange, IncidentFilter, Signal};

use crate::{ApiError, AppState, Principal};

/// An operator's step in an incident's workflow.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeskAction {
    Acknowledge,
    Dispatch,
    Resolve(Outcome),
}

/// Whatever runs the alarm engine on this node.
#[async_trait::async_trait]
pub trait AlarmDesk: Send + Sync + std::fmt::Debug {
    /// Applies the action or says why not (`NotFound`, `FailedPrecondition` with the reason).
    async fn act(
        &self,
        incident: EntityId,
        action: DeskAction,
        actor: String,
        note: Option<String>,
    ) -> Result<(), Error>;
}

fn parse_id(id: &str) -> Result<EntityId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            ErrorKind::InvalidArgument,
            format!("{id:?} is not an alarm id"),
        )
    })
}

/// Device-sourced incidents are visible to tokens scoped to the device (or all devices).
fn visible(who: &Principal, i: &Incident) -> bool {
    source_visible(who, &i.kind, &i.source_id)
}

/// Whether the caller's scope covers an incident's source: a camera for camera incidents
/// (faults, motion), a device for everything a device raised.
pub(crate) fn source_visible(who: &Principal, kind: &str, source: &str) -> bool {
    match kind {
        "camera_offline" | "motion" => who.cameras.allows(source),
        _ => who.devices.allows(source),
    }
}

/// The stored incident, or 404 / 403 (the caller may `verb` it only within its scope).
async fn load_visible(
    st: &AppState,
    who: &Principal,
    id: EntityId,
    verb: &str,
) -> Result<Incident, ApiError> {
    let incident = st
        .store
        .get_incident(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no alarm {id}")))?;
    if !visible(who, &incident) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("{} may not {verb} alarm {id}", who.actor),
        ));
    }
    Ok(incident)
}

pub(crate) async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Incident>>, ApiError> {
    let state = q
        .get("state")
        .map(|s| {
            if s == "open" {
                Ok(None)
            } else {
                s.parse::<IncidentState>().map(Some).map_err(|e| {
                    ApiError::new(
                        ErrorKind::InvalidArgument,
                        format!("query parameter `state`: {}", e.message()),
                    )
                })
            }
        })
        .transpose()?;
    let since = crate::params::time(&q, "since")?;
    let limit = crate::params::limit(&q, 500)?;
    let priority = q
        .get("priority")
        .map(|p| {
            p.parse::<i64>()
                .ok()
                .filter(|p| (1..=10).contains(p))
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::InvalidArgument,
                        format!("query parameter `priority`: {p:?} is not a priority (1 to 10)"),
                    )
                })
        })
        .transpose()?;
    let filter = IncidentFilter {
        state: state.flatten(),
        open_only: q.get("state").is_some_and(|s| s == "open"),
        since,
        priority,
        device: q.get("device").cloned(),
        camera: q.get("camera").cloned(),
        limit,
    };
    let list = st.store.list_incidents(&filter).await?;
    Ok(Json(
        list.into_iter().filter(|i| visible(&who, i)).collect(),
    ))
}

#[derive(Debug, Serialize)]
pub(crate) struct Clip {
    camera: String,
    from: Timestamp,
    to: Timestamp,
    export_url: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct AlarmDetail {
    #[serde(flatten)]
    incident: Incident,
    signals: Vec<Signal>,
    history: Vec<IncidentChange>,
    clips: Vec<Clip>,
}

pub(crate) async fn get_one(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<AlarmDetail>, ApiError> {
    let id = parse_id(&id)?;
    let incident = load_visible(&st, &who, id, "see").await?;
    let signals = st.store.incident_signals(id).await?;
    let history = st.store.incident_changes(id).await?;
    // Footage the engine attached (it widens while the incident is open).
    let clips = st
        .store
        .incident_clips(id)
        .await?
        .into_iter()
        .filter(|c| who.cameras.allows(&c.camera_id))
        .map(|c| Clip {
            export_url: format!(
                "/api/v1/cameras/{}/export.mp4?from={}&to={}",
                c.camera_id,
                c.from.to_rfc3339(),
                c.to.to_rfc3339()
            ),
            camera: c.camera_id,
            from: c.from,
            to: c.to,
        })
        .collect();
    Ok(Json(AlarmDetail {
        incident,
        signals,
        history,
        clips,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActBody {
    note: Option<String>,
    outcome: Option<String>,
}

pub(crate) async fn act(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Incident>, ApiError> {
    let id = parse_id(&id)?;
    if who.role == Role::Viewer {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("{} is a viewer and may not act on alarms", who.actor),
        ));
    }
    let body: ActBody = if body.is_empty() {
        ActBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("request body: {e}; expected {{\"note\": \"...\", \"outcome\": \"genuine|false|test|malicious|duplicate\"}}")))?
    };
    let action = match action.as_str() {
        "ack" => DeskAction::Acknowledge,
        "dispatch" => DeskAction::Dispatch,
        "resolve" => {
            let o = body.outcome.as_deref().ok_or_else(|| {
                ApiError::new(
                    ErrorKind::InvalidArgument,
                    "resolve needs an `outcome`: genuine, false, test, malicious or duplicate",
                )
            })?;
            DeskAction::Resolve(o.parse::<Outcome>().map_err(|e| {
                ApiError::new(
                    ErrorKind::InvalidArgument,
                    format!("`outcome`: {}", e.message()),
                )
            })?)
        }
        other => {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no alarm action {other:?}; use ack, dispatch or resolve"),
            ));
        }
    };
    load_visible(&st, &who, id, "act on").await?;
    let desk: &Arc<dyn AlarmDesk> = st.desk.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unavailable,
            "this node runs no alarm engine (mqtt is not connected)",
        )
    })?;
    let verb = match action {
        DeskAction::Acknowledge => "alarm.ack",
        DeskAction::Dispatch => "alarm.dispatch",
        DeskAction::Resolve(_) => "alarm.resolve",
    };
    let outcome = body.outcome.clone();
    let note = body.note.clone();
    desk.act(id, action, who.actor.clone(), body.note).await?;
    crate::audit::record(
        &st,
        who.actor.clone(),
        who.kind,
        verb,
        Some(format!("alarm:{id}")),
        serde_json::json!({ "outcome": outcome, "note": note }),
        who.remote_addr.clone(),
    )
    .await?;
    let after = st
        .store
        .get_incident(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, format!("alarm {id} vanished")))?;
    Ok(Json(after))
}

pub(crate) async fn devices(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<DeviceRecord>>, ApiError> {
    let list = st.store.list_devices().await?;
    Ok(Json(
        list.into_iter()
            .filter(|d| who.devices.allows(&d.id))
            .collect(),
    ))
}

//! The audit log's HTTP side: writing rows for what callers do, and `GET /api/v1/audit`
//! (admins only) as JSON or CSV.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use xueliang_core::config::Role;
use xueliang_core::{EntityId, ErrorKind, Timestamp};
use xueliang_store::{ActorKind, AuditEntry};

use crate::{ApiError, AppState, Principal};

/// Appends one row; the caller fails if it cannot be written (no unrecorded evidence).
pub(crate) async fn record(
    st: &AppState,
    actor: String,
    actor_kind: ActorKind,
    action: &str,
    target: Option<String>,
    detail: serde_json::Value,
    remote_addr: Option<String>,
) -> Result<(), ApiError> {
    let now = st.clock.now();
    st.store
        .append_audit(&AuditEntry {
            id: EntityId::new_at(now),
            node_id: st.config.node.id.clone(),
            at: now,
            actor,
            actor_kind,
            action: action.into(),
            target,
            detail: detail.to_string(),
            remote_addr,
        })
        .await?;
    Ok(())
}

/// A row as the API shows it: `detail` as the JSON object it is.
#[derive(Debug, Serialize)]
struct AuditView {
    id: EntityId,
    at: Timestamp,
    node_id: String,
    actor: String,
    actor_kind: ActorKind,
    action: String,
    target: Option<String>,
    remote_addr: Option<String>,
    detail: serde_json::Value,
}

const CSV_HEADER: &str = "id,at,node_id,actor,actor_kind,action,target,remote_addr,detail\r\n";

/// One CSV field (RFC 4180). Text that a spreadsheet would run as a formula gets a leading
/// apostrophe, so an exported log cannot carry a formula into an auditor's spreadsheet.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv_row(e: &AuditEntry) -> String {
    let fields = [
        e.id.to_string(),
        e.at.to_rfc3339(),
        e.node_id.clone(),
        e.actor.clone(),
        e.actor_kind.as_str().to_owned(),
        e.action.clone(),
        e.target.clone().unwrap_or_default(),
        e.remote_addr.clone().unwrap_or_default(),
        e.detail.clone(),
    ];
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// `GET /api/v1/audit?since=T&limit=N[&format=csv]`: oldest first from `since` (default: a
/// day ago), at most `limit` rows (default 1000, up to 10000).
pub(crate) async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    who.require(Role::Admin, "read the audit log")?;
    let since = crate::params::time(&q, "since")?
        .unwrap_or_else(|| Timestamp::from_millis(st.clock.now().as_millis() - 86_400_000));
    let limit = crate::params::limit(&q, 1000)?;
    let rows = st.store.list_audit(since, limit).await?;
    match q.get("format").map(String::as_str) {
        None | Some("json") => Ok(axum::Json(
            rows.into_iter()
                .map(|e| AuditView {
                    detail: serde_json::from_str(&e.detail)
                        .unwrap_or(serde_json::Value::String(e.detail.clone())),
                    id: e.id,
                    at: e.at,
                    node_id: e.node_id,
                    actor: e.actor,
                    actor_kind: e.actor_kind,
                    action: e.action,
                    target: e.target,
                    remote_addr: e.remote_addr,
                })
                .collect::<Vec<_>>(),
        )
        .into_response()),
        Some("csv") => {
            let mut out = String::from(CSV_HEADER);
            for e in &rows {
                out.push_str(&csv_row(e));
            }
            let name = format!(
                "attachment; filename=\"audit_{}_{}.csv\"",
                st.config.node.id,
                since.to_datetime().format("%Y%m%dT%H%M%SZ")
            );
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (header::CONTENT_DISPOSITION, name),
                ],
                out,
            )
                .into_response())
        }
        Some(other) => Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("query parameter `format`: {other:?} is not one of json, csv"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("-1,2"), "\"'-1,2\"");
    }
}

//! `GET /api/v1/users`: the console users, for admins. Users are added and changed with
//! `xueliang user ...` on the node, which writes the audit log.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use xueliang_core::config::Role;
use xueliang_store::UserRecord;

use crate::{ApiError, AppState, Principal};

/// Every user, by name; password hashes are never serialised.
pub(crate) async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<UserRecord>>, ApiError> {
    who.require(Role::Admin, "list users")?;
    Ok(Json(st.store.list_users().await?))
}

//! Who is calling: bearer tokens (kept only as SHA-256 digests, compared in constant time) or
//! console sessions (cookie plus CSRF token), scoped by role and by camera and device lists.

use std::collections::HashSet;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use xueliang_core::ErrorKind;
use xueliang_core::config::{Role, TokenConfig};
use xueliang_store::ActorKind;

use crate::sessions::SessionCtx;
use crate::{ApiError, AppState};

/// Which ids a principal may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Only(HashSet<String>),
}

impl Scope {
    fn from_list(list: &[String]) -> Self {
        if list.iter().any(|c| c == "*") {
            Scope::All
        } else {
            Scope::Only(list.iter().cloned().collect())
        }
    }

    pub fn allows(&self, id: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(s) => s.contains(id),
        }
    }
}

/// Who is calling; the auth middleware attaches it to every `/api/v1` request.
#[derive(Clone, Debug)]
pub struct Principal {
    /// `token:NAME` or `user:NAME`.
    pub actor: String,
    pub kind: ActorKind,
    pub role: Role,
    pub cameras: Scope,
    pub devices: Scope,
    /// The scopes as configured, for `/me`.
    pub cameras_list: Vec<String>,
    pub devices_list: Vec<String>,
    /// Set for console sessions, `None` for bearer tokens.
    pub session: Option<SessionCtx>,
    pub remote_addr: Option<String>,
}

impl Principal {
    pub fn new(
        actor: String,
        kind: ActorKind,
        role: Role,
        cameras: &[String],
        devices: &[String],
    ) -> Self {
        Principal {
            actor,
            kind,
            role,
            cameras: Scope::from_list(cameras),
            devices: Scope::from_list(devices),
            cameras_list: cameras.to_vec(),
            devices_list: devices.to_vec(),
            session: None,
            remote_addr: None,
        }
    }

    pub fn with_session(mut self, s: SessionCtx) -> Self {
        self.session = Some(s);
        self
    }

    pub fn with_remote(mut self, addr: Option<String>) -> Self {
        self.remote_addr = addr;
        self
    }

    /// 403 unless the caller's role is at least `min` (viewer < duty < operator < admin).
    pub fn require(&self, min: Role, what: &str) -> Result<(), ApiError> {
        if self.role >= min {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{} is a {} and may not {what}; that needs {} or above",
                    self.actor,
                    self.role.as_str(),
                    min.as_str()
                ),
            ))
        }
    }
}

#[derive(Debug)]
struct Entry {
    name: String,
    digest: [u8; 32],
    role: Role,
    cameras: Vec<String>,
    devices: Vec<String>,
}

/// The configured tokens, digested at start so the plain text need not stay in memory here.
#[derive(Debug, Default)]
pub struct TokenSet(Vec<Entry>);

impl TokenSet {
    pub fn from_config(tokens: &[TokenConfig]) -> Self {
        TokenSet(
            tokens
                .iter()
                .filter_map(|t| {
                    let secret = t.token.as_ref()?;
                    Some(Entry {
                        name: t.name.clone(),
                        digest: Sha256::digest(secret.expose().as_bytes()).into(),
                        role: t.role,
                        cameras: t.cameras.clone(),
                        devices: t.devices.clone(),
                    })
                })
                .collect(),
        )
    }

    /// Finds the token's principal. Every configured digest is compared, in constant time, so
    /// timing tells nothing about how close a guess was or which token matched.
    pub fn verify(&self, presented: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found: Option<&Entry> = None;
        for e in &self.0 {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        found.map(|e| {
            Principal::new(
                format!("token:{}", e.name),
                ActorKind::Token,
                e.role,
                &e.cameras,
                &e.devices,
            )
        })
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Attaches the caller's [`Principal`] or answers 401: a bearer token when an `Authorization`
/// header is sent, else the session cookie. Cookie requests that change state must carry the
/// session's CSRF token in `X-CSRF-Token` (403 otherwise); tokens are not sent by browsers on
/// their own, so they need none.
pub(crate) async fn require_token(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let remote = crate::sessions::remote_of(req.extensions());
    let principal = match req.headers().get(axum::http::header::AUTHORIZATION) {
        Some(header) => bearer(&st, header, req.uri().path())?.with_remote(remote),
        None => {
            let Some(cookie) = crate::sessions::session_cookie(req.headers()) else {
                return Err(ApiError::new(
                    ErrorKind::Unauthenticated,
                    "missing Authorization header; send Authorization: Bearer TOKEN or log in",
                ));
            };
            let p = crate::sessions::principal_of_cookie(&st, cookie, remote).await?;
            if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
                let sent = req
                    .headers()
                    .get(crate::sessions::CSRF_HEADER)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                let want = p
                    .session
                    .as_ref()
                    .map(|s| s.csrf.as_bytes())
                    .unwrap_or_default();
                if want.is_empty() || !bool::from(sent.ct_eq(want)) {
                    tracing::info!(actor = %p.actor, path = %req.uri().path(), "refused a state change without a valid CSRF token");
                    return Err(ApiError::new(
                        ErrorKind::PermissionDenied,
                        "missing or wrong X-CSRF-Token header (it is in the login and /api/v1/me answers)",
                    ));
                }
            }
            p
        }
    };
    let (actor, kind, remote) = (
        principal.actor.clone(),
        principal.kind,
        principal.remote_addr.clone(),
    );
    // Nested under /api/v1, the request's own URI lost its prefix: the original has it.
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let method = req.method().clone();
    req.extensions_mut().insert(principal);
    let res = next.run(req).await;
    // A refusal by role or scope is part of the trail: who tried to reach what.
    if res.status() == axum::http::StatusCode::FORBIDDEN {
        let detail = serde_json::json!({"method": method.as_str()});
        if let Err(e) = crate::audit::record(
            &st,
            actor,
            kind,
            "access.denied",
            Some(path),
            detail,
            remote,
        )
        .await
        {
            tracing::warn!(err = %e.0.chain(), "cannot audit a refused request");
        }
    }
    Ok(res)
}

fn bearer(
    st: &AppState,
    header: &axum::http::HeaderValue,
    path: &str,
) -> Result<Principal, ApiError> {
    let value = header.to_str().map_err(|_| {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "Authorization header is not ASCII",
        )
    })?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "Authorization must use the Bearer scheme",
            )
        })?;
    st.tokens.verify(token).ok_or_else(|| {
        tracing::info!(path = %path, "rejected unknown bearer token");
        ApiError::new(ErrorKind::Unauthenticated, "unknown or revoked token")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xueliang_core::config::Secret;

    fn cfg(name: &str, token: &str, role: Role, cameras: &[&str]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            token: Some(Secret::new(token)),
            token_file: None,
            role,
            cameras: cameras.iter().map(|c| c.to_string()).collect(),
            devices: vec!["*".into()],
        }
    }

    #[test]
    fn verifies_by_digest_and_scopes() {
        let set = TokenSet::from_config(&[
            cfg("ops", "ops-token-0123456789", Role::Operator, &["*"]),
            cfg("desk", "desk-token-0123456789", Role::Duty, &["gate"]),
        ]);
        let p = set.verify("desk-token-0123456789").unwrap();
        assert_eq!(p.actor, "token:desk");
        assert_eq!(p.role, Role::Duty);
        assert!(p.cameras.allows("gate") && !p.cameras.allows("yard"));
        assert!(
            set.verify("ops-token-0123456789")
                .unwrap()
                .cameras
                .allows("yard")
        );
        assert!(set.verify("ops-token-012345678").is_none());
        assert!(set.verify("").is_none());
        assert_eq!(set.len(), 2);
    }
}

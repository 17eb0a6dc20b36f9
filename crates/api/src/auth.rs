//! Bearer tokens: kept only as SHA-256 digests, compared in constant time, scoped by role and
//! by camera and device lists.

use std::collections::HashSet;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use xueliang_core::ErrorKind;
use xueliang_core::config::{Role, TokenConfig};

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
    /// `token:NAME`.
    pub actor: String,
    pub role: Role,
    pub cameras: Scope,
    pub devices: Scope,
}

#[derive(Debug)]
struct Entry {
    name: String,
    digest: [u8; 32],
    role: Role,
    cameras: Scope,
    devices: Scope,
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
                        cameras: Scope::from_list(&t.cameras),
                        devices: Scope::from_list(&t.devices),
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
        found.map(|e| Principal {
            actor: format!("token:{}", e.name),
            role: e.role,
            cameras: e.cameras.clone(),
            devices: e.devices.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Rejects requests without a valid `Authorization: Bearer TOKEN` with 401.
pub(crate) async fn require_token(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "missing Authorization header; send Authorization: Bearer TOKEN",
            )
        })?;
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
    let principal = st.tokens.verify(token).ok_or_else(|| {
        tracing::info!(path = %req.uri().path(), "rejected unknown bearer token");
        ApiError::new(ErrorKind::Unauthenticated, "unknown or revoked token")
    })?;
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
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

//! Console users: argon2id passwords, login with rate limiting, and cookie sessions with a CSRF
//! token (`POST /api/v1/login`, `POST /api/v1/logout`, `GET /api/v1/me`).
//!
//! The cookie holds 32 random bytes; the store keeps only their SHA-256, so a copy of the
//! database opens no session. State-changing requests made with the cookie must echo the
//! session's CSRF token in `X-CSRF-Token`; `SameSite=Strict` is the first line, this the second.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xueliang_core::config::Role;
use xueliang_core::{Error, ErrorKind, Timestamp};
use xueliang_store::{ActorKind, SessionRecord};

use crate::{ApiError, AppState, Principal};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "xl_session";
/// The header a cookie-authenticated state change must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A failed login is counted against its username for this long.
const WINDOW_MS: i64 = 15 * 60_000;
/// Failures per username within [`WINDOW_MS`] before further attempts are refused.
const MAX_PER_USER: usize = 5;
/// Failures per remote address within [`WINDOW_MS`] before further attempts are refused.
const MAX_PER_ADDR: usize = 20;
/// Sessions are written back at most this often when only their idle expiry moves.
const TOUCH_EVERY_MS: i64 = 60_000;

/// argon2id with the OWASP minimum: 19 MiB, two passes, one lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`). CPU-heavy:
/// call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, Error> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("password salt: {e}")))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::new(ErrorKind::Internal, format!("hash password: {e}")))
}

/// Checks a password against a PHC string; a malformed hash never matches. CPU-heavy.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash that matches nothing anyone types, verified for unknown users so that their answer
/// takes as long as a wrong password's.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let secret: [u8; 32] = rand::random();
        hash_password(&hex::encode(secret)).unwrap_or_default()
    })
}

/// Hashes on the blocking pool.
pub async fn hash_password_blocking(password: String) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::with_source(ErrorKind::Internal, "password hashing task", e))?
}

fn random_b64(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored id of a session cookie value.
pub(crate) fn session_id(cookie_value: &str) -> String {
    hex::encode(Sha256::digest(cookie_value.as_bytes()))
}

/// The session cookie's value, if the request carries one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The peer's IP address, when the server recorded it (not in in-process tests).
#[derive(Clone, Debug)]
pub(crate) struct RemoteAddr(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RemoteAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(RemoteAddr(remote_of(&parts.extensions)))
    }
}

pub(crate) fn remote_of(ext: &axum::http::Extensions) -> Option<String> {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// Failed logins in the recent window, per username and per remote address. In memory: a
/// restart forgets them, which costs an attacker a restart per 5 guesses.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl LoginLimiter {
    fn keys(username: &str, addr: Option<&str>) -> [(String, usize); 2] {
        [
            (format!("u:{username}"), MAX_PER_USER),
            (format!("a:{}", addr.unwrap_or("-")), MAX_PER_ADDR),
        ]
    }

    /// `Some(seconds)` to wait when either limit is reached.
    pub fn blocked(&self, username: &str, addr: Option<&str>, now: Timestamp) -> Option<u64> {
        let now = now.as_millis();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for (key, max) in Self::keys(username, addr) {
            if let Some(q) = map.get_mut(&key) {
                while q.front().is_some_and(|t| *t <= now - WINDOW_MS) {
                    q.pop_front();
                }
                if q.len() >= max {
                    // The oldest failure leaving the window frees one attempt.
                    let at = q.front().copied().unwrap_or(now) + WINDOW_MS;
                    let secs = u64::try_from((at - now + 999) / 1000).unwrap_or(1).max(1);
                    wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, username: &str, addr: Option<&str>, now: Timestamp) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded memory under a flood of distinct names: forget windows that are over.
        if map.len() > 10_000 {
            let cutoff = now.as_millis() - WINDOW_MS;
            map.retain(|_, q| q.back().is_some_and(|t| *t > cutoff));
        }
        for (key, max) in Self::keys(username, addr) {
            let q = map.entry(key).or_default();
            q.push_back(now.as_millis());
            while q.len() > max {
                q.pop_front();
            }
        }
    }

    pub fn succeeded(&self, username: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("u:{username}"));
    }
}

/// The session part of a cookie-authenticated principal.
#[derive(Clone)]
pub struct SessionCtx {
    /// The stored id (SHA-256 of the cookie).
    pub id: String,
    pub csrf: String,
}

impl std::fmt::Debug for SessionCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCtx { .. }")
    }
}

/// What login and `/me` answer.
#[derive(Debug, Serialize)]
pub(crate) struct Me {
    username: String,
    role: Role,
    cameras: Vec<String>,
    devices: Vec<String>,
    /// Present for sessions; machine tokens need none.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

fn bad_credentials() -> ApiError {
    ApiError::new(ErrorKind::Unauthenticated, "wrong username or password")
}

/// `POST /api/v1/login`.
pub(crate) async fn login(
    State(st): State<AppState>,
    RemoteAddr(addr): RemoteAddr,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: LoginBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            ErrorKind::InvalidArgument,
            "request body must be {\"username\": \"...\", \"password\": \"...\"}",
        )
    })?;
    // Names are short slugs; a long one is an attack on the audit log, not a user.
    let username: String = body.username.trim().chars().take(64).collect();
    let now = st.clock.now();
    if let Some(secs) = st.logins.blocked(&username, addr.as_deref(), now) {
        tracing::warn!(username = %username, remote = ?addr, "login refused: too many failures");
        let mut res = ApiError::new(
            ErrorKind::ResourceExhausted,
            format!("too many failed logins; try again in {secs} s"),
        )
        .into_response();
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(res);
    }
    let user = st.store.get_user_by_name(&username).await?;
    let phc = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| decoy_hash().to_owned());
    let password = body.password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .map_err(|e| Error::with_source(ErrorKind::Internal, "password check task", e))?;
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        other => {
            let reason = match &other {
                None => "unknown_user",
                Some(u) if u.disabled => "disabled",
                Some(_) => "wrong_password",
            };
            st.logins.failed(&username, addr.as_deref(), now);
            crate::audit::record(
                &st,
                format!("user:{username}"),
                ActorKind::User,
                "login.failed",
                None,
                serde_json::json!({ "reason": reason }),
                addr.clone(),
            )
            .await?;
            tracing::info!(username = %username, remote = ?addr, reason, "login failed");
            return Err(bad_credentials());
        }
    };
    st.logins.succeeded(&username);
    let cookie = random_b64(32);
    let csrf = random_b64(32);
    let session = SessionRecord {
        id: session_id(&cookie),
        user_id: user.id,
        csrf: csrf.clone(),
        created_at: now,
        expires_at: Timestamp::from_millis(now.as_millis() + st.session_idle_ms),
        last_seen: now,
        remote_addr: addr.clone(),
    };
    st.store.create_session(&session).await?;
    crate::audit::record(
        &st,
        format!("user:{}", user.username),
        ActorKind::User,
        "login",
        None,
        serde_json::json!({ "role": user.role }),
        addr,
    )
    .await?;
    let me = Me {
        username: user.username,
        role: user.role,
        cameras: user.cameras,
        devices: user.devices,
        csrf: Some(csrf),
    };
    let secure = if st.secure_cookies { "; Secure" } else { "" };
    let set = format!("{SESSION_COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/{secure}");
    Ok((
        [(
            header::SET_COOKIE,
            HeaderValue::from_str(&set)
                .map_err(|e| Error::with_source(ErrorKind::Internal, "session cookie header", e))?,
        )],
        axum::Json(me),
    )
        .into_response())
}

/// `POST /api/v1/logout`: ends the caller's session (a token has none; nothing to end).
pub(crate) async fn logout(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    if let Some(s) = &who.session {
        st.store.delete_session(&s.id).await?;
        crate::audit::record(
            &st,
            who.actor.clone(),
            who.kind,
            "logout",
            None,
            serde_json::json!({}),
            who.remote_addr.clone(),
        )
        .await?;
    }
    let secure = if st.secure_cookies { "; Secure" } else { "" };
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}");
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&clear) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// `GET /api/v1/me`.
pub(crate) async fn me(Extension(who): Extension<Principal>) -> axum::Json<Me> {
    axum::Json(Me {
        username: who
            .actor
            .split_once(':')
            .map_or(who.actor.as_str(), |(_, n)| n)
            .to_owned(),
        role: who.role,
        cameras: who.cameras_list.clone(),
        devices: who.devices_list.clone(),
        csrf: who.session.as_ref().map(|s| s.csrf.clone()),
    })
}

/// The principal of a session cookie, or why there is none. Moves the idle expiry along.
pub(crate) async fn principal_of_cookie(
    st: &AppState,
    cookie: &str,
    remote_addr: Option<String>,
) -> Result<Principal, ApiError> {
    let gone = || {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "session expired or unknown; log in again",
        )
    };
    let id = session_id(cookie);
    let session = st.store.get_session(&id).await?.ok_or_else(gone)?;
    let now = st.clock.now();
    if session.expires_at <= now {
        st.store.delete_session(&id).await?;
        return Err(gone());
    }
    let user = st
        .store
        .get_user(session.user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(gone)?;
    if now.as_millis() - session.last_seen.as_millis() >= TOUCH_EVERY_MS {
        st.store
            .touch_session(
                &id,
                now,
                Timestamp::from_millis(now.as_millis() + st.session_idle_ms),
            )
            .await?;
    }
    Ok(Principal::new(
        format!("user:{}", user.username),
        ActorKind::User,
        user.role,
        &user.cameras,
        &user.devices,
    )
    .with_session(SessionCtx {
        id,
        csrf: session.csrf,
    })
    .with_remote(remote_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    #[test]
    fn limiter_counts_per_user_and_address_within_the_window() {
        let l = LoginLimiter::default();
        let t = Timestamp::from_millis;
        for i in 0..5 {
            assert_eq!(l.blocked("wang", Some("192.0.2.1"), t(i)), None);
            l.failed("wang", Some("192.0.2.1"), t(i));
        }
        assert_eq!(l.blocked("wang", Some("192.0.2.9"), t(10)), Some(900));
        assert_eq!(l.blocked("li", Some("192.0.2.1"), t(10)), None);
        assert_eq!(l.blocked("wang", None, t(WINDOW_MS + 10)), None);
        for i in 0..20 {
            l.failed(&format!("u{i}"), Some("192.0.2.2"), t(100));
        }
        assert!(l.blocked("zhao", Some("192.0.2.2"), t(200)).is_some());
        l.succeeded("wang");
        assert_eq!(l.blocked("wang", Some("192.0.2.1"), t(20)), None);
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; xl_session=abc ; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("xl_session="));
        assert_eq!(session_cookie(&h), None);
    }
}

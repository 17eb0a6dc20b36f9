//! `GET /api/v1/events`: committed alarm and camera changes as Server-Sent Events.
//!
//! The store's `events` table is the stream: each event's `id:` is its row id, which sorts in
//! commit order, so a client that reconnects with `Last-Event-ID` gets everything it missed
//! (as far back as `alarms.events_keep_days`). Without that header the stream starts at the
//! next change. Writers on this node bump a watch channel after each commit; a slow poll also
//! picks up what other nodes sharing the database wrote. Events are filtered by the caller's
//! camera and device scope.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use xueliang_core::{EntityId, ErrorKind};
use xueliang_store::EventRecord;

use crate::{ApiError, AppState, Principal};

/// How often the store is read when nothing on this node signalled a commit.
const POLL: Duration = Duration::from_secs(2);
const PAGE: u32 = 500;

pub(crate) async fn stream(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let cursor = match headers.get("last-event-id") {
        Some(v) => {
            let text = v.to_str().unwrap_or("");
            text.trim().parse::<EntityId>().map_err(|_| {
                ApiError::new(
                    ErrorKind::InvalidArgument,
                    format!("Last-Event-ID {text:?} is not an event id from this stream"),
                )
            })?
        }
        None => st.store.latest_event_id().await?.unwrap_or(EntityId::MIN),
    };
    tracing::debug!(actor = %who.actor, cursor = %cursor, "event stream opened");
    let wake = st.events.subscribe();
    let state = Cursor {
        st,
        who,
        cursor,
        pending: VecDeque::new(),
        wake,
    };
    let s = futures::stream::unfold(state, |mut c| async move {
        loop {
            if let Some(e) = c.pending.pop_front() {
                return Some((Ok(e), c));
            }
            match c.st.store.events_after(c.cursor, PAGE).await {
                Ok(rows) if !rows.is_empty() => {
                    for r in &rows {
                        if let Some(e) = c.render(r) {
                            c.pending.push_back(e);
                        }
                    }
                    c.cursor = rows.last().map(|r| r.id).unwrap_or(c.cursor);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(err = %e.chain(), "event stream cannot read the store; retrying");
                }
            }
            let shutdown = c.st.shutdown.clone();
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = c.wake.changed() => {
                    if r.is_err() {
                        // No writer on this node any more: keep polling for other nodes.
                        tokio::time::sleep(POLL).await;
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Cursor {
    st: AppState,
    who: Principal,
    cursor: EntityId,
    pending: VecDeque<Event>,
    wake: tokio::sync::watch::Receiver<u64>,
}

impl Cursor {
    /// The SSE form of a stored event, or `None` when it is outside the caller's scope.
    fn render(&self, r: &EventRecord) -> Option<Event> {
        let allowed = match r.topic.as_str() {
            "camera" | "motion" => self.who.cameras.allows(&r.subject),
            _ => {
                let v: serde_json::Value = serde_json::from_str(&r.payload).ok()?;
                let field = |name: &str| {
                    v.get("after")
                        .and_then(|a| a.get(name))
                        .and_then(|s| s.as_str())
                        .unwrap_or("")
                        .to_owned()
                };
                crate::alarms::source_visible(&self.who, &field("kind"), &field("source_id"))
            }
        };
        allowed.then(|| {
            Event::default()
                .id(r.id.to_string())
                .event(r.topic.clone())
                .data(r.payload.clone())
        })
    }
}

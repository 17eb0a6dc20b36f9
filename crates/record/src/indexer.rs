//! The indexer: commits what writers report to the store, in order, retrying until it sticks.
//!
//! It runs until every writer has dropped its sender, so a shutdown that stops the writers first
//! still gets their last segments indexed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use xueliang_core::ErrorKind;
use xueliang_store::Store;

use crate::writer::IndexEvent;

/// `segment_closed` is notified after each committed segment (retention checks the disk then).
pub async fn run_indexer(
    store: Arc<dyn Store>,
    mut rx: UnboundedReceiver<IndexEvent>,
    segment_closed: Arc<tokio::sync::Notify>,
) {
    while let Some(ev) = rx.recv().await {
        let mut delay = Duration::from_millis(100);
        loop {
            let r = match &ev {
                IndexEvent::Segment(s) => store.insert_segment(s).await,
                IndexEvent::GapOpened(g) => store.insert_gap(g).await,
                IndexEvent::GapClosed { id, end } => store.close_gap(*id, *end).await,
            };
            match r {
                Ok(()) => {
                    if matches!(ev, IndexEvent::Segment(_)) {
                        segment_closed.notify_one();
                    }
                    break;
                }
                // Already there (a retry that had in fact committed), or nothing left to close.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition
                    ) =>
                {
                    tracing::warn!(err = %e.chain(), event = ?ev, "index entry skipped");
                    break;
                }
                Err(e) => {
                    tracing::error!(err = %e.chain(), retry_in_ms = delay.as_millis() as u64, "index commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

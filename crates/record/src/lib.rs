//! Recording: turns a camera's encoded frames into fragmented-MP4 files on disk and reads those
//! files back after a restart or a crash.
//!
//! [`mp4`] is the container layer; [`writer`] decides where files start and end and makes them
//! durable; [`indexer`] commits them to the store; [`reconcile`] repairs disk and index after a
//! crash; [`retention`] keeps the disk from filling; [`export`] serves spans as one MP4;
//! [`live`] turns a camera's frames into an fMP4 stream for live view.

pub mod export;
pub mod indexer;
pub mod layout;
pub mod live;
mod metrics;
pub mod mp4;
pub mod reconcile;
pub mod retention;
pub mod writer;

pub use metrics::RecordMetrics;

//! Shared vocabulary of every Xueliang stage: ids, wall time, errors, shutdown and configuration.
//!
//! Nothing here does I/O on its own except reading the configuration file and the secret files it
//! names, so every stage crate can depend on it and still compile and test quickly.

pub mod config;
pub mod error;
pub mod health;
pub mod id;
pub mod media;
pub mod model;
pub mod shutdown;
pub mod time;

pub use error::{Error, ErrorKind, ResultExt};
pub use id::{EntityId, NodeId};
pub use time::{Clock, SystemClock, Timestamp};

//! The `xueliang` binary's library half: command line, logging, wiring and shutdown.
//!
//! Only this crate knows the shape of the pipeline; stage crates know nothing of each other.

pub mod alarms;
pub mod bridge;
pub mod cli;
pub mod logging;
pub mod motion_eval;
pub mod pipeline;
pub mod run;
pub mod signals;
pub mod users;

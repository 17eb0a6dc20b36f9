//! The alarm engine's pure core: presses, heartbeats, last wills, operator actions and the
//! passing of time go in; incident changes come out as [`Effect`]s for the shell to commit.
//!
//! Nothing here does I/O or reads a clock: time arrives with every [`Input`], so grouping,
//! escalation and supervision are tested by stepping time by hand. The model follows ISA-18.2:
//! an incident's *condition* (is the cause still there?) is kept apart from its *workflow*
//! (raised → acknowledged → dispatched → resolved, driven by people). Panic incidents are
//! latched: only a person resolves them.

mod engine;
mod policy;

pub use engine::{Action, ActionError, DeviceInfo, Effect, Engine, IncidentKind, Input, PressKind};
pub use policy::Policy;

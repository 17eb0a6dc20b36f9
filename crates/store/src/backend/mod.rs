//! The two backends. Both compile the same query code (`body.rs`) against their own sqlx
//! driver; only opening the pool and locking for migrations differ.

pub(crate) mod postgres;
pub(crate) mod sqlite;

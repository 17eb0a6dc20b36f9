//! Query parameters shared by the listing endpoints: times and limits, refused by name.

use std::collections::HashMap;

use xueliang_core::{ErrorKind, Timestamp};

use crate::ApiError;

/// An RFC 3339 time, when given.
pub(crate) fn time(q: &HashMap<String, String>, name: &str) -> Result<Option<Timestamp>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => Timestamp::parse_rfc3339(v).map(Some).map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidArgument,
                format!("query parameter `{name}`: {v:?} is not an RFC 3339 time such as 2026-11-24T08:00:00Z ({e})"),
            )
        }),
    }
}

/// `limit`: 1 to 10 000, `default` when not given.
pub(crate) fn limit(q: &HashMap<String, String>, default: u32) -> Result<u32, ApiError> {
    match q.get("limit") {
        None => Ok(default),
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=10_000).contains(l))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::InvalidArgument,
                    "query parameter `limit` must be 1 to 10000",
                )
            }),
    }
}

//! Identifiers: the node id every exported record carries, and sortable globally unique entity ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A node's configured id, e.g. `zigong-yantan-01`: lowercase ASCII letters, digits and `-`/`_`,
/// 1 to 64 characters, starting with a letter or digit. It appears in MQTT topics and ids
/// exchanged with other nodes, hence the narrow alphabet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the alphabet shared by node, camera and device ids; returns a human sentence on error.
pub fn check_slug(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 64 {
        return Err(format!("must be at most 64 characters, got {}", s.len()));
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "{s:?} must start with a lowercase letter or a digit"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{s:?} contains {c:?}; use lowercase ASCII letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

impl TryFrom<String> for NodeId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_slug(&s)?;
        Ok(NodeId(s))
    }
}

impl FromStr for NodeId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NodeId::try_from(s.to_owned())
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Id of anything that leaves the node (incident, signal, segment, outbox entry, audit entry).
///
/// A UUIDv7: unique across nodes without coordination and sorting by creation time, so that
/// several nodes can write one PostgreSQL database. Records carry the writing node's id beside it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntityId(Uuid);

impl EntityId {
    /// Sorts before every other id: "from the beginning" for cursors.
    pub const MIN: EntityId = EntityId(Uuid::nil());

    /// A new id whose time part is `at` (wall time, milliseconds), so ids sort like their records.
    pub fn new_at(at: crate::Timestamp) -> Self {
        let ms = u64::try_from(at.as_millis()).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            ((ms % 1000) * 1_000_000) as u32,
        );
        EntityId(Uuid::new_v7(ts))
    }

    /// Like [`EntityId::new_at`], but ids made by this process always sort in the order they
    /// were made (a counter instead of random bits within a millisecond; an `at` earlier than
    /// the last id's time is moved up to it): for streams that resume after the last id a
    /// reader saw.
    pub fn new_ordered(at: crate::Timestamp) -> Self {
        static CONTEXT: std::sync::Mutex<uuid::ContextV7> =
            std::sync::Mutex::new(uuid::ContextV7::new());
        let ms = u64::try_from(at.as_millis()).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(&CONTEXT, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
        EntityId(Uuid::new_v7(ts))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for EntityId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EntityId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_ids_sort_in_creation_order_within_a_millisecond() {
        let at = crate::Timestamp::from_millis(1_764_000_000_123);
        let ids: Vec<EntityId> = (0..1000).map(|_| EntityId::new_ordered(at)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let (secs, nanos) = ids[0].as_uuid().get_timestamp().expect("v7").to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos) / 1_000_000,
            1_764_000_000_123
        );
    }
    use crate::Timestamp;

    #[test]
    fn slugs() {
        assert!(check_slug("zigong-yantan-01").is_ok());
        assert!(check_slug("cam_1").is_ok());
        assert!(check_slug("").is_err());
        assert!(check_slug("-a").is_err());
        assert!(check_slug("Cam1").unwrap_err().contains("lowercase"));
        assert!(check_slug("cam/1").unwrap_err().contains("'/'"));
        assert!(check_slug(&"a".repeat(65)).is_err());
    }

    #[test]
    fn entity_ids_sort_by_time_and_round_trip() {
        let a = EntityId::new_at(Timestamp::from_millis(1_700_000_000_000));
        let b = EntityId::new_at(Timestamp::from_millis(1_700_000_000_001));
        let c = EntityId::new_at(Timestamp::from_millis(1_800_000_000_000));
        assert!(a < b && b < c);
        assert!(a.to_string() < c.to_string());
        let parsed: EntityId = a.to_string().parse().unwrap();
        assert_eq!(parsed, a);
        assert_eq!(a.as_uuid().get_version_num(), 7);
    }
}

//! Where recordings live on disk: `{storage}/{camera}/{YYYY-MM-DD}/{start}_{id}.mp4`.
//!
//! The file name carries the segment's wall-clock start (UTC, milliseconds) and its id, so a
//! file found on disk after a crash can be indexed without any other record of it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use xueliang_core::{EntityId, Timestamp};

const STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";

/// Path of a segment relative to the storage directory.
pub fn segment_path(camera: &str, start: Timestamp, id: EntityId) -> PathBuf {
    let dt = start.to_datetime();
    PathBuf::from(camera)
        .join(dt.format("%Y-%m-%d").to_string())
        .join(format!("{}_{id}.mp4", dt.format(STAMP)))
}

/// What a segment's file name says about it.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedName {
    pub camera: String,
    pub start: Timestamp,
    pub id: EntityId,
}

/// Parses a path relative to the storage directory; `None` for anything that is not a segment.
pub fn parse_segment_path(rel: &Path) -> Option<ParsedName> {
    let mut parts = rel.iter();
    let camera = parts.next()?.to_str()?.to_owned();
    let _date = parts.next()?;
    let file = parts.next()?.to_str()?;
    if parts.next().is_some() {
        return None;
    }
    let stem = file.strip_suffix(".mp4")?;
    let (stamp, id) = stem.split_once('_')?;
    let naive = NaiveDateTime::parse_from_str(stamp, STAMP).ok()?;
    let start = Timestamp::from_millis(
        DateTime::<Utc>::from_naive_utc_and_offset(naive, Utc).timestamp_millis(),
    );
    Some(ParsedName {
        camera,
        start,
        id: id.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let start = Timestamp::parse_rfc3339("2026-11-25T08:15:30.250Z").unwrap();
        let id = EntityId::new_at(start);
        let p = segment_path("school-gate", start, id);
        assert_eq!(
            p.to_str().unwrap(),
            format!("school-gate/2026-11-25/20261125T081530.250Z_{id}.mp4")
        );
        assert_eq!(
            parse_segment_path(&p),
            Some(ParsedName {
                camera: "school-gate".into(),
                start,
                id
            })
        );
        assert_eq!(
            parse_segment_path(Path::new("school-gate/2026-11-25/notes.txt")),
            None
        );
        assert_eq!(parse_segment_path(Path::new("school-gate/x.mp4")), None);
    }
}

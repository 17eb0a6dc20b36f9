//! Schema migrations: embedded SQL per backend, applied in order, each once, checked by hash.
//!
//! sqlx's own migrator needs its `macros` feature (a second SQLite build); this is small enough to
//! own, and it lets PostgreSQL take an advisory lock so several nodes can start at once.

use sha2::Digest;
use xueliang_core::{Error, ErrorKind};

/// One forward-only schema step.
#[derive(Copy, Clone, Debug)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.sql.as_bytes()))
    }
}

pub const MIGRATIONS_SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "events and incident clips",
        sql: include_str!("../migrations/sqlite/0002_events_clips.sql"),
    },
    Migration {
        version: 3,
        description: "motion events",
        sql: include_str!("../migrations/sqlite/0003_motion.sql"),
    },
    Migration {
        version: 4,
        description: "users and sessions",
        sql: include_str!("../migrations/sqlite/0004_users_sessions.sql"),
    },
];

pub const MIGRATIONS_POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "events and incident clips",
        sql: include_str!("../migrations/postgres/0002_events_clips.sql"),
    },
    Migration {
        version: 3,
        description: "motion events",
        sql: include_str!("../migrations/postgres/0003_motion.sql"),
    },
    Migration {
        version: 4,
        description: "users and sessions",
        sql: include_str!("../migrations/postgres/0004_users_sessions.sql"),
    },
];

/// DDL of the bookkeeping table; the same text works on both engines.
pub(crate) const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_ms BIGINT NOT NULL
)";

/// Decides what to apply given what the database says it has.
pub(crate) fn plan<'a>(
    applied: &[(i64, String)],
    known: &'a [Migration],
) -> Result<Vec<&'a Migration>, Error> {
    let newest_known = known.iter().map(|m| m.version).max().unwrap_or(0);
    for (version, checksum) in applied {
        match known.iter().find(|m| m.version == *version) {
            None if *version > newest_known => {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "database schema version {version} is newer than this xueliang knows ({newest_known}); upgrade xueliang"
                    ),
                ));
            }
            None => {
                return Err(Error::new(
                    ErrorKind::DataLoss,
                    format!("database has migration {version}, which this xueliang does not know"),
                ));
            }
            Some(m) if m.checksum() != *checksum => {
                return Err(Error::new(
                    ErrorKind::DataLoss,
                    format!(
                        "migration {version} ({}) differs from the one applied to this database",
                        m.description
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_pending_and_refuses_changed_or_newer_schemas() {
        let all = MIGRATIONS_SQLITE;
        assert_eq!(plan(&[], all).unwrap().len(), all.len());
        let done: Vec<_> = all.iter().map(|m| (m.version, m.checksum())).collect();
        assert!(plan(&done, all).unwrap().is_empty());
        let changed = vec![(1, "0".repeat(64))];
        assert_eq!(plan(&changed, all).unwrap_err().kind(), ErrorKind::DataLoss);
        let newer = vec![(999, "x".into())];
        let e = plan(&newer, all).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.message().contains("upgrade xueliang"));
    }
}

//! SQLite backend for edge boxes: one file, WAL, full fsync on commit, foreign keys on.

use std::path::Path;
use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use xueliang_core::{Error, ErrorKind, NodeId, ResultExt};

use crate::{Backend, OpenOptions, Result};

type Db = sqlx::Sqlite;
const BACKEND: Backend = Backend::Sqlite;
type StoreImpl = SqliteStore;
const MIGRATIONS: &[crate::Migration] = crate::MIGRATIONS_SQLITE;

#[derive(Debug)]
pub(crate) struct SqliteStore {
    pool: sqlx::Pool<Db>,
    node: NodeId,
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path, opts: &OpenOptions, node: NodeId) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).err_kind(ErrorKind::Unavailable, || {
                format!("cannot create database directory {}", dir.display())
            })?;
        }
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(crate::error::db("sqlite options"))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An alarm is acknowledged to its device only after commit; FULL makes that commit
            // survive power loss, not just a process crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(opts.busy_timeout)
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.busy_timeout * 2)
            .connect_with(connect)
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Unavailable,
                    format!("cannot open SQLite database {}", path.display()),
                    e,
                )
            })?;
        Ok(SqliteStore { pool, node })
    }

    /// SQLite serialises writers itself; `BEGIN IMMEDIATE` makes a second migrating process
    /// wait for the first instead of failing half-way.
    async fn migrate_impl(&self) -> Result<Vec<i64>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(crate::error::db("acquire connection"))?;
        migrate_in_transaction(&mut conn, "BEGIN IMMEDIATE").await
    }
}

/// Write transactions take SQLite's write lock up front: a deferred one that reads and then
/// writes fails with SQLITE_BUSY_SNAPSHOT (517) when another connection committed in between
/// (the recorder's indexer against camera state updates, say), and no busy timeout helps.
async fn begin_write(pool: &sqlx::Pool<Db>) -> Result<sqlx::Transaction<'static, Db>> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(crate::error::db("begin"))
}

include!("body.rs");

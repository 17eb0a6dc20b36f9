//! PostgreSQL backend for monitoring centres, where several nodes share one database.

use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use xueliang_core::{Error, ErrorKind, NodeId};

use crate::{Backend, OpenOptions, Result};

type Db = sqlx::Postgres;
const BACKEND: Backend = Backend::Postgres;
type StoreImpl = PgStore;
const MIGRATIONS: &[crate::Migration] = crate::MIGRATIONS_POSTGRES;

/// Advisory lock key held while migrating ("xueliang" in ASCII, truncated to i64).
const MIGRATION_LOCK: i64 = 0x7875_656c_6961_6e67;

#[derive(Debug)]
pub(crate) struct PgStore {
    pool: sqlx::Pool<Db>,
    node: NodeId,
}

impl PgStore {
    pub(crate) async fn open(url: &str, opts: &OpenOptions, node: NodeId) -> Result<Self> {
        let shown = crate::redact_url(url);
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidArgument,
                    format!("bad PostgreSQL url {shown}"),
                    e,
                )
            })?
            .application_name("xueliang")
            .log_statements(tracing::log::LevelFilter::Trace);
        if let Some(pw) = &opts.password {
            connect = connect.password(pw);
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.busy_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Unavailable,
                    format!("cannot connect to PostgreSQL at {shown}"),
                    e,
                )
            })?;
        Ok(PgStore { pool, node })
    }

    /// Several nodes may start together against one database: the advisory lock makes the
    /// others wait and then find nothing left to do.
    async fn migrate_impl(&self) -> Result<Vec<i64>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(crate::error::db("acquire connection"))?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(crate::error::db("take migration lock"))?;
        let result = migrate_in_transaction(&mut conn, "BEGIN").await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(crate::error::db("release migration lock"))?;
        result
    }
}

async fn begin_write(pool: &sqlx::Pool<Db>) -> Result<sqlx::Transaction<'static, Db>> {
    pool.begin().await.map_err(crate::error::db("begin"))
}

include!("body.rs");

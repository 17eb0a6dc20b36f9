//! Throwaway databases for tests: a SQLite file in a temporary directory, or a fresh PostgreSQL
//! database (created on the server named by `XUELIANG_TEST_PG_URL`, dropped afterwards).

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::Connection;
use xueliang_core::{Error, ErrorKind, NodeId};

use crate::{OpenOptions, Result, Store};

/// Default administrative URL of the test server (trust auth on loopback).
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The administrative URL tests use.
pub fn pg_admin_url() -> String {
    std::env::var("XUELIANG_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// A database that exists for one test. Dropping it removes the SQLite file or the PostgreSQL
/// database.
#[derive(Debug)]
pub enum TestDb {
    Sqlite { dir: tempfile::TempDir },
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub fn sqlite() -> Self {
        TestDb::Sqlite {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// Creates `xl_test_<random>` on the test server.
    pub async fn postgres() -> Result<Self> {
        let admin_url = pg_admin_url();
        let name = format!("xl_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Unavailable,
                format!(
                    "cannot reach the test PostgreSQL at {}; run deploy/services.sh",
                    crate::redact_url(&admin_url)
                ),
                e,
            )
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(crate::error::db("create test database"))?;
        let _ = conn.close().await;
        Ok(TestDb::Postgres { admin_url, name })
    }

    pub fn options(&self) -> OpenOptions {
        match self {
            TestDb::Sqlite { dir } => OpenOptions::sqlite(&self.sqlite_path_in(dir.path().into())),
            TestDb::Postgres { admin_url, name } => {
                let mut u = url::Url::parse(admin_url).expect("test url parses");
                u.set_path(&format!("/{name}"));
                OpenOptions::postgres(u.as_str())
            }
        }
    }

    /// `database.url` for a configuration file pointing at this database.
    pub fn config_url(&self) -> String {
        match &self.options().target {
            xueliang_core::config::DatabaseTarget::Sqlite { path } => {
                format!("sqlite://{}", path.display())
            }
            xueliang_core::config::DatabaseTarget::Postgres { url } => url.clone(),
        }
    }

    fn sqlite_path_in(&self, dir: PathBuf) -> PathBuf {
        dir.join("xueliang.db")
    }

    /// Opens and migrates a store on this database.
    pub async fn open(&self, node: &str) -> Result<Arc<dyn Store>> {
        let node = NodeId::try_from(node.to_owned())
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e))?;
        let store = crate::open(&self.options(), node).await?;
        store.migrate().await?;
        Ok(store)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop may run inside a runtime; do the async work on a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await;
                            let _ = c.close().await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// Runs one SQL statement on a connection of its own, outside the store, and returns the
/// database's error text; for tests that check what the schema itself refuses.
pub async fn raw_execute(
    opts: &OpenOptions,
    sql: &'static str,
) -> std::result::Result<u64, String> {
    match &opts.target {
        xueliang_core::config::DatabaseTarget::Sqlite { path } => {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query(sql)
                .execute(&mut c)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| e.to_string())
        }
        xueliang_core::config::DatabaseTarget::Postgres { url } => {
            let mut c = sqlx::PgConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query(sql)
                .execute(&mut c)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| e.to_string())
        }
    }
}

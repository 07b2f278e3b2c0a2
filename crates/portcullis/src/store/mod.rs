//! Storage: the only module that contains SQL.
//!
//! One [`Store`] over sqlx's `Any` driver runs the same queries on SQLite (embedded default,
//! WAL) and PostgreSQL (several replicas). Dialect differences are confined to the migration
//! files. One file per aggregate:
//!
//! - [`registry`]: servers, users, groups, grants, API keys, and the registry revision that
//!   tells every replica when to reload its snapshot.
//! - [`directory`]: people and groups as an identity provider sees them (SCIM), account
//!   status, roles, and SCIM tokens.
//! - [`accounts`]: local accounts (passwords, TOTP, recovery codes, console session epochs)
//!   and first-run setup tokens.
//! - [`oauth`]: OAuth clients, authorization codes and tokens.
//! - [`audit`]: audit events (group-committed inserts, outcome updates, queries).
//! - [`settings`]: settings admins change at run time.
//! - [`replicas`]: which replicas are alive and where to reach them.

pub mod accounts;
pub mod audit;
pub mod catalog;
pub mod directory;
pub mod known_tools;
pub mod notifications;
pub mod oauth;
pub mod pins;
pub mod registry;
pub mod replicas;
pub mod requests;
pub mod rules;
pub mod settings;
pub mod upstream_tokens;

use crate::config::StoreLocation;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};
use std::str::FromStr;
use std::time::Duration;

/// A storage failure. Shown to operators in logs; clients only learn that storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("cannot open the store: {0}")]
    Open(String),
}

/// Which SQL dialect the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The connection pool and its dialect. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
}

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// The schema's history. An empty script means the step has nothing to do on that backend;
/// a step written in SQL both dialects accept has one file for both.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sqlite: include_str!("migrations/0001_init.sqlite.sql"),
        postgres: include_str!("migrations/0001_init.postgres.sql"),
    },
    Migration {
        version: 2,
        name: "audit_partial_indexes",
        sqlite: include_str!("migrations/0002_audit_partial_indexes.sqlite.sql"),
        postgres: "",
    },
    Migration {
        version: 3,
        name: "identity",
        sqlite: include_str!("migrations/0003_identity.sql"),
        postgres: include_str!("migrations/0003_identity.sql"),
    },
    Migration {
        version: 4,
        name: "accounts",
        sqlite: include_str!("migrations/0004_accounts.sql"),
        postgres: include_str!("migrations/0004_accounts.sql"),
    },
    Migration {
        version: 5,
        name: "oauth",
        sqlite: include_str!("migrations/0005_oauth.sql"),
        postgres: include_str!("migrations/0005_oauth.sql"),
    },
    Migration {
        version: 6,
        name: "settings",
        sqlite: include_str!("migrations/0006_settings.sql"),
        postgres: include_str!("migrations/0006_settings.sql"),
    },
    Migration {
        version: 7,
        name: "api_key_use",
        sqlite: include_str!("migrations/0007_api_key_use.sql"),
        postgres: include_str!("migrations/0007_api_key_use.sql"),
    },
    Migration {
        version: 8,
        name: "oidc",
        sqlite: include_str!("migrations/0008_oidc.sql"),
        postgres: include_str!("migrations/0008_oidc.sql"),
    },
    Migration {
        version: 9,
        name: "audit_journal",
        sqlite: include_str!("migrations/0009_audit_journal.sql"),
        postgres: include_str!("migrations/0009_audit_journal.sql"),
    },
    Migration {
        version: 10,
        name: "rules",
        sqlite: include_str!("migrations/0010_rules.sql"),
        postgres: include_str!("migrations/0010_rules.sql"),
    },
    Migration {
        version: 11,
        name: "server_tools",
        sqlite: include_str!("migrations/0011_server_tools.sql"),
        postgres: include_str!("migrations/0011_server_tools.sql"),
    },
    Migration {
        version: 12,
        name: "catalog",
        sqlite: include_str!("migrations/0012_catalog.sql"),
        postgres: include_str!("migrations/0012_catalog.sql"),
    },
    Migration {
        version: 13,
        name: "requests",
        sqlite: include_str!("migrations/0013_requests.sql"),
        postgres: include_str!("migrations/0013_requests.sql"),
    },
    Migration {
        version: 14,
        name: "pins",
        sqlite: include_str!("migrations/0014_pins.sql"),
        postgres: include_str!("migrations/0014_pins.sql"),
    },
    Migration {
        version: 15,
        name: "outbox",
        sqlite: include_str!("migrations/0015_outbox.sql"),
        postgres: include_str!("migrations/0015_outbox.sql"),
    },
    Migration {
        version: 16,
        name: "upstream_oauth",
        sqlite: include_str!("migrations/0016_upstream_oauth.sql"),
        postgres: include_str!("migrations/0016_upstream_oauth.sql"),
    },
];

impl Store {
    /// Connect and bring the schema up to date.
    pub async fn open(location: &StoreLocation) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, backend, max_connections) = match location {
            StoreLocation::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|error| StoreError::Open(format!("cannot create {}: {error}", parent.display())))?;
                }
                let absolute = std::path::absolute(path)
                    .map_err(|error| StoreError::Open(format!("bad path {}: {error}", path.display())))?;
                (format!("sqlite://{}?mode=rwc", absolute.display()), Backend::Sqlite, 4)
            }
            StoreLocation::Postgres(url) => (url.clone(), Backend::Postgres, 16),
        };
        let options = AnyConnectOptions::from_str(&url).map_err(|error| StoreError::Open(error.to_string()))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL with synchronous=NORMAL: a commit survives a process crash; busy_timeout
                        // lets the CLI and a running gateway write the same file.
                        connection
                            .execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|error| StoreError::Open(format!("{error} (store: {})", redact_url(&url))))?;
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            // Replicas starting together must not run the same migration twice.
            connection.execute("SELECT pg_advisory_lock(7235114)").await?;
        }
        let result = self.migrate_locked(&mut connection).await;
        if self.backend == Backend::Postgres {
            connection.execute("SELECT pg_advisory_unlock(7235114)").await?;
        }
        result
    }

    async fn migrate_locked(&self, connection: &mut AnyConnection) -> Result<(), StoreError> {
        connection
            .execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            )
            .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
            .fetch_all(&mut *connection)
            .await?
            .iter()
            .map(|row| row.get::<i64, _>(0))
            .collect();
        for migration in MIGRATIONS {
            if applied.contains(&migration.version) {
                continue;
            }
            let sql = match self.backend {
                Backend::Sqlite => migration.sqlite,
                Backend::Postgres => migration.postgres,
            };
            let mut transaction = connection.begin().await?;
            if !sql.is_empty() {
                sqlx::raw_sql(sql).execute(&mut *transaction).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                .bind(migration.version)
                .bind(migration.name)
                .bind(now_ms())
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await?;
            tracing::info!(version = migration.version, name = migration.name, "applied migration");
        }
        Ok(())
    }

    /// Begin a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so it waits for another writer (busy_timeout) instead of failing
    /// with "database is locked" when it would have to upgrade a stale read.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Close the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}

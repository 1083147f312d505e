//! PostgreSQL backend (Supabase included): production, and shared by several instances.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::types::Json;
use sqlx::{Pool, Postgres};

use super::sql::*;
use super::*;

/// [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool<Postgres>,
}

impl PgStore {
    /// Connects to `url`, e.g. `postgres://user:pass@host:5432/db`.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the server cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/postgres")
    }
}

impl_store!(PgStore, Postgres, "postgres");

//! PostgreSQL backend (Supabase included): production, and shared by several instances.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Pool, Postgres};

use super::*;

/// [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool<Postgres>,
    /// For the writes off the request path (checkpoints, finished replies, usage): a slow database makes them
    /// wait here, never in front of a new request.
    background: Pool<Postgres>,
}

/// Connections opened at startup, in parallel, and kept open.
const WARM_CONNECTIONS: u32 = 4;

impl PgStore {
    /// Connects to `url`, e.g. `postgres://user:pass@host:5432/db`: `max_connections` for requests, and
    /// [`background_connections`] more for the writes off the request path.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the server cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let warm = max_connections.min(WARM_CONNECTIONS);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(warm)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)?;
        let background = PgPoolOptions::new()
            .max_connections(background_connections(max_connections))
            .min_connections(1)
            .acquire_timeout(BACKGROUND_ACQUIRE_TIMEOUT)
            .connect_lazy(url)?;
        // Open the first connections of both pools side by side. A TLS handshake costs about 90 ms with sqlx
        // 0.9.0, which does not set TCP_NODELAY (sqlx issue #4335): one after another, startup paid it for every
        // step.
        let (opened, opened_background) = futures::future::try_join(
            futures::future::try_join_all((0..warm).map(|_| pool.acquire())),
            background.acquire(),
        )
        .await?;
        drop((opened, opened_background));
        Ok(Self { pool, background })
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/postgres")
    }
}

/// The database, store type and name the shared queries (`sql.rs`) are compiled for here.
type Db = Postgres;
type Backend = PgStore;
const BACKEND: &str = "postgres";

#[path = "sql.rs"]
#[expect(
    clippy::duplicate_mod,
    reason = "the shared queries, compiled once per backend"
)]
mod sql;

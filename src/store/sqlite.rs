//! SQLite backend: the embedded default, one file under `./data/`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use super::*;

/// [`Store`] on SQLite, in WAL mode with foreign keys enforced.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: Pool<Sqlite>,
    /// For the writes off the request path (checkpoints, finished replies, usage).
    background: Pool<Sqlite>,
}

impl SqliteStore {
    /// Opens (creating when missing, with its folder) the database at `url`, e.g. `sqlite://data/chatgate.db`.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the file cannot be opened.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let path = options.get_filename();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options.clone())
            .await?;
        let background = SqlitePoolOptions::new()
            .max_connections(background_connections(max_connections))
            .min_connections(0)
            .acquire_timeout(BACKGROUND_ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self { pool, background })
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/sqlite")
    }
}

/// The database, store type and name the shared queries (`sql.rs`) are compiled for here.
type Db = Sqlite;
type Backend = SqliteStore;
const BACKEND: &str = "sqlite";
/// Whether a batch of message writes is one statement (SQLite has no data-modifying `WITH`) rather than
/// a transaction of one statement a table.
const WRITES_IN_ONE_STATEMENT: bool = false;
/// A write transaction holds the database's one write lock ([`Store::one_writer_at_a_time`]).
const ONE_WRITER_AT_A_TIME: bool = true;

/// The history turns of [`Store::prompt_history`] as one JSON array, newest first (the subquery `h`); `media`
/// is stored as JSON text, made JSON again with `json()`. Aggregate `ORDER BY` needs SQLite ≥ 3.44.
macro_rules! history_turns_json {
    () => {
        "json_group_array(json_array(h.id, h.role, h.content, h.message_type, json(h.media), h.content_tokens) \
         ORDER BY h.created_at DESC, h.id DESC)"
    };
}

#[path = "sql.rs"]
#[expect(
    clippy::duplicate_mod,
    reason = "the shared queries, compiled once per backend"
)]
mod sql;

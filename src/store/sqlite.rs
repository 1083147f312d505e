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
    /// The request pool opens no more than [`request_connections`] of `max_connections`: one a CPU core.
    /// Neither pool pings a connection before lending it (sqlx's `test_before_acquire`): a SQLite connection is
    /// a file this process holds open, which nothing outside can close, and the ping cost a hand-off to the
    /// connection's thread and back in front of every query (about 3 of 14 thread switches a message).
    ///
    /// # Errors
    /// [`StoreError::Database`] when the file cannot be opened.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let max_connections = request_connections(max_connections);
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
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let background = SqlitePoolOptions::new()
            .max_connections(background_connections(max_connections))
            .min_connections(0)
            .test_before_acquire(false)
            .acquire_timeout(BACKGROUND_ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self { pool, background })
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/sqlite")
    }
}

/// The connections a SQLite request pool opens: `max_connections`, but no more than the machine's CPU cores
/// (two on a one-core machine, so that a write waiting for SQLite's lock leaves a read its connection).
///
/// A SQLite query runs on its connection's thread and, with the database in the kernel's page cache, only
/// computes: more connections than cores run no more queries at once. Each one more costs its own page cache,
/// which in WAL mode is emptied at the start of its next read whenever another connection has written, and a
/// thread woken a query. Measured on 2 cores (20 streams × 100 one-token messages, `docs/benchmarks.md`): CPU
/// per message 850 / 795 µs with 16 connections, 695 / 670 with 4, 650 / 610 with 2. (SQLite was then built with
/// libsqlite3-sys's `SQLITE_ENABLE_MEMORY_MANAGEMENT`, under which all connections share one page cache behind
/// one mutex; `.cargo/config.toml` now builds it without.)
fn request_connections(max_connections: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = u32::try_from(cores).unwrap_or(u32::MAX);
    max_connections.min(cores.max(2)).max(1)
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

/// The history turns of [`Store::prompt_history`] as one JSON array, in no set order (the subquery `h` picks
/// them, newest first): each carries its `created_at` text, and `prompt_history` orders them. An aggregate
/// `ORDER BY` sorts them again in a temporary B-tree, 30 % of the statement's instructions at 200 turns
/// (callgrind).
///
/// Each turn's array is built inside `h` ([`history_turn!`]), from the row's columns as they lie in the page,
/// and the outer query joins the arrays' texts: built outside, from `h`'s columns, each column (the text
/// too) was first copied out of the page into the array's arguments (an `OP_Copy` a column): the statement
/// took 1.32 M instructions at 100 turns where it takes 0.94 M now (callgrind). `group_concat` keeps them JSON
/// without `json_group_array`, which needs its argument's JSON subtype, lost across a subquery.
macro_rules! history_turns_json {
    () => {
        "'[' || group_concat(h.turn, ',') || ']'"
    };
}
/// One turn's JSON array, selected as `turn` by the subquery of [`history_turns_json!`] from message `m`.
/// `media` is stored as JSON text, made JSON again with `json()`, which parses it: most messages have none, so
/// their `[]` is the constant `json_array()` instead (`json()` was 1.6 % of a message's instructions).
macro_rules! history_turn {
    () => {
        "json_array(m.id, m.role, m.content, m.message_type, \
         CASE WHEN m.media = '[]' THEN json_array() ELSE json(m.media) END, m.content_tokens, m.parent_id, \
         m.created_at) AS turn"
    };
}
/// Whether [`history_turns_json!`] gives the turns newest first: no, `prompt_history` orders them.
const HISTORY_TURNS_ORDERED: bool = false;

#[path = "sql.rs"]
#[expect(
    clippy::duplicate_mod,
    reason = "the shared queries, compiled once per backend"
)]
mod sql;

#[cfg(test)]
mod tests {
    use super::*;

    fn cores() -> u32 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    }

    #[tokio::test]
    async fn the_request_pool_opens_a_connection_a_core_and_never_more_than_configured() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("pool.db").display());
        let store = SqliteStore::connect(&url, 64).await.expect("store");
        let expected = cores().clamp(2, 64);
        assert_eq!(store.pool.options().get_max_connections(), expected);
        assert!(!store.pool.options().get_test_before_acquire());
        assert!(!store.background.options().get_test_before_acquire());
        assert_eq!(
            store.background.options().get_max_connections(),
            background_connections(expected)
        );
        // As many queries at once as there are connections, then one more: it waits for one to come back.
        let held: Vec<_> =
            futures::future::try_join_all((0..expected).map(|_| store.pool.acquire()))
                .await
                .expect("every connection of the pool");
        let more = tokio::time::timeout(Duration::from_millis(200), store.pool.acquire()).await;
        assert!(more.is_err(), "a connection past {expected} was opened");
        drop(held);
        store.ping().await.expect("a query once they are back");

        let one = SqliteStore::connect(&url, 1).await.expect("store");
        assert_eq!(one.pool.options().get_max_connections(), 1);
    }

    /// `.cargo/config.toml` builds the bundled SQLite without the page cache all connections share and without
    /// memory statistics: their two mutexes were 2.6 % of a message's instructions.
    #[tokio::test]
    async fn sqlite_is_built_without_the_shared_page_cache_or_memory_statistics() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("options.db").display());
        let store = SqliteStore::connect(&url, 1).await.expect("store");
        let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(&store.pool)
            .await
            .expect("compile options");
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    /// Migration 0007 rebuilds `messages` with the same checks written without `IN`: every row, reference,
    /// index and the trigger survive it, the checks still refuse what they refused, and a message insert no
    /// longer builds a temporary B-tree.
    #[tokio::test]
    async fn the_messages_rebuild_keeps_every_row_reference_and_rule() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("rebuild.db").display());
        let store = SqliteStore::connect(&url, 1).await.expect("store");
        let migrator = store.migrator();
        migrator
            .run_to(6, &store.pool)
            .await
            .expect("migrations up to 0006");
        let insert_message = "INSERT INTO messages (id, conversation_id, parent_id, role, content, message_type, \
             media, status, model, provider, finish_reason, error, created_at, updated_at, instance_id, \
             prompt_tokens_estimate, content_tokens) \
             VALUES ($1, 'c', $2, $3, $4, 'text', '[]', $5, NULL, NULL, NULL, NULL, $6, $6, NULL, NULL, $7)";
        sqlx::raw_sql(
            "INSERT INTO personas (id, slug, display_name, relationship, system_prompt, created_at, updated_at) \
                 VALUES ('p', 'p', 'P', 'friend', 's', 't', 't'); \
             INSERT INTO conversations (id, user_id, persona_id, created_at, updated_at, last_message_at) \
                 VALUES ('c', 'u', 'p', 't', 't', '2026-01-01'); \
             INSERT INTO media (id, user_id, content_type, size_bytes, sha256, storage_key, created_at) \
                 VALUES ('img', 'u', 'image/png', 1, 'h', 'k', 't');",
        )
        .execute(&store.pool)
        .await
        .expect("a persona, a conversation and a media record");
        let rows = [
            (
                "m1",
                None,
                "user",
                "hello",
                "complete",
                "2026-01-02",
                Some(5),
            ),
            (
                "m2",
                Some("m1"),
                "assistant",
                "hi — \"there\"",
                "complete",
                "2026-01-03",
                Some(4),
            ),
            (
                "m3",
                Some("m1"),
                "assistant",
                "a second try",
                "streaming",
                "2026-01-04",
                None,
            ),
        ];
        for (id, parent, role, content, status, at, tokens) in rows {
            sqlx::query(insert_message)
                .bind(id)
                .bind(parent)
                .bind(role)
                .bind(content)
                .bind(status)
                .bind(at)
                .bind(tokens)
                .execute(&store.pool)
                .await
                .expect("a message");
        }
        sqlx::raw_sql(
            "UPDATE messages SET instance_id = 'i', prompt_tokens_estimate = 9 WHERE id = 'm3'; \
             INSERT INTO message_media (message_id, media_id) VALUES ('m1', 'img'); \
             INSERT INTO usage_records (id, user_id, conversation_id, message_id, persona_id, model, upstream_model, \
                 provider, prompt_tokens, completion_tokens, estimated, cost_nanousd, duration_ms, created_at) \
                 VALUES ('r', 'u', 'c', 'm2', 'p', 'm', 'm', 'p', 1, 1, 0, 0, 1, 't');",
        )
        .execute(&store.pool)
        .await
        .expect("links to the messages");
        // Every column as an SQL literal (`quote`), so a value and its type are compared.
        let all = "SELECT quote(id), quote(conversation_id), quote(parent_id), quote(role), quote(content), \
             quote(message_type), quote(media), quote(status), quote(model), quote(provider), \
             quote(finish_reason), quote(error), quote(created_at), quote(updated_at), quote(instance_id), \
             quote(prompt_tokens_estimate), quote(content_tokens) FROM messages ORDER BY id";
        let dump = |rows: Vec<sqlx::sqlite::SqliteRow>| -> Vec<Vec<String>> {
            use sqlx::Row;
            rows.iter()
                .map(|row| (0..17).map(|i| row.get::<String, _>(i)).collect())
                .collect()
        };
        let before = dump(sqlx::query(all).fetch_all(&store.pool).await.expect("rows"));
        assert_eq!(before.len(), 3);

        store.migrate().await.expect("the rebuild");

        let after = dump(sqlx::query(all).fetch_all(&store.pool).await.expect("rows"));
        assert_eq!(after, before);
        let on: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&store.pool)
            .await
            .expect("pragma");
        assert_eq!(
            on, 1,
            "foreign keys are on again on the migration's connection"
        );
        let broken: Vec<(String,)> =
            sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
                .fetch_all(&store.pool)
                .await
                .expect("foreign key check");
        assert!(broken.is_empty(), "{broken:?}");
        let mut objects: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE tbl_name = 'messages' ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .expect("schema");
        objects.sort();
        assert_eq!(
            objects,
            [
                "messages",
                "messages_conversation_time",
                "messages_parent",
                "messages_streaming",
                "messages_touch_conversation",
                "sqlite_autoindex_messages_1",
            ]
        );

        // The rules: the same values refused, and nothing needs a temporary B-tree any more.
        for (role, status) in [
            ("robot", "complete"),
            ("user", "done"),
            ("User", "complete"),
        ] {
            let refused = sqlx::query(insert_message)
                .bind("bad")
                .bind(None::<&str>)
                .bind(role)
                .bind("x")
                .bind(status)
                .bind("2026-01-05")
                .bind(None::<i64>)
                .execute(&store.pool)
                .await;
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("CHECK")),
                "{role}/{status}: {refused:?}"
            );
        }
        let plan: Vec<String> =
            sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {insert_message}")))
                .bind("m9")
                .bind(None::<&str>)
                .bind("user")
                .bind("x")
                .bind("complete")
                .bind("2026-01-05")
                .bind(None::<i64>)
                .fetch_all(&store.pool)
                .await
                .expect("explain")
                .iter()
                .map(|op| sqlx::Row::get::<String, _>(op, "opcode"))
                .collect();
        assert!(plan.iter().any(|op| op == "Insert"), "{plan:?}");
        assert!(!plan.iter().any(|op| op == "OpenEphemeral"), "{plan:?}");

        // The trigger and the references: a new message touches its conversation; deleting the conversation
        // deletes its messages and their media links, and keeps the usage record without its message.
        sqlx::query(insert_message)
            .bind("m4")
            .bind(Some("m2"))
            .bind("user")
            .bind("and now")
            .bind("complete")
            .bind("2026-01-06")
            .bind(None::<i64>)
            .execute(&store.pool)
            .await
            .expect("a message after the rebuild");
        let last: String =
            sqlx::query_scalar("SELECT last_message_at FROM conversations WHERE id = 'c'")
                .fetch_one(&store.pool)
                .await
                .expect("conversation");
        assert_eq!(last, "2026-01-06");
        sqlx::query("DELETE FROM conversations WHERE id = 'c'")
            .execute(&store.pool)
            .await
            .expect("delete");
        let left: (i64, i64, Option<String>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM message_media), \
                    (SELECT message_id FROM usage_records WHERE id = 'r')",
        )
        .fetch_one(&store.pool)
        .await
        .expect("counts");
        assert_eq!(left, (0, 0, None));
    }
}

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
    /// [`StoreError::Database`] when the server cannot be reached; [`StoreError::TransactionPooler`] when `url`
    /// leads through a pooler in transaction mode (found by Supabase's address, or by probing where its
    /// statements run).
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        if is_supabase_transaction_pooler(url) {
            return Err(StoreError::TransactionPooler);
        }
        let warm = max_connections.min(WARM_CONNECTIONS);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(warm)
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)?;
        let background = PgPoolOptions::new()
            .max_connections(background_connections(max_connections))
            .min_connections(1)
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .acquire_timeout(BACKGROUND_ACQUIRE_TIMEOUT)
            .connect_lazy(url)?;
        // Open the first connections of both pools side by side. A TLS handshake costs about 90 ms with sqlx
        // 0.9.0, which does not set TCP_NODELAY (sqlx issue #4335): one after another, startup paid it for every
        // step.
        let (pooled, opened, opened_background) = futures::future::try_join3(
            transaction_pooled(url),
            futures::future::try_join_all((0..warm).map(|_| pool.acquire())),
            background.acquire(),
        )
        .await?;
        drop((opened, opened_background));
        if pooled {
            pool.close().await;
            background.close().await;
            return Err(StoreError::TransactionPooler);
        }
        Ok(Self { pool, background })
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/postgres")
    }
}

/// A pooled connection idle for less than this is handed out without a ping (HikariCP's
/// `aliveBypassWindowMs`, 500 ms by default, for the same reason).
const PING_WHEN_IDLE_FOR: Duration = Duration::from_millis(500);

/// sqlx's `test_before_acquire`, but only for a connection idle past [`PING_WHEN_IDLE_FOR`]: a ping is a round
/// trip to the server in front of every query, and under load connections come back within milliseconds of
/// their last query. A connection that broke since is found by its next query, which fails (`unavailable`), and
/// the pool then closes it (sqlx pings every connection on its way back to the pool).
fn ping_if_idle(
    conn: &mut sqlx::PgConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    use sqlx::Connection;
    Box::pin(async move {
        if meta.idle_for >= PING_WHEN_IDLE_FOR {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// Why chatgate refuses a transaction pooler, and what to use instead.
pub const TRANSACTION_POOLER: &str = "the database URL leads through a pooler in transaction mode (PgBouncer's \
    pool_mode = transaction, or Supabase's transaction pooler on port 6543): chatgate keeps prepared statements \
    on its connections, which transaction pooling hands to other clients between transactions. Use a session \
    pooler (Supabase: the same pooler host on port 5432) or a direct connection";

/// Supabase's transaction pooler by its address: `*.pooler.supabase.com` on port 6543 (its session pooler is
/// the same host on 5432).
fn is_supabase_transaction_pooler(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|url| {
        url.port() == Some(6543)
            && url
                .host_str()
                .is_some_and(|host| host.ends_with(".pooler.supabase.com"))
    })
}

/// Whether `url` leads through a transaction pooler, found by where its statements run: on a direct or
/// session-pooled connection every statement of a client runs in the same server process
/// (`pg_backend_pid()`); a transaction pooler lends that process to another client between transactions. So:
/// client A asks its pid; client B opens a transaction (a LIFO pooler such as PgBouncer gives it the process A
/// just returned) and asks; A asks again while B holds it. Pooled when B got A's process or A's moved. Simple
/// queries only, so the probe itself prepares nothing.
async fn transaction_pooled(url: &str) -> Result<bool, sqlx::Error> {
    use sqlx::{Connection, PgConnection, Row};
    async fn pid(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
        sqlx::raw_sql("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await?
            .try_get(0)
    }
    // Both connect at once: each TLS handshake costs ~90 ms (see `connect`). A client connection holds no server
    // process under a transaction pooler until its transaction, so B connecting early changes nothing below.
    let (mut a, mut b) =
        futures::future::try_join(PgConnection::connect(url), PgConnection::connect(url)).await?;
    let a_first = pid(&mut a).await?;
    sqlx::raw_sql("BEGIN").execute(&mut b).await?;
    let b_pid = pid(&mut b).await?;
    let a_second = pid(&mut a).await?;
    sqlx::raw_sql("ROLLBACK").execute(&mut b).await?;
    let _ = futures::future::join(a.close(), b.close()).await;
    Ok(b_pid == a_first || a_second != a_first)
}

/// The database, store type and name the shared queries (`sql.rs`) are compiled for here.
type Db = Postgres;
type Backend = PgStore;
const BACKEND: &str = "postgres";
/// Whether a batch of message writes is one statement (PostgreSQL runs data-modifying `WITH` parts) rather than
/// a transaction of one statement a table.
const WRITES_IN_ONE_STATEMENT: bool = true;
/// Write transactions run side by side; rows they both touch are locked row by row
/// ([`Store::one_writer_at_a_time`]).
const ONE_WRITER_AT_A_TIME: bool = false;

/// The history turns of [`Store::prompt_history`] as one JSON array, newest first (the subquery `h`). The
/// aggregate orders them itself, so they carry no `created_at`: `json_build_array` writes a `timestamptz` in
/// the session's time zone, whose text does not sort across a change of offset. Read as text (`JsonText`).
macro_rules! history_turns_json {
    () => {
        "json_agg(json_build_array(h.id, h.role, h.content, h.message_type, h.media, h.content_tokens, \
         h.parent_id) ORDER BY h.created_at DESC, h.id DESC)::text"
    };
}
/// What the subquery of [`history_turns_json!`] selects from message `m`: the columns it aggregates.
macro_rules! history_turn {
    () => {
        "m.id, m.role, m.content, m.message_type, m.media, m.content_tokens, m.parent_id, m.created_at"
    };
}
/// Whether [`history_turns_json!`] gives the turns newest first: yes.
const HISTORY_TURNS_ORDERED: bool = true;

#[path = "sql.rs"]
#[expect(
    clippy::duplicate_mod,
    reason = "the shared queries, compiled once per backend"
)]
mod sql;

//! Several instances, one gateway: what they share through Redis (`[redis]`). Without Redis none of this runs
//! and every part of chatgate keeps its in-process behaviour.
//!
//! - [`log::RedisLogs`]: each generation's event log mirrored into a Redis stream, so that a follower on any
//!   instance replays and follows it, and a cancel reaches its owner from anywhere.
//! - Owner leases ([`Cluster::run_leases`]): an instance renews its hold on its running generations; when a hold
//!   lapses, another instance closes the reply (`interrupted`, billed once) and ends its stream.
//! - [`limits`]: request rates (GCRA), concurrent generations, the per-user WebSocket connections and the token
//!   and cost budgets, counted cluster-wide.
//!
//! Every key starts with `redis.key_prefix` (`P` below). The keys, their types and expiries:
//!
//! ```text
//! P:gen:{id}               hash    the generation's meta: user_id, conversation_id, model, owner, boot
//!                                  24 h while it runs; generation.retention_secs after its end
//! P:gen:{id}:events        stream  its events, entry id `{seq}-0`, field `e` = the event as JSON
//!                                  (trimmed to generation.max_events), expiry as its meta
//! P:gen:{id}:cancel        string  the cancel reason, once someone asked; expiry as its meta
//! P:gen:{id}:watched       string  a follower on another instance reads it (the owner's unattended policy
//!                                  counts it); 3 s, renewed every second while it follows
//! P:conv:{id}:running      string  the id of the generation running in a conversation; 24 h, deleted at its end
//! P:leases                 zset    running generation id → its owner's lease deadline (ms, Redis clock)
//! P:instance:{instance}    string  an instance's liveness (its process's boot id), renewed with its leases;
//!                                  one lease
//! P:slots:{user}           zset    a user's running generations (slot id → lease deadline); 2 leases
//! P:ws:{user}              zset    a user's open WebSockets (connection id → lease deadline); 2 leases
//! P:rate:{user|ip}         string  the GCRA theoretical arrival time (ms); until it passes
//! P:budget:{user}:{day}    hash    tokens, nanousd spent plus reserved that UTC day (YYYY-MM-DD); 2 days
//! P:budget:{user}:{month}  hash    the same for the UTC month (YYYY-MM); 32 days
//! channel P:notify:{id}    "{seq} {event JSON}": the event just appended, for followers on other instances
//! channel P:cancel         "{id} {reason}" (wakes the owner; the cancel key is the durable copy)
//! ```

pub mod limits;
pub mod log;
pub mod reaper;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::RedisConfig;
use crate::id::Id;

/// While Redis is unreachable, how often a command is let through to find out whether it is back.
const PROBE: Duration = Duration::from_millis(250);

/// Lua: the server's clock in ms, shared by every script (so that no instance's clock matters).
const NOW_MS: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// The Redis connection and names every cluster part uses. Cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<ClusterInner>);

struct ClusterInner {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    instance_id: Arc<str>,
    /// This process's id: an instance restarted under the same name is another owner.
    boot: String,
    lease: Duration,
    timeout: Duration,
    /// Whether the last command succeeded; a change is logged once.
    up: AtomicBool,
    /// While Redis is unreachable, commands fail at once but for one try every [`PROBE`]: no request waits a
    /// command timeout for each of its Redis calls. Ms since `started`.
    last_try_ms: std::sync::atomic::AtomicU64,
    started: Instant,
    /// Redis answered again after failing: it may have restarted empty, so this instance's generations are
    /// published again at the next lease renewal.
    republish: AtomicBool,
    /// Writes queued for the writer task ([`Cluster::run_writer`]), in order.
    writes: mpsc::UnboundedSender<Write>,
    writes_rx: Mutex<Option<mpsc::UnboundedReceiver<Write>>>,
    /// Concurrency slots and WebSocket connections this instance holds, renewed with its leases.
    held: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.0.prefix)
            .field("instance_id", &self.0.instance_id)
            .finish_non_exhaustive()
    }
}

/// Redis did not answer as it should: the command failed, timed out, or the connection is down.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(#[from] pub redis::RedisError);

/// `/health`'s view of Redis.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RedisHealth {
    pub ok: bool,
    /// Round trip of a `PING`, in ms.
    pub latency_ms: Option<f64>,
    /// What failed, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One queued write (see [`Cluster::run_writer`]).
enum Write {
    /// Commands, sent in order with the others of the batch.
    Commands(Vec<redis::Cmd>),
    /// Commands built by the writer, off the caller's path (an event's: serializing it is the writer's work).
    Lazy(Box<dyn FnOnce() -> Vec<redis::Cmd> + Send>),
    /// Called once every write queued before it reached Redis.
    Then(Box<dyn FnOnce() + Send>),
}

impl Cluster {
    /// Connects to `config.url`.
    ///
    /// # Errors
    /// [`RedisError`] when the URL is bad or Redis does not answer.
    pub async fn connect(config: &RedisConfig, instance_id: Arc<str>) -> Result<Self, RedisError> {
        let client = redis::Client::open(config.url.expose_secret())?;
        let timeout = Duration::from_millis(config.command_timeout_ms);
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_with_config(client.clone(), manager).await?;
        let (writes, writes_rx) = mpsc::unbounded_channel();
        let cluster = Self(Arc::new(ClusterInner {
            client,
            conn,
            prefix: config.key_prefix.clone(),
            instance_id,
            boot: Id::new().to_string(),
            lease: Duration::from_millis(config.lease_ms),
            timeout,
            up: AtomicBool::new(true),
            last_try_ms: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
            republish: AtomicBool::new(false),
            writes,
            writes_rx: Mutex::new(Some(writes_rx)),
            held: Mutex::new(HashMap::new()),
        }));
        redis::cmd("PING")
            .query_async::<()>(&mut cluster.conn())
            .await?;
        Ok(cluster)
    }

    /// A handle on the shared connection (multiplexed; cheap).
    fn conn(&self) -> ConnectionManager {
        self.0.conn.clone()
    }

    /// This instance's name (`server.instance_id`).
    pub fn instance_id(&self) -> &str {
        &self.0.instance_id
    }

    /// This process's id (a fresh one at every start), kept in its liveness key and its generations' meta.
    pub fn boot(&self) -> &str {
        &self.0.boot
    }

    /// The owner lease (`redis.lease_ms`).
    pub fn lease(&self) -> Duration {
        self.0.lease
    }

    /// `P:` + `rest`.
    pub fn key(&self, rest: &str) -> String {
        let mut key = String::with_capacity(self.0.prefix.len() + 1 + rest.len());
        key.push_str(&self.0.prefix);
        key.push(':');
        key.push_str(rest);
        key
    }

    /// Runs one command (or script invocation) against the shared connection, noting whether Redis answered.
    ///
    /// # Errors
    /// [`RedisError`] when it failed or timed out (`redis.command_timeout_ms`).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.gate()?;
        let result = cmd.query_async(&mut self.conn()).await;
        self.note(result.as_ref().err());
        Ok(result?)
    }

    /// As [`Cluster::query`], for a script.
    ///
    /// # Errors
    /// [`RedisError`] when it failed or timed out.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.gate()?;
        let result = invocation.invoke_async(&mut self.conn()).await;
        self.note(result.as_ref().err());
        Ok(result?)
    }

    /// As [`Cluster::query`], for a pipeline.
    ///
    /// # Errors
    /// [`RedisError`] when it failed or timed out.
    pub async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.gate()?;
        let result = pipe.query_async(&mut self.conn()).await;
        self.note(result.as_ref().err());
        Ok(result?)
    }

    /// Lets a command through unless Redis is known unreachable and was tried less than [`PROBE`] ago.
    fn gate(&self) -> Result<(), RedisError> {
        if self.0.up.load(Ordering::SeqCst) {
            return Ok(());
        }
        let now = self.0.started.elapsed().as_millis() as u64;
        let last = self.0.last_try_ms.load(Ordering::SeqCst);
        if now.saturating_sub(last) < PROBE.as_millis() as u64 {
            return Err(RedisError(redis::RedisError::from((
                redis::ErrorKind::Io,
                "redis is unreachable (tried again every 250 ms)",
            ))));
        }
        self.0.last_try_ms.store(now, Ordering::SeqCst);
        Ok(())
    }

    /// Logs once when Redis stops answering and once when it is back.
    fn note(&self, error: Option<&redis::RedisError>) {
        let unreachable = error.is_some_and(|e| !is_server_error(e));
        let was_up = self.0.up.swap(!unreachable, Ordering::SeqCst);
        match (was_up, unreachable) {
            (true, true) => tracing::error!(
                error = %error.map(ToString::to_string).unwrap_or_default(),
                "redis is unreachable: generations keep streaming to this instance's followers; \
                 cross-instance resume and cancel, owner leases and shared limits pause (limits fall back to this instance's)"
            ),
            (false, false) => {
                tracing::warn!("redis is reachable again: shared state resumes");
                self.0.republish.store(true, Ordering::SeqCst);
            }
            _ => {}
        }
    }

    /// Whether the last command reached Redis.
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::SeqCst)
    }

    /// `PING` round trip, for `/health`.
    pub async fn health(&self) -> RedisHealth {
        let started = Instant::now();
        match self.query::<()>(&redis::cmd("PING")).await {
            Ok(()) => RedisHealth {
                ok: true,
                latency_ms: Some((started.elapsed().as_secs_f64() * 1e6).round() / 1e3),
                error: None,
            },
            Err(err) => RedisHealth {
                ok: false,
                latency_ms: None,
                error: Some(err.to_string()),
            },
        }
    }

    /// Queues commands for the writer task, after every write queued before them.
    fn write(&self, commands: Vec<redis::Cmd>) {
        // The receiver lives as long as the writer task, which lives as long as the process serves.
        let _ = self.0.writes.send(Write::Commands(commands));
    }

    /// Calls `done` once every write queued before it reached Redis.
    fn then(&self, done: impl FnOnce() + Send + 'static) {
        let _ = self.0.writes.send(Write::Then(Box::new(done)));
    }

    /// As [`Cluster::write`], the commands built by the writer task when it sends them.
    fn write_lazy(&self, build: impl FnOnce() -> Vec<redis::Cmd> + Send + 'static) {
        let _ = self.0.writes.send(Write::Lazy(Box::new(build)));
    }

    /// Sends the queued writes in order, many at once in one pipeline (one round trip however many generations
    /// stream). A batch that could not reach Redis is sent again once it answers: every command is idempotent
    /// (an event's explicit stream id refuses a second copy). At shutdown (`tasks` stopping, once the
    /// generations have ended) what is queued is sent once more, within a command timeout, and it returns.
    pub async fn run_writer(self, tasks: crate::tasks::Tasks) {
        let Some(mut rx) = self
            .0
            .writes_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        // The batch is the pipeline itself, kept as it is for a retry.
        let fresh = || {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            pipe
        };
        let mut batch = fresh();
        let mut after: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        let mut backoff = Duration::from_millis(50);
        let take = |write: Write, batch: &mut redis::Pipeline, after: &mut Vec<_>| {
            let commands = match write {
                Write::Commands(commands) => commands,
                Write::Lazy(build) => build(),
                Write::Then(done) => return after.push(done),
            };
            for cmd in commands {
                batch.add_command(cmd).ignore();
            }
        };
        let mut last_round = false;
        loop {
            if batch.is_empty() && after.is_empty() {
                if last_round {
                    return;
                }
                tokio::select! {
                    write = rx.recv() => match write {
                        Some(write) => take(write, &mut batch, &mut after),
                        None => return,
                    },
                    () = tasks.stopping() => last_round = true,
                }
            }
            while batch.len() < 2048 {
                match rx.try_recv() {
                    Ok(write) => take(write, &mut batch, &mut after),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                after.drain(..).for_each(|done| done());
                continue;
            }
            // Redis runs every command of a pipeline whatever the others answer; one it refuses (a duplicate
            // event after a retry) is not a reason to send the batch again.
            match self.pipeline::<()>(&batch).await {
                Ok(()) => {
                    batch = fresh();
                    after.drain(..).for_each(|done| done());
                    backoff = Duration::from_millis(50);
                }
                Err(RedisError(err)) if last_round || tasks.is_stopping() => {
                    tracing::warn!(error = %err, commands = batch.len(), "shutting down with writes redis did not take");
                    return;
                }
                Err(RedisError(err)) => {
                    tracing::debug!(error = %err, commands = batch.len(), "redis writes wait for redis");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.0
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// True for an error Redis itself answered (the command reached it and was refused), false for an unreachable,
/// slow or dropped connection.
fn is_server_error(err: &redis::RedisError) -> bool {
    matches!(
        err.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    ) && !err.is_timeout()
}

/// Renews the owner's leases: `ZADD P:leases XX (now + lease) id` for every id given (from `ARGV[3]`), and the
/// instance's own liveness key (its boot id, `ARGV[2]`); returns the ids Redis no longer had (it restarted, or a reaper took them), to publish again.
fn renew_script() -> redis::Script {
    redis::Script::new(&format!(
        "{NOW_MS} local lease = tonumber(ARGV[1]) local missing = {{}} \
         redis.call('SET', KEYS[2], ARGV[2], 'PX', lease) \
         for i = 3, #ARGV do \
           if redis.call('ZSCORE', KEYS[1], ARGV[i]) then redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i]) \
           else missing[#missing + 1] = ARGV[i] end \
         end return missing"
    ))
}

/// Renews, per key, one member's deadline and the key's own expiry (two leases). Without `XX`: a Redis that
/// restarted empty gets the holds back (a hold released meanwhile lingers one lease at most).
fn renew_members_script() -> redis::Script {
    redis::Script::new(&format!(
        "{NOW_MS} local lease = tonumber(ARGV[1]) \
         for i = 1, #KEYS do redis.call('ZADD', KEYS[i], now + lease, ARGV[i + 1]) \
         redis.call('PEXPIRE', KEYS[i], lease * 2) end return #KEYS"
    ))
}

impl Cluster {
    /// Renews this instance's leases every third of `redis.lease_ms`: its running generations (in `P:leases`),
    /// its concurrency slots and WebSocket connections; and reads the durable cancel requests of its
    /// generations, so that a cancel whose message was missed still stops its generation within a third of a
    /// lease.
    pub async fn run_leases(self, logs: Weak<log::LogsInner>) {
        let renew = renew_script();
        let renew_members = renew_members_script();
        let mut tick = tokio::time::interval(self.0.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(logs) = logs.upgrade() else {
                return;
            };
            if self.0.republish.swap(false, Ordering::SeqCst) {
                // Finished ones too: their followers elsewhere may re-attach within the retention time.
                for log in logs.owned_all() {
                    logs.publish_owned(&log, true);
                }
            }
            let owned = logs.owned_running();
            let mut invocation = renew.key(self.key("leases"));
            invocation.key(self.key(&format!("instance:{}", self.0.instance_id)));
            invocation
                .arg(self.0.lease.as_millis() as u64)
                .arg(&self.0.boot);
            for (id, _) in &owned {
                invocation.arg(id.to_string());
            }
            match self.invoke::<Vec<String>>(invocation).await {
                Ok(missing) => {
                    for id in missing.iter().filter_map(|id| id.parse::<Id>().ok()) {
                        if let Some((_, log)) = owned.iter().find(|(owned, _)| *owned == id) {
                            tracing::info!(generation_id = %id, "redis had lost a running generation: publishing it again");
                            logs.publish_owned(log, true);
                        }
                    }
                }
                Err(err) => tracing::debug!(error = %err, "renewing the generation leases failed"),
            }
            drop(logs);
            if !owned.is_empty() {
                self.apply_cancels(&owned).await;
            }
            let held: Vec<(String, String)> = self
                .held()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !held.is_empty() {
                let mut invocation = renew_members.prepare_invoke();
                invocation.arg(self.0.lease.as_millis() as u64);
                for (member, key) in &held {
                    invocation.key(key);
                    invocation.arg(member);
                }
                if let Err(err) = self.invoke::<i64>(invocation).await {
                    tracing::debug!(error = %err, "renewing the held slots failed");
                }
            }
        }
    }

    /// Reads the cancel keys of `owned` and cancels those asked to stop.
    async fn apply_cancels(&self, owned: &[(Id, Arc<log::OwnedLog>)]) {
        let mut cmd = redis::cmd("MGET");
        for (id, _) in owned {
            cmd.arg(self.key(&format!("gen:{id}:cancel")));
        }
        let reasons: Vec<Option<String>> = match self.query(&cmd).await {
            Ok(reasons) => reasons,
            Err(_) => return,
        };
        for ((_, log), reason) in owned.iter().zip(reasons) {
            if let Some(reason) = reason.as_deref().and_then(log::parse_reason) {
                log.cancel_here(reason);
            }
        }
    }
}

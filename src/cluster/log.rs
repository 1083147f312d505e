//! Generation event logs shared through Redis streams.
//!
//! The instance that runs a generation keeps its log in memory, exactly as without Redis (its own followers
//! read it there: the hot path gains nothing but a queue push per event), and mirrors every event into
//! `P:gen:{id}:events` with the entry id `{seq}-0`, one pipelined batch for all its generations at a time. An
//! instance asked for a generation it does not run opens the stream: it reads it from the start into a local
//! copy, then follows it: each `P:notify:{id}` message carries the event, appended at once when it is the next
//! one; on a gap, and every second whatever it heard, the copy reads the stream, so a missed message costs a
//! read, never an event. Entry ids are the seqs, so a reader knows at once what it has not
//! seen: seq-exact, no gap, no duplicate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{Cluster, NOW_MS};
use crate::domain::CancelReason;
use crate::event::{GenerationEvent, LoggedEvent};
use crate::id::Id;
use crate::stream::{
    EventLog, EventLogs, GenerationMeta, LogBounds, LogFull, MemoryLog, StopSignal,
};
use crate::tasks::Tasks;

/// How long a generation's keys live while it runs (a dead owner's are closed by the reaper long before).
const RUNNING_TTL_SECS: u64 = 24 * 3600;

/// How long a follower's mark on another instance's generation lasts (it is renewed every [`REREAD`]).
const WATCHED_TTL: Duration = Duration::from_secs(3);

/// Events read from a stream at once.
const READ_COUNT: usize = 1000;

/// A follower on another instance re-reads the stream this often even when no wake-up came.
const REREAD: Duration = Duration::from_secs(1);

/// The [`EventLogs`] of an instance sharing Redis.
#[derive(Clone)]
pub struct RedisLogs(Arc<LogsInner>);

/// What [`RedisLogs`] shares with its background tasks.
pub struct LogsInner {
    cluster: Cluster,
    bounds: LogBounds,
    retention: Duration,
    tasks: Tasks,
    /// This instance's generations.
    owned: Mutex<HashMap<Id, Weak<OwnedLog>>>,
    /// Other instances' generations followed here.
    remote: Mutex<HashMap<Id, Weak<RemoteLog>>>,
    /// Wake-ups of the followers of other instances' generations.
    wakeups: Mutex<HashMap<Id, Weak<Notify>>>,
    /// The pub/sub connection's subscribing half, while connected.
    sink: Mutex<Option<redis::aio::PubSubSink>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RedisLogs {
    /// Logs bounded by `bounds`, kept `retention` after their end, their background work on `tasks`.
    pub fn new(cluster: Cluster, bounds: LogBounds, retention: Duration, tasks: Tasks) -> Self {
        Self(Arc::new(LogsInner {
            cluster,
            bounds,
            retention,
            tasks,
            owned: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            wakeups: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
        }))
    }

    /// The shared part, for the lease and reaper services.
    pub fn inner(&self) -> Weak<LogsInner> {
        Arc::downgrade(&self.0)
    }

    /// Starts the services: the writer, the pub/sub listener, the lease renewal and the reaper of dead owners'
    /// generations (which needs the store to close their replies: see [`super::reaper`]).
    pub fn start(&self, reaper: super::reaper::Reaper) {
        let cluster = self.0.cluster.clone();
        // Finite work, not a service: at shutdown it sends what the ending generations queued, then returns.
        self.0
            .tasks
            .spawn(cluster.clone().run_writer(self.0.tasks.clone()));
        self.0
            .tasks
            .spawn_service(run_pubsub(cluster.clone(), self.inner()));
        self.0
            .tasks
            .spawn_service(cluster.clone().run_leases(self.inner()));
        self.0.tasks.spawn_service(reaper.run(self.inner()));
    }
}

impl LogsInner {
    /// This instance's generations still running.
    pub(super) fn owned_running(&self) -> Vec<(Id, Arc<OwnedLog>)> {
        let mut owned = lock(&self.owned);
        owned.retain(|_, log| log.strong_count() > 0);
        owned
            .iter()
            .filter_map(|(id, log)| log.upgrade().map(|log| (*id, log)))
            .filter(|(_, log)| log.local.terminal().is_none())
            .collect()
    }

    /// This instance's generations, running or finished and still held.
    pub(super) fn owned_all(&self) -> Vec<Arc<OwnedLog>> {
        lock(&self.owned)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    pub(super) fn owns_running(&self, id: Id) -> bool {
        lock(&self.owned)
            .get(&id)
            .and_then(Weak::upgrade)
            .is_some_and(|log| log.local.terminal().is_none())
    }

    pub(super) fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Wakes every follower of another instance's generation (after a reconnect: they re-read).
    fn wake_all(&self) {
        for notify in lock(&self.wakeups).values().filter_map(Weak::upgrade) {
            notify.notify_one();
        }
    }

    fn wakeup(&self, id: Id) {
        if let Some(notify) = lock(&self.wakeups).get(&id).and_then(Weak::upgrade) {
            notify.notify_one();
        }
    }

    /// Appends a wake-up's event to the followed copy here; false when that copy must read its stream.
    fn deliver(&self, id: Id, notice: &str) -> bool {
        let log = lock(&self.remote).get(&id).and_then(Weak::upgrade);
        log.is_some_and(|log| log.offer(notice))
    }

    fn owned(&self, id: Id) -> Option<Arc<OwnedLog>> {
        lock(&self.owned).get(&id).and_then(Weak::upgrade)
    }

    async fn subscribe(&self, id: Id) {
        let sink = lock(&self.sink).clone();
        if let Some(mut sink) = sink
            && let Err(err) = sink
                .subscribe(self.cluster.key(&format!("notify:{id}")))
                .await
        {
            tracing::debug!(error = %err, "subscribing to a generation's wake-ups failed: it is re-read every second");
        }
    }

    async fn unsubscribe(&self, id: Id) {
        let sink = lock(&self.sink).clone();
        if let Some(mut sink) = sink {
            let _ = sink
                .unsubscribe(self.cluster.key(&format!("notify:{id}")))
                .await;
        }
    }

    /// The commands that publish a whole generation (its meta, lease and every event so far): at its start, and
    /// again (`again`) when Redis lost it: a restart may have left a stream holding only the events written
    /// since, so it is written anew, in order, before any later event. Marks the log published once written.
    pub(super) fn publish_owned(&self, log: &Arc<OwnedLog>, again: bool) {
        let cluster = &self.cluster;
        let meta = &log.meta;
        let id = meta.id;
        let meta_key = cluster.key(&format!("gen:{id}"));
        let mut commands = vec![
            redis::cmd("HSET")
                .arg(&meta_key)
                .arg("user_id")
                .arg(&meta.user_id)
                .arg("conversation_id")
                .arg(
                    meta.conversation_id
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                )
                .arg("model")
                .arg(&meta.model)
                .arg("owner")
                .arg(cluster.instance_id())
                .arg("boot")
                .arg(cluster.boot())
                .to_owned(),
            redis::cmd("EXPIRE")
                .arg(&meta_key)
                .arg(RUNNING_TTL_SECS)
                .to_owned(),
            redis::cmd("EVAL")
                .arg(format!(
                    "{NOW_MS} redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])"
                ))
                .arg(1)
                .arg(cluster.key("leases"))
                .arg(cluster.lease().as_millis() as u64)
                .arg(id.to_string())
                .to_owned(),
        ];
        if let Some(conversation_id) = meta.conversation_id {
            commands.push(
                redis::cmd("SET")
                    .arg(cluster.key(&format!("conv:{conversation_id}:running")))
                    .arg(id.to_string())
                    .arg("EX")
                    .arg(RUNNING_TTL_SECS)
                    .to_owned(),
            );
        }
        if again {
            commands.push(
                redis::cmd("DEL")
                    .arg(cluster.key(&format!("gen:{id}:events")))
                    .to_owned(),
            );
        }
        let mut events = Vec::new();
        log.local.read_after(0, usize::MAX, &mut events);
        for event in &events {
            commands.extend(self.event_commands(meta, event));
        }
        cluster.write(commands);
        let weak = Arc::downgrade(log);
        cluster.then(move || {
            if let Some(log) = weak.upgrade() {
                log.is_published.store(true, Ordering::Release);
                log.published.notify_waiters();
            }
        });
    }

    /// The commands that append one event (and, for the terminal one, let the generation's keys expire and
    /// release its lease).
    pub(super) fn event_commands(
        &self,
        meta: &GenerationMeta,
        event: &LoggedEvent,
    ) -> Vec<redis::Cmd> {
        let cluster = &self.cluster;
        let id = meta.id;
        let events_key = cluster.key(&format!("gen:{id}:events"));
        let json = serde_json::to_string(&event.event).unwrap_or_else(|_| "{}".into());
        // The wake-up carries the event itself, so that a follower elsewhere appends it without reading the
        // stream back (it reads the stream only on a gap).
        let notice = format!("{} {json}", event.seq);
        let mut commands = Vec::with_capacity(3);
        commands.push(
            redis::cmd("XADD")
                .arg(&events_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.bounds.max_events.saturating_add(16))
                .arg(format!("{}-0", event.seq))
                .arg("e")
                .arg(json)
                .to_owned(),
        );
        if event.seq == 1 {
            // The first event creates the stream: it expires with the generation's meta.
            commands.push(
                redis::cmd("EXPIRE")
                    .arg(&events_key)
                    .arg(RUNNING_TTL_SECS)
                    .to_owned(),
            );
        }
        commands.push(
            redis::cmd("PUBLISH")
                .arg(cluster.key(&format!("notify:{id}")))
                .arg(notice)
                .to_owned(),
        );
        if event.kind().is_terminal() {
            commands.extend(end_commands(cluster, meta, self.retention));
        }
        commands
    }
}

/// Once a generation ended: its keys expire after the retention time, its lease and its conversation's
/// running mark go.
fn end_commands(cluster: &Cluster, meta: &GenerationMeta, retention: Duration) -> Vec<redis::Cmd> {
    let id = meta.id;
    let retention = retention.as_secs().max(1);
    let mut commands: Vec<redis::Cmd> = ["", ":events", ":cancel"]
        .iter()
        .map(|suffix| {
            redis::cmd("EXPIRE")
                .arg(cluster.key(&format!("gen:{id}{suffix}")))
                .arg(retention)
                .to_owned()
        })
        .collect();
    commands.push(
        redis::cmd("ZREM")
            .arg(cluster.key("leases"))
            .arg(id.to_string())
            .to_owned(),
    );
    if let Some(conversation_id) = meta.conversation_id {
        commands.push(
            redis::cmd("EVAL")
                .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
                .arg(1)
                .arg(cluster.key(&format!("conv:{conversation_id}:running")))
                .arg(id.to_string())
                .to_owned(),
        );
    }
    commands
}

impl EventLogs for RedisLogs {
    fn create(&self, meta: &GenerationMeta) -> Arc<dyn EventLog> {
        let log = Arc::new(OwnedLog {
            local: MemoryLog::new(self.0.bounds),
            meta: Arc::new(meta.clone()),
            logs: Arc::downgrade(&self.0),
            is_published: AtomicBool::new(false),
            published: Notify::new(),
        });
        lock(&self.0.owned).insert(meta.id, Arc::downgrade(&log));
        self.0.publish_owned(&log, false);
        log
    }

    fn open(&self, id: Id) -> BoxFuture<'_, Option<(GenerationMeta, Arc<dyn EventLog>)>> {
        Box::pin(async move {
            if let Some(log) = lock(&self.0.remote).get(&id).and_then(Weak::upgrade) {
                return Some((log.meta.clone(), log as Arc<dyn EventLog>));
            }
            let cluster = &self.0.cluster;
            // One round trip: the meta and the events so far, read while the wake-ups are subscribed to (an
            // event published before the subscription took is found by the next one's seq, or the re-read).
            let notify = Arc::new(Notify::new());
            lock(&self.0.wakeups).insert(id, Arc::downgrade(&notify));
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL")
                .arg(cluster.key(&format!("gen:{id}")))
                .cmd("XRANGE")
                .arg(cluster.key(&format!("gen:{id}:events")))
                .arg("1-0")
                .arg("+")
                .arg("COUNT")
                .arg(READ_COUNT);
            let (read, ()) = tokio::join!(
                cluster
                    .pipeline::<(HashMap<String, String>, redis::streams::StreamRangeReply)>(&pipe),
                self.0.subscribe(id)
            );
            let found = read
                .ok()
                .filter(|(fields, _)| fields.contains_key("user_id"));
            let Some((fields, events)) = found else {
                lock(&self.0.wakeups).remove(&id);
                self.0.unsubscribe(id).await;
                return None;
            };
            let meta = GenerationMeta {
                id,
                user_id: fields.get("user_id")?.clone(),
                conversation_id: fields.get("conversation_id").and_then(|c| c.parse().ok()),
                model: fields.get("model").cloned().unwrap_or_default(),
            };
            let log = Arc::new(RemoteLog {
                appending: Mutex::new(()),
                cache: MemoryLog::new(LogBounds {
                    max_events: usize::MAX,
                    max_text_bytes: usize::MAX,
                }),
                meta: meta.clone(),
                cluster: cluster.clone(),
                stop: StopSignal::default(),
            });
            {
                let mut remote = lock(&self.0.remote);
                remote.retain(|_, log| log.strong_count() > 0);
                remote.insert(id, Arc::downgrade(&log));
            }
            // What exists is read before the log is handed out, so a finished generation is whole at once.
            if log.absorb(events) == READ_COUNT && log.fill().await.is_err() {
                lock(&self.0.wakeups).remove(&id);
                self.0.unsubscribe(id).await;
                return None;
            }
            self.0.tasks.spawn(follow(
                Arc::downgrade(&log),
                notify,
                Arc::downgrade(&self.0),
            ));
            Some((meta, log as Arc<dyn EventLog>))
        })
    }

    fn running_in(&self, conversation_id: Id) -> BoxFuture<'_, Option<Id>> {
        Box::pin(async move {
            let cluster = &self.0.cluster;
            let id: Option<String> = cluster
                .query(
                    redis::cmd("GET").arg(cluster.key(&format!("conv:{conversation_id}:running"))),
                )
                .await
                .ok()?;
            id?.parse().ok()
        })
    }
}

/// Keeps a followed copy of another instance's generation up to date until it ends or nobody holds it.
async fn follow(log: Weak<RemoteLog>, notify: Arc<Notify>, logs: Weak<LogsInner>) {
    let mut id = None;
    let mut marked: Option<std::time::Instant> = None;
    loop {
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        {
            let Some(log) = log.upgrade() else { break };
            id = Some(log.meta.id);
            // Someone here follows it: the owner's unattended policy must not stop it.
            if marked.is_none_or(|at| at.elapsed() >= REREAD) {
                marked = Some(std::time::Instant::now());
                log.cluster.write(vec![
                    redis::cmd("SET")
                        .arg(log.cluster.key(&format!("gen:{}:watched", log.meta.id)))
                        .arg(log.cluster.instance_id())
                        .arg("PX")
                        .arg(WATCHED_TTL.as_millis() as u64)
                        .to_owned(),
                ]);
            }
            // An error (Redis away) is retried at the next wake-up or second.
            if log.fill().await.is_ok() && log.cache.terminal().is_some() {
                break;
            }
        }
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep(REREAD) => {}
        }
    }
    if let (Some(id), Some(logs)) = (id, logs.upgrade()) {
        lock(&logs.wakeups).remove(&id);
        logs.unsubscribe(id).await;
    }
}

/// A generation this instance runs: its in-memory log, mirrored to Redis through the writer.
pub struct OwnedLog {
    local: MemoryLog,
    meta: Arc<GenerationMeta>,
    logs: Weak<LogsInner>,
    /// Its meta reached Redis: another instance can open it.
    is_published: AtomicBool,
    published: Notify,
}

impl OwnedLog {
    /// Cancels it here (a cancel asked on another instance).
    pub(super) fn cancel_here(&self, reason: CancelReason) {
        if self.local.cancel_reason().is_none() && self.local.terminal().is_none() {
            tracing::info!(generation_id = %self.meta.id, reason = reason.as_str(), "cancelled from another instance");
        }
        self.local.cancel(reason);
    }
}

impl EventLog for OwnedLog {
    fn append(&self, event: GenerationEvent) -> Result<u64, LogFull> {
        let logged = self.local.append_logged(event)?;
        let seq = logged.seq;
        if let Some(logs) = self.logs.upgrade() {
            let meta = Arc::clone(&self.meta);
            let weak = Arc::downgrade(&logs);
            logs.cluster.write_lazy(move || {
                weak.upgrade()
                    .map(|logs| logs.event_commands(&meta, &logged))
                    .unwrap_or_default()
            });
        }
        Ok(seq)
    }

    fn read_after(&self, after: u64, max: usize, out: &mut Vec<Arc<LoggedEvent>>) {
        self.local.read_after(after, max, out);
    }

    fn wait_after(&self, after: u64) -> BoxFuture<'_, ()> {
        self.local.wait_after(after)
    }

    fn terminal(&self) -> Option<Arc<LoggedEvent>> {
        self.local.terminal()
    }

    fn cancel(&self, reason: CancelReason) {
        self.local.cancel(reason);
    }

    fn cancel_reason(&self) -> Option<CancelReason> {
        self.local.cancel_reason()
    }

    fn cancelled(&self) -> BoxFuture<'_, ()> {
        self.local.cancelled()
    }

    /// Waits for the writer to have written its meta, at most `redis.command_timeout_ms` (Redis away: the
    /// client is answered anyway, and can follow it here).
    fn published(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(timeout) = self.logs.upgrade().map(|logs| logs.cluster.0.timeout) else {
                return;
            };
            let wait = async {
                loop {
                    let notified = self.published.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if self.is_published.load(Ordering::Acquire) {
                        return;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(timeout, wait).await;
        })
    }

    /// `P:gen:{id}:watched` exists: a follower on another instance marked it within [`WATCHED_TTL`]. When
    /// Redis does not answer: false (the policy applies as on one instance).
    fn followed_elsewhere(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let Some(logs) = self.logs.upgrade() else {
                return false;
            };
            let key = logs.cluster.key(&format!("gen:{}:watched", self.meta.id));
            logs.cluster
                .query::<bool>(redis::cmd("EXISTS").arg(key))
                .await
                .unwrap_or(false)
        })
    }
}

/// Another instance's generation, as read from its stream.
pub struct RemoteLog {
    cache: MemoryLog,
    /// Held while an event is checked and appended (wake-ups and stream reads both append).
    appending: Mutex<()>,
    meta: GenerationMeta,
    cluster: Cluster,
    /// A cancel asked here.
    stop: StopSignal,
}

impl RemoteLog {
    /// Reads the events past the copy's last one into it.
    /// Appends the event `seq` if it is the next one; true when the copy has it now (or had it), false when
    /// events before it are missing (the stream must be read).
    fn push(&self, seq: u64, event: GenerationEvent) -> bool {
        let _one_at_a_time = lock(&self.appending);
        let expected = self.cache.last_seq() + 1;
        if seq < expected {
            return true;
        }
        seq == expected && self.cache.append_logged(event).is_ok()
    }

    /// A wake-up's `"{seq} {event}"`: appended when it is the next event; false when the stream must be read.
    fn offer(&self, notice: &str) -> bool {
        let Some((seq, json)) = notice.split_once(' ') else {
            return false;
        };
        let (Ok(seq), Ok(event)) = (seq.parse::<u64>(), serde_json::from_str(json)) else {
            return false;
        };
        self.push(seq, event)
    }

    async fn fill(&self) -> Result<(), super::RedisError> {
        let key = self.cluster.key(&format!("gen:{}:events", self.meta.id));
        loop {
            let after = self.cache.last_seq();
            let reply: redis::streams::StreamRangeReply = self
                .cluster
                .query(
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(format!("{}-0", after + 1))
                        .arg("+")
                        .arg("COUNT")
                        .arg(READ_COUNT),
                )
                .await?;
            if self.absorb(reply) < READ_COUNT {
                return Ok(());
            }
        }
    }

    /// Appends a stream read's events that follow the copy's last one; returns how many were read.
    fn absorb(&self, reply: redis::streams::StreamRangeReply) -> usize {
        let read = reply.ids.len();
        for entry in reply.ids {
            let seq = entry
                .id
                .split_once('-')
                .and_then(|(ms, _)| ms.parse::<u64>().ok())
                .unwrap_or(0);
            let expected = self.cache.last_seq() + 1;
            if seq < expected {
                continue;
            }
            let event = entry
                .get::<String>("e")
                .and_then(|json| serde_json::from_str::<GenerationEvent>(&json).ok());
            let Some(event) = event.filter(|_| seq == expected) else {
                // Trimmed or unreadable: nothing past it can be relayed in order.
                tracing::warn!(generation_id = %self.meta.id, seq, expected, "a generation's shared log has a gap; its followers here stop at it");
                return 0;
            };
            // A wake-up may have brought it meanwhile: `push` keeps each seq once.
            if !self.push(seq, event) {
                return 0;
            }
        }
        read
    }
}

/// `"{reason}"` as written by a cancel.
pub(super) fn parse_reason(reason: &str) -> Option<CancelReason> {
    CancelReason::ALL
        .iter()
        .copied()
        .find(|r| r.as_str() == reason)
}

impl EventLog for RemoteLog {
    fn append(&self, _event: GenerationEvent) -> Result<u64, LogFull> {
        // Only the owner appends; a copy refuses, as a full log would.
        Err(LogFull {
            events: 0,
            text_bytes: 0,
        })
    }

    fn read_after(&self, after: u64, max: usize, out: &mut Vec<Arc<LoggedEvent>>) {
        self.cache.read_after(after, max, out);
    }

    fn wait_after(&self, after: u64) -> BoxFuture<'_, ()> {
        self.cache.wait_after(after)
    }

    fn terminal(&self) -> Option<Arc<LoggedEvent>> {
        self.cache.terminal()
    }

    /// Records the cancel where the owner reads it (`P:gen:{id}:cancel`, durable) and wakes the owner
    /// (`P:cancel`); both go through the writer, so a Redis hiccup delays them but does not lose them.
    fn cancel(&self, reason: CancelReason) {
        self.stop.cancel(reason);
        let id = self.meta.id;
        self.cluster.write(vec![
            redis::cmd("SET")
                .arg(self.cluster.key(&format!("gen:{id}:cancel")))
                .arg(reason.as_str())
                .arg("NX")
                .arg("EX")
                .arg(RUNNING_TTL_SECS)
                .to_owned(),
            redis::cmd("PUBLISH")
                .arg(self.cluster.key("cancel"))
                .arg(format!("{id} {}", reason.as_str()))
                .to_owned(),
        ]);
    }

    fn cancel_reason(&self) -> Option<CancelReason> {
        self.stop.reason()
    }

    fn cancelled(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop.cancelled())
    }
}

/// The pub/sub listener: cancels for this instance's generations, wake-ups for the followers of others'.
/// Reconnects by itself; after a reconnect every follower re-reads and every cancel key is read again.
async fn run_pubsub(cluster: Cluster, logs: Weak<LogsInner>) {
    let cancel_channel = cluster.key("cancel");
    let notify_prefix = cluster.key("notify:");
    loop {
        let connected =
            tokio::time::timeout(cluster.0.timeout, cluster.0.client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let (mut sink, mut messages) = pubsub.split();
        let Some(inner) = logs.upgrade() else { return };
        *lock(&inner.sink) = Some(sink.clone());
        if sink.subscribe(&cancel_channel).await.is_err() {
            continue;
        }
        let followed: Vec<Id> = lock(&inner.wakeups).keys().copied().collect();
        for id in followed {
            let _ = sink.subscribe(cluster.key(&format!("notify:{id}"))).await;
        }
        inner.wake_all();
        let owned = inner.owned_running();
        drop(inner);
        if !owned.is_empty() {
            cluster.apply_cancels(&owned).await;
        }
        while let Some(message) = messages.next().await {
            let Some(inner) = logs.upgrade() else { return };
            let channel = message.get_channel_name();
            if channel == cancel_channel {
                let payload: String = message.get_payload().unwrap_or_default();
                if let Some((id, reason)) = payload.split_once(' ')
                    && let (Ok(id), Some(reason)) = (id.parse::<Id>(), parse_reason(reason))
                    && let Some(log) = inner.owned(id)
                {
                    log.cancel_here(reason);
                }
            } else if let Some(id) = channel.strip_prefix(&notify_prefix)
                && let Ok(id) = id.parse::<Id>()
            {
                let notice: String = message.get_payload().unwrap_or_default();
                if !inner.deliver(id, &notice) {
                    inner.wakeup(id);
                }
            }
        }
        if let Some(inner) = logs.upgrade() {
            *lock(&inner.sink) = None;
        }
        tracing::debug!("the redis pub/sub connection closed: reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

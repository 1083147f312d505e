//! The generation hub: the registry of this process's generations, each a handle on its event log, with the
//! subscriber counts that drive the unattended policy and the shutdown that lets running generations finish.
//!
//! A subscriber keeps its own cursor into the log and reads what it has not seen yet; the generation never
//! waits for a subscriber, so a slow or gone client cannot slow it, and any client can re-attach from any seq
//! it saw. The hub holds no store and no HTTP: what a generation does is the chat service's business.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio_util::task::TaskTracker;

use super::log::{EventLog, EventLogs, GenerationMeta, LogFull};
use crate::config::DisconnectPolicy;
use crate::domain::CancelReason;
use crate::event::{GenerationEvent, LoggedEvent};
use crate::id::Id;
use crate::tasks::Tasks;

/// Events a subscriber reads from the log at once.
const READ_BATCH: usize = 16;

/// What to do with generations nobody follows.
#[derive(Debug, Clone, Copy)]
pub struct UnattendedPolicy {
    pub on_disconnect: DisconnectPolicy,
    /// Grace period of [`DisconnectPolicy::Cancel`].
    pub grace: Duration,
    /// Cap on running generations with no subscriber.
    pub max_unattended: usize,
}

impl Default for UnattendedPolicy {
    fn default() -> Self {
        Self {
            on_disconnect: DisconnectPolicy::Drain,
            grace: Duration::from_secs(10),
            max_unattended: 1000,
        }
    }
}

/// A generation, running or recently finished: who it belongs to, and its event log. Its id is the id of the
/// assistant message it writes.
pub struct Generation {
    pub meta: GenerationMeta,
    log: Arc<dyn EventLog>,
    subscribers: AtomicUsize,
    finished_at: Mutex<Option<Instant>>,
    upstream_ttft: OnceLock<Duration>,
    upstream_model: OnceLock<String>,
    /// Stop when the last follower leaves, whatever the policy ([`Generation::cancel_when_left`]).
    cancel_when_left: AtomicBool,
    hub: Weak<HubInner>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("meta", &self.meta)
            .field("subscribers", &self.subscribers())
            .finish_non_exhaustive()
    }
}

/// Counts a subscriber for as long as it lives (an SSE stream, a JSON answer waiting).
#[derive(Debug)]
pub struct SubscriberGuard(Arc<Generation>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        metrics::gauge!("chatgate_active_subscribers").decrement(1.0);
        if self.0.subscribers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.on_unattended();
        }
    }
}

impl Generation {
    pub fn id(&self) -> Id {
        self.meta.id
    }

    /// The user who started it.
    pub fn user_id(&self) -> &str {
        &self.meta.user_id
    }

    /// Appends an event (see [`EventLog::append`]); a terminal event marks the generation finished.
    ///
    /// # Errors
    /// [`LogFull`] past the log's bounds.
    pub fn emit(&self, event: GenerationEvent) -> Result<u64, LogFull> {
        let terminal = event.kind().is_terminal();
        let seq = self.log.append(event)?;
        if terminal {
            metrics::gauge!("chatgate_active_generations").decrement(1.0);
            *self
                .finished_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        }
        Ok(seq)
    }

    /// The terminal event, once it ended.
    pub fn terminal(&self) -> Option<Arc<LoggedEvent>> {
        self.log.terminal()
    }

    /// Whether it ended.
    pub fn is_finished(&self) -> bool {
        self.terminal().is_some()
    }

    /// Waits for the terminal event.
    pub async fn finished(&self) -> Arc<LoggedEvent> {
        let mut seen = 0;
        loop {
            if let Some(terminal) = self.log.terminal() {
                return terminal;
            }
            let mut events = Vec::new();
            self.log.read_after(seen, usize::MAX, &mut events);
            seen = events.last().map_or(seen, |e| e.seq);
            if events.is_empty() {
                self.log.wait_after(seen).await;
            }
        }
    }

    /// Resolves once other instances can find it (see [`EventLog::published`]).
    pub async fn published(&self) {
        self.log.published().await;
    }

    /// The text streamed so far.
    pub fn text(&self) -> String {
        self.log.text()
    }

    /// Asks the generation to stop; it saves what it has.
    pub fn cancel(&self, reason: CancelReason) {
        self.log.cancel(reason);
    }

    /// Resolves when cancelled.
    pub async fn cancelled(&self) {
        self.log.cancelled().await;
    }

    /// Why it was cancelled, if it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.log.cancel_reason()
    }

    /// Counts a subscriber until the guard is dropped.
    pub fn attach(self: &Arc<Self>) -> SubscriberGuard {
        metrics::gauge!("chatgate_active_subscribers").increment(1.0);
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        SubscriberGuard(Arc::clone(self))
    }

    /// Subscribers following it now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::SeqCst)
    }

    /// Events with seq > `after`, then live ones, ending after the terminal event (at once when `after` is at or
    /// past it). The subscriber is counted (see [`Generation::attach`]) until the stream is dropped.
    pub fn subscribe(
        self: &Arc<Self>,
        after: u64,
    ) -> impl Stream<Item = Arc<LoggedEvent>> + Send + 'static + use<> {
        let generation = Arc::clone(self);
        let guard = self.attach();
        async_stream::stream! {
            let _guard = guard;
            let mut seen = after;
            // A replayed backlog is read in slices: a follower holds at most this many events at once.
            let mut batch = Vec::with_capacity(READ_BATCH);
            loop {
                generation.log.read_after(seen, READ_BATCH, &mut batch);
                if batch.is_empty() {
                    // Already past the terminal event: nothing more will ever come.
                    if generation.log.terminal().is_some_and(|t| t.seq <= seen) {
                        return;
                    }
                    generation.log.wait_after(seen).await;
                    continue;
                }
                for event in batch.drain(..) {
                    seen = event.seq;
                    let ended = event.kind().is_terminal();
                    yield event;
                    if ended {
                        return;
                    }
                }
            }
        }
    }

    /// Records the upstream's time to first token (once), for the gateway-overhead metric.
    pub fn set_upstream_ttft(&self, ttft: Duration) {
        let _ = self.upstream_ttft.set(ttft);
    }

    /// The upstream's time to first token, once a delta came (generations of this process only).
    pub fn upstream_ttft(&self) -> Option<Duration> {
        self.upstream_ttft.get().copied()
    }

    /// Records the upstream model that answered (once, at its first token): a fallback's, when the alias's own
    /// model failed before it.
    pub fn set_upstream_model(&self, model: &str) {
        let _ = self.upstream_model.set(model.to_string());
    }

    /// The upstream model that answered, once a delta came (generations of this process only).
    pub fn upstream_model(&self) -> Option<&str> {
        self.upstream_model.get().map(String::as_str)
    }

    /// Cancels the generation (`CancelReason::Disconnected`) as soon as its last follower leaves, instead of
    /// applying the disconnect policy: for a request whose closing connection means "stop".
    pub fn cancel_when_left(&self) {
        self.cancel_when_left.store(true, Ordering::Release);
    }

    /// Finished more than `retention` ago.
    fn expired(&self, retention: Duration) -> bool {
        self.finished_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() >= retention)
    }

    /// The last subscriber left a running generation: apply the unattended policy.
    fn on_unattended(self: &Arc<Self>) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        if self.is_finished() {
            return;
        }
        if self.cancel_when_left.load(Ordering::Acquire) {
            tracing::info!(generation_id = %self.id(), "its request went away: cancelling");
            self.cancel(CancelReason::Disconnected);
            return;
        }
        match hub.policy.on_disconnect {
            DisconnectPolicy::Cancel => {
                let generation = Arc::clone(self);
                let grace = hub.policy.grace;
                hub.tasks.spawn(async move {
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep(grace) => {}
                            _ = generation.finished() => return,
                        }
                        // A subscriber here re-arms this when it leaves; one on another instance is asked for.
                        if generation.subscribers() > 0 {
                            return;
                        }
                        if !generation.log.followed_elsewhere().await {
                            tracing::info!(generation_id = %generation.id(), "no subscriber came back: cancelling");
                            generation.cancel(CancelReason::Disconnected);
                            return;
                        }
                    }
                });
            }
            DisconnectPolicy::Drain => {
                let max = hub.policy.max_unattended;
                if (Hub { inner: hub }).unattended() > max {
                    tracing::warn!(generation_id = %self.id(), "too many unattended generations: cancelling this one");
                    self.cancel(CancelReason::Unattended);
                }
            }
        }
    }
}

/// All generations of this process, and the logs of other instances' through [`EventLogs::open`].
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

struct HubInner {
    generations: Mutex<HashMap<Id, Arc<Generation>>>,
    logs: Box<dyn EventLogs>,
    /// The generation tasks, for the shutdown grace period; each is also tracked by `tasks`.
    running: TaskTracker,
    tasks: Tasks,
    retention: Duration,
    accepting: AtomicBool,
    policy: UnattendedPolicy,
}

/// The hub refuses new generations: the server is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server is shutting down")]
pub struct ShuttingDown;

impl Hub {
    /// A hub whose logs come from `logs`, keeping finished generations for `retention`, running their tasks
    /// on `tasks`.
    pub fn new(
        logs: impl EventLogs,
        retention: Duration,
        policy: UnattendedPolicy,
        tasks: Tasks,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                generations: Mutex::new(HashMap::new()),
                logs: Box::new(logs),
                running: TaskTracker::new(),
                tasks,
                retention,
                accepting: AtomicBool::new(true),
                policy,
            }),
        }
    }

    fn generations(&self) -> MutexGuard<'_, HashMap<Id, Arc<Generation>>> {
        self.inner
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a generation and runs `task` for it as a tracked background task that no connection owns.
    ///
    /// # Errors
    /// [`ShuttingDown`] once shutdown has begun.
    pub fn start<F, Fut>(
        &self,
        meta: GenerationMeta,
        task: F,
    ) -> Result<Arc<Generation>, ShuttingDown>
    where
        F: FnOnce(Arc<Generation>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(ShuttingDown);
        }
        let generation = Arc::new(Generation {
            log: self.inner.logs.create(&meta),
            meta,
            subscribers: AtomicUsize::new(0),
            finished_at: Mutex::new(None),
            upstream_ttft: OnceLock::new(),
            upstream_model: OnceLock::new(),
            cancel_when_left: AtomicBool::new(false),
            hub: Arc::downgrade(&self.inner),
        });
        self.generations()
            .insert(generation.id(), Arc::clone(&generation));
        metrics::counter!("chatgate_generations_started_total", "model" => generation.meta.model.clone())
            .increment(1);
        metrics::gauge!("chatgate_active_generations").increment(1.0);
        let run = self
            .inner
            .running
            .track_future(task(Arc::clone(&generation)));
        self.inner.tasks.spawn(run);
        Ok(generation)
    }

    /// A generation by id, if it is running or finished within the retention time: this process's, or one
    /// whose log another instance shares.
    pub async fn get(&self, id: Id) -> Option<Arc<Generation>> {
        let retention = self.inner.retention;
        if let Some(generation) = self
            .generations()
            .get(&id)
            .filter(|g| !g.expired(retention))
        {
            return Some(Arc::clone(generation));
        }
        let (meta, log) = self.inner.logs.open(id).await?;
        Some(Arc::new(Generation {
            meta,
            log,
            subscribers: AtomicUsize::new(0),
            finished_at: Mutex::new(None),
            upstream_ttft: OnceLock::new(),
            upstream_model: OnceLock::new(),
            cancel_when_left: AtomicBool::new(false),
            hub: Weak::new(),
        }))
    }

    /// Drops finished generations older than the retention time; called periodically.
    pub fn sweep_expired(&self) {
        let retention = self.inner.retention;
        self.generations().retain(|_, g| !g.expired(retention));
    }

    /// Number of generations still running.
    pub fn running(&self) -> usize {
        self.generations()
            .values()
            .filter(|g| !g.is_finished())
            .count()
    }

    /// The running generation of a conversation (the latest started, when several run), whoever's: this
    /// process's, else one another instance runs (through [`EventLogs::running_in`]).
    pub async fn running_in(&self, conversation_id: Id) -> Option<Arc<Generation>> {
        let local = self
            .generations()
            .values()
            .filter(|g| g.meta.conversation_id == Some(conversation_id) && !g.is_finished())
            .max_by_key(|g| g.id())
            .cloned();
        if local.is_some() {
            return local;
        }
        let id = self.inner.logs.running_in(conversation_id).await?;
        self.get(id).await.filter(|g| !g.is_finished())
    }

    /// Running generations of one user.
    pub fn running_for(&self, user_id: &str) -> usize {
        self.generations()
            .values()
            .filter(|g| g.user_id() == user_id && !g.is_finished())
            .count()
    }

    /// Running generations that nobody follows.
    pub fn unattended(&self) -> usize {
        self.generations()
            .values()
            .filter(|g| g.subscribers() == 0 && !g.is_finished())
            .count()
    }

    /// True when one more unattended generation would pass `max_unattended`.
    pub fn unattended_full(&self) -> bool {
        self.unattended() >= self.inner.policy.max_unattended
    }

    /// Graceful shutdown: refuse new generations, let running ones finish for up to `grace`, then cancel the
    /// rest (they save their partial text as `interrupted`) and wait for every generation task, saves included.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        self.inner.running.close();
        let running = self.running();
        if running > 0 {
            tracing::info!(
                running,
                grace_secs = grace.as_secs(),
                "waiting for running generations to finish"
            );
        }
        if tokio::time::timeout(grace, self.inner.running.wait())
            .await
            .is_err()
        {
            let generations: Vec<_> = self.generations().values().cloned().collect();
            tracing::warn!(
                running = self.running(),
                "grace period over: cancelling the remaining generations"
            );
            for generation in generations {
                generation.cancel(CancelReason::Shutdown);
            }
            self.inner.running.wait().await;
        }
    }
}

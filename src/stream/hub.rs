//! The generation hub: every running generation, its seq-numbered event log, and its subscribers.
//!
//! A generation appends events to its log and bumps a `watch` channel holding the latest seq; each subscriber
//! keeps its own cursor into the log and reads what it has not seen yet. The generation never waits for a
//! subscriber, so a slow or gone client cannot slow it, and any client can re-attach from any seq it saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::Stream;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DisconnectPolicy;
use crate::store::{Checkpoint, Id, Message, NewMessage, Store};

/// The kind of a generation event; the SSE `event:` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `{message}`: the user message just saved; only on the stream of the request that sent it, with seq 0.
    UserMessage,
    /// `{generation_id, message_id, conversation_id, model}`
    Start,
    /// `{text}`
    Delta,
    /// `{prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, estimated, cost_usd}`
    Usage,
    /// `{message, usage, finish_reason}`: the generation ended and its message is saved. Terminal.
    Done,
    /// `{error, message, details}`: the generation failed; what was streamed is saved. Terminal.
    Error,
}

impl EventKind {
    /// The SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserMessage => "user_message",
            EventKind::Start => "start",
            EventKind::Delta => "delta",
            EventKind::Usage => "usage",
            EventKind::Done => "done",
            EventKind::Error => "error",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Done | EventKind::Error)
    }
}

/// One logged event, encoded once for every subscriber: `frame` is its SSE form
/// (`id: <seq>\nevent: <kind>\ndata: <json>\n\n`), which also holds its JSON data.
#[derive(Debug)]
pub struct GenerationEvent {
    /// 1-based, monotonic within the generation: the SSE `id:`.
    pub seq: u64,
    pub kind: EventKind,
    frame: String,
    data: std::ops::Range<usize>,
}

impl GenerationEvent {
    /// Encodes an event whose data is the JSON `data`.
    pub fn new(seq: u64, kind: EventKind, data: &str) -> Self {
        let mut frame = String::with_capacity(data.len() + 32);
        frame.push_str("id: ");
        frame.push_str(itoa::Buffer::new().format(seq));
        frame.push_str("\nevent: ");
        frame.push_str(kind.as_str());
        frame.push_str("\ndata: ");
        let start = frame.len();
        frame.push_str(data);
        let end = frame.len();
        frame.push_str("\n\n");
        Self {
            seq,
            kind,
            frame,
            data: start..end,
        }
    }

    /// The event's JSON data.
    pub fn data(&self) -> &str {
        &self.frame[self.data.clone()]
    }

    /// The event as an SSE frame.
    pub fn sse_frame(&self) -> &str {
        &self.frame
    }
}

/// Why a generation was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    /// A user asked for it: status `cancelled`.
    User = 1,
    /// The server is shutting down and the grace period ran out: status `interrupted`.
    Shutdown = 2,
    /// The last subscriber left and the `cancel` disconnect policy applies: status `cancelled`.
    Disconnected = 3,
    /// Too many generations ran with nobody following them: status `cancelled`.
    Unattended = 4,
}

impl CancelReason {
    /// The saved message's `finish_reason`.
    pub fn finish_reason(self) -> &'static str {
        match self {
            CancelReason::User => "cancelled",
            CancelReason::Shutdown => "shutdown",
            CancelReason::Disconnected => "client_disconnected",
            CancelReason::Unattended => "unattended_limit",
        }
    }
}

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

/// How a generation ended, for callers that wait for it (the JSON answer).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The saved assistant message; `None` only when it could not be saved.
    pub message: Option<Message>,
    /// The upstream (or persistence) failure, when the generation failed.
    pub error: Option<crate::error::ApiError>,
}

#[derive(Debug, Default)]
struct LogState {
    events: Vec<Arc<GenerationEvent>>,
    text: String,
    outcome: Option<Arc<Outcome>>,
}

/// A running (or recently finished) generation. Its id is the id of the assistant message it writes.
#[derive(Debug)]
pub struct Generation {
    pub id: Id,
    pub conversation_id: Id,
    pub user_id: String,
    /// Model alias.
    pub model: String,
    state: Mutex<LogState>,
    latest: watch::Sender<u64>,
    cancel: CancellationToken,
    cancel_reason: AtomicU8,
    finished_at: Mutex<Option<Instant>>,
    subscribers: AtomicUsize,
    hub: Weak<HubInner>,
    upstream_ttft: std::sync::OnceLock<Duration>,
    checkpoint: Mutex<Option<CheckpointSlot>>,
}

/// What the checkpointer keeps for one generation.
#[derive(Debug)]
struct CheckpointSlot {
    row: Checkpoint,
    written_len: Option<usize>,
    written_at: Instant,
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

    /// The last subscriber left a running generation: apply the unattended policy.
    fn on_unattended(self: &Arc<Self>) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        if self.outcome_now().is_some() {
            return;
        }
        match hub.policy.on_disconnect {
            DisconnectPolicy::Cancel => {
                let generation = Arc::clone(self);
                let grace = hub.policy.grace;
                hub.tracker.spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(grace) => {
                            if generation.subscribers() == 0 {
                                tracing::info!(generation_id = %generation.id, "no subscriber came back: cancelling");
                                generation.cancel(CancelReason::Disconnected);
                            }
                        }
                        _ = generation.outcome() => {}
                    }
                });
            }
            DisconnectPolicy::Drain => {
                let max = hub.policy.max_unattended;
                if (Hub { inner: hub }).unattended() > max {
                    tracing::warn!(generation_id = %self.id, "too many unattended generations: cancelling this one");
                    self.cancel(CancelReason::Unattended);
                }
            }
        }
    }

    /// Has the hub's checkpointer write this generation's row (`template`, with the text so far) from its first
    /// token on.
    pub fn enable_checkpoints(&self, template: NewMessage, prompt_tokens_estimate: i64) {
        *self
            .checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(CheckpointSlot {
            row: Checkpoint {
                message: template,
                prompt_tokens_estimate,
            },
            written_len: None,
            written_at: Instant::now(),
        });
    }

    /// Records the upstream's time to first token (once).
    pub fn set_upstream_ttft(&self, ttft: Duration) {
        let _ = self.upstream_ttft.set(ttft);
    }

    /// The upstream's time to first token, once a delta came.
    pub fn upstream_ttft(&self) -> Option<Duration> {
        self.upstream_ttft.get().copied()
    }

    /// Finished more than `retention` ago.
    fn expired(&self, retention: Duration) -> bool {
        self.finished_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() >= retention)
    }

    /// Length of the text streamed so far, in bytes.
    pub fn text_len(&self) -> usize {
        self.state().text.len()
    }
    fn state(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding this lock cannot leave the log inconsistent (pushes are atomic), so recover.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends an event and wakes subscribers; returns its seq.
    pub fn emit(&self, kind: EventKind, data: String) -> u64 {
        let seq = {
            let mut state = self.state();
            let seq = state.events.len() as u64 + 1;
            state
                .events
                .push(Arc::new(GenerationEvent::new(seq, kind, &data)));
            seq
        };
        self.latest.send_replace(seq);
        seq
    }

    /// Appends a delta: logs it and extends the running text.
    pub fn emit_delta(&self, text: &str) -> u64 {
        #[derive(Serialize)]
        struct Delta<'a> {
            text: &'a str,
        }
        let data = serde_json::to_string(&Delta { text }).unwrap_or_default();
        let seq = {
            let mut state = self.state();
            state.text.push_str(text);
            let seq = state.events.len() as u64 + 1;
            state
                .events
                .push(Arc::new(GenerationEvent::new(seq, EventKind::Delta, &data)));
            seq
        };
        self.latest.send_replace(seq);
        seq
    }

    /// The events logged so far.
    pub fn events_now(&self) -> Vec<Arc<GenerationEvent>> {
        self.state().events.clone()
    }

    /// The text streamed so far.
    pub fn text(&self) -> String {
        self.state().text.clone()
    }

    /// Records the outcome, then appends the terminal event, so that whoever sees the terminal event finds
    /// the outcome.
    pub fn finish(&self, outcome: Outcome, kind: EventKind, data: String) {
        metrics::gauge!("chatgate_active_generations").decrement(1.0);
        self.state().outcome = Some(Arc::new(outcome));
        self.emit(kind, data);
        *self
            .finished_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// The outcome, once finished.
    pub fn outcome_now(&self) -> Option<Arc<Outcome>> {
        self.state().outcome.clone()
    }

    /// Waits for the end of the generation.
    pub async fn outcome(&self) -> Arc<Outcome> {
        let mut rx = self.latest.subscribe();
        loop {
            if let Some(outcome) = self.outcome_now() {
                return outcome;
            }
            // The sender lives as long as `self`, so `changed` only fails if the generation is gone.
            if rx.changed().await.is_err() {
                return Arc::new(Outcome {
                    message: None,
                    error: None,
                });
            }
        }
    }

    /// Asks the generation to stop; it saves what it has.
    pub fn cancel(&self, reason: CancelReason) {
        let _ = self.cancel_reason.compare_exchange(
            0,
            reason as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.cancel.cancel();
    }

    /// Resolves when cancelled.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Why it was cancelled, if it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        match self.cancel_reason.load(Ordering::SeqCst) {
            1 => Some(CancelReason::User),
            2 => Some(CancelReason::Shutdown),
            3 => Some(CancelReason::Disconnected),
            4 => Some(CancelReason::Unattended),
            _ => None,
        }
    }

    /// Events with seq > `after`, then live ones, ending after the terminal event. The subscriber is counted
    /// (see [`Generation::attach`]) until the stream is dropped.
    pub fn subscribe(
        self: &Arc<Self>,
        after: u64,
    ) -> impl Stream<Item = Arc<GenerationEvent>> + Send + 'static + use<> {
        let generation = Arc::clone(self);
        let guard = self.attach();
        let mut rx = generation.latest.subscribe();
        async_stream::stream! {
            let _guard = guard;
            let mut next = usize::try_from(after).unwrap_or(usize::MAX);
            loop {
                // Mark the current value seen *before* reading the log: anything appended later wakes us.
                rx.borrow_and_update();
                // One event at a time, by index: no copy of the log, no allocation per wake-up.
                                loop {
                    let event = generation.state().events.get(next).cloned();
                    let Some(event) = event else { break };
                    next += 1;
                    let ended = event.kind.is_terminal();
                    yield event;
                    if ended {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// All generations of this process.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    generations: Mutex<HashMap<Id, Arc<Generation>>>,
    tracker: TaskTracker,
    retention: Duration,
    accepting: AtomicBool,
    policy: UnattendedPolicy,
}

/// The hub refuses new generations: the server is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server is shutting down")]
pub struct ShuttingDown;

impl Hub {
    /// A hub keeping finished generations' logs for `retention`.
    pub fn new(retention: Duration, policy: UnattendedPolicy) -> Self {
        Self {
            inner: Arc::new(HubInner {
                generations: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
                retention,
                accepting: AtomicBool::new(true),
                policy,
            }),
        }
    }

    /// Running generations of one user.
    pub fn running_for(&self, user_id: &str) -> usize {
        self.generations()
            .values()
            .filter(|g| g.user_id == user_id && g.outcome_now().is_none())
            .count()
    }

    /// Running generations that nobody follows.
    pub fn unattended(&self) -> usize {
        self.generations()
            .values()
            .filter(|g| g.subscribers() == 0 && g.outcome_now().is_none())
            .count()
    }

    /// True when one more unattended generation would pass `max_unattended`.
    pub fn unattended_full(&self) -> bool {
        self.unattended() >= self.inner.policy.max_unattended
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
        id: Id,
        conversation_id: Id,
        user_id: &str,
        model: &str,
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
            id,
            conversation_id,
            user_id: user_id.to_string(),
            model: model.to_string(),
            state: Mutex::new(LogState::default()),
            latest: watch::Sender::new(0),
            cancel: CancellationToken::new(),
            cancel_reason: AtomicU8::new(0),
            finished_at: Mutex::new(None),
            subscribers: AtomicUsize::new(0),
            hub: Arc::downgrade(&self.inner),
            upstream_ttft: std::sync::OnceLock::new(),
            checkpoint: Mutex::new(None),
        });
        self.generations().insert(id, Arc::clone(&generation));
        metrics::counter!("chatgate_generations_started_total", "model" => model.to_string())
            .increment(1);
        metrics::gauge!("chatgate_active_generations").increment(1.0);
        self.inner.tracker.spawn(task(Arc::clone(&generation)));
        Ok(generation)
    }

    /// A generation by id, if it is running or finished within the retention time.
    pub fn get(&self, id: Id) -> Option<Arc<Generation>> {
        let retention = self.inner.retention;
        self.generations()
            .get(&id)
            .filter(|g| !g.expired(retention))
            .cloned()
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
            .filter(|g| g.outcome_now().is_none())
            .count()
    }

    /// Writes, in one transaction, the rows of every running generation whose text grew since its last
    /// checkpoint, or whose last write is older than `heartbeat`. Called every `checkpoint_interval_ms` by one
    /// task, so the database sees one batch per interval however many replies stream.
    pub async fn write_checkpoints(
        &self,
        store: &dyn Store,
        instance_id: &str,
        heartbeat: Duration,
    ) {
        let due: Vec<(Arc<Generation>, usize, Checkpoint)> = {
            let generations: Vec<Arc<Generation>> = self.generations().values().cloned().collect();
            generations
                .into_iter()
                .filter(|g| g.outcome_now().is_none())
                .filter_map(|g| {
                    let len = g.text_len();
                    let mut row = {
                        let slot = g
                            .checkpoint
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let slot = slot.as_ref()?;
                        let due = len > 0
                            && (slot.written_len != Some(len)
                                || slot.written_at.elapsed() >= heartbeat);
                        if !due {
                            return None;
                        }
                        slot.row.clone()
                    };
                    row.message.content = g.text();
                    Some((g, len, row))
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let rows: Vec<Checkpoint> = due.iter().map(|(_, _, row)| row.clone()).collect();
        let started = Instant::now();
        let written = store.checkpoint_messages(&rows, instance_id).await;
        metrics::histogram!("chatgate_db_write_seconds", "op" => "checkpoint")
            .record(started.elapsed().as_secs_f64());
        match written {
            Ok(()) => {
                for (generation, len, _) in due {
                    if let Some(slot) = generation
                        .checkpoint
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .as_mut()
                    {
                        slot.written_len = Some(len);
                        slot.written_at = Instant::now();
                    }
                }
            }
            Err(err) => tracing::warn!(rows = rows.len(), error = %err, "checkpoint batch failed"),
        }
    }

    /// Graceful shutdown: refuse new generations, let running ones finish for up to `grace`, then cancel the
    /// rest (they save their partial text as `interrupted`) and wait for every task, saves included.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        self.inner.tracker.close();
        let running = self.running();
        if running > 0 {
            tracing::info!(
                running,
                grace_secs = grace.as_secs(),
                "waiting for running generations to finish"
            );
        }
        if tokio::time::timeout(grace, self.inner.tracker.wait())
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
            self.inner.tracker.wait().await;
        }
    }
}

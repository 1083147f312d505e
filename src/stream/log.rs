//! The event log of one generation, behind a small trait: the generation appends, followers read from any seq
//! and wait for the next event, anyone may ask it to stop. Today's implementation keeps it in this process
//! ([`MemoryLog`]); one shared by several instances (Redis streams) implements the same two traits and nothing
//! else changes.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::CancelReason;
use crate::event::{GenerationEvent, LoggedEvent};
use crate::id::Id;

/// Who a generation belongs to and what it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationMeta {
    /// The generation's id: the id of the assistant message it writes.
    pub id: Id,
    /// The user who started it; nobody else may follow or cancel it.
    pub user_id: String,
    /// `None` for a stateless (OpenAI-compatible) generation.
    pub conversation_id: Option<Id>,
    /// The model alias asked for.
    pub model: String,
}

/// How large one generation's log may grow. Only deltas are refused past it: the few other events a generation
/// appends (`start`, `usage`, the terminal `done` or `error`) always fit, so a generation that reaches the bound
/// still reports its usage and ends with an `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// Events: a delta that would be past this many events in all is refused.
    pub max_events: usize,
    /// Bytes of delta text.
    pub max_text_bytes: usize,
}

impl Default for LogBounds {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_text_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The log is at its bound: the event was not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the generation's event log is full ({events} events, {text_bytes} bytes of text)")]
pub struct LogFull {
    pub events: usize,
    pub text_bytes: usize,
}

/// One generation's seq-numbered event log and its stop signal.
pub trait EventLog: Send + Sync + 'static {
    /// Appends an event and wakes the followers; returns its seq. Nothing is appended after a terminal event
    /// (`done`, `error`).
    ///
    /// # Errors
    /// [`LogFull`] for a delta past the [`LogBounds`], or for any event after the terminal one.
    fn append(&self, event: GenerationEvent) -> Result<u64, LogFull>;

    /// Adds to `out` the events with seq > `after`, in order, at most `max` of them.
    fn read_after(&self, after: u64, max: usize, out: &mut Vec<Arc<LoggedEvent>>);

    /// Resolves once an event with seq > `after` exists (at once if one does).
    fn wait_after(&self, after: u64) -> BoxFuture<'_, ()>;

    /// The terminal event, once there is one.
    fn terminal(&self) -> Option<Arc<LoggedEvent>>;

    /// The text of every delta so far.
    fn text(&self) -> String {
        let mut events = Vec::new();
        self.read_after(0, usize::MAX, &mut events);
        events
            .iter()
            .filter_map(|e| match &e.event {
                GenerationEvent::Delta(delta) => Some(delta.text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Asks the generation to stop (it saves what it has); the first reason given wins.
    fn cancel(&self, reason: CancelReason);

    /// Why it was asked to stop, if it was.
    fn cancel_reason(&self) -> Option<CancelReason>;

    /// Resolves once [`EventLog::cancel`] was called.
    fn cancelled(&self) -> BoxFuture<'_, ()>;

    /// Resolves once another instance can open it (its owner's record reached the shared store), or once that
    /// has taken too long; at once for the in-process log. A 202 waits for it, since its client may re-attach
    /// anywhere.
    fn published(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Whether a follower on another instance is reading it now (the unattended policy counts it). The
    /// in-process log has no other instance: false.
    fn followed_elsewhere(&self) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(false))
    }
}

/// Where the logs of generations are created and found.
pub trait EventLogs: Send + Sync + 'static {
    /// A new, empty log.
    fn create(&self, meta: &GenerationMeta) -> Arc<dyn EventLog>;

    /// The log of a generation this process does not run (another instance's), with its owner; `None` when
    /// unknown or expired. The in-process implementation knows only its own.
    fn open(&self, id: Id) -> BoxFuture<'_, Option<(GenerationMeta, Arc<dyn EventLog>)>>;

    /// The generation running in a conversation on another instance, if any (the in-process implementation
    /// knows none).
    fn running_in(&self, conversation_id: Id) -> BoxFuture<'_, Option<Id>> {
        let _ = conversation_id;
        Box::pin(std::future::ready(None))
    }
}

/// The in-process log: events in a `Vec` under a mutex, the latest seq in a `watch` channel.
#[derive(Debug)]
pub struct MemoryLog {
    state: Mutex<LogState>,
    latest: watch::Sender<u64>,
    bounds: LogBounds,
    stop: StopSignal,
}

#[derive(Debug, Default)]
struct LogState {
    events: Vec<Arc<LoggedEvent>>,
    /// Bytes of delta text logged (the text itself is in the deltas).
    text_bytes: usize,
    ended: bool,
}

impl MemoryLog {
    pub fn new(bounds: LogBounds) -> Self {
        Self {
            state: Mutex::new(LogState::default()),
            latest: watch::Sender::new(0),
            bounds,
            stop: StopSignal::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding this lock cannot leave the log inconsistent (pushes are atomic), so recover.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MemoryLog {
    /// As [`EventLog::append`], returning the logged event itself (for a log that also mirrors it elsewhere).
    ///
    /// # Errors
    /// [`LogFull`], as [`EventLog::append`].
    pub fn append_logged(&self, event: GenerationEvent) -> Result<Arc<LoggedEvent>, LogFull> {
        let terminal = event.kind().is_terminal();
        let logged = {
            let mut state = self.state();
            let full = LogFull {
                events: state.events.len(),
                text_bytes: state.text_bytes,
            };
            if state.ended {
                return Err(full);
            }
            let bytes = match &event {
                GenerationEvent::Delta(delta) => Some(delta.text.len()),
                GenerationEvent::ToolCall(call) => {
                    Some(call.arguments.len() + call.name.as_ref().map_or(0, String::len))
                }
                _ => None,
            };
            if let Some(bytes) = bytes {
                if state.events.len() >= self.bounds.max_events
                    || state.text_bytes + bytes > self.bounds.max_text_bytes
                {
                    return Err(full);
                }
                state.text_bytes += bytes;
            }
            state.ended = terminal;
            let seq = state.events.len() as u64 + 1;
            let logged = LoggedEvent::new(seq, event);
            state.events.push(Arc::clone(&logged));
            logged
        };
        self.latest.send_replace(logged.seq);
        Ok(logged)
    }

    /// The seq of the last event logged (0 when none).
    pub fn last_seq(&self) -> u64 {
        *self.latest.borrow()
    }
}

impl EventLog for MemoryLog {
    fn append(&self, event: GenerationEvent) -> Result<u64, LogFull> {
        self.append_logged(event).map(|logged| logged.seq)
    }

    fn read_after(&self, after: u64, max: usize, out: &mut Vec<Arc<LoggedEvent>>) {
        let state = self.state();
        let from = usize::try_from(after).unwrap_or(usize::MAX);
        if let Some(events) = state.events.get(from..) {
            out.extend(events.iter().take(max).cloned());
        }
    }

    fn wait_after(&self, after: u64) -> BoxFuture<'_, ()> {
        let mut rx = self.latest.subscribe();
        Box::pin(async move {
            // The sender lives as long as `self`, so this only fails if the log is gone.
            let _ = rx.wait_for(|&seq| seq > after).await;
        })
    }

    fn terminal(&self) -> Option<Arc<LoggedEvent>> {
        let state = self.state();
        if !state.ended {
            return None;
        }
        state.events.last().cloned()
    }

    fn cancel(&self, reason: CancelReason) {
        self.stop.cancel(reason);
    }

    fn cancel_reason(&self) -> Option<CancelReason> {
        self.stop.reason()
    }

    fn cancelled(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop.cancelled())
    }
}

/// A generation's request to stop, with its reason: the first reason given wins.
#[derive(Debug, Default)]
pub struct StopSignal {
    token: CancellationToken,
    /// 1-based index in [`CancelReason::ALL`]; 0: not asked.
    reason: AtomicU8,
}

impl StopSignal {
    /// Asks to stop; a later reason does not replace the first.
    pub fn cancel(&self, reason: CancelReason) {
        let code = CancelReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| i as u8 + 1);
        let _ = self
            .reason
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }

    /// The first reason given, if any.
    pub fn reason(&self) -> Option<CancelReason> {
        match self.reason.load(Ordering::SeqCst) {
            0 => None,
            code => CancelReason::ALL.get(usize::from(code) - 1).copied(),
        }
    }

    /// Resolves once [`StopSignal::cancel`] was called.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }
}

/// Creates [`MemoryLog`]s; knows no generation of another process.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryLogs {
    pub bounds: LogBounds,
}

impl EventLogs for MemoryLogs {
    fn create(&self, _meta: &GenerationMeta) -> Arc<dyn EventLog> {
        Arc::new(MemoryLog::new(self.bounds))
    }

    fn open(&self, _id: Id) -> BoxFuture<'_, Option<(GenerationMeta, Arc<dyn EventLog>)>> {
        Box::pin(std::future::ready(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Failed, Failure};

    fn failed() -> GenerationEvent {
        GenerationEvent::Error(Box::new(Failed {
            failure: Failure {
                kind: crate::error::ErrorKind::Internal,
                error: "x".into(),
                message: "x".into(),
                details: serde_json::json!({}),
                retry_after_secs: None,
            },
            saved: None,
        }))
    }

    #[test]
    fn the_bound_refuses_deltas_but_not_the_end() {
        let log = MemoryLog::new(LogBounds {
            max_events: 3,
            max_text_bytes: 5,
        });
        assert_eq!(log.append(GenerationEvent::delta("abc")), Ok(1));
        assert!(
            log.append(GenerationEvent::delta("def")).is_err(),
            "6 bytes"
        );
        assert_eq!(log.append(GenerationEvent::delta("de")), Ok(2));
        assert_eq!(log.append(GenerationEvent::delta("")), Ok(3));
        assert!(log.append(GenerationEvent::delta("")).is_err(), "4 events");
        let usage = GenerationEvent::Usage(Box::default());
        assert_eq!(log.append(usage), Ok(4), "the usage report still fits");
        assert_eq!(log.append(failed()), Ok(5));
        assert!(log.append(failed()).is_err(), "nothing after the end");
        assert_eq!(log.text(), "abcde");
        let mut events = Vec::new();
        log.read_after(2, usize::MAX, &mut events);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(log.terminal().map(|e| e.seq), Some(5));
    }

    #[test]
    fn the_first_cancel_reason_wins() {
        let log = MemoryLog::new(LogBounds::default());
        assert_eq!(log.cancel_reason(), None);
        log.cancel(CancelReason::Disconnected);
        log.cancel(CancelReason::User);
        assert_eq!(log.cancel_reason(), Some(CancelReason::Disconnected));
    }
}

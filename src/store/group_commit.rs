//! Group commit: message writes that arrive while a transaction is being written wait for it and then go
//! together, in the next one ([`Store::write_messages`]).
//!
//! One writer at a time per queue ([`Writes`] says which writes share one). A burst of new messages or of
//! finished replies costs one transaction and a handful of multi-row statements per batch instead of a
//! transaction (or a statement) each, and on SQLite, whose database has one writer, the writers no longer queue
//! on its lock one by one. When nothing is being written a write goes at once: batching never waits for company.
//!
//! A queue shared by new messages and replies' saves (SQLite's) writes new messages first ([`Lane`]): a request
//! waits for at most the batch being written, never behind a backlog of saves.
//!
//! The writer is a tracked task ([`Tasks::spawn`]) that exists only while writes are queued: a caller that goes
//! away (a client that disconnected) does not cancel the others' writes, and shutdown waits for what is queued.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::{MessageWrite, Store, StoreError, StoreResult};
use crate::tasks::Tasks;

/// The most writes one transaction takes. A message row binds 17 values: 128 rows stay far below SQLite's
/// (32,766) and PostgreSQL's (65,535) limits on a statement's parameters.
pub const MAX_BATCH: usize = 128;

/// How the chat service writes: new messages, which a request waits for, and replies' saves and usage records,
/// written after a reply's last token.
///
/// On a database that takes one writer at a time ([`Store::one_writer_at_a_time`]: SQLite) both go through one
/// [`GroupCommit`], since separate writers would only wait on each other's lock (SQLite's busy handler sleeps a
/// millisecond and more per try); new messages go in its [`Lane::Request`], ahead of the saves. On PostgreSQL new
/// messages are group-committed and each reply is saved in its own transaction on the background pool, as many
/// at once as that pool allows: its writers do not exclude each other, and a slow save (a trigger, a lock) then
/// never delays a new message nor serializes the other saves behind it.
#[derive(Clone)]
pub struct Writes {
    store: Arc<dyn Store>,
    messages: GroupCommit,
    /// `None`: each reply written on its own.
    replies: Option<GroupCommit>,
}

impl Writes {
    pub fn new(store: &Arc<dyn Store>, tasks: &Tasks) -> Self {
        let messages = GroupCommit::new(Arc::clone(store), tasks.clone());
        let replies = store.one_writer_at_a_time().then(|| messages.clone());
        Self {
            store: Arc::clone(store),
            messages,
            replies,
        }
    }

    /// Writes a new message ([`MessageWrite::Insert`]); returns once it is committed.
    ///
    /// # Errors
    /// As [`GroupCommit::write`].
    pub async fn message(&self, write: MessageWrite) -> StoreResult<DateTime<Utc>> {
        self.messages.write(write, Lane::Request).await
    }

    /// Writes a reply and its usage, or a usage record alone; returns once it is committed.
    ///
    /// # Errors
    /// As [`Store::write_messages`].
    pub async fn reply(&self, write: MessageWrite) -> StoreResult<DateTime<Utc>> {
        match &self.replies {
            Some(queue) => queue.write(write, Lane::Background).await,
            None => {
                self.store
                    .write_messages(std::slice::from_ref(&write))
                    .await
            }
        }
    }
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("replies_group_committed", &self.replies.is_some())
            .finish_non_exhaustive()
    }
}

/// The write queue in front of a [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit(Arc<Inner>);

/// What writes a batch: [`Store::write_messages`] of the queue's store.
type WriteBatch = Box<
    dyn for<'a> Fn(&'a [MessageWrite]) -> BoxFuture<'a, StoreResult<DateTime<Utc>>> + Send + Sync,
>;

struct Inner {
    write_batch: WriteBatch,
    tasks: Tasks,
    queue: Mutex<Queue>,
}

/// Which writes of a [`GroupCommit`] go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A write a request waits for: a new message, which the reply's first token waits for. Each batch takes
    /// these first, so one waits for at most the batch being written (and, past [`MAX_BATCH`] of them, for the
    /// batches of the ones before it).
    Request,
    /// A write no first token waits for: a reply's save, after its last token (only its `done` event waits).
    /// Each batch takes these after the request lane's, oldest first, up to [`MAX_BATCH`] writes in all; as
    /// long as fewer than [`MAX_BATCH`] new messages arrive a batch, every batch has room for some, so they are
    /// never starved.
    Background,
}

#[derive(Default)]
struct Queue {
    /// [`Lane::Request`]'s writes, oldest first.
    requests: VecDeque<Pending>,
    /// [`Lane::Background`]'s writes, oldest first.
    background: VecDeque<Pending>,
    /// Whether a writer task is running; it takes batches until the queue is empty.
    writing: bool,
}

impl Queue {
    /// The next batch: the request lane's oldest writes, then the background lane's, [`MAX_BATCH`] in all.
    fn next_batch(&mut self) -> Vec<Pending> {
        let requests = self.requests.len().min(MAX_BATCH);
        let background = self.background.len().min(MAX_BATCH - requests);
        let mut batch = Vec::with_capacity(requests + background);
        batch.extend(self.requests.drain(..requests));
        batch.extend(self.background.drain(..background));
        batch
    }
}

struct Pending {
    write: MessageWrite,
    done: oneshot::Sender<StoreResult<DateTime<Utc>>>,
}

impl GroupCommit {
    pub fn new(store: Arc<dyn Store>, tasks: Tasks) -> Self {
        Self::writing_with(
            Box::new(move |writes| {
                let store = Arc::clone(&store);
                Box::pin(async move { store.write_messages(writes).await })
            }),
            tasks,
        )
    }

    fn writing_with(write_batch: WriteBatch, tasks: Tasks) -> Self {
        Self(Arc::new(Inner {
            write_batch,
            tasks,
            queue: Mutex::default(),
        }))
    }

    /// Writes `write` in the next transaction that has room for it in its `lane` (the next one for
    /// [`Lane::Request`]) and returns when it is committed, with the time the transaction wrote as replies'
    /// `updated_at`.
    ///
    /// # Errors
    /// The write's own error, as [`Store::write_messages`] gives it: when a batch fails, each of its writes is
    /// tried again alone, so one refused write (a conversation deleted meanwhile) never fails the others.
    pub async fn write(&self, write: MessageWrite, lane: Lane) -> StoreResult<DateTime<Utc>> {
        let (done, committed) = oneshot::channel();
        let start_writer = {
            let mut queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let pending = Pending { write, done };
            match lane {
                Lane::Request => queue.requests.push_back(pending),
                Lane::Background => queue.background.push_back(pending),
            }
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            let this = self.clone();
            self.0.tasks.spawn(async move { this.drain().await });
        }
        committed
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::WorkerCrashed)))
    }

    /// Writes batches until the queue is empty. A batch whose write panics (not expected: it would be a bug)
    /// fails its own writes — their callers get an error, as when the writer is gone — and the queue goes on:
    /// the writes behind it are never left waiting for a writer.
    async fn drain(&self) {
        loop {
            let batch: Vec<Pending> = {
                let mut queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let batch = queue.next_batch();
                if batch.is_empty() {
                    queue.writing = false;
                    break;
                }
                batch
            };
            let writes = batch.len();
            if AssertUnwindSafe(self.commit(batch))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(
                    writes,
                    "a batch of message writes panicked; its writes failed, the queue goes on"
                );
            }
        }
    }

    async fn commit(&self, batch: Vec<Pending>) {
        let (writes, done): (Vec<MessageWrite>, Vec<_>) =
            batch.into_iter().map(|p| (p.write, p.done)).unzip();
        match (self.0.write_batch)(&writes).await {
            Ok(at) => {
                for done in done {
                    // The caller may be gone (its client disconnected); the write stands.
                    let _ = done.send(Ok(at));
                }
            }
            Err(err) if writes.len() == 1 => {
                let _ = done.into_iter().next().map(|done| done.send(Err(err)));
            }
            Err(err) => {
                tracing::debug!(writes = writes.len(), error = %err, "a batch failed; writing each alone");
                for (write, done) in writes.into_iter().zip(done) {
                    let _ = done.send((self.0.write_batch)(std::slice::from_ref(&write)).await);
                }
            }
        }
    }
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::store::{Id, UsageRecord};

    fn usage(model: &str) -> MessageWrite {
        MessageWrite::Usage(UsageRecord {
            id: Id::new(),
            user_id: "alice".into(),
            conversation_id: None,
            message_id: None,
            persona_id: None,
            model: model.into(),
            upstream_model: model.into(),
            provider: "test".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
            reasoning_tokens: 0,
            estimated: false,
            cost_nanousd: 0,
            ttft_ms: None,
            duration_ms: 1,
            created_at: Utc::now(),
        })
    }

    /// A queue over a writer that records each batch's usage models, with the `started` and `release` signals
    /// and the recorded batches. A batch holding the model `hold` waits, once it is being written, until
    /// `release` is notified (after notifying `started`), then is recorded, or panics instead when `panics` (a
    /// store never should; the queue must survive it).
    type Recorded = (
        GroupCommit,
        Arc<Notify>,
        Arc<Notify>,
        Arc<Mutex<Vec<Vec<String>>>>,
    );

    fn recorded(tasks: &Tasks, hold: &'static str, panics: bool) -> Recorded {
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let batches = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
        let queue = {
            let (started, release, batches) = (started.clone(), release.clone(), batches.clone());
            GroupCommit::writing_with(
                Box::new(move |writes| {
                    let (started, release, batches) =
                        (started.clone(), release.clone(), batches.clone());
                    let models: Vec<String> = writes
                        .iter()
                        .filter_map(|w| match w {
                            MessageWrite::Usage(u) => Some(u.model.clone()),
                            _ => None,
                        })
                        .collect();
                    Box::pin(async move {
                        if models.iter().any(|m| m == hold) {
                            started.notify_one();
                            release.notified().await;
                            assert!(!panics, "a batch write panicked (on purpose)");
                        }
                        batches.lock().expect("batches").push(models);
                        Ok(Utc::now())
                    })
                }),
                tasks.clone(),
            )
        };
        (queue, started, release, batches)
    }

    /// A batch whose write panics fails its own writes, and a write queued behind it is still written — with no
    /// other write arriving to start a writer.
    #[tokio::test]
    async fn a_panicking_batch_fails_alone_and_the_queue_goes_on() {
        let tasks = Tasks::new();
        let (queue, started, release, batches) = recorded(&tasks, "panic", true);
        let panicking = tasks.spawn({
            let queue = queue.clone();
            async move { queue.write(usage("panic"), Lane::Request).await }
        });
        // The panicking batch is being written; a write arrives behind it, then the batch panics.
        started.notified().await;
        let behind = tasks.spawn({
            let queue = queue.clone();
            async move { queue.write(usage("behind"), Lane::Background).await }
        });
        while queue.0.queue.lock().expect("queue").background.is_empty() {
            tokio::task::yield_now().await;
        }
        release.notify_one();

        let failed = panicking.await.expect("task");
        assert!(
            matches!(
                failed,
                Err(StoreError::Database(sqlx::Error::WorkerCrashed))
            ),
            "{failed:?}"
        );
        let behind = tokio::time::timeout(Duration::from_secs(5), behind)
            .await
            .expect("the write behind the panicking batch was left waiting")
            .expect("task");
        assert!(behind.is_ok(), "{behind:?}");
        assert_eq!(
            *batches.lock().expect("batches"),
            vec![vec!["behind".to_string()]]
        );
    }

    /// Writes queued while a batch is written: the next batch takes the new messages first, whatever the backlog
    /// of saves before them, and fills the rest of its [`MAX_BATCH`] with the oldest saves; every save is written
    /// in the end, in the order it came.
    #[tokio::test]
    async fn new_messages_go_ahead_of_a_backlog_of_saves_and_every_save_is_still_written() {
        let tasks = Tasks::new();
        let (queue, started, release, batches) = recorded(&tasks, "first", false);
        let write = |model: String, lane: Lane| {
            let queue = queue.clone();
            tasks.spawn(async move { queue.write(usage(&model), lane).await })
        };
        let first = write("first".into(), Lane::Background);
        started.notified().await;
        // While "first" is written: a backlog of saves larger than a batch, then two new messages.
        let saves: Vec<_> = (0..MAX_BATCH + 10)
            .map(|i| write(format!("save-{i}"), Lane::Background))
            .collect();
        let messages: Vec<_> = (0..2)
            .map(|i| write(format!("message-{i}"), Lane::Request))
            .collect();
        while {
            let queue = queue.0.queue.lock().expect("queue");
            queue.background.len() < MAX_BATCH + 10 || queue.requests.len() < 2
        } {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for handle in std::iter::once(first).chain(saves).chain(messages) {
            let written = tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .expect("a write was left waiting")
                .expect("task");
            assert!(written.is_ok(), "{written:?}");
        }

        let batches = batches.lock().expect("batches").clone();
        assert_eq!(batches[0], vec!["first".to_string()]);
        assert_eq!(batches[1][..2], ["message-0", "message-1"]);
        assert_eq!(batches[1].len(), MAX_BATCH);
        assert!(batches.iter().all(|b| b.len() <= MAX_BATCH), "{batches:?}");
        let saves_in_order: Vec<String> = batches[1..]
            .iter()
            .flatten()
            .filter(|m| m.starts_with("save-"))
            .cloned()
            .collect();
        let expected: Vec<String> = (0..MAX_BATCH + 10).map(|i| format!("save-{i}")).collect();
        assert_eq!(saves_in_order, expected);
    }
}

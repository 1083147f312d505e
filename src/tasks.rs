//! Every background task of the process, spawned in one place and tracked, so that shutdown waits for each
//! write in flight (a reply's save, a title's usage record) instead of dropping it.
//!
//! `clippy.toml` disallows `tokio::spawn` everywhere else. Two kinds of task:
//! - [`Tasks::spawn`]: finite work (a generation, a title, a WebSocket request); shutdown waits for it to end.
//! - [`Tasks::spawn_service`]: a loop that runs until shutdown (the checkpointer, the sweepers, a socket);
//!   it is stopped when [`Tasks::stop`] is called, then waited for like the rest.

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// The process's task tracker: cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stopping: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs finite work in the background; shutdown waits for it.
    #[expect(clippy::disallowed_methods, reason = "the one place that spawns")]
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.tracker.track_future(task))
    }

    /// Runs a service loop in the background until [`Tasks::stop`]; shutdown then waits for it to return.
    pub fn spawn_service<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.stopping.clone();
        self.spawn(async move {
            tokio::select! {
                () = task => {}
                () = stopping.cancelled() => {}
            }
        })
    }

    /// Resolves once [`Tasks::stop`] was called: services that hold a client (a WebSocket) close it then.
    pub fn stopping(&self) -> WaitForCancellationFuture<'_> {
        self.stopping.cancelled()
    }

    /// Whether [`Tasks::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Stops the services; finite work runs on.
    pub fn stop(&self) {
        self.stopping.cancel();
        self.tracker.close();
    }

    /// Waits for every task: call after [`Tasks::stop`].
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::Tasks;

    #[tokio::test]
    async fn stop_ends_services_and_wait_lets_finite_work_finish() {
        let tasks = Tasks::new();
        tasks.spawn_service(std::future::pending());
        let written = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&written);
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        tasks.stop();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the service stopped and the work finished");
        assert!(
            written.load(Ordering::SeqCst),
            "the finite task ran to its end"
        );
    }
}

//! Serving: the HTTP listener, the background services (checkpoints, sweeps, provider checks), and the
//! graceful shutdown that lets every reply finish and every write land.

use std::time::Duration;

use tokio::net::TcpListener;

use crate::chat::checkpoints::recover_interrupted;
use crate::state::AppState;
use crate::{api, store};

/// Binds `addr` with a listen backlog of `backlog` connections (the kernel caps it at `net.core.somaxconn`,
/// and so does this function, saying so): a burst of clients connecting at once waits in the backlog instead
/// of being reset, which tokio's fixed 128 does past that many. `SO_REUSEADDR` is set, so a restart can bind
/// while old connections sit in `TIME_WAIT`.
///
/// # Errors
/// The bind or listen failure (address in use, permission denied).
pub fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let backlog = match cap {
        Some(cap) if backlog > cap => {
            tracing::warn!(
                requested = backlog,
                somaxconn = cap,
                "server.listen_backlog is over the kernel's net.core.somaxconn; using {cap}"
            );
            cap
        }
        _ => backlog,
    };
    socket.listen(backlog.max(1))
}

/// Serves `state` on `listener` until `shutdown` resolves, then shuts down gracefully: no new connections or
/// generations, running generations finish (up to `server.shutdown_grace_secs`, then they are cancelled and
/// saved), open streams end with their final event, WebSockets close with 1001, and every background task
/// (saves, titles and their usage records) completes.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;

    let tasks = state.tasks.clone();
    let hub = state.hub.clone();
    let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
    tasks.spawn_service(sweep_stale_replies(state.clone()));
    tasks.spawn_service(sweep_media(state.clone()));
    tasks.spawn_service(write_checkpoints(state.clone()));
    let check_every = Duration::from_secs(state.config.server.provider_check_secs);
    if !check_every.is_zero() {
        tasks.spawn_service(state.provider_health.clone().run(check_every));
    }
    let app = api::app(state);
    // Tokens go out as they come: no Nagle delay on client sockets.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let signal_hub = hub.clone();
    let signal_tasks = tasks.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections or generations");
        // Streams end when their generation does: drain the generations while the server drains connections.
        let drained = signal_tasks.spawn(async move { signal_hub.shutdown(grace).await });
        let _ = drained_tx.send(drained);
    })
    .await?;
    match drained_rx.await {
        Ok(drained) => {
            let _ = drained.await;
        }
        Err(_) => hub.shutdown(grace).await,
    }
    tasks.stop();
    tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// Writes the streaming replies' checkpoints, one batch every `generation.checkpoint_interval_ms`, and drops
/// expired generations.
async fn write_checkpoints(state: AppState) {
    let interval = Duration::from_millis(state.config.generation.checkpoint_interval_ms);
    let heartbeat = Duration::from_secs(state.config.generation.stale_after_secs) / 3;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state
            .chat
            .checkpoints
            .write(&*state.store, &state.instance_id, heartbeat)
            .await;
        state.hub.sweep_expired();
    }
}

/// Deletes media files without a record (their conversation was deleted), every quarter of
/// `media.sweep_after_secs` (at least a minute).
async fn sweep_media(state: AppState) {
    let after = Duration::from_secs(state.config.media.sweep_after_secs);
    if after.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval((after / 4).max(Duration::from_secs(60)));
    tick.tick().await;
    loop {
        tick.tick().await;
        match state.media.sweep(&*state.store, after).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "media files without a record deleted"),
            Err(err) => tracing::warn!(error = %err, "sweeping media files failed"),
        }
    }
}

/// Marks replies whose process died (no heartbeat for `generation.stale_after_secs`) as interrupted, every
/// half of that period: instances sharing a database clean up after each other.
async fn sweep_stale_replies(state: AppState) {
    let stale_after = Duration::from_secs(state.config.generation.stale_after_secs);
    let mut tick = tokio::time::interval(stale_after / 2);
    tick.tick().await;
    loop {
        tick.tick().await;
        let stale_before =
            store::now() - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
        match recover_interrupted(&*state.store, &state.models, "", stale_before, None).await {
            Ok(0) => {}
            Ok(recovered) => tracing::warn!(
                recovered,
                "replies of a stopped instance are now marked interrupted"
            ),
            Err(err) => tracing::warn!(error = %err, "sweeping stale replies failed"),
        }
    }
}

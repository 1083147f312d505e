//! Closing the generations of an instance that died: every instance looks, every third of a lease, for leases
//! past their deadline; one script takes each at most once across the cluster. The taker checks that the owner
//! is truly gone (its liveness key lapsed too), closes its replies in the database as `interrupted` from their
//! last checkpoint (billed once: the row changes only while it is `streaming`), and appends the terminal event,
//! so that followers on every instance end cleanly within about a lease.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::log::LogsInner;
use super::{Cluster, NOW_MS};
use crate::catalog::Models;
use crate::chat::checkpoints::recover_interrupted;
use crate::domain::{FinishReason, MessageStatus};
use crate::error::ErrorKind;
use crate::event::{Done, Failed, Failure, GenerationEvent, LoggedEvent, UsageReport};
use crate::id::Id;
use crate::store::Store;
use crate::stream::GenerationMeta;

/// Leases taken at once.
const BATCH: usize = 100;

/// What closing a dead instance's replies needs.
pub struct Reaper {
    pub store: Arc<dyn Store>,
    pub models: Arc<Models>,
    /// `generation.stale_after_secs`: rows without a heartbeat this long are closed with the dead owner's.
    pub stale_after: Duration,
}

fn take_script() -> redis::Script {
    redis::Script::new(&format!(
        "{NOW_MS} local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1])) \
         for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end return ids"
    ))
}

/// A generation whose owner is gone, about to be closed.
struct Dead {
    meta: GenerationMeta,
    owner: String,
    /// The seq of its last shared event; the terminal one follows it.
    last_seq: u64,
}

impl Reaper {
    /// Runs every third of a lease until the logs are gone.
    pub async fn run(self, logs: Weak<LogsInner>) {
        let take = take_script();
        let Some(cluster) = logs.upgrade().map(|l| l.cluster().clone()) else {
            return;
        };
        let mut tick = tokio::time::interval(cluster.lease() / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = logs.upgrade() else { return };
            let mut invocation = take.key(cluster.key("leases"));
            invocation.arg(BATCH);
            let taken: Vec<String> = match cluster.invoke(invocation).await {
                Ok(taken) => taken,
                Err(_) => continue,
            };
            let mut dead = Vec::new();
            for id in taken.iter().filter_map(|id| id.parse::<Id>().ok()) {
                match self.check(&inner, id).await {
                    Ok(Some(gone)) => dead.push(gone),
                    Ok(None) => {}
                    // Taken but not checked: put it back, so that the next look (here or elsewhere) tries again.
                    Err(err) => {
                        tracing::warn!(generation_id = %id, error = %err, "checking a lapsed lease failed; trying again");
                        give_back(&cluster, id).await;
                    }
                }
            }
            self.close(&inner, dead).await;
        }
    }

    /// Whether a generation whose lease lapsed belongs to a process that is gone (`Some`), or needs nothing:
    /// it ended already, its owner is alive (the lease is given back), or it is unknown.
    async fn check(&self, logs: &LogsInner, id: Id) -> Result<Option<Dead>, String> {
        let cluster = logs.cluster();
        let fields: HashMap<String, String> = cluster
            .query(redis::cmd("HGETALL").arg(cluster.key(&format!("gen:{id}"))))
            .await
            .map_err(|e| e.to_string())?;
        let (Some(user_id), Some(owner)) = (fields.get("user_id"), fields.get("owner")) else {
            return Ok(None);
        };
        let boot = fields.get("boot").map(String::as_str).unwrap_or_default();
        let last: redis::streams::StreamRangeReply = cluster
            .query(
                redis::cmd("XREVRANGE")
                    .arg(cluster.key(&format!("gen:{id}:events")))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
            .map_err(|e| e.to_string())?;
        let last_seq = match last.ids.first() {
            Some(entry) => {
                let ended = entry
                    .get::<String>("e")
                    .and_then(|json| serde_json::from_str::<GenerationEvent>(&json).ok())
                    .is_some_and(|event| event.kind().is_terminal());
                if ended {
                    return Ok(None);
                }
                entry
                    .id
                    .split_once('-')
                    .and_then(|(seq, _)| seq.parse::<u64>().ok())
                    .unwrap_or(0)
            }
            None => 0,
        };
        // Alive means the same process (its boot id), not merely the same instance name: a restarted instance
        // does not run its previous life's generations.
        let running: Option<String> = cluster
            .query(redis::cmd("GET").arg(cluster.key(&format!("instance:{owner}"))))
            .await
            .map_err(|e| e.to_string())?;
        if running.as_deref() == Some(boot)
            || (owner == cluster.instance_id() && logs.owns_running(id))
        {
            // A renewal missed (Redis was slow or away): the owner keeps it.
            give_back(cluster, id).await;
            return Ok(None);
        }
        Ok(Some(Dead {
            meta: GenerationMeta {
                id,
                user_id: user_id.clone(),
                conversation_id: fields.get("conversation_id").and_then(|c| c.parse().ok()),
                model: fields.get("model").cloned().unwrap_or_default(),
            },
            owner: owner.clone(),
            last_seq,
        }))
    }

    /// Closes the replies of gone owners in the database, one pass per owner, then ends each generation's
    /// shared log with its terminal event, written as its owner would have written it.
    async fn close(&self, logs: &LogsInner, dead: Vec<Dead>) {
        let mut owners: HashMap<&str, Vec<Id>> = HashMap::new();
        for gone in dead.iter().filter(|d| d.meta.conversation_id.is_some()) {
            owners.entry(&gone.owner).or_default().push(gone.meta.id);
        }
        let stale_before = crate::store::now()
            - chrono::Duration::from_std(self.stale_after).unwrap_or(chrono::Duration::MAX);
        for (owner, ids) in &owners {
            if let Err(err) =
                recover_interrupted(&*self.store, &self.models, owner, stale_before, Some(ids))
                    .await
            {
                tracing::warn!(error = %err, %owner, "closing a dead instance's replies failed; the database sweep closes them later");
            }
        }
        let cluster = logs.cluster();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for gone in &dead {
            tracing::warn!(generation_id = %gone.meta.id, owner = %gone.owner, "the instance running this generation stopped renewing its lease: closed");
            let terminal = LoggedEvent {
                seq: gone.last_seq + 1,
                event: self.closing_event(&gone.meta).await,
            };
            for cmd in logs.event_commands(&gone.meta, &terminal) {
                pipe.add_command(cmd).ignore();
            }
        }
        if !pipe.is_empty()
            && let Err(err) = cluster.pipeline::<()>(&pipe).await
        {
            // Their leases were taken: put them back, so that the next look ends their logs (the database
            // rows are closed already; closing them again changes nothing).
            tracing::warn!(error = %err, "ending dead generations' shared logs failed; trying again");
            for gone in &dead {
                give_back(cluster, gone.meta.id).await;
            }
        }
    }

    /// The terminal event of a dead owner's generation: `done` with the reply as the database now holds it
    /// (closed `interrupted` by [`Reaper::close`] if it was still `streaming`), or an `error` when nothing was
    /// saved.
    async fn closing_event(&self, meta: &GenerationMeta) -> GenerationEvent {
        if meta.conversation_id.is_some()
            && let Ok(Some(message)) = self.store.get_message(&meta.user_id, meta.id).await
            && message.status != MessageStatus::Streaming
        {
            let prompt = message.prompt_tokens.unwrap_or(0).max(0) as u64;
            let completion = message.completion_tokens.unwrap_or(0).max(0) as u64;
            return GenerationEvent::Done(Box::new(Done {
                usage: UsageReport {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    cached_tokens: 0,
                    reasoning_tokens: 0,
                    estimated: message.status == MessageStatus::Interrupted,
                    cost_usd: message.cost_usd.unwrap_or(0.0),
                },
                finish_reason: message
                    .finish_reason
                    .clone()
                    .unwrap_or(FinishReason::Interrupted),
                message,
                tool_calls: Vec::new(),
            }));
        }
        GenerationEvent::Error(Box::new(Failed {
            failure: Failure {
                kind: ErrorKind::Unavailable,
                error: "interrupted".into(),
                message: "the instance running this reply stopped before any of it was saved; send the message again".into(),
                details: serde_json::json!({ "generation_id": meta.id }),
                retry_after_secs: None,
            },
            saved: None,
        }))
    }
}

/// Puts a lease taken by mistake back, one lease from now.
async fn give_back(cluster: &Cluster, id: Id) {
    let script = redis::Script::new(&format!(
        "{NOW_MS} redis.call('ZADD', KEYS[1], 'NX', now + tonumber(ARGV[1]), ARGV[2])"
    ));
    let mut invocation = script.key(cluster.key("leases"));
    invocation
        .arg(cluster.lease().as_millis() as u64)
        .arg(id.to_string());
    let _ = cluster.invoke::<()>(invocation).await;
}

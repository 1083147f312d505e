//! Limits counted across every instance: request rates by GCRA (one script, on Redis's clock), and counted
//! holds (a user's running generations, open WebSockets) as sorted sets of members whose deadlines the holding
//! instance renews with its leases, so that a dead instance's holds lapse within a lease.

use super::{Cluster, NOW_MS, RedisError};

/// GCRA (the generic cell rate algorithm, as tower-governor applies it in-process): a request is allowed when
/// the theoretical arrival time, advanced by one period, is at most `burst` periods ahead of now. Returns 0 when
/// allowed, else the ms to wait.
fn gcra_script() -> redis::Script {
    redis::Script::new(&format!(
        "{NOW_MS} local period = tonumber(ARGV[1]) local burst = tonumber(ARGV[2]) \
         local tat = tonumber(redis.call('GET', KEYS[1]) or '0') \
         if tat < now then tat = now end \
         local next_tat = tat + period \
         if next_tat - now > period * burst then return next_tat - now - period * burst end \
         redis.call('SET', KEYS[1], next_tat, 'PX', next_tat - now) return 0"
    ))
}

/// Takes a hold when fewer than `max` live ones exist: `1` taken, `0` full.
fn hold_script() -> redis::Script {
    redis::Script::new(&format!(
        "{NOW_MS} local lease = tonumber(ARGV[1]) \
         redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
         if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end \
         redis.call('ZADD', KEYS[1], now + lease, ARGV[3]) redis.call('PEXPIRE', KEYS[1], lease * 2) return 1"
    ))
}

/// What a hold counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// A running generation (`limits.max_concurrent_generations`): `P:slots:{user}`.
    Generation,
    /// An open WebSocket (`ws.max_connections_per_user`): `P:ws:{user}`.
    WebSocket,
}

impl HoldKind {
    fn key_part(self) -> &'static str {
        match self {
            HoldKind::Generation => "slots",
            HoldKind::WebSocket => "ws",
        }
    }
}

/// A hold on one of a user's counted places, renewed with this instance's leases and given back when dropped.
#[derive(Debug)]
pub struct Hold {
    cluster: Cluster,
    key: String,
    member: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.cluster.held().remove(&self.member);
        self.cluster.write(vec![
            redis::cmd("ZREM")
                .arg(&self.key)
                .arg(&self.member)
                .to_owned(),
        ]);
    }
}

impl Cluster {
    /// One request under the rate `period_ms` (ms between two requests on average) with bursts of `burst`,
    /// for `key` (`user:{id}` or `ip:{address}`). `Ok(None)` when allowed, else `Ok(Some(ms to wait))`.
    ///
    /// # Errors
    /// [`RedisError`] when Redis does not answer in time (the caller falls back to its own limiter).
    pub async fn rate(
        &self,
        key: &str,
        period_ms: u64,
        burst: u32,
    ) -> Result<Option<u64>, RedisError> {
        let script = gcra_script();
        let mut invocation = script.key(self.key(&format!("rate:{key}")));
        invocation.arg(period_ms.max(1)).arg(burst.max(1));
        let wait: u64 = self.invoke(invocation).await?;
        Ok((wait > 0).then_some(wait))
    }

    /// Takes one of `user`'s at most `max` places of `kind`: `Ok(None)` when all are taken.
    ///
    /// # Errors
    /// [`RedisError`] when Redis does not answer in time (the caller falls back to counting its own).
    pub async fn hold(
        &self,
        kind: HoldKind,
        user: &str,
        max: usize,
    ) -> Result<Option<Hold>, RedisError> {
        let key = self.key(&format!("{}:{user}", kind.key_part()));
        let member = format!("{}:{}", self.instance_id(), crate::id::Id::new());
        let script = hold_script();
        let mut invocation = script.key(&key);
        invocation
            .arg(self.lease().as_millis() as u64)
            .arg(max)
            .arg(&member);
        let taken: i64 = self.invoke(invocation).await?;
        if taken == 0 {
            return Ok(None);
        }
        self.held().insert(member.clone(), key.clone());
        Ok(Some(Hold {
            cluster: self.clone(),
            key,
            member,
        }))
    }
}

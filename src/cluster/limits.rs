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

/// Reserves an estimate against a user's day and month budgets in one step: each period's hash
/// (`P:budget:{user}:{YYYY-MM-DD}`, `P:budget:{user}:{YYYY-MM}`, fields `tokens` and `nanousd`: spent plus
/// reserved) is seeded from the database's figure the first time, then checked and increased. Returns 0 when
/// reserved, else which budget refused: 1 daily tokens, 2 monthly tokens, 3 daily cost, 4 monthly cost.
fn budget_script() -> redis::Script {
    redis::Script::new(
        "for i = 1, 2 do \
           if redis.call('EXISTS', KEYS[i]) == 0 then \
             redis.call('HSET', KEYS[i], 'tokens', ARGV[2 * i - 1], 'nanousd', ARGV[2 * i]) \
             redis.call('EXPIRE', KEYS[i], ARGV[10 + i]) end end \
         local day_tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens')) \
         local month_tokens = tonumber(redis.call('HGET', KEYS[2], 'tokens')) \
         local day_cost = tonumber(redis.call('HGET', KEYS[1], 'nanousd')) \
         local month_cost = tonumber(redis.call('HGET', KEYS[2], 'nanousd')) \
         local tokens, cost = tonumber(ARGV[5]), tonumber(ARGV[6]) \
         local checks = { day_tokens + tokens, month_tokens + tokens, day_cost + cost, month_cost + cost } \
         for i = 1, 4 do local limit = tonumber(ARGV[6 + i]) \
           if limit > 0 and checks[i] > limit then return i end end \
         for i = 1, 2 do redis.call('HINCRBY', KEYS[i], 'tokens', tokens) \
           redis.call('HINCRBY', KEYS[i], 'nanousd', cost) end return 0",
    )
}

/// A user's figures for one budget check, in tokens and nano-USD.
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetFigures {
    pub day_tokens: u64,
    pub day_nanousd: u64,
    pub month_tokens: u64,
    pub month_nanousd: u64,
}

/// An estimate reserved in Redis, swapped for the actual usage ([`SharedBudget::settle`]) or given back when
/// dropped.
#[derive(Debug)]
pub struct SharedBudget {
    cluster: Cluster,
    keys: [String; 2],
    tokens: u64,
    nanousd: u64,
}

impl SharedBudget {
    /// Replaces the reservation by the actual usage (through the writer: a Redis hiccup delays it, never
    /// loses it).
    pub fn settle(mut self, tokens: u64, nanousd: u64) {
        self.adjust(tokens, nanousd);
        self.tokens = 0;
        self.nanousd = 0;
    }

    fn adjust(&self, tokens: u64, nanousd: u64) {
        let delta = |actual: u64, reserved: u64| actual as i64 - reserved as i64;
        let (tokens, nanousd) = (delta(tokens, self.tokens), delta(nanousd, self.nanousd));
        if tokens == 0 && nanousd == 0 {
            return;
        }
        let commands = self
            .keys
            .iter()
            .flat_map(|key| {
                [
                    redis::cmd("HINCRBY")
                        .arg(key)
                        .arg("tokens")
                        .arg(tokens)
                        .to_owned(),
                    redis::cmd("HINCRBY")
                        .arg(key)
                        .arg("nanousd")
                        .arg(nanousd)
                        .to_owned(),
                ]
            })
            .collect();
        self.cluster.write(commands);
    }
}

impl Drop for SharedBudget {
    fn drop(&mut self) {
        self.adjust(0, 0);
    }
}

impl Cluster {
    /// Reserves `tokens`/`nanousd` for `user` against `limits` (0: none), seeding a period the first time with
    /// `spent` (the database's figures). `Ok(Err(n))` names the budget that refused (see [`budget_script`]).
    ///
    /// # Errors
    /// [`RedisError`] when Redis does not answer in time (the caller falls back to its own ledger).
    pub async fn reserve_budget(
        &self,
        user: &str,
        today: chrono::NaiveDate,
        spent: BudgetFigures,
        (tokens, nanousd): (u64, u64),
        limits: BudgetFigures,
    ) -> Result<Result<SharedBudget, u8>, RedisError> {
        use chrono::Datelike;
        let keys = [
            self.key(&format!("budget:{user}:{today}")),
            self.key(&format!(
                "budget:{user}:{:04}-{:02}",
                today.year(),
                today.month()
            )),
        ];
        let script = budget_script();
        let mut invocation = script.key(&keys[0]);
        invocation
            .key(&keys[1])
            .arg(spent.day_tokens)
            .arg(spent.day_nanousd)
            .arg(spent.month_tokens)
            .arg(spent.month_nanousd)
            .arg(tokens)
            .arg(nanousd)
            .arg(limits.day_tokens)
            .arg(limits.month_tokens)
            .arg(limits.day_nanousd)
            .arg(limits.month_nanousd)
            // Kept a little past their period.
            .arg(2 * 24 * 3600)
            .arg(32 * 24 * 3600);
        let refused: u8 = self.invoke(invocation).await?;
        if refused > 0 {
            return Ok(Err(refused));
        }
        Ok(Ok(SharedBudget {
            cluster: self.clone(),
            keys,
            tokens,
            nanousd,
        }))
    }
}

//! Per-user token and cost budgets per UTC day and month, enforced *before* a generation starts.
//!
//! Each user has a ledger: usage so far this day and month (loaded from the daily rollup, refreshed every
//! [`REFRESH`]), plus the reservations of generations still running. A request reserves an estimate (its prompt
//! plus the reply's token allowance) under the ledger's lock, so concurrent requests see each other's
//! reservations; when the generation's usage is saved, the reservation is swapped for the actual figures. The
//! overshoot is therefore bounded by how far one request's actual usage exceeds its reservation. Several
//! instances sharing only a database see each other's usage within [`REFRESH`]; sharing Redis too, they
//! reserve and settle there first ([`crate::cluster::limits`]), so each sees the others' at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate, Utc};

use crate::cluster::limits::BudgetFigures;
use crate::config::LimitsConfig;
use crate::store::{Store, StoreError};

/// How often a ledger is reloaded from the database.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Configured budgets; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetLimits {
    pub daily_tokens: u64,
    pub monthly_tokens: u64,
    /// nano-USD.
    pub daily_nanousd: u64,
    /// nano-USD.
    pub monthly_nanousd: u64,
}

impl BudgetLimits {
    pub fn from_config(limits: &LimitsConfig) -> Self {
        let usd = |v: f64| (v.max(0.0) * 1e9).round() as u64;
        Self {
            daily_tokens: limits.daily_token_budget,
            monthly_tokens: limits.monthly_token_budget,
            daily_nanousd: usd(limits.daily_cost_budget_usd),
            monthly_nanousd: usd(limits.monthly_cost_budget_usd),
        }
    }

    fn any(&self) -> bool {
        self.daily_tokens + self.monthly_tokens + self.daily_nanousd + self.monthly_nanousd > 0
    }
}

/// A refused request: which budget, and when it resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    /// `daily_token_budget`, `monthly_token_budget`, `daily_cost_budget_usd` or `monthly_cost_budget_usd`.
    pub limit: &'static str,
    /// Seconds until the period resets.
    pub retry_after_secs: u64,
}

/// What a request holds back until its usage is saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub tokens: u64,
    pub nanousd: u64,
}

#[derive(Debug, Clone, Default)]
struct Ledger {
    day: NaiveDate,
    month: (i32, u32),
    day_tokens: u64,
    day_nanousd: u64,
    month_tokens: u64,
    month_nanousd: u64,
    reserved: Estimate,
    loaded_at: Option<Instant>,
}

/// Every user's ledger.
pub struct Budgets {
    limits: BudgetLimits,
    ledgers: Mutex<HashMap<String, Ledger>>,
    /// With Redis, reservations are made there first, so that every instance sees every other's at once.
    cluster: Option<crate::cluster::Cluster>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A reservation, released when dropped; [`Reservation::settle`] swaps it for the actual usage.
#[derive(Debug)]
pub struct Reservation {
    budgets: Option<Arc<Budgets>>,
    user_id: String,
    estimate: Estimate,
    /// The cluster-wide concurrency slot the request holds, given back with the reservation.
    hold: Option<crate::cluster::limits::Hold>,
    /// The estimate as reserved in Redis, when it was.
    shared: Option<crate::cluster::limits::SharedBudget>,
}

impl Reservation {
    /// A reservation that holds nothing (no budget configured).
    pub fn none() -> Self {
        Self {
            budgets: None,
            user_id: String::new(),
            estimate: Estimate::default(),
            hold: None,
            shared: None,
        }
    }

    /// Keeps `hold` (a cluster-wide concurrency slot) until the reservation is settled or dropped.
    pub fn holding(mut self, hold: Option<crate::cluster::limits::Hold>) -> Self {
        self.hold = hold;
        self
    }

    /// The usage was saved: count it and release the reservation.
    pub fn settle(mut self, tokens: u64, nanousd: u64) {
        if let Some(shared) = self.shared.take() {
            shared.settle(tokens, nanousd);
        }
        if let Some(budgets) = self.budgets.take() {
            budgets.release(
                &self.user_id,
                self.estimate,
                Some(Estimate { tokens, nanousd }),
            );
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budgets) = self.budgets.take() {
            budgets.release(&self.user_id, self.estimate, None);
        }
    }
}

fn seconds_until(next: NaiveDate) -> u64 {
    let at = next.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    at.map_or(60, |at| (at - Utc::now()).num_seconds().max(1) as u64)
}

fn month_start(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

fn next_month(day: NaiveDate) -> NaiveDate {
    let (year, month) = if day.month() == 12 {
        (day.year() + 1, 1)
    } else {
        (day.year(), day.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(day)
}

impl Budgets {
    /// Budgets counted by this instance (reloaded from the database every [`REFRESH`]).
    pub fn new(limits: BudgetLimits) -> Arc<Self> {
        Self::shared(limits, None)
    }

    /// Budgets reserved in Redis first when `cluster` is given (this instance's ledger still counts, and
    /// decides alone while Redis does not answer).
    pub fn shared(limits: BudgetLimits, cluster: Option<crate::cluster::Cluster>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            ledgers: Mutex::new(HashMap::new()),
            cluster,
        })
    }

    fn ledgers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ledger>> {
        self.ledgers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves `estimate` for `user_id`, or says which budget it would break.
    ///
    /// # Errors
    /// `Ok(Err(OverBudget))` when a budget would be exceeded; `Err` when the database cannot be read.
    pub async fn reserve(
        self: &Arc<Self>,
        store: &dyn Store,
        user_id: &str,
        estimate: Estimate,
    ) -> Result<Result<Reservation, OverBudget>, StoreError> {
        if !self.limits.any() {
            return Ok(Ok(Reservation::none()));
        }
        let today = Utc::now().date_naive();
        let fresh = self.ledgers().get(user_id).is_some_and(|l| {
            l.day == today && l.loaded_at.is_some_and(|at| at.elapsed() < REFRESH)
        });
        if !fresh {
            let (day_tokens, day_nanousd) = store.usage_since(user_id, &today.to_string()).await?;
            let (month_tokens, month_nanousd) = store
                .usage_since(user_id, &month_start(today).to_string())
                .await?;
            let mut ledgers = self.ledgers();
            let ledger = ledgers.entry(user_id.to_string()).or_default();
            ledger.day = today;
            ledger.month = (today.year(), today.month());
            ledger.day_tokens = day_tokens.max(0) as u64;
            ledger.day_nanousd = day_nanousd.max(0) as u64;
            ledger.month_tokens = month_tokens.max(0) as u64;
            ledger.month_nanousd = month_nanousd.max(0) as u64;
            ledger.loaded_at = Some(Instant::now());
        }
        let shared = match &self.cluster {
            Some(cluster) => {
                let spent = {
                    let ledgers = self.ledgers();
                    let ledger = ledgers.get(user_id).cloned().unwrap_or_default();
                    BudgetFigures {
                        day_tokens: ledger.day_tokens,
                        day_nanousd: ledger.day_nanousd,
                        month_tokens: ledger.month_tokens,
                        month_nanousd: ledger.month_nanousd,
                    }
                };
                let limits = BudgetFigures {
                    day_tokens: self.limits.daily_tokens,
                    day_nanousd: self.limits.daily_nanousd,
                    month_tokens: self.limits.monthly_tokens,
                    month_nanousd: self.limits.monthly_nanousd,
                };
                let asked = (estimate.tokens, estimate.nanousd);
                match cluster
                    .reserve_budget(user_id, today, spent, asked, limits)
                    .await
                {
                    Ok(Ok(shared)) => Some(shared),
                    Ok(Err(refused)) => {
                        let (limit, resets) = match refused {
                            1 => ("daily_token_budget", today.succ_opt()),
                            2 => ("monthly_token_budget", Some(next_month(today))),
                            3 => ("daily_cost_budget_usd", today.succ_opt()),
                            _ => ("monthly_cost_budget_usd", Some(next_month(today))),
                        };
                        return Ok(Err(OverBudget {
                            limit,
                            retry_after_secs: resets.map_or(60, seconds_until),
                        }));
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "budgets checked by this instance alone");
                        None
                    }
                }
            }
            None => None,
        };
        let mut ledgers = self.ledgers();
        let ledger = ledgers.entry(user_id.to_string()).or_default();
        let reserved = ledger.reserved;
        let checks = [
            (
                "daily_token_budget",
                self.limits.daily_tokens,
                ledger.day_tokens + reserved.tokens + estimate.tokens,
                today.succ_opt(),
            ),
            (
                "monthly_token_budget",
                self.limits.monthly_tokens,
                ledger.month_tokens + reserved.tokens + estimate.tokens,
                Some(next_month(today)),
            ),
            (
                "daily_cost_budget_usd",
                self.limits.daily_nanousd,
                ledger.day_nanousd + reserved.nanousd + estimate.nanousd,
                today.succ_opt(),
            ),
            (
                "monthly_cost_budget_usd",
                self.limits.monthly_nanousd,
                ledger.month_nanousd + reserved.nanousd + estimate.nanousd,
                Some(next_month(today)),
            ),
        ];
        for (limit, budget, would_be, resets) in checks {
            // Redis's count (every instance's) decided already when it answered.
            if shared.is_none() && budget > 0 && would_be > budget {
                let retry_after_secs = resets.map_or(60, seconds_until);
                return Ok(Err(OverBudget {
                    limit,
                    retry_after_secs,
                }));
            }
        }
        ledger.reserved.tokens += estimate.tokens;
        ledger.reserved.nanousd += estimate.nanousd;
        Ok(Ok(Reservation {
            budgets: Some(Arc::clone(self)),
            user_id: user_id.to_string(),
            estimate,
            hold: None,
            shared,
        }))
    }

    fn release(&self, user_id: &str, estimate: Estimate, actual: Option<Estimate>) {
        let mut ledgers = self.ledgers();
        let Some(ledger) = ledgers.get_mut(user_id) else {
            return;
        };
        ledger.reserved.tokens = ledger.reserved.tokens.saturating_sub(estimate.tokens);
        ledger.reserved.nanousd = ledger.reserved.nanousd.saturating_sub(estimate.nanousd);
        if let Some(actual) = actual {
            let today = Utc::now().date_naive();
            if ledger.day == today {
                ledger.day_tokens += actual.tokens;
                ledger.day_nanousd += actual.nanousd;
            }
            if ledger.month == (today.year(), today.month()) {
                ledger.month_tokens += actual.tokens;
                ledger.month_nanousd += actual.nanousd;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_arithmetic() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 31).expect("date");
        assert_eq!(
            next_month(day),
            NaiveDate::from_ymd_opt(2027, 1, 1).expect("date")
        );
        assert_eq!(
            month_start(day),
            NaiveDate::from_ymd_opt(2026, 12, 1).expect("date")
        );
    }

    #[test]
    fn usd_budgets_become_nanousd() {
        let limits = LimitsConfig {
            daily_cost_budget_usd: 0.25,
            ..LimitsConfig::default()
        };
        assert_eq!(
            BudgetLimits::from_config(&limits).daily_nanousd,
            250_000_000
        );
    }
}

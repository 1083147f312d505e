//! Provider health, checked in the background and cached: `/health` never makes a live upstream call.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Provider;

/// The last check of one provider.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ProviderHealth {
    /// `None` until the first check has run.
    pub ok: Option<bool>,
    pub checked_at: Option<DateTime<Utc>>,
    /// Why the last check failed (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Round trip of the last check, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

/// Cached health of every provider, refreshed by [`ProviderHealthMonitor::run`].
#[derive(Clone, Default)]
pub struct ProviderHealthMonitor {
    providers: Vec<Arc<dyn Provider>>,
    state: Arc<RwLock<BTreeMap<String, ProviderHealth>>>,
}

impl ProviderHealthMonitor {
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Self {
        let state = providers
            .iter()
            .map(|p| {
                (
                    p.name().to_string(),
                    ProviderHealth {
                        ok: None,
                        checked_at: None,
                        error: None,
                        latency_ms: None,
                    },
                )
            })
            .collect();
        Self {
            providers,
            state: Arc::new(RwLock::new(state)),
        }
    }

    /// The cached results.
    pub fn snapshot(&self) -> BTreeMap<String, ProviderHealth> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Checks every provider once, concurrently, each within `timeout`.
    pub async fn check_all(&self, timeout: Duration) {
        let checks = self.providers.iter().map(|provider| async move {
            let started = std::time::Instant::now();
            let result = match provider.check() {
                None => Ok(()),
                Some(request) => match tokio::time::timeout(timeout, request.send()).await {
                    Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
                    Ok(Err(e)) if e.is_connect() => Err("cannot connect".to_string()),
                    Ok(Err(e)) => Err(format!("request failed: {}", e.without_url())),
                    Ok(Ok(response)) if response.status().is_success() => Ok(()),
                    Ok(Ok(response)) => Err(format!("HTTP {}", response.status().as_u16())),
                },
            };
            let health = ProviderHealth {
                ok: Some(result.is_ok()),
                checked_at: Some(crate::store::now()),
                latency_ms: Some(started.elapsed().as_millis() as u64),
                error: result.err(),
            };
            (provider.name().to_string(), health)
        });
        let results = futures::future::join_all(checks).await;
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, health) in results {
            if health.ok == Some(false) {
                tracing::warn!(provider = %name, error = health.error.as_deref().unwrap_or(""), "provider check failed");
            }
            state.insert(name, health);
        }
    }

    /// Checks every `interval`, forever (the server aborts it at shutdown).
    pub async fn run(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check_all(Duration::from_secs(10)).await;
        }
    }
}

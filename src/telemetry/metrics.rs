//! Prometheus metrics (the `metrics` facade with metrics-exporter-prometheus), served at `/metrics`.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `chatgate_generations_started_total` | counter | `model` |
//! | `chatgate_generations_finished_total` | counter | `model`, `outcome` (`complete`, `cancelled`, `failed`, `interrupted`) |
//! | `chatgate_active_generations` | gauge | |
//! | `chatgate_active_subscribers` | gauge | |
//! | `chatgate_ttft_seconds` | histogram | `provider`: request sent upstream → first delta received |
//! | `chatgate_gateway_overhead_seconds` | histogram | client's time to first delta minus the upstream's TTFT |
//! | `chatgate_deltas_relayed_total` | counter | `provider` |
//! | `chatgate_tokens_total` | counter | `provider`, `kind` (`prompt`, `completion`) |
//! | `chatgate_upstream_errors_total` | counter | `provider`, `kind` |
//! | `chatgate_db_write_seconds` | histogram | `op` (`save`, `checkpoint`) |
//! | `chatgate_jwks_fetches_total` | counter | `outcome` (`ok`, `error`): fetches of `auth.jwks_url` |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 0.5 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder on first use; later calls share it (several servers in one test process
/// report into one registry). `None` when another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS);
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => Some(handle),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot install the metrics recorder; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    handle()
        .map(|h| {
            h.run_upkeep();
            h.render()
        })
        .unwrap_or_default()
}

//! Prometheus metrics (the `metrics` facade with metrics-exporter-prometheus), served at `/metrics`. Every
//! family has `# HELP` and `# TYPE` ([`FAMILIES`]), and the counters and gauges are there from the start at 0
//! (per configured model and provider where labelled), so a dashboard or an alert sees them before traffic.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `chatgate_generations_started_total` | counter | `model` |
//! | `chatgate_generations_finished_total` | counter | `model`, `outcome` (`complete`, `cancelled`, `failed`, `interrupted`) |
//! | `chatgate_active_generations` | gauge | |
//! | `chatgate_active_subscribers` | gauge | |
//! | `chatgate_ttft_seconds` | histogram | `provider`: request sent upstream → first delta received |
//! | `chatgate_gateway_overhead_seconds` | histogram | `transport` (`sse`, `ai_sdk`, `websocket`, `openai_chat`, `openai_responses`): client's time to first token minus the upstream's TTFT |
//! | `chatgate_deltas_relayed_total` | counter | `provider` |
//! | `chatgate_tokens_total` | counter | `model`, `provider`, `kind` (`prompt`, `completion`) |
//! | `chatgate_cost_nanousd_total` | counter | `model`: what replies cost, in nano-USD (1e-9 USD) |
//! | `chatgate_upstream_errors_total` | counter | `provider`, `kind` |
//! | `chatgate_db_write_seconds` | histogram | `op` (`save`, `checkpoint`) |
//! | `chatgate_text_repaired_total` | counter | `reason` (`nul`, `lone_surrogate`): provider text repaired before storing |
//! | `chatgate_media_uploaded_bytes_total` | counter | `kind` (`image`, `audio`) |
//! | `chatgate_transcription_seconds` | histogram | |
//! | `chatgate_jwks_fetches_total` | counter | `outcome` (`ok`, `error`): fetches of `auth.jwks_url` |

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::{Stream, StreamExt};

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::event::{EventKind, LoggedEvent};
use crate::stream::Generation;

/// A metric family's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every family: name, kind, unit, and its `# HELP` text.
pub const FAMILIES: &[(&str, Kind, Unit, &str)] = &[
    (
        "chatgate_generations_started_total",
        Kind::Counter,
        Unit::Count,
        "Generations started, by model alias.",
    ),
    (
        "chatgate_generations_finished_total",
        Kind::Counter,
        Unit::Count,
        "Generations finished, by model alias and outcome (complete, cancelled, failed, interrupted).",
    ),
    (
        "chatgate_active_generations",
        Kind::Gauge,
        Unit::Count,
        "Generations running now.",
    ),
    (
        "chatgate_active_subscribers",
        Kind::Gauge,
        Unit::Count,
        "Clients following a generation now (SSE, WebSocket, OpenAI streams).",
    ),
    (
        "chatgate_ttft_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Upstream time to first token: request sent to the provider until its first delta, by provider.",
    ),
    (
        "chatgate_gateway_overhead_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "What the gateway adds to the first token: from the request to its first token handed to the transport, minus the upstream's time to first token, by transport (sse, ai_sdk, websocket, openai_chat, openai_responses).",
    ),
    (
        "chatgate_deltas_relayed_total",
        Kind::Counter,
        Unit::Count,
        "Deltas received from providers and relayed, by provider.",
    ),
    (
        "chatgate_tokens_total",
        Kind::Counter,
        Unit::Count,
        "Tokens of finished replies, by model alias, provider and kind (prompt, completion).",
    ),
    (
        "chatgate_cost_nanousd_total",
        Kind::Counter,
        Unit::Count,
        "Cost of finished replies in nano-USD (1e-9 USD), by model alias.",
    ),
    (
        "chatgate_upstream_errors_total",
        Kind::Counter,
        Unit::Count,
        "Failed provider attempts, by provider and error kind.",
    ),
    (
        "chatgate_db_write_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Database writes of replies, by operation (save, checkpoint).",
    ),
    (
        "chatgate_text_repaired_total",
        Kind::Counter,
        Unit::Count,
        "Provider text repaired before it was stored, by reason (nul, lone_surrogate).",
    ),
    (
        "chatgate_media_uploaded_bytes_total",
        Kind::Counter,
        Unit::Bytes,
        "Bytes of media uploaded, by kind (image, audio).",
    ),
    (
        "chatgate_transcription_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Time to transcribe a voice message.",
    ),
    (
        "chatgate_jwks_fetches_total",
        Kind::Counter,
        Unit::Count,
        "Fetches of the signing keys at auth.jwks_url, by outcome (ok, error).",
    ),
];

/// Gives every family its `# HELP` text.
fn describe() {
    for &(name, kind, unit, help) in FAMILIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// Registers the counters and gauges at 0 (an increment of nothing), per configured model alias and provider
/// where they are labelled so, so they are scraped from the start.
pub fn register(models: &[(String, String)]) {
    for name in ["chatgate_active_generations", "chatgate_active_subscribers"] {
        metrics::gauge!(name).increment(0.0);
    }
    for (model, provider) in models {
        let (model, provider) = (model.clone(), provider.clone());
        metrics::counter!("chatgate_generations_started_total", "model" => model.clone())
            .increment(0);
        for outcome in ["complete", "cancelled", "failed", "interrupted"] {
            metrics::counter!("chatgate_generations_finished_total", "model" => model.clone(), "outcome" => outcome).increment(0);
        }
        for kind in ["prompt", "completion"] {
            metrics::counter!("chatgate_tokens_total", "model" => model.clone(), "provider" => provider.clone(), "kind" => kind).increment(0);
        }
        metrics::counter!("chatgate_cost_nanousd_total", "model" => model).increment(0);
        metrics::counter!("chatgate_deltas_relayed_total", "provider" => provider).increment(0);
    }
}

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
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
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

/// The transports a client follows a reply on, as the `transport` label of `chatgate_gateway_overhead_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// chatgate's native SSE (`POST /api/v1/conversations/{id}/messages`, streamed).
    Sse,
    /// The Vercel AI SDK UI message stream (`?format=ai-sdk`).
    AiSdk,
    /// A WebSocket `send`.
    WebSocket,
    /// `POST /v1/chat/completions`, streamed.
    OpenAiChat,
    /// `POST /v1/responses`, streamed.
    OpenAiResponses,
}

impl Transport {
    /// Every transport, in the order dashboards list them.
    pub const ALL: [Transport; 5] = [
        Transport::Sse,
        Transport::AiSdk,
        Transport::WebSocket,
        Transport::OpenAiChat,
        Transport::OpenAiResponses,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::AiSdk => "ai_sdk",
            Transport::WebSocket => "websocket",
            Transport::OpenAiChat => "openai_chat",
            Transport::OpenAiResponses => "openai_responses",
        }
    }
}

/// Records what the gateway added to a client's wait for its first token: the time from `received` (the
/// request, or WebSocket frame, that started the generation) until its first delta or tool call is handed to
/// the transport's encoder, minus the upstream's own time to first token, in seconds. Once per reply; nothing
/// when the reply has no upstream TTFT (it failed before its first token).
#[derive(Debug)]
pub struct Overhead {
    received: Instant,
    transport: Transport,
    pending: bool,
}

impl Overhead {
    pub fn new(received: Instant, transport: Transport) -> Self {
        Self {
            received,
            transport,
            pending: true,
        }
    }

    /// Looks at the next event relayed; records on the first token.
    pub fn observe(&mut self, generation: &Generation, event: &LoggedEvent) {
        if !self.pending || !matches!(event.kind(), EventKind::Delta | EventKind::ToolCall) {
            return;
        }
        self.pending = false;
        if let Some(ttft) = generation.upstream_ttft() {
            let overhead = self.received.elapsed().saturating_sub(ttft);
            metrics::histogram!("chatgate_gateway_overhead_seconds", "transport" => self.transport.as_str())
                .record(overhead.as_secs_f64());
        }
    }

    /// `events` (a generation's, from its start) with their first token measured on the way through.
    pub fn measure<S>(
        mut self,
        generation: Arc<Generation>,
        events: S,
    ) -> impl Stream<Item = Arc<LoggedEvent>> + Send + 'static
    where
        S: Stream<Item = Arc<LoggedEvent>> + Send + 'static,
    {
        events.map(move |event| {
            self.observe(&generation, &event);
            event
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Grafana dashboard in `docs/grafana/chatgate.json` queries only families that exist, and shows each.
    #[test]
    fn the_dashboard_queries_every_family_and_nothing_else() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/grafana/chatgate.json")).expect("JSON");
        let mut queried = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for (at, _) in expr.match_indices("chatgate_") {
                    let name: String = expr[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(&name)
                        .to_string();
                    queried.insert(family);
                }
            }
        }
        let families: std::collections::BTreeSet<String> = FAMILIES
            .iter()
            .map(|(name, ..)| (*name).to_string())
            .collect();
        let unknown: Vec<_> = queried.difference(&families).collect();
        assert!(
            unknown.is_empty(),
            "the dashboard queries unknown metrics: {unknown:?}"
        );
        let unshown: Vec<_> = families.difference(&queried).collect();
        assert!(
            unshown.is_empty(),
            "the dashboard does not show: {unshown:?}"
        );
    }
}

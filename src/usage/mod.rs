//! Accounting: token counts (the provider's, else a local tiktoken estimate) and prices in integer nano-USD.

pub mod budget;
pub mod tokens;

use serde::Serialize;

pub use crate::domain::nanousd_to_usd;
pub use crate::providers::Usage;

use crate::config::ModelConfig;

/// Final token figures of a generation, every count known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenCounts {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// True when a count is a local estimate rather than the provider's figure.
    pub estimated: bool,
}

/// A model's prices, in pico-USD (1e-12 USD) per token: exact for any price in USD per million tokens with up
/// to six decimals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prices {
    pub input_picousd_per_token: u64,
    pub output_picousd_per_token: u64,
    pub cached_input_picousd_per_token: u64,
}

/// USD per million tokens → pico-USD per token (USD/Mtok × 1e12 / 1e6).
fn per_mtok_to_picousd(usd_per_mtok: f64) -> u64 {
    (usd_per_mtok * 1e6).round().max(0.0) as u64
}

impl Prices {
    /// The prices of a configured model alias; cached prompt tokens cost the input price unless set.
    pub fn of(model: &ModelConfig) -> Self {
        let input = per_mtok_to_picousd(model.input_per_mtok);
        Prices {
            input_picousd_per_token: input,
            output_picousd_per_token: per_mtok_to_picousd(model.output_per_mtok),
            cached_input_picousd_per_token: model
                .cached_input_per_mtok
                .map_or(input, per_mtok_to_picousd),
        }
    }

    /// Cost of `counts` in nano-USD, rounded half up once at the end. Cached tokens are priced at the cached
    /// rate and the rest of the prompt at the input rate; reasoning tokens are part of the completion.
    pub fn cost_nanousd(&self, counts: &TokenCounts) -> i64 {
        let cached = counts.cached_tokens.min(counts.prompt_tokens);
        let uncached = counts.prompt_tokens - cached;
        let picousd = u128::from(uncached) * u128::from(self.input_picousd_per_token)
            + u128::from(cached) * u128::from(self.cached_input_picousd_per_token)
            + u128::from(counts.completion_tokens) * u128::from(self.output_picousd_per_token);
        i64::try_from((picousd + 500) / 1000).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(input: f64, output: f64, cached: Option<f64>) -> ModelConfig {
        ModelConfig {
            provider: "p".into(),
            model: "m".into(),
            input_per_mtok: input,
            output_per_mtok: output,
            cached_input_per_mtok: cached,
            context_window: 8192,
            max_output_tokens: None,
            fallbacks: vec![],
            modalities: None,
            temperature: None,
            top_p: None,
            stop: vec![],
        }
    }

    #[test]
    fn cost_is_exact_to_the_nanousd() {
        // gpt-4o-mini: $0.15 / $0.60 per Mtok, cached $0.075.
        let prices = Prices::of(&model(0.15, 0.60, Some(0.075)));
        let counts = TokenCounts {
            prompt_tokens: 79,
            completion_tokens: 1,
            ..Default::default()
        };
        // 79 × 150 + 1 × 600 = 12_450 nano-USD.
        assert_eq!(prices.cost_nanousd(&counts), 12_450);
        let counts = TokenCounts {
            prompt_tokens: 1000,
            cached_tokens: 400,
            completion_tokens: 10,
            ..Default::default()
        };
        // 600 × 150 + 400 × 75 + 10 × 600 = 126_000.
        assert_eq!(prices.cost_nanousd(&counts), 126_000);
        // Sub-nano prices round once, half up: 3 × 37.5 = 112.5 → 113.
        let prices = Prices::of(&model(0.0375, 0.0, None));
        assert_eq!(
            prices.cost_nanousd(&TokenCounts {
                prompt_tokens: 3,
                ..Default::default()
            }),
            113
        );
    }

    #[test]
    fn merge_keeps_known_figures() {
        let mut usage = Usage {
            prompt_tokens: Some(11),
            completion_tokens: Some(1),
            cached_tokens: Some(3),
            ..Default::default()
        };
        usage.merge(Usage {
            completion_tokens: Some(6),
            ..Default::default()
        });
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: Some(11),
                completion_tokens: Some(6),
                cached_tokens: Some(3),
                reasoning_tokens: None
            }
        );
    }
}

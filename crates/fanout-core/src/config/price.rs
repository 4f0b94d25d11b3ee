//! What a model call costs, cache reads and writes included.
//!
//! What it owns: the token counts a bill is made of ([`TokenUse`]), the providers' published
//! cache multipliers used when a workflow gives no cache prices, and the arithmetic. It does not
//! read usage off the wire (`provider::types::Usage::billed` does) or enforce budgets.
//!
//! Defaults (per million tokens, relative to the model's input price): Anthropic writes a
//! 5-minute cache entry at 1.25× and reads it at 0.1×; OpenAI caches for free (writes at 1×,
//! i.e. plain input) and reads at 0.5× (the older models' discount; newer models read for less,
//! set `cached_input` to their price).

use serde::Serialize;

use super::{ModelSpec, Provider};

/// Anthropic's cache-write price, as a multiple of the input price (5-minute entries).
pub const ANTHROPIC_WRITE_MULTIPLIER: f64 = 1.25;
/// Anthropic's cache-read price, as a multiple of the input price.
pub const ANTHROPIC_READ_MULTIPLIER: f64 = 0.1;
/// OpenAI's cache-write price (none: plain input).
pub const OPENAI_WRITE_MULTIPLIER: f64 = 1.0;
/// OpenAI's cache-read price, as a multiple of the input price.
pub const OPENAI_READ_MULTIPLIER: f64 = 0.5;

/// The tokens one call (or many) is billed for; `input` excludes what the cache read or wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenUse {
    pub input: u64,
    pub cache_write: u64,
    pub cache_read: u64,
    pub output: u64,
}

impl TokenUse {
    /// Plain input and output, nothing cached.
    pub fn uncached(input: u64, output: u64) -> Self {
        TokenUse {
            input,
            output,
            ..TokenUse::default()
        }
    }

    /// Every input token: uncached, written and read.
    pub fn total_input(&self) -> u64 {
        self.input + self.cache_write + self.cache_read
    }

    pub fn add(&mut self, other: TokenUse) {
        self.input += other.input;
        self.cache_write += other.cache_write;
        self.cache_read += other.cache_read;
        self.output += other.output;
    }
}

impl ModelSpec {
    /// US dollars per million cache-read tokens.
    pub fn cache_read_price(&self) -> f64 {
        let multiplier = match self.provider {
            Provider::Anthropic => ANTHROPIC_READ_MULTIPLIER,
            Provider::OpenAi => OPENAI_READ_MULTIPLIER,
        };
        self.cached_input_price
            .unwrap_or(self.input_price * multiplier)
    }

    /// US dollars per million cache-write tokens.
    pub fn cache_write_price(&self) -> f64 {
        let multiplier = match self.provider {
            Provider::Anthropic => ANTHROPIC_WRITE_MULTIPLIER,
            Provider::OpenAi => OPENAI_WRITE_MULTIPLIER,
        };
        self.cache_write_price
            .unwrap_or(self.input_price * multiplier)
    }

    /// Dollars for `tokens`.
    pub fn cost(&self, tokens: TokenUse) -> f64 {
        (tokens.input as f64 * self.input_price
            + tokens.cache_write as f64 * self.cache_write_price()
            + tokens.cache_read as f64 * self.cache_read_price()
            + tokens.output as f64 * self.output_price)
            / 1_000_000.0
    }

    /// Dollars the same tokens would have cost with nothing cached (every input token at the
    /// input price).
    pub fn cost_uncached(&self, tokens: TokenUse) -> f64 {
        self.cost(TokenUse::uncached(tokens.total_input(), tokens.output))
    }

    /// Dollars the cache saved on `tokens` (negative when writes were never read back).
    pub fn saved(&self, tokens: TokenUse) -> f64 {
        self.cost_uncached(tokens) - self.cost(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(provider: Provider) -> ModelSpec {
        ModelSpec {
            provider,
            model: "m".into(),
            input_price: 3.0,
            output_price: 15.0,
            cached_input_price: None,
            cache_write_price: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn anthropic_defaults_write_at_one_and_a_quarter_and_read_at_a_tenth() {
        let model = spec(Provider::Anthropic);
        let tokens = TokenUse {
            input: 1_000_000,
            cache_write: 1_000_000,
            cache_read: 1_000_000,
            output: 1_000_000,
        };
        assert!(close(model.cost(tokens), 3.0 + 3.75 + 0.3 + 15.0));
        assert!(close(model.cost_uncached(tokens), 9.0 + 15.0));
        assert!(close(model.saved(tokens), 24.0 - 22.05));
    }

    #[test]
    fn openai_defaults_read_at_half_and_write_for_free() {
        let model = spec(Provider::OpenAi);
        let tokens = TokenUse {
            input: 2_000_000,
            cache_read: 1_000_000,
            ..TokenUse::default()
        };
        assert!(close(model.cost(tokens), 6.0 + 1.5));
        assert!(close(model.saved(tokens), 1.5));
        assert!(close(model.cache_write_price(), 3.0));
    }

    #[test]
    fn workflow_prices_override_the_multipliers() {
        let mut model = spec(Provider::Anthropic);
        model.cached_input_price = Some(0.5);
        model.cache_write_price = Some(6.0);
        let tokens = TokenUse {
            cache_write: 1_000_000,
            cache_read: 2_000_000,
            ..TokenUse::default()
        };
        assert!(close(model.cost(tokens), 6.0 + 1.0));
        // A write never read back costs more than no cache at all.
        let wasted = TokenUse {
            cache_write: 1_000_000,
            ..TokenUse::default()
        };
        assert!(model.saved(wasted) < 0.0);
    }
}

//! Token estimates for rate-limit reservations, without a tokenizer.
//!
//! There is no public tokenizer for current Claude models, so input tokens are estimated from
//! bytes (about 3.5 bytes a token) and the estimate is calibrated online: each response's
//! `usage` moves a running ratio of actual to estimated tokens. The estimate is padded a little
//! above that ratio, because reserving too little costs a 429 while reserving too much only
//! delays the next request until the reservation is corrected.

use std::sync::Mutex;

use crate::provider::Request;
use crate::retry::lock;

/// Bytes per token assumed before any calibration.
pub const BYTES_PER_TOKEN: f64 = 3.5;
/// Fixed tokens per request for role markers and framing.
const REQUEST_OVERHEAD: f64 = 8.0;
/// Tokens per message for role markers.
const MESSAGE_OVERHEAD: f64 = 4.0;
/// Weight of one observation in the running ratios.
const SMOOTHING: f64 = 0.1;

#[derive(Debug)]
struct Calibration {
    /// Actual input tokens over raw byte-based estimate.
    input_ratio: f64,
    /// Mean output tokens per response.
    output_mean: f64,
    observations: u64,
}

/// An online-calibrated token estimator, shared by the fleet.
#[derive(Debug)]
pub struct TokenEstimator {
    /// Margin above the calibrated ratio (1.1 = reserve 10 % more than expected).
    safety: f64,
    calibration: Mutex<Calibration>,
}

impl Default for TokenEstimator {
    fn default() -> Self {
        TokenEstimator::new(1.2, 1.1)
    }
}

impl TokenEstimator {
    /// `initial_ratio` applies until responses arrive; `safety` pads every estimate.
    pub fn new(initial_ratio: f64, safety: f64) -> Self {
        TokenEstimator {
            safety: safety.max(1.0),
            calibration: Mutex::new(Calibration {
                input_ratio: initial_ratio.max(0.1),
                output_mean: 0.0,
                observations: 0,
            }),
        }
    }

    /// The uncalibrated estimate: bytes / 3.5 plus framing overhead.
    pub fn raw_input(request: &Request) -> f64 {
        request.input_bytes() as f64 / BYTES_PER_TOKEN
            + REQUEST_OVERHEAD
            + MESSAGE_OVERHEAD * request.messages.len() as f64
    }

    /// Input tokens to reserve for `request`.
    pub fn input_tokens(&self, request: &Request) -> u64 {
        self.input_tokens_for(Self::raw_input(request))
    }

    /// Input tokens to reserve for a request whose [`Self::raw_input`] is `raw`.
    pub fn input_tokens_for(&self, raw: f64) -> u64 {
        let ratio = lock(&self.calibration).input_ratio;
        (raw * ratio * self.safety).ceil() as u64
    }

    /// Output tokens to reserve: the mean seen so far (padded), never above `max_tokens`;
    /// before any response, `max_tokens` itself, as the API charged it historically.
    pub fn output_tokens(&self, request: &Request) -> u64 {
        let calibration = lock(&self.calibration);
        let max = u64::from(request.max_tokens.max(1));
        if calibration.observations == 0 {
            return max;
        }
        ((calibration.output_mean * self.safety).ceil() as u64).clamp(1, max)
    }

    /// Learn from a response: `raw_estimate` is [`Self::raw_input`] of its request.
    pub fn observe(&self, raw_estimate: f64, actual_input: u64, actual_output: u64) {
        if raw_estimate <= 0.0 {
            return;
        }
        let mut calibration = lock(&self.calibration);
        let ratio = actual_input as f64 / raw_estimate;
        if calibration.observations == 0 {
            calibration.input_ratio = ratio;
            calibration.output_mean = actual_output as f64;
        } else {
            calibration.input_ratio += SMOOTHING * (ratio - calibration.input_ratio);
            calibration.output_mean += SMOOTHING * (actual_output as f64 - calibration.output_mean);
        }
        calibration.observations += 1;
    }

    /// The current actual/raw input ratio (for reports).
    pub fn input_ratio(&self) -> f64 {
        lock(&self.calibration).input_ratio
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::provider::Message;

    fn request(bytes: usize) -> Request {
        let mut request = Request::new("m", 1000);
        request.messages.push(Message::user("x".repeat(bytes)));
        request
    }

    #[test]
    fn calibrates_towards_observed_usage() {
        let estimator = TokenEstimator::new(1.2, 1.0);
        let req = request(3500);
        let raw = TokenEstimator::raw_input(&req);
        assert_eq!(estimator.input_tokens(&req), (raw * 1.2).ceil() as u64);
        assert_eq!(estimator.output_tokens(&req), 1000);
        // The server counts 4 bytes a token: the ratio converges to raw/actual.
        let actual = 3500 / 4;
        for _ in 0..200 {
            estimator.observe(raw, actual as u64, 40);
        }
        let estimate = estimator.input_tokens(&req);
        assert!(
            estimate.abs_diff(actual as u64) <= 2,
            "{estimate} vs {actual}"
        );
        assert_eq!(estimator.output_tokens(&req), 40);
    }

    #[test]
    fn safety_margin_keeps_estimates_above_actual() {
        let estimator = TokenEstimator::new(1.0, 1.1);
        let req = request(4000);
        let raw = TokenEstimator::raw_input(&req);
        estimator.observe(raw, 1000, 10);
        assert!(estimator.input_tokens(&req) >= 1100);
    }
}

//! Random fault injection, reproducible from the seed.
//!
//! For request number `seq`, one uniform draw u from SplitMix64(seed, seq) picks at most one
//! fault: the probabilities are laid end to end in the order overloaded, api_error, hang,
//! truncate_body, cut_stream, malformed_json, and u falls in one of them or past them all (no
//! fault). `truncate_body` only applies to non-streamed answers and `cut_stream` only to streamed
//! ones; a draw that lands on the one that does not apply means no fault. Faults are drawn only
//! for requests that passed auth, validation and the rate limiter.

use serde::{Deserialize, Serialize};

use crate::prng::SplitMix64;

/// Fault probabilities, each in `[0, 1]`, summing to at most 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// 529 `overloaded_error` (OpenAI routes: 503 `server_error`).
    pub overloaded: f64,
    /// 500 `api_error` (OpenAI routes: 500 `server_error`).
    pub api_error: f64,
    /// No answer at all until the client gives up or the simulator shuts down.
    pub hang: f64,
    /// A 200 whose JSON body is cut short (non-streamed answers).
    pub truncate_body: f64,
    /// The SSE stream stops mid-event and the connection is closed (streamed answers).
    pub cut_stream: f64,
    /// A 200 whose body (or one stream event) is not valid JSON.
    pub malformed_json: f64,
}

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Overloaded,
    ApiError,
    Hang,
    TruncateBody,
    CutStream,
    MalformedJson,
}

impl Fault {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Overloaded => "overloaded",
            Fault::ApiError => "api_error",
            Fault::Hang => "hang",
            Fault::TruncateBody => "truncate_body",
            Fault::CutStream => "cut_stream",
            Fault::MalformedJson => "malformed_json",
        }
    }
}

impl Faults {
    /// True when no fault can fire.
    pub fn is_none(&self) -> bool {
        self.total() <= 0.0
    }

    pub(crate) fn total(&self) -> f64 {
        self.overloaded
            + self.api_error
            + self.hang
            + self.truncate_body
            + self.cut_stream
            + self.malformed_json
    }

    /// A description of the first invalid probability, if any.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("overloaded", self.overloaded),
            ("api_error", self.api_error),
            ("hang", self.hang),
            ("truncate_body", self.truncate_body),
            ("cut_stream", self.cut_stream),
            ("malformed_json", self.malformed_json),
        ];
        for (name, p) in all {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "fault probability `{name}` must be in [0, 1], got {p}"
                ));
            }
        }
        if self.total() > 1.0 + 1e-9 {
            return Err(format!(
                "fault probabilities add up to {:.3}; they must add up to at most 1",
                self.total()
            ));
        }
        Ok(())
    }

    pub(crate) fn roll(&self, seed: u64, seq: u64, streaming: bool) -> Option<Fault> {
        if self.is_none() {
            return None;
        }
        let u = SplitMix64::keyed(seed, seq, 1).next_f64();
        let table = [
            (Fault::Overloaded, self.overloaded),
            (Fault::ApiError, self.api_error),
            (Fault::Hang, self.hang),
            (Fault::TruncateBody, self.truncate_body),
            (Fault::CutStream, self.cut_stream),
            (Fault::MalformedJson, self.malformed_json),
        ];
        let mut edge = 0.0;
        for (fault, p) in table {
            edge += p;
            if u < edge {
                return match (fault, streaming) {
                    (Fault::TruncateBody, true) | (Fault::CutStream, false) => None,
                    _ => Some(fault),
                };
            }
        }
        None
    }
}

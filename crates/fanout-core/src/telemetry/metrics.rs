//! The GenAI client metrics of a run, from its `chat` spans: `gen_ai.client.token.usage`
//! (histogram of tokens per call, `{token}`, one series per model, provider and
//! `gen_ai.token.type` input/output) and `gen_ai.client.operation.duration` (histogram of
//! seconds per call), with the bucket boundaries the GenAI semantic conventions advise. The
//! values are recorded on the SDK's histograms by [`super::otlp`], which aggregates them into
//! one cumulative data point per series and exports them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::spans::Span;

/// Advised boundaries of `gen_ai.client.token.usage`.
pub const TOKEN_BOUNDS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Advised boundaries of `gen_ai.client.operation.duration`, seconds.
pub const DURATION_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// One histogram series: its attributes and the values observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub attributes: Vec<(&'static str, String)>,
    pub values: Vec<f64>,
}

/// The run's metrics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    pub token_usage: Vec<Series>,
    pub duration: Vec<Series>,
}

/// The metrics of the `chat` spans among `spans`.
pub fn from_spans(spans: &[Span]) -> Metrics {
    let mut tokens: BTreeMap<(String, String, &'static str), Vec<f64>> = BTreeMap::new();
    let mut durations: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for span in spans {
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| value)
        };
        if attribute("gen_ai.operation.name") != Some(&json!("chat")) {
            continue;
        }
        let text = |key: &str| {
            attribute(key)
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned()
        };
        let model = text("gen_ai.request.model");
        let provider = text("gen_ai.provider.name");
        for (kind, key) in [
            ("input", "gen_ai.usage.input_tokens"),
            ("output", "gen_ai.usage.output_tokens"),
        ] {
            if let Some(count) = attribute(key).and_then(Value::as_u64) {
                tokens
                    .entry((model.clone(), provider.clone(), kind))
                    .or_default()
                    .push(count as f64);
            }
        }
        let seconds =
            span.end_unix_nano.saturating_sub(span.start_unix_nano) as f64 / 1_000_000_000.0;
        durations
            .entry((model, provider))
            .or_default()
            .push(seconds);
    }
    let base = |model: String, provider: String| {
        vec![
            ("gen_ai.operation.name", "chat".to_owned()),
            ("gen_ai.request.model", model),
            ("gen_ai.provider.name", provider),
        ]
    };
    Metrics {
        token_usage: tokens
            .into_iter()
            .map(|((model, provider, kind), values)| {
                let mut attributes = base(model, provider);
                attributes.push(("gen_ai.token.type", kind.to_owned()));
                Series { attributes, values }
            })
            .collect(),
        duration: durations
            .into_iter()
            .map(|((model, provider), values)| Series {
                attributes: base(model, provider),
                values,
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn chat(model: &str, input: u64, output: u64, start: u128, end: u128) -> Span {
        Span {
            events: Vec::new(),
            span_id: [0; 8],
            parent_span_id: None,
            name: format!("chat {model}"),
            kind: 3,
            start_unix_nano: start,
            end_unix_nano: end,
            attributes: vec![
                ("gen_ai.operation.name", json!("chat")),
                ("gen_ai.request.model", json!(model)),
                ("gen_ai.provider.name", json!("anthropic")),
                ("gen_ai.usage.input_tokens", json!(input)),
                ("gen_ai.usage.output_tokens", json!(output)),
            ],
            error: None,
        }
    }

    #[test]
    fn series_per_model_and_token_type_with_the_advised_buckets() {
        let mut tool = chat("m", 0, 0, 0, 1);
        tool.attributes[0].1 = json!("execute_tool");
        let spans = [
            chat("a", 100, 4, 1_000_000_000, 1_500_000_000),
            chat("a", 2000, 16, 2_000_000_000, 4_000_000_000),
            chat("b", 1, 1, 3_000_000_000, 3_010_000_000),
            tool,
        ];
        let metrics = from_spans(&spans);
        assert_eq!(metrics.token_usage.len(), 4, "a/b × input/output");
        let a_input = &metrics.token_usage[0];
        assert_eq!(
            a_input.attributes[1],
            ("gen_ai.request.model", "a".to_owned())
        );
        assert_eq!(
            a_input.attributes[3],
            ("gen_ai.token.type", "input".to_owned())
        );
        assert_eq!(a_input.values, [100.0, 2000.0]);
        assert_eq!(metrics.duration.len(), 2);
        assert_eq!(metrics.duration[0].values, [0.5, 2.0]);
    }
}

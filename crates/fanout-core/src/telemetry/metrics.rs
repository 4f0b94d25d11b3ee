//! The GenAI client metrics of a run, from its `chat` spans: `gen_ai.client.token.usage`
//! (histogram of tokens per call, `{token}`, one series per model, provider and
//! `gen_ai.token.type` input/output) and `gen_ai.client.operation.duration` (histogram of
//! seconds per call), with the bucket boundaries the GenAI semantic conventions advise. One
//! cumulative data point per series covering the run, encoded as an
//! `ExportMetricsServiceRequest` (protobuf, or JSON).

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

impl Series {
    /// Counts per bucket: `bounds.len() + 1` of them, a value `v` in the first bucket whose
    /// upper bound is `>= v`.
    pub fn bucket_counts(&self, bounds: &[f64]) -> Vec<u64> {
        let mut counts = vec![0u64; bounds.len() + 1];
        for value in &self.values {
            let index = bounds
                .iter()
                .position(|bound| value <= bound)
                .unwrap_or(bounds.len());
            counts[index] += 1;
        }
        counts
    }

    fn sum(&self) -> f64 {
        self.values.iter().sum()
    }
}

/// The run's metrics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    pub token_usage: Vec<Series>,
    pub duration: Vec<Series>,
    pub start_unix_nano: u128,
    pub end_unix_nano: u128,
}

/// The metrics of the `chat` spans among `spans`.
pub fn from_spans(spans: &[Span]) -> Metrics {
    let mut tokens: BTreeMap<(String, String, &'static str), Vec<f64>> = BTreeMap::new();
    let mut durations: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut start = u128::MAX;
    let mut end = 0;
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
        start = start.min(span.start_unix_nano);
        end = end.max(span.end_unix_nano);
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
        start_unix_nano: if start == u128::MAX { 0 } else { start },
        end_unix_nano: end,
    }
}

/// One histogram instrument and its series.
struct Instrument<'a> {
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    bounds: &'static [f64],
    series: &'a [Series],
}

fn instruments(metrics: &Metrics) -> [Instrument<'_>; 2] {
    [
        Instrument {
            name: "gen_ai.client.token.usage",
            description: "Tokens used per model call, by token type.",
            unit: "{token}",
            bounds: &TOKEN_BOUNDS,
            series: &metrics.token_usage,
        },
        Instrument {
            name: "gen_ai.client.operation.duration",
            description: "Duration of each model call.",
            unit: "s",
            bounds: &DURATION_BOUNDS,
            series: &metrics.duration,
        },
    ]
}

/// The protobuf bytes of an `ExportMetricsServiceRequest` (field numbers of
/// `opentelemetry/proto/metrics/v1/metrics.proto`).
pub fn protobuf_request(metrics: &Metrics, service_name: &str) -> Vec<u8> {
    use super::protobuf::{
        double_field, fixed64_field, key_value, message_field, packed_doubles, packed_fixed64,
        resource, string_field, varint_field,
    };
    let mut out = Vec::new();
    // ExportMetricsServiceRequest.resource_metrics = 1
    message_field(&mut out, 1, |resource_metrics| {
        message_field(resource_metrics, 1, |r| resource(r, service_name));
        // ResourceMetrics.scope_metrics = 2
        message_field(resource_metrics, 2, |scope_metrics| {
            message_field(scope_metrics, 1, |scope| {
                string_field(scope, 1, "fanout");
                string_field(scope, 2, env!("CARGO_PKG_VERSION"));
            });
            for Instrument {
                name,
                description,
                unit,
                bounds,
                series,
            } in instruments(metrics)
            {
                if series.is_empty() {
                    continue;
                }
                // ScopeMetrics.metrics = 2 → Metric { name 1, description 2, unit 3,
                // histogram 9 }
                message_field(scope_metrics, 2, |metric| {
                    string_field(metric, 1, name);
                    string_field(metric, 2, description);
                    string_field(metric, 3, unit);
                    message_field(metric, 9, |histogram| {
                        for item in series {
                            // Histogram.data_points = 1 → HistogramDataPoint
                            message_field(histogram, 1, |point| {
                                fixed64_field(point, 2, clamp(metrics.start_unix_nano));
                                fixed64_field(point, 3, clamp(metrics.end_unix_nano));
                                fixed64_field(point, 4, item.values.len() as u64);
                                double_field(point, 5, item.sum());
                                packed_fixed64(point, 6, &item.bucket_counts(bounds));
                                packed_doubles(point, 7, bounds);
                                for (key, value) in &item.attributes {
                                    key_value(point, 9, key, &Value::from(value.as_str()));
                                }
                            });
                        }
                        // aggregation_temporality = 2: cumulative
                        varint_field(histogram, 2, 2);
                    });
                });
            }
        });
    });
    out
}

fn clamp(nanos: u128) -> u64 {
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// The same request in OTLP/JSON.
pub fn json_request(metrics: &Metrics, service_name: &str) -> Value {
    let attribute = |key: &str, value: &str| json!({"key": key, "value": {"stringValue": value}});
    let metrics_json: Vec<Value> = instruments(metrics)
        .into_iter()
        .filter(|instrument| !instrument.series.is_empty())
        .map(|Instrument { name, description, unit, bounds, series }| {
            json!({
                "name": name,
                "description": description,
                "unit": unit,
                "histogram": {
                    "aggregationTemporality": 2,
                    "dataPoints": series.iter().map(|item| json!({
                        "startTimeUnixNano": metrics.start_unix_nano.to_string(),
                        "timeUnixNano": metrics.end_unix_nano.to_string(),
                        "count": item.values.len().to_string(),
                        "sum": item.sum(),
                        "bucketCounts": item.bucket_counts(bounds).iter().map(u64::to_string).collect::<Vec<_>>(),
                        "explicitBounds": bounds,
                        "attributes": item.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                },
            })
        })
        .collect();
    json!({
        "resourceMetrics": [{
            "resource": {"attributes": [attribute("service.name", service_name)]},
            "scopeMetrics": [{
                "scope": {"name": "fanout", "version": env!("CARGO_PKG_VERSION")},
                "metrics": metrics_json,
            }],
        }]
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn chat(model: &str, input: u64, output: u64, start: u128, end: u128) -> Span {
        Span {
            span_id: "00".repeat(8),
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
        // 100 → (64, 256]; 2000 → (1024, 4096].
        let counts = a_input.bucket_counts(&TOKEN_BOUNDS);
        assert_eq!(counts.len(), 15);
        assert_eq!(
            (counts[4], counts[6], counts.iter().sum::<u64>()),
            (1, 1, 2)
        );
        assert_eq!(metrics.duration.len(), 2);
        assert_eq!(metrics.duration[0].values, [0.5, 2.0]);
        assert_eq!(
            (metrics.start_unix_nano, metrics.end_unix_nano),
            (1_000_000_000, 4_000_000_000)
        );
        // The boundary itself belongs to the bucket it closes.
        let edge = Series {
            attributes: vec![],
            values: vec![1.0, 4.0, 1e9],
        };
        assert_eq!(edge.bucket_counts(&TOKEN_BOUNDS)[..2], [1, 1]);
        assert_eq!(edge.bucket_counts(&TOKEN_BOUNDS)[14], 1);
    }
}

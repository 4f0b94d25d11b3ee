//! Our spans and metrics handed to the official OpenTelemetry crates: [`Span`]s become the
//! SDK's `SpanData` and go to `opentelemetry_otlp::SpanExporter`; the metric values are
//! recorded on the SDK's histograms, whose reader exports them with
//! `opentelemetry_otlp::MetricExporter`. The exporters encode (protobuf or JSON) and send
//! through our [`Transport`].
//!
//! Spans are given to the exporter as `SpanData`, not made through the SDK's tracer: the
//! tracer draws every span id from its id generator (it ignores `SpanBuilder`'s ids), and our
//! ids are derived from the run, so that exporting a run twice sends the same spans. The times
//! are the store's either way.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use serde_json::Value;

use super::metrics::{DURATION_BOUNDS, Metrics, TOKEN_BOUNDS};
use super::spans::{KIND_CLIENT, Span};
use super::transport::Transport;
use super::{Protocol, TelemetryError};

/// Who sends: the service (`OTEL_SERVICE_NAME`, else `fanout`) and the SDK's own attributes;
/// `OTEL_RESOURCE_ATTRIBUTES` is honoured by the SDK's detectors.
pub fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .build()
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("fanout")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Where one signal goes: its endpoint, encoding and extra headers.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub url: &'a str,
    pub protocol: Protocol,
    pub headers: &'a [(String, String)],
}

impl Target<'_> {
    fn headers(&self) -> HashMap<String, String> {
        self.headers.iter().cloned().collect()
    }

    fn build_error(&self, source: opentelemetry_otlp::ExporterBuildError) -> TelemetryError {
        TelemetryError::Build {
            url: self.url.to_owned(),
            source,
        }
    }
}

fn protocol(protocol: Protocol) -> opentelemetry_otlp::Protocol {
    match protocol {
        Protocol::Protobuf => opentelemetry_otlp::Protocol::HttpBinary,
        Protocol::Json => opentelemetry_otlp::Protocol::HttpJson,
    }
}

fn time(nanos: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// One attribute value: strings, booleans, integers, doubles; anything else as its JSON text.
/// `None` for `null` (an attribute without a value is left out).
fn value(value: &Value) -> Option<opentelemetry::Value> {
    Some(match value {
        Value::Null => return None,
        Value::String(text) => opentelemetry::Value::String(StringValue::from(text.clone())),
        Value::Bool(flag) => opentelemetry::Value::Bool(*flag),
        Value::Number(number) => match (number.as_i64(), number.as_u64()) {
            (Some(int), _) => opentelemetry::Value::I64(int),
            (None, Some(int)) => opentelemetry::Value::I64(i64::try_from(int).unwrap_or(i64::MAX)),
            _ => opentelemetry::Value::F64(number.as_f64().unwrap_or(0.0)),
        },
        // A list of strings (`gen_ai.response.finish_reasons`) is an OTLP array.
        Value::Array(items) if items.iter().all(Value::is_string) => {
            opentelemetry::Value::Array(opentelemetry::Array::String(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|text| StringValue::from(text.to_owned()))
                    .collect(),
            ))
        }
        other => opentelemetry::Value::String(StringValue::from(other.to_string())),
    })
}

/// The SDK's span data of `span` in trace `trace_id`.
pub fn span_data(trace_id: [u8; 16], span: &Span, scope: &InstrumentationScope) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(trace_id),
            SpanId::from_bytes(span.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: span
            .parent_span_id
            .map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: false,
        span_kind: if span.kind == KIND_CLIENT {
            SpanKind::Client
        } else {
            SpanKind::Internal
        },
        name: Cow::Owned(span.name.clone()),
        start_time: time(span.start_unix_nano),
        end_time: time(span.end_unix_nano),
        attributes: span
            .attributes
            .iter()
            .filter_map(|(key, item)| Some(KeyValue::new(*key, value(item)?)))
            .collect(),
        dropped_attributes_count: 0,
        events: span_events(span),
        links: SpanLinks::default(),
        status: match &span.error {
            Some(message) => Status::error(message.clone()),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

/// The SDK's events of `span` (none are dropped: the SDK's cap applies to its tracer, and
/// these never pass through one).
fn span_events(span: &Span) -> SpanEvents {
    let mut events = SpanEvents::default();
    events.events = span
        .events
        .iter()
        .map(|event| {
            opentelemetry::trace::Event::new(
                event.name,
                time(event.time_unix_nano),
                event
                    .attributes
                    .iter()
                    .filter_map(|(key, item)| Some(KeyValue::new(*key, value(item)?)))
                    .collect(),
                0,
            )
        })
        .collect();
    events
}

/// Send `spans` of trace `trace_id` to `target`, `per_request` spans a request; the number of
/// requests made.
pub async fn send_spans(
    transport: &Transport,
    target: &Target<'_>,
    resource: &Resource,
    trace_id: [u8; 16],
    spans: &[Span],
    per_request: usize,
) -> Result<usize, TelemetryError> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(target.url)
        .with_protocol(protocol(target.protocol))
        .with_headers(target.headers())
        .with_http_client(transport.clone())
        .build()
        .map_err(|source| target.build_error(source))?;
    exporter.set_resource(resource);
    let scope = scope();
    let mut requests = 0;
    for chunk in spans.chunks(per_request.max(1)) {
        let batch = chunk
            .iter()
            .map(|span| span_data(trace_id, span, &scope))
            .collect();
        exporter
            .export(batch)
            .await
            .map_err(|source| super::failed(transport, target.url, source))?;
        requests += 1;
    }
    Ok(requests)
}

/// Record `metrics` on the SDK's GenAI client histograms and export them once to `target`.
pub async fn send_metrics(
    transport: &Transport,
    target: &Target<'_>,
    resource: Resource,
    metrics: &Metrics,
) -> Result<(), TelemetryError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(target.url)
        .with_protocol(protocol(target.protocol))
        .with_headers(target.headers())
        .with_http_client(transport.clone())
        .with_temporality(Temporality::Cumulative)
        .build()
        .map_err(|source| target.build_error(source))?;
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(PeriodicReader::builder(exporter).build())
        .build();
    let meter = provider.meter_with_scope(scope());
    let usage = meter
        .u64_histogram("gen_ai.client.token.usage")
        .with_description("Tokens used per model call, by token type.")
        .with_unit("{token}")
        .with_boundaries(TOKEN_BOUNDS.to_vec())
        .build();
    let duration = meter
        .f64_histogram("gen_ai.client.operation.duration")
        .with_description("Duration of each model call.")
        .with_unit("s")
        .with_boundaries(DURATION_BOUNDS.to_vec())
        .build();
    let attributes = |series: &super::metrics::Series| -> Vec<KeyValue> {
        series
            .attributes
            .iter()
            .map(|(key, item)| KeyValue::new(*key, item.clone()))
            .collect()
    };
    for series in &metrics.token_usage {
        let attributes = attributes(series);
        for count in &series.values {
            usage.record(*count as u64, &attributes);
        }
    }
    for series in &metrics.duration {
        let attributes = attributes(series);
        for seconds in &series.values {
            duration.record(*seconds, &attributes);
        }
    }
    // Shutting down collects and exports once; the reader works on a thread of its own and
    // waits for the exporter, so the wait happens off the runtime's threads.
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await?
        .map_err(|source| super::failed(transport, target.url, source))
}

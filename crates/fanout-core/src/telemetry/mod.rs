//! OpenTelemetry traces of a run, exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: protobuf by default, JSON when
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (or `…_TRACES_PROTOCOL`) says `http/json`.
//!
//! What it owns: turning a run's records in the store into GenAI spans ([`spans`]:
//! `invoke_workflow` → `invoke_agent` → `chat` / `execute_tool`) and metrics ([`metrics`]),
//! and handing them to the official crates ([`otlp`]: `opentelemetry_sdk`'s data,
//! `opentelemetry-otlp`'s HTTP exporters, which encode and send through our own client,
//! [`transport`]). The spans are built from the store after the run, not from live
//! instrumentation: the store is the one record of a run, so the report, `fanout show` and the
//! traces never disagree, and a resumed run's trace holds every attempt of every process.
//!
//! Not here: deciding when to export (the caller does, once a run ends). An export that fails
//! (after the exporter's own retries) is reported to the caller as a [`TelemetryError`], who
//! warns; the run's outcome does not change. `scripts/otlp_check.py` parses what fanout sends
//! with the official `opentelemetry-proto` Python package.

pub mod metrics;
pub mod otlp;
pub mod spans;
pub mod transport;

use crate::ids::RunId;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::env;
use crate::store::{StoreError, StoreReader};

pub use spans::{RunRecords, Span, trace_id};

use transport::{Failure, Transport};

/// Spans per request: a fleet of 1,000 agents makes ~10,000 spans, sent in a few requests.
pub const SPANS_PER_REQUEST: usize = 2_000;

/// Why a run's traces were not exported.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {run_id} is not in the run store")]
    UnknownRun { run_id: String },
    #[error("cannot send traces to {url}: {source}")]
    Send { url: String, source: reqwest::Error },
    #[error("the trace collector at {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("invalid {name}: {message}")]
    Setting { name: &'static str, message: String },
    #[error("cannot set up the OTLP exporter for {url}: {source}")]
    Build {
        url: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The exporter gave up for a reason of its own (a request too large, its deadline).
    #[error("the OTLP export to {url} failed: {source}")]
    Export {
        url: String,
        source: opentelemetry_sdk::error::OTelSdkError,
    },
    #[error("telemetry is exported from inside a tokio runtime, and there is none")]
    NoRuntime,
    #[error("the metrics export task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The typed error of a failed export: what the transport saw, if it saw a failure.
fn failed(
    transport: &Transport,
    url: &str,
    source: opentelemetry_sdk::error::OTelSdkError,
) -> TelemetryError {
    let url = url.to_owned();
    match transport.take_failure() {
        Some(Failure::Refused { status, body }) => TelemetryError::Refused { url, status, body },
        Some(Failure::Unreachable(source)) => TelemetryError::Send { url, source },
        None => TelemetryError::Export { url, source },
    }
}

/// The OTLP/HTTP encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`, the OTLP default.
    Protobuf,
    /// `http/json`.
    Json,
}

impl Protocol {
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else protobuf.
    pub fn from_env() -> Result<Protocol, TelemetryError> {
        Protocol::from_env_for(env::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
    }

    /// The signal's variable (`signal`), else `OTEL_EXPORTER_OTLP_PROTOCOL`, else protobuf.
    fn from_env_for(signal: &'static str) -> Result<Protocol, TelemetryError> {
        let (name, value) = match env::var(signal) {
            Some(value) => (signal, value),
            None => match env::var(env::OTEL_EXPORTER_OTLP_PROTOCOL) {
                Some(value) => (env::OTEL_EXPORTER_OTLP_PROTOCOL, value),
                None => return Ok(Protocol::Protobuf),
            },
        };
        match value.trim() {
            "http/protobuf" => Ok(Protocol::Protobuf),
            "http/json" => Ok(Protocol::Json),
            other => Err(TelemetryError::Setting {
                name,
                message: format!(
                    "`{other}` is not supported (fanout exports over HTTP: http/protobuf or http/json)"
                ),
            }),
        }
    }
}

/// Where traces go and with which headers.
#[derive(Debug, Clone)]
pub struct Exporter {
    url: String,
    /// Where the GenAI client metrics go (`…/v1/metrics`); none when only a traces endpoint
    /// was given.
    metrics_url: Option<String>,
    protocol: Protocol,
    metrics_protocol: Protocol,
    headers: Vec<(String, String)>,
    service_name: String,
    client: reqwest::Client,
}

/// What an export sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub url: String,
    pub trace_id: String,
    pub spans: usize,
    pub requests: usize,
    /// Metric series sent (token usage and duration, per model and token type).
    pub metric_series: usize,
}

impl Exporter {
    /// The exporter the environment asks for; `Ok(None)` when no endpoint is set.
    pub fn from_env() -> Result<Option<Exporter>, TelemetryError> {
        let url = match env::var(env::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) {
            Some(url) => url,
            None => match env::var(env::OTEL_EXPORTER_OTLP_ENDPOINT) {
                Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
                None => return Ok(None),
            },
        };
        let headers = env::var(env::OTEL_EXPORTER_OTLP_HEADERS)
            .map(|text| parse_headers(&text))
            .transpose()?
            .unwrap_or_default();
        let service_name = env::var(env::OTEL_SERVICE_NAME).unwrap_or_else(|| "fanout".to_owned());
        let protocol = Protocol::from_env()?;
        let metrics_url = env::var(env::OTEL_EXPORTER_OTLP_METRICS_ENDPOINT).or_else(|| {
            env::var(env::OTEL_EXPORTER_OTLP_ENDPOINT)
                .map(|base| format!("{}/v1/metrics", base.trim_end_matches('/')))
        });
        let mut exporter = Exporter::new(url, headers, service_name)?.protocol(protocol);
        if metrics_url.is_some() {
            exporter.metrics_protocol =
                Protocol::from_env_for(env::OTEL_EXPORTER_OTLP_METRICS_PROTOCOL)?;
        }
        exporter.metrics_url = metrics_url;
        Ok(Some(exporter))
    }

    pub fn new(
        url: String,
        headers: Vec<(String, String)>,
        service_name: String,
    ) -> Result<Exporter, TelemetryError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| TelemetryError::Send {
                url: url.clone(),
                source,
            })?;
        Ok(Exporter {
            url,
            metrics_url: None,
            protocol: Protocol::Protobuf,
            metrics_protocol: Protocol::Protobuf,
            headers,
            service_name,
            client,
        })
    }

    /// The same exporter with another encoding (traces and metrics).
    pub fn protocol(mut self, protocol: Protocol) -> Exporter {
        self.protocol = protocol;
        self.metrics_protocol = protocol;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send the spans of run `run_id` of `repo`, recorded in `store`.
    pub async fn export_run(
        &self,
        repo: &Path,
        store: &crate::store::StoreLocation,
        run_id: &RunId,
    ) -> Result<Exported, TelemetryError> {
        let records = read_records(repo, store, run_id)?;
        let spans = spans::spans(&records, SystemTime::now());
        let trace_id = trace_id(run_id.as_str());
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        let resource = otlp::resource(&self.service_name);
        let transport = Transport::new(self.client.clone(), runtime.clone());
        let target = otlp::Target {
            url: &self.url,
            protocol: self.protocol,
            headers: &self.headers,
        };
        let mut requests = otlp::send_spans(
            &transport,
            &target,
            &resource,
            trace_id,
            &spans,
            SPANS_PER_REQUEST,
        )
        .await?;
        let mut metric_series = 0;
        if let Some(url) = &self.metrics_url {
            let metrics = metrics::from_spans(&spans);
            metric_series = metrics.token_usage.len() + metrics.duration.len();
            if metric_series > 0 {
                let transport = Transport::new(self.client.clone(), runtime);
                let target = otlp::Target {
                    url,
                    protocol: self.metrics_protocol,
                    headers: &self.headers,
                };
                otlp::send_metrics(&transport, &target, resource, &metrics).await?;
                requests += 1;
            }
        }
        Ok(Exported {
            url: self.url.clone(),
            trace_id: spans::hex(&trace_id),
            spans: spans.len(),
            requests,
            metric_series,
        })
    }
}

/// The records of run `run_id` that become spans.
pub fn read_records(
    repo: &Path,
    store: &crate::store::StoreLocation,
    run_id: &RunId,
) -> Result<RunRecords, TelemetryError> {
    let reader = StoreReader::open_at(store)?;
    let run = reader
        .run_summary(run_id)?
        .ok_or_else(|| TelemetryError::UnknownRun {
            run_id: run_id.to_string(),
        })?
        .run;
    Ok(RunRecords {
        run: Some(run),
        attempts: reader.agent_runs(run_id)?,
        events: reader.events(run_id)?,
        tool_calls: reader.run_tool_calls(run_id)?,
        denials: reader.run_denials(run_id)?,
        scopes: plan_scopes(repo, run_id),
        planning: std::fs::read(crate::layout::planning_file(repo, run_id))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
        content: env::capture_message_content(),
    })
}

/// Each agent's write scope from the run's saved plan (none for an item run, or a plan that
/// cannot be read: the spans then go without `fanout.scope`).
fn plan_scopes(repo: &Path, run_id: &RunId) -> HashMap<String, Vec<String>> {
    std::fs::read(crate::layout::plan_file(repo, run_id))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<crate::plan::Plan>(&bytes).ok())
        .map(|plan| {
            plan.subtasks
                .into_iter()
                .map(|task| (task.task_id.to_string(), task.scope))
                .collect()
        })
        .unwrap_or_default()
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `name=value` pairs separated by commas, values
/// percent-decoded as the specification asks.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, TelemetryError> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| TelemetryError::Setting {
                    name: env::OTEL_EXPORTER_OTLP_HEADERS,
                    message: format!("{pair:?} is not name=value"),
                })?;
            Ok((name.trim().to_owned(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn headers_are_name_value_pairs_percent_decoded() {
        assert_eq!(
            parse_headers("api-key=a%20b, x-team = core").unwrap(),
            vec![
                ("api-key".to_owned(), "a b".to_owned()),
                ("x-team".to_owned(), "core".to_owned())
            ]
        );
        assert!(parse_headers("nonsense").is_err());
    }
}

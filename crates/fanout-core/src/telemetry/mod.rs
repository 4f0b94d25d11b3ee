//! OpenTelemetry traces of a run, exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: protobuf by default, JSON when
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (or `…_TRACES_PROTOCOL`) says `http/json`.
//!
//! What it owns: turning a run's records in the store into GenAI spans ([`spans`]:
//! `invoke_workflow` → `invoke_agent` → `chat` / `execute_tool`) and sending them
//! ([`Exporter`]). The spans are built from the store after the run, not from live
//! instrumentation: the store is the one record of a run, so the report, `fanout show` and the
//! traces never disagree, and a resumed run's trace holds every attempt of every process.
//!
//! Not here: deciding when to export (the caller does, once a run ends) and retries (an
//! export that fails is reported to the caller, who warns; the run's outcome does not change).
//! Hand-written encoders ([`spans::request`] for JSON, [`protobuf::request`]) rather than the
//! `opentelemetry-otlp` crate: that crate pulls a second `reqwest`, `tonic` and `prost` into
//! the build for what is one fixed message; `scripts/otlp_check.py` parses what fanout sends
//! with the official `opentelemetry-proto` package.

pub mod metrics;
pub mod protobuf;
pub mod spans;

use crate::ids::RunId;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::env;
use crate::store::{StoreError, StoreReader};

pub use spans::{RunRecords, Span, trace_id};

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
        let (name, value) = match env::var(env::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) {
            Some(value) => (env::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, value),
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

    fn content_type(self) -> &'static str {
        match self {
            Protocol::Protobuf => "application/x-protobuf",
            Protocol::Json => "application/json",
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
            headers,
            service_name,
            client,
        })
    }

    /// The same exporter with another encoding.
    pub fn protocol(mut self, protocol: Protocol) -> Exporter {
        self.protocol = protocol;
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
        let mut requests = 0;
        for chunk in spans.chunks(SPANS_PER_REQUEST) {
            let body = match self.protocol {
                Protocol::Protobuf => protobuf::request(&trace_id, &self.service_name, chunk),
                Protocol::Json => spans::request(&trace_id, &self.service_name, chunk)
                    .to_string()
                    .into_bytes(),
            };
            self.post(&self.url, body).await?;
            requests += 1;
        }
        let mut metric_series = 0;
        if let Some(url) = &self.metrics_url {
            let metrics = metrics::from_spans(&spans);
            metric_series = metrics.token_usage.len() + metrics.duration.len();
            if metric_series > 0 {
                let body = match self.protocol {
                    Protocol::Protobuf => metrics::protobuf_request(&metrics, &self.service_name),
                    Protocol::Json => metrics::json_request(&metrics, &self.service_name)
                        .to_string()
                        .into_bytes(),
                };
                self.post(url, body).await?;
                requests += 1;
            }
        }
        Ok(Exported {
            url: self.url.clone(),
            trace_id,
            spans: spans.len(),
            requests,
            metric_series,
        })
    }

    /// POST one encoded request to `url`; a refusal is an error with the collector's answer.
    async fn post(&self, url: &str, body: Vec<u8>) -> Result<(), TelemetryError> {
        let mut request = self
            .client
            .post(url)
            .header("content-type", self.protocol.content_type())
            .body(body);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let send = |source| TelemetryError::Send {
            url: url.to_owned(),
            source,
        };
        let response = request.send().await.map_err(send)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(TelemetryError::Refused {
                url: url.to_owned(),
                status: status.as_u16(),
                body: crate::text::cut(&body, 300),
            });
        }
        Ok(())
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
        planning: std::fs::read(crate::layout::planning_file(repo, run_id))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
    })
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

//! Every environment variable the engine reads, in one place.

pub const ANTHROPIC_API_KEY: &str = "ANTHROPIC_API_KEY";
pub const ANTHROPIC_BASE_URL: &str = "ANTHROPIC_BASE_URL";
pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";
pub const OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";

/// OpenTelemetry's exporter settings (`crate::telemetry`): the base endpoint (`/v1/traces` is
/// appended), the traces endpoint (used as it is), extra headers (`k=v,k2=v2`), the service.
/// The OTLP exporter itself also reads `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_HEADERS`,
/// `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_RESOURCE_ATTRIBUTES` (the SDK's resource detector).
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";

/// The OpenTelemetry GenAI instrumentations' opt-in for message content: `true` keeps each
/// model call's system instructions, input and output messages on its `model_call` event
/// (in the run store, under `.fanout/`) and puts them on the exported `chat` spans.
pub const OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: &str =
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";

/// Whether model calls' content is kept and exported: the opt-in says `true` (any case).
pub fn capture_message_content() -> bool {
    var(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
}

/// Where the run store lives (`--store`): a path to a SQLite file or a `postgres://` URL
/// ([`crate::store::StoreLocation`]).
pub const FANOUT_STORE: &str = "FANOUT_STORE";
/// A PostgreSQL server the tests may create databases on (`scripts/with-postgres.sh` sets
/// it); the PostgreSQL half of the store's conformance suite runs only when it is set.
pub const FANOUT_TEST_POSTGRES_URL: &str = "FANOUT_TEST_POSTGRES_URL";

/// Default public endpoints, used when no base URL is configured.
pub const ANTHROPIC_DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Read a variable, treating an empty value as unset.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

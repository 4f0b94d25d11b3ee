//! Typed provider errors: what went wrong, with the data the retry policy and the rate
//! governor need to decide (status, provider error type, server-requested delay, request id).

use std::time::Duration;

use super::types::RateLimitSnapshot;

/// What an HTTP error answer said, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiErrorDetails {
    pub status: u16,
    /// The provider's error type (`rate_limit_error`, `overloaded_error`, `insufficient_quota`…).
    pub error_type: Option<String>,
    /// The provider's error code where it has one (OpenAI `code`, Anthropic
    /// `error.details.error_code`).
    pub error_code: Option<String>,
    pub message: String,
    /// The delay the server asked for (`retry-after-ms`, `retry-after` seconds or HTTP date).
    pub retry_after: Option<Duration>,
    /// The `x-should-retry` header, when present.
    pub should_retry: Option<bool>,
    pub request_id: Option<String>,
    pub rate_limits: RateLimitSnapshot,
    /// The raw body, cut to a few kilobytes.
    pub body: String,
}

/// Everything a provider call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The server answered with a non-success status.
    #[error("{provider} API error {}: {}{}", .details.status, .details.error_type.as_deref().unwrap_or("unknown_error"), fmt_message(&.details.message))]
    Api {
        provider: &'static str,
        details: Box<ApiErrorDetails>,
    },
    /// An error event inside a stream that had started with 200.
    #[error("{provider} stream error: {error_type}: {message}")]
    StreamError {
        provider: &'static str,
        error_type: String,
        message: String,
        request_id: Option<String>,
    },
    /// Could not connect, or the connection broke before a response arrived.
    #[error("{provider} connection error: {message}")]
    Connection {
        provider: &'static str,
        message: String,
    },
    /// No answer (or no bytes on a stream) within the configured time.
    #[error("{provider} request timed out after {after:?}")]
    Timeout {
        provider: &'static str,
        after: Duration,
    },
    /// The answer could not be understood: truncated JSON, a stream cut mid-event, a missing
    /// field, an unknown content block type.
    #[error("{provider} sent a malformed response: {what}")]
    Malformed {
        provider: &'static str,
        what: String,
        request_id: Option<String>,
    },
    /// The request could not be built (e.g. no API key configured).
    #[error("{provider} request invalid: {message}")]
    InvalidRequest {
        provider: &'static str,
        message: String,
    },
}

fn fmt_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

/// How the retry policy and the governor should treat an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 429 from a rate limit: wait and retry, and slow the fleet.
    RateLimited,
    /// 529 or a stream `overloaded_error`: the service is overloaded; back off the fleet.
    Overloaded,
    /// 408, 409, other 5xx, connection errors, timeouts, cut streams: retry.
    Transient,
    /// 400, 401, 403, 404, 413, 422, a spend cap, a bad request we built: never retry.
    Fatal,
}

impl ProviderError {
    /// The classification the retry policy starts from (before `x-should-retry`).
    pub fn class(&self) -> ErrorClass {
        match self {
            ProviderError::Api { details, .. } => classify_status(details),
            ProviderError::StreamError { error_type, .. } => match error_type.as_str() {
                "overloaded_error" => ErrorClass::Overloaded,
                "rate_limit_error" => ErrorClass::RateLimited,
                "api_error" | "timeout_error" => ErrorClass::Transient,
                _ => ErrorClass::Fatal,
            },
            ProviderError::Connection { .. } | ProviderError::Timeout { .. } => {
                ErrorClass::Transient
            }
            // A body cut short or garbled in transit is worth another try.
            ProviderError::Malformed { .. } => ErrorClass::Transient,
            ProviderError::InvalidRequest { .. } => ErrorClass::Fatal,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Api { details, .. } => Some(details.status),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Api { details, .. } => details.retry_after,
            _ => None,
        }
    }

    pub fn should_retry_header(&self) -> Option<bool> {
        match self {
            ProviderError::Api { details, .. } => details.should_retry,
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            ProviderError::Api { details, .. } => details.request_id.as_deref(),
            ProviderError::StreamError { request_id, .. }
            | ProviderError::Malformed { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    pub fn rate_limits(&self) -> Option<&RateLimitSnapshot> {
        match self {
            ProviderError::Api { details, .. } => Some(&details.rate_limits),
            _ => None,
        }
    }
}

fn classify_status(details: &ApiErrorDetails) -> ErrorClass {
    match details.status {
        429 if is_spend_limit(details) => ErrorClass::Fatal,
        429 => ErrorClass::RateLimited,
        529 => ErrorClass::Overloaded,
        408 | 409 => ErrorClass::Transient,
        s if s >= 500 => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

/// A 429 that says a spend or quota cap was reached, which waiting will not fix.
fn is_spend_limit(details: &ApiErrorDetails) -> bool {
    const TERMINAL: [&str; 4] = [
        "request_too_large",
        "enforced_spend_limit_reached",
        "insufficient_quota",
        "billing_hard_limit_reached",
    ];
    let matches = |v: &Option<String>| v.as_deref().is_some_and(|v| TERMINAL.contains(&v));
    matches(&details.error_code) || matches(&details.error_type)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn api(status: u16, error_type: &str, code: Option<&str>) -> ProviderError {
        ProviderError::Api {
            provider: "test",
            details: Box::new(ApiErrorDetails {
                status,
                error_type: Some(error_type.into()),
                error_code: code.map(Into::into),
                message: String::new(),
                retry_after: None,
                should_retry: None,
                request_id: None,
                rate_limits: RateLimitSnapshot::default(),
                body: String::new(),
            }),
        }
    }

    #[test]
    fn statuses_are_classified_like_the_official_sdks() {
        assert_eq!(
            api(429, "rate_limit_error", None).class(),
            ErrorClass::RateLimited
        );
        assert_eq!(
            api(529, "overloaded_error", None).class(),
            ErrorClass::Overloaded
        );
        for status in [408, 409, 500, 502, 503, 504] {
            assert_eq!(
                api(status, "x", None).class(),
                ErrorClass::Transient,
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 413, 422] {
            assert_eq!(
                api(status, "x", None).class(),
                ErrorClass::Fatal,
                "{status}"
            );
        }
    }

    #[test]
    fn a_spend_cap_429_is_fatal() {
        let capped = api(
            429,
            "rate_limit_error",
            Some("enforced_spend_limit_reached"),
        );
        assert_eq!(capped.class(), ErrorClass::Fatal);
        let quota = api(429, "insufficient_quota", Some("insufficient_quota"));
        assert_eq!(quota.class(), ErrorClass::Fatal);
    }
}

//! Reading retry and rate-limit headers into typed values.
//!
//! Owns the header names and value formats of both vendors: `retry-after-ms`, `retry-after`
//! (seconds or HTTP date), `x-should-retry`, Anthropic `anthropic-ratelimit-*` (RFC 3339 reset
//! times), OpenAI `x-ratelimit-*` (Go-style reset durations) and the request-id headers.
//!
//! A value that cannot be parsed is treated as absent: a proxy that mangles one header must not
//! turn a good answer into an error.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use super::types::{LimitState, RateLimitSnapshot};

/// Anthropic's request id header.
pub const ANTHROPIC_REQUEST_ID: &str = "request-id";
/// OpenAI's (and most compatible servers') request id header.
pub const OPENAI_REQUEST_ID: &str = "x-request-id";

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A non-negative, finite float; anything else is treated as absent.
fn non_negative_float(value: &str) -> Option<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// The delay the server asked for, in the order the official SDKs read it: `retry-after-ms`
/// (float milliseconds), then `retry-after` as float seconds, then as an HTTP date (relative to
/// `now`; a date in the past means "now").
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = text(headers, "retry-after-ms").and_then(non_negative_float) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = text(headers, "retry-after")?;
    if let Some(seconds) = non_negative_float(value) {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `x-should-retry` header: the server's own verdict, which overrides the status class.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match text(headers, "x-should-retry")? {
        v if v.eq_ignore_ascii_case("true") => Some(true),
        v if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The request id under `name` (see [`ANTHROPIC_REQUEST_ID`], [`OPENAI_REQUEST_ID`]).
pub fn request_id(headers: &HeaderMap, name: &str) -> Option<String> {
    text(headers, name).map(str::to_owned)
}

fn integer(headers: &HeaderMap, name: &str) -> Option<u64> {
    text(headers, name)?.parse().ok()
}

/// Anthropic `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*`; reset times
/// are RFC 3339 timestamps, turned into a delay after `now`.
pub fn anthropic_rate_limits(headers: &HeaderMap, now: SystemTime) -> RateLimitSnapshot {
    let state = |dimension: &str| LimitState {
        limit: integer(headers, &format!("anthropic-ratelimit-{dimension}-limit")),
        remaining: integer(
            headers,
            &format!("anthropic-ratelimit-{dimension}-remaining"),
        ),
        reset_after: text(headers, &format!("anthropic-ratelimit-{dimension}-reset"))
            .and_then(parse_rfc3339)
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
    };
    RateLimitSnapshot {
        requests: state("requests"),
        tokens: state("tokens"),
        input_tokens: state("input-tokens"),
        output_tokens: state("output-tokens"),
    }
}

/// OpenAI `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`; resets are Go durations.
pub fn openai_rate_limits(headers: &HeaderMap) -> RateLimitSnapshot {
    let state = |dimension: &str| LimitState {
        limit: integer(headers, &format!("x-ratelimit-limit-{dimension}")),
        remaining: integer(headers, &format!("x-ratelimit-remaining-{dimension}")),
        reset_after: text(headers, &format!("x-ratelimit-reset-{dimension}"))
            .and_then(parse_go_duration),
    };
    RateLimitSnapshot {
        requests: state("requests"),
        tokens: state("tokens"),
        ..RateLimitSnapshot::default()
    }
}

/// An RFC 3339 timestamp. `humantime` only knows `Z` and `+00:00`, so other offsets are
/// applied here.
pub fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let bytes = value.as_bytes();
    let offset_start = bytes.len().checked_sub(6)?;
    let offset = &bytes[offset_start..];
    let has_offset = matches!(offset[0], b'+' | b'-')
        && offset[3] == b':'
        && [1, 2, 4, 5].iter().all(|&i| offset[i].is_ascii_digit());
    if !has_offset {
        return humantime::parse_rfc3339_weak(value).ok();
    }
    let digit = |i: usize| u64::from(offset[i] - b'0');
    let offset_seconds = (digit(1) * 10 + digit(2)) * 3600 + (digit(4) * 10 + digit(5)) * 60;
    let local = humantime::parse_rfc3339_weak(value.get(..offset_start)?).ok()?;
    let shift = Duration::from_secs(offset_seconds);
    // `12:00+02:00` is 10:00 UTC.
    if offset[0] == b'+' {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

/// A Go `time.Duration` string as OpenAI sends in reset headers: `1s`, `6m0s`, `12ms`,
/// `23h47m36.648s`, `1m30.5s`, `0s`, `0`. Negative durations are rejected (a reset is never in
/// the past).
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let value = value.strip_prefix('+').unwrap_or(value);
    if value == "0" {
        return Some(Duration::ZERO);
    }
    if value.is_empty() {
        return None;
    }
    let mut rest = value.as_bytes();
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let (frac_digits, after_number) = match after_int.strip_prefix(b".") {
            Some(after_dot) => {
                let frac_len = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
                after_dot.split_at(frac_len)
            }
            None => (&[][..], after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return None;
        }
        let unit_len = after_number
            .iter()
            .take_while(|b| !b.is_ascii_digit() && **b != b'.')
            .count();
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            b"ns" => 1,
            // U+00B5 and U+03BC, both spellings Go accepts for micro.
            b"us" | b"\xC2\xB5s" | b"\xCE\xBCs" => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => return None,
        };
        let mut whole: u128 = 0;
        for &d in int_digits {
            whole = whole.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
        }
        // Digits past nanosecond precision of the largest unit cannot matter.
        let mut fraction: u128 = 0;
        let mut scale: u128 = 1;
        for &d in frac_digits.iter().take(20) {
            fraction = fraction * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        total_nanos = total_nanos
            .checked_add(whole.checked_mul(unit_nanos)?)?
            .checked_add(fraction * unit_nanos / scale)?;
        rest = after_unit;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).ok()?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, nanos))
}

/// The delay in an OpenAI 429 message: "... Please try again in 644ms." / "in 1.5s." /
/// "in 6m0s.".
pub fn retry_after_from_message(message: &str) -> Option<Duration> {
    const MARKER: &str = "try again in ";
    let start = message.find(MARKER)? + MARKER.len();
    let token = message[start..]
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .next()?
        .trim_end_matches('.');
    parse_go_duration(token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn go_durations() {
        let cases: &[(&str, Duration)] = &[
            ("1s", Duration::from_secs(1)),
            ("6m0s", Duration::from_secs(360)),
            ("12ms", ms(12)),
            ("23h47m36.648s", ms(((23 * 60 + 47) * 60 + 36) * 1000 + 648)),
            ("1m30.5s", ms(90_500)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("1.5s", ms(1500)),
            ("644ms", ms(644)),
            ("1h", Duration::from_secs(3600)),
            ("2us", Duration::from_micros(2)),
            ("2µs", Duration::from_micros(2)),
            ("7ns", Duration::from_nanos(7)),
            (".5s", ms(500)),
            ("1.s", Duration::from_secs(1)),
            ("0.001ms", Duration::from_micros(1)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), Some(*expected), "{text}");
        }
        for bad in [
            "", "s", "1", "10", "1x", "-1s", "1s2", "ms", "1..5s", ".s", "1 s", "1e3s",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_prefers_milliseconds_then_seconds_then_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = headers(&[("retry-after-ms", "1500.5"), ("retry-after", "9")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_micros(1_500_500)));
        let h = headers(&[("retry-after", "2.5")]);
        assert_eq!(retry_after(&h, now), Some(ms(2500)));
        let h = headers(&[("retry-after-ms", "garbage"), ("retry-after", "3")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let h = headers(&[("retry-after", &later)]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let h = headers(&[("retry-after", &earlier)]);
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        for bad in ["soon", "-1", "NaN", "inf"] {
            assert_eq!(
                retry_after(&headers(&[("retry-after", bad)]), now),
                None,
                "{bad}"
            );
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn should_retry_header() {
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "False")])),
            Some(false)
        );
        assert_eq!(should_retry(&headers(&[("x-should-retry", "maybe")])), None);
        assert_eq!(should_retry(&HeaderMap::new()), None);
    }

    #[test]
    fn anthropic_limits() {
        let now = humantime::parse_rfc3339("2025-08-21T12:40:00Z").unwrap();
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "1000"),
            ("anthropic-ratelimit-requests-remaining", "999"),
            ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:59Z"),
            ("anthropic-ratelimit-tokens-limit", "96000"),
            ("anthropic-ratelimit-tokens-remaining", "not a number"),
            ("anthropic-ratelimit-tokens-reset", "2025-08-21T12:39:00Z"),
            ("anthropic-ratelimit-input-tokens-limit", "80000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2025-08-21T14:40:30.5+02:00",
            ),
            ("anthropic-ratelimit-output-tokens-remaining", "16000"),
            ("anthropic-ratelimit-output-tokens-reset", "yesterday"),
            ("request-id", "req_1"),
        ]);
        let limits = anthropic_rate_limits(&h, now);
        assert_eq!(
            limits.requests,
            LimitState {
                limit: Some(1000),
                remaining: Some(999),
                reset_after: Some(Duration::from_secs(59)),
            }
        );
        assert_eq!(
            limits.tokens,
            LimitState {
                limit: Some(96000),
                remaining: None,
                reset_after: Some(Duration::ZERO),
            }
        );
        assert_eq!(limits.input_tokens.reset_after, Some(ms(30_500)));
        assert_eq!(
            limits.output_tokens,
            LimitState {
                limit: None,
                remaining: Some(16000),
                reset_after: None,
            }
        );
        assert_eq!(
            request_id(&h, ANTHROPIC_REQUEST_ID).as_deref(),
            Some("req_1")
        );
        assert!(anthropic_rate_limits(&HeaderMap::new(), now).is_empty());
    }

    #[test]
    fn rfc3339_offsets() {
        let utc = parse_rfc3339("2025-08-21T12:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2025-08-21T14:00:00+02:00"), Some(utc));
        assert_eq!(parse_rfc3339("2025-08-21T09:30:00-02:30"), Some(utc));
        assert_eq!(parse_rfc3339("2025-08-21T12:00:00+00:00"), Some(utc));
        assert_eq!(parse_rfc3339("12:00"), None);
        assert_eq!(parse_rfc3339(""), None);
    }

    #[test]
    fn openai_limits() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "29000"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-request-id", "req_abc"),
        ]);
        let limits = openai_rate_limits(&h);
        assert_eq!(
            limits.requests,
            LimitState {
                limit: Some(500),
                remaining: Some(499),
                reset_after: Some(ms(120)),
            }
        );
        assert_eq!(limits.tokens.reset_after, Some(Duration::from_secs(360)));
        assert_eq!(limits.input_tokens, LimitState::default());
        assert_eq!(
            request_id(&h, OPENAI_REQUEST_ID).as_deref(),
            Some("req_abc")
        );
    }

    #[test]
    fn delay_in_an_openai_message() {
        let message = "Rate limit reached for gpt-4o in organization org-x on tokens per min \
                       (TPM): Limit 30000, Used 29937, Requested 385. Please try again in 644ms. \
                       Visit https://platform.openai.com/account/rate-limits to learn more.";
        assert_eq!(retry_after_from_message(message), Some(ms(644)));
        assert_eq!(
            retry_after_from_message("Please try again in 1.5s."),
            Some(ms(1500))
        );
        assert_eq!(
            retry_after_from_message("try again in 6m0s"),
            Some(Duration::from_secs(360))
        );
        assert_eq!(retry_after_from_message("Please try again later."), None);
        assert_eq!(retry_after_from_message("nothing here"), None);
    }
}

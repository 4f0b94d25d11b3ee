//! The OTLP/HTTP protobuf encoding of an `ExportTraceServiceRequest` (and the field writers
//! `metrics.rs` uses for an `ExportMetricsServiceRequest`) (the default protocol of
//! OTLP over HTTP, `http/protobuf`), written by hand: the message is small and fixed, and the
//! field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto`, `resource/v1/resource.proto` and
//! `collector/trace/v1/trace_service.proto`.
//!
//! Encoded: resource attributes, the instrumentation scope, and per span its trace and span
//! ids (raw bytes), parent id, name, kind, start and end times (`fixed64` nanoseconds),
//! attributes (string, bool, integer, double and array values) and status.

use serde_json::Value;

use super::spans::Span;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

pub(super) fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(super) fn string_field(out: &mut Vec<u8>, field: u32, text: &str) {
    bytes_field(out, field, text.as_bytes());
}

/// A sub-message: written by `write` into its own buffer, then length-delimited.
pub(super) fn message_field(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes_field(out, field, &inner);
}

pub(super) fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, VARINT);
    varint(out, value);
}

pub(super) fn fixed64_field(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

pub(super) fn double_field(out: &mut Vec<u8>, field: u32, value: f64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

/// A packed `repeated fixed64`.
pub(super) fn packed_fixed64(out: &mut Vec<u8>, field: u32, values: &[u64]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes_field(out, field, &bytes);
}

/// A packed `repeated double`.
pub(super) fn packed_doubles(out: &mut Vec<u8>, field: u32, values: &[f64]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes_field(out, field, &bytes);
}

/// `Resource { attributes = 1 }`: who sent the data.
pub(super) fn resource(out: &mut Vec<u8>, service_name: &str) {
    let version = env!("CARGO_PKG_VERSION");
    key_value(out, 1, "service.name", &Value::from(service_name));
    key_value(out, 1, "telemetry.sdk.name", &Value::from("fanout"));
    key_value(out, 1, "telemetry.sdk.language", &Value::from("rust"));
    key_value(out, 1, "telemetry.sdk.version", &Value::from(version));
}

/// Hex text (`trace_id`, span ids) as bytes; an odd or non-hex digit makes it empty.
fn hex_bytes(text: &str) -> Vec<u8> {
    let digits: Option<Vec<u8>> = text
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            (pair.len() == 2).then_some(())?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect();
    digits.unwrap_or_default()
}

/// `AnyValue`: 1 string, 2 bool, 3 int64, 4 double, 5 array. Nothing for `null`.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(text) => string_field(out, 1, text),
        Value::Bool(flag) => varint_field(out, 2, u64::from(*flag)),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => varint_field(out, 3, int as u64),
            (None, Some(int), _) => varint_field(out, 3, int),
            (_, _, Some(float)) => {
                key(out, 4, FIXED64);
                out.extend_from_slice(&float.to_le_bytes());
            }
            _ => {}
        },
        Value::Array(items) => message_field(out, 5, |array| {
            for item in items {
                message_field(array, 1, |element| any_value(element, item));
            }
        }),
        Value::Object(_) => string_field(out, 1, &value.to_string()),
        Value::Null => {}
    }
}

/// `KeyValue { key = 1; value = 2 }` as field `field` of the enclosing message.
pub(super) fn key_value(out: &mut Vec<u8>, field: u32, name: &str, value: &Value) {
    message_field(out, field, |kv| {
        string_field(kv, 1, name);
        message_field(kv, 2, |any| any_value(any, value));
    });
}

fn span(out: &mut Vec<u8>, trace_id: &[u8], span: &Span) {
    bytes_field(out, 1, trace_id);
    bytes_field(out, 2, &hex_bytes(&span.span_id));
    if let Some(parent) = &span.parent_span_id {
        bytes_field(out, 4, &hex_bytes(parent));
    }
    string_field(out, 5, &span.name);
    varint_field(out, 6, u64::from(span.kind));
    fixed64_field(
        out,
        7,
        u64::try_from(span.start_unix_nano).unwrap_or(u64::MAX),
    );
    fixed64_field(
        out,
        8,
        u64::try_from(span.end_unix_nano).unwrap_or(u64::MAX),
    );
    for (name, value) in &span.attributes {
        if !value.is_null() {
            key_value(out, 9, name, value);
        }
    }
    if let Some(message) = &span.error {
        // Status { message = 2; code = 3 } with code 2: error.
        message_field(out, 15, |status| {
            string_field(status, 2, message);
            varint_field(status, 3, 2);
        });
    }
}

/// The protobuf bytes of an `ExportTraceServiceRequest` holding `spans` of trace `trace_id`.
pub fn request(trace_id: &str, service_name: &str, spans: &[Span]) -> Vec<u8> {
    let trace = hex_bytes(trace_id);
    let version = env!("CARGO_PKG_VERSION");
    let mut out = Vec::with_capacity(256 + spans.len() * 256);
    // ExportTraceServiceRequest.resource_spans = 1
    message_field(&mut out, 1, |resource_spans| {
        // ResourceSpans.resource = 1 → Resource.attributes = 1
        message_field(resource_spans, 1, |r| resource(r, service_name));
        // ResourceSpans.scope_spans = 2
        message_field(resource_spans, 2, |scope_spans| {
            // ScopeSpans.scope = 1 → InstrumentationScope { name = 1; version = 2 }
            message_field(scope_spans, 1, |scope| {
                string_field(scope, 1, "fanout");
                string_field(scope, 2, version);
            });
            // ScopeSpans.spans = 2
            for item in spans {
                message_field(scope_spans, 2, |encoded| span(encoded, &trace, item));
            }
        });
    });
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_ids_as_the_wire_format_defines_them() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(hex_bytes("0aff"), [0x0a, 0xff]);
        assert!(hex_bytes("0g").is_empty());
        assert!(hex_bytes("abc").is_empty());
        // KeyValue{key:"a", value:{int_value: 1}}: 0a 01 61 12 02 18 01
        let mut kv = Vec::new();
        key_value(&mut kv, 1, "a", &Value::from(1));
        assert_eq!(kv, [0x0a, 0x07, 0x0a, 0x01, b'a', 0x12, 0x02, 0x18, 0x01]);
    }
}

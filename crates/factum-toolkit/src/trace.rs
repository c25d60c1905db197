//! Trace context (W3C `traceparent`) between Factum's spans and OpenTelemetry: a command's span
//! is the child of the trace context it was sent in, and the events it records carry the
//! command span's own context. Without an OpenTelemetry layer in the `tracing` subscriber
//! spans have no trace ids, and the context given is carried on as it is.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::context::{traceparent_parts, valid_traceparent};

/// The OpenTelemetry context of a remote parent named by `traceparent`.
pub(crate) fn remote_context(traceparent: &str) -> Option<opentelemetry::Context> {
    let (trace, span, flags) = traceparent_parts(traceparent)?;
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(trace, span, TraceFlags::new(flags), true, TraceState::NONE);
    Some(opentelemetry::Context::new().with_remote_span_context(context))
}

/// `span`'s own trace context as a `traceparent`, when an OpenTelemetry layer gave it one.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Makes `span` the child of the trace context `traceparent` (when it is valid) and returns
/// the context the work inside `span` runs in: `span`'s own, when an OpenTelemetry layer is
/// installed; `traceparent` itself otherwise.
pub fn enter_trace(span: &tracing::Span, traceparent: Option<&str>) -> Option<String> {
    if let Some(parent) = traceparent.and_then(remote_context) {
        let _ = span.set_parent(parent);
    }
    traceparent_of(span).or_else(|| traceparent.map(str::to_owned))
}

/// The trace context `event` was recorded in (its metadata's `$traceparent`), if any. Metadata
/// without the key is not parsed.
pub fn recorded_in(event: &factum_core::RecordedEvent) -> Option<String> {
    let key = crate::TRACEPARENT_KEY.as_bytes();
    if !event.metadata.windows(key.len()).any(|w| w == key) {
        return None;
    }
    event
        .metadata_json()
        .get(crate::TRACEPARENT_KEY)
        .and_then(|v| v.as_str())
        .and_then(valid_traceparent)
        .map(str::to_owned)
}

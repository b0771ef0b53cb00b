//! The W3C trace context (`traceparent`, `tracestate`) across the queue: a
//! send request's trace (or a new one) travels in the AMQP message's
//! headers, never in its versioned body, so the worker's spans join the
//! intake's. Nothing is read or written while no spans are exported
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` unset): a deployment without tracing pays
//! for none of it.

use std::sync::atomic::{AtomicBool, Ordering};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (spans that only a trace needs are opened
/// only then).
pub fn is_exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The span of one delivery from the dispatch queue, a child of the trace
/// its headers carry; no span at all while nothing is exported.
pub fn delivery_span(headers: Option<&FieldTable>) -> tracing::Span {
    if !is_exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("dispatch delivery", otel.kind = "consumer");
    continue_from_amqp(&span, headers);
    span
}

/// Adds the current span's trace context to a message's headers.
pub fn inject_current(headers: &mut FieldTable) {
    if !is_exporting() {
        return;
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut AmqpHeaders(headers));
}

/// Makes `span` a child of the trace a delivery's headers carry (a
/// message without one starts a new trace).
pub fn continue_from_amqp(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers.filter(|_| is_exporting()) else {
        return;
    };
    let context = TraceContextPropagator::new().extract(&AmqpHeadersRef(headers));
    let _ = span.set_parent(context);
}

/// Makes `span` a child of the caller's trace, from a request's
/// `traceparent` and `tracestate` headers (`header` looks one up by its
/// lower-case name).
pub fn continue_from_http<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    if !is_exporting() {
        return;
    }
    let carrier = HttpHeaders {
        traceparent: header(TRACEPARENT),
        tracestate: header(TRACESTATE),
    };
    if carrier.traceparent.is_none() {
        return;
    }
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

struct AmqpHeaders<'a>(&'a mut FieldTable);

impl Injector for AmqpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

struct AmqpHeadersRef<'a>(&'a FieldTable);

impl Extractor for AmqpHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

struct HttpHeaders<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

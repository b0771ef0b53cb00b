//! Logging and tracing: one place decides the format and filter, whether
//! spans are exported, and how addresses are hidden where they are logged or
//! stored as an error text. Spans carry request and dispatch ids; emails are
//! redacted where they are logged and codes, tokens and keys are never passed
//! to a log macro or a span field, so no exported span holds one either.

pub mod trace_context;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,amq_protocol=warn";

/// Spans exported over OTLP/HTTP; the exporter reads the endpoint, headers
/// and timeout from the standard `OTEL_EXPORTER_OTLP_*` variables itself.
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// `service.name` of every span (`OTEL_SERVICE_NAME`, or the process's role).
    pub service_name: String,
}

/// Flushes the spans still buffered when the process ends.
#[must_use = "dropping it at once stops the export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("verimail: flushing the last spans failed: {error}");
        }
    }
}

pub fn init(json: bool, export: Option<TraceExport>) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    use std::io::IsTerminal;
    // Colour codes only for people, not for files and log collectors.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let provider = export.map(tracer_provider).transpose()?;
    // One statically typed stack per case: with export off the subscriber
    // is exactly the log stack, with no layer behind a vtable.
    let registry = tracing_subscriber::registry().with(filter);
    match (&provider, json) {
        (None, false) => registry.with(fmt).init(),
        (None, true) => registry.with(fmt.json().with_current_span(true)).init(),
        (Some(provider), false) => registry.with(fmt).with(otel_layer(provider)).init(),
        (Some(provider), true) => registry
            .with(fmt.json().with_current_span(true))
            .with(otel_layer(provider))
            .init(),
    }
    if provider.is_some() {
        trace_context::exporting();
    }
    Ok(Telemetry { provider })
}

fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber
        + for<'span> tracing_subscriber::registry::LookupSpan<'span>
        + Send
        + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("verimail"))
        // The spans' fields are the attributes; where in the source they
        // were opened is noise in a trace and costs per span.
        .with_location(false)
        .with_threads(false)
}

fn tracer_provider(export: TraceExport) -> anyhow::Result<SdkTracerProvider> {
    use anyhow::Context;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("building the OTLP span exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(export.service_name)
        .build();
    // The batch processor exports from a thread of its own: a slow or dead
    // collector costs a bounded queue (spans beyond it are dropped), never a
    // request's or a mail's time.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Hides the local part of every address in a text (SMTP replies often
/// quote the recipient: `550 5.1.1 <victim@x.example>: unknown user`).
pub fn redact_addresses(text: &str) -> String {
    let is_part = |c: char| !c.is_whitespace() && !"<>()[],;:\"'".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let start = rest[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| !is_part(*c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[at..]
            .char_indices()
            .find(|(_, c)| !is_part(*c))
            .map_or(rest.len(), |(i, _)| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Hides the local part of an address for logs (`a***@example.com`).
pub fn redact(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_keeps_its_domain_and_the_first_letter_of_its_mailbox() {
        let email = verimail_domain::Email::parse("  User@Example.COM ").expect("valid");
        assert_eq!(redact(email.as_str()), "U***@example.com");
    }

    #[test]
    fn addresses_in_smtp_replies_are_redacted() {
        assert_eq!(
            redact_addresses("550 5.1.1 <victim@x.example>: Recipient address rejected"),
            "550 5.1.1 <v***@x.example>: Recipient address rejected"
        );
        assert_eq!(
            redact_addresses("451 a@b.example and c.d@e.example busy"),
            "451 a***@b.example and c***@e.example busy"
        );
        assert_eq!(redact_addresses("421 try later"), "421 try later");
    }
}

//! Logging and tracing: structured logs through `tracing`, and, when an OTLP
//! endpoint is configured, every span exported over OTLP/gRPC.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Flushes exported spans when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("anxin: flushing OpenTelemetry spans failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
/// Must be called inside a tokio runtime when `otlp_endpoint` is set.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>, default_level: &str) -> anyhow::Result<TelemetryGuard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(std::io::stderr).boxed()
        }
    };
    let mut provider = None;
    let otel = match otlp_endpoint.filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .with_context(|| format!("otlp_endpoint: cannot build an OTLP exporter for {endpoint}"))?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name("anxin").build();
            let p = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
            let tracer = p.tracer("anxin");
            provider = Some(p);
            Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter()))
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

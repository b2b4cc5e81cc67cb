//! Logs, and trace export over OTLP when the standard `OTEL_EXPORTER_OTLP_*` variables ask for it.

use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (with span fields), for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--log-level` is not a valid filter.
    #[error("invalid --log-level {0:?}: {1}")]
    Filter(String, String),
    /// A global subscriber was already installed.
    #[error("logging already initialised: {0}")]
    Init(String),
    /// The OTLP exporter could not be built from the environment.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Flushes and stops trace export when dropped (at the end of `kimup run`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Whether the environment asks for trace export (OpenTelemetry's standard variables).
pub fn otlp_requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber: logs on stderr filtered by `level` (an EnvFilter directive
/// such as `info` or `kimup=debug,kube=warn`), plus every span exported over OTLP/HTTP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set. Export is independent of the
/// log filter: syncs are traced even when logs are quiet.
pub fn init(format: LogFormat, level: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(level)
        .map_err(|e| TelemetryError::Filter(level.into(), e.to_string()))?;
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour codes only on a terminal: in a file or a pipe they break grep and log
            // shippers.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
    };
    let mut provider = None;
    let traces = if otlp_requested() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let p = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("kimup").build())
            .build();
        let tracer = p.tracer("kimup");
        provider = Some(p);
        // kimup's own spans only: the HTTP client spans of kube and hyper would drown them.
        let only_kimup = EnvFilter::try_new("kimup=info")
            .map_err(|e| TelemetryError::Filter("kimup=info".into(), e.to_string()))?;
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(only_kimup),
        )
    } else {
        None
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError::Init(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// The OpenTelemetry identity of `span` when it is exported, None otherwise (no OTLP endpoint, or
/// a span the export filter drops): what the work it causes elsewhere links back to.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to the spans that caused it. A link, not a parent: each cause (a webhook request)
/// has its own trace, and one cause may start several traces (a sync per Image and cluster).
pub fn link_causes(span: &tracing::Span, causes: impl IntoIterator<Item = SpanContext>) {
    for cause in causes {
        span.add_link(cause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use std::sync::{Arc, Mutex};
    use tracing::info_span;

    /// Keeps what it is given (the SDK's in-memory exporter needs its `testing` feature, which
    /// brings metrics and logs into the build).
    #[derive(Clone, Debug, Default)]
    struct Recorder(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            if let Ok(mut spans) = self.0.lock() {
                spans.extend(batch);
            }
            Ok(())
        }
    }

    #[test]
    fn a_cause_becomes_a_link_of_the_span_it_caused() {
        let exporter = Recorder::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let cause = SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        tracing::subscriber::with_default(subscriber, || {
            let push = info_span!("webhook.push");
            let seen = span_context(&push).expect("an exported span has a context");
            assert!(seen.is_valid());
            drop(push);
            let sync = info_span!("reconcile");
            link_causes(&sync, [cause.clone()]);
        });
        let spans = exporter.0.lock().expect("recorder lock").clone();
        let sync = spans
            .iter()
            .find(|s| s.name == "reconcile")
            .expect("reconcile exported");
        let linked: Vec<&SpanContext> = sync.links.iter().map(|l| &l.span_context).collect();
        assert_eq!(linked, vec![&cause]);
    }

    #[test]
    fn without_export_there_is_nothing_to_link() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(span_context(&info_span!("webhook.push")), None);
        });
    }
}

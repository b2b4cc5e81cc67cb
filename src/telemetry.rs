//! Logs, and trace export over OTLP when the standard `OTEL_EXPORTER_OTLP_*` variables ask for it.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
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

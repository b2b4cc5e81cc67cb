//! Alert receivers on loopback: an HTTP server recording POSTs and an SMTP server (aiosmtpd).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use crate::process::{Process, free_port, wait_until};

/// One request the HTTP sink received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Path after the host, e.g. `/discord`.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// JSON body.
    pub body: serde_json::Value,
    /// Whether the sink answered with success (a delivery), rather than an error (an attempt).
    pub accepted: bool,
}

/// What the sink's handler shares with the test.
#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

/// An HTTP server on 127.0.0.1 recording every POST. Paths under `/fail/` answer 500, and every
/// path answers 503 while [`HttpSink::set_failing`] is on.
pub struct HttpSink {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl HttpSink {
    /// Starts the sink on the current runtime.
    pub async fn start() -> Result<Self> {
        let shared = Shared::default();
        let app = Router::new()
            .route("/{*path}", post(record))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// While on, every request is refused with 503 (and recorded as not accepted).
    pub fn set_failing(&self, on: bool) {
        self.shared
            .failing
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Requests on `path` that the sink accepted: the deliveries.
    pub fn delivered_on(&self, path: &str) -> Vec<Received> {
        self.received_on(path)
            .into_iter()
            .filter(|r| r.accepted)
            .collect()
    }

    /// Requests received on `path`.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(shared): State<Shared>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    let path = format!("/{path}");
    let status = if shared.failing.load(std::sync::atomic::Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if path.starts_with("/fail/") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    if let Ok(mut r) = shared.received.lock() {
        r.push(Received {
            path,
            headers,
            body,
            accepted: status.is_success(),
        });
    }
    status
}

/// A real SMTP server (Python's aiosmtpd) storing each message in a Maildir.
pub struct SmtpServer {
    /// Port on 127.0.0.1.
    pub port: u16,
    maildir: PathBuf,
    _process: Process,
}

impl SmtpServer {
    /// Starts aiosmtpd with the Mailbox handler.
    pub async fn start(dir: &Path, log_dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let maildir = dir.join(format!("maildir-{port}"));
        let python = crate::binaries::python()?;
        let args = vec![
            "-m".to_string(),
            "aiosmtpd".to_string(),
            "-n".to_string(),
            "-l".to_string(),
            format!("127.0.0.1:{port}"),
            "-c".to_string(),
            "aiosmtpd.handlers.Mailbox".to_string(),
            maildir.display().to_string(),
        ];
        let mut process = Process::spawn(&format!("smtp-{port}"), &python, &args, log_dir)?;
        wait_until("aiosmtpd listening", Duration::from_secs(20), || {
            let running = process.check_running();
            async move {
                running?;
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok())
            }
        })
        .await
        .context("starting aiosmtpd (pip install aiosmtpd)")?;
        Ok(Self {
            port,
            maildir,
            _process: process,
        })
    }

    /// Raw messages delivered so far.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    if let Ok(text) = std::fs::read_to_string(e.path()) {
                        out.push(text);
                    }
                }
            }
        }
        out
    }
}

/// A real OpenTelemetry Collector (built from its Go modules) receiving OTLP/HTTP and writing
/// every span it gets to a JSON-lines file.
pub struct Collector {
    /// OTLP/HTTP endpoint, `http://127.0.0.1:PORT`, for OTEL_EXPORTER_OTLP_ENDPOINT.
    pub endpoint: String,
    file: PathBuf,
    _process: Process,
}

impl Collector {
    /// Starts the collector and waits until its OTLP receiver listens.
    pub async fn start(dir: &Path, log_dir: &Path) -> Result<Self> {
        let bins = crate::Binaries::get()?;
        let port = free_port()?;
        let work = dir.join(format!("otelcol-{port}"));
        std::fs::create_dir_all(&work)?;
        let file = work.join("spans.jsonl");
        let config = serde_json::json!({
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": format!("127.0.0.1:{port}")}}}},
            "exporters": {"file": {"path": file, "flush_interval": "100ms"}},
            "service": {
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
                "telemetry": {"metrics": {"level": "none"}},
            },
        });
        let config_path = work.join("config.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&config)?)?;
        let mut process = Process::spawn(
            &format!("otelcol-{port}"),
            &bins.otelcol,
            &[format!("--config={}", config_path.display())],
            log_dir,
        )?;
        wait_until("otelcol OTLP receiver", Duration::from_secs(30), || {
            let running = process.check_running();
            async move {
                running?;
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok())
            }
        })
        .await?;
        Ok(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            file,
            _process: process,
        })
    }

    /// Every span written so far (OTLP JSON objects, flattened out of their resource and scope).
    pub fn spans(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let Ok(doc) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        out
    }

    /// Waits until the spans satisfy `done`, returning them (whatever they are at the timeout).
    pub async fn wait_for_spans(
        &self,
        done: impl Fn(&[serde_json::Value]) -> bool,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || std::time::Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

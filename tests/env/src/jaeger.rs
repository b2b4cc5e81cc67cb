//! A real Jaeger (v2, the all-in-one built on the OpenTelemetry Collector) with in-memory
//! storage: OTLP/HTTP in, traces read back through its HTTP query API, as a user's Jaeger UI
//! reads them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::process::{Process, free_port, wait_until};

/// Jaeger's standard OTLP/HTTP port.
pub const OTLP_PORT: u16 = 4318;
/// Jaeger's standard UI and query API port.
pub const QUERY_PORT: u16 = 16686;

/// Where Jaeger listens, on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JaegerPorts {
    /// OTLP/HTTP receiver.
    pub otlp: u16,
    /// UI and HTTP query API.
    pub query: u16,
    /// gRPC query API (nothing here uses it, but Jaeger always serves it).
    pub grpc: u16,
}

impl JaegerPorts {
    /// Free loopback ports, for tests that run side by side.
    pub fn free() -> Result<Self> {
        Ok(Self {
            otlp: free_port()?,
            query: free_port()?,
            grpc: free_port()?,
        })
    }
}

/// A running Jaeger; killed on drop.
pub struct Jaeger {
    ports: JaegerPorts,
    http: reqwest::Client,
    process: Process,
}

/// One trace as Jaeger's HTTP API returns it.
#[derive(Clone, Debug, Deserialize)]
pub struct Trace {
    /// Hex trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Every span of the trace.
    #[serde(default)]
    pub spans: Vec<Span>,
}

/// One span as Jaeger's HTTP API returns it.
#[derive(Clone, Debug, Deserialize)]
pub struct Span {
    /// Hex trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Hex span id.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Span name.
    #[serde(rename = "operationName")]
    pub operation: String,
    /// The parent (`CHILD_OF`) and the OpenTelemetry links (`FOLLOWS_FROM`).
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Attributes.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// A reference from a span to another, possibly in another trace.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Reference {
    /// `CHILD_OF` (the parent) or `FOLLOWS_FROM` (an OpenTelemetry link).
    #[serde(rename = "refType")]
    pub ref_type: String,
    /// Hex trace id of the referenced span.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Hex span id of the referenced span.
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A span attribute.
#[derive(Clone, Debug, Deserialize)]
pub struct Tag {
    /// Attribute name.
    pub key: String,
    /// String, number or boolean.
    pub value: serde_json::Value,
}

impl Span {
    /// The value of attribute `key`.
    pub fn tag(&self, key: &str) -> Option<&serde_json::Value> {
        self.tags.iter().find(|t| t.key == key).map(|t| &t.value)
    }

    /// The value of attribute `key` when it is a string.
    pub fn tag_str(&self, key: &str) -> Option<&str> {
        self.tag(key).and_then(|v| v.as_str())
    }

    /// Id of the parent span (the `CHILD_OF` reference in the same trace), None for a root.
    pub fn parent(&self) -> Option<&str> {
        self.references
            .iter()
            .find(|r| r.ref_type == "CHILD_OF" && r.trace_id == self.trace_id)
            .map(|r| r.span_id.as_str())
    }

    /// The spans this one links to (`FOLLOWS_FROM`, Jaeger's form of OpenTelemetry links).
    pub fn links(&self) -> impl Iterator<Item = &Reference> {
        self.references
            .iter()
            .filter(|r| r.ref_type == "FOLLOWS_FROM")
    }
}

impl Trace {
    /// The spans named `operation`.
    pub fn spans_named(&self, operation: &str) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.operation == operation)
            .collect()
    }

    /// The first span named `operation`.
    pub fn span_named(&self, operation: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.operation == operation)
    }

    /// The spans whose parent is `parent`.
    pub fn children(&self, parent: &Span) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.parent() == Some(parent.span_id.as_str()))
            .collect()
    }

    /// The spans without a parent in this trace.
    pub fn roots(&self) -> Vec<&Span> {
        self.spans.iter().filter(|s| s.parent().is_none()).collect()
    }
}

/// Envelope of Jaeger's HTTP API answers.
#[derive(Deserialize)]
struct Answer<T> {
    data: Option<T>,
}

impl Jaeger {
    /// Starts Jaeger on free loopback ports and waits until it answers.
    pub async fn start(dir: &Path, log_dir: &Path) -> Result<Self> {
        Self::start_on(dir, log_dir, JaegerPorts::free()?).await
    }

    /// Starts Jaeger on `ports` of 127.0.0.1 and waits until its OTLP receiver listens and its
    /// query API answers.
    pub async fn start_on(dir: &Path, log_dir: &Path, ports: JaegerPorts) -> Result<Self> {
        let bins = crate::Binaries::get()?;
        let work = dir.join(format!("jaeger-{}", ports.query));
        std::fs::create_dir_all(&work)?;
        let loopback = |port: u16| format!("127.0.0.1:{port}");
        let config = serde_json::json!({
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {"traces": {
                    "receivers": ["otlp"],
                    // A short batch: tests poll the API right after kimup exports.
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }},
                // No internal metrics server (port 8888 by default).
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
            },
            "extensions": {
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    // Its own traces would go to localhost:4318: the demo's Jaeger, or nothing.
                    "enable_tracing": false,
                    "http": {"endpoint": loopback(ports.query)},
                    "grpc": {"endpoint": loopback(ports.grpc)},
                },
            },
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": loopback(ports.otlp)}}}},
            "processors": {"batch": {"timeout": "100ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        });
        let config_path = work.join("config.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&config)?)?;
        let mut process = Process::spawn(
            &format!("jaeger-{}", ports.query),
            &bins.jaeger,
            &[format!("--config=file:{}", config_path.display())],
            log_dir,
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let services = format!("http://127.0.0.1:{}/api/services", ports.query);
        let what = format!(
            "Jaeger ({}) to accept OTLP on 127.0.0.1:{} and answer {services}",
            bins.jaeger.display(),
            ports.otlp
        );
        wait_until(&what, Duration::from_secs(30), || {
            let running = process.check_running();
            let (http, services) = (http.clone(), services.clone());
            async move {
                running?;
                if tokio::net::TcpStream::connect(("127.0.0.1", ports.otlp))
                    .await
                    .is_err()
                {
                    return Ok(false);
                }
                Ok(http.get(&services).send().await?.status().is_success())
            }
        })
        .await?;
        Ok(Self {
            ports,
            http,
            process,
        })
    }

    /// OTLP/HTTP endpoint, `http://127.0.0.1:PORT`, for OTEL_EXPORTER_OTLP_ENDPOINT.
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.otlp)
    }

    /// Base URL of the UI and the HTTP query API, `http://127.0.0.1:PORT`.
    pub fn query_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.query)
    }

    /// The ports it listens on.
    pub fn ports(&self) -> JaegerPorts {
        self.ports
    }

    /// Path of Jaeger's log.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Fails with the tail of the log if Jaeger has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    async fn get_json(&self, path_and_query: &str) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{path_and_query}", self.query_url());
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = r.status().as_u16();
        let body = r.bytes().await.with_context(|| format!("GET {url}"))?;
        let value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {url}: {status}, not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        Ok((status, value))
    }

    /// Services that sent spans (`/api/services`).
    pub async fn services(&self) -> Result<Vec<String>> {
        let (_, v) = self.get_json("/api/services").await?;
        let a: Answer<Vec<String>> = serde_json::from_value(v)?;
        Ok(a.data.unwrap_or_default())
    }

    /// `/api/traces?service=…&operation=…&limit=…` as Jaeger answers it. `operation` narrows
    /// to traces holding a span of that name.
    pub async fn traces_json(
        &self,
        service: &str,
        operation: Option<&str>,
        limit: usize,
    ) -> Result<serde_json::Value> {
        let mut q = format!("/api/traces?service={}&limit={limit}", encode(service));
        if let Some(op) = operation {
            q.push_str(&format!("&operation={}", encode(op)));
        }
        let (status, v) = self.get_json(&q).await?;
        if status != 200 {
            bail!("GET {q}: {status}: {v}");
        }
        Ok(v)
    }

    /// As [`Jaeger::traces_json`], parsed.
    pub async fn traces(
        &self,
        service: &str,
        operation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Trace>> {
        let v = self.traces_json(service, operation, limit).await?;
        let a: Answer<Vec<Trace>> = serde_json::from_value(v)?;
        Ok(a.data.unwrap_or_default())
    }

    /// `/api/traces/{trace_id}`, parsed; None when Jaeger does not have it.
    pub async fn trace(&self, trace_id: &str) -> Result<Option<Trace>> {
        let path = format!("/api/traces/{}", encode(trace_id));
        let (status, v) = self.get_json(&path).await?;
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            bail!("GET {path}: {status}: {v}");
        }
        let a: Answer<Vec<Trace>> = serde_json::from_value(v)?;
        Ok(a.data.and_then(|d| d.into_iter().next()))
    }

    /// Polls `/api/traces` every 200 ms until `done` holds for the traces (returned), failing
    /// after `timeout` with `what`, the number of traces seen last and the last error.
    pub async fn wait_for_traces(
        &self,
        what: &str,
        service: &str,
        operation: Option<&str>,
        timeout: Duration,
        done: impl Fn(&[Trace]) -> bool,
    ) -> Result<Vec<Trace>> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.traces(service, operation, 1000).await {
                Ok(traces) if done(&traces) => return Ok(traces),
                Ok(traces) => format!("{} trace(s) did not match", traces.len()),
                Err(e) => format!("last error: {e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} in Jaeger ({}/search?service={service}): {last}; Jaeger's log: {}",
                    self.query_url(),
                    self.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Percent-encodes a query value (service and span names are plain, but `.` and `/` may come).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_know_their_parent_and_links() {
        let trace: Trace = serde_json::from_value(serde_json::json!({
            "traceID": "t1",
            "spans": [
                {"traceID": "t1", "spanID": "a", "operationName": "reconcile",
                 "references": [{"refType": "FOLLOWS_FROM", "traceID": "t0", "spanID": "w"}],
                 "tags": [{"key": "name", "type": "string", "value": "app"}]},
                {"traceID": "t1", "spanID": "b", "operationName": "image.sync",
                 "references": [{"refType": "CHILD_OF", "traceID": "t1", "spanID": "a"}],
                 "tags": [{"key": "images", "type": "int64", "value": 2}]}
            ],
            "processes": {}
        }))
        .expect("trace JSON");
        let root = trace.span_named("reconcile").expect("root");
        assert_eq!(root.parent(), None);
        assert_eq!(root.tag_str("name"), Some("app"));
        let links: Vec<&Reference> = root.links().collect();
        assert_eq!(links.len(), 1);
        assert_eq!(
            (links[0].trace_id.as_str(), links[0].span_id.as_str()),
            ("t0", "w")
        );
        let sync = trace.span_named("image.sync").expect("child");
        assert_eq!(sync.parent(), Some("a"));
        assert_eq!(sync.tag("images"), Some(&serde_json::json!(2)));
        assert_eq!(trace.children(root).len(), 1);
        assert_eq!(trace.roots().len(), 1);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("image.sync"), "image.sync");
        assert_eq!(encode("a b/c&d"), "a%20b%2Fc%26d");
    }
}

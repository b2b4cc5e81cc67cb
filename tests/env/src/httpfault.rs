//! An HTTP reverse proxy on loopback that answers chosen requests with 429 or 503 instead of
//! forwarding them: the HTTP-level faults of registries (rate limits, maintenance) that
//! Toxiproxy, a TCP proxy, cannot make. It can also play a hostile registry: any status with
//! chosen headers and body (a `WWW-Authenticate` realm elsewhere, an oversized tag list), or the
//! real answer with a header added (a `Link` to another host); and it counts the requests that
//! carried an `Authorization` header.
//!
//! ```no_run
//! # async fn demo(env: &kimup_testenv::TestEnv) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use kimup_testenv::httpfault::{FaultPlan, HttpFault, HttpFaultProxy};
//! let proxy = HttpFaultProxy::start(&env.plain_registry().base_url()).await?;
//! // Image references use proxy.host instead of the registry's host.
//! proxy.set(FaultPlan::new(HttpFault::too_many_requests(Some("2"))).times(3).on_paths_containing("/tags/list"));
//! proxy.set(FaultPlan::new(HttpFault::service_unavailable(None)).for_period(Duration::from_secs(5)));
//! // Forward, but add a Link header to the registry's answer; several plans, first match wins.
//! proxy.set(FaultPlan::new(HttpFault::forward_with_header("link", "<http://elsewhere/v2/x/tags/list>; rel=\"next\"")));
//! proxy.add(FaultPlan::new(HttpFault::status(200).with_body(vec![b'x'; 1024])).on_paths_containing("/token"));
//! proxy.clear();
//! assert!(proxy.stats().faulted <= proxy.stats().requests);
//! assert!(proxy.stats().authorized <= proxy.stats().requests);
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

/// The answer a faulted request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpFault {
    /// 429 or 503 (any status is allowed).
    pub status: u16,
    /// `Retry-After` value (seconds or an HTTP date), when sent.
    pub retry_after: Option<String>,
    /// Extra response headers (name, value), added to the fault or to the forwarded answer.
    pub headers: Vec<(String, String)>,
    /// Body instead of the registry error envelope; streamed in chunks without a
    /// Content-Length, so a client can only tell its size by reading it.
    pub body: Option<Vec<u8>>,
    /// Forward the request and add `headers` to the upstream's answer (status and body unused).
    pub forward: bool,
}

impl HttpFault {
    /// Any status, with the registry error envelope as body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            headers: Vec::new(),
            body: None,
            forward: false,
        }
    }

    /// 429 Too Many Requests, as registries rate-limit.
    pub fn too_many_requests(retry_after: Option<&str>) -> Self {
        Self {
            retry_after: retry_after.map(str::to_string),
            ..Self::status(429)
        }
    }

    /// 503 Service Unavailable.
    pub fn service_unavailable(retry_after: Option<&str>) -> Self {
        Self {
            retry_after: retry_after.map(str::to_string),
            ..Self::status(503)
        }
    }

    /// The upstream's own answer with one header added (e.g. a `Link` to another host).
    pub fn forward_with_header(name: &str, value: &str) -> Self {
        Self {
            forward: true,
            ..Self::status(200)
        }
        .with_header(name, value)
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Answers this body instead of the error envelope.
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    /// The registry error envelope distribution sends with the status.
    fn body(&self) -> String {
        let (code, message) = match self.status {
            429 => ("TOOMANYREQUESTS", "too many requests"),
            503 => ("UNAVAILABLE", "service unavailable"),
            _ => ("UNKNOWN", "injected fault"),
        };
        serde_json::json!({"errors": [{"code": code, "message": message, "detail": "injected by the test fault proxy"}]})
            .to_string()
    }
}

/// Which requests get a fault, and for how long.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// The answer.
    pub fault: HttpFault,
    /// Fault this many more requests, then forward again (no limit when None).
    pub remaining: Option<usize>,
    /// Fault until then, then forward again (no limit when None).
    pub until: Option<Instant>,
    /// Fault only requests whose path and query contain this.
    pub path_contains: Option<String>,
}

impl FaultPlan {
    /// Faults every request, until cleared.
    pub fn new(fault: HttpFault) -> Self {
        Self {
            fault,
            remaining: None,
            until: None,
            path_contains: None,
        }
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Only during the next `period`.
    pub fn for_period(mut self, period: Duration) -> Self {
        self.until = Some(Instant::now() + period);
        self
    }

    /// Only requests whose path (with query) contains `needle`, e.g. `/tags/list`.
    pub fn on_paths_containing(mut self, needle: &str) -> Self {
        self.path_contains = Some(needle.to_string());
        self
    }

    /// Whether a request to `path` gets the fault now; counts it down if so.
    fn take(&mut self, path: &str) -> bool {
        if self.until.is_some_and(|t| Instant::now() >= t) || self.remaining == Some(0) {
            return false;
        }
        if self
            .path_contains
            .as_deref()
            .is_some_and(|n| !path.contains(n))
        {
            return false;
        }
        if let Some(r) = &mut self.remaining {
            *r -= 1;
        }
        true
    }
}

/// Request counts since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests received.
    pub requests: usize,
    /// Requests answered with a fault.
    pub faulted: usize,
    /// Requests forwarded that the upstream could not be reached for (answered 502).
    pub upstream_errors: usize,
    /// Requests that carried an `Authorization` header (credentials or a token).
    pub authorized: usize,
}

#[derive(Default)]
struct Inner {
    /// Checked in order; the first plan that takes a request answers it.
    plans: Vec<FaultPlan>,
    stats: Stats,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    inner: Arc<Mutex<Inner>>,
}

/// A reverse proxy on 127.0.0.1 forwarding to a plain-HTTP upstream, unless a [`FaultPlan`]
/// says to answer with a fault. Runs on the runtime it was started on; stops on drop.
pub struct HttpFaultProxy {
    /// `127.0.0.1:PORT`, the host part of image references through the proxy.
    pub host: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

/// Largest request or response body forwarded: manifests and tag lists are small; blobs of the
/// test images are a few KiB.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

impl HttpFaultProxy {
    /// Starts a proxy forwarding to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            // The client sees the upstream's redirects and follows them itself, as it would
            // without the proxy.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the fault proxy's client")?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            inner: inner.clone(),
        };
        let app = Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fault proxy")?;
        let host = listener.local_addr()?.to_string();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url: format!("http://{host}"),
            host,
            inner,
            task,
        })
    }

    /// Replaces the fault plans with this one.
    pub fn set(&self, plan: FaultPlan) {
        if let Ok(mut i) = self.inner.lock() {
            i.plans = vec![plan];
        }
    }

    /// Adds a plan after the current ones (the first plan taking a request answers it).
    pub fn add(&self, plan: FaultPlan) {
        if let Ok(mut i) = self.inner.lock() {
            i.plans.push(plan);
        }
    }

    /// Forwards every request from now on.
    pub fn clear(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.plans.clear();
        }
    }

    /// Request counts so far.
    pub fn stats(&self) -> Stats {
        self.inner.lock().map(|i| i.stats).unwrap_or_default()
    }
}

impl Drop for HttpFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

async fn handle(State(state): State<ProxyState>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let authorized = req
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION);
    let fault = match state.inner.lock() {
        Ok(mut i) => {
            i.stats.requests += 1;
            if authorized {
                i.stats.authorized += 1;
            }
            let fault = i
                .plans
                .iter_mut()
                .find_map(|p| p.take(&path).then(|| p.fault.clone()));
            if fault.is_some() {
                i.stats.faulted += 1;
            }
            fault
        }
        Err(_) => None,
    };
    if let Some(f) = fault.as_ref().filter(|f| !f.forward) {
        let mut resp = match &f.body {
            // Chunks without a Content-Length: the client learns the size only by reading.
            Some(body) => {
                let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = body
                    .chunks(64 * 1024)
                    .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
                    .collect();
                Response::new(Body::from_stream(futures::stream::iter(chunks)))
            }
            None => Response::new(Body::from(f.body())),
        };
        *resp.status_mut() = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY);
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        if let Some(v) = f
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            resp.headers_mut().insert("retry-after", v);
        }
        add_headers(&mut resp, &f.headers);
        return resp;
    }
    match forward(&state, &path, req).await {
        Ok(mut resp) => {
            if let Some(f) = &fault {
                add_headers(&mut resp, &f.headers);
            }
            resp
        }
        Err(e) => {
            if let Ok(mut i) = state.inner.lock() {
                i.stats.upstream_errors += 1;
            }
            let mut resp = Response::new(Body::from(format!("fault proxy: upstream: {e:#}\n")));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp
        }
    }
}

/// Appends the plan's headers (invalid names or values are skipped: they are test input).
fn add_headers(resp: &mut Response, headers: &[(String, String)]) {
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
}

async fn forward(state: &ProxyState, path: &str, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .context("reading the request body")?;
    let mut headers = HeaderMap::new();
    // The Host header goes through unchanged, as a reverse proxy does, so absolute URLs the
    // upstream builds (Location of uploads) point back at the proxy.
    copy_headers(&parts.headers, &mut headers);
    let upstream = state
        .client
        .request(parts.method, format!("{}{path}", state.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await
        .context("sending to the upstream")?;
    let status = upstream.status();
    let mut out_headers = HeaderMap::new();
    copy_headers(upstream.headers(), &mut out_headers);
    let bytes = upstream
        .bytes()
        .await
        .context("reading the upstream's response")?;
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    *resp.headers_mut() = out_headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_count_down_and_filter() {
        let mut p = FaultPlan::new(HttpFault::too_many_requests(Some("1")))
            .times(2)
            .on_paths_containing("/tags/list");
        assert!(!p.take("/v2/"));
        assert!(p.take("/v2/a/tags/list"));
        assert!(p.take("/v2/a/tags/list?n=10"));
        assert!(!p.take("/v2/a/tags/list"), "two faults, then forward");
        let mut p = FaultPlan::new(HttpFault::service_unavailable(None)).for_period(Duration::ZERO);
        assert!(!p.take("/v2/"), "a period that is over faults nothing");
        let mut p = FaultPlan::new(HttpFault::service_unavailable(None));
        assert!((0..100).all(|_| p.take("/v2/")), "no limit: every request");
    }

    #[test]
    fn first_plan_that_takes_a_request_answers_it() {
        let mut plans = [
            FaultPlan::new(HttpFault::status(401)).on_paths_containing("/tags/list"),
            FaultPlan::new(HttpFault::status(200).with_body(b"{}".to_vec())),
        ];
        let pick = |plans: &mut [FaultPlan], path: &str| {
            plans
                .iter_mut()
                .find_map(|p| p.take(path).then_some(p.fault.status))
        };
        assert_eq!(pick(&mut plans, "/v2/a/tags/list"), Some(401));
        assert_eq!(pick(&mut plans, "/token"), Some(200));
        let f = HttpFault::forward_with_header("link", "<http://x/>; rel=\"next\"");
        assert!(f.forward);
        assert_eq!(
            f.headers,
            vec![("link".into(), "<http://x/>; rel=\"next\"".into())]
        );
    }

    #[test]
    fn fault_bodies_are_registry_errors() {
        let b: serde_json::Value =
            serde_json::from_str(&HttpFault::too_many_requests(None).body()).expect("json");
        assert_eq!(b["errors"][0]["code"], "TOOMANYREQUESTS");
    }
}

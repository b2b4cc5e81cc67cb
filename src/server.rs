//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz` (with per-cluster detail), `/webhooks/*`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use tracing::{info, warn};

use crate::sync::Shared;
use crate::triggers::webhook::{Source, WebhookError, parse};

/// Health of each cluster as shown by `/readyz`.
#[derive(Clone, Default)]
pub struct Health {
    clusters: Arc<RwLock<BTreeMap<String, Result<(), String>>>>,
}

impl Health {
    /// Marks a cluster up, or down with a reason.
    pub fn set(&self, cluster: &str, state: Result<(), String>) {
        crate::metrics::cluster_up(cluster, state.is_ok());
        if let Ok(mut m) = self.clusters.write() {
            m.insert(cluster.to_string(), state);
        }
    }

    /// As `set`, but takes the write lock only when the state changes (called per reconcile).
    pub fn set_if_changed(&self, cluster: &str, state: Result<(), String>) {
        let same = self
            .clusters
            .read()
            .map(|m| m.get(cluster) == Some(&state))
            .unwrap_or(false);
        if !same {
            self.set(cluster, state);
        }
    }

    /// Forgets a removed cluster.
    pub fn remove(&self, cluster: &str) {
        if let Ok(mut m) = self.clusters.write() {
            m.remove(cluster);
        }
    }

    /// `(all up, one line per cluster)`.
    pub fn report(&self) -> (bool, String) {
        let m = match self.clusters.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut ok = !m.is_empty();
        let mut out = String::new();
        for (name, state) in &m {
            match state {
                Ok(()) => out.push_str(&format!("[+]cluster {name} ok\n")),
                Err(e) => {
                    ok = false;
                    out.push_str(&format!("[-]cluster {name} down: {e}\n"));
                }
            }
        }
        if m.is_empty() {
            out.push_str("[-]no cluster configured\n");
        }
        (ok, out)
    }
}

/// What the endpoints need.
#[derive(Clone)]
pub struct ServerState {
    /// Per-cluster health.
    pub health: Health,
    /// The tag cache and the push fan-out.
    pub shared: Arc<Shared>,
    /// Whether this replica may act (webhooks are answered 503 on a standby).
    pub leader: crate::leader::Leadership,
    /// Token webhooks must present; webhooks are disabled without one.
    pub webhook_token: Option<Arc<str>>,
}

/// Largest webhook body accepted: registry payloads are a few KiB.
const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: ServerState) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|| async { crate::metrics::encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/webhooks/{source}", post(webhook))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .with_state(state);
    axum::serve(listener, app).await
}

async fn readyz(State(state): State<ServerState>) -> (StatusCode, String) {
    let (ok, text) = state.health.report();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        text,
    )
}

/// Whether the request carries the token, as a bearer header or a `token` query parameter (some
/// registries, Docker Hub among them, cannot set headers).
pub fn authorised(expected: &str, authorization: Option<&str>, query: Option<&str>) -> bool {
    let from_header = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    // Query values arrive percent-encoded: a token with `+`, `/` or `=` must still match.
    let from_query = query.and_then(|q| {
        reqwest::Url::parse(&format!("http://query.invalid/?{q}"))
            .ok()?
            .query_pairs()
            .find_map(|(k, v)| (k == "token").then(|| v.into_owned()))
    });
    from_header
        .map(str::to_string)
        .into_iter()
        .chain(from_query)
        .any(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn webhook(
    State(state): State<ServerState>,
    Path(source): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let plain = [("content-type", "text/plain")];
    let Some(token) = &state.webhook_token else {
        return (
            StatusCode::NOT_FOUND,
            plain,
            "webhooks are disabled: start kimup with KIMUP_WEBHOOK_TOKEN\n".into(),
        );
    };
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if !authorised(token, authorization, uri.query()) {
        crate::metrics::webhook(&source, "unauthorized");
        return (
            StatusCode::UNAUTHORIZED,
            plain,
            "missing or wrong webhook token\n".into(),
        );
    }
    let parsed = source.parse::<Source>().and_then(|s| parse(s, &body));
    let events = match parsed {
        Ok(events) => events,
        Err(e) => {
            crate::metrics::webhook(&source, e.metric_label());
            warn!(source = %source, error = %e, "webhook refused");
            let code = if matches!(e, WebhookError::UnknownSource(_)) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            return (code, plain, format!("{e}\n"));
        }
    };
    // A standby must not act, and would lose the push: ask the sender to retry (the Service may
    // route the retry to the leader; distribution retries with backoff).
    if !state.leader.is_held() {
        crate::metrics::webhook(&source, "not_leader");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "not the leader\n".into(),
        );
    }
    for event in &events {
        state
            .shared
            .tags
            .invalidate(event.registry.as_deref(), &event.repository)
            .await;
        info!(source = %source, registry = event.registry.as_deref().unwrap_or("*"), repository = %event.repository, tag = event.tag.as_deref().unwrap_or(""), "registry push announced");
        // No receiver means no cluster is running yet; the start-up sync will see the push.
        let _ = state.shared.pushes.send(event.clone());
    }
    crate::metrics::webhook(&source, "accepted");
    (
        StatusCode::ACCEPTED,
        plain,
        format!("{} push(es) accepted\n", events.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_tokens() {
        assert!(authorised("s3cret", Some("Bearer s3cret"), None));
        assert!(authorised("s3cret", None, Some("a=1&token=s3cret")));
        assert!(!authorised(
            "s3cret",
            Some("Bearer wrong"),
            Some("token=nope")
        ));
        assert!(!authorised("s3cret", Some("Basic s3cret"), None));
        assert!(!authorised("s3cret", None, None));
        assert!(!authorised("s3cret", Some("Bearer s3cre"), None));
        assert!(authorised("a+b/c=", None, Some("token=a%2Bb%2Fc%3D")));
    }
}

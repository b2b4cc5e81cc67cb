//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz` (with per-cluster detail).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

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

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, health: Health) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|| async { crate::metrics::encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    axum::serve(listener, app).await
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    let (ok, text) = health.report();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        text,
    )
}

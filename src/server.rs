//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz` (whether this replica can serve),
//! `/clusters` (each member cluster's state, as JSON), `/webhooks/*`.

mod webhook_auth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use kube::runtime::reflector::Store;
use serde::Serialize;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::Image;
use crate::sync::Shared;
use crate::triggers::webhook::{AuthError, Push, RepoEvent, Source, authenticate, parse, summary};
pub use webhook_auth::{
    FailureLimiter, FailureLimits, SECRETS_RELOAD, SecretFlag, Verdict, WebhookArgs, WebhookAuth,
};

/// What is known about one member cluster.
#[derive(Clone)]
struct ClusterEntry {
    up: bool,
    reason: Option<String>,
    since: DateTime<Utc>,
    identity: Option<String>,
    source: String,
    images: Option<Store<Image>>,
    credential: Option<crate::credential::Expiry>,
}

impl ClusterEntry {
    fn new() -> Self {
        Self {
            up: false,
            reason: Some("connecting".into()),
            since: Utc::now(),
            identity: None,
            source: String::new(),
            images: None,
            credential: None,
        }
    }
}

/// One member cluster as `/clusters` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClusterReport {
    /// Member name (kubeconfig file stem, `/context` for multi-context files).
    pub name: String,
    /// Whether its Image watch runs.
    pub up: bool,
    /// Why it is down (or stands by), null when up.
    pub reason: Option<String>,
    /// When it last went up or down, RFC 3339.
    pub since: String,
    /// Images in its watch cache (0 while it is not watched).
    pub images: usize,
    /// UID of its `kube-system` namespace once probed, else null.
    pub identity: Option<String>,
    /// The kubeconfig file it comes from (`in-cluster` for the cluster kimup runs in).
    pub source: String,
    /// When its credential expires (RFC 3339), when the kubeconfig says: a JWT's `exp`, a client
    /// certificate's notAfter.
    #[serde(rename = "credentialExpiry", default)]
    pub credential_expiry: Option<String>,
    /// Why it needs attention soon although it may be up: its credential expires within a fifth
    /// of its lifetime, or has expired.
    #[serde(default)]
    pub warning: Option<String>,
}

/// State of each member cluster: `kimup_cluster_up`, `/clusters` and the logs tell it; `/readyz`
/// does not depend on it.
#[derive(Clone, Default)]
pub struct Health {
    clusters: Arc<RwLock<BTreeMap<String, ClusterEntry>>>,
}

impl Health {
    fn update(&self, cluster: &str, f: impl FnOnce(&mut ClusterEntry)) {
        if let Ok(mut m) = self.clusters.write() {
            f(m.entry(cluster.to_string())
                .or_insert_with(ClusterEntry::new));
        }
    }

    /// Marks a cluster up, or down with a reason.
    pub fn set(&self, cluster: &str, state: Result<(), String>) {
        crate::metrics::cluster_up(cluster, state.is_ok());
        self.update(cluster, |e| {
            if e.up != state.is_ok() {
                e.since = Utc::now();
            }
            e.up = state.is_ok();
            e.reason = state.err();
        });
    }

    /// As `set`, but takes the write lock only when the state changes (called per reconcile);
    /// returns whether it changed.
    pub fn set_if_changed(&self, cluster: &str, state: Result<(), String>) -> bool {
        let same = self
            .clusters
            .read()
            .map(|m| {
                m.get(cluster).is_some_and(|e| {
                    e.up == state.is_ok() && e.reason == state.as_ref().err().cloned()
                })
            })
            .unwrap_or(false);
        if !same {
            self.set(cluster, state);
        }
        !same
    }

    /// Records where a cluster's configuration comes from (a kubeconfig file, `in-cluster`).
    pub fn set_source(&self, cluster: &str, source: &str) {
        self.update(cluster, |e| e.source = source.to_string());
    }

    /// Records a cluster's identity (UID of its `kube-system` namespace).
    pub fn set_identity(&self, cluster: &str, identity: Option<String>) {
        self.update(cluster, |e| e.identity = identity);
    }

    /// Records when a cluster's credential expires (None: it does not say).
    pub fn set_credential(&self, cluster: &str, expiry: Option<crate::credential::Expiry>) {
        crate::metrics::credential_expiry(cluster, expiry.map(|e| e.expires.timestamp()));
        self.update(cluster, |e| e.credential = expiry);
    }

    /// Records the watch cache of a cluster's Images (None once its controller stopped).
    pub fn set_images(&self, cluster: &str, store: Option<Store<Image>>) {
        self.update(cluster, |e| e.images = store);
    }

    /// Whether a cluster's watch cache has done its first list.
    pub fn cache_ready(&self, cluster: &str) -> bool {
        let store = self
            .clusters
            .read()
            .ok()
            .and_then(|m| m.get(cluster).and_then(|e| e.images.clone()));
        store.is_some_and(|s| {
            futures::FutureExt::now_or_never(s.wait_until_ready()).is_some_and(|r| r.is_ok())
        })
    }

    /// How many Images, over every member cluster's watch cache, `events` make sync (each
    /// counted once).
    pub fn images_triggered(&self, events: &[RepoEvent]) -> usize {
        let stores: Vec<Store<Image>> = match self.clusters.read() {
            Ok(m) => m.values().filter_map(|e| e.images.clone()).collect(),
            Err(p) => p
                .into_inner()
                .values()
                .filter_map(|e| e.images.clone())
                .collect(),
        };
        stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|img| {
                events
                    .iter()
                    .any(|e| crate::controller::triggered_by(img, e))
            })
            .count()
    }

    /// Every member cluster's name, sorted.
    pub fn member_names(&self) -> Vec<String> {
        match self.clusters.read() {
            Ok(m) => m.keys().cloned().collect(),
            Err(p) => p.into_inner().keys().cloned().collect(),
        }
    }

    /// A member's Image cache when its watch runs and has listed: what another cluster's
    /// promotion may trust. A down cluster's cache keeps its last state, which may be stale.
    pub fn watched_images(&self, cluster: &str) -> Option<Store<Image>> {
        let store = self.clusters.read().ok().and_then(|m| {
            m.get(cluster)
                .filter(|e| e.up)
                .and_then(|e| e.images.clone())
        })?;
        futures::FutureExt::now_or_never(store.wait_until_ready())
            .is_some_and(|r| r.is_ok())
            .then_some(store)
    }

    /// Forgets a removed cluster.
    pub fn remove(&self, cluster: &str) {
        crate::metrics::credential_expiry(cluster, None);
        if let Ok(mut m) = self.clusters.write() {
            m.remove(cluster);
        }
    }

    /// Every member cluster, by name.
    pub fn clusters(&self) -> Vec<ClusterReport> {
        let m = match self.clusters.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let now = Utc::now();
        m.into_iter()
            .map(|(name, e)| ClusterReport {
                credential_expiry: e
                    .credential
                    .map(|c| c.expires.to_rfc3339_opts(SecondsFormat::Secs, true)),
                warning: e
                    .credential
                    .and_then(|c| crate::credential::warning(&c, now)),
                name,
                up: e.up,
                reason: e.reason,
                since: e.since.to_rfc3339_opts(SecondsFormat::Secs, true),
                images: e.images.map(|s| s.state().len()).unwrap_or(0),
                identity: e.identity,
                source: e.source,
            })
            .collect()
    }
}

/// The election loop's state as `/readyz` sees it; 0 (the default) is "no election".
const ELECTION_RUNNING: u8 = 1;
const ELECTION_STOPPED: u8 = 2;

/// Whether this replica can serve: what `/readyz` answers. Remote clusters play no part: one bad
/// kubeconfig must not take every replica out of the Service.
#[derive(Clone, Default)]
pub struct Readiness {
    scanned: Arc<AtomicBool>,
    election: Arc<AtomicU8>,
}

/// Marks the election loop stopped when dropped, so a loop that panics is seen too.
pub struct ElectionAlive(Readiness);

impl Drop for ElectionAlive {
    fn drop(&mut self) {
        self.0.election.store(ELECTION_STOPPED, Ordering::SeqCst);
    }
}

impl Readiness {
    /// The supervisor has read the kubeconfigs once and started (or refused) every member.
    pub fn scanned(&self) {
        self.scanned.store(true, Ordering::SeqCst);
    }

    /// The election loop runs until the returned guard is dropped.
    pub fn election_running(&self) -> ElectionAlive {
        self.election.store(ELECTION_RUNNING, Ordering::SeqCst);
        ElectionAlive(self.clone())
    }

    /// `(ready, one line per check)`, in the API server's `[+]name ok` style.
    pub fn report(&self) -> (bool, String) {
        let scanned = self.scanned.load(Ordering::SeqCst);
        let election = self.election.load(Ordering::SeqCst);
        let mut out = String::from("[+]http ok\n");
        match election {
            ELECTION_RUNNING => out.push_str("[+]leader-election ok\n"),
            ELECTION_STOPPED => {
                out.push_str("[-]leader-election failed: the election loop stopped\n")
            }
            // ELECTION_OFF: no election, every replica acts.
            _ => {}
        }
        if scanned {
            out.push_str("[+]cluster-supervisor ok\n");
        } else {
            out.push_str("[-]cluster-supervisor failed: kubeconfigs not read yet\n");
        }
        let ready = scanned && election != ELECTION_STOPPED;
        out.push_str(if ready {
            "readyz check passed (member clusters: see /clusters)\n"
        } else {
            "readyz check failed\n"
        });
        (ready, out)
    }
}

/// What the endpoints need.
#[derive(Clone)]
pub struct ServerState {
    /// Per-cluster state, for `/clusters`.
    pub health: Health,
    /// Whether this replica can serve, for `/readyz`.
    pub readiness: Readiness,
    /// The tag cache and the push fan-out.
    pub shared: Arc<Shared>,
    /// Whether this replica may act (webhooks are answered 503 on a standby).
    pub leader: crate::shards::Ownership,
    /// Webhook secrets and the failed-authentication limiter.
    pub webhooks: Arc<WebhookAuth>,
}

/// Largest webhook body accepted: registry payloads are a few KiB.
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: ServerState) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|| async { crate::metrics::encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/clusters", get(clusters))
        .route("/fleet", get(fleet))
        .route("/webhooks/{source}", post(webhook))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .with_state(state.clone());
    // Re-reads the secrets folder while serving, so that a rotated Secret needs no restart.
    let reloader = state.webhooks.has_dir().then(|| {
        let auth = state.webhooks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SECRETS_RELOAD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate, and the folder was just read.
            tick.tick().await;
            loop {
                tick.tick().await;
                let auth = auth.clone();
                // Files may sit on a slow volume: keep the blocking reads off the runtime.
                if let Err(e) = tokio::task::spawn_blocking(move || auth.reload()).await {
                    warn!(error = %e, "webhook secrets reload panicked");
                }
            }
        })
    });
    // The client address keys the failed-authentication limiter.
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await;
    if let Some(r) = reloader {
        r.abort();
    }
    served
}

async fn readyz(State(state): State<ServerState>) -> (StatusCode, String) {
    let (ok, text) = state.readiness.report();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        text,
    )
}

async fn clusters(State(state): State<ServerState>) -> axum::Json<Vec<ClusterReport>> {
    axum::Json(state.health.clusters())
}

/// The Image × cluster matrix of `kimup fleet`, from the watch caches.
async fn fleet(State(state): State<ServerState>) -> axum::Json<crate::fleet::View> {
    // Snapshots of each cache (None: not watched now), then the matrix over borrowed Images.
    let snapshots: Vec<(String, Option<Vec<std::sync::Arc<Image>>>)> = state
        .shared
        .fleet
        .stores()
        .into_iter()
        .map(|(name, store)| (name, store.map(|s| s.state())))
        .collect();
    axum::Json(crate::fleet::view(snapshots.iter().map(
        |(name, images)| {
            let images = images
                .as_ref()
                .map(|v| v.iter().map(|i| i.as_ref()).collect())
                .ok_or_else(|| format!("{name} is not watched now (down or starting)"));
            (name.clone(), images)
        },
    )))
}

fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn webhook(
    State(state): State<ServerState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(source): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The source decides which secret and which scheme apply. An unknown one has nothing to
    // authenticate against: 404, not counted as a failed authentication.
    let kind = match source.parse::<Source>() {
        Ok(kind) => kind,
        Err(e) => {
            crate::metrics::webhook(&source, e.metric_label());
            return text(StatusCode::NOT_FOUND, format!("{e}\n"));
        }
    };
    let secrets = state.webhooks.secrets();
    // A source without a secret is off: 404, as an endpoint that does not exist (401 would
    // invite guessing a credential that nothing would accept).
    let Some(secret) = secrets.for_source(kind) else {
        let e = AuthError::Disabled(kind.name());
        crate::metrics::webhook(kind.name(), e.metric_label());
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{e}; set KIMUP_WEBHOOK_SECRET_{} or KIMUP_WEBHOOK_TOKEN\n",
                kind.name().to_uppercase()
            ),
        );
    };
    if let Err(e) = authenticate(kind, secret, &headers, uri.query(), &body) {
        return refused(&state, kind, peer, &e);
    }
    let events = match parse(kind, &body) {
        Ok(events) => events,
        Err(e) => {
            crate::metrics::webhook(kind.name(), e.metric_label());
            warn!(source = kind.name(), error = %e, "webhook refused");
            return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    // A standby must not act, and would lose the push: ask the sender to retry (the Service may
    // route the retry to the leader; distribution retries with backoff).
    // With shards, every replica hears every push (one notification endpoint each) and acts for
    // the shards it holds: a replica holding none has nothing to do, which is no reason for the
    // sender to retry.
    if state.leader.count() == 1 && !state.leader.any_held() {
        crate::metrics::webhook(kind.name(), "not_leader");
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "not the leader\n");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    // Only an accepted push gets a span: refused requests are counted, not traced, so that
    // nobody can fill the trace store without the secret.
    let (repositories, tags) = summary(&events);
    // i64: tracing-opentelemetry exports unsigned fields as strings.
    let images = i64::try_from(state.health.images_triggered(&events)).unwrap_or(i64::MAX);
    let span = info_span!(
        "webhook.push",
        source = kind.name(),
        repository = %repositories,
        tags = %tags,
        images,
    );
    let cause = crate::telemetry::span_context(&span);
    async {
        for event in &events {
            state
                .shared
                .tags
                .invalidate(event.registry.as_deref(), &event.repository)
                .await;
            info!(source = kind.name(), registry = event.registry.as_deref().unwrap_or("*"), repository = %event.repository, tag = event.tag.as_deref().unwrap_or(""), "registry push announced");
            // No receiver means no cluster is running yet; the start-up sync will see the push.
            let _ = state.shared.pushes.send(Push {
                event: event.clone(),
                cause: cause.clone(),
            });
        }
    }
    .instrument(span)
    .await;
    crate::metrics::webhook(kind.name(), "accepted");
    text(
        StatusCode::ACCEPTED,
        format!("{} push(es) accepted\n", events.len()),
    )
}

/// Answers a failed authentication: 401, or 429 with Retry-After once the client (or all
/// clients) failed too often. The log names the client and the reason, never what was sent.
fn refused(state: &ServerState, source: Source, peer: SocketAddr, e: &AuthError) -> Response {
    let client = peer.ip();
    let verdict = state.webhooks.failure(client);
    match verdict {
        Verdict::Unauthorized => {
            crate::metrics::webhook(source.name(), e.metric_label());
            warn!(source = source.name(), %client, reason = e.metric_label(), "webhook authentication failed");
            text(StatusCode::UNAUTHORIZED, format!("{e}\n"))
        }
        Verdict::Limited {
            retry_after,
            total,
            first,
        } => {
            crate::metrics::webhook(source.name(), verdict.metric_label());
            let secs = webhook_auth::retry_after_secs(retry_after);
            let scope = if total { "all clients" } else { "this client" };
            // One line per episode: an attacker must not fill the logs.
            if first {
                warn!(source = source.name(), %client, scope, retry_after_s = secs, "too many failed webhook authentications: answering 429");
            } else {
                debug!(source = source.name(), %client, scope, "failed webhook authentication over the limit");
            }
            let mut r = text(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed authentications ({scope}); retry in {secs} s\n"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_ignores_member_clusters() {
        let r = Readiness::default();
        let (ready, text) = r.report();
        assert!(!ready, "not ready before the first scan: {text}");
        assert!(text.contains("[-]cluster-supervisor"), "{text}");
        r.scanned();
        let (ready, text) = r.report();
        assert!(ready, "{text}");
        assert!(!text.contains("leader-election"), "{text}");
        let guard = r.election_running();
        assert!(r.report().0);
        assert!(r.report().1.contains("[+]leader-election ok"));
        drop(guard);
        let (ready, text) = r.report();
        assert!(!ready, "a stopped election loop is not ready: {text}");
        assert!(text.contains("[-]leader-election failed"), "{text}");
    }

    #[test]
    fn cluster_states_keep_since_until_up_flips() {
        let h = Health::default();
        h.set_source("east", "/k/east.yaml");
        let starting = h.clusters();
        assert_eq!(starting.len(), 1);
        assert!(!starting[0].up);
        assert_eq!(starting[0].reason.as_deref(), Some("connecting"));
        h.set("east", Err("unreachable: refused".into()));
        let since = h.clusters()[0].since.clone();
        h.set_if_changed("east", Err("unreachable: timed out".into()));
        let down = &h.clusters()[0];
        assert_eq!(down.reason.as_deref(), Some("unreachable: timed out"));
        assert_eq!(down.since, since, "still down: same since");
        h.set("east", Ok(()));
        h.set_identity("east", Some("uid-1".into()));
        let up = &h.clusters()[0];
        assert!(up.up && up.reason.is_none());
        assert_eq!(up.identity.as_deref(), Some("uid-1"));
        assert_eq!(up.source, "/k/east.yaml");
        assert_eq!(up.images, 0, "no watch cache yet");
        assert!(
            DateTime::parse_from_rfc3339(&up.since).is_ok(),
            "{}",
            up.since
        );
        h.remove("east");
        assert!(h.clusters().is_empty());
    }
}

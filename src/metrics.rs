//! Prometheus metrics: kimup's names where they fit, plus cache, registry and sync figures.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    cluster: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    cluster: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    source: String,
    outcome: String,
}

struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    registry_requests: Family<RegistryLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    syncs: Family<SyncLabels, Counter>,
    sync_seconds: Family<ClusterLabels, Histogram>,
    actions: Family<ActionLabels, Counter>,
    rules: Family<ResultLabels, Counter>,
    cluster_up: Family<ClusterLabels, Gauge>,
    credential_expiry: Family<ClusterLabels, Gauge>,
    leader: Gauge,
    shards_held: Gauge,
    member_clusters: Gauge,
    reconcile_errors: Family<ErrorLabels, Counter>,
    rollouts_failed: Family<ClusterLabels, Counter>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("kimup");
        let registry_requests = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "registry_request",
            "Requests sent to registries, by registry and kind (tags, manifest, token)",
            registry_requests.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "tag_cache_hits",
            "Tag lists served from the shared cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "tag_cache_misses",
            "Tag lists that needed a registry listing",
            cache_misses.clone(),
        );
        let syncs = Family::<SyncLabels, Counter>::default();
        registry.register(
            "image_syncs",
            "Image syncs by cluster and status result",
            syncs.clone(),
        );
        let sync_seconds = Family::<ClusterLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "image_sync_duration_seconds",
            "Duration of one Image sync",
            sync_seconds.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "actions_executed",
            "Actions run, by type and outcome",
            actions.clone(),
        );
        let rules = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rules_evaluated",
            "Rule evaluations by outcome (match, nomatch, error)",
            rules.clone(),
        );
        let cluster_up = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_up",
            "1 when the cluster's Image watch is running",
            cluster_up.clone(),
        );
        let credential_expiry = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_credential_expiry_timestamp_seconds",
            "When the credential of the cluster's kubeconfig expires (Unix time); absent when it does not say",
            credential_expiry.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Registry webhook requests by source and outcome",
            webhooks.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease",
            leader.clone(),
        );
        let shards_held = Gauge::default();
        registry.register(
            "shards_held",
            "Shards whose Lease this replica holds (--shards; 1 for the leader without sharding)",
            shards_held.clone(),
        );
        let member_clusters = Gauge::default();
        registry.register(
            "member_clusters",
            "Member clusters configured (up or not); 0 is a configuration error",
            member_clusters.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles (retried with per-Image backoff), by cluster and error",
            reconcile_errors.clone(),
        );
        let rollouts_failed = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "rollouts_failed",
            "Rollouts of an Image's tag that failed (ProgressDeadlineExceeded, or a StatefulSet or DaemonSet past kimup's deadline): later clusters of a promotion never take the tag",
            rollouts_failed.clone(),
        );
        Metrics {
            reconcile_errors,
            rollouts_failed,
            registry,
            webhooks,
            registry_requests,
            cache_hits,
            cache_misses,
            syncs,
            sync_seconds,
            actions,
            rules,
            cluster_up,
            credential_expiry,
            leader,
            shards_held,
            member_clusters,
        }
    })
}

/// Registry hosts given their own `registry` label in the order they are first seen, besides
/// those the operator names; later hosts share the label `other`. Hosts come from tenants' Image
/// specs, so without a bound every new host would add a series.
pub const MAX_REGISTRY_LABELS: usize = 50;

/// The `registry` label values handed out so far.
#[derive(Default)]
struct RegistryLabelSet {
    /// Named by the operator (`--insecure-registry`): always their own label.
    named: HashSet<String>,
    /// First seen, at most [`MAX_REGISTRY_LABELS`].
    seen: HashSet<String>,
}

fn registry_label_set() -> &'static Mutex<RegistryLabelSet> {
    static S: OnceLock<Mutex<RegistryLabelSet>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Gives the registries the operator named their own `registry` label, whatever the count of
/// tenant registries seen.
pub fn name_registries(hosts: &[String]) {
    let mut set = match registry_label_set().lock() {
        Ok(s) => s,
        Err(p) => p.into_inner(),
    };
    set.named.extend(hosts.iter().cloned());
}

/// The `registry` label for a host: itself when the operator named it or it is among the first
/// [`MAX_REGISTRY_LABELS`] seen, else `other` (not a possible registry name: it has no dot or
/// port, so it would be a Docker Hub namespace).
fn registry_label(host: &str) -> String {
    let mut set = match registry_label_set().lock() {
        Ok(s) => s,
        Err(p) => p.into_inner(),
    };
    if set.named.contains(host) || set.seen.contains(host) {
        return host.to_string();
    }
    if set.seen.len() < MAX_REGISTRY_LABELS {
        set.seen.insert(host.to_string());
        return host.to_string();
    }
    "other".to_string()
}

/// Counts one registry request (label bounded by [`MAX_REGISTRY_LABELS`]).
pub fn registry_request(registry: &str, kind: &str) {
    metrics()
        .registry_requests
        .get_or_create(&RegistryLabels {
            registry: registry_label(registry),
            kind: kind.to_string(),
        })
        .inc();
}

/// Counts a tag cache hit or miss.
pub fn cache_access(hit: bool) {
    if hit {
        metrics().cache_hits.inc();
    } else {
        metrics().cache_misses.inc();
    }
}

/// Records a finished sync.
pub fn sync_done(cluster: &str, result: &str, seconds: f64) {
    let m = metrics();
    m.syncs
        .get_or_create(&SyncLabels {
            cluster: cluster.to_string(),
            result: result.to_string(),
        })
        .inc();
    m.sync_seconds
        .get_or_create(&ClusterLabels {
            cluster: cluster.to_string(),
        })
        .observe(seconds);
}

/// Counts an action.
pub fn action(action: &str, outcome: &str) {
    metrics()
        .actions
        .get_or_create(&ActionLabels {
            action: action.to_string(),
            outcome: outcome.to_string(),
        })
        .inc();
}

/// Counts a rule evaluation outcome.
pub fn rule(result: &str) {
    metrics()
        .rules
        .get_or_create(&ResultLabels {
            result: result.to_string(),
        })
        .inc();
}

/// Sets whether a cluster is up.
pub fn cluster_up(cluster: &str, up: bool) {
    metrics()
        .cluster_up
        .get_or_create(&ClusterLabels {
            cluster: cluster.to_string(),
        })
        .set(i64::from(up));
}

/// Sets when a cluster's credential expires (Unix seconds), or drops the series when it does not
/// expire, is not known or the cluster is gone.
pub fn credential_expiry(cluster: &str, expires: Option<i64>) {
    let labels = ClusterLabels {
        cluster: cluster.to_string(),
    };
    match expires {
        Some(t) => {
            metrics().credential_expiry.get_or_create(&labels).set(t);
        }
        None => {
            metrics().credential_expiry.remove(&labels);
        }
    }
}

/// Counts a webhook request.
pub fn webhook(source: &str, outcome: &str) {
    // Unknown sources are folded so that a scanner cannot grow the label set.
    let source = match source {
        "generic" | "dockerhub" | "harbor" | "distribution" | "ghcr" | "quay" => source,
        _ => "unknown",
    };
    metrics()
        .webhooks
        .get_or_create(&WebhookLabels {
            source: source.to_string(),
            outcome: outcome.to_string(),
        })
        .inc();
}

/// Counts a failed reconcile.
pub fn reconcile_error(cluster: &str, error: &str) {
    metrics()
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            cluster: cluster.to_string(),
            error: error.to_string(),
        })
        .inc();
}

/// Counts a rollout that failed in `cluster`.
pub fn rollout_failed(cluster: &str) {
    metrics()
        .rollouts_failed
        .get_or_create(&ClusterLabels {
            cluster: cluster.to_string(),
        })
        .inc();
}

/// Exports `cluster`'s failed-rollout count at 0 before any failure: a counter that first
/// appears at 1 is an increase PromQL never sees.
pub fn rollouts_failed_known(cluster: &str) {
    let created = metrics().rollouts_failed.get_or_create(&ClusterLabels {
        cluster: cluster.to_string(),
    });
    drop(created);
}

/// Sets whether this replica leads.
pub fn leader(is_leader: bool) {
    metrics().leader.set(i64::from(is_leader));
}

/// Sets how many shards this replica holds.
pub fn shards_held(n: usize) {
    metrics()
        .shards_held
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// Sets how many member clusters are configured.
pub fn member_clusters(n: usize) {
    metrics()
        .member_clusters
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// The OpenMetrics text exposition.
pub fn encode() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct `registry` label values in the exposition.
    fn registry_labels() -> std::collections::BTreeSet<String> {
        encode()
            .lines()
            .filter(|l| l.starts_with("kimup_registry_request_total{"))
            .filter_map(|l| l.split("registry=\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn registry_label_cardinality_is_bounded() {
        for i in 0..200 {
            registry_request(&format!("tenant{i}.example"), "tags");
        }
        let labels = registry_labels();
        // 50 first-seen hosts, `other`, and the few hosts other tests of this binary name with
        // --insecure-registry.
        assert!(labels.len() <= 61, "{} registry labels", labels.len());
        assert!(labels.contains("other"), "{labels:?}");
        // An operator-named registry keeps its own label however many were seen before.
        name_registries(&["mirror.internal:5000".to_string()]);
        registry_request("mirror.internal:5000", "tags");
        assert!(registry_labels().contains("mirror.internal:5000"));
    }
}

//! The workloads and namespaces of one cluster, as watched caches: what level-based apply reads
//! (no LIST per sync), and the watch streams that re-converge an Image when a workload or a
//! namespace's opt-in changes.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, PodTemplateSpec};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::actions::apply::opt_in;

/// Kinds of workload kimup converges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// batch/v1 CronJob.
    CronJob,
}

impl Kind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::CronJob => "CronJob",
        }
    }

    /// The apiVersion of the kind.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::CronJob => "batch/v1",
            _ => "apps/v1",
        }
    }

    /// Where the pod template sits in the object.
    pub fn template_path(self) -> &'static [&'static str] {
        match self {
            Kind::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }
}

/// One workload as apply sees it.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Whether kimup may change it: its own annotation, else its pod template's, else the
    /// namespace's.
    pub opted_in: bool,
    /// Its pod template.
    pub template: PodTemplateSpec,
    /// How its rollout of that template fares, from its status.
    pub rollout: Rollout,
}

/// Where a workload's rollout of its current template stands (from its status; pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Every replica runs the current template and is available.
    Complete,
    /// Still rolling out, with what it waits for.
    Progressing(String),
    /// Kubernetes gave up: a Deployment's `Progressing=False` (`ProgressDeadlineExceeded`).
    Failed(String),
}

/// A Deployment's rollout: generation observed, updated = available = desired replicas (and no
/// old replica left), or failed past its progress deadline.
pub fn deployment_rollout(d: &Deployment) -> Rollout {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = d.status.as_ref() else {
        return Rollout::Progressing("no status yet".into());
    };
    // Generation first: right after a change, the condition may still be the previous
    // rollout's.
    if st.observed_generation.unwrap_or(0) < generation {
        return Rollout::Progressing("the change is not observed yet".into());
    }
    if let Some(c) = st.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Rollout::Failed(format!(
            "ProgressDeadlineExceeded: {}",
            c.message.as_deref().unwrap_or("")
        ));
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = st.updated_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    if updated == desired && available == desired && total == desired {
        Rollout::Complete
    } else {
        Rollout::Progressing(format!(
            "{updated} of {desired} replicas updated, {available} available"
        ))
    }
}

/// A StatefulSet's rollout: generation observed, update revision reached, ready = updated =
/// replicas. Kubernetes has no progress deadline for it; [`crate::promotion`] applies one.
pub fn statefulset_rollout(s: &StatefulSet) -> Rollout {
    let generation = s.metadata.generation.unwrap_or(0);
    let Some(st) = s.status.as_ref() else {
        return Rollout::Progressing("no status yet".into());
    };
    if st.observed_generation.unwrap_or(0) < generation {
        return Rollout::Progressing("the change is not observed yet".into());
    }
    let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let revision_reached =
        st.update_revision.is_some() && st.update_revision == st.current_revision;
    if revision_reached && ready == desired && updated == desired {
        Rollout::Complete
    } else {
        Rollout::Progressing(format!(
            "{updated} of {desired} replicas updated, {ready} ready"
        ))
    }
}

/// A DaemonSet's rollout: generation observed, updated = available = desired nodes.
pub fn daemonset_rollout(d: &DaemonSet) -> Rollout {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = d.status.as_ref() else {
        return Rollout::Progressing("no status yet".into());
    };
    if st.observed_generation.unwrap_or(0) < generation {
        return Rollout::Progressing("the change is not observed yet".into());
    }
    let desired = st.desired_number_scheduled;
    let updated = st.updated_number_scheduled.unwrap_or(0);
    let available = st.number_available.unwrap_or(0);
    if updated == desired && available == desired {
        Rollout::Complete
    } else {
        Rollout::Progressing(format!(
            "{updated} of {desired} pods updated, {available} available"
        ))
    }
}

/// Read access to one cluster's watched workloads and namespaces.
#[derive(Clone)]
pub struct Workloads {
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
    cronjobs: Store<CronJob>,
    namespaces: Store<Namespace>,
}

/// The watch streams behind [`Workloads`]; the controller polls them (they fill the caches) and
/// maps each event to the Images of the object's namespace.
pub struct Streams {
    /// Deployment events.
    pub deployments: BoxStream<'static, Result<Deployment, watcher::Error>>,
    /// StatefulSet events.
    pub statefulsets: BoxStream<'static, Result<StatefulSet, watcher::Error>>,
    /// DaemonSet events.
    pub daemonsets: BoxStream<'static, Result<DaemonSet, watcher::Error>>,
    /// CronJob events.
    pub cronjobs: BoxStream<'static, Result<CronJob, watcher::Error>>,
    /// Namespace events.
    pub namespaces: BoxStream<'static, Result<Namespace, watcher::Error>>,
}

/// Annotations no decision of kimup reads and that can be large.
const DROPPED_ANNOTATIONS: [&str; 1] = ["kubectl.kubernetes.io/last-applied-configuration"];

/// Watches the workloads (of `namespace`, or all) and the namespaces of a cluster.
pub fn watch(client: &Client, namespace: Option<&str>) -> (Workloads, Streams) {
    let (deployments, d) = reflect::<Deployment>(client, namespace);
    let (statefulsets, s) = reflect::<StatefulSet>(client, namespace);
    let (daemonsets, ds) = reflect::<DaemonSet>(client, namespace);
    let (cronjobs, c) = reflect::<CronJob>(client, namespace);
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let ns_config = match namespace {
        // One namespace served: watch only that one, so a namespaced kimup needs no cluster-wide
        // read of namespaces.
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (namespaces, n) = reflect_with(ns_api, ns_config);
    (
        Workloads {
            deployments,
            statefulsets,
            daemonsets,
            cronjobs,
            namespaces,
        },
        Streams {
            deployments: d,
            statefulsets: s,
            daemonsets: ds,
            cronjobs: c,
            namespaces: n,
        },
    )
}

type Reflected<K> = (Store<K>, BoxStream<'static, Result<K, watcher::Error>>);

fn reflect<K>(client: &Client, namespace: Option<&str>) -> Reflected<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    reflect_with(api, watcher::Config::default().any_semantic())
}

fn reflect_with<K>(api: Api<K>, config: watcher::Config) -> Reflected<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, config).default_backoff().modify(slim::<K>),
    )
    .touched_objects();
    (reader, boxed(stream))
}

fn boxed<K: Send + 'static>(
    s: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> BoxStream<'static, Result<K, watcher::Error>> {
    s.boxed()
}

/// Keeps in memory only what kimup reads: managed fields and the client-side apply copy of the
/// object are most of a small object's bytes, and kimup reads neither.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        for key in DROPPED_ANNOTATIONS {
            a.remove(key);
        }
    }
}

impl Workloads {
    /// Waits until every cache has its first full list, at most `timeout`; false on time-out.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let all = async {
            let _ = self.deployments.wait_until_ready().await;
            let _ = self.statefulsets.wait_until_ready().await;
            let _ = self.daemonsets.wait_until_ready().await;
            let _ = self.cronjobs.wait_until_ready().await;
            let _ = self.namespaces.wait_until_ready().await;
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Whether `namespace` carries the opt-in annotation set to true.
    pub fn namespace_opted_in(&self, namespace: &str) -> bool {
        self.namespaces
            .state()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(namespace))
            .is_some_and(|n| opt_in(n.metadata.annotations.as_ref()) == Some(true))
    }

    /// Every workload of `namespace`, in a stable order (kind, name).
    pub fn in_namespace(&self, namespace: &str) -> Vec<Workload> {
        let ns_opted = self.namespace_opted_in(namespace);
        let mut out = Vec::new();
        collect(
            &self.deployments,
            namespace,
            ns_opted,
            Kind::Deployment,
            &mut out,
            |d| d.spec.as_ref().map(|s| &s.template),
            deployment_rollout,
        );
        collect(
            &self.statefulsets,
            namespace,
            ns_opted,
            Kind::StatefulSet,
            &mut out,
            |d| d.spec.as_ref().map(|s| &s.template),
            statefulset_rollout,
        );
        collect(
            &self.daemonsets,
            namespace,
            ns_opted,
            Kind::DaemonSet,
            &mut out,
            |d| d.spec.as_ref().map(|s| &s.template),
            daemonset_rollout,
        );
        collect(
            &self.cronjobs,
            namespace,
            ns_opted,
            Kind::CronJob,
            &mut out,
            |c| c.spec.job_template.spec.as_ref().map(|s| &s.template),
            // A CronJob has no rollout: its next Job runs the template.
            |_| Rollout::Complete,
        );
        out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        out
    }
}

fn collect<K>(
    store: &Store<K>,
    namespace: &str,
    ns_opted: bool,
    kind: Kind,
    out: &mut Vec<Workload>,
    template: impl Fn(&K) -> Option<&PodTemplateSpec>,
    rollout: impl Fn(&K) -> Rollout,
) where
    K: Resource<DynamicType = ()> + Clone,
{
    for obj in store.state() {
        if obj.meta().namespace.as_deref() != Some(namespace) {
            continue;
        }
        // A workload being deleted is not converged: a patch would only race its deletion.
        if obj.meta().deletion_timestamp.is_some() {
            continue;
        }
        let Some(t) = template(&obj) else {
            continue;
        };
        let pod_annotations = t.metadata.as_ref().and_then(|m| m.annotations.as_ref());
        let opted_in = crate::actions::apply::workload_opted_in(
            obj.meta().annotations.as_ref(),
            pod_annotations,
            ns_opted,
        );
        out.push(Workload {
            kind,
            name: obj.name_any(),
            opted_in,
            template: t.clone(),
            rollout: rollout(&obj),
        });
    }
}

/// The namespace of a watched object, for mapping its events to the Images of that namespace.
pub fn namespace_of<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().namespace.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "generation": 3},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .expect("deployment")
    }

    #[test]
    fn a_deployment_is_rolled_out_when_every_replica_is_updated_and_available() {
        let done = deployment(serde_json::json!({
            "observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2
        }));
        assert_eq!(deployment_rollout(&done), Rollout::Complete);
        // An old replica still running.
        let surge = deployment(serde_json::json!({
            "observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2
        }));
        assert!(matches!(
            deployment_rollout(&surge),
            Rollout::Progressing(_)
        ));
        let unavailable = deployment(serde_json::json!({
            "observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1
        }));
        assert_eq!(
            deployment_rollout(&unavailable),
            Rollout::Progressing("2 of 2 replicas updated, 1 available".into())
        );
        let failed = deployment(serde_json::json!({
            "observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"web-1\" has timed out progressing."}]
        }));
        assert_eq!(
            deployment_rollout(&failed),
            Rollout::Failed(
                "ProgressDeadlineExceeded: ReplicaSet \"web-1\" has timed out progressing.".into()
            )
        );
        // Right after a change the condition is still the previous rollout's: not failed yet.
        let stale = deployment(serde_json::json!({
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
        }));
        assert!(matches!(
            deployment_rollout(&stale),
            Rollout::Progressing(_)
        ));
        assert!(matches!(
            deployment_rollout(&deployment(serde_json::Value::Null)),
            Rollout::Progressing(_)
        ));
    }

    #[test]
    fn statefulsets_and_daemonsets_roll_out_by_their_own_counters() {
        let sts = |status: serde_json::Value| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db", "generation": 2},
                "spec": {"replicas": 3, "selector": {}, "serviceName": "db", "template": {}},
                "status": status,
            }))
            .expect("statefulset")
        };
        let done = sts(
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
            "updatedReplicas": 3, "currentRevision": "db-2", "updateRevision": "db-2"}),
        );
        assert_eq!(statefulset_rollout(&done), Rollout::Complete);
        let midway = sts(
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
            "updatedReplicas": 1, "currentRevision": "db-1", "updateRevision": "db-2"}),
        );
        assert_eq!(
            statefulset_rollout(&midway),
            Rollout::Progressing("1 of 3 replicas updated, 3 ready".into())
        );
        let ds = |status: serde_json::Value| -> DaemonSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "agent", "generation": 5},
                "spec": {"selector": {}, "template": {}},
                "status": status,
            }))
            .expect("daemonset")
        };
        let done = ds(
            serde_json::json!({"observedGeneration": 5, "desiredNumberScheduled": 4,
            "updatedNumberScheduled": 4, "numberAvailable": 4, "currentNumberScheduled": 4,
            "numberMisscheduled": 0, "numberReady": 4}),
        );
        assert_eq!(daemonset_rollout(&done), Rollout::Complete);
        let old = ds(
            serde_json::json!({"observedGeneration": 4, "desiredNumberScheduled": 4,
            "updatedNumberScheduled": 4, "numberAvailable": 4, "currentNumberScheduled": 4,
            "numberMisscheduled": 0, "numberReady": 4}),
        );
        assert!(matches!(daemonset_rollout(&old), Rollout::Progressing(_)));
    }
}

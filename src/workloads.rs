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
        );
        collect(
            &self.statefulsets,
            namespace,
            ns_opted,
            Kind::StatefulSet,
            &mut out,
            |d| d.spec.as_ref().map(|s| &s.template),
        );
        collect(
            &self.daemonsets,
            namespace,
            ns_opted,
            Kind::DaemonSet,
            &mut out,
            |d| d.spec.as_ref().map(|s| &s.template),
        );
        collect(
            &self.cronjobs,
            namespace,
            ns_opted,
            Kind::CronJob,
            &mut out,
            |c| c.spec.job_template.spec.as_ref().map(|s| &s.template),
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
        });
    }
}

/// The namespace of a watched object, for mapping its events to the Images of that namespace.
pub fn namespace_of<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().namespace.clone()
}

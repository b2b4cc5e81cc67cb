//! The `apply` action on workloads: set the new tag on matching containers of opted-in
//! Deployments, StatefulSets, DaemonSets and CronJobs, so Kubernetes rolls them out.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, PodSpec, PodTemplateSpec};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::json;

use crate::api::ANNOTATION_ENABLED;
use crate::registry::reference::{self, ImageRef};

/// Field manager of every write kimup makes.
pub const FIELD_MANAGER: &str = "kimup";

/// One container image to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerChange {
    /// Container name.
    pub container: String,
    /// `true` for an init container.
    pub init: bool,
    /// Image before.
    pub from: String,
    /// Image after.
    pub to: String,
}

/// A workload that was (or would be) updated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadChange {
    /// `Deployment`, `StatefulSet`, `DaemonSet` or `CronJob`.
    pub kind: String,
    /// Workload name.
    pub name: String,
    /// Containers changed.
    pub containers: Vec<ContainerChange>,
}

/// What annotations say about opting in: `Some(true)` for `kimup.cloudavenue.io/enabled: "true"`,
/// `Some(false)` for `"false"`, None when absent (or any other value).
pub fn opt_in(annotations: Option<&BTreeMap<String, String>>) -> Option<bool> {
    match annotations?.get(ANNOTATION_ENABLED)?.trim() {
        v if v.eq_ignore_ascii_case("true") => Some(true),
        v if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Whether a workload is opted in: its own annotation, else its pod template's, else its
/// namespace's decides, so `"false"` on a workload (or its pods) excludes it from an enabled
/// namespace, as in kimup.
pub fn workload_opted_in(
    workload: Option<&BTreeMap<String, String>>,
    pod_template: Option<&BTreeMap<String, String>>,
    namespace: bool,
) -> bool {
    opt_in(workload)
        .or(opt_in(pod_template))
        .unwrap_or(namespace)
}

/// The image string a container should get: same repository spelling as the user wrote it, new
/// tag, and the digest pinned when one is given (mutable tags need it to roll out).
pub fn target_image(written: &str, tag: &str, digest: Option<&str>) -> String {
    // Keep the user's spelling of the repository (e.g. `nginx` rather than docker.io/library/nginx).
    let without_digest = written.split('@').next().unwrap_or(written);
    let last_slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let repo = match without_digest[last_slash..].rfind(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    };
    match digest {
        Some(d) => format!("{repo}:{tag}@{d}"),
        None => format!("{repo}:{tag}"),
    }
}

/// Containers of `spec` whose image is `image`'s repository and differs from the target (pure).
pub fn plan_pod_spec(
    spec: &PodSpec,
    image: &ImageRef,
    tag: &str,
    digest: Option<&str>,
) -> Vec<ContainerChange> {
    let mut out = Vec::new();
    let lists = [
        (false, Some(&spec.containers)),
        (true, spec.init_containers.as_ref()),
    ];
    for (init, list) in lists {
        for c in list.into_iter().flatten() {
            let Some(current) = c.image.as_deref() else {
                continue;
            };
            let Ok(parsed) = reference::parse(current) else {
                continue;
            };
            if !parsed.same_repository(image) {
                continue;
            }
            let to = target_image(current, tag, digest);
            if to != current {
                out.push(ContainerChange {
                    container: c.name.clone(),
                    init,
                    from: current.to_string(),
                    to,
                });
            }
        }
    }
    out
}

/// Strategic-merge patch body for a pod template at `path` (containers merge by name).
pub fn template_patch(path: &[&str], changes: &[ContainerChange]) -> serde_json::Value {
    let containers: Vec<_> = changes
        .iter()
        .filter(|c| !c.init)
        .map(|c| json!({"name": c.container, "image": c.to}))
        .collect();
    let inits: Vec<_> = changes
        .iter()
        .filter(|c| c.init)
        .map(|c| json!({"name": c.container, "image": c.to}))
        .collect();
    let mut spec = serde_json::Map::new();
    if !containers.is_empty() {
        spec.insert("containers".into(), json!(containers));
    }
    if !inits.is_empty() {
        spec.insert("initContainers".into(), json!(inits));
    }
    let mut value = json!({ "spec": spec });
    for key in path.iter().rev() {
        value = json!({ *key: value });
    }
    value
}

/// What one sync applies: the repository, the tag and the digest to pin (mutable tags).
#[derive(Clone, Copy)]
struct Target<'a> {
    image: &'a ImageRef,
    tag: &'a str,
    digest: Option<&'a str>,
}

/// Updates every opted-in workload of `namespace` that runs `image`; returns what changed.
pub async fn apply_to_workloads(
    client: &Client,
    namespace: &str,
    image: &ImageRef,
    tag: &str,
    digest: Option<&str>,
) -> Result<Vec<WorkloadChange>, kube::Error> {
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let ns_opted = ns_api
        .get_opt(namespace)
        .await?
        .is_some_and(|n| opt_in(n.metadata.annotations.as_ref()) == Some(true));
    let target = Target { image, tag, digest };
    let pod = ["spec", "template"];
    let job = ["spec", "jobTemplate", "spec", "template"];
    let mut changes = Vec::new();
    changes.extend(
        patch_kind::<Deployment>(client, namespace, ns_opted, target, &pod, |w| {
            w.spec.as_ref().map(|s| &s.template)
        })
        .await?,
    );
    changes.extend(
        patch_kind::<StatefulSet>(client, namespace, ns_opted, target, &pod, |w| {
            w.spec.as_ref().map(|s| &s.template)
        })
        .await?,
    );
    changes.extend(
        patch_kind::<DaemonSet>(client, namespace, ns_opted, target, &pod, |w| {
            w.spec.as_ref().map(|s| &s.template)
        })
        .await?,
    );
    changes.extend(
        patch_kind::<CronJob>(client, namespace, ns_opted, target, &job, |w| {
            w.spec.job_template.spec.as_ref().map(|s| &s.template)
        })
        .await?,
    );
    Ok(changes)
}

/// Patches the opted-in workloads of one kind whose pod template (found by `pod_spec`, at
/// `path` in the object) runs the target repository.
async fn patch_kind<K>(
    client: &Client,
    namespace: &str,
    ns_opted: bool,
    target: Target<'_>,
    path: &[&str],
    pod_template: impl Fn(&K) -> Option<&PodTemplateSpec>,
) -> Result<Vec<WorkloadChange>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for workload in api.list(&ListParams::default()).await? {
        let meta = workload.meta();
        let Some(template) = pod_template(&workload) else {
            continue;
        };
        let template_annotations = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref());
        if !workload_opted_in(meta.annotations.as_ref(), template_annotations, ns_opted) {
            continue;
        }
        let Some(spec) = template.spec.as_ref() else {
            continue;
        };
        let containers = plan_pod_spec(spec, target.image, target.tag, target.digest);
        if containers.is_empty() {
            continue;
        }
        let name = meta.name.clone().unwrap_or_default();
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(
            &name,
            &params,
            &Patch::Strategic(template_patch(path, &containers)),
        )
        .await?;
        out.push(WorkloadChange {
            kind: K::kind(&()).into_owned(),
            name,
            containers,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn container(name: &str, image: &str) -> Container {
        Container {
            name: name.into(),
            image: Some(image.into()),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_users_spelling_and_pins_digests() {
        assert_eq!(target_image("nginx:1.25", "1.26", None), "nginx:1.26");
        assert_eq!(target_image("nginx", "1.26", None), "nginx:1.26");
        assert_eq!(
            target_image("localhost:5000/a/b:1", "2", None),
            "localhost:5000/a/b:2"
        );
        assert_eq!(
            target_image("localhost:5000/a/b", "2", None),
            "localhost:5000/a/b:2"
        );
        assert_eq!(
            target_image("r:5000/a@sha256:aa", "2", Some("sha256:bb")),
            "r:5000/a:2@sha256:bb"
        );
    }

    #[test]
    fn plans_only_matching_containers_after_normalisation() {
        let spec = PodSpec {
            containers: vec![
                container("web", "docker.io/library/nginx:1.25"),
                container("sidecar", "busybox:1.36"),
                container("same", "nginx:1.26"),
            ],
            init_containers: Some(vec![container(
                "init",
                "index.docker.io/library/nginx:1.24",
            )]),
            ..Default::default()
        };
        let image = reference::parse("nginx").expect("ref");
        let plan = plan_pod_spec(&spec, &image, "1.26", None);
        assert_eq!(
            plan,
            vec![
                ContainerChange {
                    container: "web".into(),
                    init: false,
                    from: "docker.io/library/nginx:1.25".into(),
                    to: "docker.io/library/nginx:1.26".into()
                },
                ContainerChange {
                    container: "init".into(),
                    init: true,
                    from: "index.docker.io/library/nginx:1.24".into(),
                    to: "index.docker.io/library/nginx:1.26".into()
                },
            ]
        );
        let patch = template_patch(&["spec", "template"], &plan);
        assert_eq!(
            patch,
            json!({"spec": {"template": {"spec": {
                "containers": [{"name": "web", "image": "docker.io/library/nginx:1.26"}],
                "initContainers": [{"name": "init", "image": "index.docker.io/library/nginx:1.26"}]
            }}}})
        );
    }

    #[test]
    fn opt_in_workload_then_pods_then_namespace() {
        let ann = |v: &str| BTreeMap::from([(ANNOTATION_ENABLED.to_string(), v.to_string())]);
        assert_eq!(opt_in(None), None);
        assert_eq!(opt_in(Some(&BTreeMap::new())), None);
        assert_eq!(opt_in(Some(&ann("True"))), Some(true));
        assert_eq!(opt_in(Some(&ann("false"))), Some(false));
        assert_eq!(opt_in(Some(&ann("yes"))), None);
        // Namespace decides when the workload and its pods say nothing.
        assert!(workload_opted_in(None, None, true));
        assert!(!workload_opted_in(None, None, false));
        // "false" on the workload or its pods excludes it from an enabled namespace.
        assert!(!workload_opted_in(Some(&ann("false")), None, true));
        assert!(!workload_opted_in(None, Some(&ann("false")), true));
        // "true" on the workload or its pods includes it in a namespace that is not enabled.
        assert!(workload_opted_in(Some(&ann("true")), None, false));
        assert!(workload_opted_in(None, Some(&ann("true")), false));
        // The workload's own annotation wins over its pods'.
        assert!(workload_opted_in(
            Some(&ann("true")),
            Some(&ann("false")),
            false
        ));
    }
}

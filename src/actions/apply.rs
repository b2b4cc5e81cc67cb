//! The `apply` action, level-based: `status.tag` is the desired tag of every opted-in container
//! and init container running the Image's repository in its namespace (Deployments,
//! StatefulSets, DaemonSets, CronJobs). Every reconcile converges them, whether or not a rule
//! chose a new tag, by server-side apply under field manager `kimup`, owning only the image
//! fields it sets. Deciding is pure ([`assess`]); writing is [`converge`].

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PodSpec;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::json;

use crate::api::ANNOTATION_ENABLED;
use crate::registry::reference::{self, ImageRef};
use crate::rules::RuleType;
use crate::version::{CalverTag, OrderedTag, SemverTag};
use crate::workloads::{Kind, Rollout, Workload, Workloads};

/// Field manager of every write kimup makes.
pub const FIELD_MANAGER: &str = "kimup";

/// What every opted-in container of the repository should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The Image's repository.
    pub repository: ImageRef,
    /// `status.tag`.
    pub tag: String,
    /// Digest to pin (digest rules: a moved mutable tag only rolls out when pinned).
    pub digest: Option<String>,
    /// The ordering that decides whether a running tag is newer (the first apply rule's type).
    pub order: Option<RuleType>,
}

/// What apply makes of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Runs the desired tag (and digest, when one is pinned).
    UpToDate,
    /// Will be set to this image.
    Update(String),
    /// Runs a newer version than the desired tag by the rule's ordering: never rolled back.
    Newer,
}

/// One container running the Image's repository, with apply's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Container name.
    pub container: String,
    /// Whether it is an init container.
    pub init: bool,
    /// The image it runs now.
    pub image: String,
    /// What apply does with it.
    pub verdict: Verdict,
}

/// What converging one workload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadOutcome {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Its containers of the repository.
    pub containers: Vec<ContainerPlan>,
    /// Whether it was written in this pass.
    pub patched: bool,
    /// Why writing it failed (it is retried with backoff).
    pub error: Option<String>,
    /// Its rollout of the template it had before this pass (a workload written in this pass has
    /// only started rolling out).
    pub rollout: Rollout,
}

impl WorkloadOutcome {
    /// Whether every container runs the desired image now.
    pub fn up_to_date(&self) -> bool {
        self.error.is_none()
            && self.containers.iter().all(|c| match c.verdict {
                Verdict::UpToDate => true,
                Verdict::Update(_) => self.patched,
                Verdict::Newer => false,
            })
    }

    /// Whether some container runs a newer version, held back from a rollback.
    pub fn holds_newer(&self) -> bool {
        self.containers.iter().any(|c| c.verdict == Verdict::Newer)
    }
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

/// Whether `running` is a newer version than `desired` by the ordering of `order`. Tags the
/// ordering cannot read (`latest`, a commit hash, another scheme) are not newer: they converge,
/// as kimup (Go) stamped `status.tag` on every admitted Pod.
pub fn is_newer(order: Option<RuleType>, running: &str, desired: &str) -> bool {
    let Some(order) = order else {
        return false;
    };
    let ordering = match order {
        RuleType::SemverMajor | RuleType::SemverMinor | RuleType::SemverPatch => {
            match (SemverTag::parse(running), SemverTag::parse(desired)) {
                (Some(r), Some(d)) => Some(r.version_cmp(&d)),
                _ => None,
            }
        }
        RuleType::CalverMajor
        | RuleType::CalverMinor
        | RuleType::CalverPatch
        | RuleType::CalverPrerelease => {
            match (CalverTag::parse(running), CalverTag::parse(desired)) {
                (Some(r), Some(d)) => Some(r.version_cmp(&d)),
                _ => None,
            }
        }
        RuleType::Regex | RuleType::Always => {
            // Only versions are ordered here: natural order of words (`latest` > `1.2`) is no
            // reason to keep a workload off the Image's tag.
            match (SemverTag::parse(running), SemverTag::parse(desired)) {
                (Some(_), Some(_)) => Some(OrderedTag::new(running).cmp(&OrderedTag::new(desired))),
                _ => None,
            }
        }
        RuleType::Digest => None,
    };
    ordering == Some(Ordering::Greater)
}

/// Apply's verdict on every container and init container of `spec` running the repository
/// (pure).
pub fn assess(spec: &PodSpec, desired: &Desired) -> Vec<ContainerPlan> {
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
            if !parsed.same_repository(&desired.repository) {
                continue;
            }
            let running_tag = parsed.tag.as_deref().unwrap_or("latest");
            let digest_ok = match &desired.digest {
                Some(d) => parsed.digest.as_deref() == Some(d.as_str()),
                None => true,
            };
            let verdict = if running_tag == desired.tag && digest_ok {
                Verdict::UpToDate
            } else if running_tag != desired.tag
                && is_newer(desired.order, running_tag, &desired.tag)
            {
                Verdict::Newer
            } else {
                Verdict::Update(target_image(
                    current,
                    &desired.tag,
                    desired.digest.as_deref(),
                ))
            };
            out.push(ContainerPlan {
                container: c.name.clone(),
                init,
                image: current.to_string(),
                verdict,
            });
        }
    }
    out
}

/// The server-side apply configuration of a workload: only the image fields kimup owns. Up-to-date
/// containers are listed with their image so that kimup keeps owning what it set before (a field
/// a manager stops listing is removed); held containers are left to whoever owns them.
pub fn apply_config(
    kind: Kind,
    name: &str,
    namespace: &str,
    plans: &[ContainerPlan],
) -> serde_json::Value {
    let entry = |c: &ContainerPlan| match &c.verdict {
        Verdict::UpToDate => Some(json!({"name": c.container, "image": c.image})),
        Verdict::Update(to) => Some(json!({"name": c.container, "image": to})),
        Verdict::Newer => None,
    };
    let containers: Vec<_> = plans.iter().filter(|c| !c.init).filter_map(entry).collect();
    let inits: Vec<_> = plans.iter().filter(|c| c.init).filter_map(entry).collect();
    let mut spec = serde_json::Map::new();
    if !containers.is_empty() {
        spec.insert("containers".into(), json!(containers));
    }
    if !inits.is_empty() {
        spec.insert("initContainers".into(), json!(inits));
    }
    let mut value = json!({ "spec": spec });
    for key in kind.template_path().iter().rev() {
        value = json!({ *key: value });
    }
    if let Some(obj) = value.as_object_mut() {
        obj.insert("apiVersion".into(), json!(kind.api_version()));
        obj.insert("kind".into(), json!(kind.as_str()));
        obj.insert(
            "metadata".into(),
            json!({"name": name, "namespace": namespace}),
        );
    }
    value
}

/// Apply's verdicts on the opted-in workloads of a namespace (pure).
pub fn plan(workloads: &[Workload], desired: &Desired) -> Vec<WorkloadOutcome> {
    workloads
        .iter()
        .filter(|w| w.opted_in)
        .filter_map(|w| {
            let spec = w.template.spec.as_ref()?;
            let containers = assess(spec, desired);
            (!containers.is_empty()).then(|| WorkloadOutcome {
                kind: w.kind,
                name: w.name.clone(),
                containers,
                patched: false,
                error: None,
                rollout: w.rollout.clone(),
            })
        })
        .collect()
}

/// Converges the opted-in workloads of `namespace` to `desired`, reading the watched caches and
/// writing only those that differ. `may_write` is asked before each write (leadership); once it
/// says no, nothing more is written. One workload's failure does not stop the others.
pub async fn converge(
    client: &Client,
    workloads: &Workloads,
    namespace: &str,
    desired: &Desired,
    may_write: &(dyn Fn() -> bool + Send + Sync),
) -> Vec<WorkloadOutcome> {
    let mut outcomes = plan(&workloads.in_namespace(namespace), desired);
    for w in &mut outcomes {
        if !w
            .containers
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Update(_)))
        {
            continue;
        }
        if !may_write() {
            w.error = Some("not written: this replica no longer leads".into());
            continue;
        }
        let body = apply_config(w.kind, &w.name, namespace, &w.containers);
        let result = match w.kind {
            Kind::Deployment => ssa::<Deployment>(client, namespace, &w.name, &body).await,
            Kind::StatefulSet => ssa::<StatefulSet>(client, namespace, &w.name, &body).await,
            Kind::DaemonSet => ssa::<DaemonSet>(client, namespace, &w.name, &body).await,
            Kind::CronJob => ssa::<CronJob>(client, namespace, &w.name, &body).await,
        };
        match result {
            Ok(()) => w.patched = true,
            Err(e) => {
                tracing::warn!(kind = w.kind.as_str(), workload = %w.name, error = %e, "workload write failed; retried with backoff");
                w.error = Some(e.to_string());
            }
        }
    }
    outcomes
}

async fn ssa<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    body: &serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    // force: kimup takes the image fields over from whoever set them last (kubectl, a GitOps
    // tool); GitOps tools then ignore the fields that manager `kimup` owns.
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
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

    fn desired(tag: &str, order: Option<RuleType>) -> Desired {
        Desired {
            repository: reference::parse("nginx").expect("ref"),
            tag: tag.into(),
            digest: None,
            order,
        }
    }

    #[test]
    fn assesses_only_matching_containers_after_normalisation() {
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
        let plans = assess(&spec, &desired("1.26", Some(RuleType::SemverMinor)));
        assert_eq!(
            plans,
            vec![
                ContainerPlan {
                    container: "web".into(),
                    init: false,
                    image: "docker.io/library/nginx:1.25".into(),
                    verdict: Verdict::Update("docker.io/library/nginx:1.26".into()),
                },
                ContainerPlan {
                    container: "same".into(),
                    init: false,
                    image: "nginx:1.26".into(),
                    verdict: Verdict::UpToDate,
                },
                ContainerPlan {
                    container: "init".into(),
                    init: true,
                    image: "index.docker.io/library/nginx:1.24".into(),
                    verdict: Verdict::Update("index.docker.io/library/nginx:1.26".into()),
                },
            ]
        );
        // Up-to-date containers stay in the configuration, so kimup keeps owning their image.
        assert_eq!(
            apply_config(Kind::Deployment, "d", "ns", &plans),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "namespace": "ns"},
                "spec": {"template": {"spec": {
                    "containers": [
                        {"name": "web", "image": "docker.io/library/nginx:1.26"},
                        {"name": "same", "image": "nginx:1.26"}
                    ],
                    "initContainers": [{"name": "init", "image": "index.docker.io/library/nginx:1.26"}]
                }}}
            })
        );
    }

    #[test]
    fn cronjob_configuration_reaches_the_job_template() {
        let plans = vec![ContainerPlan {
            container: "c".into(),
            init: false,
            image: "nginx:1".into(),
            verdict: Verdict::Update("nginx:2".into()),
        }];
        assert_eq!(
            apply_config(Kind::CronJob, "cj", "ns", &plans),
            json!({
                "apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": "cj", "namespace": "ns"},
                "spec": {"jobTemplate": {"spec": {"template": {"spec": {
                    "containers": [{"name": "c", "image": "nginx:2"}]
                }}}}}
            })
        );
    }

    #[test]
    fn newer_running_versions_are_held_not_rolled_back() {
        let spec = PodSpec {
            containers: vec![
                container("ahead", "nginx:1.27.0"),
                container("behind", "nginx:1.25.0"),
                container("floating", "nginx:latest"),
                container("untagged", "nginx"),
            ],
            ..Default::default()
        };
        let plans = assess(&spec, &desired("1.26.0", Some(RuleType::SemverMajor)));
        let verdicts: Vec<_> = plans.iter().map(|p| p.verdict.clone()).collect();
        assert_eq!(
            verdicts,
            vec![
                Verdict::Newer,
                Verdict::Update("nginx:1.26.0".into()),
                Verdict::Update("nginx:1.26.0".into()),
                Verdict::Update("nginx:1.26.0".into()),
            ]
        );
        // A held container is left out of the configuration: kimup does not own it.
        let config = apply_config(Kind::Deployment, "d", "ns", &plans);
        let names: Vec<_> = config["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(names, ["behind", "floating", "untagged"]);
    }

    #[test]
    fn ordering_follows_the_rule() {
        use RuleType::*;
        assert!(is_newer(Some(SemverMinor), "v1.10.0", "v1.9.0"));
        assert!(!is_newer(Some(SemverMinor), "1.9.0", "1.10.0"));
        assert!(is_newer(Some(CalverMajor), "2025.01.05", "2024.11.05"));
        assert!(!is_newer(Some(CalverMajor), "latest", "2024.11.05"));
        assert!(is_newer(Some(Regex), "1.3.0", "1.2.0"));
        // Words are not versions: a workload on `latest` converges.
        assert!(!is_newer(Some(Regex), "latest", "1.2.0"));
        assert!(!is_newer(Some(Always), "zzz", "build-10"));
        // Digest rules have no ordering.
        assert!(!is_newer(Some(Digest), "2", "1"));
        assert!(!is_newer(None, "2", "1"));
    }

    #[test]
    fn digest_pins_converge_on_tag_and_digest() {
        let (aa, bb) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        let mut want = desired("stable", Some(RuleType::Digest));
        want.digest = Some(bb.clone());
        let spec = PodSpec {
            containers: vec![
                container("pinned", &format!("nginx:stable@{bb}")),
                container("old", &format!("nginx:stable@{aa}")),
                container("bare", "nginx:stable"),
            ],
            ..Default::default()
        };
        let verdicts: Vec<_> = assess(&spec, &want)
            .into_iter()
            .map(|p| p.verdict)
            .collect();
        assert_eq!(
            verdicts,
            vec![
                Verdict::UpToDate,
                Verdict::Update(format!("nginx:stable@{bb}")),
                Verdict::Update(format!("nginx:stable@{bb}")),
            ]
        );
        // Without a digest to pin, a user's own pin on the right tag is left alone.
        let spec = PodSpec {
            containers: vec![container("pinned", &format!("nginx:1.26@{aa}"))],
            ..Default::default()
        };
        assert_eq!(
            assess(&spec, &desired("1.26", None))[0].verdict,
            Verdict::UpToDate
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

//! Workloads that really roll out: kube-controller-manager and kube-scheduler (from the same
//! `k8s.io/kubernetes` module as kube-apiserver) and kwok's simulated node, per cluster.
//!
//! With them a Deployment creates a ReplicaSet, its Pods are scheduled onto the kwok node and
//! become Ready (kwok's `pod-ready` stage), and the Deployment reports its rollout as a kubelet's
//! would make it. One image convention lets a test break a rollout on purpose: a Pod whose image
//! contains [`NEVER_READY`] never becomes Ready, so its Deployment ends `Progressing=False`,
//! `ProgressDeadlineExceeded` after its `progressDeadlineSeconds`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::binaries::Binaries;
use crate::cluster::Cluster;
use crate::process::{Process, free_port, wait_until};

/// A Pod with an image containing this never becomes Ready.
pub const NEVER_READY: &str = "never-ready";
/// A Pod annotated with this (a regular expression) never becomes Ready when its image matches
/// it: one cluster's Deployment can refuse a tag that the same Deployment elsewhere runs.
pub const NEVER_READY_ANNOTATION: &str = "kimup-testenv/never-ready";

/// Name of the simulated node in every cluster.
pub const NODE: &str = "kwok-node-0";

/// kube-controller-manager, kube-scheduler and kwok serving one cluster; killed on drop.
pub struct Rollout {
    /// kube-controller-manager.
    pub controller_manager: Process,
    /// kube-scheduler.
    pub scheduler: Process,
    /// kwok, managing the nodes annotated `kwok.x-k8s.io/node: fake`.
    pub kwok: Process,
}

impl Rollout {
    /// Starts the three next to `cluster`'s API server and waits until the kwok node is Ready.
    pub async fn start(
        bins: &Binaries,
        cluster: &Cluster,
        dir: &Path,
        log_dir: &Path,
    ) -> Result<Self> {
        let dir = dir.join(format!("rollout-{}", cluster.name));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = cluster.kubeconfig_path.display().to_string();
        let pki = cluster.pki_dir();
        // What the controller manager and the scheduler share: the cluster's admin identity, no
        // election (one of each per cluster); each gets a port of its own.
        let common: Vec<String> = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--v=1".into(),
        ];
        let controller_manager = Process::spawn(
            &format!("kube-controller-manager-{}", cluster.name),
            &bins.kube_controller_manager,
            &[
                common.clone(),
                vec![
                    format!("--secure-port={}", free_port()?),
                    format!(
                        "--service-account-private-key-file={}",
                        pki.join("sa-signer.key").display()
                    ),
                    format!("--root-ca-file={}", pki.join("serving-ca.crt").display()),
                    "--use-service-account-credentials=false".into(),
                    // No kubelet heartbeats reach the simulated node: the node lifecycle controller
                    // would taint it and evict every Pod. Certificates are not signed here either.
                    "--controllers=*,-nodelifecycle,-csrsigning,-csrapproving,-csrcleaner".into(),
                ],
            ]
            .concat(),
            log_dir,
        )?;
        let scheduler = Process::spawn(
            &format!("kube-scheduler-{}", cluster.name),
            &bins.kube_scheduler,
            &[common, vec![format!("--secure-port={}", free_port()?)]].concat(),
            log_dir,
        )?;
        let stages = dir.join("kwok-stages.yaml");
        std::fs::write(&stages, stages_yaml(&bins.kwok_stages)?)?;
        let kwok = Process::spawn(
            &format!("kwok-{}", cluster.name),
            &bins.kwok,
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--config={}", stages.display()),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                format!("--server-address=127.0.0.1:{}", free_port()?),
                "--v=1".into(),
            ],
            log_dir,
        )?;
        let rollout = Self {
            controller_manager,
            scheduler,
            kwok,
        };
        let client = cluster.client().await?;
        let nodes: Api<Node> = Api::all(client);
        nodes
            .create(&PostParams::default(), &fake_node())
            .await
            .with_context(|| format!("creating the kwok node in {}", cluster.name))?;
        wait_until(
            &format!("kwok node {NODE} Ready in {}", cluster.name),
            Duration::from_secs(60),
            || {
                let nodes = nodes.clone();
                async move {
                    let node = nodes.get(NODE).await?;
                    Ok(node
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True"))
                }
            },
        )
        .await?;
        // The TaintNodesByCondition admission plugin creates every node with the not-ready
        // taint, which the node lifecycle controller (off, see above) would lift once it is Ready.
        nodes
            .patch(
                NODE,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"taints": null}})),
            )
            .await
            .with_context(|| format!("untainting the kwok node in {}", cluster.name))?;
        Ok(rollout)
    }
}

/// kwok's `fast` node and pod stages from its module (copied into the binary cache by
/// scripts/testenv-binaries.sh), the pod-ready stage refusing [`NEVER_READY`] images and images
/// matching a Pod's [`NEVER_READY_ANNOTATION`].
fn stages_yaml(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("kwok stages in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = String::new();
    let mut ready_patched = false;
    for f in files {
        let mut text = std::fs::read_to_string(&f)?;
        if text.contains("name: pod-ready") {
            let anchor = "  selector:\n    matchExpressions:\n";
            anchor_check(&text, anchor, &f)?;
            text = text.replacen(
                anchor,
                &format!(
                    "{anchor}    - key: '.spec.containers.[].image | test(\"{NEVER_READY}\")'\n      operator: 'NotIn'\n      values:\n      - 'true'\n    - key: '(.metadata.annotations[\"{NEVER_READY_ANNOTATION}\"] // \"\") as $p | $p != \"\" and ([.spec.containers.[].image | test($p)] | any)'\n      operator: 'NotIn'\n      values:\n      - 'true'\n"
                ),
                1,
            );
            ready_patched = true;
        }
        out.push_str("---\n");
        out.push_str(&text);
        out.push('\n');
    }
    anyhow::ensure!(ready_patched, "no pod-ready stage in {}", dir.display());
    Ok(out)
}

fn anchor_check(text: &str, anchor: &str, file: &Path) -> Result<()> {
    anyhow::ensure!(
        text.contains(anchor),
        "{} has no selector to extend",
        file.display()
    );
    Ok(())
}

fn fake_node() -> Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "type": "kwok"}
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"}
        }
    }))
    .unwrap_or_default()
}

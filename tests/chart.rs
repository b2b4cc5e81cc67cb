//! The Helm chart: linted, rendered, applied to the real API server; and its RBAC is enough for
//! kimup, proven by running kimup with a token of the chart's ServiceAccount.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::*;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kimup::api::SyncResult;
use kimup_testenv::Binaries;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::pinned_kind;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kimup")
}

fn helm(args: &[&str]) -> (bool, String, String) {
    let bins = Binaries::get().expect("binaries");
    let out = Command::new(&bins.helm)
        .args(args)
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn chart_lints_and_refuses_unsafe_values() {
    let c = chart();
    let c = c.to_str().expect("path");
    let (ok, out, err) = helm(&[
        "lint",
        "--strict",
        c,
        "--set",
        "clusters.kubeconfigSecret=clusters,webhookTokenSecret=hooks,otlpEndpoint=http://c:4318",
    ]);
    assert!(ok, "helm lint: {out}{err}");
    let (ok, _, err) = helm(&["template", "k", c, "--set", "leaderElection.enabled=false"]);
    assert!(!ok, "two replicas without leader election must be refused");
    assert!(
        err.contains("replicaCount > 1 needs leaderElection.enabled"),
        "{err}"
    );
    let (ok, _, err) = helm(&[
        "template",
        "k",
        c,
        "--set",
        "clusters.serveHomeCluster=false",
    ]);
    assert!(!ok);
    assert!(err.contains("no cluster to serve"), "{err}");
}

#[tokio::test]
async fn rendered_chart_applies_and_its_rbac_is_enough_for_kimup() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let release_ns = env.namespace(0, "kimup-system").await.expect("namespace");
    let c = chart();
    let (ok, rendered, err) = helm(&[
        "template",
        "kimup",
        c.to_str().expect("path"),
        "--namespace",
        &release_ns,
        "--include-crds",
        "--set",
        "clusters.kubeconfigSecret=clusters,webhookTokenSecret=hooks",
    ]);
    assert!(ok, "helm template: {err}");
    assert!(
        rendered.contains("KIMUP_WEBHOOK_TOKEN")
            && rendered.contains("--kubeconfig-dir=/etc/kimup/clusters")
    );
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("yaml");
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value).expect("object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let gvk = kube::api::GroupVersionKind::try_from(&types).expect("gvk");
        let (ar, caps) = pinned_kind(&client, &gvk).await.expect("kind served");
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            Api::namespaced_with(client.clone(), &release_ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let name = obj.metadata.name.clone().expect("name");
        api.patch(
            &name,
            &PatchParams::apply("chart-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", types.kind));
        kinds.push(types.kind);
    }
    for k in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ] {
        assert!(kinds.iter().any(|x| x == k), "chart lacks a {k}: {kinds:?}");
    }

    // Run kimup as the chart's ServiceAccount would: with a token of it, leader election on.
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &release_ns);
    let token = sa
        .create_token_request("kimup", &PostParams::default(), &TokenRequest::default())
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token;
    let kc: serde_yaml::Value = serde_yaml::from_str(&cluster.kubeconfig_yaml).expect("kubeconfig");
    let ca = kc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .expect("ca")
        .to_string();
    let sa_kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.url, "certificate-authority-data": ca}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "sa",
    });
    let path = env.run_dir.join(format!("sa-{release_ns}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&sa_kubeconfig).expect("yaml")).expect("write");
    assert!(
        base64::engine::general_purpose::STANDARD
            .decode(&ca)
            .is_ok()
    );

    let ns = env.namespace(0, "chart-app").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("chart/app", &["1.0.0", "1.0.1"])
        .await
        .expect("push");
    let image = format!("{}/chart/app", reg.host);
    create_deployment(
        &client,
        &ns,
        &deployment("app", &format!("{image}:1.0.0"), true),
    )
    .await;
    let args: Vec<String> = vec![
        "run".into(),
        format!("--kubeconfig={}", path.display()),
        format!("--watch-namespace={ns}"),
        "--listen-addr=127.0.0.1:0".into(),
        format!("--insecure-registry={}", reg.host),
        "--leader-elect".into(),
        format!("--lease-kubeconfig={}", path.display()),
        format!("--lease-namespace={release_ns}"),
    ];
    let kimup = spawn_kimup(env, &format!("kimup-sa-{ns}"), &args);
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\nspec:\n  image: {image}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: '@hourly'}}]\n  rules: [{{name: p, type: semver-patch, actions: [{{type: apply}}]}}]\n"
        ),
    )
    .await;
    let s = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(s.result, Some(SyncResult::Success), "{:?}", s.message);
    let (containers, _) = deployment_images(&client, &ns, "app").await;
    assert_eq!(containers[0], format!("{image}:1.0.1"));
    assert!(
        event_reasons(&client, &ns, "app")
            .await
            .contains(&"NewTag".to_string()),
        "events are allowed"
    );
    let log = kimup.log_text();
    assert!(
        !log.contains("forbidden"),
        "RBAC refused something: {}",
        kimup.log.display()
    );
}

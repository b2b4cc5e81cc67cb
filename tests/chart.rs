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

/// `--set` value turning on every object the chart leaves off by default.
const ALL_OPTIONAL_OBJECTS: &str = "serviceMonitor.enabled=true,prometheusRule.enabled=true,\
grafanaDashboard.enabled=true,networkPolicy.enabled=true";

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
    let (ok, out, err) = helm(&["lint", "--strict", c, "--set", ALL_OPTIONAL_OBJECTS]);
    assert!(ok, "helm lint with every optional object: {out}{err}");
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

/// values.schema.json refuses what the templates would silently misuse, naming the key.
#[test]
fn schema_refuses_typos_and_wrong_types() {
    let c = chart();
    let c = c.to_str().expect("path");
    let refused = |set: &[&str], want: &str| {
        let mut args = vec!["template", "k", c];
        for s in set {
            args.extend(["--set", s]);
        }
        let (ok, out, err) = helm(&args);
        assert!(!ok, "{set:?} must be refused, rendered:\n{out}");
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(want),
            "{set:?}: want {want:?} in: {err}"
        );
    };
    // A typo'd key, at the top level and under an object of the chart's.
    refused(
        &["replicaCont=3"],
        "additional properties 'replicaCont' not allowed",
    );
    refused(
        &["serviceMonitor.intervall=1m"],
        "at '/serviceMonitor': additional properties 'intervall' not allowed",
    );
    // Wrong types.
    refused(
        &["replicaCount=two"],
        "at '/replicaCount': got string, want integer",
    );
    refused(
        &["leaderElection.enabled=yes"],
        "at '/leaderElection/enabled': got string, want boolean",
    );
    refused(
        &["registry.timeout=30"],
        "at '/registry/timeout': got number, want string",
    );
    // Enums, patterns and bounds.
    refused(
        &["log.format=xml"],
        "at '/log/format': value must be one of 'json', 'text'",
    );
    refused(
        &["registry.tagCacheTTL=1 minute"],
        "at '/registry/tagCacheTTL': '1 minute' does not match pattern",
    );
    refused(
        &["replicaCount=0"],
        "at '/replicaCount': minimum: got 0, want 1",
    );
    refused(
        &["port=70000"],
        "at '/port': maximum: got 70,000, want 65,535",
    );
    refused(&["otlpEndpoint=collector:4318"], "at '/otlpEndpoint'");
    // And `helm lint` says the same.
    let (ok, out, err) = helm(&["lint", c, "--set", "replicaCont=3"]);
    assert!(
        !ok && format!("{out}{err}").contains("additional properties 'replicaCont' not allowed"),
        "{out}{err}"
    );
}

/// The leaves of a values tree: scalars, lists, and empty maps, with their paths.
fn leaves(
    v: &serde_json::Value,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, serde_json::Value)>,
) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(k.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), v.clone())),
    }
}

/// The schema of the value at `path`, following local `$ref`s; the nodes met at the end (the
/// node itself and what its `$ref` points to), so that both are searched for `examples`.
fn schema_at<'a>(schema: &'a serde_json::Value, path: &[String]) -> Vec<&'a serde_json::Value> {
    let resolve = |node: &'a serde_json::Value| -> Vec<&'a serde_json::Value> {
        let mut nodes = vec![node];
        if let Some(r) = node["$ref"].as_str() {
            let target = r
                .strip_prefix("#/")
                .expect("local $ref")
                .split('/')
                .fold(schema, |n, k| &n[k]);
            nodes.push(target);
        }
        nodes
    };
    let mut nodes = resolve(schema);
    for key in path {
        let next = nodes.iter().find_map(|n| {
            n["properties"].get(key).or_else(|| {
                n["additionalProperties"]
                    .as_object()
                    .map(|_| &n["additionalProperties"])
            })
        });
        match next {
            Some(n) => nodes = resolve(n),
            None => return Vec::new(),
        }
    }
    nodes
}

/// A value for the leaf `path` other than `current` that the schema accepts: an example from
/// the schema, another member of an enum, the other boolean, the next integer, a new string.
fn distinctive(
    schema: &serde_json::Value,
    path: &[String],
    current: &serde_json::Value,
) -> serde_json::Value {
    use serde_json::Value;
    let nodes = schema_at(schema, path);
    let candidates = nodes.iter().flat_map(|n| {
        n["examples"]
            .as_array()
            .into_iter()
            .chain(n["enum"].as_array())
            .flatten()
    });
    for c in candidates {
        if c != current {
            return c.clone();
        }
    }
    match current {
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) => Value::from(n.as_i64().expect("integer values") + 1),
        Value::String(_) => Value::from(format!("distinct-{}", path.join("-"))),
        other => panic!(
            "{}: no example in values.schema.json for a value like {other}: add one",
            path.join(".")
        ),
    }
}

fn set_path(root: &mut serde_json::Value, path: &[String], value: serde_json::Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut node = root;
    for k in parents {
        node = node
            .as_object_mut()
            .expect("object")
            .entry(k.clone())
            .or_insert_with(|| serde_json::json!({}));
    }
    node.as_object_mut()
        .expect("object")
        .insert(last.clone(), value);
}

/// `helm template` of the chart with `values` (a values file) on top of values.yaml.
fn render_with(values: &serde_json::Value, dir: &Path, n: usize) -> Result<String, String> {
    let file = dir.join(format!("values-{n}.json"));
    std::fs::write(&file, values.to_string()).expect("write values");
    let c = chart();
    let (ok, out, err) = helm(&[
        "template",
        "kimup",
        c.to_str().expect("path"),
        "--namespace",
        "walk",
        "-f",
        file.to_str().expect("path"),
    ]);
    if ok { Ok(out) } else { Err(err) }
}

/// Every key of values.yaml is used: set to another value (with what it needs set around it:
/// its parents' `enabled`, and the few pairs the chart refuses otherwise), each changes what
/// `helm template` renders.
#[test]
fn every_values_key_changes_the_output() {
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let values: serde_json::Value = serde_json::to_value(values).expect("as JSON");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("values.schema.json")).expect("schema"),
    )
    .expect("schema parses");
    // Leaves whose other value the chart refuses alone, and what makes it valid.
    let needs: &[(&str, serde_json::Value)] = &[
        (
            "leaderElection.enabled",
            serde_json::json!({"replicaCount": 1}),
        ),
        (
            "clusters.serveHomeCluster",
            serde_json::json!({"clusters": {"kubeconfigSecret": "kimup-clusters"}}),
        ),
        (
            "serviceAccount.create",
            serde_json::json!({"serviceAccount": {"name": "existing"}}),
        ),
    ];
    let mut all = Vec::new();
    leaves(&values, &mut Vec::new(), &mut all);
    assert!(all.len() > 40, "walked only {} leaves", all.len());

    let dir = tempfile::tempdir().expect("temp dir");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((path, current)) = all.get(i) else {
                        return;
                    };
                    let key = path.join(".");
                    let mut context = serde_json::json!({});
                    for depth in 0..path.len() - 1 {
                        let parent = &path[..depth + 1];
                        let at = parent.iter().fold(&values, |n, k| &n[k]);
                        let mut enabled = parent.to_vec();
                        enabled.push("enabled".into());
                        if at.get("enabled").is_some_and(|e| e.is_boolean()) && enabled != *path {
                            set_path(&mut context, &enabled, true.into());
                        }
                    }
                    if let Some((_, extra)) = needs.iter().find(|(k, _)| *k == key) {
                        for (k, v) in extra.as_object().expect("object") {
                            let mut merged = context[k].take();
                            if let (Some(m), Some(e)) = (merged.as_object_mut(), v.as_object()) {
                                m.extend(e.clone());
                            } else {
                                merged = v.clone();
                            }
                            context[k] = merged;
                        }
                    }
                    let new = distinctive(&schema, path, current);
                    let mut changed = context.clone();
                    set_path(&mut changed, path, new.clone());
                    let outcome = match (
                        render_with(&context, dir.path(), 2 * i),
                        render_with(&changed, dir.path(), 2 * i + 1),
                    ) {
                        (Ok(a), Ok(b)) if a == b => Some(format!(
                            "{key}: {current} -> {new} (with {context}) renders the same: the key is unused"
                        )),
                        (Ok(_), Ok(_)) => None,
                        (Err(e), _) => Some(format!("{key}: baseline {context} fails: {e}")),
                        (_, Err(e)) => Some(format!("{key}: {new} (with {context}) fails: {e}")),
                    };
                    if let Some(f) = outcome {
                        failures.lock().expect("lock").push(f);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("lock");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

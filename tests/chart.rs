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

/// The chart's ClusterRole is kimup's one rule set (src/rbac.rs), the one `kimup cluster add`
/// grants in member clusters: its generated copy is fresh and renders to exactly those rules.
#[test]
fn chart_cluster_role_is_the_rule_set() {
    let path = chart().join("files/member-rules.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == kimup::rbac::chart_rules_yaml(),
        "{} is stale: run scripts/gen-rbac.sh and commit the result",
        path.display()
    );
    let c = chart();
    let (ok, rendered, err) = helm(&[
        "template",
        "kimup",
        c.to_str().expect("path"),
        "--show-only",
        "templates/rbac.yaml",
    ]);
    assert!(ok, "helm template: {err}");
    let role = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("yaml"))
        .find(|v| v["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let role: k8s_openapi::api::rbac::v1::ClusterRole =
        serde_yaml::from_value(role).expect("ClusterRole");
    assert_eq!(role.rules, Some(kimup::rbac::policy_rules()));
    assert_eq!(
        role.rules,
        kimup::onboard::cluster_role().rules,
        "the chart and `kimup cluster add` grant the same"
    );
}

#[tokio::test]
async fn rendered_chart_applies_and_its_rbac_is_enough_for_kimup() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let release_ns = env.namespace(0, "kimup-system").await.expect("namespace");
    // prometheus-operator's kinds, as stand-ins that accept any spec.
    let monitoring = kimup_testenv::load_crds(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monitoring-crds"),
    )
    .expect("monitoring CRDs");
    cluster
        .install_crds(&monitoring)
        .await
        .expect("install monitoring CRDs");
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
        "--set",
        ALL_OPTIONAL_OBJECTS,
        "--set-json",
        r#"networkPolicy.ingressFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
        "--set-json",
        r#"env=[{"name":"HTTPS_PROXY","value":"http://proxy:3128"}]"#,
        "--set-json",
        r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway","labelSelector":{"matchLabels":{"app.kubernetes.io/name":"kimup"}}}]"#,
        "--set",
        "podLabels.team=platform,podAnnotations.team=platform",
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
        // A kind whose CRD was applied just before (from this chart or the fixture) may take
        // a moment to be served once Established.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (ar, caps) = loop {
            match pinned_kind(&client, &gvk).await {
                Ok(found) => break found,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("{} not served: {e}", types.kind)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            Api::namespaced_with(client.clone(), &release_ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let name = obj.metadata.name.clone().expect("name");
        api.patch(
            &name,
            // Strict: a field the API server does not know fails, not just warns.
            &PatchParams::apply("chart-test").force().validation_strict(),
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
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
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

/// The objects of a rendered chart.
fn documents(rendered: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .map(|doc| <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("yaml"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("as JSON"))
        .collect()
}

/// The PromQL of the chart's PrometheusRule (alert name, expression) and of its Grafana
/// dashboard (panel targets and variable queries), as rendered.
fn monitoring_queries() -> (Vec<(String, String)>, Vec<String>) {
    let c = chart();
    let (ok, rendered, err) = helm(&[
        "template",
        "kimup",
        c.to_str().expect("path"),
        "--namespace",
        "ops",
        "--set",
        "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
    ]);
    assert!(ok, "helm template: {err}");
    let docs = documents(&rendered);
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let alerts: Vec<(String, String)> = rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| {
            (
                r["alert"].as_str().expect("alert name").to_string(),
                r["expr"].as_str().expect("expr").to_string(),
            )
        })
        .collect();
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a dashboard ConfigMap with the sidecar's label");
    let json: serde_json::Value = serde_json::from_str(
        dashboard["data"]["kimup.json"]
            .as_str()
            .expect("kimup.json"),
    )
    .expect("the dashboard is JSON");
    fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(q)) => out.push(q.clone()),
                        _ => queries(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
            _ => {}
        }
    }
    let mut panel_queries = Vec::new();
    queries(&json, &mut panel_queries);
    let panels = json["panels"].as_array().expect("panels");
    assert!(
        panels
            .iter()
            .all(|p| !p["targets"].as_array().is_none_or(|t| t.is_empty())),
        "a panel without a query"
    );
    (alerts, panel_queries)
}

/// A series selector in PromQL: metric name and label matchers (label, operator, value).
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

fn selectors(promql: &str) -> Vec<Selector> {
    let metric = regex::Regex::new(r"\b(kimup_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?").expect("regex");
    let matcher =
        regex::Regex::new(r#"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)""#)
            .expect("regex");
    metric
        .captures_iter(promql)
        .map(|c| Selector {
            metric: c[1].to_string(),
            matchers: c
                .get(2)
                .map(|m| {
                    matcher
                        .captures_iter(m.as_str())
                        .map(|m| (m[1].to_string(), m[2].to_string(), m[3].to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Labels Prometheus adds to a target's series (not in kimup's exposition).
const TARGET_LABELS: [&str; 6] = [
    "job",
    "namespace",
    "pod",
    "instance",
    "service",
    "container",
];

/// A /metrics exposition: the names a query can use (counters as `<family>_total`, histograms
/// as `_bucket`/`_sum`/`_count`), and the samples of each.
struct Exposition {
    names: std::collections::BTreeSet<String>,
    samples: Vec<(String, std::collections::BTreeMap<String, String>)>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut names = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    let pair = regex::Regex::new(r#"([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)""#).expect("regex");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("# TYPE name kind");
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).expect("sample line");
            let name = line[..end].to_string();
            let mut labels = std::collections::BTreeMap::new();
            if line[end..].starts_with('{') {
                let body = &line[end + 1..line.rfind('}').expect("closing brace")];
                for c in pair.captures_iter(body) {
                    labels.insert(c[1].to_string(), c[2].to_string());
                }
            }
            names.insert(name.clone());
            samples.push((name, labels));
        }
    }
    Exposition { names, samples }
}

impl Exposition {
    /// Samples of the selector's metric that its matchers select (target labels aside).
    fn matching(&self, s: &Selector) -> usize {
        self.samples
            .iter()
            .filter(|(name, labels)| {
                *name == s.metric
                    && s.matchers
                        .iter()
                        .filter(|(l, _, _)| !TARGET_LABELS.contains(&l.as_str()))
                        .all(|(l, op, v)| {
                            let have = labels.get(l).map(String::as_str).unwrap_or("");
                            let re = || regex::Regex::new(&format!("^(?:{v})$")).expect("regex");
                            match op.as_str() {
                                "=" => have == v,
                                "!=" => have != v,
                                "=~" => re().is_match(have),
                                _ => !re().is_match(have),
                            }
                        })
            })
            .count()
    }
}

/// The alerts and the dashboard query metrics kimup exports: a real kimup process syncs one
/// Image, fails one alert delivery and one workload patch, and every metric name in the rendered
/// rule and dashboard is in its /metrics, with the labels they match on; the alerts on those
/// failures select its series.
/// Grafana's template variables and its `label_values(selector, label)` function are not PromQL:
/// the query Prometheus receives has the variables filled in and only the selector.
fn as_prometheus_sees_it(query: &str) -> Option<String> {
    if query == "prometheus" {
        // The datasource variable's plugin type, not a query.
        return None;
    }
    let q = query
        .replace("$__rate_interval", "1m")
        .replace("$namespace", "ops")
        .replace("$job", "kimup");
    let label_values =
        regex::Regex::new(r"^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)$").expect("regex");
    Some(match label_values.captures(&q) {
        Some(c) => c[1].to_string(),
        None => q,
    })
}

/// Every alert expression and dashboard query parses with Prometheus's own PromQL parser
/// (syntax and types: `rate` of an instant vector, an unclosed parenthesis, a bad matcher).
#[test]
fn alert_and_dashboard_promql_parses() {
    let (alerts, panel_queries) = monitoring_queries();
    let mut exprs: Vec<(String, String)> = alerts;
    exprs.extend(
        panel_queries
            .iter()
            .filter_map(|q| as_prometheus_sees_it(q).map(|e| ("dashboard".to_string(), e))),
    );
    assert!(exprs.len() >= 17, "{exprs:?}");
    let check = |list: &[String]| -> Vec<String> {
        let bins = Binaries::get().expect("binaries");
        let mut child = Command::new(&bins.promql_check)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run promql-check");
        let input = serde_json::to_vec(list).expect("json");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &input).expect("write");
        let out = child.wait_with_output().expect("promql-check output");
        assert!(out.status.success(), "promql-check failed");
        serde_json::from_slice(&out.stdout).expect("promql-check answers JSON")
    };
    // The checker itself refuses what it must, so a pass below means something.
    let refused = check(&["rate(kimup_leader)".into(), "sum(kimup_leader".into()]);
    assert!(refused.iter().all(|e| !e.is_empty()), "{refused:?}");
    let errors = check(&exprs.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>());
    let bad: Vec<String> = exprs
        .iter()
        .zip(&errors)
        .filter(|(_, e)| !e.is_empty())
        .map(|((name, expr), e)| format!("{name}: {expr}: {e}"))
        .collect();
    assert!(
        bad.is_empty(),
        "PromQL that Prometheus refuses:\n{}",
        bad.join("\n")
    );
}

#[tokio::test]
async fn alerts_and_dashboard_use_metrics_kimup_exports() {
    let (alerts, panel_queries) = monitoring_queries();
    for (alert, expr) in &alerts {
        assert!(
            !selectors(expr).is_empty(),
            "{alert} uses no kimup metric: {expr}"
        );
    }
    let all: Vec<&String> = alerts
        .iter()
        .map(|(_, e)| e)
        .chain(&panel_queries)
        .collect();
    assert!(
        panel_queries.len() >= 10,
        "dashboard queries: {panel_queries:?}"
    );

    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "chart-metrics").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("chart/metrics", &["1.0.0", "1.0.1"])
        .await
        .expect("push");
    let image = format!("{}/chart/metrics", reg.host);
    let port = kimup_testenv::process::free_port().expect("port");
    let kimup = start_kimup_with(
        env,
        cluster,
        &ns,
        true,
        &[&format!("--listen-addr=127.0.0.1:{port}")],
        &[("KIMUP_WEBHOOK_TOKEN".into(), "chart-test-token".into())],
    );
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: ok}}\nspec:\n  image: {image}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: '@hourly'}}]\n  rules: [{{name: p, type: semver-patch, actions: [{{type: apply}}]}}]\n"
        ),
    )
    .await;
    // An alert whose AlertConfig does not exist: a failed delivery, a sync that is not Success.
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: alerting}}\nspec:\n  image: {image}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: '@hourly'}}]\n  rules: [{{name: p, type: semver-patch, actions: [{{type: alert-webhook, data: {{valueFrom: {{alertConfigRef: {{name: missing}}}}}}}}]}}]\n"
        ),
    )
    .await;
    // A workload whose patch the API server refuses: a reconcile error (workload_write).
    let frozen_image = format!("{}/chart/frozen", reg.host);
    reg.push_tags("chart/frozen", &["1.0.0", "1.0.1"])
        .await
        .expect("push");
    create_deployment(
        &client,
        &ns,
        &deployment("frozen", &format!("{frozen_image}:1.0.0"), true),
    )
    .await;
    refuse_deployment_updates(&client, &ns).await;
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: frozen}}\nspec:\n  image: {frozen_image}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: '@hourly'}}]\n  rules: [{{name: p, type: semver-patch, actions: [{{type: apply}}]}}]\n"
        ),
    )
    .await;
    let s = wait_status(&client, &ns, "ok", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(s.result, Some(SyncResult::Success), "{:?}", s.message);
    let s = wait_status(
        &client,
        &ns,
        "alerting",
        Duration::from_secs(60),
        &kimup,
        |s| s.result.is_some(),
    )
    .await;
    assert_eq!(s.result, Some(SyncResult::ActionError), "{:?}", s.message);
    // A webhook without the token: a webhook sample.
    let http = reqwest::Client::new();
    let refused = http
        .post(format!("http://127.0.0.1:{port}/webhooks/generic"))
        .send()
        .await
        .expect("webhook");
    assert_eq!(refused.status().as_u16(), 401);
    // Families without a sample are not in the exposition: wait for the reconcile error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        if text.contains("kimup_reconcile_errors_total{") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconcile error counted for the refused workload; kimup log {}\n{text}",
            kimup.log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    refuse_deployment_updates_off(&client, &ns).await;
    let exposition = parse_exposition(&text);

    let mut problems = Vec::new();
    for expr in &all {
        for s in selectors(expr) {
            if !exposition.names.contains(&s.metric) {
                problems.push(format!("{} is not exported (in {expr})", s.metric));
                continue;
            }
            let exported: std::collections::BTreeSet<&String> = exposition
                .samples
                .iter()
                .filter(|(n, _)| *n == s.metric)
                .flat_map(|(_, l)| l.keys())
                .collect();
            if exported.is_empty() {
                continue; // no sample yet: its labels cannot be checked here
            }
            for (label, _, _) in &s.matchers {
                if !TARGET_LABELS.contains(&label.as_str()) && !exported.contains(label) {
                    problems.push(format!(
                        "{} has no label {label} (has {exported:?}; in {expr})",
                        s.metric
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n/metrics:\n{text}",
        problems.join("\n")
    );
    for firing in [
        "KimupSyncsFailing",
        "KimupAlertDeliveryFailing",
        "KimupReconcileErrors",
    ] {
        let (_, expr) = alerts
            .iter()
            .find(|(a, _)| a == firing)
            .unwrap_or_else(|| panic!("no alert {firing}"));
        for s in selectors(expr) {
            assert!(
                exposition.matching(&s) > 0,
                "{firing} selects no series of a kimup that failed so: {expr}\n{text}"
            );
        }
    }
    drop(kimup);
}

/// Names of the ValidatingAdmissionPolicy and its binding that refuse Deployment updates in `ns`.
fn refusal_name(ns: &str) -> String {
    format!("chart-refuse-{ns}")
}

fn admission_api(client: &kube::Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    Api::all_with(
        client.clone(),
        &kube::discovery::ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// Makes the API server refuse every update of a Deployment in `ns` (a ValidatingAdmissionPolicy),
/// and waits until it does: a dry-run patch is refused.
async fn refuse_deployment_updates(client: &kube::Client, ns: &str) {
    let name = refusal_name(ns);
    let policy: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "resourceRules": [{
                    "apiGroups": ["apps"], "apiVersions": ["*"],
                    "operations": ["UPDATE"], "resources": ["deployments"]
                }]
            },
            "validations": [{"expression": "false", "message": "updates refused by the chart test"}]
        }
    }))
    .expect("policy");
    admission_api(
        client,
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
    )
    .create(&PostParams::default(), &policy)
    .await
    .expect("create policy");
    let binding: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]}
    }))
    .expect("binding");
    admission_api(
        client,
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    )
    .create(&PostParams::default(), &binding)
    .await
    .expect("create binding");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), ns);
    let probe = serde_json::json!({"metadata": {"annotations": {"chart-test/probe": "1"}}});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let refused = matches!(
            deployments
                .patch("frozen", &PatchParams::default().dry_run(), &Patch::Merge(&probe))
                .await,
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 403
        );
        if refused {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Deployment updates in {ns} still allowed 30 s after the policy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn refuse_deployment_updates_off(client: &kube::Client, ns: &str) {
    let name = refusal_name(ns);
    let dp = kube::api::DeleteParams::default();
    admission_api(
        client,
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    )
    .delete(&name, &dp)
    .await
    .expect("delete binding");
    admission_api(
        client,
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
    )
    .delete(&name, &dp)
    .await
    .expect("delete policy");
}

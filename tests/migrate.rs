//! Migration from kimup (Go): a `Kimup` resource converted by `kimup migrate kimup-cr` installs
//! with the real chart (helm lint and template) into the Deployment it described, and kimup
//! (Go)'s flags get the way over or run; the README's removal of kimup (Go) keeps every Image.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kimup::api::{Image, SyncResult};
use kimup_testenv::process::wait_until;
use kimup_testenv::{Binaries, TestEnv};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kimup-cr.yaml")
}

fn kimup_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kimup");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kimup output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn helm(args: &[&str]) -> Output {
    let bins = Binaries::get().expect("binaries");
    Command::new(&bins.helm)
        .args(args)
        .output()
        .expect("run helm")
}

#[test]
fn a_kimup_resource_becomes_values_the_chart_installs() {
    let out = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(["migrate", "kimup-cr"])
        .arg(fixture())
        .output()
        .expect("run kimup migrate");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "kimup migrate: {stdout}{stderr}");
    // Every note reaches the operator twice: on stderr and as a comment in the values.
    for needle in ["spec.image", "spec.name \"demo\"", "spec.healthz.port 9081"] {
        assert!(stderr.contains(needle), "no {needle:?} on stderr: {stderr}");
        assert!(
            stdout.contains(needle),
            "no {needle:?} in the values: {stdout}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, &stdout).expect("write values");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kimup");
    let chart = chart.to_str().expect("path");
    let values = values.to_str().expect("path");
    // values.schema.json refuses unknown keys and wrong types: the output must pass it.
    let lint = helm(&["lint", "--strict", chart, "-f", values]);
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        text(&lint.stdout),
        text(&lint.stderr)
    );
    let rendered = helm(&[
        "template",
        "demo",
        chart,
        "--namespace",
        "kimup-system",
        "-f",
        values,
    ]);
    assert!(
        rendered.status.success(),
        "helm template: {}",
        text(&rendered.stderr)
    );
    let deployment = serde_yaml::Deserializer::from_str(&text(&rendered.stdout))
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("yaml"))
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment is rendered");
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    let env = container["env"].as_sequence().expect("env list");
    for (name, value) in [
        ("HTTPS_PROXY", "http://proxy.internal:3128"),
        ("NO_PROXY", ".cluster.local"),
    ] {
        assert!(
            env.iter().any(|e| e["name"] == name && e["value"] == value),
            "no {name}={value} in {env:?}"
        );
    }
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(container["resources"]["requests"]["cpu"], "100m");
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "node-role.kubernetes.io/infra"
    );
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        spec["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    assert_eq!(spec["serviceAccountName"], "kimup-controller");
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--log-level=debug"), "{args:?}");
    assert!(args.contains(&"--listen-addr=0.0.0.0:9080"), "{args:?}");
    assert_eq!(container["ports"][0]["containerPort"], 9080);
    // The Go controller's image is not carried over: the chart's own image runs.
    let image = container["image"].as_str().expect("image");
    assert!(image.starts_with("ghcr.io/kimup/kimup:"), "{image}");
}

#[test]
fn kubectl_lists_convert_from_stdin_and_bad_input_is_exit_2() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}",
        std::fs::read_to_string(fixture())
            .expect("fixture")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .enumerate()
            .map(|(i, l)| if i == 0 {
                format!("- {l}\n")
            } else {
                format!("  {l}\n")
            })
            .collect::<String>()
    );
    let out = kimup_stdin(&["migrate", "kimup-cr", "-"], &list);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("HTTPS_PROXY"),
        "{}",
        text(&out.stdout)
    );

    for (input, needle) in [
        ("kind: Image\nmetadata: {name: x}\n", "no Kimup resource"),
        (
            "kind: Kimup\nmetadata: {name: k}\nspec: {env: oops}\n",
            "spec.env must be a list",
        ),
        ("{{{", "not YAML"),
    ] {
        let out = kimup_stdin(&["migrate", "kimup-cr", "-"], input);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{input:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{input:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{input:?}: values printed on error");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(["migrate", "kimup-cr", "/nonexistent/kimup.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/kimup.yaml"));
}

#[test]
fn upstream_port_flags_name_the_replacement() {
    for (flag, needle) in [
        ("--metrics-port=:9080", "--listen-addr 0.0.0.0:9080"),
        ("--healthz-port=9081", "--listen-addr 0.0.0.0:9081"),
        ("--metrics-path=/m", "fixed path"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kimup"))
            .args(["run", flag, "--listen-addr=127.0.0.1:0"])
            .output()
            .expect("run kimup");
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(needle),
            "{flag}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn upstream_switches_and_loglevel_run() {
    // kimup (Go)'s command line, as its operator wrote it: the level is honoured, the switches
    // are accepted with a warning each.
    let dir = tempfile::tempdir().expect("tempdir");
    let clusters = dir.path().join("clusters");
    std::fs::create_dir(&clusters).expect("mkdir");
    let log = dir.path().join("kimup.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args([
            "--loglevel=debug",
            "run",
            "--metrics",
            "--healthz",
            "--healthz-path=/healthz",
            "--listen-addr=127.0.0.1:0",
        ])
        .arg(format!("--kubeconfig-dir={}", clusters.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start kimup");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("no member cluster") && text.contains("DEBUG") {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kimup exited ({status}) before warning of no member cluster: {text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("within 30 s, no debug line and \"no member cluster\" warning: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    for flag in ["--metrics", "--healthz", "--healthz-path"] {
        assert!(
            text.contains(&format!("{flag} is kimup (Go)'s flag and has no effect")),
            "no warning for {flag}: {text}"
        );
    }
}

/// A CRD under kimup (Go)'s name, group, version and scope. Its schema keeps every field: kimup
/// (Go)'s generated CRDs are not in the Go module proxy this project builds from, and what the
/// procedure must prove (objects survive a CRD replacement and another CRD's removal) does not
/// depend on the schema.
fn upstream_crd(plural: &str, kind: &str) -> CustomResourceDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.kimup.cloudavenue.io")},
        "spec": {
            "group": "kimup.cloudavenue.io",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(),
                      "listKind": format!("{kind}List")},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))
    .expect("CRD")
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "kimup.cloudavenue.io".into(),
        version: "v1alpha1".into(),
        api_version: "kimup.cloudavenue.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

#[tokio::test]
async fn removing_kimup_go_keeps_every_image() {
    let env = TestEnv::builder()
        .name("migrate")
        .clusters(1)
        .registries()
        .start()
        .await
        .expect("test environment");
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // kimup (Go)'s install: its three CRDs, an Image and an AlertConfig as its docs write them,
    // and a Kimup.
    for (plural, kind) in [
        ("images", "Image"),
        ("alertconfigs", "AlertConfig"),
        ("kimups", "Kimup"),
    ] {
        crds.create(&PostParams::default(), &upstream_crd(plural, kind))
            .await
            .expect("create kimup (Go) CRD");
    }
    let ns = env.namespace(0, "kimup-go").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("team/app", &["1.0.0", "1.0.1", "1.1.0"])
        .await
        .expect("push");
    let docs = [
        (
            resource("Image", "images"),
            format!(
                "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\nspec:\n  image: {}/team/app\n  baseTag: 1.0.0\n  triggers:\n    - type: crontab\n      value: \"00 00 */12 * * *\"\n  rules:\n    - name: Automatic update semver minor\n      type: semver-minor\n      actions:\n        - type: apply\n",
                reg.host
            ),
        ),
        (
            resource("AlertConfig", "alertconfigs"),
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: AlertConfig\nmetadata: {name: demo}\nspec:\n  discord:\n    webhookURL:\n      valueFrom:\n        secretKeyRef: {name: discord, key: url}\n".to_string(),
        ),
        (
            resource("Kimup", "kimups"),
            std::fs::read_to_string(fixture()).expect("fixture"),
        ),
    ];
    let mut uids = Vec::new();
    for (ar, yaml) in &docs {
        wait_until("the kimup (Go) CRDs serve", Duration::from_secs(30), || {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, ar);
            async move { Ok(api.list(&ListParams::default()).await.is_ok()) }
        })
        .await
        .expect("CRDs served");
        let mut obj: DynamicObject = serde_yaml::from_str(yaml).expect("manifest");
        obj.metadata.namespace = Some(ns.clone());
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, ar);
        let created = api
            .create(&PostParams::default(), &obj)
            .await
            .expect("create under kimup (Go)'s CRDs");
        uids.push((
            ar.clone(),
            obj.metadata.name.clone().unwrap_or_default(),
            created.metadata.uid,
        ));
    }

    // Step 1: the Kimups become values.
    let kimups: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &resource("Kimup", "kimups"));
    let list = kimups
        .list(&ListParams::default())
        .await
        .expect("list kimups");
    let yaml = serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": list.items,
    }))
    .expect("yaml");
    let out = kimup_stdin(&["migrate", "kimup-cr", "-"], &yaml);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("HTTPS_PROXY"),
        "{}",
        text(&out.stdout)
    );
    kimups
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete kimups");

    // Step 4: kubectl replace -f crds/kimup.yaml, then the Kimup CRD goes.
    let ours = kimup_testenv::load_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .expect("crds/");
    for mut crd in ours.clone() {
        let name = crd.metadata.name.clone().expect("name");
        let current = crds.get(&name).await.expect("kimup (Go) CRD exists");
        crd.metadata.resource_version = current.metadata.resource_version;
        crds.replace(&name, &PostParams::default(), &crd)
            .await
            .expect("replace the CRD");
    }
    crds.delete("kimups.kimup.cloudavenue.io", &DeleteParams::default())
        .await
        .expect("delete the Kimup CRD");
    wait_until("the Kimup CRD is gone", Duration::from_secs(60), || {
        let crds = crds.clone();
        async move { Ok(crds.get_opt("kimups.kimup.cloudavenue.io").await?.is_none()) }
    })
    .await
    .expect("Kimup CRD deleted");
    for (ar, name, uid) in &uids[..2] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, ar);
        let now = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{} {name} lost: {e}", ar.kind));
        assert_eq!(&now.metadata.uid, uid, "{} {name} was recreated", ar.kind);
    }
    // The replaced CRD is ours, whole: kimup's own schema (not merged with the old one).
    let images_crd = crds
        .get("images.kimup.cloudavenue.io")
        .await
        .expect("Image CRD");
    let version = &images_crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    assert_eq!(
        schema.x_kubernetes_preserve_unknown_fields, None,
        "the old schema survived"
    );

    // Step 5: kimup serves the Image kimup (Go) left.
    let kimup = common::start_kimup(&env, cluster, &ns, &[]);
    let status = common::wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(
        status.result,
        Some(SyncResult::Success),
        "{:?}",
        status.message
    );
    assert_eq!(status.tag.as_deref(), Some("1.1.0"));
    let typed: Api<Image> = Api::namespaced(client.clone(), &ns);
    assert_eq!(
        typed.get("app").await.expect("Image").metadata.uid,
        uids[0].2
    );
}

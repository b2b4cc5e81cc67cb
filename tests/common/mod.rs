//! Helpers shared by the integration tests: run kimup as a real process, create objects, wait.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kimup::api::{Image, ImageStatus};
use kimup_testenv::process::Process;
use kimup_testenv::{Cluster, TestEnv};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

/// The test environment shared by the tests of one binary: one cluster, both registries, CRDs.
pub fn env() -> &'static TestEnv {
    kimup_testenv::shared(|| {
        TestEnv::builder()
            .name("sync")
            .clusters(1)
            .registries()
            .kimup_crds()
    })
    .expect("test environment starts")
}

/// A kimup process; killed on drop.
pub struct Kimup {
    /// The process.
    pub process: Process,
    /// Log file.
    pub log: PathBuf,
}

impl Drop for Kimup {
    /// No secret reaches kimup's log: checked for every kimup a test started (not while a test
    /// is already failing, where a second panic would abort).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let log = self.log_text();
        assert!(
            !log.contains(kimup_testenv::canary()),
            "a Secret's value reached kimup's log {}",
            self.log.display()
        );
    }
}

impl Kimup {
    /// Contents of the log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `kimup run` against `cluster`, watching only `namespace`, trusting the TLS registry's CA
/// and reaching the plain registry over HTTP. `extra` flags are appended.
pub fn start_kimup(env: &TestEnv, cluster: &Cluster, namespace: &str, extra: &[&str]) -> Kimup {
    start_kimup_with(env, cluster, namespace, true, extra, &[])
}

/// As `start_kimup`, choosing whether the TLS registry's CA is trusted (`--registry-ca-file`).
pub fn start_kimup_with(
    env: &TestEnv,
    cluster: &Cluster,
    namespace: &str,
    trust_ca: bool,
    extra: &[&str],
    vars: &[(String, String)],
) -> Kimup {
    let ca = env.run_dir.join(format!("tls-ca-{namespace}.pem"));
    std::fs::write(&ca, env.tls_registry().ca_pem.as_deref().unwrap_or("")).expect("write CA");
    let mut args: Vec<String> = vec![
        "--log-format=json".into(),
        "--log-level=info,kimup=debug".into(),
        "run".into(),
        format!("--kubeconfig={}", cluster.kubeconfig_path.display()),
        format!("--watch-namespace={namespace}"),
        format!("--insecure-registry={}", env.plain_registry().host),
        "--tag-cache-ttl=0s".into(),
    ];
    if !extra.iter().any(|a| a.starts_with("--listen-addr")) {
        args.push("--listen-addr=127.0.0.1:0".into());
    }
    if trust_ca {
        args.push(format!("--registry-ca-file={}", ca.display()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn_kimup_with_env(env, &format!("kimup-{namespace}"), &args, vars)
}

/// Runs the kimup binary under test with `args`, its log in the environment's log folder.
pub fn spawn_kimup(env: &TestEnv, name: &str, args: &[String]) -> Kimup {
    spawn_kimup_with_env(env, name, args, &[])
}

/// As `spawn_kimup`, with environment variables (e.g. OTEL_EXPORTER_OTLP_ENDPOINT).
pub fn spawn_kimup_with_env(
    env: &TestEnv,
    name: &str,
    args: &[String],
    vars: &[(String, String)],
) -> Kimup {
    let process = Process::spawn_with_env(
        name,
        std::path::Path::new(env!("CARGO_BIN_EXE_kimup")),
        args,
        vars,
        &env.log_dir(),
    )
    .expect("start kimup");
    let log = process.log_path().to_path_buf();
    Kimup { process, log }
}

/// Creates an Image from YAML in `namespace`.
pub async fn create_image(client: &Client, namespace: &str, yaml: &str) -> Image {
    let image: Image = serde_yaml::from_str(yaml).expect("valid Image YAML");
    let api: Api<Image> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &image)
        .await
        .expect("create Image")
}

/// Waits until the Image's status satisfies `pred`, returning it; panics with the last status
/// and the kimup log path on timeout.
pub async fn wait_status(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    kimup: &Kimup,
    pred: impl Fn(&ImageStatus) -> bool,
) -> ImageStatus {
    let api: Api<Image> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(img) = api.get(name).await {
            if let Some(s) = &img.status
                && pred(s)
            {
                return s.clone();
            }
            last = img.status;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for status of {namespace}/{name}; last status: {last:#?}; kimup log: {}",
                kimup.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Deployment running `image`, opted in to kimup when `opted`.
pub fn deployment(name: &str, image: &str, opted: bool) -> Deployment {
    let annotations = if opted {
        serde_json::json!({"kimup.cloudavenue.io/enabled": "true"})
    } else {
        serde_json::json!({})
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "initContainers": [{"name": "init", "image": image}],
                    "containers": [
                        {"name": "app", "image": image},
                        {"name": "other", "image": "busybox:1.36"}
                    ]
                }
            }
        }
    }))
    .expect("deployment literal")
}

/// Creates a Deployment.
pub async fn create_deployment(client: &Client, namespace: &str, d: &Deployment) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), d)
        .await
        .expect("create Deployment");
}

/// Images of the containers and init containers of a Deployment.
pub async fn deployment_images(
    client: &Client,
    namespace: &str,
    name: &str,
) -> (Vec<String>, Vec<String>) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let d = api.get(name).await.expect("get Deployment");
    let spec = d.spec.and_then(|s| s.template.spec).expect("pod spec");
    let images = |cs: Vec<k8s_openapi::api::core::v1::Container>| {
        cs.into_iter().filter_map(|c| c.image).collect::<Vec<_>>()
    };
    (
        images(spec.containers),
        images(spec.init_containers.unwrap_or_default()),
    )
}

/// A dockerconfigjson pull secret for `registry` with `username`/`password`.
pub fn pull_secret(name: &str, registry: &str, username: &str, password: &str) -> Secret {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    // A second entry carries the canary as it would a real credential: kimup parses it with the
    // rest and must never echo it.
    let canary = kimup_testenv::canary();
    let canary_auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{canary}:{canary}"));
    let config = serde_json::json!({"auths": {
        registry: {"auth": auth},
        format!("{canary}.invalid"): {"auth": canary_auth, "username": canary, "password": canary}
    }});
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config.to_string()}
    }))
    .expect("secret literal")
}

/// Creates a Secret.
pub async fn create_secret(client: &Client, namespace: &str, s: &Secret) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), s)
        .await
        .expect("create Secret");
}

/// Reasons of the events recorded for an object.
pub async fn event_reasons(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Waits until an event with `reason` is recorded for the object (events are published right
/// after the status write, so a test that saw the status may be ahead of them).
pub async fn wait_event(client: &Client, namespace: &str, name: &str, reason: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reasons = event_reasons(client, namespace, name).await;
        if reasons.iter().any(|r| r == reason) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} event for {namespace}/{name} within 15 s; events {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No secret reached what kimup writes in `namespace`: the Images' statuses and the events.
pub async fn assert_no_canary(client: &Client, namespace: &str) {
    let canary = kimup_testenv::canary();
    let images = Api::<Image>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list Images");
    let text = serde_json::to_string(&images.items).unwrap_or_default();
    assert!(
        !text.contains(canary),
        "a Secret's value reached an Image in {namespace}"
    );
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list events");
    let text = serde_json::to_string(&events.items).unwrap_or_default();
    assert!(
        !text.contains(canary),
        "a Secret's value reached an event in {namespace}"
    );
}

/// The string value of attribute `key` of an OTLP JSON span.
pub fn attr<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

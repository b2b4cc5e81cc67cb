//! The test control plane itself: three real API servers over etcd, two real registries, and the
//! fault injectors (Toxiproxy for TCP, the HTTP fault proxy for 429/503).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kimup_testenv::httpfault::{FaultPlan, HttpFault, HttpFaultProxy};
use kimup_testenv::process::wait_until;
use kimup_testenv::toxiproxy::Toxic;
use kimup_testenv::{TestEnv, rollout, shared};
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.testenv.kimup.io"},
        "spec": {
            "group": "testenv.kimup.io",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
                }}}
            }]
        }
    }))
    .expect("valid CRD literal")
}

fn env() -> &'static TestEnv {
    shared(|| {
        TestEnv::builder()
            .name("testenv")
            .clusters(3)
            .registries()
            .toxiproxy()
            .crds(vec![widget_crd()])
    })
    .expect("test environment starts")
}

#[tokio::test]
async fn three_clusters_serve_custom_resources_with_status() {
    let env = env();
    assert_eq!(env.clusters.len(), 3);
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("testenv.kimup.io", "v1", "Widget"),
        "widgets",
    );
    let mut urls = std::collections::HashSet::new();
    for (i, cluster) in env.clusters.iter().enumerate() {
        assert!(
            urls.insert(cluster.url.clone()),
            "each cluster has its own URL"
        );
        let client = cluster.client().await.expect("client");
        let version = client.apiserver_version().await.expect("version");
        assert_eq!(
            version.git_version, "v1.36.3",
            "the pinned release reports itself"
        );

        let ns = env.namespace(i, "widgets").await.expect("namespace");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let mut obj = DynamicObject::new("w1", &ar);
        obj.data = serde_json::json!({"spec": {"size": i + 1}});
        api.create(&PostParams::default(), &obj)
            .await
            .expect("create");

        let read = api.get("w1").await.expect("read back");
        assert_eq!(read.data["spec"]["size"], serde_json::json!(i + 1));

        let status = serde_json::json!({
            "apiVersion": "testenv.kimup.io/v1", "kind": "Widget",
            "status": {"phase": format!("ready-{}", cluster.name)}
        });
        api.patch_status(
            "w1",
            &PatchParams::apply("kimup-testenv-test").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("patch status");
        let read = api.get("w1").await.expect("read status");
        assert_eq!(
            read.data["status"]["phase"],
            serde_json::json!(format!("ready-{}", cluster.name))
        );
    }
    // Clusters are separate: the namespace created in cluster 0 is not in cluster 1.
    let ns0 = env.namespace(0, "only-here").await.expect("namespace");
    let api1: Api<k8s_openapi::api::core::v1::Namespace> =
        Api::all(env.clusters[1].client().await.expect("client"));
    assert!(api1.get_opt(&ns0).await.expect("get").is_none());
}

#[tokio::test]
async fn plain_registry_lists_pushed_tags() {
    let env = env();
    let reg = env.plain_registry();
    reg.push_tags("testenv/plain", &["1.0.0", "1.1.0", "2.0.0"])
        .await
        .expect("push");
    let client = reg.oci_client().expect("client");
    let reference: Reference = format!("{}/testenv/plain", reg.host).parse().expect("ref");
    let tags = client
        .list_tags(&reference, &RegistryAuth::Anonymous, None, None)
        .await
        .expect("list tags");
    let mut got = tags.tags.clone();
    got.sort();
    assert_eq!(got, vec!["1.0.0", "1.1.0", "2.0.0"]);
}

#[tokio::test]
async fn tls_registry_requires_the_right_password() {
    let env = env();
    let reg = env.tls_registry();
    reg.push_tags("testenv/private", &["a", "b", "c"])
        .await
        .expect("push");
    let reference: Reference = format!("{}/testenv/private", reg.host)
        .parse()
        .expect("ref");

    let tags = reg
        .oci_client()
        .expect("client")
        .list_tags(&reference, &reg.registry_auth(), None, None)
        .await
        .expect("list with the right password");
    let mut got = tags.tags.clone();
    got.sort();
    assert_eq!(got, vec!["a", "b", "c"]);

    let user = reg.auth.as_ref().expect("auth").username.clone();
    let err = reg
        .oci_client()
        .expect("client")
        .list_tags(
            &reference,
            &RegistryAuth::Basic(user, "wrong".into()),
            None,
            None,
        )
        .await
        .expect_err("wrong password must fail");
    let text = format!("{err:?}");
    assert!(
        text.contains("401") || text.to_lowercase().contains("unauthorized"),
        "expected a 401, got {text}"
    );

    // Without trusting the registry's CA, TLS verification fails.
    let untrusting =
        oci_client::Client::try_from(oci_client::client::ClientConfig::default()).expect("client");
    let err = untrusting
        .list_tags(&reference, &reg.registry_auth(), None, None)
        .await
        .expect_err("self-signed certificate must be rejected");
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
}

#[tokio::test]
async fn tags_move_and_delete() {
    let env = env();
    let reg = env.plain_registry();
    reg.push_tags("testenv/mutable", &["latest", "1.0"])
        .await
        .expect("push");
    let before = reg
        .digest("testenv/mutable", "latest")
        .await
        .expect("digest");
    let other = reg.digest("testenv/mutable", "1.0").await.expect("digest");
    assert_ne!(before, other, "each tag has its own digest");
    let after = reg
        .move_tag("testenv/mutable", "latest")
        .await
        .expect("move");
    assert_ne!(before, after);
    assert_eq!(
        reg.digest("testenv/mutable", "latest")
            .await
            .expect("digest"),
        after
    );

    reg.delete_tag("testenv/mutable", "1.0")
        .await
        .expect("delete");
    let reference: Reference = format!("{}/testenv/mutable", reg.host)
        .parse()
        .expect("ref");
    let tags = reg
        .oci_client()
        .expect("client")
        .list_tags(&reference, &RegistryAuth::Anonymous, None, None)
        .await
        .expect("list");
    assert_eq!(tags.tags, vec!["latest"]);
    assert!(
        reg.tag_list_requests().expect("log") >= 1,
        "access log counts tag listings"
    );
}

#[tokio::test]
async fn killed_api_server_restarts_with_same_address() {
    // Its own environment: killing a server must not disturb the shared one.
    let mut env = TestEnv::builder()
        .name("testenv-restart")
        .clusters(1)
        .start()
        .await
        .expect("env");
    let url = env.clusters[0].url.clone();
    env.clusters[0].kill();
    let client = env.clusters[0].client().await.expect("client");
    let down = tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await;
    assert!(
        matches!(down, Ok(Err(_)) | Err(_)),
        "server is down after kill"
    );
    env.clusters[0].restart().await.expect("restart");
    assert_eq!(env.clusters[0].url, url);
    let client = env.clusters[0].client().await.expect("client");
    client.apiserver_version().await.expect("back up");
}

/// A tag listing through `addr` (a proxy in front of the plain registry), with a client that
/// gives up after `timeout`: the status, or the error text.
async fn list_tags_via(addr: &str, repo: &str, timeout: Duration) -> Result<u16, String> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    http.get(format!("http://{addr}/v2/{repo}/tags/list"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn toxiproxy_breaks_and_heals_a_registry_link() {
    let env = env();
    let reg = env.plain_registry();
    reg.push_tags("testenv/toxic", &["1.0.0"])
        .await
        .expect("push");
    let proxy = env
        .toxiproxy()
        .proxy("registry-link", &reg.host)
        .await
        .expect("proxy");
    let repo = "testenv/toxic";
    let quick = Duration::from_secs(5);
    assert_eq!(list_tags_via(&proxy.listen, repo, quick).await, Ok(200));

    // Connections reset: the listing fails; the toxic removed, it works again.
    let reset = proxy
        .add_toxic(&Toxic::reset_peer(Duration::ZERO))
        .await
        .expect("reset_peer");
    assert_eq!(proxy.toxics().await.expect("list"), vec![reset.clone()]);
    let err = list_tags_via(&proxy.listen, repo, quick)
        .await
        .expect_err("a reset connection fails");
    assert!(
        err.to_lowercase().contains("reset") || err.contains("connection closed"),
        "{err}"
    );
    proxy.remove_toxic(&reset).await.expect("remove");
    assert_eq!(list_tags_via(&proxy.listen, repo, quick).await, Ok(200));

    // Latency on the responses: the listing takes at least that long.
    let latency = proxy
        .add_toxic(&Toxic::latency(Duration::from_millis(600)))
        .await
        .expect("latency");
    let started = std::time::Instant::now();
    assert_eq!(list_tags_via(&proxy.listen, repo, quick).await, Ok(200));
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    proxy.remove_toxic(&latency).await.expect("remove");

    // Data held: a client with a deadline times out.
    proxy
        .add_toxic(&Toxic::timeout(Duration::ZERO))
        .await
        .expect("timeout");
    let err = list_tags_via(&proxy.listen, repo, Duration::from_secs(1))
        .await
        .expect_err("held data times out");
    assert!(
        err.to_lowercase().contains("timed out") || err.contains("TimedOut"),
        "{err}"
    );
    proxy.clear_toxics().await.expect("clear");

    // The response cut after a few bytes, or slowed to 1 KB/s: the first fails, the second works.
    proxy
        .add_toxic(&Toxic::limit_data(20))
        .await
        .expect("limit_data");
    assert!(list_tags_via(&proxy.listen, repo, quick).await.is_err());
    proxy.clear_toxics().await.expect("clear");
    proxy
        .add_toxic(&Toxic::bandwidth(1).upstream())
        .await
        .expect("bandwidth");
    assert_eq!(list_tags_via(&proxy.listen, repo, quick).await, Ok(200));
    proxy.clear_toxics().await.expect("clear");

    // Disabled: connections refused; enabled again on the same address.
    proxy.set_enabled(false).await.expect("disable");
    assert!(!proxy.enabled().await.expect("state"));
    let err = list_tags_via(&proxy.listen, repo, quick)
        .await
        .expect_err("a disabled proxy refuses");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    proxy.set_enabled(true).await.expect("enable");
    assert_eq!(list_tags_via(&proxy.listen, repo, quick).await, Ok(200));
    proxy.delete().await.expect("delete");
}

#[tokio::test]
async fn toxiproxy_carries_an_api_server_connection() {
    let env = env();
    let cluster = &env.clusters[2];
    let proxy = env
        .toxiproxy()
        .proxy("apiserver-link", cluster.url.trim_start_matches("https://"))
        .await
        .expect("proxy");
    let kubeconfig = proxy
        .kubeconfig(&cluster.kubeconfig_yaml)
        .expect("kubeconfig");
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("parse");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    assert!(config.cluster_url.to_string().contains(&proxy.listen));
    let client = kube::Client::try_from(config).expect("client");
    let version = client.apiserver_version().await.expect("through the proxy");
    assert_eq!(version.git_version, "v1.36.3");
    proxy.set_enabled(false).await.expect("disable");
    let down = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await;
    assert!(
        matches!(down, Ok(Err(_))),
        "the API server is out of reach while the proxy is down: {down:?}"
    );
    proxy.delete().await.expect("delete");
}

#[tokio::test]
async fn http_fault_proxy_answers_429_and_503_then_forwards() {
    let env = env();
    let reg = env.plain_registry();
    reg.push_tags("testenv/limited", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let proxy = HttpFaultProxy::start(&reg.base_url())
        .await
        .expect("fault proxy");
    let http = reqwest::Client::new();
    let tags = format!("{}/v2/testenv/limited/tags/list", proxy.url);
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.expect("request") }
    };

    // Forwarded: the registry's own answer.
    let resp = get(tags.clone()).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    let mut got: Vec<String> = serde_json::from_value(body["tags"].clone()).expect("tags");
    got.sort();
    assert_eq!(got, vec!["1.0.0", "1.1.0"]);

    // Two tag listings rate-limited with Retry-After; other paths untouched; then forwarded.
    proxy.set(
        FaultPlan::new(HttpFault::too_many_requests(Some("3")))
            .times(2)
            .on_paths_containing("/tags/list"),
    );
    assert_eq!(
        get(format!("{}/v2/", proxy.url)).await.status().as_u16(),
        200
    );
    for _ in 0..2 {
        let resp = get(tags.clone()).await;
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    }
    assert_eq!(get(tags.clone()).await.status().as_u16(), 200);

    // 503 for a period, then forwarded again without anyone clearing it.
    proxy.set(
        FaultPlan::new(HttpFault::service_unavailable(None)).for_period(Duration::from_secs(1)),
    );
    assert_eq!(get(tags.clone()).await.status().as_u16(), 503);
    wait_until("the 503 period to end", Duration::from_secs(10), || {
        let fut = get(tags.clone());
        async move { Ok(fut.await.status().as_u16() == 200) }
    })
    .await
    .expect("forwarded after the period");

    // Until cleared.
    proxy.set(FaultPlan::new(HttpFault::service_unavailable(Some("1"))));
    assert_eq!(get(tags.clone()).await.status().as_u16(), 503);
    proxy.clear();
    assert_eq!(get(tags.clone()).await.status().as_u16(), 200);
    let stats = proxy.stats();
    assert!(
        stats.faulted >= 4 && stats.requests > stats.faulted,
        "{stats:?}"
    );
    assert_eq!(stats.upstream_errors, 0);
}

/// Deployments really roll out: kube-controller-manager makes the ReplicaSet, kube-scheduler
/// places its Pods on the kwok node, kwok makes them Ready; an image containing
/// `rollout::NEVER_READY` stalls the rollout until its progress deadline.
#[tokio::test]
async fn deployments_roll_out_and_a_never_ready_image_exceeds_its_deadline() {
    use k8s_openapi::api::apps::v1::Deployment;
    let env = TestEnv::builder()
        .name("rollout")
        .clusters(1)
        .rollouts()
        .start()
        .await
        .expect("environment with rollouts");
    let client = env.clusters[0].client().await.expect("client");
    let ns = env.namespace(0, "rollout").await.expect("namespace");
    let api: Api<Deployment> = Api::namespaced(client, &ns);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 5,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                // Refuses 9.9.9 only: every tag this test rolls out becomes Ready (or not) by
                // the image alone.
                "metadata": {"labels": {"app": "web"}, "annotations": {rollout::NEVER_READY_ANNOTATION: ":9\\.9\\.9$"}},
                "spec": {"containers": [{"name": "web", "image": "example.test/web:1.0.0"}]}
            }
        }
    }))
    .expect("deployment");
    api.create(&PostParams::default(), &deployment)
        .await
        .expect("create");
    let rolled_out = |image: &'static str| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move {
                let d = api.get("web").await?;
                let spec_image = d.spec.as_ref().and_then(|s| {
                    s.template
                        .spec
                        .as_ref()
                        .map(|p| p.containers[0].image.clone())
                });
                let s = d.status.unwrap_or_default();
                Ok(spec_image.flatten().as_deref() == Some(image)
                    && s.observed_generation == d.metadata.generation
                    && s.updated_replicas == Some(2)
                    && s.available_replicas == Some(2)
                    && s.replicas == Some(2))
            }
        }
    };
    if let Err(e) = wait_until(
        "web 1.0.0 rolled out (2 updated, 2 available)",
        Duration::from_secs(90),
        rolled_out("example.test/web:1.0.0"),
    )
    .await
    {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(env.clusters[0].client().await.expect("client"), &ns);
        let list = pods.list(&Default::default()).await.expect("pods");
        let seen: Vec<String> = list
            .items
            .iter()
            .map(|p| {
                format!(
                    "{} node={:?} phase={:?}",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    p.status.as_ref().and_then(|s| s.phase.clone())
                )
            })
            .collect();
        panic!(
            "{e:#}; pods: {seen:?}; deployment: {:?}",
            api.get("web").await.map(|d| d.status)
        );
    }
    let set_image = async |image: &str| {
        let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}});
        api.patch("web", &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .expect("patch");
    };
    set_image("example.test/web:1.1.0").await;
    wait_until(
        "web 1.1.0 rolled out",
        Duration::from_secs(90),
        rolled_out("example.test/web:1.1.0"),
    )
    .await
    .expect("rolled out");
    set_image("example.test/web:1.2.0-never-ready").await;
    // The current template's rollout stalled past its deadline.
    let stalled = || {
        let api = api.clone();
        async move {
            let d = api.get("web").await?;
            let st = d.status.unwrap_or_default();
            Ok(st.observed_generation == d.metadata.generation
                && st.conditions.unwrap_or_default().iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                }))
        }
    };
    wait_until(
        "web 1.2.0-never-ready reported ProgressDeadlineExceeded",
        Duration::from_secs(90),
        stalled,
    )
    .await
    .expect("stalled");
    // The old ReplicaSet's Pods keep serving: the stalled rollout never took them down to zero.
    let d = api.get("web").await.expect("get");
    let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
    assert!(
        available >= 1,
        "no Pod available during the stalled rollout"
    );
    // The annotation refuses the tag it names: back at 1.1.0, then 9.9.9, an ordinary tag,
    // stalls this Deployment until its deadline, and none of its Pods is ever Ready.
    set_image("example.test/web:1.1.0").await;
    wait_until(
        "web back at 1.1.0",
        Duration::from_secs(90),
        rolled_out("example.test/web:1.1.0"),
    )
    .await
    .expect("rolled back");
    set_image("example.test/web:9.9.9").await;
    wait_until(
        "web 9.9.9 reported ProgressDeadlineExceeded",
        Duration::from_secs(90),
        stalled,
    )
    .await
    .expect("9.9.9 stalled");
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(env.clusters[0].client().await.expect("client"), &ns);
    let list = pods.list(&Default::default()).await.expect("pods");
    let of_999: Vec<_> = list
        .items
        .iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .is_some_and(|s| s.containers[0].image.as_deref() == Some("example.test/web:9.9.9"))
        })
        .collect();
    assert!(!of_999.is_empty(), "no 9.9.9 Pod was created");
    let ready_999 = of_999
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .count();
    assert_eq!(
        ready_999, 0,
        "a 9.9.9 Pod became Ready despite the annotation"
    );
}

//! Faults against real processes: API servers killed mid-sync, etcd down, the registry down,
//! slow, resetting and silent networks (Toxiproxy), 429/503 registry answers (an HTTP fault
//! proxy), a kubeconfig replaced by garbage, one cluster added twice. Every scenario ends the same way:
//! every workload on the right tag, every status right, and at the alert receiver every alert
//! delivered exactly once (none lost, none repeated).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kimup::api::{AlertConfig, Image, SyncResult};
use kimup_testenv::httpfault::{FaultPlan, HttpFault, HttpFaultProxy};
use kimup_testenv::toxiproxy::{Proxy, Toxic};
use kimup_testenv::{HttpSink, TestEnv};
use kube::Client;
use kube::api::{Api, PostParams};

const NS: &str = "faults";
const REPO: &str = "faults/web";

/// Two clusters served by one kimup, each with an opted-in Deployment and an Image that applies
/// semver-minor tags and alerts each one to the receiver, on a 2 s crontab.
struct Fleet {
    env: TestEnv,
    sink: HttpSink,
    kubeconfigs: PathBuf,
    kimup: Option<Kimup>,
    /// The image reference Images and Deployments use (the registry, or a proxy in front of it).
    image_ref: String,
    /// kimup -> HTTP fault proxy -> Toxiproxy -> registry, with [`Proxies::Registry`].
    fault: Option<HttpFaultProxy>,
    registry_proxy: Option<Proxy>,
    /// kimup -> Toxiproxy -> cluster-1's API server, as user `kimup`, with [`Proxies::ApiServer`].
    kube_proxy: Option<Proxy>,
}

/// Where a scenario puts proxies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxies {
    None,
    Registry,
    ApiServer,
}

impl Fleet {
    async fn start(name: &str, proxies: Proxies) -> Self {
        let mut builder = TestEnv::builder()
            .name(name)
            .clusters(2)
            .registries()
            .kimup_crds();
        if proxies != Proxies::None {
            builder = builder.toxiproxy();
        }
        let env = builder.start().await.expect("test environment starts");
        let sink = HttpSink::start().await.expect("alert receiver");
        let reg = env.plain_registry();
        reg.push_tags(REPO, &["1.0.0", "1.1.0"])
            .await
            .expect("push");
        let (mut fault, mut registry_proxy) = (None, None);
        let mut host = reg.host.clone();
        if proxies == Proxies::Registry {
            let p = env
                .toxiproxy()
                .proxy("registry", &reg.host)
                .await
                .expect("registry proxy");
            let h = HttpFaultProxy::start(&format!("http://{}", p.listen))
                .await
                .expect("fault proxy");
            host = h.host.clone();
            registry_proxy = Some(p);
            fault = Some(h);
        }
        let image_ref = format!("{host}/{REPO}");
        for (i, c) in env.clusters.iter().enumerate() {
            let client = c.client().await.expect("client");
            let ns: Namespace = serde_json::from_value(serde_json::json!({
                "metadata": {"name": NS, "annotations": {"kimup.cloudavenue.io/enabled": "true"}}
            }))
            .expect("namespace");
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
                .expect("create namespace");
            create_deployment(
                &client,
                NS,
                &deployment("web", &format!("{image_ref}:1.0.0"), false),
            )
            .await;
            let ac: AlertConfig = serde_yaml::from_str(&format!(
                "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: AlertConfig\nmetadata: {{name: hook}}\nspec:\n  webhook:\n    url: {{value: \"{}/c{i}\"}}\n",
                sink.url
            ))
            .expect("alertconfig");
            Api::<AlertConfig>::namespaced(client.clone(), NS)
                .create(&PostParams::default(), &ac)
                .await
                .expect("create AlertConfig");
            create_image(
                &client,
                NS,
                &format!(
                    "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: web}}\nspec:\n  image: {image_ref}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"*/2 * * * * *\"}}]\n  rules:\n  - name: minor\n    type: semver-minor\n    actions: [{{type: apply}}, {{type: alert-webhook, data: {{valueFrom: {{alertConfigRef: {{name: hook}}}}}}}}]\n"
                ),
            )
            .await;
        }
        let kubeconfigs = env.run_dir.join("kubeconfigs");
        env.write_kubeconfigs(&kubeconfigs).expect("kubeconfigs");
        let mut kube_proxy = None;
        if proxies == Proxies::ApiServer {
            // kimup reaches cluster-1 through Toxiproxy as user `kimup` (outside system:masters,
            // as in production).
            let c = &env.clusters[1];
            let admin = c.client().await.expect("admin client");
            let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding =
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "kimup-test"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"kind": "User", "name": "kimup", "apiGroup": "rbac.authorization.k8s.io"}]
                }))
                .expect("binding");
            Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin)
                .create(&PostParams::default(), &binding)
                .await
                .expect("bind kimup");
            let p = env
                .toxiproxy()
                .proxy("kube-1", c.url.trim_start_matches("https://"))
                .await
                .expect("API server proxy");
            let yaml = c
                .kubeconfig_for("kimup", "kimup-testers")
                .expect("kubeconfig");
            write_file(
                &kubeconfigs.join("cluster-1.yaml"),
                &p.kubeconfig(&yaml).expect("proxied kubeconfig"),
            );
            kube_proxy = Some(p);
        }
        Self {
            env,
            sink,
            kubeconfigs,
            kimup: None,
            image_ref,
            fault,
            registry_proxy,
            kube_proxy,
        }
    }

    /// Starts kimup over the kubeconfig folder.
    fn start_kimup(&mut self, extra: &[String]) {
        let mut args: Vec<String> = vec![
            "--log-format=json".into(),
            "--log-level=info,kimup=debug".into(),
            "run".into(),
            format!("--kubeconfig-dir={}", self.kubeconfigs.display()),
            "--listen-addr=127.0.0.1:0".into(),
            format!("--insecure-registry={}", self.env.plain_registry().host),
            // Every sync lists the registry: a fault on the way to it is felt at once.
            "--tag-cache-ttl=0s".into(),
            "--cluster-poll-interval=500ms".into(),
        ];
        args.extend(extra.iter().cloned());
        self.kimup = Some(spawn_kimup(&self.env, "kimup-faults", &args));
    }

    fn log(&self) -> String {
        self.kimup
            .as_ref()
            .map(|k| k.log.display().to_string())
            .unwrap_or_default()
    }

    /// Waits until cluster `i` runs `tag` everywhere with a Success status.
    async fn wait_converged(&self, i: usize, tag: &str, within: Duration) -> Duration {
        let started = Instant::now();
        let deadline = started + within;
        let want = format!("{}:{tag}", self.image_ref);
        let mut last;
        loop {
            match self.state(i).await {
                Ok((status_tag, result, up, total, image)) => {
                    if status_tag.as_deref() == Some(tag)
                        && result == Some(SyncResult::Success)
                        && (up, total) == (1, 1)
                        && image == want
                    {
                        return started.elapsed();
                    }
                    last = format!(
                        "status tag {status_tag:?}, result {result:?}, workloads {up}/{total}, Deployment runs {image}"
                    );
                }
                Err(e) => last = format!("unreadable: {e:#}"),
            }
            assert!(
                Instant::now() < deadline,
                "cluster-{i} did not converge to {tag} within {within:?}: {last}; kimup log {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (status.tag, result, workloads up to date, workloads total, the Deployment's image).
    async fn state(
        &self,
        i: usize,
    ) -> anyhow::Result<(Option<String>, Option<SyncResult>, u32, u32, String)> {
        let client = short_client(&self.env.clusters[i]).await?;
        let img = Api::<Image>::namespaced(client.clone(), NS)
            .get("web")
            .await?;
        let d = Api::<Deployment>::namespaced(client, NS).get("web").await?;
        let image = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
            .unwrap_or_default();
        let s = img.status.unwrap_or_default();
        let (up, total) = s
            .workloads
            .map(|w| (w.up_to_date, w.total))
            .unwrap_or_default();
        Ok((s.tag, s.result, up, total, image))
    }

    /// Every cluster converged to `tag`, and each received exactly the alerts `alerted`, once
    /// each, in order: none lost, none repeated.
    async fn assert_final(&self, tag: &str, alerted: &[&str]) {
        for i in 0..self.env.clusters.len() {
            self.wait_converged(i, tag, Duration::from_secs(90)).await;
        }
        for i in 0..self.env.clusters.len() {
            let path = format!("/c{i}");
            // A delivery can trail the status write that records it by a sync: wait for the
            // count to reach the expected one, then check nothing more arrived.
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.sink.delivered_on(&path).len() < alerted.len() {
                assert!(
                    Instant::now() < deadline,
                    "cluster-{i}: alerts delivered {:?}, expected {alerted:?}; kimup log {}",
                    self.delivered(&path),
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                self.delivered(&path),
                alerted,
                "cluster-{i}: every alert exactly once; kimup log {}",
                self.log()
            );
        }
    }

    /// Pushes `tag` of the repository to the registry.
    async fn push(&self, tag: &str) {
        self.env
            .plain_registry()
            .push_tags(REPO, &[tag])
            .await
            .expect("push");
    }

    /// Expects the fleet to converge to `tag` with its alert delivered once more, and prints how
    /// long that took from `since` as the recovery time of fault `label`.
    async fn recovers(
        &self,
        label: &str,
        from: &str,
        tag: &'static str,
        alerted: &mut Vec<&'static str>,
        since: Instant,
    ) {
        alerted.push(tag);
        self.assert_final(tag, alerted).await;
        println!(
            "fault {label}: converged {:.2} s after {from}",
            since.elapsed().as_secs_f64()
        );
    }

    fn delivered(&self, path: &str) -> Vec<String> {
        self.sink
            .delivered_on(path)
            .iter()
            .map(|r| r.body["newTag"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// Tag listings the registry has answered for the repository so far.
    fn listings(&self) -> usize {
        self.env
            .plain_registry()
            .tag_list_requests_for(REPO)
            .expect("registry log")
    }

    /// Waits until kimup has asked the registry `n` more times (syncs ran).
    async fn wait_listings(&self, from: usize, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.listings() < from + n {
            assert!(
                Instant::now() < deadline,
                "{what}: kimup listed the registry {} times in 60 s, expected {n}; log {}",
                self.listings() - from,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A client that gives up after 2 s: the test reads through faults too.
async fn short_client(c: &kimup_testenv::Cluster) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::from_yaml(&c.kubeconfig_yaml)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(2));
    Ok(Client::try_from(config)?)
}

fn write_file(path: &Path, content: &str) {
    // Write then rename, as a Secret volume update does: kimup never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn a_member_api_server_killed_mid_sync_then_restarted() {
    let mut f = Fleet::start("fault-apiserver", Proxies::None).await;
    f.start_kimup(&[]);
    f.assert_final("1.1.0", &["1.1.0"]).await;
    let before = f.listings();
    f.push("1.2.0").await;
    // Killed as kimup starts the syncs that pick 1.2.0 up.
    f.wait_listings(before, 1, "sync after the push").await;
    f.env.clusters[1].kill();
    let killed = Instant::now();
    // The other cluster is not stalled by the dead one.
    f.wait_converged(0, "1.2.0", Duration::from_secs(60)).await;
    f.env.clusters[1].restart().await.expect("restart");
    let back = Instant::now();
    let recovered = f.wait_converged(1, "1.2.0", Duration::from_secs(90)).await;
    println!(
        "fault api-server-killed: down {:.1} s, converged {:.2} s after restart",
        (back - killed).as_secs_f64(),
        recovered.as_secs_f64()
    );
    f.assert_final("1.2.0", &["1.1.0", "1.2.0"]).await;
}

#[tokio::test]
async fn etcd_stopped_then_restarted() {
    let mut f = Fleet::start("fault-etcd", Proxies::None).await;
    f.start_kimup(&[]);
    f.assert_final("1.1.0", &["1.1.0"]).await;
    let etcd = f.env.etcd.as_mut().expect("etcd");
    etcd.kill();
    let killed = Instant::now();
    let before = f.listings();
    f.push("1.2.0").await;
    // kimup syncs during the outage: it lists the registry, picks 1.2.0, may alert, and cannot
    // write the workload or the status. What it learned must survive until etcd is back.
    f.wait_listings(before, 2, "syncs during the etcd outage")
        .await;
    f.env
        .etcd
        .as_mut()
        .expect("etcd")
        .restart()
        .await
        .expect("restart etcd");
    let back = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..2 {
        slowest = slowest.max(f.wait_converged(i, "1.2.0", Duration::from_secs(120)).await);
    }
    println!(
        "fault etcd-down: down {:.1} s, converged {:.2} s after restart",
        (back - killed).as_secs_f64(),
        slowest.as_secs_f64()
    );
    f.assert_final("1.2.0", &["1.1.0", "1.2.0"]).await;
}

#[tokio::test]
async fn the_registry_down_then_back() {
    let mut f = Fleet::start("fault-registry", Proxies::None).await;
    f.start_kimup(&[]);
    f.assert_final("1.1.0", &["1.1.0"]).await;
    f.env.registries[0].kill();
    let killed = Instant::now();
    // Both Images report the outage; their workloads stay on their tag, nothing is pushed.
    for i in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((tag, result, up, total, image)) = f.state(i).await
                && result == Some(SyncResult::RegistryError)
            {
                assert_eq!(tag.as_deref(), Some("1.1.0"), "status.tag kept");
                assert_eq!((up, total), (1, 1), "workloads still at the tag");
                assert_eq!(image, format!("{}:1.1.0", f.image_ref));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster-{i}: no RegistryError within 60 s of the registry going down"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    f.env.registries[0]
        .restart()
        .await
        .expect("restart registry");
    let back = Instant::now();
    f.push("1.2.0").await;
    let mut slowest = Duration::ZERO;
    for i in 0..2 {
        slowest = slowest.max(f.wait_converged(i, "1.2.0", Duration::from_secs(90)).await);
    }
    println!(
        "fault registry-down: down {:.1} s, converged {:.2} s after it came back",
        (back - killed).as_secs_f64(),
        slowest.as_secs_f64()
    );
    f.assert_final("1.2.0", &["1.1.0", "1.2.0"]).await;
}

#[tokio::test]
async fn a_kubeconfig_replaced_by_garbage_then_fixed() {
    let mut f = Fleet::start("fault-kubeconfig", Proxies::None).await;
    f.start_kimup(&[]);
    f.assert_final("1.1.0", &["1.1.0"]).await;
    let file = f.kubeconfigs.join("cluster-1.yaml");
    let good = std::fs::read_to_string(&file).expect("kubeconfig");
    write_file(
        &file,
        "apiVersion: v1\nkind: Config\nclusters: [{{{ not yaml",
    );
    let broken = Instant::now();
    f.push("1.2.0").await;
    // The healthy cluster goes on.
    f.wait_converged(0, "1.2.0", Duration::from_secs(60)).await;
    write_file(&file, &good);
    let fixed = Instant::now();
    let recovered = f.wait_converged(1, "1.2.0", Duration::from_secs(60)).await;
    println!(
        "fault kubeconfig-garbage: broken {:.1} s, converged {:.2} s after the fix",
        (fixed - broken).as_secs_f64(),
        recovered.as_secs_f64()
    );
    f.assert_final("1.2.0", &["1.1.0", "1.2.0"]).await;
}

#[tokio::test]
async fn one_cluster_added_twice_is_served_once() {
    let mut f = Fleet::start("fault-duplicate", Proxies::None).await;
    // A copy of cluster-0's kubeconfig under another name: two members, one cluster.
    let original = f.kubeconfigs.join("cluster-0.yaml");
    let copy = f.kubeconfigs.join("cluster-0-again.yaml");
    std::fs::copy(&original, &copy).expect("copy kubeconfig");
    f.start_kimup(&[]);
    let mut alerted = vec!["1.1.0"];
    f.assert_final("1.1.0", &alerted).await;
    for tag in ["1.2.0", "1.3.0"] {
        f.push(tag).await;
        alerted.push(tag);
        // Two controllers on cluster-0 would each alert: exactly once rules that out.
        f.assert_final(tag, &alerted).await;
    }
    let log = std::fs::read_to_string(f.log()).unwrap_or_default();
    assert!(
        log.contains("cluster-0-again.yaml") && log.contains("cluster-0.yaml"),
        "the duplicate is reported naming both files; log {}",
        f.log()
    );
}

/// Waits until `check` holds, at most `within`, naming `what` on time-out.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn registry_latency_resets_429_and_503() {
    let mut f = Fleet::start("fault-registry-net", Proxies::Registry).await;
    let fault = f.fault.take().expect("fault proxy");
    let proxy = f.registry_proxy.clone().expect("toxiproxy");
    f.start_kimup(&[format!("--insecure-registry={}", fault.host)]);
    let mut alerted = vec!["1.1.0"];
    f.assert_final("1.1.0", &alerted).await;

    // Slow: 1.5 s each way on every registry connection.
    proxy
        .add_toxic(&Toxic::latency(Duration::from_millis(1500)))
        .await
        .expect("latency");
    f.push("1.2.0").await;
    f.recovers(
        "registry-slow",
        "the push",
        "1.2.0",
        &mut alerted,
        Instant::now(),
    )
    .await;
    proxy.clear_toxics().await.expect("clear");

    // Reset connections: every sync fails with RegistryError, workloads stay on their tag.
    proxy
        .add_toxic(&Toxic::reset_peer(Duration::ZERO))
        .await
        .expect("reset");
    f.push("1.3.0").await;
    for i in 0..2 {
        wait_for(
            &format!("cluster-{i} RegistryError while resetting"),
            Duration::from_secs(60),
            || async {
                matches!(f.state(i).await, Ok((Some(t), Some(SyncResult::RegistryError), 1, 1, _)) if t == "1.2.0")
            },
        )
        .await;
    }
    proxy.clear_toxics().await.expect("clear");
    let stopped = Instant::now();
    f.recovers(
        "registry-reset",
        "the resets stopped",
        "1.3.0",
        &mut alerted,
        stopped,
    )
    .await;

    // Throttled: 429 with Retry-After on tag listings, then 503 for 4 s.
    fault.set(
        FaultPlan::new(HttpFault::too_many_requests(Some("1")))
            .times(4)
            .on_paths_containing("/tags/list"),
    );
    f.push("1.4.0").await;
    f.recovers(
        "registry-429",
        "the push",
        "1.4.0",
        &mut alerted,
        Instant::now(),
    )
    .await;
    println!("  ({} registry answers faulted)", fault.stats().faulted);
    fault.set(
        FaultPlan::new(HttpFault::service_unavailable(None)).for_period(Duration::from_secs(4)),
    );
    f.push("1.5.0").await;
    let pushed = Instant::now();
    f.recovers(
        "registry-503",
        "the push (503 for 4 s)",
        "1.5.0",
        &mut alerted,
        pushed,
    )
    .await;
    assert!(
        fault.stats().faulted >= 4,
        "faults were served: {:?}",
        fault.stats()
    );
}

#[tokio::test]
async fn api_server_latency_resets_and_silence() {
    let mut f = Fleet::start("fault-apiserver-net", Proxies::ApiServer).await;
    let proxy = f.kube_proxy.clone().expect("toxiproxy");
    f.start_kimup(&[]);
    let mut alerted = vec!["1.1.0"];
    f.assert_final("1.1.0", &alerted).await;

    // Slow: 1 s each way between kimup and cluster-1.
    proxy
        .add_toxic(&Toxic::latency(Duration::from_secs(1)))
        .await
        .expect("latency");
    f.push("1.2.0").await;
    f.recovers(
        "apiserver-slow",
        "the push",
        "1.2.0",
        &mut alerted,
        Instant::now(),
    )
    .await;
    proxy.clear_toxics().await.expect("clear");

    // Reset connections, then silence (connections accepted, nothing answered): cluster-0 goes on.
    for (label, toxic, tag) in [
        ("reset", Toxic::reset_peer(Duration::ZERO), "1.3.0"),
        ("silent", Toxic::timeout(Duration::ZERO), "1.4.0"),
    ] {
        proxy.add_toxic(&toxic).await.expect("toxic");
        f.push(tag).await;
        f.wait_converged(0, tag, Duration::from_secs(60)).await;
        proxy.clear_toxics().await.expect("clear");
        let ended = Instant::now();
        f.recovers(
            &format!("apiserver-{label}"),
            "the fault ended",
            tag,
            &mut alerted,
            ended,
        )
        .await;
    }
}

/// Makes the API server refuse (or accept again) every write of Image statuses, with a
/// ValidatingAdmissionPolicy: reads, workload patches and events still work.
async fn refuse_status_writes(admin: &Client, on: bool) {
    use kube::api::{DeleteParams, DynamicObject, GroupVersionKind};
    use kube::discovery::ApiResource;
    let gvk = |kind: &str| GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let policies = Api::<DynamicObject>::all_with(
        admin.clone(),
        &ApiResource::from_gvk_with_plural(
            &gvk("ValidatingAdmissionPolicy"),
            "validatingadmissionpolicies",
        ),
    );
    let bindings = Api::<DynamicObject>::all_with(
        admin.clone(),
        &ApiResource::from_gvk_with_plural(
            &gvk("ValidatingAdmissionPolicyBinding"),
            "validatingadmissionpolicybindings",
        ),
    );
    if !on {
        bindings
            .delete("refuse-image-status", &DeleteParams::default())
            .await
            .expect("delete binding");
        return;
    }
    let policy: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "refuse-image-status"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["kimup.cloudavenue.io"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["images/status"]
            }]},
            "validations": [{"expression": "false", "message": "status writes refused by the fault test"}]
        }
    }))
    .expect("policy");
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");
    let binding: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "refuse-image-status"},
        "spec": {"policyName": "refuse-image-status", "validationActions": ["Deny"]}
    }))
    .expect("binding");
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create binding");
}

/// Whether a status write of the Image `web` is refused now (a probe write by the admin).
async fn status_refused(admin: &Client) -> bool {
    let patch = serde_json::json!({"status": {"message": "probe"}});
    matches!(
        Api::<Image>::namespaced(admin.clone(), NS)
            .patch_status(
                "web",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await,
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 403
    )
}

#[tokio::test]
async fn status_writes_refused_lose_nothing_and_repeat_no_alert() {
    let mut f = Fleet::start("fault-status-write", Proxies::None).await;
    f.start_kimup(&[]);
    let mut alerted = vec!["1.1.0"];
    f.assert_final("1.1.0", &alerted).await;
    let mut admins = Vec::new();
    for c in &f.env.clusters {
        let admin = c.client().await.expect("admin");
        refuse_status_writes(&admin, true).await;
        admins.push(admin);
    }
    for (i, admin) in admins.iter().enumerate() {
        wait_for(
            &format!("cluster-{i} refuses status writes"),
            Duration::from_secs(30),
            || status_refused(admin),
        )
        .await;
    }
    let refused = Instant::now();
    let before = f.listings();
    f.push("1.2.0").await;
    // The sync picks 1.2.0, patches the workload and delivers the alert; only its status write
    // fails. Later syncs start from what it learned: they must not alert again.
    for i in 0..2 {
        let path = format!("/c{i}");
        wait_for(
            &format!("cluster-{i}: the 1.2.0 alert delivered while statuses are refused"),
            Duration::from_secs(60),
            || {
                let n = f.delivered(&path).iter().filter(|t| *t == "1.2.0").count();
                async move { n >= 1 }
            },
        )
        .await;
    }
    f.wait_listings(before, 6, "syncs while statuses are refused")
        .await;
    let log = std::fs::read_to_string(f.log()).unwrap_or_default();
    assert!(
        log.contains("reconcile failed; retrying") && log.contains("status_write"),
        "the failed status write is retried with backoff; log {}",
        f.log()
    );
    for admin in &admins {
        refuse_status_writes(admin, false).await;
    }
    let allowed = Instant::now();
    alerted.push("1.2.0");
    f.assert_final("1.2.0", &alerted).await;
    println!(
        "fault status-write-refused: refused {:.1} s, converged {:.2} s after writes were allowed",
        (allowed - refused).as_secs_f64(),
        allowed.elapsed().as_secs_f64()
    );
}

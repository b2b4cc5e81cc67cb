//! The cluster set changes at runtime: a kubeconfig added is served within seconds, a removed
//! one stops, a corrupted one is reported while the others carry on, and an API server that is
//! killed and restarted recovers without disturbing the others. Two kubeconfigs reaching one
//! cluster serve it once. `/readyz` tells whether kimup can serve, never whether a member
//! cluster is up: that is `/clusters`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kimup::server::ClusterReport;
use kimup_testenv::TestEnv;
use kimup_testenv::process::{free_port, wait_until};
use kimup_testenv::toxiproxy::Toxic;

fn image_yaml(image: &str) -> String {
    format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: web}}\nspec:\n  image: {image}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"*/2 * * * * *\"}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n"
    )
}

async fn readyz(port: u16) -> (u16, String) {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// `/clusters`, by name.
async fn clusters(port: u16) -> anyhow::Result<std::collections::BTreeMap<String, ClusterReport>> {
    let list: Vec<ClusterReport> = reqwest::get(format!("http://127.0.0.1:{port}/clusters"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(list.into_iter().map(|c| (c.name.clone(), c)).collect())
}

/// Waits until `/clusters` satisfies `pred`, returning it; fails naming `what` and the last answer.
async fn wait_clusters(
    port: u16,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&std::collections::BTreeMap<String, ClusterReport>) -> bool,
) -> std::collections::BTreeMap<String, ClusterReport> {
    let last = std::sync::Mutex::new(None);
    let pred = &pred;
    let result = wait_until(what, timeout, || {
        let last = &last;
        async move {
            let c = clusters(port).await?;
            let ok = pred(&c);
            if let Ok(mut l) = last.lock() {
                *l = Some(c);
            }
            Ok(ok)
        }
    })
    .await;
    let last = last.lock().ok().and_then(|mut l| l.take());
    match (result, last) {
        (Ok(()), Some(c)) => c,
        (r, last) => panic!("{r:?}; last /clusters: {last:#?}"),
    }
}

async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default()
}

async fn tag_of(env: &TestEnv, i: usize, ns: &str) -> Option<String> {
    let client = env.clusters[i].client().await.ok()?;
    let api: kube::Api<kimup::api::Image> = kube::Api::namespaced(client, ns);
    api.get("web").await.ok()?.status?.tag
}

#[tokio::test]
async fn clusters_come_and_go_at_runtime() {
    let mut env = TestEnv::builder()
        .name("cluster-set")
        .clusters(3)
        .registries()
        .kimup_crds()
        .start()
        .await
        .expect("env");
    let ns = env.namespace_everywhere("set").await.expect("namespaces");
    let reg = env.plain_registry();
    reg.push_tags("set/web", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let image = format!("{}/set/web", reg.host);
    for c in &env.clusters {
        create_image(&c.client().await.expect("client"), &ns, &image_yaml(&image)).await;
    }
    let dir = env.run_dir.join("kubeconfigs");
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |i: usize, dir: &Path, env: &TestEnv| {
        std::fs::write(
            dir.join(format!("{}.yaml", env.clusters[i].name)),
            &env.clusters[i].kubeconfig_yaml,
        )
        .expect("write");
    };
    write(0, &dir, &env);
    let port = free_port().expect("port");
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--watch-namespace={ns}"),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--insecure-registry={}", reg.host),
        "--cluster-poll-interval=1s".into(),
        "--tag-cache-ttl=0s".into(),
    ];
    let kimup = spawn_kimup(&env, "kimup-set", &args);
    let c0 = env.clusters[0].client().await.expect("client");
    wait_status(&c0, &ns, "web", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;
    assert_eq!(
        tag_of(&env, 1, &ns).await,
        None,
        "cluster-1 is not a member yet"
    );

    // Added at runtime: served within seconds.
    write(1, &dir, &env);
    write(2, &dir, &env);
    let c1 = env.clusters[1].client().await.expect("client");
    let c2 = env.clusters[2].client().await.expect("client");
    wait_status(&c1, &ns, "web", Duration::from_secs(20), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;
    wait_status(&c2, &ns, "web", Duration::from_secs(20), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;

    // A kubeconfig that would run code is refused (reported, not started).
    let mut exec: serde_yaml::Value =
        serde_yaml::from_str(&env.clusters[1].kubeconfig_yaml).expect("yaml");
    let marker = env.run_dir.join("exec-plugin-ran");
    exec["users"][0]["user"] = serde_yaml::from_str(&format!(
        "exec: {{apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: [-c, 'touch {}']}}",
        marker.display()
    ))
    .expect("exec user");
    std::fs::write(
        dir.join("runs-code.yaml"),
        serde_yaml::to_string(&exec).expect("yaml"),
    )
    .expect("write");

    // A corrupted kubeconfig: a clear error in /clusters and the log, the others carry on, and
    // kimup stays ready: one bad member must not take a replica out of its Service.
    std::fs::write(
        dir.join("broken.yaml"),
        "clusters: [this is not: a kubeconfig",
    )
    .expect("write");
    let c = wait_clusters(
        port,
        "broken kubeconfig reported",
        Duration::from_secs(20),
        |c| c.contains_key("broken") && c.contains_key("runs-code"),
    )
    .await;
    let broken = &c["broken"];
    assert!(!broken.up, "{broken:?}");
    let reason = broken.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("invalid kubeconfig"), "{reason}");
    assert!(broken.source.ends_with("broken.yaml"), "{broken:?}");
    assert!(broken.identity.is_none());
    assert!(c["cluster-0"].up, "{c:?}");
    assert!(c["cluster-0"].identity.is_some(), "{c:?}");
    assert_eq!(c["cluster-0"].images, 1, "{c:?}");
    let refused = c["runs-code"].reason.as_deref().unwrap_or_default();
    assert!(
        refused.contains("refused: user") && refused.contains("--allow-exec-auth"),
        "{refused}"
    );
    assert!(!marker.exists(), "the exec plugin was run");
    let (code, text) = readyz(port).await;
    assert_eq!(code, 200, "{text}");
    assert!(
        kimup.log_text().contains("cluster configuration refused"),
        "the log says why"
    );
    assert!(
        metrics(port)
            .await
            .contains("kimup_cluster_up{cluster=\"broken\"} 0"),
        "metric"
    );
    reg.push_tags("set/web", &["1.2.0"]).await.expect("push");
    for c in [&c0, &c1, &c2] {
        wait_status(c, &ns, "web", Duration::from_secs(30), &kimup, |s| {
            s.tag.as_deref() == Some("1.2.0")
        })
        .await;
    }

    // Removed: no longer served.
    std::fs::remove_file(dir.join("cluster-1.yaml")).expect("remove");
    std::fs::remove_file(dir.join("broken.yaml")).expect("remove");
    std::fs::remove_file(dir.join("runs-code.yaml")).expect("remove");
    tokio::time::sleep(Duration::from_secs(3)).await;
    reg.push_tags("set/web", &["1.3.0"]).await.expect("push");
    wait_status(&c0, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.3.0")
    })
    .await;
    wait_status(&c2, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.3.0")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        tag_of(&env, 1, &ns).await.as_deref(),
        Some("1.2.0"),
        "removed cluster is not synced"
    );
    let (code, text) = readyz(port).await;
    assert_eq!(code, 200, "{text}");
    let c = clusters(port).await.expect("/clusters");
    assert_eq!(
        c.keys().collect::<Vec<_>>(),
        vec!["cluster-0", "cluster-2"],
        "removed members leave /clusters"
    );

    // An API server killed: the others keep syncing, kimup stays ready; restarted: it recovers.
    env.clusters[0].kill();
    env.plain_registry()
        .push_tags("set/web", &["1.4.0"])
        .await
        .expect("push");
    wait_status(&c2, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.4.0")
    })
    .await;
    wait_clusters(port, "cluster-0 down", Duration::from_secs(60), |c| {
        c.get("cluster-0").is_some_and(|c| !c.up)
    })
    .await;
    assert_eq!(
        readyz(port).await.0,
        200,
        "a member down is not a replica down"
    );
    env.clusters[0].restart().await.expect("restart");
    let c0 = env.clusters[0].client().await.expect("client");
    wait_status(&c0, &ns, "web", Duration::from_secs(90), &kimup, |s| {
        s.tag.as_deref() == Some("1.4.0")
    })
    .await;
    assert!(!kimup.log_text().contains("panicked"));
}

/// A cluster without the Image CRD is reported down with the reason and retried; once the CRD
/// is installed, it comes up without a restart.
#[tokio::test]
async fn a_cluster_without_the_crd_is_down_until_it_gets_one() {
    let env = TestEnv::builder()
        .name("no-crd")
        .clusters(1)
        .start()
        .await
        .expect("env");
    let dir = env.run_dir.join("kubeconfigs");
    env.write_kubeconfigs(&dir).expect("kubeconfigs");
    let port = free_port().expect("port");
    let args: Vec<String> = vec![
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--listen-addr=127.0.0.1:{port}"),
    ];
    let _kimup = spawn_kimup(&env, "kimup-no-crd", &args);
    let c = wait_clusters(port, "missing CRD reported", Duration::from_secs(20), |c| {
        c.get("cluster-0")
            .is_some_and(|c| c.reason.as_deref().is_some_and(|r| r.contains("CRD")))
    })
    .await;
    let c0 = &c["cluster-0"];
    assert!(!c0.up);
    assert_eq!(
        c0.reason.as_deref(),
        Some("the Image CRD (images.kimup.cloudavenue.io) is not installed")
    );
    let (code, text) = readyz(port).await;
    assert_eq!(
        code, 200,
        "kimup can serve even though its only cluster cannot: {text}"
    );
    let crds =
        kimup_testenv::load_crds(&kimup_testenv::binaries::repo_root().join("crds")).expect("crds");
    env.clusters[0].install_crds(&crds).await.expect("install");
    let c = wait_clusters(port, "cluster-0 up", Duration::from_secs(30), |c| {
        c.get("cluster-0").is_some_and(|c| c.up)
    })
    .await;
    assert!(c["cluster-0"].reason.is_none());
    assert!(
        chrono::DateTime::parse_from_rfc3339(&c["cluster-0"].since).is_ok(),
        "{:?}",
        c["cluster-0"]
    );
}

/// Two kubeconfig files reaching one cluster (same kube-system UID): the first by name serves it,
/// the other is reported as a duplicate naming both files and serves nothing; removing the first
/// hands the cluster to the other. Before any file exists, kimup is ready and warns.
#[tokio::test]
async fn a_copied_kubeconfig_serves_its_cluster_once() {
    let env = TestEnv::builder()
        .name("duplicate")
        .clusters(1)
        .registries()
        .kimup_crds()
        .start()
        .await
        .expect("env");
    let ns = env.namespace(0, "dup").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("dup/web", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let client = env.clusters[0].client().await.expect("client");
    create_image(&client, &ns, &image_yaml(&format!("{}/dup/web", reg.host))).await;
    let dir = env.run_dir.join("kubeconfigs");
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port().expect("port");
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--watch-namespace={ns}"),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--insecure-registry={}", reg.host),
        "--cluster-poll-interval=500ms".into(),
        "--tag-cache-ttl=0s".into(),
    ];
    let kimup = spawn_kimup(&env, "kimup-duplicate", &args);

    // No member yet: ready, an empty list, and a warning in the log.
    wait_until(
        "kimup ready with no member",
        Duration::from_secs(20),
        || async {
            Ok(reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
                .await?
                .status()
                .is_success())
        },
    )
    .await
    .expect("ready");
    assert!(clusters(port).await.expect("/clusters").is_empty());
    wait_until("the no-member warning", Duration::from_secs(10), || {
        let log = kimup.log_text();
        async move { Ok(log.contains("no member cluster")) }
    })
    .await
    .expect("warning logged");
    // And a series to alert on (the chart's KimupNoMemberCluster).
    let exposition = metrics(port).await;
    assert!(
        exposition.lines().any(|l| l == "kimup_member_clusters 0"),
        "no `kimup_member_clusters 0` in /metrics:\n{exposition}"
    );

    // The original and a copy under a name that sorts after it (whether one scan or two see
    // them, the copy never serves).
    let original = dir.join("cluster-0.yaml");
    let copy = dir.join("cluster-0-copy.yaml");
    std::fs::write(&original, &env.clusters[0].kubeconfig_yaml).expect("write");
    std::fs::write(&copy, &env.clusters[0].kubeconfig_yaml).expect("write");
    wait_status(&client, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;
    let c = wait_clusters(
        port,
        "copy reported as duplicate",
        Duration::from_secs(20),
        |c| {
            c.get("cluster-0").is_some_and(|c| c.up)
                && c.get("cluster-0-copy")
                    .is_some_and(|c| c.reason.as_deref().is_some_and(|r| r.contains("duplicate")))
        },
    )
    .await;
    let (first, dup) = (&c["cluster-0"], &c["cluster-0-copy"]);
    assert!(!dup.up);
    assert_eq!(dup.identity, first.identity, "same kube-system UID");
    let reason = dup.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("duplicate of cluster cluster-0")
            && reason.contains(&original.display().to_string())
            && reason.contains(&copy.display().to_string()),
        "{reason}"
    );
    assert_eq!(dup.images, 0, "the duplicate watches nothing");
    assert_eq!(first.images, 1);
    let m = metrics(port).await;
    assert!(
        m.contains("kimup_cluster_up{cluster=\"cluster-0-copy\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("kimup_cluster_up{cluster=\"cluster-0\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("kimup_image_syncs_total{cluster=\"cluster-0-copy\""),
        "the duplicate synced: {m}"
    );
    assert!(kimup.log_text().contains("duplicate of cluster cluster-0"));
    assert_eq!(readyz(port).await.0, 200);

    // The original removed: the copy takes over and syncs the next push.
    std::fs::remove_file(&original).expect("remove");
    let c = wait_clusters(port, "the copy takes over", Duration::from_secs(20), |c| {
        !c.contains_key("cluster-0") && c.get("cluster-0-copy").is_some_and(|c| c.up)
    })
    .await;
    assert_eq!(c["cluster-0-copy"].identity, first.identity);
    reg.push_tags("dup/web", &["1.2.0"]).await.expect("push");
    wait_status(&client, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.2.0")
    })
    .await;
    assert!(
        metrics(port)
            .await
            .contains("kimup_image_syncs_total{cluster=\"cluster-0-copy\""),
        "the copy now syncs"
    );

    // The original back: first in name order, it takes the cluster over once the copy stopped.
    std::fs::write(&original, &env.clusters[0].kubeconfig_yaml).expect("write");
    wait_clusters(
        port,
        "the original takes over",
        Duration::from_secs(60),
        |c| {
            c.get("cluster-0").is_some_and(|c| c.up)
                && c.get("cluster-0-copy").is_some_and(|c| {
                    !c.up && c.reason.as_deref().is_some_and(|r| r.contains("duplicate"))
                })
        },
    )
    .await;
    reg.push_tags("dup/web", &["1.3.0"]).await.expect("push");
    wait_status(&client, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.3.0")
    })
    .await;
    assert!(!kimup.log_text().contains("did not stop in time"));
}

/// Requests to an API server that stops answering time out (--kube-request-timeout) instead of
/// hanging the sync; once the link heals, syncing resumes.
#[tokio::test]
async fn a_silent_api_server_times_requests_out() {
    let env = TestEnv::builder()
        .name("kube-timeouts")
        .clusters(1)
        .registries()
        .kimup_crds()
        .toxiproxy()
        .start()
        .await
        .expect("env");
    let ns = env.namespace(0, "silent").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("silent/web", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let client = env.clusters[0].client().await.expect("client");
    create_image(
        &client,
        &ns,
        &image_yaml(&format!("{}/silent/web", reg.host)),
    )
    .await;
    let proxy = env
        .toxiproxy()
        .proxy("kube", env.clusters[0].url.trim_start_matches("https://"))
        .await
        .expect("proxy");
    let dir = env.run_dir.join("kubeconfigs");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("proxied.yaml"),
        proxy
            .kubeconfig(&env.clusters[0].kubeconfig_yaml)
            .expect("kubeconfig"),
    )
    .expect("write");
    let port = free_port().expect("port");
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--watch-namespace={ns}"),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--insecure-registry={}", reg.host),
        "--tag-cache-ttl=0s".into(),
        "--kube-request-timeout=2s".into(),
        // Longer than the wait below: a failure within it can only come from the read timeout.
        "--kube-connect-timeout=60s".into(),
    ];
    let kimup = spawn_kimup(&env, "kimup-silent", &args);
    wait_status(&client, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;

    // The API server goes silent (data held both ways, connections kept open): the crontab
    // trigger's syncs fail on their timeouts rather than wait for ever.
    let before = kimup.log_text().len();
    proxy
        .add_toxic(&Toxic::timeout(Duration::ZERO))
        .await
        .expect("timeout toxic");
    proxy
        .add_toxic(&Toxic::timeout(Duration::ZERO).upstream())
        .await
        .expect("timeout toxic");
    reg.push_tags("silent/web", &["1.2.0"]).await.expect("push");
    wait_until("a request timing out", Duration::from_secs(30), || {
        let log = kimup.log_text();
        async move {
            // Without a read timeout nothing would fail: the requests would wait for ever.
            Ok(log.get(before..).is_some_and(|l| {
                l.lines().any(|l| {
                    l.contains("sync step failed")
                        || l.contains("write failed")
                        || l.contains("reconcile failed")
                })
            }))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; kimup log: {}", kimup.log.display()));

    // Healed: the sync that was held goes through.
    proxy.clear_toxics().await.expect("clear");
    wait_status(&client, &ns, "web", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.2.0")
    })
    .await;
}

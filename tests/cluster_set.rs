//! The cluster set changes at runtime: a kubeconfig added is served within seconds, a removed
//! one stops, a corrupted one is reported while the others carry on, and an API server that is
//! killed and restarted recovers without disturbing the others.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kimup_testenv::TestEnv;
use kimup_testenv::process::free_port;

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

    // A corrupted kubeconfig: a clear error in /readyz and the log, the others carry on.
    std::fs::write(
        dir.join("broken.yaml"),
        "clusters: [this is not: a kubeconfig",
    )
    .expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = readyz(port).await;
        if text.contains("cluster broken down") {
            assert_eq!(code, 503, "{text}");
            assert!(text.contains("invalid kubeconfig"), "{text}");
            assert!(text.contains("[+]cluster cluster-0 ok"), "{text}");
            assert!(
                text.contains("[-]cluster runs-code down: refused: user")
                    && text.contains("--allow-exec-auth"),
                "{text}"
            );
            assert!(!marker.exists(), "the exec plugin was run");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broken kubeconfig not reported: {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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
    assert!(
        !text.contains("cluster-1") && !text.contains("broken"),
        "{text}"
    );

    // An API server killed: the others keep syncing; restarted: it recovers.
    env.clusters[0].kill();
    env.plain_registry()
        .push_tags("set/web", &["1.4.0"])
        .await
        .expect("push");
    wait_status(&c2, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.4.0")
    })
    .await;
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            let (code, text) = (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            );
            if text.contains("cluster-0 down") {
                assert_eq!(code, 503);
                assert!(
                    text.contains("the Image CRD (images.kimup.cloudavenue.io) is not installed"),
                    "{text}"
                );
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing CRD not reported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let crds =
        kimup_testenv::load_crds(&kimup_testenv::binaries::repo_root().join("crds")).expect("crds");
    env.clusters[0].install_crds(&crds).await.expect("install");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, text) = readyz(port).await;
        if code == 200 {
            assert!(text.contains("[+]cluster cluster-0 ok"), "{text}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster did not come up: {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

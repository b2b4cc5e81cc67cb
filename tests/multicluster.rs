//! One kimup, three clusters, one tag cache: every cluster's Images and workloads are updated,
//! and the registry sees one tag listing per (repository, credential) however many Images ask.

mod common;

use std::time::Duration;

use common::*;
use kimup::api::{Image, SyncResult};
use kimup_testenv::TestEnv;
use kube::api::{Api, ListParams, PostParams};

fn env() -> &'static TestEnv {
    kimup_testenv::shared(|| {
        TestEnv::builder()
            .name("multicluster")
            .clusters(3)
            .registries()
            .kimup_crds()
    })
    .expect("test environment starts")
}

/// kimup over every cluster of `env` through a kubeconfig folder, serving `namespace` only, or
/// every namespace when `all_namespaces`.
fn start_multi(env: &TestEnv, namespace: &str, all_namespaces: bool, extra: &[&str]) -> Kimup {
    let dir = env.run_dir.join(format!("kubeconfigs-{namespace}"));
    env.write_kubeconfigs(&dir).expect("kubeconfigs");
    let ca = env.run_dir.join("tls-ca.pem");
    std::fs::write(&ca, env.tls_registry().ca_pem.as_deref().unwrap_or("")).expect("ca");
    let mut args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        "--listen-addr=127.0.0.1:0".into(),
        format!("--insecure-registry={}", env.plain_registry().host),
        format!("--registry-ca-file={}", ca.display()),
    ];
    if !all_namespaces {
        args.push(format!("--watch-namespace={namespace}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn_kimup(env, &format!("kimup-{namespace}"), &args)
}

fn image_yaml(name: &str, image: &str, secret: Option<&str>) -> String {
    let secrets = secret
        .map(|s| format!("\n  imagePullSecrets: [{{name: {s}}}]"))
        .unwrap_or_default();
    format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n  baseTag: 1.0.0{secrets}\n  triggers: [{{type: crontab, value: \"*/3 * * * * *\"}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n"
    )
}

#[tokio::test]
async fn the_same_images_in_three_clusters_are_all_updated() {
    let env = env();
    let ns = env.namespace_everywhere("same").await.expect("namespaces");
    let reg = env.plain_registry();
    reg.push_tags("multi/web", &["1.0.0", "1.3.0"])
        .await
        .expect("push");
    let image = format!("{}/multi/web", reg.host);
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        create_deployment(
            &client,
            &ns,
            &deployment("web", &format!("{image}:1.0.0"), true),
        )
        .await;
        create_image(&client, &ns, &image_yaml("web", &image, None)).await;
    }
    let kimup = start_multi(env, &ns, false, &[]);
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        let s = wait_status(&client, &ns, "web", Duration::from_secs(60), &kimup, |s| {
            s.tag.as_deref() == Some("1.3.0")
        })
        .await;
        assert_eq!(
            s.result,
            Some(SyncResult::Success),
            "{}: {:?}",
            c.name,
            s.message
        );
        let (containers, _) = deployment_images(&client, &ns, "web").await;
        assert_eq!(containers[0], format!("{image}:1.3.0"), "{}", c.name);
    }
    // Cluster names are in the logs of each sync.
    let log = kimup.log_text();
    for c in &env.clusters {
        assert!(
            log.contains(&format!("\"cluster\":\"{}\"", c.name)),
            "log names {}",
            c.name
        );
    }
}

#[tokio::test]
async fn three_hundred_images_over_three_clusters_cost_one_listing_per_repository() {
    // An environment of its own: this kimup serves every namespace, since one namespace holds
    // at most one applying Image per repository (more are a conflict, see tests/apply.rs).
    let env = TestEnv::builder()
        .name("dedupe")
        .clusters(3)
        .registries()
        .kimup_crds()
        .start()
        .await
        .expect("test environment starts");
    let env = &env;
    let ns = "dedupe".to_string();
    let reg = env.plain_registry();
    let repos: Vec<String> = (0..10).map(|i| format!("dedupe-{ns}/repo-{i}")).collect();
    for r in &repos {
        reg.push_tags(r, &["1.0.0", "1.1.0"]).await.expect("push");
    }
    // A private repository reached with two different credentials.
    let tls = env.tls_registry();
    let private = format!("dedupe-{ns}/private");
    tls.push_tags(&private, &["1.0.0", "1.2.0"])
        .await
        .expect("push");
    let (a, b) = (
        tls.auth.clone().expect("auth"),
        tls.second_auth.clone().expect("second user"),
    );
    // Ten namespaces per cluster, each with one Image of each repository.
    let namespaces: Vec<String> = (0..10).map(|i| format!("{ns}-{i}")).collect();
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        for n in &namespaces {
            kimup_testenv::create_namespace(c, n)
                .await
                .expect("namespace");
        }
        for n in 0..100 {
            let repo = &repos[n % repos.len()];
            let api: Api<Image> = Api::namespaced(client.clone(), &namespaces[n / repos.len()]);
            let img: Image = serde_yaml::from_str(&image_yaml(
                &format!("img-{n}"),
                &format!("{}/{repo}", reg.host),
                None,
            ))
            .expect("yaml");
            api.create(&PostParams::default(), &img)
                .await
                .expect("create");
        }
        for (i, (name, secret, user)) in
            [("private-a", "creds-a", &a), ("private-b", "creds-b", &b)]
                .into_iter()
                .enumerate()
        {
            let ns = &namespaces[i];
            create_secret(
                &client,
                ns,
                &pull_secret(secret, &tls.host, &user.username, &user.password),
            )
            .await;
            let api: Api<Image> = Api::namespaced(client.clone(), ns);
            let img: Image = serde_yaml::from_str(&image_yaml(
                name,
                &format!("{}/{private}", tls.host),
                Some(secret),
            ))
            .expect("yaml");
            api.create(&PostParams::default(), &img)
                .await
                .expect("create");
        }
    }
    let before_public = reg
        .tag_list_requests_for(&format!("dedupe-{ns}/"))
        .expect("log");
    let before_private = tls.tag_list_requests_for(&private).expect("log");
    assert_eq!((before_public, before_private), (0, 0));

    let kimup = start_multi(env, &ns, true, &["--tag-cache-ttl=10m"]);
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        let api: Api<Image> = Api::all(client.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let list = api.list(&ListParams::default()).await.expect("list");
            let done = list
                .items
                .iter()
                .filter(|i| i.status.as_ref().and_then(|s| s.result) == Some(SyncResult::Success))
                .count();
            if done == 102 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: {done}/102 synced; log {}",
                c.name,
                kimup.log.display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Let several crontab ticks pass: they are served from the cache too.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let public = reg
        .tag_list_requests_for(&format!("dedupe-{ns}/"))
        .expect("log");
    let private_listings = tls.tag_list_requests_for(&private).expect("log");
    println!(
        "dedupe: 300 public Images over 3 clusters -> {public} listings of 10 repositories; 6 private Images with 2 credentials -> {private_listings} listings"
    );
    assert_eq!(public, 10, "one listing per repository");
    assert_eq!(private_listings, 2, "one listing per credential set");
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        for n in &namespaces[..2] {
            assert_no_canary(&client, n).await;
        }
    }
}

//! `kimup cluster add | list | remove` against real API servers with RBAC on: a running kimup
//! serves a cluster added with the command within its poll interval, as the minted identity
//! only, which the API server's authorizer refuses anything beyond kimup's rule set; a second
//! `add` changes nothing; a cluster is never added twice; `--long-lived` and `--secret` work;
//! `remove` stops the serving and `--purge` revokes the credential.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kimup::onboard::MemberStatus;
use kimup::server::ClusterReport;
use kimup_testenv::TestEnv;
use kimup_testenv::process::{free_port, wait_until};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};

/// Output of one `kimup` run.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the kimup binary under test with `args` (never through a shell).
async fn kimup(args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(args)
        // No administrator kubeconfig of the machine may leak in.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .await
        .expect("run kimup");
    let o = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "$ kimup {}\n{}{}[exit {}]",
        args.join(" "),
        o.stdout,
        o.stderr,
        o.code
    );
    o
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn image_yaml(image: &str) -> String {
    format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: web}}\nspec:\n  image: {image}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"*/2 * * * * *\"}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n"
    )
}

/// `/clusters`, by name.
async fn clusters(port: u16) -> anyhow::Result<BTreeMap<String, ClusterReport>> {
    let list: Vec<ClusterReport> = reqwest::get(format!("http://127.0.0.1:{port}/clusters"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(list.into_iter().map(|c| (c.name.clone(), c)).collect())
}

/// Waits until `/clusters` satisfies `pred`; panics naming `what` and the last answer.
async fn wait_clusters(
    port: u16,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&BTreeMap<String, ClusterReport>) -> bool,
) -> BTreeMap<String, ClusterReport> {
    let last = std::sync::Mutex::new(None);
    let (pred, last_ref) = (&pred, &last);
    let result = wait_until(what, timeout, || async move {
        let c = clusters(port).await?;
        let ok = pred(&c);
        if let Ok(mut l) = last_ref.lock() {
            *l = Some(c);
        }
        Ok(ok)
    })
    .await;
    let last = last.lock().ok().and_then(|mut l| l.take());
    match (result, last) {
        (Ok(()), Some(c)) => c,
        (r, last) => panic!("{r:?}; last /clusters: {last:#?}"),
    }
}

/// A client authenticating with a kubeconfig text (the minted credential).
async fn client_of(text: &str) -> Client {
    let kc = Kubeconfig::from_yaml(text).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn token_of(text: &str) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
    doc["users"][0]["user"]["token"]
        .as_str()
        .expect("a token")
        .to_string()
}

/// Whether the authorizer allows `verb` on `resource` (cluster-wide when `namespace` is None).
async fn allowed(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// resourceVersions of everything `add` creates in a member.
async fn versions(client: &Client, ns: &str) -> Vec<(String, Option<String>)> {
    let rv = |m: &kube::api::ObjectMeta| m.resource_version.clone();
    let mut out = vec![
        (
            "namespace".into(),
            rv(&Api::<Namespace>::all(client.clone())
                .get(ns)
                .await
                .expect("ns")
                .metadata),
        ),
        (
            "serviceaccount".into(),
            rv(&Api::<ServiceAccount>::namespaced(client.clone(), ns)
                .get("kimup")
                .await
                .expect("sa")
                .metadata),
        ),
        (
            "clusterrole".into(),
            rv(&Api::<ClusterRole>::all(client.clone())
                .get("kimup-member")
                .await
                .expect("cr")
                .metadata),
        ),
        (
            "clusterrolebinding".into(),
            rv(&Api::<ClusterRoleBinding>::all(client.clone())
                .get("kimup-member")
                .await
                .expect("crb")
                .metadata),
        ),
    ];
    for crd in [
        "images.kimup.cloudavenue.io",
        "alertconfigs.kimup.cloudavenue.io",
    ] {
        out.push((
            crd.into(),
            rv(&Api::<CustomResourceDefinition>::all(client.clone())
                .get(crd)
                .await
                .expect("crd")
                .metadata),
        ));
    }
    out
}

#[tokio::test]
async fn an_added_cluster_is_served_with_only_kimups_rules() {
    let env = TestEnv::builder()
        .name("onboarding")
        .clusters(3)
        .registries()
        .audit_log()
        .start()
        .await
        .expect("env");
    // The CRDs of the first two only: the third gets them from `kimup cluster add`.
    for c in &env.clusters[..2] {
        c.install_crds(&kimup::api::crds()).await.expect("crds");
    }
    let reg = env.plain_registry();
    reg.push_tags("onboard/web", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let image = format!("{}/onboard/web", reg.host);
    let dir = env.run_dir.join("members");
    std::fs::create_dir_all(&dir).expect("dir");
    for c in &env.clusters[..2] {
        std::fs::write(dir.join(format!("{}.yaml", c.name)), &c.kubeconfig_yaml).expect("write");
    }
    let port = free_port().expect("port");
    let run_args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--insecure-registry={}", reg.host),
        "--cluster-poll-interval=1s".into(),
        "--tag-cache-ttl=0s".into(),
    ];
    let mut running = spawn_kimup(&env, "kimup-onboarding", &run_args);
    wait_clusters(
        port,
        "the two first members up",
        Duration::from_secs(30),
        |c| c.len() == 2 && c.values().all(|m| m.up),
    )
    .await;

    // Bad input first: an unknown context is a usage error naming the contexts; an identity
    // without rights is a failure; a bad name and a TTL the API refuses are usage errors.
    let admin = &env.clusters[2];
    let admin_kc = path(&admin.kubeconfig_path);
    let d = path(&dir);
    let out = kimup(&[
        "cluster",
        "add",
        "nope",
        "--kubeconfig",
        admin_kc,
        "--kubeconfig-dir",
        d,
    ])
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("context \"nope\" is not in") && out.stderr.contains("cluster-2"),
        "{}",
        out.stderr
    );
    let closed = free_port().expect("port");
    let unreachable = env.run_dir.join("unreachable.yaml");
    std::fs::write(
        &unreachable,
        admin
            .kubeconfig_yaml
            .replace(&admin.url, &format!("https://127.0.0.1:{closed}")),
    )
    .expect("write");
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-2",
        "--kubeconfig",
        path(&unreachable),
        "--kubeconfig-dir",
        d,
    ])
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-2",
        "--kubeconfig",
        "/nonexistent/admin.yaml",
        "--kubeconfig-dir",
        d,
    ])
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/admin.yaml"),
        "{}",
        out.stderr
    );
    let nobody = env.run_dir.join("nobody.yaml");
    std::fs::write(
        &nobody,
        admin.kubeconfig_for("nobody", "nogroup").expect("kc"),
    )
    .expect("write");
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-2",
        "--kubeconfig",
        path(&nobody),
        "--kubeconfig-dir",
        d,
    ])
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("permission denied (403)"),
        "{}",
        out.stderr
    );
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-2",
        "--kubeconfig",
        admin_kc,
        "--kubeconfig-dir",
        d,
        "--name",
        "a/b",
    ])
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-2",
        "--kubeconfig",
        admin_kc,
        "--kubeconfig-dir",
        d,
        "--token-ttl",
        "1m",
    ])
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = kimup(&["cluster", "add", "cluster-2", "--kubeconfig", admin_kc]).await;
    assert_eq!(out.code, 2, "no destination: {}", out.stderr);
    assert!(!dir.join("cluster-2.yaml").exists());

    // The real thing.
    let started = std::time::Instant::now();
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-2",
        "--kubeconfig",
        admin_kc,
        "--kubeconfig-dir",
        d,
        "--token-ttl",
        "2h",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let file = dir.join("cluster-2.yaml");
    let text = std::fs::read_to_string(&file).expect("kubeconfig written");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "written private");
    for absent in ["client-certificate", "client-key", "exec", "insecure-skip"] {
        assert!(!text.contains(absent), "{absent} in the member kubeconfig");
    }
    let token = token_of(&text);
    assert!(
        !out.stdout.contains(&token) && !out.stderr.contains(&token),
        "token printed"
    );
    let claims = kimup::credential::jwt_claims(&token).expect("a JWT");
    assert_eq!(
        claims.sub.as_deref(),
        Some("system:serviceaccount:kimup:kimup")
    );
    let lifetime = claims.exp.unwrap_or(0) - claims.iat.unwrap_or(0);
    assert_eq!(lifetime, 7200, "the lifetime asked for");

    // Served within the poll interval: an Image there syncs.
    let admin_client = admin.client().await.expect("client");
    let ns = "team";
    kimup_testenv::create_namespace(admin, ns)
        .await
        .expect("ns");
    create_image(&admin_client, ns, &image_yaml(&image)).await;
    wait_status(
        &admin_client,
        ns,
        "web",
        Duration::from_secs(30),
        &running,
        |s| s.tag.as_deref() == Some("1.1.0"),
    )
    .await;
    eprintln!(
        "cluster-2 synced {:.1} s after `cluster add` began",
        started.elapsed().as_secs_f64()
    );
    let uid = Api::<Namespace>::all(admin_client.clone())
        .get("kube-system")
        .await
        .expect("kube-system")
        .metadata
        .uid;
    let c = wait_clusters(
        port,
        "cluster-2 up with its credential's expiry",
        Duration::from_secs(10),
        |c| c.get("cluster-2").is_some_and(|m| m.up && m.images == 1),
    )
    .await;
    let member = &c["cluster-2"];
    assert_eq!(member.identity, uid);
    let expiry = member.credential_expiry.clone().expect("credentialExpiry");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&expiry)
            .expect("rfc3339")
            .timestamp(),
        claims.exp.unwrap_or(0)
    );
    assert_eq!(member.warning, None, "a fresh token");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series = format!(
        "kimup_cluster_credential_expiry_timestamp_seconds{{cluster=\"cluster-2\"}} {}",
        claims.exp.unwrap_or(0)
    );
    assert!(metrics.contains(&series), "{series} not in /metrics");

    // Only the minted identity wrote there on kimup's behalf (the audit log of cluster-2).
    let sa_user = "system:serviceaccount:kimup:kimup";
    let events = admin.audit_events().expect("audit");
    let kimup_writes: Vec<_> = events
        .iter()
        .filter(|e| e.resource == "images/status" || (e.resource == "events" && e.namespace == ns))
        .collect();
    assert!(!kimup_writes.is_empty(), "no status write audited");
    for e in &kimup_writes {
        assert_eq!(e.username, sa_user, "{e:?}");
    }
    // Images and the team namespace: the test's admin creates, kimup's identity writes, nobody
    // else (the API server's own bootstrap writes are elsewhere).
    let others: Vec<_> = events
        .iter()
        .filter(|e| e.namespace == ns || e.resource.starts_with("images"))
        .filter(|e| e.username != sa_user && e.username != "admin")
        .collect();
    assert!(others.is_empty(), "someone else wrote: {others:?}");
    assert!(
        !events
            .iter()
            .any(|e| e.resource == "images/status" && e.username == "admin"),
        "the admin credential wrote a status"
    );

    // The authorizer allows the rule set and refuses the rest, asked and tried.
    let minted = client_of(&text).await;
    for attrs in kimup::rbac::access_checks() {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(attrs.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let ok = Api::<SelfSubjectAccessReview>::all(minted.clone())
            .create(&PostParams::default(), &review)
            .await
            .expect("review")
            .status
            .is_some_and(|s| s.allowed);
        assert!(ok, "{} refused", kimup::rbac::describe(&attrs));
    }
    for (verb, group, resource, namespace) in [
        ("list", "", "secrets", None),
        ("watch", "", "secrets", Some(ns)),
        ("delete", "kimup.cloudavenue.io", "images", Some(ns)),
        ("create", "apps", "deployments", Some(ns)),
        ("patch", "", "pods", Some(ns)),
        ("update", "kimup.cloudavenue.io", "images", Some(ns)),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
        ),
        ("create", "", "serviceaccounts/token", Some("kimup")),
        ("delete", "", "namespaces", None),
    ] {
        assert!(
            !allowed(&minted, verb, group, resource, namespace).await,
            "{verb} {group}/{resource} allowed"
        );
    }
    forbidden(
        Api::<Secret>::all(minted.clone())
            .list(&ListParams::default())
            .await,
        "list Secrets cluster-wide",
    );
    forbidden(
        Api::<kimup::api::Image>::namespaced(minted.clone(), ns)
            .delete("web", &DeleteParams::default())
            .await,
        "delete an Image",
    );
    forbidden(
        Api::<Deployment>::namespaced(minted.clone(), ns)
            .create(
                &PostParams::default(),
                &deployment("intruder", "busybox:1.36", false),
            )
            .await,
        "create a Deployment",
    );
    forbidden(
        Api::<Pod>::namespaced(minted.clone(), ns)
            .patch(
                "any",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
        "patch a pod",
    );
    forbidden(
        Api::<ClusterRole>::all(minted.clone())
            .list(&ListParams::default())
            .await,
        "list ClusterRoles",
    );

    // `list` shows each member as kimup sees it.
    let out = kimup(&["cluster", "list", "--kubeconfig-dir", d, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let members: Vec<MemberStatus> = serde_json::from_str(&out.stdout).expect("json");
    let by: BTreeMap<_, _> = members.iter().map(|m| (m.name.as_str(), m)).collect();
    assert_eq!(by.len(), 3, "{members:#?}");
    let m = by["cluster-2"];
    assert!(m.reachable && m.crds == Some(true), "{m:#?}");
    assert_eq!(m.rbac_sufficient, Some(true), "{m:#?}");
    assert!(m.rbac_missing.is_empty());
    assert_eq!(m.identity, uid);
    assert_eq!(m.server.as_deref(), Some(admin.url.as_str()));
    assert_eq!(m.credential, "token");
    assert_eq!(m.credential_expiry.as_deref(), Some(expiry.as_str()));
    assert_eq!(m.images, Some(1));
    assert_eq!(m.error, None);
    let admin_member = by["cluster-0"];
    assert_eq!(admin_member.credential, "client certificate");
    assert!(
        admin_member.credential_expiry.is_some(),
        "{admin_member:#?}"
    );
    assert_eq!(
        admin_member.rbac_sufficient,
        Some(true),
        "system:masters may do all"
    );
    let out = kimup(&["cluster", "list", "--kubeconfig-dir", d]).await;
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.starts_with("NAME") && out.stdout.contains("cluster-2"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&token));

    // Idempotent: a second run keeps the token (more than half its lifetime left) and changes
    // nothing, in the member or the file (the context given as kubectl spells it this time).
    let before = versions(&admin_client, "kimup").await;
    let modified = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    let out = kimup(&[
        "cluster",
        "add",
        "--context",
        "cluster-2",
        "--kubeconfig",
        admin_kc,
        "--kubeconfig-dir",
        d,
        "--token-ttl",
        "2h",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("credential: kept"), "{}", out.stdout);
    assert!(
        out.stdout.contains("unchanged") && !out.stdout.contains("created"),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        text,
        "same kubeconfig"
    );
    assert_eq!(
        std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .expect("mtime"),
        modified
    );
    assert_eq!(
        versions(&admin_client, "kimup").await,
        before,
        "nothing changed in the member"
    );

    // The same cluster under another name is refused, naming the member it already is.
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-2",
        "--kubeconfig",
        admin_kc,
        "--kubeconfig-dir",
        d,
        "--name",
        "again",
    ])
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("already a member as cluster-2"),
        "{}",
        out.stderr
    );
    assert!(!dir.join("again.yaml").exists());

    // Rotation: a new token, picked up by the running kimup without a restart.
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-2",
        "--kubeconfig",
        admin_kc,
        "--kubeconfig-dir",
        d,
        "--token-ttl",
        "3h",
        "--rotate",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rotated = std::fs::read_to_string(&file).expect("read");
    assert_ne!(token_of(&rotated), token);
    let new_exp = kimup::credential::jwt_claims(&token_of(&rotated))
        .and_then(|c| c.exp)
        .unwrap_or(0);
    let new_expiry = chrono::DateTime::from_timestamp(new_exp, 0)
        .expect("t")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    wait_clusters(
        port,
        "the rotated credential in use",
        Duration::from_secs(10),
        |c| {
            c.get("cluster-2").is_some_and(|m| {
                m.up && m.credential_expiry.as_deref() == Some(new_expiry.as_str())
            })
        },
    )
    .await;
    running
        .process
        .check_running()
        .expect("the same kimup process, never restarted");

    // remove: kimup stops serving it; the member keeps its CRDs and Images.
    let out = kimup(&["cluster", "remove", "cluster-2", "--kubeconfig-dir", d]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!file.exists());
    wait_clusters(
        port,
        "cluster-2 no longer served",
        Duration::from_secs(10),
        |c| !c.contains_key("cluster-2") && c.len() == 2,
    )
    .await;
    let out = kimup(&["cluster", "remove", "cluster-2", "--kubeconfig-dir", d]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no member named cluster-2") && out.stderr.contains("cluster-0"));
    assert!(
        Api::<kimup::api::Image>::namespaced(admin_client.clone(), ns)
            .get("web")
            .await
            .is_ok()
    );
    // Until purged, the ServiceAccount's token still works: remove alone does not revoke.
    assert!(allowed(&client_of(&rotated).await, "get", "", "namespaces", None).await);
    let log = running.log_text();
    for t in [&token, &token_of(&rotated)] {
        assert!(!log.contains(t.as_str()), "a token reached kimup's log");
    }
}

/// `--long-lived` into the Secret the chart mounts, then `remove --purge`.
#[tokio::test]
async fn long_lived_credential_in_the_home_secret_and_purge() {
    let env = TestEnv::builder()
        .name("onboarding-secret")
        .clusters(2)
        .controller_manager()
        // Caps bound tokens at an hour: `add` asks for 7 days and must say what it got.
        .apiserver_flag("--service-account-max-token-expiration=1h")
        .start()
        .await
        .expect("env");
    let (home, member) = (&env.clusters[0], &env.clusters[1]);
    let home_client = home.client().await.expect("client");
    let member_client = member.client().await.expect("client");
    kimup_testenv::create_namespace(home, "kimup")
        .await
        .expect("ns");
    let home_kc = path(&home.kubeconfig_path);
    let member_kc = path(&member.kubeconfig_path);
    let store = ["--secret", "kimup/clusters", "--home-kubeconfig", home_kc];

    let mut add: Vec<&str> = vec![
        "cluster",
        "add",
        "cluster-1",
        "--kubeconfig",
        member_kc,
        "--long-lived",
        "--namespace",
        "ops",
    ];
    add.extend(store);
    // The first time with an administrator's kubeconfig that skips TLS verification: the CA
    // then comes from the cluster's kube-root-ca.crt, and the member kubeconfig verifies.
    let mut insecure: serde_yaml::Value =
        serde_yaml::from_str(&member.kubeconfig_yaml).expect("yaml");
    let cluster = &mut insecure["clusters"][0]["cluster"];
    let admin_ca = cluster["certificate-authority-data"].clone();
    if let serde_yaml::Value::Mapping(m) = cluster {
        m.remove("certificate-authority-data");
        m.insert("insecure-skip-tls-verify".into(), true.into());
    }
    let insecure_kc = env.run_dir.join("insecure-admin.yaml");
    std::fs::write(
        &insecure_kc,
        serde_yaml::to_string(&insecure).expect("yaml"),
    )
    .expect("write");
    let mut add_insecure = add.clone();
    add_insecure[4] = path(&insecure_kc);
    // The root CA publisher may still be starting: only its ConfigMap in kube-system is needed.
    wait_until(
        "kube-root-ca.crt published",
        Duration::from_secs(30),
        || {
            let c = member_client.clone();
            async move {
                Ok(
                    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(c, "kube-system")
                        .get_opt("kube-root-ca.crt")
                        .await?
                        .is_some(),
                )
            }
        },
    )
    .await
    .expect("root CA published");
    let out = kimup(&add_insecure).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("CA: from ConfigMap kube-root-ca.crt"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("never expires"), "{}", out.stdout);
    let secrets: Api<Secret> = Api::namespaced(home_client.clone(), "kimup");
    let stored = secrets.get("clusters").await.expect("the Secret");
    let text =
        String::from_utf8(stored.data.expect("data")["cluster-1.yaml"].0.clone()).expect("utf-8");
    let token = token_of(&text);
    assert_eq!(
        kimup::credential::token_expiry(&token),
        None,
        "a token without expiry"
    );
    let written: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let written = &written["clusters"][0]["cluster"];
    assert_eq!(written["insecure-skip-tls-verify"], serde_yaml::Value::Null);
    assert_eq!(
        written["certificate-authority-data"], admin_ca,
        "the cluster's CA"
    );
    let token_secret = Api::<Secret>::namespaced(member_client.clone(), "ops")
        .get("kimup-token")
        .await
        .expect("the token Secret");
    assert_eq!(
        token_secret.type_.as_deref(),
        Some("kubernetes.io/service-account-token")
    );
    let minted = client_of(&text).await;
    assert!(allowed(&minted, "watch", "kimup.cloudavenue.io", "images", None).await);
    assert!(!allowed(&minted, "list", "", "secrets", None).await);

    // Twice: unchanged (the Secret in the home cluster too).
    let rv = secrets
        .get("clusters")
        .await
        .expect("secret")
        .metadata
        .resource_version;
    let out = kimup(&add).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("credential: kept") && out.stdout.contains("unchanged"),
        "{}",
        out.stdout
    );
    assert_eq!(
        secrets
            .get("clusters")
            .await
            .expect("secret")
            .metadata
            .resource_version,
        rv
    );

    let mut list = vec!["cluster", "list", "-o", "json"];
    list.extend(store);
    let out = kimup(&list).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let members: Vec<MemberStatus> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].credential, "token (no expiry)");
    assert_eq!(members[0].credential_expiry, None);
    assert_eq!(members[0].rbac_sufficient, Some(true), "{:#?}", members[0]);
    assert_eq!(members[0].images, Some(0));

    // Rules that drifted (someone dropped the events rule) show in `list`, and `add` restores them.
    let roles: Api<ClusterRole> = Api::all(member_client.clone());
    let mut role = roles.get("kimup-member").await.expect("role");
    if let Some(rules) = role.rules.as_mut() {
        rules.retain(|r| r.api_groups != Some(vec!["events.k8s.io".to_string()]));
    }
    role.metadata.managed_fields = None;
    roles
        .replace("kimup-member", &PostParams::default(), &role)
        .await
        .expect("drop a rule");
    // The authorizer's RBAC caches follow the change within moments.
    wait_until(
        "list reports the missing rules",
        Duration::from_secs(10),
        || {
            let list = list.clone();
            async move {
                let out = kimup(&list).await;
                let members: Vec<MemberStatus> = serde_json::from_str(&out.stdout)?;
                Ok(members[0].rbac_sufficient == Some(false)
                    && members[0].rbac_missing
                        == ["create events.k8s.io/events", "patch events.k8s.io/events"])
            }
        },
    )
    .await
    .expect("drift reported");
    let out = kimup(&add).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("ClusterRole kimup-member: updated"),
        "{}",
        out.stdout
    );
    assert_eq!(
        roles.get("kimup-member").await.expect("role").rules,
        Some(kimup::rbac::policy_rules())
    );

    // A ServiceAccount deleted behind kimup's back: the stored token is refused, so a re-run
    // recreates the account and replaces the token Secret (its token named the old UID).
    Api::<ServiceAccount>::namespaced(member_client.clone(), "ops")
        .delete("kimup", &DeleteParams::default())
        .await
        .expect("delete the ServiceAccount");
    wait_until(
        "the deleted account's token refused (401)",
        Duration::from_secs(10),
        || {
            let c = minted.clone();
            async move {
                Ok(matches!(
                    Api::<Namespace>::all(c).get("kube-system").await,
                    Err(kube::Error::Api(s)) if s.code == 401
                ))
            }
        },
    )
    .await
    .expect("refused");
    let out = kimup(&add).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("ServiceAccount ops/kimup: created")
            && out.stdout.contains("no longer accepts the stored token"),
        "{}",
        out.stdout
    );
    let stored = secrets.get("clusters").await.expect("the Secret");
    let text =
        String::from_utf8(stored.data.expect("data")["cluster-1.yaml"].0.clone()).expect("utf-8");
    assert_ne!(token_of(&text), token, "a new long-lived token");
    assert!(
        allowed(
            &client_of(&text).await,
            "watch",
            "kimup.cloudavenue.io",
            "images",
            None
        )
        .await
    );

    // Back to a bound token: the long-lived one is revoked once the new kubeconfig is stored.
    let bound: Vec<&str> = add
        .iter()
        .copied()
        .filter(|a| *a != "--long-lived")
        .collect();
    let out = kimup(&bound).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("switching to a bound token")
            && out
                .stdout
                .contains("(the former long-lived token): deleted"),
        "{}",
        out.stdout
    );
    let stored = secrets.get("clusters").await.expect("the Secret");
    let text_bound =
        String::from_utf8(stored.data.expect("data")["cluster-1.yaml"].0.clone()).expect("utf-8");
    let granted = kimup::credential::token_expiry(&token_of(&text_bound))
        .and_then(|e| e.lifetime())
        .expect("a bound token");
    assert_eq!(
        granted,
        Duration::from_secs(3600),
        "capped by the API server"
    );
    assert!(
        out.stdout
            .contains("the API server capped the 7d asked for at 1h "),
        "{}",
        out.stdout
    );
    let old = client_of(&text).await;
    wait_until(
        "the long-lived token refused (401)",
        Duration::from_secs(10),
        || {
            let c = old.clone();
            async move {
                Ok(matches!(
                    Api::<Namespace>::all(c).get("kube-system").await,
                    Err(kube::Error::Api(s)) if s.code == 401
                ))
            }
        },
    )
    .await
    .expect("revoked");

    // Purging needs the right cluster: the home cluster's admin context is refused.
    let mut wrong = vec![
        "cluster",
        "remove",
        "cluster-1",
        "--purge",
        "--context",
        "cluster-0",
        "--kubeconfig",
        home_kc,
    ];
    wrong.extend(store);
    let out = kimup(&wrong).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("nothing purged"), "{}", out.stderr);

    let mut purge = vec![
        "cluster",
        "remove",
        "cluster-1",
        "--purge",
        "--context",
        "cluster-1",
        "--kubeconfig",
        member_kc,
    ];
    purge.extend(store);
    let out = kimup(&purge).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let data = secrets
        .get("clusters")
        .await
        .expect("secret")
        .data
        .unwrap_or_default();
    assert!(!data.contains_key("cluster-1.yaml"));
    for (kind, found) in [
        (
            "ServiceAccount",
            Api::<ServiceAccount>::namespaced(member_client.clone(), "ops")
                .get_opt("kimup")
                .await
                .expect("get")
                .is_some(),
        ),
        (
            "token Secret",
            Api::<Secret>::namespaced(member_client.clone(), "ops")
                .get_opt("kimup-token")
                .await
                .expect("get")
                .is_some(),
        ),
        (
            "ClusterRole",
            Api::<ClusterRole>::all(member_client.clone())
                .get_opt("kimup-member")
                .await
                .expect("get")
                .is_some(),
        ),
        (
            "ClusterRoleBinding",
            Api::<ClusterRoleBinding>::all(member_client.clone())
                .get_opt("kimup-member")
                .await
                .expect("get")
                .is_some(),
        ),
    ] {
        assert!(!found, "{kind} left after --purge");
    }
    // The CRDs and the namespace stay; the credential is revoked.
    assert!(
        Api::<CustomResourceDefinition>::all(member_client.clone())
            .get_opt("images.kimup.cloudavenue.io")
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        Api::<Namespace>::all(member_client.clone())
            .get_opt("ops")
            .await
            .expect("get")
            .is_some()
    );
    // The API server's ServiceAccount lookup reads its own caches: the revocation lands within
    // moments of the deletes.
    let revoked = client_of(&text_bound).await;
    wait_until(
        "the purged token refused (401)",
        Duration::from_secs(10),
        || {
            let c = revoked.clone();
            async move {
                Ok(matches!(
                    Api::<Namespace>::all(c).get("kube-system").await,
                    Err(kube::Error::Api(s)) if s.code == 401
                ))
            }
        },
    )
    .await
    .expect("revoked");

    // An object kimup did not create is never taken over.
    let foreign = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some("kimup".into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "Helm".to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(member_client.clone(), "ops")
        .create(&PostParams::default(), &foreign)
        .await
        .expect("foreign ServiceAccount");
    let out = kimup(&add).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("managed by Helm"), "{}", out.stderr);
    let sa = Api::<ServiceAccount>::namespaced(member_client.clone(), "ops")
        .get("kimup")
        .await
        .expect("sa");
    assert_eq!(
        sa.meta()
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .map(String::as_str),
        Some("Helm")
    );

    // A kubeconfig written by hand (no record of `add`) is asked who it is, with its own
    // credential: the same cluster under another name is refused all the same.
    let by_hand = env.run_dir.join("by-hand");
    std::fs::create_dir_all(&by_hand).expect("dir");
    std::fs::write(by_hand.join("legacy.yaml"), &member.kubeconfig_yaml).expect("write");
    let out = kimup(&[
        "cluster",
        "add",
        "cluster-1",
        "--kubeconfig",
        member_kc,
        "--kubeconfig-dir",
        path(&by_hand),
    ])
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("already a member as legacy"),
        "{}",
        out.stderr
    );

    // The home cluster itself as a member: allowed, with a note on serving it twice.
    let mut home_add = vec!["cluster", "add", "cluster-0", "--kubeconfig", home_kc];
    home_add.extend(store);
    let out = kimup(&home_add).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cluster-0 is the home cluster holding the Secret"),
        "{}",
        out.stderr
    );
    let mut home_remove = vec![
        "cluster",
        "remove",
        "cluster-0",
        "--purge",
        "--context",
        "cluster-0",
        "--kubeconfig",
        home_kc,
    ];
    home_remove.extend(store);
    let out = kimup(&home_remove).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// A credential about to expire is announced: /clusters, the metric and a log line, never the
/// token. No API server is needed: the expiry is read from the kubeconfig.
#[tokio::test]
async fn an_expiring_credential_is_announced() {
    use base64::Engine;
    let env = TestEnv::builder()
        .name("onboarding-expiry")
        .start()
        .await
        .expect("env");
    let now = chrono::Utc::now().timestamp();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    // Issued 10 hours ago, 30 minutes left: inside the last fifth of its lifetime. The canary
    // rides in the signature, as a secret part of the token.
    let token = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256"}"#),
        b64(&format!(
            r#"{{"sub":"system:serviceaccount:kimup:kimup","iat":{},"exp":{}}}"#,
            now - 36_000,
            now + 1800
        )),
        b64(kimup_testenv::canary())
    );
    let unreachable = free_port().expect("port");
    let dir = env.run_dir.join("members");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("soon.yaml"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{unreachable}'}}}}]\n\
             users: [{{name: u, user: {{token: '{token}'}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .expect("write");
    let port = free_port().expect("port");
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--listen-addr=127.0.0.1:{port}"),
        "--cluster-poll-interval=1s".into(),
    ];
    let running = spawn_kimup(&env, "kimup-expiry", &args);
    let c = wait_clusters(
        port,
        "the expiring credential reported",
        Duration::from_secs(20),
        |c| c.get("soon").is_some_and(|m| m.warning.is_some()),
    )
    .await;
    let warning = c["soon"].warning.clone().unwrap_or_default();
    assert!(
        warning.contains("credential expires at") && warning.contains("kimup cluster add"),
        "{warning}"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        metrics.contains(&format!(
            "kimup_cluster_credential_expiry_timestamp_seconds{{cluster=\"soon\"}} {}",
            now + 1800
        )),
        "metric missing"
    );
    wait_until(
        "the warning in kimup's log",
        Duration::from_secs(10),
        || {
            let log = running.log_text();
            async move {
                Ok(log.contains("credential expires at") && log.contains("\"cluster\":\"soon\""))
            }
        },
    )
    .await
    .expect("logged");
    assert!(!running.log_text().contains(&token));
    drop(running);
}

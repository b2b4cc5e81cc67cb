//! Fleet promotion over three real clusters named `dev`, `staging-a` and `prod` (kubeconfig file
//! stems), each with kube-controller-manager, kube-scheduler and a kwok node, so Deployments
//! really roll out: a new tag reaches dev at once, staging-a once it ran healthy in dev for the
//! soak, prod once it ran healthy in staging-a for the soak; a rollout that fails in staging-a
//! (its Pods never become Ready: ProgressDeadlineExceeded) halts prod, and a newer tag starts a
//! new promotion. A restart of kimup mid-soak neither resets nor skips the soak. The promoted
//! Images check the registry hourly only: what moves them is the soak completing elsewhere.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use kimup::api::ImageStatus;
use kimup::fleet::View;
use kimup_testenv::process::free_port;
use kimup_testenv::{Collector, HttpSink, TestEnv, rollout, shared};
use kube::Client;
use kube::api::{Api, PostParams};

/// Member names, in promotion order; cluster i of the environment is member NAMES[i].
const NAMES: [&str; 3] = ["dev", "staging-a", "prod"];

fn env() -> &'static TestEnv {
    shared(|| {
        TestEnv::builder()
            .name("promotion")
            .clusters(3)
            .registries()
            .kimup_crds()
            .rollouts()
    })
    .expect("three clusters with rollouts")
}

/// A kubeconfig folder naming the clusters dev, staging-a and prod.
fn members(env: &TestEnv, test: &str) -> PathBuf {
    let dir = env.run_dir.join(format!("members-{test}"));
    std::fs::create_dir_all(&dir).expect("members dir");
    for (i, name) in NAMES.iter().enumerate() {
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            &env.clusters[i].kubeconfig_yaml,
        )
        .expect("kubeconfig");
    }
    dir
}

fn start(env: &TestEnv, dir: &Path, ns: &str, name: &str, port: u16) -> Kimup {
    start_traced(env, dir, ns, name, port, None)
}

/// As `start`, exporting traces to `otlp` when set.
fn start_traced(
    env: &TestEnv,
    dir: &Path,
    ns: &str,
    name: &str,
    port: u16,
    otlp: Option<&str>,
) -> Kimup {
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "--log-level=info,kimup=debug".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--watch-namespace={ns}"),
        format!("--insecure-registry={}", env.plain_registry().host),
        "--tag-cache-ttl=0s".into(),
        format!("--listen-addr=127.0.0.1:{port}"),
    ];
    let vars: Vec<(String, String)> = otlp
        .map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), e.to_string()))
        .into_iter()
        .collect();
    spawn_kimup_with_env(env, name, &args, &vars)
}

/// A one-replica opted-in Deployment `web` running `image`, giving up after 6 s without
/// progress; `refuse` (a regular expression) keeps matching images from ever becoming Ready.
fn web(image: &str, refuse: Option<&str>) -> Deployment {
    let mut pod_annotations = serde_json::Map::new();
    if let Some(r) = refuse {
        pod_annotations.insert(rollout::NEVER_READY_ANNOTATION.into(), r.into());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kimup.cloudavenue.io/enabled": "true"}},
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": 6,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": pod_annotations},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    }))
    .expect("deployment literal")
}

/// An Image `web` of `repo` from 1.3.0 under semver-minor; `dev_cron` is the crontab of the
/// Image without a promotion.
fn image_yaml(repo: &str, promotion: Option<&str>, alert: bool, dev_cron: &str) -> String {
    let alert = if alert {
        ", {type: alert-webhook, data: {valueFrom: {alertConfigRef: {name: team}}}}"
    } else {
        ""
    };
    // Promoted Images check the registry hourly only: they take a tag when a soak elsewhere
    // completes, not at a trigger of their own.
    let cron = if promotion.is_some() {
        "@hourly"
    } else {
        dev_cron
    };
    let promotion = promotion
        .map(|p| format!("  promotion: {p}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: web}}\nspec:\n  image: {repo}\n  baseTag: 1.3.0\n  triggers: [{{type: crontab, value: \"{cron}\"}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}{alert}]}}]\n{promotion}"
    )
}

/// One look at a member: the tag its Deployment runs and its Image's status.
#[derive(Clone, Debug)]
struct Snap {
    at: DateTime<Utc>,
    cluster: &'static str,
    runs: String,
    status: ImageStatus,
}

/// Polls the three members and keeps every look, so that the order in which tags arrived and
/// what the conditions said on the way can be checked afterwards.
struct Timeline {
    clients: Vec<Client>,
    ns: String,
    looks: Vec<Snap>,
}

impl Timeline {
    async fn new(env: &TestEnv, ns: &str) -> Self {
        let mut clients = Vec::new();
        for c in &env.clusters {
            clients.push(c.client().await.expect("client"));
        }
        Self {
            clients,
            ns: ns.to_string(),
            looks: Vec::new(),
        }
    }

    async fn look(&mut self) -> Vec<Snap> {
        let mut now = Vec::new();
        for (i, client) in self.clients.iter().enumerate() {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &self.ns);
            let images: Api<kimup::api::Image> = Api::namespaced(client.clone(), &self.ns);
            let runs = deployments
                .get_opt("web")
                .await
                .ok()
                .flatten()
                .and_then(|d| d.spec?.template.spec?.containers.first()?.image.clone())
                .and_then(|i| i.rsplit(':').next().map(str::to_string))
                .unwrap_or_default();
            let status = images
                .get_opt("web")
                .await
                .ok()
                .flatten()
                .and_then(|i| i.status)
                .unwrap_or_default();
            now.push(Snap {
                at: Utc::now(),
                cluster: NAMES[i],
                runs,
                status,
            });
        }
        self.looks.extend(now.iter().cloned());
        now
    }

    /// A timeline that starts once every member's Deployment runs 1.3.0 (the base tag), healthy.
    async fn at_base(env: &TestEnv, ns: &str, kimup: &Kimup) -> Self {
        let mut t = Self::new(env, ns).await;
        t.until(
            "every member healthy at 1.3.0",
            Duration::from_secs(90),
            kimup,
            |s| s.iter().all(|s| healthy_at(s, "1.3.0")),
        )
        .await;
        t
    }

    /// Looks every 100 ms until `done` holds for the members' current state.
    async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        kimup: &Kimup,
        done: impl Fn(&[Snap]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.look().await;
            if done(&now) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not after {timeout:?}; last: {:#?}; kimup log: {}",
                now.iter()
                    .map(|s| (
                        s.cluster,
                        &s.runs,
                        &s.status.rollout,
                        promotion_condition(&s.status)
                    ))
                    .collect::<Vec<_>>(),
                kimup.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// When `cluster`'s Deployment was first seen running `tag`.
    fn first_ran(&self, cluster: &str, tag: &str) -> Option<DateTime<Utc>> {
        self.looks
            .iter()
            .find(|s| s.cluster == cluster && s.runs == tag)
            .map(|s| s.at)
    }

    /// Whether `cluster`'s Promotion condition was ever seen with a message containing `text`.
    fn said(&self, cluster: &str, text: &str) -> bool {
        self.looks.iter().any(|s| {
            s.cluster == cluster
                && promotion_condition(&s.status).is_some_and(|(_, _, m)| m.contains(text))
        })
    }
}

fn promotion_condition(s: &ImageStatus) -> Option<(String, String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == "Promotion")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn get<'a>(snaps: &'a [Snap], cluster: &str) -> &'a Snap {
    snaps
        .iter()
        .find(|s| s.cluster == cluster)
        .expect("a look at every member")
}

/// Runs `tag` and has run it healthy (status.rollout.healthySince set for it).
fn healthy_at(s: &Snap, tag: &str) -> bool {
    s.runs == tag
        && s.status
            .rollout
            .as_ref()
            .is_some_and(|r| r.tag == tag && r.healthy_since.is_some())
}

fn healthy_since(s: &Snap, tag: &str) -> DateTime<Utc> {
    let r = s.status.rollout.as_ref().expect("rollout recorded");
    assert_eq!(r.tag, tag, "{r:?}");
    let since = r.healthy_since.as_deref().expect("healthy");
    DateTime::parse_from_rfc3339(since)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

async fn setup(
    env: &TestEnv,
    ns: &str,
    repo_path: &str,
    soak: &str,
    refuse_in_staging: Option<&str>,
    dev_cron: &str,
) {
    let reg = env.plain_registry();
    reg.push_tags(repo_path, &["1.3.0"]).await.expect("push");
    let repo = format!("{}/{repo_path}", reg.host);
    for (i, name) in NAMES.iter().enumerate() {
        let client = env.clusters[i].client().await.expect("client");
        let refuse = if *name == "staging-a" {
            refuse_in_staging
        } else {
            None
        };
        create_deployment(&client, ns, &web(&format!("{repo}:1.3.0"), refuse)).await;
        let promotion = match *name {
            "dev" => None,
            "staging-a" => Some(format!("{{after: [dev], soak: {soak}}}")),
            _ => Some(format!("{{after: [\"staging-*\"], soak: {soak}}}")),
        };
        create_image(
            &client,
            ns,
            &image_yaml(&repo, promotion.as_deref(), *name == "staging-a", dev_cron),
        )
        .await;
    }
}

async fn create_alert_config(client: &Client, ns: &str, sink: &HttpSink) {
    let config = format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: AlertConfig\nmetadata: {{name: team}}\nspec:\n  webhook:\n    url: {{value: \"{}/webhook\"}}\n",
        sink.url
    );
    let api: Api<kimup::api::AlertConfig> = Api::namespaced(client.clone(), ns);
    let ac: kimup::api::AlertConfig = serde_yaml::from_str(&config).expect("alertconfig");
    api.create(&PostParams::default(), &ac)
        .await
        .expect("create AlertConfig");
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

#[tokio::test]
async fn a_tag_reaches_dev_then_staging_then_prod_and_a_failed_rollout_halts_prod() {
    const SOAK: i64 = 6;
    let env = env();
    let ns = env.namespace_everywhere("promo").await.expect("namespaces");
    let sink = HttpSink::start().await.expect("http sink");
    let staging = env.clusters[1].client().await.expect("client");
    create_alert_config(&staging, &ns, &sink).await;
    // staging-a's Pods never become Ready at 1.5.0; dev's and prod's would.
    setup(
        env,
        &ns,
        "promo/web",
        &format!("{SOAK}s"),
        Some(":1\\.5\\.0$"),
        "*/1 * * * * *",
    )
    .await;
    let dir = members(env, "staged");
    let port = free_port().expect("port");
    let collector = Collector::start(&env.run_dir, &env.log_dir())
        .await
        .expect("collector");
    let kimup = start_traced(
        env,
        &dir,
        &ns,
        "kimup-promotion",
        port,
        Some(&collector.endpoint),
    );
    let mut t = Timeline::at_base(env, &ns, &kimup).await;

    // 1.4.0: dev at once, staging-a after dev's soak, prod after staging-a's.
    let reg = env.plain_registry();
    reg.push_tags("promo/web", &["1.4.0"]).await.expect("push");
    let pushed = Utc::now();
    t.until(
        "prod healthy at 1.4.0",
        Duration::from_secs(120),
        &kimup,
        |s| healthy_at(get(s, "prod"), "1.4.0"),
    )
    .await;
    let last = t.look().await;
    let dev_in = t.first_ran("dev", "1.4.0").expect("dev ran 1.4.0");
    let staging_in = t
        .first_ran("staging-a", "1.4.0")
        .expect("staging-a ran 1.4.0");
    let prod_in = t.first_ran("prod", "1.4.0").expect("prod ran 1.4.0");
    let dev_healthy = healthy_since(get(&last, "dev"), "1.4.0");
    let staging_healthy = healthy_since(get(&last, "staging-a"), "1.4.0");
    println!(
        "1.4.0 after the push: dev {:.1} s, healthy {:.1} s; staging-a {:.1} s, healthy {:.1} s; prod {:.1} s (soak {SOAK} s)",
        secs(pushed, dev_in),
        secs(pushed, dev_healthy),
        secs(pushed, staging_in),
        secs(pushed, staging_healthy),
        secs(pushed, prod_in)
    );
    let soak = chrono::Duration::seconds(SOAK);
    assert!(
        dev_in < staging_in && staging_in < prod_in,
        "order: {dev_in} {staging_in} {prod_in}"
    );
    assert!(
        staging_in >= dev_healthy + soak,
        "staging-a took 1.4.0 at {staging_in}, before dev's soak ended ({dev_healthy} + {SOAK} s)"
    );
    assert!(
        prod_in >= staging_healthy + soak,
        "prod took 1.4.0 at {prod_in}, before staging-a's soak ended ({staging_healthy} + {SOAK} s)"
    );
    assert!(
        t.said("staging-a", "waiting for dev: 1.4.0 healthy"),
        "staging-a's Promotion condition never said what it waited for"
    );
    assert!(
        t.said("prod", "waiting for staging-a: 1.4.0 healthy"),
        "prod's Promotion condition never said what it waited for"
    );
    let (status, reason, message) =
        promotion_condition(&get(&last, "prod").status).expect("prod's Promotion condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Promoted"),
        "{message}"
    );

    // Every promotion decision is a span linked to the reconciles, in the clusters it waited on,
    // that recorded the rollouts it read.
    let spans = collector
        .wait_for_spans(
            |spans| {
                spans.iter().any(|s| {
                    s["name"] == "promotion.gate"
                        && attr(s, "after") == Some("staging-a")
                        && attr(s, "eligible").is_some_and(|e| e.contains("1.4.0"))
                        && s["links"].as_array().is_some_and(|l| !l.is_empty())
                })
            },
            Duration::from_secs(30),
        )
        .await;
    let gates: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["name"] == "promotion.gate" && attr(s, "after") == Some("staging-a"))
        .collect();
    let linked: Vec<&serde_json::Value> = gates
        .iter()
        .flat_map(|g| g["links"].as_array().into_iter().flatten())
        .collect();
    assert!(
        !linked.is_empty(),
        "no promotion.gate span of prod links anywhere ({} gate spans)",
        gates.len()
    );
    for link in &linked {
        let target = spans
            .iter()
            .find(|s| s["spanId"] == link["spanId"] && s["traceId"] == link["traceId"]);
        let target = target.unwrap_or_else(|| panic!("link {link} leads to no exported span"));
        assert_eq!(target["name"], "reconcile", "{target}");
        assert_eq!(attr(target, "cluster"), Some("staging-a"), "{target}");
    }
    println!(
        "{} promotion.gate spans of prod, {} links, each to a reconcile of staging-a",
        gates.len(),
        linked.len()
    );

    // The fleet view: `kimup fleet` from the kubeconfigs, and /fleet from the running kimup.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(["fleet", "--kubeconfig-dir"])
        .arg(&dir)
        .args(["-n", &ns, "-o", "json"])
        .output()
        .expect("kimup fleet");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: View = serde_json::from_slice(&out.stdout).expect("fleet JSON");
    assert_eq!(view.clusters, vec!["dev", "prod", "staging-a"]);
    assert_eq!(view.images.len(), 1, "{view:?}");
    for name in NAMES {
        let cell = &view.images[0].clusters[name];
        assert_eq!(cell.tag.as_deref(), Some("1.4.0"), "{name}: {cell:?}");
        assert_eq!(cell.result.as_deref(), Some("Success"), "{name}: {cell:?}");
        assert!(cell.healthy_since.is_some(), "{name}: {cell:?}");
        assert_eq!(cell.waiting_for, None, "{name}: {cell:?}");
    }
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(["fleet", "--kubeconfig-dir"])
        .arg(&dir)
        .args(["-n", &ns])
        .output()
        .expect("kimup fleet");
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    println!("{table}");
    assert!(table.starts_with("IMAGE"), "{table}");
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains("1.4.0  Success"))
            .count(),
        3,
        "{table}"
    );
    let served: View = reqwest::get(format!("http://127.0.0.1:{port}/fleet"))
        .await
        .expect("/fleet")
        .json()
        .await
        .expect("/fleet JSON");
    let row = served
        .images
        .iter()
        .find(|r| r.namespace == ns)
        .expect("the Image in /fleet");
    for name in NAMES {
        assert_eq!(
            row.clusters[name].tag.as_deref(),
            Some("1.4.0"),
            "/fleet {name}"
        );
    }

    // 1.5.0 fails to roll out in staging-a: marked failed there, prod halts and never takes it.
    reg.push_tags("promo/web", &["1.5.0"]).await.expect("push");
    let pushed = Utc::now();
    t.until(
        "staging-a marked 1.5.0 failed",
        Duration::from_secs(90),
        &kimup,
        |s| {
            get(s, "staging-a")
                .status
                .rollout
                .as_ref()
                .is_some_and(|r| r.failed_tags.iter().any(|t| t == "1.5.0"))
        },
    )
    .await;
    let failed_at = Utc::now();
    t.until(
        "prod's promotion halted",
        Duration::from_secs(30),
        &kimup,
        |s| promotion_condition(&get(s, "prod").status).is_some_and(|(_, r, _)| r == "Halted"),
    )
    .await;
    let now = t.look().await;
    let staging_rollout = get(&now, "staging-a")
        .status
        .rollout
        .clone()
        .expect("rollout");
    println!(
        "1.5.0: failed in staging-a {:.1} s after the push: {}; prod: {:?}",
        secs(pushed, failed_at),
        staging_rollout.message,
        promotion_condition(&get(&now, "prod").status)
    );
    assert!(
        staging_rollout.message.contains("ProgressDeadlineExceeded"),
        "{staging_rollout:?}"
    );
    assert_eq!(get(&now, "prod").runs, "1.4.0");
    let prod = env.clusters[2].client().await.expect("client");
    wait_event(&staging, &ns, "web", "RolloutFailed").await;
    wait_event(&prod, &ns, "web", "PromotionHalted").await;
    // The Image's alert told the failure (the sink also holds the new-tag alerts).
    kimup_testenv::process::wait_until("the failed-rollout alert", Duration::from_secs(30), || {
        let got = sink.delivered_on("/webhook");
        async move {
            Ok(got.iter().any(|r| {
                r.body["newTag"] == "1.5.0"
                    && r.body["rolloutFailed"]
                        .as_str()
                        .is_some_and(|f| f.contains("ProgressDeadlineExceeded"))
            }))
        }
    })
    .await
    .expect("failed-rollout alert delivered");

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("body");
    for (cluster, failed) in [("dev", 0), ("staging-a", 1), ("prod", 0)] {
        let line = format!("kimup_rollouts_failed_total{{cluster=\"{cluster}\"}} {failed}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in /metrics"
        );
    }

    // A newer tag starts a new promotion, and prod goes from 1.4.0 to 1.6.0, never 1.5.0.
    reg.push_tags("promo/web", &["1.6.0"]).await.expect("push");
    t.until(
        "prod healthy at 1.6.0",
        Duration::from_secs(120),
        &kimup,
        |s| healthy_at(get(s, "prod"), "1.6.0"),
    )
    .await;
    assert_eq!(
        t.first_ran("prod", "1.5.0"),
        None,
        "prod ran the failed tag"
    );
    let dev_in = t.first_ran("dev", "1.6.0").expect("dev");
    let staging_in = t.first_ran("staging-a", "1.6.0").expect("staging-a");
    let prod_in = t.first_ran("prod", "1.6.0").expect("prod");
    assert!(
        dev_in < staging_in && staging_in < prod_in,
        "order: {dev_in} {staging_in} {prod_in}"
    );
    let last = t.look().await;
    let (status, reason, _) = promotion_condition(&get(&last, "prod").status).expect("condition");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Promoted"));
    assert!(
        get(&last, "staging-a")
            .status
            .rollout
            .as_ref()
            .is_some_and(|r| r.failed_tags == vec!["1.5.0".to_string()]),
        "staging-a remembers the failed tag"
    );
}

#[tokio::test]
async fn a_restart_mid_soak_neither_resets_nor_skips_it() {
    const SOAK: i64 = 20;
    let env = env();
    let ns = env.namespace_everywhere("soak").await.expect("namespaces");
    // Every Image checks the registry hourly: kimup's first syncs alone must record dev's
    // rollout for staging-a to read (whichever cluster's cache lists first), and dev takes 1.4.0
    // when asked (the refresh annotation).
    setup(env, &ns, "promo/soak", &format!("{SOAK}s"), None, "@hourly").await;
    let dir = members(env, "restart");
    let first = start(env, &dir, &ns, "kimup-soak-1", free_port().expect("port"));
    let mut t = Timeline::at_base(env, &ns, &first).await;
    env.plain_registry()
        .push_tags("promo/soak", &["1.4.0"])
        .await
        .expect("push");
    let dev = env.clusters[0].client().await.expect("client");
    Api::<kimup::api::Image>::namespaced(dev, &ns)
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"kimup.cloudavenue.io/action": "refresh"}}
            })),
        )
        .await
        .expect("refresh dev");
    t.until(
        "dev healthy at 1.4.0",
        Duration::from_secs(60),
        &first,
        |s| healthy_at(get(s, "dev"), "1.4.0"),
    )
    .await;
    let dev_healthy = healthy_since(get(&t.look().await, "dev"), "1.4.0");
    t.until(
        "staging-a waiting on dev's soak",
        Duration::from_secs(30),
        &first,
        |s| {
            promotion_condition(&get(s, "staging-a").status)
                .is_some_and(|(_, _, m)| m.contains("waiting for dev: 1.4.0 healthy"))
        },
    )
    .await;
    // Mid-soak: the restart happens 8 s into dev's 20 s soak, by the clock of the cluster's
    // record.
    let mid = dev_healthy + chrono::Duration::seconds(8);
    if let Ok(wait) = (mid - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    let mut first = first;
    first.process.kill();
    let restarted = Utc::now();
    assert!(
        t.first_ran("staging-a", "1.4.0").is_none(),
        "staging-a took 1.4.0 before the restart"
    );
    let second = start(env, &dir, &ns, "kimup-soak-2", free_port().expect("port"));
    t.until(
        "staging-a healthy at 1.4.0",
        Duration::from_secs(60),
        &second,
        |s| healthy_at(get(s, "staging-a"), "1.4.0"),
    )
    .await;
    let staging_in = t
        .first_ran("staging-a", "1.4.0")
        .expect("staging-a ran 1.4.0");
    let after = healthy_since(get(&t.look().await, "dev"), "1.4.0");
    let soak = chrono::Duration::seconds(SOAK);
    println!(
        "dev healthy at 1.4.0 from {dev_healthy}; restart {:.1} s into the soak; staging-a took 1.4.0 {:.1} s after dev's healthy start (soak {SOAK} s; a reset would make it >= {:.1} s)",
        secs(dev_healthy, restarted),
        secs(dev_healthy, staging_in),
        secs(dev_healthy, restarted + soak)
    );
    assert_eq!(after, dev_healthy, "the restart moved dev's healthySince");
    assert!(
        staging_in >= dev_healthy + soak,
        "soak skipped: staging-a took 1.4.0 {:.1} s after dev became healthy",
        secs(dev_healthy, staging_in)
    );
    assert!(
        staging_in < restarted + soak,
        "soak reset: staging-a took 1.4.0 {:.1} s after the restart",
        secs(restarted, staging_in)
    );
}

#[tokio::test]
async fn an_after_that_matches_no_member_is_an_error_not_a_pass() {
    let env = env();
    let ns = env
        .namespace_everywhere("nomember")
        .await
        .expect("namespaces");
    let reg = env.plain_registry();
    reg.push_tags("promo/nomember", &["1.3.0", "1.4.0"])
        .await
        .expect("push");
    let repo = format!("{}/promo/nomember", reg.host);
    let prod = env.clusters[2].client().await.expect("client");
    create_deployment(&prod, &ns, &web(&format!("{repo}:1.3.0"), None)).await;
    create_image(
        &prod,
        &ns,
        &image_yaml(
            &repo,
            Some("{after: [\"stagin-*\"], soak: 1s}"),
            false,
            "@hourly",
        ),
    )
    .await;
    let dir = members(env, "nomember");
    let kimup = start(env, &dir, &ns, "kimup-nomember", free_port().expect("port"));
    let status = wait_status(&prod, &ns, "web", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(
        status.result,
        Some(kimup::api::SyncResult::Error),
        "{status:#?}"
    );
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains(
            "promotion.after [\"stagin-*\"] matches no member cluster other than prod (members: dev, prod, staging-a)"
        ),
        "{message}"
    );
    let (cond, reason, _) = promotion_condition(&status).expect("Promotion condition");
    assert_eq!(
        (cond.as_str(), reason.as_str()),
        ("False", "InvalidPromotion")
    );
    assert_eq!(
        status.tag, None,
        "no tag chosen while the promotion cannot be followed"
    );
    wait_event(&prod, &ns, "web", "InvalidPromotion").await;
    // The Deployment keeps its tag: nothing passed the gate.
    assert_eq!(
        deployment_images(&prod, &ns, "web").await.0,
        vec![format!("{repo}:1.3.0")]
    );
}

/// A gate cluster whose API server dies mid-soak is not trusted from kimup's stale cache of it:
/// the later cluster waits, saying why, and takes the tag once the cluster is back and its
/// record read again.
#[tokio::test]
async fn a_gate_cluster_down_mid_soak_holds_the_promotion_until_it_is_back() {
    const SOAK: i64 = 40;
    let mut env = TestEnv::builder()
        .name("promotion-down")
        .clusters(3)
        .registries()
        .kimup_crds()
        .rollouts()
        .start()
        .await
        .expect("three clusters with rollouts");
    let ns = env.namespace_everywhere("down").await.expect("namespaces");
    setup(
        &env,
        &ns,
        "promo/down",
        &format!("{SOAK}s"),
        None,
        "*/1 * * * * *",
    )
    .await;
    let dir = members(&env, "down");
    let port = free_port().expect("port");
    let kimup = start(&env, &dir, &ns, "kimup-down", port);
    let mut t = Timeline::at_base(&env, &ns, &kimup).await;
    env.plain_registry()
        .push_tags("promo/down", &["1.4.0"])
        .await
        .expect("push");
    t.until(
        "dev healthy at 1.4.0",
        Duration::from_secs(60),
        &kimup,
        |s| healthy_at(get(s, "dev"), "1.4.0"),
    )
    .await;
    let dev_healthy = healthy_since(get(&t.look().await, "dev"), "1.4.0");
    env.clusters[0].kill();
    let killed = Utc::now();
    let down = async {
        loop {
            let list: Vec<kimup::server::ClusterReport> =
                match reqwest::get(format!("http://127.0.0.1:{port}/clusters")).await {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
            if list.iter().any(|c| c.name == "dev" && !c.up) {
                return Utc::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let down = tokio::time::timeout(Duration::from_secs(30), down)
        .await
        .expect("kimup saw dev down within 30 s of its API server's death");
    let soak = chrono::Duration::seconds(SOAK);
    assert!(
        down < dev_healthy + soak,
        "kimup saw dev down {:.1} s after it became healthy, after the {SOAK} s soak: nothing to hold",
        secs(dev_healthy, down)
    );
    // Past the soak, staging-a says what it waits for and has not taken 1.4.0.
    t.until(
        "staging-a waiting for dev, which is not watched",
        Duration::from_secs(SOAK as u64 + 20),
        &kimup,
        |s| {
            promotion_condition(&get(s, "staging-a").status)
                .is_some_and(|(_, _, m)| m.contains("waiting for dev: dev is not watched now"))
        },
    )
    .await;
    let held_until = Utc::now();
    assert!(
        held_until >= dev_healthy + soak,
        "staging-a waited on the down cluster only after the soak would have ended"
    );
    assert_eq!(
        t.first_ran("staging-a", "1.4.0"),
        None,
        "staging-a took 1.4.0 from a cache of a cluster that was down"
    );
    env.clusters[0].restart().await.expect("restart dev");
    let back = Utc::now();
    t.until(
        "staging-a healthy at 1.4.0 once dev is back",
        Duration::from_secs(90),
        &kimup,
        |s| healthy_at(get(s, "staging-a"), "1.4.0"),
    )
    .await;
    let staging_in = t
        .first_ran("staging-a", "1.4.0")
        .expect("staging-a ran 1.4.0");
    println!(
        "dev healthy at 1.4.0, killed {:.1} s later, seen down after {:.1} s; soak {SOAK} s ended at {:.1} s with staging-a waiting; dev back at {:.1} s; staging-a took 1.4.0 {:.1} s after that",
        secs(dev_healthy, killed),
        secs(killed, down),
        SOAK as f64,
        secs(dev_healthy, back),
        secs(back, staging_in)
    );
    assert!(
        staging_in > back,
        "staging-a took 1.4.0 before dev was back"
    );
}

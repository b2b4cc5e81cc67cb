//! Three replicas share the work by shard (`--shards 3`): each holds one shard Lease, every Image
//! is written only by the holder of its repository's shard, and when a replica is killed
//! (SIGKILL) its shard moves to a survivor within the lease duration and every Image converges.
//! The proof is the API servers' audit logs: each replica authenticates as itself, and every
//! acting write on an Image (status, annotations, its Deployment, its events) falls within a
//! tenure of that replica on the shard's Lease, as the Lease's own successful writes show.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use kimup::shards::{lease_name, shard_of};
use kimup_testenv::process::free_port;
use kimup_testenv::{AuditEvent, TestEnv};

const SHARDS: u32 = 3;
/// Images per shard: the repository names are chosen so that every shard has this many.
const PER_SHARD: usize = 2;
const LEASE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_secs(1);
const BASE: &str = "kimup-leader";
const ACTING: &[&str] = &["images", "images/status", "deployments", "events"];
const WRITES: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

struct Replica {
    name: String,
    kimup: Kimup,
    port: u16,
}

fn replica(env: &TestEnv, name: &str, ns: &str) -> Replica {
    let dir = env.run_dir.join(format!("kubeconfigs-{name}"));
    let files = env.write_kubeconfigs_as(&dir, name).expect("kubeconfigs");
    let port = free_port().expect("port");
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--watch-namespace={ns}"),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--insecure-registry={}", env.plain_registry().host),
        "--leader-elect".into(),
        format!("--shards={SHARDS}"),
        format!("--lease-kubeconfig={}", files[0].display()),
        format!("--lease-namespace={ns}"),
        "--lease-duration=4s".into(),
        "--renew-deadline=3s".into(),
        "--retry-period=1s".into(),
        "--tag-cache-ttl=1s".into(),
    ];
    Replica {
        name: name.to_string(),
        kimup: spawn_kimup_with_env(env, name, &args, &[("POD_NAME".into(), name.into())]),
        port,
    }
}

/// Sum of a metric family in a replica's /metrics, or None when it does not answer.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .ok()?;
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Shards held by each replica, by /metrics (None for one that does not answer).
async fn held(replicas: &[&Replica]) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(metric(r.port, "kimup_shards_held").await);
    }
    out
}

/// Waits until every cluster's Deployment of every repository runs `tag`.
async fn wait_everywhere(
    env: &TestEnv,
    ns: &str,
    host: &str,
    repos: &[usize],
    tag: &str,
    timeout: Duration,
) {
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        for &r in repos {
            let want = format!("{host}/sh/app-{r}:{tag}");
            eventually(
                &format!("{}: Deployment app-{r} runs {want}", c.name),
                timeout,
                || {
                    let (client, want) = (client.clone(), want.clone());
                    async move {
                        deployment_images(&client, ns, &format!("app-{r}")).await.0[0] == want
                    }
                },
            )
            .await;
        }
    }
}

/// The Image an acting write concerns: its own name, its Deployment's (same name), or its
/// events' (`<image>.<hex>`).
fn image_of(e: &AuditEvent) -> String {
    if e.resource == "events" {
        return e.name.split('.').next().unwrap_or_default().to_string();
    }
    e.name.clone()
}

#[tokio::test]
async fn replicas_share_shards_and_a_killed_replicas_shard_moves() {
    let env = TestEnv::builder()
        .name("shards")
        .clusters(3)
        .registries()
        .kimup_crds()
        .audit_log()
        .start()
        .await
        .expect("env");
    let ns = env
        .namespace_everywhere("shards")
        .await
        .expect("namespaces");
    let reg = env.plain_registry();
    // The shard of a repository hashes the registry host, whose port changes every run: pick
    // the repository numbers so that every shard has PER_SHARD of them, else a replica could
    // hold a shard with nothing in it and the test would prove nothing about it.
    let mut repos: Vec<usize> = Vec::new();
    let mut per_shard = vec![0usize; SHARDS as usize];
    for r in 0..1000 {
        let shard = shard_of(&reg.host, &format!("sh/app-{r}"), SHARDS) as usize;
        if per_shard[shard] < PER_SHARD {
            per_shard[shard] += 1;
            repos.push(r);
        }
        if per_shard.iter().all(|n| *n == PER_SHARD) {
            break;
        }
    }
    assert!(
        per_shard.iter().all(|n| *n == PER_SHARD),
        "no repository names fill every shard: {per_shard:?}"
    );
    for &r in &repos {
        reg.push_tags(&format!("sh/app-{r}"), &["1.0.0", "1.1.0"])
            .await
            .expect("push");
    }
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        for &r in &repos {
            create_deployment(
                &client,
                &ns,
                &deployment(
                    &format!("app-{r}"),
                    &format!("{}/sh/app-{r}:1.0.0", reg.host),
                    true,
                ),
            )
            .await;
            create_image(
                &client,
                &ns,
                &format!(
                    "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app-{r}}}\nspec:\n  image: {}/sh/app-{r}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"*/1 * * * * *\"}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n",
                    reg.host
                ),
            )
            .await;
        }
    }
    let shard_of_image: BTreeMap<String, u32> = repos
        .iter()
        .map(|r| {
            (
                format!("app-{r}"),
                shard_of(&reg.host, &format!("sh/app-{r}"), SHARDS),
            )
        })
        .collect();
    println!("shard of each Image: {shard_of_image:?}");

    let mut replicas = vec![
        replica(&env, "kimup-a", &ns),
        replica(&env, "kimup-b", &ns),
        replica(&env, "kimup-c", &ns),
    ];
    // A fair split: one shard each.
    eventually(
        "every replica holds exactly one shard",
        Duration::from_secs(30),
        || async {
            let refs: Vec<&Replica> = replicas.iter().collect();
            held(&refs).await == vec![Some(1.0); 3]
        },
    )
    .await;
    wait_everywhere(
        &env,
        &ns,
        &reg.host,
        &repos,
        "1.1.0",
        Duration::from_secs(30),
    )
    .await;

    // SIGKILL of a replica: its shard is taken by a survivor within the lease duration (and a
    // retry period), the survivors hold every shard, and a new tag reaches every cluster.
    let victim = replicas.remove(0);
    let killed = Instant::now();
    {
        let mut victim = victim;
        victim.kimup.process.kill();
        let refs: Vec<&Replica> = replicas.iter().collect();
        eventually(
            "the survivors hold all three shards",
            LEASE + RETRY * 3 + Duration::from_secs(5),
            || async {
                held(&refs)
                    .await
                    .iter()
                    .map(|h| h.unwrap_or(0.0))
                    .sum::<f64>()
                    == 3.0
            },
        )
        .await;
        let took = killed.elapsed();
        println!(
            "shard moved after SIGKILL of {}: {:.2} s (lease {LEASE:?}, retry {RETRY:?}); held now: {:?}",
            victim.name,
            took.as_secs_f64(),
            held(&refs).await
        );
        assert!(
            took <= LEASE + RETRY * 3 + Duration::from_millis(500),
            "took {took:?}"
        );
        for &r in &repos {
            reg.push_tags(&format!("sh/app-{r}"), &["1.2.0"])
                .await
                .expect("push");
        }
        let pushed = Instant::now();
        wait_everywhere(
            &env,
            &ns,
            &reg.host,
            &repos,
            "1.2.0",
            Duration::from_secs(30),
        )
        .await;
        println!(
            "1.2.0 everywhere {:.2} s after the push",
            pushed.elapsed().as_secs_f64()
        );
        // Keep the dead replica's name for the audit check below.
        replicas.insert(0, victim);
    }

    // The audit logs. Tenures of each shard Lease, from its successful writes (cluster-0 holds
    // the Leases): a replica holds a shard from its first successful write on the Lease until
    // another replica's first successful write on it.
    let lease_events: Vec<AuditEvent> = env.clusters[0]
        .audit_events()
        .expect("audit")
        .into_iter()
        .filter(|e| e.resource == "leases" && WRITES.contains(&e.verb.as_str()))
        .filter(|e| (200..300).contains(&e.code))
        .collect();
    let mut tenures: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
    for shard in 0..SHARDS {
        let name = lease_name(BASE, shard, SHARDS);
        let mut starts: Vec<(String, String)> = Vec::new();
        for e in lease_events.iter().filter(|e| e.name == name) {
            if starts.last().map(|(u, _)| u.as_str()) != Some(e.username.as_str()) {
                starts.push((e.username.clone(), e.received.clone()));
            }
        }
        println!("shard {shard} ({name}) tenures: {starts:?}");
        assert!(!starts.is_empty(), "shard {shard} was never held");
        tenures.insert(shard, starts);
    }
    let mut writers: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut checked = 0;
    for cl in &env.clusters {
        for e in cl.audit_events().expect("audit") {
            if !(e.username.starts_with("kimup-")
                && e.namespace == ns
                && ACTING.contains(&e.resource.as_str())
                && WRITES.contains(&e.verb.as_str()))
            {
                continue;
            }
            let image = image_of(&e);
            let Some(shard) = shard_of_image.get(&image) else {
                continue;
            };
            *writers
                .entry(format!("{}/{image}", cl.name))
                .or_default()
                .entry(e.username.clone())
                .or_default() += 1;
            // The tenure the write falls in: the last one started at or before it.
            let holder = tenures[shard]
                .iter()
                .take_while(|(_, at)| at.as_str() <= e.received.as_str())
                .last()
                .map(|(u, _)| u.as_str());
            assert_eq!(
                holder,
                Some(e.username.as_str()),
                "{}: {} wrote {} {} of Image {image} (shard {shard}) at {} outside its tenure: {:?}",
                cl.name,
                e.username,
                e.verb,
                e.resource,
                e.received,
                tenures[shard]
            );
            checked += 1;
        }
    }
    println!("acting writes by Image and replica: {writers:#?}");
    println!("{checked} acting writes, each within its writer's tenure of the Image's shard");
    assert!(checked > 0, "the audit logs show acting writes");
    // Every replica alive at the start wrote (each held a shard), and the survivors took the
    // dead one's Images over.
    for r in &replicas {
        assert!(
            writers.values().any(|w| w.contains_key(&r.name)),
            "{} wrote nothing",
            r.name
        );
    }
}

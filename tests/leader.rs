//! Three replicas over three clusters: only the leader writes. A leader paused (SIGSTOP) past its
//! lease and then resumed writes nothing once a standby took over, as the API servers' audit
//! logs show (each replica authenticates as itself); SIGKILL of the leader hands over within
//! lease duration + retry period, SIGTERM within 3 s; no alert is sent twice.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use kimup_testenv::process::free_port;
use kimup_testenv::{AuditEvent, HttpSink, TestEnv};

const LEASE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_secs(1);

/// Resources whose writes are acting (the Lease is the election itself).
const ACTING: &[&str] = &["images", "images/status", "deployments", "events"];
const WRITES: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

struct Replica {
    name: String,
    kimup: Kimup,
    port: u16,
}

/// Starts a replica that authenticates to every cluster as `name` (its own client certificate)
/// and stands for election under that identity.
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
        format!("--lease-kubeconfig={}", files[0].display()),
        format!("--lease-namespace={ns}"),
        "--lease-duration=4s".into(),
        "--renew-deadline=3s".into(),
        "--retry-period=1s".into(),
        "--tag-cache-ttl=0s".into(),
    ];
    Replica {
        name: name.to_string(),
        kimup: spawn_kimup_with_env(env, name, &args, &[("POD_NAME".into(), name.into())]),
        port,
    }
}

/// Sum of a metric family in a replica's /metrics, or None when it does not answer (dead, or
/// paused: the kernel accepts the connection but nobody answers, hence the timeout).
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

/// Polls `check` every 100 ms until true; panics naming `what` after `timeout`.
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

/// Index of the first of `replicas` whose /metrics says it leads.
async fn wait_leader(replicas: &[&Replica], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, r) in replicas.iter().enumerate() {
            if metric(r.port, "kimup_leader").await == Some(1.0) {
                return i;
            }
        }
        let names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
        assert!(
            Instant::now() < deadline,
            "none of {names:?} leads after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `signal` (STOP, CONT) to a replica.
fn signal(r: &Replica, signal: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(r.kimup.process.pid().to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} {}", r.name);
}

fn acting_write(e: &AuditEvent) -> bool {
    WRITES.contains(&e.verb.as_str()) && ACTING.contains(&e.resource.as_str())
}

/// Waits until every cluster's image `web` shows `tag` in its status and its Deployment runs it.
async fn wait_rolled_out(env: &TestEnv, ns: &str, host: &str, tag: &str, by: &Replica) {
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        wait_status(
            &client,
            ns,
            "web",
            Duration::from_secs(30),
            &by.kimup,
            |s| s.tag.as_deref() == Some(tag),
        )
        .await;
        let want = format!("{host}/ha/web:{tag}");
        eventually(
            &format!("{}: Deployment web runs {want}", c.name),
            Duration::from_secs(10),
            || {
                let (client, want) = (client.clone(), want.clone());
                async move { deployment_images(&client, ns, "web").await.0[0] == want }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn only_the_leader_acts_and_a_paused_leader_stays_quiet() {
    let env = TestEnv::builder()
        .name("leader")
        .clusters(3)
        .registries()
        .kimup_crds()
        .audit_log()
        .start()
        .await
        .expect("env");
    let ns = env.namespace_everywhere("ha").await.expect("namespaces");
    let reg = env.plain_registry();
    reg.push_tags("ha/web", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let sink = HttpSink::start().await.expect("sink");
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        let api: kube::Api<kimup::api::AlertConfig> = kube::Api::namespaced(client.clone(), &ns);
        let ac: kimup::api::AlertConfig = serde_yaml::from_str(&format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: AlertConfig\nmetadata: {{name: hook}}\nspec:\n  webhook:\n    url: {{value: \"{}/{}\"}}\n",
            sink.url, c.name
        ))
        .expect("alertconfig");
        api.create(&Default::default(), &ac).await.expect("create");
        create_deployment(
            &client,
            &ns,
            &deployment("web", &format!("{}/ha/web:1.0.0", reg.host), true),
        )
        .await;
        // A sync every second: a resumed leader finds its requeues overdue at once.
        create_image(
            &client,
            &ns,
            &format!(
                "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: web}}\nspec:\n  image: {}/ha/web\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"*/1 * * * * *\"}}]\n  rules:\n  - name: minor\n    type: semver-minor\n    actions: [{{type: alert-webhook, data: {{valueFrom: {{alertConfigRef: {{name: hook}}}}}}}}, {{type: apply}}]\n",
                reg.host
            ),
        )
        .await;
    }
    let a = replica(&env, "kimup-a", &ns);
    // Let A win first so the roles are known.
    wait_leader(&[&a], Duration::from_secs(20)).await;
    let b = replica(&env, "kimup-b", &ns);
    let c = replica(&env, "kimup-c", &ns);
    wait_rolled_out(&env, &ns, &reg.host, "1.1.0", &a).await;
    // All replicas watch; only the leader syncs and writes. A's syncs go on once a second.
    eventually("A synced 6 times", Duration::from_secs(15), || async {
        metric(a.port, "kimup_image_syncs_total").await >= Some(6.0)
    })
    .await;
    for s in [&b, &c] {
        assert_eq!(
            metric(s.port, "kimup_image_syncs_total").await,
            Some(0.0),
            "{} is up and synced nothing",
            s.name
        );
        assert_eq!(metric(s.port, "kimup_leader").await, Some(0.0));
    }

    // A steady leader: it has renewed its lease a few times (the first write is the create).
    eventually(
        "A renewed its lease 3 times",
        Duration::from_secs(10),
        || async {
            let events = env.clusters[0].audit_events().unwrap_or_default();
            events
                .iter()
                .filter(|e| e.username == a.name && e.resource == "leases" && e.verb == "update")
                .count()
                >= 3
        },
    )
    .await;

    // SIGSTOP of the leader, held past its lease: a standby takes over, then acts.
    let stopped = Instant::now();
    signal(&a, "STOP");
    let i = wait_leader(&[&b, &c], LEASE + RETRY * 2 + Duration::from_secs(3)).await;
    let stop_took = stopped.elapsed();
    let (new, other) = if i == 0 { (&b, &c) } else { (&c, &b) };
    println!(
        "takeover after SIGSTOP of the leader: {:.2} s (by {}; bound {:?})",
        stop_took.as_secs_f64(),
        new.name,
        LEASE + RETRY
    );
    assert!(
        stop_took <= LEASE + RETRY + Duration::from_millis(500),
        "took {stop_took:?}"
    );
    reg.push_tags("ha/web", &["1.2.0"]).await.expect("push");
    wait_rolled_out(&env, &ns, &reg.host, "1.2.0", new).await;
    let status_writes_by = |user: &str, events: &[AuditEvent]| {
        events
            .iter()
            .filter(|e| e.username == user && e.resource == "images/status")
            .count()
    };
    let before_cont: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| status_writes_by(&new.name, &c.audit_events().expect("audit")))
        .collect();
    assert!(stopped.elapsed() > LEASE, "A was paused past its lease");

    // A new tag right before SIGCONT: A's cron requeues are all overdue, so a resumed A that
    // still believed it led would race the new leader to alert and patch for 1.3.0.
    reg.push_tags("ha/web", &["1.3.0"]).await.expect("push");
    let resumed = Instant::now();
    signal(&a, "CONT");
    eventually(
        "A (resumed) reports kimup_leader 0 and logs that it lost the lease",
        Duration::from_secs(10),
        || async {
            metric(a.port, "kimup_leader").await == Some(0.0)
                && a.kimup.log_text().contains("lost the lease")
        },
    )
    .await;
    println!(
        "A stepped down (metric and log) {:.2} s after SIGCONT, paused {:.2} s",
        resumed.elapsed().as_secs_f64(),
        (resumed - stopped).as_secs_f64()
    );
    // A few renew periods' worth: the new leader rolls 1.3.0 out and writes three more statuses
    // in every cluster (one a second), time enough for any overdue sync of A to have written.
    wait_rolled_out(&env, &ns, &reg.host, "1.3.0", new).await;
    eventually(
        "the new leader wrote 3 more statuses in every cluster after SIGCONT",
        Duration::from_secs(15),
        || async {
            env.clusters.iter().zip(&before_cont).all(|(c, n)| {
                status_writes_by(&new.name, &c.audit_events().unwrap_or_default()) >= n + 3
            })
        },
    )
    .await;

    // The audit logs: no acting write by A after the new leader's first.
    for cl in &env.clusters {
        let events = cl.audit_events().expect("audit");
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for e in events.iter().filter(|e| e.username.starts_with("kimup-")) {
            if WRITES.contains(&e.verb.as_str()) {
                *counts
                    .entry((e.username.as_str(), e.resource.as_str()))
                    .or_default() += 1;
            }
        }
        println!(
            "{} audit: writes by replica and resource: {counts:?}",
            cl.name
        );
        let first_new = events
            .iter()
            .filter(|e| e.username == new.name && acting_write(e))
            .map(|e| e.received.as_str())
            .min()
            .expect("the new leader wrote");
        let a_before = events
            .iter()
            .filter(|e| e.username == a.name && acting_write(e) && e.received.as_str() < first_new)
            .count();
        let a_after: Vec<&AuditEvent> = events
            .iter()
            .filter(|e| e.username == a.name && e.received.as_str() >= first_new)
            .filter(|e| {
                acting_write(e) || (WRITES.contains(&e.verb.as_str()) && e.resource == "leases")
            })
            .collect();
        let other_writes = events
            .iter()
            .filter(|e| e.username == other.name && acting_write(e))
            .count();
        println!(
            "{}: {} first acting write at {first_new}; A's acting writes before it: {a_before}, after it: {}; {}'s: {other_writes}",
            cl.name,
            new.name,
            a_after.len(),
            other.name
        );
        assert!(
            a_before > 0,
            "{}: the audit log attributes A's writes",
            cl.name
        );
        assert!(
            a_after.is_empty(),
            "{}: the old leader wrote after the takeover: {a_after:#?}",
            cl.name
        );
        assert_eq!(other_writes, 0, "{}: the other standby wrote", cl.name);
    }

    // SIGKILL of the leader: a survivor (A, now a standby, or the other) takes over within
    // lease duration + retry period.
    let new_name = new.name.clone();
    let mut survivors = vec![a, b, c];
    let leader_at = survivors
        .iter()
        .position(|r| r.name == new_name)
        .expect("leader among replicas");
    let mut killed_leader = survivors.remove(leader_at);
    let killed = Instant::now();
    killed_leader.kimup.process.kill();
    let refs: Vec<&Replica> = survivors.iter().collect();
    let i = wait_leader(&refs, LEASE + RETRY * 2 + Duration::from_secs(3)).await;
    let took = killed.elapsed();
    println!(
        "takeover after SIGKILL of the leader: {:.2} s (by {}; bound {:?})",
        took.as_secs_f64(),
        survivors[i].name,
        LEASE + RETRY
    );
    assert!(
        took <= LEASE + RETRY + Duration::from_millis(500),
        "took {took:?}"
    );
    reg.push_tags("ha/web", &["1.4.0"]).await.expect("push");
    wait_rolled_out(&env, &ns, &reg.host, "1.4.0", &survivors[i]).await;

    // SIGTERM of the leader: it releases the lease, the last replica takes over within 3 s.
    let mut termed_leader = survivors.remove(i);
    let last = survivors.remove(0);
    assert_eq!(
        metric(last.port, "kimup_leader").await,
        Some(0.0),
        "{} waits while {} leads",
        last.name,
        termed_leader.name
    );
    let termed = Instant::now();
    termed_leader.kimup.process.stop(Duration::from_secs(10));
    wait_leader(&[&last], Duration::from_secs(6)).await;
    let took = termed.elapsed();
    println!(
        "takeover after SIGTERM of the leader: {:.2} s (by {})",
        took.as_secs_f64(),
        last.name
    );
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    assert!(
        termed_leader.kimup.log_text().contains("lease released"),
        "{} released its lease",
        termed_leader.name
    );
    reg.push_tags("ha/web", &["1.5.0"]).await.expect("push");
    wait_rolled_out(&env, &ns, &reg.host, "1.5.0", &last).await;

    // Each (cluster, tag) alerted exactly once across three failovers.
    let want = ["1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"];
    for cl in &env.clusters {
        let path = format!("/{}", cl.name);
        eventually(
            &format!("{}: alert for 1.5.0 received", cl.name),
            Duration::from_secs(10),
            || async { sink.received_on(&path).len() >= want.len() },
        )
        .await;
        let got: Vec<String> = sink
            .received_on(&path)
            .iter()
            .map(|r| r.body["newTag"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(got, want, "{}", cl.name);
    }
}

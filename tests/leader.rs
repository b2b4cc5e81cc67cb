//! Two replicas over three clusters: only the leader writes; SIGKILL of the leader hands over
//! within lease duration + retry period, SIGTERM within 3 s; no alert is sent twice.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use kimup_testenv::process::free_port;
use kimup_testenv::{HttpSink, TestEnv};

const LEASE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_secs(1);

struct Replica {
    kimup: Kimup,
    port: u16,
}

fn replica(env: &TestEnv, name: &str, dir: &Path, ns: &str) -> Replica {
    let port = free_port().expect("port");
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--watch-namespace={ns}"),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--insecure-registry={}", env.plain_registry().host),
        "--leader-elect".into(),
        format!(
            "--lease-kubeconfig={}",
            env.clusters[0].kubeconfig_path.display()
        ),
        format!("--lease-namespace={ns}"),
        "--lease-duration=4s".into(),
        "--renew-deadline=3s".into(),
        "--retry-period=1s".into(),
        "--tag-cache-ttl=0s".into(),
    ];
    Replica {
        kimup: spawn_kimup(env, name, &args),
        port,
    }
}

/// Sum of a counter family in a replica's /metrics, or None when unreachable.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
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

async fn wait_leader(replicas: &[&Replica], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, r) in replicas.iter().enumerate() {
            if metric(r.port, "kimup_leader").await == Some(1.0) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn only_the_leader_acts_and_failover_is_quick() {
    let env = TestEnv::builder()
        .name("leader")
        .clusters(3)
        .registries()
        .kimup_crds()
        .start()
        .await
        .expect("env");
    let ns = env.namespace_everywhere("ha").await.expect("namespaces");
    let dir = env.run_dir.join("kubeconfigs");
    env.write_kubeconfigs(&dir).expect("kubeconfigs");
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
    let a = replica(&env, "kimup-a", &dir, &ns);
    // Let A win first so the roles are known.
    wait_leader(&[&a], Duration::from_secs(20)).await;
    let b = replica(&env, "kimup-b", &dir, &ns);
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        wait_status(
            &client,
            &ns,
            "web",
            Duration::from_secs(30),
            &a.kimup,
            |s| s.tag.as_deref() == Some("1.1.0"),
        )
        .await;
    }
    // Both replicas watch; only the leader syncs and writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a_syncs = metric(a.port, "kimup_image_syncs_total")
        .await
        .unwrap_or(0.0);
    let b_syncs = metric(b.port, "kimup_image_syncs_total").await;
    assert!(a_syncs >= 3.0, "leader synced: {a_syncs}");
    assert_eq!(b_syncs, Some(0.0), "the standby is up and wrote nothing");
    assert_eq!(metric(b.port, "kimup_leader").await, Some(0.0));

    // SIGKILL of the leader: B takes over within lease duration + retry period.
    let mut a = a;
    let killed = Instant::now();
    a.kimup.process.kill();
    wait_leader(&[&b], LEASE + RETRY * 2 + Duration::from_secs(3)).await;
    let took = killed.elapsed();
    println!(
        "failover after SIGKILL: {:.2} s (bound {:?})",
        took.as_secs_f64(),
        LEASE + RETRY
    );
    assert!(
        took <= LEASE + RETRY + Duration::from_millis(500),
        "took {took:?}"
    );
    reg.push_tags("ha/web", &["1.2.0"]).await.expect("push");
    for c in &env.clusters {
        let client = c.client().await.expect("client");
        wait_status(
            &client,
            &ns,
            "web",
            Duration::from_secs(30),
            &b.kimup,
            |s| s.tag.as_deref() == Some("1.2.0"),
        )
        .await;
    }

    // SIGTERM of the leader: it releases the lease, C takes over within 3 s.
    let c = replica(&env, "kimup-c", &dir, &ns);
    // Half a retry period off C's attempt rhythm, so the hand-over is not measured on a lucky tick.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        metric(c.port, "kimup_leader").await,
        Some(0.0),
        "C waits while B leads"
    );
    assert_eq!(metric(b.port, "kimup_leader").await, Some(1.0));
    let mut b = b;
    let termed = Instant::now();
    b.kimup.process.stop(Duration::from_secs(10));
    wait_leader(&[&c], Duration::from_secs(6)).await;
    let took = termed.elapsed();
    println!("failover after SIGTERM: {:.2} s", took.as_secs_f64());
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    assert!(
        b.kimup.log_text().contains("lease released"),
        "B released its lease"
    );
    reg.push_tags("ha/web", &["1.3.0"]).await.expect("push");
    for cl in &env.clusters {
        let client = cl.client().await.expect("client");
        wait_status(
            &client,
            &ns,
            "web",
            Duration::from_secs(30),
            &c.kimup,
            |s| s.tag.as_deref() == Some("1.3.0"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Each (cluster, tag) alerted exactly once across two failovers.
    for cl in &env.clusters {
        let got: Vec<String> = sink
            .received_on(&format!("/{}", cl.name))
            .iter()
            .map(|r| r.body["newTag"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(got, vec!["1.1.0", "1.2.0", "1.3.0"], "{}", cl.name);
    }
}
